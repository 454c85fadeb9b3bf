//! `krab agent --server --token`: recognise the server's CA by the hash in the token before
//! trusting anything (fetched from `/cacerts` over an unverified connection, then compared),
//! then obtain this node's credentials over a connection verified against that CA by
//! presenting the token's secret, write them under `<data-dir>/agent`, and build the
//! node's API client from them. Every failure names what is wrong; nothing retries silently.
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::tls::cluster::NodeCredentials;
use crate::tls::token::{ca_hash, Token};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the token has no CA hash (K10<hash>::node:<secret>); use the token in the server's \
         <data-dir>/server/node-token"
    )]
    NoCaHash,
    #[error("--server {url}: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot reach the server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error(
        "the server at {url} does not present the CA this token names (sha256 {want}, it has \
         {got}): wrong token or wrong server"
    )]
    CaMismatch {
        url: String,
        want: String,
        got: String,
    },
    #[error("the server at {url} refused the token: {message}")]
    Refused { url: String, message: String },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the node's kubeconfig: {0}")]
    Kubeconfig(String),
}

/// The node's identity after joining.
pub struct Joined {
    pub client: kube::Client,
    pub credentials: NodeCredentials,
    /// The certificates the client and the kubelet API present, renewed in place.
    pub identity: std::sync::Arc<super::credentials::NodeIdentity>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A client for `url` that trusts `ca_pem` (or, with None, anything) and carries `token`.
fn raw_client(
    url: &str,
    ca_pem: Option<&str>,
    token: Option<&str>,
) -> Result<kube::Client, JoinError> {
    let bad = |message: String| JoinError::BadUrl {
        url: url.to_string(),
        message,
    };
    let mut config = kube::Config::new(url.parse().map_err(|e| bad(format!("{e}")))?);
    match ca_pem {
        Some(pem) => {
            let ders = rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .map(|c: Result<rustls_pki_types::CertificateDer<'static>, _>| {
                    c.map(|c| c.as_ref().to_vec())
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("CA: {e}")))?;
            config.root_cert = Some(ders);
        }
        None => config.accept_invalid_certs = true,
    }
    if let Some(t) = token {
        config.auth_info.token = Some(t.to_string().into());
    }
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    config.read_timeout = Some(std::time::Duration::from_secs(30));
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), JoinError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |error| JoinError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    if private {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn unreachable(url: &str, e: kube::Error) -> JoinError {
    JoinError::Unreachable {
        url: url.to_string(),
        message: e.to_string(),
    }
}

/// Joins the server at `url` as node `node` reachable at `addresses`.
pub async fn join(
    url: &str,
    token: &str,
    node: &str,
    addresses: &[String],
    data_dir: &Path,
) -> Result<Joined, JoinError> {
    let url = url.trim_end_matches('/');
    let token = Token::parse(token);
    let want = token.ca_hash.clone().ok_or(JoinError::NoCaHash)?;

    // 1. The CA, unverified, then checked against the token.
    let insecure = raw_client(url, None, None)?;
    let ca_pem = insecure
        .request_text(
            axum::http::Request::get("/cacerts")
                .body(Vec::new())
                .map_err(|e| JoinError::Kubeconfig(e.to_string()))?,
        )
        .await
        .map_err(|e| unreachable(url, e))?;
    let got = ca_hash(&ca_pem).unwrap_or_else(|e| format!("no CA ({e})"));
    if got != want {
        return Err(JoinError::CaMismatch {
            url: url.to_string(),
            want,
            got,
        });
    }

    // 2. The node's credentials, over a connection verified against that CA.
    let credentials = request_credentials(url, &ca_pem, &token.secret, node, addresses).await?;
    // 3. Written where k3s keeps them, and the node's client.
    write_credentials(data_dir, url, node, &credentials)?;
    let identity = super::credentials::NodeIdentity::new(&credentials)
        .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    let client = super::credentials::node_client(url, &credentials.server_ca, &identity)
        .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    tracing::info!(server = %url, node, "joined: credentials written to {}", data_dir.join("agent").display());
    Ok(Joined {
        client,
        credentials,
        identity,
    })
}

/// New credentials for a node that has joined (the CA it already trusts, the same token),
/// written in place of the old ones.
pub async fn renew(
    url: &str,
    token: &str,
    node: &str,
    addresses: &[String],
    data_dir: &Path,
) -> Result<NodeCredentials, JoinError> {
    let url = url.trim_end_matches('/');
    let path = data_dir.join("agent").join("server-ca.crt");
    let ca_pem = std::fs::read_to_string(&path).map_err(|error| JoinError::Io { path, error })?;
    let token = Token::parse(token);
    let credentials = request_credentials(url, &ca_pem, &token.secret, node, addresses).await?;
    write_credentials(data_dir, url, node, &credentials)?;
    Ok(credentials)
}

async fn request_credentials(
    url: &str,
    ca_pem: &str,
    secret: &str,
    node: &str,
    addresses: &[String],
) -> Result<NodeCredentials, JoinError> {
    let verified = raw_client(url, Some(ca_pem), Some(secret))?;
    let body = serde_json::json!({"nodeName": node, "addresses": addresses}).to_string();
    let request = axum::http::Request::post("/v1-krab/node-credentials")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(body.into_bytes())
        .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    match verified.request(request).await {
        Ok(c) => Ok(c),
        Err(kube::Error::Api(s)) => Err(JoinError::Refused {
            url: url.to_string(),
            message: s.message,
        }),
        Err(e) => Err(unreachable(url, e)),
    }
}

/// The credentials and the node's kubeconfig, where k3s keeps them.
fn write_credentials(
    data_dir: &Path,
    url: &str,
    node: &str,
    credentials: &NodeCredentials,
) -> Result<(), JoinError> {
    let dir = data_dir.join("agent");
    write(&dir.join("server-ca.crt"), &credentials.server_ca, false)?;
    write(&dir.join("client-ca.crt"), &credentials.client_ca, false)?;
    write(
        &dir.join("client-kubelet.crt"),
        &credentials.client_certificate,
        false,
    )?;
    write(
        &dir.join("client-kubelet.key"),
        &credentials.client_key,
        true,
    )?;
    write(
        &dir.join("serving-kubelet.crt"),
        &credentials.serving_certificate,
        false,
    )?;
    write(
        &dir.join("serving-kubelet.key"),
        &credentials.serving_key,
        true,
    )?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: krab\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {}\nusers:\n- name: system:node:{node}\n  user:\n    \
         client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: krab\n  \
         context: {{cluster: krab, user: \"system:node:{node}\"}}\ncurrent-context: krab\n",
        b64(&credentials.server_ca),
        b64(&credentials.client_certificate),
        b64(&credentials.client_key),
    );
    write(&dir.join("kubelet.kubeconfig"), &kubeconfig, true)?;
    Ok(())
}
