//! The kubelet's HTTPS API (port 10250): container logs, exec, attach and port-forward
//! (through containerd's CRI streaming server), the pods bound here, resource statistics
//! (`/stats/summary`, and `/metrics/resource` for Prometheus), and health. Callers
//! present a client certificate of the cluster's client CA; only the API server's
//! (`system:kube-apiserver`) and `system:masters` may use it, others get 403.
mod logs;
mod streaming;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::cri::{self, Cri};
use super::kubelet::Kubelet;
use crate::https::PeerCertificate;
use crate::proxy::Streams;

/// The kubelet's serving certificate and the CA its callers' certificates are signed by.
#[derive(Clone, Debug)]
pub struct KubeletServingTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
    /// A joined node's certificates, renewed while serving (then `cert_pem`/`key_pem` are
    /// only the first ones).
    pub identity: Option<std::sync::Arc<crate::agent::credentials::NodeIdentity>>,
}

#[derive(Clone)]
struct ApiState {
    kubelet: Arc<Kubelet>,
    streams: Streams,
}

/// A kubelet answer that is not a success: plain text, as the kubelet writes errors.
#[derive(Debug)]
struct KubeletError(StatusCode, String);

impl IntoResponse for KubeletError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn bad_request(msg: impl Into<String>) -> KubeletError {
    KubeletError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> KubeletError {
    KubeletError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Serves the kubelet API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: KubeletServingTls,
    kubelet: Arc<Kubelet>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = match &tls.identity {
        Some(identity) => {
            crate::https::tls_config_resolved(identity.serving_resolver(), &tls.client_ca_pem)?
        }
        None => crate::https::tls_config(&tls.cert_pem, &tls.key_pem, &tls.client_ca_pem)?,
    };
    let streams = Streams::new(shutdown.clone());
    let state = ApiState {
        kubelet,
        streams: streams.clone(),
    };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/stats/summary", get(summary))
        .route("/metrics/resource", get(resource_metrics))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/exec/{ns}/{pod}/{container}", any(streaming::exec))
        .route("/attach/{ns}/{pod}/{container}", any(streaming::attach))
        .route("/portForward/{ns}/{pod}", any(streaming::port_forward))
        .layer(middleware::from_fn(authorize))
        .with_state(state);
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving the kubelet API");
    let served = crate::https::serve(listener, config, router, shutdown).await;
    streams.drain(std::time::Duration::from_secs(5)).await;
    served
}

/// Only the API server and cluster admins reach the kubelet; /healthz is open to any
/// authenticated caller.
async fn authorize(request: Request, next: Next) -> Response {
    let subject = request
        .extensions()
        .get::<PeerCertificate>()
        .and_then(PeerCertificate::subject);
    let Some((name, groups)) = subject else {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    };
    let allowed = name == "system:kube-apiserver"
        || groups.iter().any(|g| g == "system:masters")
        || request.uri().path() == "/healthz";
    if !allowed {
        let msg = format!(
            "Forbidden (user={name}, verb={}, resource=nodes, subresource=proxy)",
            request.method().as_str().to_lowercase()
        );
        return (StatusCode::FORBIDDEN, msg).into_response();
    }
    next.run(request).await
}

/// The pods bound to this node, as a PodList (what `/pods` answers on a kubelet).
async fn pods(State(s): State<ApiState>) -> Result<Response, KubeletError> {
    let k = &s.kubelet;
    let list = Api::<Pod>::all(k.client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", k.node_name)))
        .await
        .map_err(internal)?;
    let items: Vec<serde_json::Value> = list
        .items
        .into_iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect();
    Ok(Json(serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
    .into_response())
}

/// The last resource sample (kube's Summary API, CPU and memory); 503 until the first.
async fn summary(State(s): State<ApiState>) -> Result<Response, KubeletError> {
    match s.kubelet.stats.latest() {
        Some(summary) => Ok(Json(&*summary).into_response()),
        None => Err(KubeletError(
            StatusCode::SERVICE_UNAVAILABLE,
            "resource statistics are not collected yet".into(),
        )),
    }
}

/// `/metrics/resource`: the last sample in Prometheus' text format.
async fn resource_metrics(State(s): State<ApiState>) -> Response {
    let summary = s.kubelet.stats.latest();
    let body = crate::agent::kubelet::resource_metrics::render(summary.as_deref());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The sandbox of pod `ns/name` on this node (the newest, ready ones first).
async fn sandbox_of(cri: &Cri, ns: &str, pod: &str) -> Result<cri::Sandbox, KubeletError> {
    cri.list_sandboxes()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|s| s.namespace == ns && s.name == pod)
        .max_by_key(|s| (s.ready, s.created_at))
        .ok_or_else(|| {
            KubeletError(
                StatusCode::NOT_FOUND,
                format!("pod {pod:?} in namespace {ns:?} is not running on this node"),
            )
        })
}

/// The newest container `name` of pod `ns/pod`; a message like the kubelet's when there is
/// none yet.
async fn container_of(
    k: &Kubelet,
    ns: &str,
    pod: &str,
    name: &str,
) -> Result<(cri::Sandbox, cri::Container), KubeletError> {
    let sandbox = sandbox_of(&k.cri, ns, pod).await?;
    let found = k
        .cri
        .list_containers()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|c| c.sandbox_id == sandbox.id && c.name == name)
        .max_by_key(|c| (c.attempt, c.created_at));
    match found {
        Some(c) => Ok((sandbox, c)),
        None => {
            let reason = waiting_reason(k, ns, pod, name)
                .await
                .unwrap_or_else(|| "ContainerCreating".into());
            Err(bad_request(format!(
                "container {name:?} in pod {pod:?} is waiting to start: {reason}"
            )))
        }
    }
}

/// Why the API says the container waits (ContainerCreating, CrashLoopBackOff, ...).
async fn waiting_reason(k: &Kubelet, ns: &str, pod: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(k.client.clone(), ns)
        .get_opt(pod)
        .await
        .ok()??;
    let status = pod.status?;
    status
        .container_statuses
        .into_iter()
        .flatten()
        .chain(status.init_container_statuses.into_iter().flatten())
        .find(|c| c.name == name)?
        .state?
        .waiting?
        .reason
}

fn query_pairs(request: &Request) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

async fn container_logs(
    State(s): State<ApiState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    request: Request,
) -> Result<Response, KubeletError> {
    let mut opts = logs::LogOptions::from_query(&query_pairs(&request)).map_err(bad_request)?;
    let k = &s.kubelet;
    let (_, c) = container_of(k, &ns, &pod, &container).await?;
    let detail = k.cri.container_status(&c.id).await.map_err(internal)?;
    let mut path = std::path::PathBuf::from(&detail.log_path);
    if opts.previous {
        let previous = c
            .attempt
            .checked_sub(1)
            .map(|a| path.with_file_name(format!("{a}.log")));
        match previous.filter(|p| p.exists()) {
            Some(p) => {
                // A terminated container's log does not grow.
                path = p;
                opts.follow = false;
            }
            None => {
                return Err(bad_request(format!(
                    "previous terminated container {container:?} in pod {pod:?} not found"
                )))
            }
        }
    }
    let body = Body::from_stream(logs::stream(path, opts, k.cri.clone(), c.id));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain")], body).into_response())
}
