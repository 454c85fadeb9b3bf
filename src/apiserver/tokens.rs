//! Service-account tokens: the TokenRequest API (`serviceaccounts/<name>/token`) issuing
//! bound tokens, and bearer-token authentication of bound and legacy secret tokens with the
//! checks kube-apiserver makes: signature, issuer, audience, time, and the service account
//! (and the object the token is bound to) still existing with the same uid.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::auth::User;
use super::objects;
use super::registry::Registry;
use super::resources;
use super::status::ApiError;
use crate::tls::service_account::{ServiceAccountKey, LEGACY_ISSUER};

/// The issuer of bound tokens (k3s's `--service-account-issuer`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audiences the API server accepts (`--api-audiences`), the issuer first.
pub const API_AUDIENCES: [&str; 2] = [ISSUER, "krab"];

/// kube's bounds on `spec.expirationSeconds`.
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;
/// Clock skew allowed on `exp` and `nbf`, as kube's validator allows.
const LEEWAY: i64 = 60;
/// How long a verified token is trusted without looking its objects up again.
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 4096;

/// Issues and checks service-account tokens with the cluster's key.
pub struct TokenAuthority {
    key: ServiceAccountKey,
    verified: Mutex<HashMap<[u8; 32], (User, Instant)>>,
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Reads an object; None when it does not exist.
async fn lookup(
    reg: &Registry,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(r) = resources::find("", "v1", plural) else {
        return Ok(None);
    };
    match reg.get(r, ns, name).await {
        Ok(obj) => Ok(Some(obj)),
        Err(e) if e.code.as_u16() == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// True when `obj` is gone for token purposes: deleted more than the leeway ago.
fn deleted_long_ago(obj: &Value) -> bool {
    let Some(ts) = obj
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
    else {
        return false;
    };
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp() + LEEWAY < unix_now())
        .unwrap_or(true)
}

fn service_account_user(ns: &str, name: &str) -> User {
    User {
        name: format!("system:serviceaccount:{ns}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    }
}

impl TokenAuthority {
    pub fn new(key: ServiceAccountKey) -> Self {
        TokenAuthority {
            key,
            verified: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self) -> &ServiceAccountKey {
        &self.key
    }

    /// POST serviceaccounts/<name>/token: a TokenRequest answered with a signed bound token.
    pub async fn request(
        &self,
        reg: &Registry,
        ns: &str,
        sa_name: &str,
        mut req: Value,
    ) -> Result<Value, ApiError> {
        let sa = lookup(reg, "serviceaccounts", Some(ns), sa_name)
            .await?
            .ok_or_else(|| ApiError::not_found("", "serviceaccounts", sa_name))?;
        let spec = req.get("spec").cloned().unwrap_or(json!({}));
        let expiration = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => 3600,
            Some(v) => v.as_i64().ok_or_else(|| {
                ApiError::bad_request("spec.expirationSeconds must be an integer")
            })?,
        };
        let invalid = |problem: String| {
            ApiError::invalid("TokenRequest", sa_name, "spec.expirationSeconds", &problem)
        };
        if expiration < MIN_EXPIRATION {
            return Err(invalid(format!(
                "Invalid value: {expiration}: may not specify a duration less than 10 minutes"
            )));
        }
        if expiration > MAX_EXPIRATION {
            return Err(invalid(format!(
                "Invalid value: {expiration}: may not specify a duration larger than 2^32 seconds"
            )));
        }
        let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => API_AUDIENCES.iter().map(|a| a.to_string()).collect(),
        };
        let mut private = json!({
            "namespace": ns,
            "serviceaccount": {"name": sa_name, "uid": str_at(&sa, "/metadata/uid")},
        });
        if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
            self.bind(reg, ns, sa_name, bound, &mut private).await?;
        }
        let now = unix_now();
        let exp = now + expiration;
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "iss": ISSUER,
            "jti": objects::new_uid(),
            "kubernetes.io": private,
            "nbf": now,
            "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
        });
        let token = self
            .key
            .sign(&claims)
            .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
        let expires = time::OffsetDateTime::from_unix_timestamp(exp)
            .map(objects::rfc3339)
            .unwrap_or_default();
        req["kind"] = json!("TokenRequest");
        req["apiVersion"] = json!("authentication.k8s.io/v1");
        req["metadata"] = json!({"name": sa_name, "namespace": ns, "creationTimestamp": null});
        req["spec"]["audiences"] = json!(audiences);
        req["spec"]["expirationSeconds"] = json!(expiration);
        req["status"] = json!({"token": token, "expirationTimestamp": expires});
        Ok(req)
    }

    /// Checks a `boundObjectRef` (Pod, Secret or Node) and records it in the private claims.
    async fn bind(
        &self,
        reg: &Registry,
        ns: &str,
        sa_name: &str,
        bound: &Value,
        private: &mut Value,
    ) -> Result<(), ApiError> {
        let kind = str_at(bound, "/kind");
        let name = str_at(bound, "/name");
        let (plural, claim, namespaced) = match (str_at(bound, "/apiVersion"), kind) {
            ("v1", "Pod") => ("pods", "pod", true),
            ("v1", "Secret") => ("secrets", "secret", true),
            ("v1", "Node") => ("nodes", "node", false),
            (v, k) => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to object of type {k}, \
                     Version={v}"
                )))
            }
        };
        let obj = lookup(reg, plural, namespaced.then_some(ns), name)
            .await?
            .ok_or_else(|| ApiError::not_found("", plural, name))?;
        let uid = str_at(&obj, "/metadata/uid");
        let wanted = str_at(bound, "/uid");
        if !wanted.is_empty() && wanted != uid {
            return Err(ApiError::conflict("", kind, name).with_message(format!(
                "Operation cannot be fulfilled on {kind} {name:?}: the UID in the bound object \
                 reference ({wanted}) does not match the UID in record. The object might have \
                 been deleted and then recreated"
            )));
        }
        if kind == "Pod" {
            let runs_as = str_at(&obj, "/spec/serviceAccountName");
            if runs_as != sa_name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to pod running with \
                     different serviceaccount name."
                )));
            }
            // kube records the pod's node too, so a token names where it was issued for.
            let node = str_at(&obj, "/spec/nodeName");
            if !node.is_empty() {
                if let Some(n) = lookup(reg, "nodes", None, node).await? {
                    private["node"] = json!({"name": node, "uid": str_at(&n, "/metadata/uid")});
                }
            }
        }
        private[claim] = json!({"name": name, "uid": uid});
        Ok(())
    }

    /// The user a bearer token stands for, or None when it is not a valid token of ours.
    pub async fn authenticate(&self, reg: &Registry, token: &str) -> Option<User> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.verified.lock() {
            if let Some((user, at)) = cache.get(&digest) {
                if at.elapsed() < CACHE_TTL {
                    return Some(user.clone());
                }
            }
        }
        let claims = match self.key.verify(token) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "bearer token refused");
                return None;
            }
        };
        let user = match str_at(&claims, "/iss") {
            ISSUER => self.bound(reg, &claims).await,
            LEGACY_ISSUER => self.legacy(reg, &claims, token).await,
            other => {
                tracing::debug!(issuer = other, "bearer token from an unknown issuer");
                None
            }
        }?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(digest, (user.clone(), Instant::now()));
        }
        Some(user)
    }

    async fn bound(&self, reg: &Registry, claims: &Value) -> Option<User> {
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences.iter().any(|a| API_AUDIENCES.contains(a)) {
            tracing::debug!(?audiences, "bearer token for another audience");
            return None;
        }
        let now = unix_now();
        let exp = claims.get("exp").and_then(Value::as_i64)?;
        let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
        if now > exp + LEEWAY || now + LEEWAY < nbf {
            tracing::debug!(exp, nbf, "bearer token outside its validity");
            return None;
        }
        let private = claims.get("kubernetes.io")?;
        let ns = str_at(private, "/namespace");
        let name = str_at(private, "/serviceaccount/name");
        let sa = lookup(reg, "serviceaccounts", Some(ns), name)
            .await
            .ok()??;
        if str_at(&sa, "/metadata/uid") != str_at(private, "/serviceaccount/uid")
            || sa.pointer("/metadata/deletionTimestamp").is_some()
        {
            return None;
        }
        for (claim, plural, namespaced) in [
            ("pod", "pods", true),
            ("secret", "secrets", true),
            ("node", "nodes", false),
        ] {
            // A pod-bound token names the pod's node for information only.
            if claim == "node" && private.get("pod").is_some() {
                continue;
            }
            let Some(bound) = private.get(claim) else {
                continue;
            };
            let obj = lookup(
                reg,
                plural,
                namespaced.then_some(ns),
                str_at(bound, "/name"),
            )
            .await
            .ok()??;
            if str_at(&obj, "/metadata/uid") != str_at(bound, "/uid") || deleted_long_ago(&obj) {
                tracing::debug!(claim, "bearer token bound to an object that is gone");
                return None;
            }
        }
        Some(service_account_user(ns, name))
    }

    async fn legacy(&self, reg: &Registry, claims: &Value, token: &str) -> Option<User> {
        let claim = |k: &str| str_at(claims, &format!("/kubernetes.io~1serviceaccount~1{k}"));
        let ns = claim("namespace");
        let name = claim("service-account.name");
        let secret = lookup(reg, "secrets", Some(ns), claim("secret.name"))
            .await
            .ok()??;
        let stored = base64::engine::general_purpose::STANDARD
            .decode(str_at(&secret, "/data/token"))
            .ok()?;
        if stored != token.as_bytes() || secret.pointer("/metadata/deletionTimestamp").is_some() {
            tracing::debug!("legacy token no longer held by its secret");
            return None;
        }
        let sa = lookup(reg, "serviceaccounts", Some(ns), name)
            .await
            .ok()??;
        if str_at(&sa, "/metadata/uid") != claim("service-account.uid") {
            return None;
        }
        Some(service_account_user(ns, name))
    }

    /// The OIDC discovery document (`/.well-known/openid-configuration`).
    pub fn openid_configuration(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": ISSUER,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}
