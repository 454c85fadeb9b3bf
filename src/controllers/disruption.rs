//! PodDisruptionBudget status (kube's disruption controller): the pods a budget selects,
//! how many of them should exist (`expectedPods`: the pods themselves for an integer
//! minAvailable, else their controllers' replicas), how many must stay healthy
//! (`desiredHealthy`), how many are (`currentHealthy`: Ready, not leaving, not just
//! evicted), and so how many may be disrupted now (`disruptionsAllowed`, the
//! DisruptionAllowed condition). Evictions recorded in `disruptedPods` count as gone until
//! the pod is deleted, or for 2 minutes.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{retry_after, unless_missing, Context, Error};
use crate::resources::placement::label_selector_matches;

/// kube's DeletionTimeout: an eviction not followed by the pod's deletion within this long
/// is forgotten.
const EVICTION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let controller = Controller::new(
        Api::<PodDisruptionBudget>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let budgets = controller.store();
    controller
        .watches(
            Api::<Pod>::all(ctx.client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                budgets
                    .state()
                    .into_iter()
                    .filter(|b| b.namespace().as_deref() == Some(ns.as_str()))
                    .map(|b| ObjectRef::from_obj(&*b))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn error_policy(pdb: Arc<PodDisruptionBudget>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(budget = %pdb.name_any(), namespace = ?pdb.namespace(), error = %e, "disruption budget sync failed");
    Action::requeue(retry_after(e))
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `value` of an int-or-percent against `total`, percentages rounded up (kube's
/// GetScaledValueFromIntOrPercent with roundUp).
fn scaled(v: &IntOrString, total: i32) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some(((pct * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// The replicas of the controllers owning the pods (each counted once), or why not.
async fn expected_from_controllers(ctx: &Context, ns: &str, pods: &[Pod]) -> Result<i32, String> {
    let mut owners: BTreeSet<(String, String, String)> = BTreeSet::new();
    for p in pods {
        let Some(o) = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        else {
            return Err(format!("found no controllers for pod \"{}\"", p.name_any()));
        };
        owners.insert((o.api_version.clone(), o.kind.clone(), o.name.clone()));
    }
    let mut total = 0;
    let mut counted: BTreeSet<(String, String)> = BTreeSet::new();
    for (api_version, kind, name) in owners {
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let mut owner = fetch(ctx, ns, group, version, &kind, &name).await?;
        // A ReplicaSet of a Deployment: the Deployment's replicas are what is expected.
        if kind == "ReplicaSet" {
            let parent = owner
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(|o| o.name.clone());
            if let Some(d) = parent {
                owner = fetch(ctx, ns, "apps", "v1", "Deployment", &d).await?;
            }
        }
        let key = (
            owner
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default(),
            owner.name_any(),
        );
        if !counted.insert(key) {
            continue;
        }
        let replicas = owner
            .data
            .pointer("/spec/replicas")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(1);
        total += replicas as i32;
    }
    Ok(total)
}

async fn fetch(
    ctx: &Context,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    name: &str,
) -> Result<DynamicObject, String> {
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural,
    };
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    match api.get(name).await {
        Ok(o) => Ok(o),
        Err(e) => Err(format!("{kind} {ns}/{name}: {e}")),
    }
}

#[tracing::instrument(name = "disruption", level = "debug", skip_all, fields(kind = "PodDisruptionBudget", namespace = ?pdb.namespace(), name = %pdb.name_any()))]
async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pdb.namespace().unwrap_or_default();
    let name = pdb.name_any();
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods: Vec<Pod> = match &spec.selector {
        None => Vec::new(),
        Some(sel) => Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| label_selector_matches(sel, p.labels()))
            .collect(),
    };
    let now = Timestamp::now();
    // Evictions still in flight: the pod exists, is not yet leaving, and was evicted less
    // than two minutes ago.
    let mut disrupted: BTreeMap<String, String> = BTreeMap::new();
    let mut next_expiry: Option<Duration> = None;
    for (pod_name, at) in pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
    {
        let Some(p) = pods.iter().find(|p| p.name_any() == pod_name) else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let age = now.duration_since(at.0).unsigned_abs();
        if age >= EVICTION_TIMEOUT {
            continue;
        }
        let left = EVICTION_TIMEOUT - age;
        next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
        disrupted.insert(pod_name, at.0.to_string());
    }
    let healthy = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && ready(p)
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let computed = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(min)), _) => Ok((pods.len() as i32, *min)),
        (Some(min), _) => expected_from_controllers(&ctx, &ns, &pods)
            .await
            .map(|expected| (expected, scaled(min, expected).unwrap_or(expected))),
        (None, Some(max)) => expected_from_controllers(&ctx, &ns, &pods)
            .await
            .map(|expected| {
                (
                    expected,
                    (expected - scaled(max, expected).unwrap_or(0)).max(0),
                )
            }),
        // Neither: kube defaults minAvailable to 1.
        (None, None) => Ok((pods.len() as i32, 1)),
    };
    let generation = pdb.metadata.generation;
    let (expected, desired, allowed, condition) = match computed {
        Ok((expected, desired)) => {
            let allowed = (healthy - desired).max(0);
            let condition = if allowed > 0 {
                json!({"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": ""})
            } else {
                json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": ""})
            };
            (expected, desired, allowed, condition)
        }
        Err(why) => {
            tracing::info!(%why, "cannot work out the expected pods");
            (
                0,
                0,
                0,
                json!({"type": "DisruptionAllowed", "status": "False", "reason": "SyncFailed", "message": why}),
            )
        }
    };
    let current = pdb.status.clone().unwrap_or_default();
    let old_condition = current
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let same_condition = old_condition.is_some_and(|c| {
        json!(c.status) == condition["status"] && json!(c.reason) == condition["reason"]
    });
    let old_disrupted: BTreeMap<String, String> = current
        .disrupted_pods
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0.to_string()))
        .collect();
    let unchanged = current.current_healthy == healthy
        && current.desired_healthy == desired
        && current.expected_pods == expected
        && current.disruptions_allowed == allowed
        && current.observed_generation == generation
        && same_condition
        && old_disrupted == disrupted;
    if !unchanged {
        let transition = match old_condition {
            Some(c) if same_condition => json!(c.last_transition_time),
            _ => json!(now.to_string()),
        };
        let mut condition = condition;
        condition["lastTransitionTime"] = transition;
        condition["observedGeneration"] = json!(generation);
        let patch = json!({"status": {
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": allowed,
            "observedGeneration": generation,
            "disruptedPods": if disrupted.is_empty() { serde_json::Value::Null } else { json!(disrupted) },
            "conditions": [condition],
        }});
        unless_missing(
            Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    Ok(match next_expiry {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up_like_kube() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3), Some(2));
        assert_eq!(scaled(&IntOrString::String("10%".into()), 10), Some(1));
        assert_eq!(scaled(&IntOrString::Int(2), 10), Some(2));
        assert_eq!(scaled(&IntOrString::String("x".into()), 10), None);
    }
}
