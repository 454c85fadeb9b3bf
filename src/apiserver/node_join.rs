//! How agents join (k3s's model): `/cacerts` hands anyone the server CA, which the agent
//! checks against the hash in its token before it trusts this server; then
//! `POST /v1-krab/node-credentials` with the token's secret as bearer returns the node's
//! client certificate (`system:node:<name>`) and kubelet serving certificate.
use std::path::PathBuf;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::handlers::ApiState;
use super::status::ApiError;

/// What the API server needs to let agents join.
#[derive(Clone, Debug)]
pub struct NodeJoin {
    /// The secret part of the node token.
    pub secret: String,
    /// The data dir whose `server/tls` holds the cluster CAs.
    pub data_dir: PathBuf,
    pub server_ca_pem: String,
    /// How long node certificates are valid (kube-controller-manager's
    /// `cluster-signing-duration`); agents renew them before they expire.
    pub signing_duration: std::time::Duration,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsRequest {
    node_name: String,
    #[serde(default)]
    addresses: Vec<String>,
}

/// Equal without an early exit (the secret is not leaked through timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

pub async fn cacerts(State(state): State<ApiState>) -> Response {
    match &state.node_join {
        Some(j) => (
            [(header::CONTENT_TYPE, "text/plain")],
            j.server_ca_pem.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "this server does not take agents").into_response(),
    }
}

pub async fn node_credentials(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match issue(&state, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn issue(state: &ApiState, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let join = state.node_join.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this server does not take agents",
        )
    })?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(presented.trim().as_bytes(), join.secret.as_bytes()) {
        tracing::warn!("refused node credentials to a caller with a wrong token");
        return Err(ApiError::unauthorized().with_message("the node token is not this cluster's"));
    }
    let req: CredentialsRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("node credentials request: {e}")))?;
    if !valid_node_name(&req.node_name) {
        return Err(ApiError::invalid(
            "Node",
            &req.node_name,
            "metadata.name",
            &format!(
                "Invalid value: {:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an \
                 alphanumeric character",
                req.node_name
            ),
        ));
    }
    if let Some(bad) = req
        .addresses
        .iter()
        .find(|a| a.parse::<std::net::IpAddr>().is_err())
    {
        return Err(ApiError::bad_request(format!(
            "addresses: {bad:?} is not an IP address"
        )));
    }
    let dir = join.data_dir.clone();
    let node = req.node_name.clone();
    let validity = join.signing_duration;
    let creds = tokio::task::spawn_blocking(move || {
        crate::tls::cluster::issue_node_credentials(&dir, &node, &req.addresses, validity)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("issuing node credentials: {e}")))?;
    tracing::info!(node = %req.node_name, "issued node credentials");
    Ok((StatusCode::CREATED, Json(creds)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_subdomains_and_secrets_compare_whole() {
        assert!(valid_node_name("pi-4.lan"));
        assert!(!valid_node_name("Pi"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(""));
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
