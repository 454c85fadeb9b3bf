//! Join tokens, k3s's shape: `K10<sha256 of a CA certificate (DER)>::<role>:<secret>`. The
//! hash lets a joining server or agent recognise the cluster's CA before it trusts anything;
//! the secret proves it may join.
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// SHA-256 of the CA certificate (DER), when the token carries it.
    pub ca_hash: Option<String>,
    pub secret: String,
}

impl Token {
    pub fn parse(s: &str) -> Token {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("K10") {
            if let Some((hash, tail)) = rest.split_once("::") {
                let secret = tail.rsplit_once(':').map(|(_, s)| s).unwrap_or(tail);
                return Token {
                    ca_hash: Some(hash.to_lowercase()),
                    secret: secret.to_string(),
                };
            }
        }
        Token {
            ca_hash: None,
            secret: s.rsplit_once(':').map(|(_, s)| s).unwrap_or(s).to_string(),
        }
    }

    /// The full token for a CA and secret.
    pub fn format(ca_pem: &str, secret: &str) -> Result<String, String> {
        Ok(format!("K10{}::server:{secret}", ca_hash(ca_pem)?))
    }

    /// The token agents join with: the same shape, naming the API server's CA.
    pub fn format_node(ca_pem: &str, secret: &str) -> Result<String, String> {
        Ok(format!("K10{}::node:{secret}", ca_hash(ca_pem)?))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a PEM certificate's DER bytes.
pub fn ca_hash(ca_pem: &str) -> Result<String, String> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| format!("the CA is not a PEM certificate: {e}"))?;
    Ok(hex(&Sha256::digest(der.as_ref())))
}
