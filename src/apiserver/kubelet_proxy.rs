//! Streams between a client and the kubelet of a pod's node: `pods/log`, `pods/exec`,
//! `pods/attach`, `pods/portforward` and `nodes/proxy`, forwarded as kube-apiserver forwards
//! them: the kubelet's address and port from the Node, the API server's kubelet client
//! certificate, the kubelet's serving certificate checked against the cluster's server CA,
//! and a kubelet's error answer turned into a Status.
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio_rustls::rustls;

use super::auth::User;
use super::handlers::ApiState;
use super::rbac::rules::Attributes;
use super::resources;
use super::status::ApiError;
use crate::proxy::{self, Upstream};

/// The API server's credentials toward kubelets (PEM): its client certificate and key, and
/// the CA kubelets' serving certificates are signed by.
#[derive(Clone, Debug)]
pub struct KubeletClientTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// How the API server reaches kubelets.
pub struct KubeletClient {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl KubeletClient {
    pub fn new(creds: Option<&KubeletClientTls>) -> anyhow::Result<Self> {
        let Some(creds) = creds else {
            return Ok(KubeletClient { tls: None });
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
            roots
                .add(ca.map_err(|e| anyhow::anyhow!("kubelet CA: {e}"))?)
                .map_err(|e| anyhow::anyhow!("kubelet CA: {e}"))?;
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("kubelet client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("kubelet client key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        // Upgrades (SPDY, WebSocket) need HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeletClient {
            tls: Some(Arc::new(config)),
        })
    }
}

/// What a path asks of a kubelet.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Pod {
        ns: String,
        name: String,
        sub: &'static str,
    },
    Node {
        name: String,
        rest: String,
    },
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub] => {
            let sub = match *sub {
                "log" => "log",
                "exec" => "exec",
                "attach" => "attach",
                "portforward" => "portforward",
                _ => return None,
            };
            Some(Target::Pod {
                ns: ns.to_string(),
                name: name.to_string(),
                sub,
            })
        }
        ["api", "v1", "nodes", name, "proxy", rest @ ..] => Some(Target::Node {
            name: name.to_string(),
            rest: rest.join("/"),
        }),
        _ => None,
    }
}

/// Whether this module serves `path`.
pub fn handles(path: &str) -> bool {
    parse(path).is_some()
}

fn query_pairs(req: &Request<Body>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True" | "TRUE")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The container a request names, defaulted and checked as kube-apiserver does.
fn container_of(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let app = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if app.iter().chain(&init).chain(&ephemeral).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if app.len() == 1 => Ok(app[0].clone()),
        None => {
            let mut msg = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                app.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            Err(ApiError::bad_request(msg))
        }
    }
}

/// The kubelet's address (InternalIP, ExternalIP, then Hostname, as k3s prefers) and port.
fn kubelet_address(node: &Value) -> Option<(String, u16)> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .find(|a| a.get("type").and_then(Value::as_str) == Some(kind))
                .and_then(|a| a.get("address").and_then(Value::as_str))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(10250);
    Some((ip.to_string(), port))
}

fn log_query(pairs: &[(String, String)], pod: &str) -> Result<String, ApiError> {
    let invalid =
        |field: &str, problem: String| ApiError::invalid("PodLogOptions", pod, field, &problem);
    let mut out = Vec::new();
    let mut since = 0;
    for (k, v) in pairs {
        match k.as_str() {
            "follow" | "previous" | "timestamps" if truthy(v) => {
                out.push((k.clone(), "true".to_string()));
            }
            "tailLines" | "limitBytes" | "sinceSeconds" => {
                let n: i64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{k}: invalid value {v:?}: not an integer"))
                })?;
                let min = if k == "tailLines" { 0 } else { 1 };
                if n < min {
                    return Err(invalid(
                        k,
                        format!("Invalid value: {n}: must be greater than {}", min - 1),
                    ));
                }
                since += usize::from(k == "sinceSeconds");
                out.push((k.clone(), n.to_string()));
            }
            "sinceTime" => {
                since += 1;
                out.push((k.clone(), v.clone()));
            }
            _ => {}
        }
    }
    if since > 1 {
        return Err(invalid(
            "sinceSeconds",
            "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
        ));
    }
    serde_urlencoded::to_string(&out).map_err(|e| ApiError::internal(e.to_string()))
}

/// exec/attach options in the kubelet's names (`input`, `output`, `error`, `tty`, `command`).
fn stream_query(pairs: &[(String, String)]) -> Result<String, ApiError> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let name = match k.as_str() {
            "stdin" => "input",
            "stdout" => "output",
            "stderr" => "error",
            "tty" => "tty",
            "command" => {
                out.push(("command".to_string(), v.clone()));
                continue;
            }
            _ => continue,
        };
        if truthy(v) {
            out.push((name.to_string(), "1".to_string()));
        }
    }
    serde_urlencoded::to_string(&out).map_err(|e| ApiError::internal(e.to_string()))
}

async fn get(
    state: &ApiState,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let r = resources::find("", "v1", plural).ok_or_else(|| ApiError::internal("no such kind"))?;
    state.registry.get(r, ns, name).await
}

/// Where the kubelet of `node` answers `path`, over TLS with the API server's kubelet client
/// certificate.
fn upstream_for(
    state: &ApiState,
    node_name: &str,
    node: &Value,
    path: String,
) -> Result<Upstream, ApiError> {
    let (ip, port) = kubelet_address(node).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("node {node_name:?} has no address to reach its kubelet at"),
        )
    })?;
    let tls = state.kubelets.tls.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this API server has no kubelet client credentials",
        )
    })?;
    let server_name = ServerName::try_from(ip.clone())
        .map_err(|e| ApiError::internal(format!("kubelet address {ip}: {e}")))?;
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Ok(Upstream {
        addr,
        tls: Some((tls, server_name)),
        path_and_query: path,
    })
}

/// A JSON document from the kubelet of `node` (e.g. `/stats/summary`).
/// The admission webhooks' say on a CONNECT to a pod.
async fn connect_admission(
    state: &ApiState,
    user: &User,
    sub: &str,
    ns: &str,
    name: &str,
    options: &Value,
) -> Result<(), ApiError> {
    let Some(pods) = super::resources::find("", "v1", "pods") else {
        return Ok(());
    };
    state
        .registry
        .clone()
        .requested_by(user)
        .admit_connect(pods, sub, ns, name, options)
        .await
}

pub async fn fetch_json(state: &ApiState, node: &Value, path: &str) -> Result<Value, ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let upstream = upstream_for(state, name, node, path.to_string())?;
    let resp = proxy::forward(&upstream, Request::new(Body::empty()), &state.streams)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("error dialing backend: {e}"),
            )
        })?;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        return Err(error_from(resp).await);
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .map_err(|e| ApiError::internal(format!("reading the kubelet's answer: {e}")))?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::internal(format!("the kubelet's answer is not JSON: {e}")))
}

/// Turns a kubelet's error answer into a Status.
async fn error_from(resp: Response<Body>) -> ApiError {
    let code = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        _ => "InternalError",
    };
    ApiError::new(code, reason, text)
}

/// The verb RBAC checks for a stream: reading a log is `get`; exec, attach and port-forward
/// (POST upgrades) are `create`; a node proxy follows its HTTP method.
fn verb(method: &Method, target: &Target) -> &'static str {
    match (target, method) {
        (Target::Pod { sub: "log", .. }, _) => "get",
        (_, &Method::GET) | (_, &Method::HEAD) => "get",
        (Target::Node { .. }, &Method::PUT) => "update",
        (Target::Node { .. }, &Method::PATCH) => "patch",
        (Target::Node { .. }, &Method::DELETE) => "delete",
        _ => "create",
    }
}

pub async fn serve(
    state: &ApiState,
    user: &User,
    mut req: Request<Body>,
) -> Result<Response, ApiError> {
    let target = parse(req.uri().path()).ok_or_else(|| ApiError::bad_request("no such stream"))?;
    let attrs = match &target {
        Target::Pod { ns, name, sub } => Attributes::Resource {
            verb: verb(req.method(), &target).into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: Some(sub.to_string()),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
        },
        Target::Node { name, .. } => Attributes::Resource {
            verb: verb(req.method(), &target).into(),
            group: String::new(),
            resource: "nodes".into(),
            subresource: Some("proxy".into()),
            namespace: None,
            name: Some(name.clone()),
        },
    };
    state.policy.authorize(user, &attrs).await?;
    let pairs = query_pairs(&req);
    let param = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (node_name, path, is_log) = match &target {
        Target::Pod { ns, name, sub } => {
            let pod = get(state, "pods", Some(ns), name).await?;
            let node = str_at(&pod, "/spec/nodeName").to_string();
            if node.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            let path = match *sub {
                "log" => {
                    if req.method() != Method::GET {
                        return Err(ApiError::method_not_allowed());
                    }
                    let c = container_of(&pod, name, param("container"))?;
                    format!(
                        "/containerLogs/{ns}/{name}/{c}?{}",
                        log_query(&pairs, name)?
                    )
                }
                "exec" | "attach" => {
                    let c = container_of(&pod, name, param("container"))?;
                    if *sub == "exec" && param("command").is_none() {
                        return Err(ApiError::bad_request("you must specify at least 1 command"));
                    }
                    let flag = |k: &str| matches!(param(k), Some("true" | "1"));
                    let mut options = serde_json::json!({
                        "kind": if *sub == "exec" { "PodExecOptions" } else { "PodAttachOptions" },
                        "apiVersion": "v1",
                        "stdin": flag("stdin"),
                        "stdout": flag("stdout"),
                        "stderr": flag("stderr"),
                        "tty": flag("tty"),
                        "container": c,
                    });
                    if *sub == "exec" {
                        options["command"] = pairs
                            .iter()
                            .filter(|(k, _)| k == "command")
                            .map(|(_, v)| Value::String(v.clone()))
                            .collect();
                    }
                    connect_admission(state, user, sub, ns, name, &options).await?;
                    format!("/{sub}/{ns}/{name}/{c}?{}", stream_query(&pairs)?)
                }
                _ => {
                    let ports: Vec<(&str, &str)> = pairs
                        .iter()
                        .filter(|(k, _)| k == "ports")
                        .map(|(_, v)| ("port", v.as_str()))
                        .collect();
                    let options = serde_json::json!({
                        "kind": "PodPortForwardOptions",
                        "apiVersion": "v1",
                        "ports": ports.iter().filter_map(|(_, p)| p.parse::<u16>().ok()).collect::<Vec<_>>(),
                    });
                    connect_admission(state, user, sub, ns, name, &options).await?;
                    let q = serde_urlencoded::to_string(&ports).unwrap_or_default();
                    format!("/portForward/{ns}/{name}?{q}")
                }
            };
            (node, path, *sub == "log")
        }
        Target::Node { name, rest } => {
            let q = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            (name.clone(), format!("/{rest}{q}"), false)
        }
    };
    let node = get(state, "nodes", None, &node_name).await?;
    let upstream = upstream_for(state, &node_name, &node, path)?;
    if is_log {
        // A fresh GET: the client's own headers (Accept: application/json) are not the
        // kubelet's business.
        let mut fresh = Request::new(Body::empty());
        *fresh.method_mut() = Method::GET;
        req = fresh;
    }
    let resp = proxy::forward(&upstream, req, &state.streams)
        .await
        .map_err(|e| {
            tracing::warn!(node = %node_name, error = %e, "kubelet unreachable");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("error dialing backend: {e}"),
            )
        })?;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        return Err(error_from(resp).await);
    }
    let mut resp = resp.into_response();
    if is_log {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_name_pod_streams_and_node_proxies() {
        assert_eq!(
            parse("/api/v1/namespaces/a/pods/p/log"),
            Some(Target::Pod {
                ns: "a".into(),
                name: "p".into(),
                sub: "log"
            })
        );
        assert_eq!(
            parse("/api/v1/nodes/n1/proxy/stats/summary"),
            Some(Target::Node {
                name: "n1".into(),
                rest: "stats/summary".into()
            })
        );
        assert!(parse("/api/v1/namespaces/a/pods/p/status").is_none());
        assert!(parse("/api/v1/namespaces/a/pods/p").is_none());
    }

    #[test]
    fn containers_default_and_are_checked_like_kube_apiserver() {
        let one = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "c");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "i"}]}});
        let e = container_of(&two, "p", None).unwrap_err();
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container_of(&two, "p", Some("i")).unwrap(), "i");
        let e = container_of(&two, "p", Some("z")).unwrap_err();
        assert_eq!(e.message, "container z is not valid for pod p");
    }

    #[test]
    fn options_become_the_kubelets_parameters() {
        let pairs = |q: &str| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap();
        assert_eq!(
            stream_query(&pairs("command=sh&command=-c&command=echo+hi&stdin=true&stdout=true&tty=false&container=c")).unwrap(),
            "command=sh&command=-c&command=echo+hi&input=1&output=1"
        );
        assert_eq!(
            log_query(&pairs("follow=true&tailLines=5&container=c"), "p").unwrap(),
            "follow=true&tailLines=5"
        );
        assert!(log_query(&pairs("tailLines=-1"), "p").is_err());
        assert!(log_query(&pairs("sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z"), "p").is_err());
    }
}
