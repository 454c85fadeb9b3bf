//! The service-account signing key (`<data-dir>/server/tls/service.key`, shared by every
//! server of a cluster) and the compact JWTs it signs and verifies: ES256, as kube-apiserver
//! does with an EC key. What goes into the claims is the API server's business.
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::KeyPair;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{io, write_private, Error, Result};

/// The issuer of legacy secret tokens (kube's tokens controller writes them into secrets).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// The claims of a legacy token held by secret `secret` for service account `sa_name`.
pub fn legacy_claims(ns: &str, secret: &str, sa_name: &str, sa_uid: &str) -> Value {
    json!({
        "iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa_name,
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
        "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
    })
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a compact JWT (header.payload.signature)")]
    Malformed,
    #[error("unsupported signing algorithm {0:?}")]
    Algorithm(String),
    #[error("signature does not verify against the service-account key")]
    Signature,
}

/// The key that signs service-account tokens, and verifies them.
#[derive(Clone)]
pub struct ServiceAccountKey {
    signing: Arc<EcdsaKeyPair>,
    /// The key in PKCS#8 PEM, as handed to joining servers.
    pem: Arc<str>,
    /// Key id: the unpadded base64url SHA-256 of the public key, as kube derives it.
    kid: Arc<str>,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl ServiceAccountKey {
    /// Loads `<dir>/service.key`, or creates it.
    pub fn ensure(dir: &Path) -> Result<Self> {
        let path = dir.join("service.key");
        match std::fs::read_to_string(&path) {
            Ok(pem) => Self::from_pem(&pem).map_err(|reason| Error::Invalid {
                path: path.clone(),
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let key = Self::generate()?;
                write_private(&path, &key.pem)?;
                Ok(key)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// A fresh P-256 key (kept only in memory unless written by `ensure`).
    pub fn generate() -> Result<Self> {
        let pair = KeyPair::generate()?;
        Self::from_pem(&pair.serialize_pem()).map_err(|reason| Error::Invalid {
            path: "service.key".into(),
            reason,
        })
    }

    /// A key from its PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> std::result::Result<Self, String> {
        let pair = KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        let signing = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pair.serialize_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not a P-256 private key: {e}"))?;
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(signing.public_key().as_ref()));
        Ok(ServiceAccountKey {
            signing: Arc::new(signing),
            pem: pem.into(),
            kid: kid.into(),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// `claims` as a signed compact JWT.
    pub fn sign(&self, claims: &Value) -> std::result::Result<String, JwtError> {
        let header = json!({"alg": "ES256", "kid": &*self.kid});
        let mut out = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .signing
            .sign(&SystemRandom::new(), out.as_bytes())
            .map_err(|_| JwtError::Signature)?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(out)
    }

    /// The claims of `token` when this key signed it. Time and audience are the caller's.
    pub fn verify(&self, token: &str) -> std::result::Result<Value, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
        match header.get("alg").and_then(Value::as_str) {
            Some("ES256") => {}
            other => return Err(JwtError::Algorithm(other.unwrap_or("").to_string())),
        }
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.signing.public_key().as_ref(),
        );
        let signed_len = h.len() + 1 + p.len();
        public
            .verify(&token.as_bytes()[..signed_len], &decode(s)?)
            .map_err(|_| JwtError::Signature)?;
        serde_json::from_slice(&decode(p)?).map_err(|_| JwtError::Malformed)
    }

    /// The public key as a JSON Web Key Set (what `/openid/v1/jwks` serves).
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = self.signing.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .unwrap_or((&[][..], &[][..]));
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": &*self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_tampering() {
        let key = ServiceAccountKey::generate().unwrap();
        let token = key
            .sign(&json!({"sub": "system:serviceaccount:a:b"}))
            .unwrap();
        assert_eq!(
            key.verify(&token).unwrap()["sub"],
            "system:serviceaccount:a:b"
        );

        let other = ServiceAccountKey::generate().unwrap();
        assert_eq!(other.verify(&token), Err(JwtError::Signature));

        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"system:admin"}"#);
        parts[1] = &forged;
        assert_eq!(key.verify(&parts.join(".")), Err(JwtError::Signature));
        assert_eq!(key.verify("a.b"), Err(JwtError::Malformed));

        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode("{}")
        );
        assert_eq!(key.verify(&none), Err(JwtError::Algorithm("none".into())));
    }

    #[test]
    fn the_key_survives_a_restart_and_publishes_its_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let a = ServiceAccountKey::ensure(dir.path()).unwrap();
        let b = ServiceAccountKey::ensure(dir.path()).unwrap();
        let token = a.sign(&json!({})).unwrap();
        assert!(b.verify(&token).is_ok());
        let jwks = b.jwks();
        assert_eq!(jwks["keys"][0]["kid"], &*a.kid);
        assert_eq!(jwks["keys"][0]["x"].as_str().unwrap().len(), 43);

        std::fs::write(dir.path().join("service.key"), "garbage").unwrap();
        let err = ServiceAccountKey::ensure(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("service.key"), "{err}");
    }
}
