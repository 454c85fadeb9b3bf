//! metrics.k8s.io/v1beta1, served by the API server itself (kube gets it from metrics-server,
//! which k3s installs): NodeMetrics and PodMetrics built from each kubelet's
//! `/stats/summary`, in metrics-server's units (cpu in nanocores, memory in Ki). This is
//! what `kubectl top` and the HorizontalPodAutoscaler read.
use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::handlers::ApiState;
use super::kubelet_proxy::fetch_json;
use super::registry::ListOptions;
use super::resources::{self, Resource};
use super::selector::Filter;
use super::status::ApiError;

/// metrics-server's default resolution: the window a rate covers.
const WINDOW: &str = "10s";

fn cpu(nano_cores: Option<u64>) -> String {
    format!("{}n", nano_cores.unwrap_or(0))
}

fn memory(bytes: Option<u64>) -> String {
    format!("{}Ki", bytes.unwrap_or(0) / 1024)
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn core(plural: &str) -> Result<&'static Resource, ApiError> {
    resources::find("", "v1", plural).ok_or_else(|| ApiError::internal("no such kind"))
}

fn not_found(kind: &str, name: &str) -> ApiError {
    ApiError::not_found("metrics.k8s.io", kind, name)
}

/// The kubelets' summaries, by node name; nodes that do not answer are left out (as
/// metrics-server leaves out what it could not scrape).
async fn summaries(state: &ApiState, nodes: &[&Value]) -> HashMap<String, Value> {
    let fetches = nodes.iter().map(|n| async move {
        let name = str_at(n, "/metadata/name").to_string();
        match fetch_json(state, n, "/stats/summary").await {
            Ok(s) => Some((name, s)),
            Err(e) => {
                tracing::debug!(node = %name, error = %e.message, "no resource statistics");
                None
            }
        }
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn node_metrics(node: &Value, summary: &Value) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {
            "name": str_at(node, "/metadata/name"),
            "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string(),
            "labels": node.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        },
        "timestamp": str_at(summary, "/node/cpu/time"),
        "window": WINDOW,
        "usage": {
            "cpu": cpu(summary.pointer("/node/cpu/usageNanoCores").and_then(Value::as_u64)),
            "memory": memory(summary.pointer("/node/memory/workingSetBytes").and_then(Value::as_u64)),
        },
    })
}

fn pod_metrics(pod: &Value, stats: &Value) -> Value {
    let containers: Vec<Value> = stats["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c["name"],
                "usage": {
                    "cpu": cpu(c.pointer("/cpu/usageNanoCores").and_then(Value::as_u64)),
                    "memory": memory(c.pointer("/memory/workingSetBytes").and_then(Value::as_u64)),
                },
            })
        })
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {
            "name": str_at(pod, "/metadata/name"),
            "namespace": str_at(pod, "/metadata/namespace"),
            "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string(),
            "labels": pod.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
        },
        "timestamp": str_at(stats, "/cpu/time"),
        "window": WINDOW,
        "containers": containers,
    })
}

fn list(kind: &str, items: Vec<Value>) -> Response {
    Json(json!({
        "kind": format!("{kind}List"),
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": items,
    }))
    .into_response()
}

/// GET of `nodes` or `pods` in metrics.k8s.io (authorized by the caller).
pub async fn serve(
    state: &ApiState,
    r: &Resource,
    ns: Option<&str>,
    name: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(
        core(r.plural)?,
        query.get("labelSelector").map(String::as_str),
        query.get("fieldSelector").map(String::as_str),
    )?;
    let opts = ListOptions {
        filter,
        ..ListOptions::all()
    };
    if r.plural == "nodes" {
        let nodes = match name {
            Some(n) => vec![state
                .registry
                .get(core("nodes")?, None, n)
                .await
                .map_err(|e| {
                    if e.code == StatusCode::NOT_FOUND {
                        not_found("nodes", n)
                    } else {
                        e
                    }
                })?],
            None => {
                state
                    .registry
                    .list(core("nodes")?, None, &opts)
                    .await?
                    .items
            }
        };
        let refs: Vec<&Value> = nodes.iter().collect();
        let summaries = summaries(state, &refs).await;
        let items: Vec<Value> = nodes
            .iter()
            .filter_map(|n| {
                let s = summaries.get(str_at(n, "/metadata/name"))?;
                Some(node_metrics(n, s))
            })
            .collect();
        return match name {
            Some(n) => items
                .into_iter()
                .next()
                .map(|m| Json(m).into_response())
                .ok_or_else(|| not_found("nodes", n)),
            None => Ok(list("NodeMetrics", items)),
        };
    }
    let pods: Vec<Value> = match (ns, name) {
        (Some(ns), Some(n)) => vec![state
            .registry
            .get(core("pods")?, Some(ns), n)
            .await
            .map_err(|e| {
                if e.code == StatusCode::NOT_FOUND {
                    not_found("pods", n)
                } else {
                    e
                }
            })?],
        _ => state.registry.list(core("pods")?, ns, &opts).await?.items,
    };
    // Only running pods have usage; ask each of their nodes once.
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            str_at(p, "/status/phase") == "Running" && !str_at(p, "/spec/nodeName").is_empty()
        })
        .collect();
    let mut node_names: Vec<&str> = running
        .iter()
        .map(|p| str_at(p, "/spec/nodeName"))
        .collect();
    node_names.sort_unstable();
    node_names.dedup();
    let mut nodes = Vec::new();
    for n in node_names {
        if let Ok(node) = state.registry.get(core("nodes")?, None, n).await {
            nodes.push(node);
        }
    }
    let summaries = summaries(state, &nodes.iter().collect::<Vec<_>>()).await;
    let mut by_uid: BTreeMap<String, Value> = BTreeMap::new();
    for s in summaries.values() {
        for p in s["pods"].as_array().into_iter().flatten() {
            by_uid.insert(str_at(p, "/podRef/uid").to_string(), p.clone());
        }
    }
    let items: Vec<Value> = running
        .iter()
        .filter_map(|p| {
            let stats = by_uid.get(str_at(p, "/metadata/uid"))?;
            Some(pod_metrics(p, stats))
        })
        .collect();
    match name {
        Some(n) => items
            .into_iter()
            .next()
            .map(|m| Json(m).into_response())
            .ok_or_else(|| not_found("pods", n)),
        None => Ok(list("PodMetrics", items)),
    }
}
