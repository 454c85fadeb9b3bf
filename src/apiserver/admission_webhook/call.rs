//! One call of an admission webhook: an HTTPS POST of the AdmissionReview to the webhook's
//! URL, or to a ready endpoint of its Service (verified as `<service>.<namespace>.svc`),
//! trusting the configuration's `caBundle` (the system's roots without one), within its
//! `timeoutSeconds`.
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio_rustls::rustls;

use crate::apiserver::registry::Registry;
use crate::apiserver::resources;

/// Where a webhook is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Url(String),
    Service {
        namespace: String,
        name: String,
        path: String,
        port: u16,
    },
}

impl Target {
    pub fn from_client_config(c: &Value) -> Option<Target> {
        if let Some(url) = c.get("url").and_then(Value::as_str) {
            return Some(Target::Url(url.to_string()));
        }
        let s = c.get("service")?;
        Some(Target::Service {
            namespace: s.get("namespace")?.as_str()?.to_string(),
            name: s.get("name")?.as_str()?.to_string(),
            path: s
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string(),
            port: s
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443),
        })
    }

    /// The URL kube names in its errors (`https://svc.ns.svc:443/path`).
    fn shown(&self) -> String {
        match self {
            Target::Url(u) => u.clone(),
            Target::Service {
                namespace,
                name,
                path,
                port,
            } => format!("https://{name}.{namespace}.svc:{port}{path}"),
        }
    }
}

/// Where to connect, what name the certificate must carry, and the request path.
struct Dial {
    addr: String,
    server_name: String,
    host_header: String,
    path: String,
}

async fn dial(target: &Target, registry: &Registry) -> Result<Dial, String> {
    match target {
        Target::Url(u) => {
            let uri: hyper::Uri = u.parse().map_err(|e| format!("invalid URL {u:?}: {e}"))?;
            if uri.scheme_str() != Some("https") {
                return Err(format!("webhook URL {u:?} is not https"));
            }
            let host = uri.host().ok_or_else(|| format!("no host in {u:?}"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            Ok(Dial {
                addr: if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                },
                host_header: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                server_name: host,
                path: uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "/".into()),
            })
        }
        Target::Service {
            namespace,
            name,
            path,
            port,
        } => {
            let addr = endpoint(registry, namespace, name, *port).await?;
            let server_name = format!("{name}.{namespace}.svc");
            Ok(Dial {
                addr,
                host_header: format!("{server_name}:{port}"),
                server_name,
                path: path.clone(),
            })
        }
    }
}

/// A ready endpoint of the Service's port `port` (its target port on a ready address).
async fn endpoint(registry: &Registry, ns: &str, name: &str, port: u16) -> Result<String, String> {
    let not_found = || format!("service \"{name}\" not found");
    let svc_r = resources::find("", "v1", "services").ok_or_else(not_found)?;
    let svc = registry
        .get(svc_r, Some(ns), name)
        .await
        .map_err(|_| not_found())?;
    let port_name = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("port").and_then(Value::as_u64) == Some(u64::from(port)))
        .map(|p| {
            p.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
        .ok_or_else(|| format!("service \"{name}\" has no port {port}"))?;
    let no_endpoints = || format!("no endpoints available for service \"{name}\"");
    let ep_r = resources::find("", "v1", "endpoints").ok_or_else(no_endpoints)?;
    let eps = registry
        .get(ep_r, Some(ns), name)
        .await
        .map_err(|_| no_endpoints())?;
    for subset in eps
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let target_port = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            .and_then(|p| p.get("port").and_then(Value::as_u64));
        let ip = subset
            .get("addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|a| a.get("ip").and_then(Value::as_str));
        if let (Some(ip), Some(p)) = (ip, target_port) {
            return Ok(if ip.contains(':') {
                format!("[{ip}]:{p}")
            } else {
                format!("{ip}:{p}")
            });
        }
    }
    Err(no_endpoints())
}

fn tls_config(ca_bundle: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem: Vec<u8> = match ca_bundle.filter(|b| !b.is_empty()) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("caBundle is not base64: {e}"))?,
        None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
    };
    for ca in CertificateDer::pem_slice_iter(&pem) {
        let ca = ca.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(ca).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// POSTs `review` and returns the webhook's answer, or kube's description of the failure
/// (`failed to call webhook: Post "<url>": ...`).
pub async fn post(
    registry: &Registry,
    target: &Target,
    ca_bundle: Option<&str>,
    timeout: Duration,
    review: &Value,
) -> Result<Value, String> {
    let shown = format!("{}?timeout={}s", target.shown(), timeout.as_secs());
    let failed = |e: String| format!("failed to call webhook: Post \"{shown}\": {e}");
    let attempt = async {
        let d = dial(target, registry).await?;
        let tls = tls_config(ca_bundle)?;
        let name = ServerName::try_from(d.server_name.clone())
            .map_err(|e| format!("invalid server name {:?}: {e}", d.server_name))?;
        let tcp = tokio::net::TcpStream::connect(&d.addr)
            .await
            .map_err(|e| format!("dial tcp {}: {e}", d.addr))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let sep = if d.path.contains('?') { '&' } else { '?' };
        let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
        let req = hyper::Request::post(format!("{}{sep}timeout={}s", d.path, timeout.as_secs()))
            .header(hyper::header::HOST, d.host_header)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async move {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            drop(sender);
            Ok::<_, String>((status, bytes))
        };
        // The connection is driven alongside the exchange and ends with it.
        let (result, _) = tokio::join!(exchange, conn);
        let (status, bytes) = result?;
        if !status.is_success() {
            return Err(format!(
                "the server responded with {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("the response is not an AdmissionReview: {e}"))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(failed("context deadline exceeded".into())),
    }
}
