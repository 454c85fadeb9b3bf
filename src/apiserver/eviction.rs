//! The pods/eviction subresource as kube-apiserver serves it: a pod is deleted only if its
//! PodDisruptionBudget allows one more disruption, which is taken from the budget's
//! `disruptionsAllowed` and noted in `disruptedPods` in the same step (an update on the
//! budget's resourceVersion, so two evictions never spend one disruption). Pending and
//! finished pods, pods already being deleted and, per `unhealthyPodEvictionPolicy`,
//! unready pods go without asking; otherwise kube's 429 TooManyRequests.
use std::collections::BTreeMap;

use axum::http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

use super::objects;
use super::registry::{DeleteOptions, ListOptions, Registry};
use super::resources::{self, Resource};
use super::status::ApiError;
use super::strategy::Write;
use crate::resources::placement::label_selector_matches;

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// How many times a conflicting budget update is retried.
const ATTEMPTS: usize = 5;

fn too_many(cause: String) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", VIOLATION);
    e.causes = vec![json!({"reason": "DisruptionBudget", "message": cause})];
    e
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Whether a budget covers the pod: same namespace, and a selector (an empty one covers
/// every pod, a missing one none) that matches its labels.
fn covers(pdb: &Value, pod_labels: &BTreeMap<String, String>) -> bool {
    pdb.pointer("/spec/selector")
        .filter(|s| !s.is_null())
        .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
        .is_some_and(|sel| label_selector_matches(&sel, pod_labels))
}

/// Evicts a pod: checks its budget, spends one disruption, deletes the pod.
pub async fn evict(
    reg: &Registry,
    pods: &Resource,
    ns: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(), ApiError> {
    let pod = reg.get(pods, Some(ns), name).await?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    if deleting || matches!(phase, "Succeeded" | "Failed" | "Pending" | "") {
        reg.delete(pods, Some(ns), name, opts).await?;
        return Ok(());
    }
    let Some(pdbs) = resources::find("policy", "v1", "poddisruptionbudgets") else {
        reg.delete(pods, Some(ns), name, opts).await?;
        return Ok(());
    };
    let pod_labels = labels(&pod);
    for _ in 0..ATTEMPTS {
        let budgets: Vec<Value> = reg
            .list(pdbs, Some(ns), &ListOptions::all())
            .await?
            .items
            .into_iter()
            .filter(|b| covers(b, &pod_labels))
            .collect();
        let budget = match budgets.len() {
            0 => {
                reg.delete(pods, Some(ns), name, opts).await?;
                return Ok(());
            }
            1 => &budgets[0],
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ))
            }
        };
        let budget_name = budget
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let status = |f: &str| {
            budget
                .pointer(&format!("/status/{f}"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let (healthy, desired) = (status("currentHealthy"), status("desiredHealthy"));
        if !ready(&pod) {
            let policy = budget
                .pointer("/spec/unhealthyPodEvictionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("IfHealthyBudget");
            // An unready pod does not count as healthy: evicting it costs nothing, as long
            // as the budget is met (or always, under AlwaysAllow).
            if policy == "AlwaysAllow" || healthy >= desired {
                reg.delete(pods, Some(ns), name, opts).await?;
                return Ok(());
            }
            return Err(too_many(format!(
                "The disruption budget {budget_name} needs {desired} healthy pods and has {healthy} currently"
            )));
        }
        let generation = budget
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if status("observedGeneration") < generation {
            return Err(too_many(format!(
                "The disruption budget {budget_name} is still being processed by the server."
            )));
        }
        let allowed = status("disruptionsAllowed");
        if allowed <= 0 {
            return Err(too_many(format!(
                "The disruption budget {budget_name} needs {desired} healthy pods and has {healthy} currently"
            )));
        }
        let mut spent = budget.clone();
        spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !spent["status"]["disruptedPods"].is_object() {
            spent["status"]["disruptedPods"] = json!({});
        }
        spent["status"]["disruptedPods"][name] = json!(objects::now_rfc3339());
        match reg
            .update(pdbs, Some(ns), budget_name, spent, Write::Status)
            .await
        {
            Ok(_) => {
                reg.delete(pods, Some(ns), name, opts).await?;
                return Ok(());
            }
            // Another eviction spent a disruption meanwhile: judge again.
            Err(e) if e.code == StatusCode::CONFLICT => continue,
            Err(e) => return Err(e),
        }
    }
    Err(too_many(
        "The disruption budget could not be updated: too many concurrent evictions".into(),
    ))
}
