//! Node lifecycle: every 5 s, a node whose kubelet has neither renewed its Lease
//! (kube-node-lease) nor posted a heartbeat for 40 s gets its conditions set to Unknown and
//! its pods marked not Ready; nodes are tainted from their conditions (not-ready or
//! unreachable NoSchedule + NoExecute, pressure and unschedulable NoSchedule) and untainted
//! when they recover; pods on a node with a NoExecute taint they do not tolerate are evicted
//! at once, those tolerating it for `tolerationSeconds` (300 s by default) after that long.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{Context, Error};
use crate::resources::placement::tolerates;

/// kube-controller-manager's --node-monitor-grace-period.
pub const GRACE: Duration = Duration::from_secs(40);
const PERIOD: Duration = Duration::from_secs(5);

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Taints this controller owns, by condition.
const CONDITION_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "node.kubernetes.io/network-unavailable",
    ),
];

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this controller first saw each node: a node is judged only after a whole grace
    // period of watching it (a server that was down does not find every node silent).
    let mut observed: HashMap<String, Timestamp> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = monitor(&ctx, &mut observed).await {
            tracing::warn!(error = %e, "node lifecycle pass failed");
        }
    }
}

fn condition<'n>(node: &'n Node, type_: &str) -> Option<&'n NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// When the node was last heard of: its Lease's renewal or its Ready heartbeat (its
/// creation when neither exists yet).
fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<Timestamp> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let heartbeat = condition(node, "Ready")
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    renewed
        .max(heartbeat)
        .or(node.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The taints the node should carry from its state (each with the time it was added,
/// kept from the node when it already has it).
pub fn wanted_taints(node: &Node, now: Timestamp) -> Vec<Taint> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    match condition(node, "Ready").map(|c| c.status.as_str()) {
        Some("True") => {}
        Some("False") => keys.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
        _ => keys.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
    }
    for (cond, key) in CONDITION_TAINTS {
        if condition(node, cond).is_some_and(|c| c.status == "True") {
            keys.push((key, "NoSchedule"));
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        keys.push((UNSCHEDULABLE, "NoSchedule"));
    }
    let existing = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    keys.into_iter()
        .map(|(key, effect)| {
            existing
                .iter()
                .find(|t| t.key == key && t.effect == effect)
                .cloned()
                .unwrap_or(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                    value: None,
                })
        })
        .collect()
}

fn managed(t: &Taint) -> bool {
    t.key == NOT_READY
        || t.key == UNREACHABLE
        || t.key == UNSCHEDULABLE
        || CONDITION_TAINTS.iter().any(|(_, k)| *k == t.key)
}

/// When a pod must leave a node with these NoExecute taints: None if it tolerates them for
/// ever, Some(now-or-past) if it tolerates one not at all.
pub fn eviction_due(pod: &Pod, taints: &[Taint], now: Timestamp) -> Option<Timestamp> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut due: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest tolerationSeconds among the matching ones; none means for ever.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let since = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = since + SignedDuration::from_secs(secs);
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    due
}

async fn monitor(ctx: &Context, observed: &mut HashMap<String, Timestamp>) -> Result<(), Error> {
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = nodes_api.list(&ListParams::default()).await?;
    let leases: HashMap<String, Lease> =
        Api::<Lease>::namespaced(ctx.client.clone(), "kube-node-lease")
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
    let now = Timestamp::now();
    observed.retain(|n, _| nodes.items.iter().any(|node| node.name_any() == *n));
    let mut pods_by_node: Option<BTreeMap<String, Vec<Pod>>> = None;
    for node in &nodes.items {
        let name = node.name_any();
        let mut node = node.clone();
        // 1. Silent for longer than the grace period: its conditions become Unknown.
        let first_seen = *observed.entry(name.clone()).or_insert(now);
        let heard = last_heard(&node, leases.get(&name)).map_or(first_seen, |t| t.max(first_seen));
        let stale = now.duration_since(heard).as_secs() > GRACE.as_secs() as i64;
        let ready = condition(&node, "Ready").map(|c| c.status.clone());
        if stale && ready.as_deref() != Some("Unknown") {
            mark_unknown(&nodes_api, &mut node, now).await?;
            tracing::warn!(node = %name, "node stopped posting status; marked Unknown");
            ctx.events
                .for_component("node-controller")
                .normal(
                    &crate::client::events::reference(&node),
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                )
                .await;
            let pods = all_pods(ctx, &mut pods_by_node).await?;
            for p in pods.get(&name).into_iter().flatten() {
                mark_pod_not_ready(ctx, p, now).await?;
            }
        }
        // 2. Taints follow conditions.
        let wanted = wanted_taints(&node, now);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let mut next: Vec<Taint> = current.iter().filter(|t| !managed(t)).cloned().collect();
        next.extend(wanted.iter().cloned());
        let same = next.len() == current.len()
            && next.iter().all(|t| {
                current
                    .iter()
                    .any(|c| c.key == t.key && c.effect == t.effect)
            });
        if !same {
            let patch = serde_json::json!({"spec": {"taints": next}});
            nodes_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = %name, taints = ?next.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints updated");
        }
        // 3. NoExecute: pods that do not tolerate the taints (long enough) leave.
        let no_execute: Vec<Taint> = next
            .into_iter()
            .filter(|t| t.effect == "NoExecute")
            .collect();
        if no_execute.is_empty() {
            continue;
        }
        let pods = all_pods(ctx, &mut pods_by_node).await?;
        for p in pods.get(&name).into_iter().flatten() {
            let finished = matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if finished || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if eviction_due(p, &no_execute, now).is_some_and(|at| at <= now) {
                evict(ctx, p, now).await?;
            }
        }
    }
    Ok(())
}

/// Every pod, by node (listed once per pass, only when a pass needs them).
async fn all_pods<'a>(
    ctx: &Context,
    cache: &'a mut Option<BTreeMap<String, Vec<Pod>>>,
) -> Result<&'a BTreeMap<String, Vec<Pod>>, Error> {
    if cache.is_none() {
        let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for p in Api::<Pod>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .items
        {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                by_node.entry(n).or_default().push(p);
            }
        }
        *cache = Some(by_node);
    }
    Ok(cache.get_or_insert_with(BTreeMap::new))
}

async fn mark_unknown(api: &Api<Node>, node: &mut Node, now: Timestamp) -> Result<(), Error> {
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        let unknown = NodeCondition {
            type_: type_.into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusUnknown".into()),
            message: Some("Kubelet stopped posting node status.".into()),
            last_transition_time: Some(Time(now)),
            last_heartbeat_time: None,
        };
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                // The last heartbeat stays: it says when the node was last heard of.
                c.status = unknown.status;
                c.reason = unknown.reason;
                c.message = unknown.message;
                c.last_transition_time = unknown.last_transition_time;
            }
            None => conditions.push(unknown),
        }
    }
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    *node = api
        .patch_status(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn mark_pod_not_ready(ctx: &Context, pod: &Pod, now: Timestamp) -> Result<(), Error> {
    let Some(mut conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
        return Ok(());
    };
    let Some(ready) = conditions.iter_mut().find(|c| c.type_ == "Ready") else {
        return Ok(());
    };
    if ready.status == "False" {
        return Ok(());
    }
    ready.status = "False".into();
    ready.reason = Some("NodeNotReady".into());
    ready.message = Some("the node the pod runs on stopped posting status".into());
    ready.last_transition_time = Some(Time(now));
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The taint manager's eviction: a DisruptionTarget condition, then deletion.
async fn evict(ctx: &Context, pod: &Pod, now: Timestamp) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "DisruptionTarget");
    conditions.push(k8s_openapi::api::core::v1::PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some("DeletionByTaintManager".into()),
        message: Some("Taint manager: deleting due to NoExecute taint".into()),
        last_transition_time: Some(Time(now)),
        ..Default::default()
    });
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    let result = api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    if let Err(kube::Error::Api(e)) = &result {
        if e.code == 404 {
            return Ok(());
        }
    }
    result?;
    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(pod = %pod.name_any(), namespace = ?pod.namespace(), node = ?pod.spec.as_ref().and_then(|s| s.node_name.clone()), "evicted a pod from a tainted node");
            ctx.events
                .for_component("taint-eviction-controller")
                .normal(
                    &crate::client::events::reference(pod),
                    "TaintManagerEviction",
                    &format!(
                        "Marking for deletion Pod {}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, unschedulable: bool) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": unschedulable, "taints": [{"key": "dedicated", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": ready}, {"type": "DiskPressure", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn taints_follow_the_node_state() {
        let now = Timestamp::now();
        let keys = |n: &Node| -> Vec<String> {
            wanted_taints(n, now)
                .iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        };
        assert_eq!(
            keys(&node("Unknown", false)),
            [
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node.kubernetes.io/disk-pressure:NoSchedule"
            ]
        );
        assert_eq!(
            keys(&node("True", true)),
            [
                "node.kubernetes.io/disk-pressure:NoSchedule",
                "node.kubernetes.io/unschedulable:NoSchedule"
            ]
        );
        assert!(keys(&node("False", false))
            .contains(&"node.kubernetes.io/not-ready:NoExecute".to_string()));
        assert!(wanted_taints(&node("False", false), now)
            .iter()
            .find(|t| t.effect == "NoExecute")
            .is_some_and(|t| t.time_added.is_some()));
    }

    #[test]
    fn pods_leave_after_their_toleration_seconds() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time("2026-01-01T00:09:00Z".parse().unwrap())),
            value: None,
        };
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap()
        };
        let t = |secs: Option<i64>| serde_json::json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}]);
        assert_eq!(
            eviction_due(
                &pod(serde_json::json!([])),
                std::slice::from_ref(&taint),
                now
            ),
            Some(now)
        );
        assert_eq!(
            eviction_due(&pod(t(Some(300))), std::slice::from_ref(&taint), now),
            Some("2026-01-01T00:14:00Z".parse().unwrap())
        );
        assert_eq!(eviction_due(&pod(t(None)), &[taint], now), None);
    }
}
