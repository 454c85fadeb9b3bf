//! The DaemonSet controller: one pod of the template on every node that may run it (node
//! selector, required node affinity, taints the pod tolerates, with the tolerations kube
//! gives every daemon pod), none elsewhere; each pod pinned to its node by node affinity on
//! `metadata.name`, so the scheduler binds it there. Template revisions are
//! ControllerRevisions (`kubectl rollout history/undo`), pods carry their revision's hash,
//! and RollingUpdate replaces old pods within maxUnavailable (or, with maxSurge, starts the
//! new pod first); OnDelete waits for someone to delete them. Failed daemon pods are
//! replaced. The status has kube's counts.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::replicaset::{owned_by, selector_query};
use super::{retry_after, Context, Error};
use crate::resources::placement::{node_selector_matches, tolerated};

use super::history::REVISION_HASH;

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), watcher::Config::default());
    // A node that comes, goes or changes may change where every DaemonSet runs.
    let daemonsets = controller.store();
    controller
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_| {
                daemonsets
                    .state()
                    .iter()
                    .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn error_policy(ds: Arc<DaemonSet>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(daemonset = %ds.name_any(), namespace = ?ds.namespace(), error = %e, "reconcile failed");
    Action::requeue(retry_after(e))
}

/// The tolerations the DaemonSet controller adds to every daemon pod (kube's
/// `AddOrUpdateDaemonPodTolerations`): daemons keep running on nodes that are not ready,
/// unreachable, under pressure or cordoned.
pub fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut out = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// The pod the DaemonSet would run on `node` (its template, the daemon tolerations, pinned
/// to the node by a required node affinity term on `metadata.name`).
fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str, owner: &OwnerReference) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut tolerations = spec.tolerations.take().unwrap_or_default();
    for t in daemon_tolerations(spec.host_network.unwrap_or(false)) {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    spec.tolerations = Some(tolerations);
    pin_to_node(&mut spec, node);
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    if let Some(g) = ds.metadata.generation {
        labels.insert("pod-template-generation".into(), g.to_string());
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            labels: Some(labels),
            annotations: template.metadata.and_then(|m| m.annotations),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Requires `metadata.name In [node]` in every required node affinity term (one term when
/// there are none), replacing any `metadata.name` field match, as kube does.
fn pin_to_node(spec: &mut k8s_openapi::api::core::v1::PodSpec, node: &str) {
    let field = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.into()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(NodeSelector::default);
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        let mut fields: Vec<NodeSelectorRequirement> = term
            .match_fields
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.key != "metadata.name")
            .collect();
        fields.push(field.clone());
        term.match_fields = Some(fields);
    }
}

/// Whether the DaemonSet's pod may run on a node: selector and affinity admit it and every
/// NoSchedule/NoExecute taint is tolerated (with the daemon tolerations).
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let pod = daemon_pod(
        ds,
        &node.name_any(),
        "",
        &OwnerReference {
            api_version: String::new(),
            kind: String::new(),
            name: String::new(),
            uid: String::new(),
            ..Default::default()
        },
    );
    if !node_selector_matches(&pod, node) {
        return false;
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerated(&tolerations, t))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready` (kube's "available"); else how long until it will be.
fn available_in(pod: &Pod, min_ready: i64) -> Option<Duration> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    if min_ready <= 0 {
        return Some(Duration::ZERO);
    }
    let since = cond.last_transition_time.as_ref()?.0;
    let ready_for = k8s_openapi::jiff::Timestamp::now()
        .duration_since(since)
        .as_secs();
    Some(Duration::from_secs((min_ready - ready_for).max(0) as u64))
}

fn is_available(pod: &Pod, min_ready: i64) -> bool {
    available_in(pod, min_ready) == Some(Duration::ZERO)
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_HASH).map(String::as_str)
}

/// `maxUnavailable`/`maxSurge` against the number of daemon nodes (percentages round up
/// for unavailable, as kube's intstr scaling does; surge too).
fn scaled(v: Option<&IntOrString>, total: usize, default: usize) -> usize {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => (*n).max(0) as usize,
        Some(IntOrString::String(s)) => {
            let pct: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            (pct * total).div_ceil(100)
        }
    }
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "DaemonSet", namespace = ?ds.namespace(), name = %ds.name_any()))]
async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = ds.namespace().ok_or(Error::Missing("namespace"))?;
    let name = ds.name_any();
    let uid = ds.uid().ok_or(Error::Missing("uid"))?;
    let spec = ds.spec.clone().ok_or(Error::Missing("spec"))?;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let owner = OwnerReference {
        api_version: DaemonSet::api_version(&()).to_string(),
        kind: DaemonSet::kind(&()).to_string(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let template_json = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = super::template_hash::compute(
        &template_json,
        ds.status.as_ref().and_then(|s| s.collision_count),
    );
    let revision = super::history::ensure_revision(
        &ctx,
        &ns,
        &super::history::Revision {
            name: format!("{name}-{hash}"),
            hash: hash.clone(),
            template: template_json.clone(),
            labels: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            history_limit: spec.revision_history_limit.unwrap_or(10),
        },
        &owner,
        &[],
    )
    .await?
    .revision;

    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = pods_api
        .list(&ListParams::default().labels(&selector_query(&spec.selector)))
        .await?;
    let mut by_node: HashMap<String, Vec<Pod>> = HashMap::new();
    let mut deletes: Vec<String> = Vec::new();
    for p in pods.items.into_iter().filter(|p| owned_by(p, &uid)) {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Failed" | "Succeeded")) {
            // A daemon pod that ended is replaced.
            deletes.push(p.name_any());
            continue;
        }
        // The node a daemon pod is for: where it is bound, else where it is pinned.
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .or_else(|| pinned_node(&p))
            .unwrap_or_default();
        by_node.entry(node).or_default().push(p);
    }
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let eligible: BTreeMap<String, bool> = nodes
        .items
        .iter()
        .map(|n| (n.name_any(), should_run(&ds, n)))
        .collect();
    let mut creates: Vec<String> = Vec::new();
    let mut misscheduled = 0;
    for (node, pods) in &mut by_node {
        if !eligible.get(node).copied().unwrap_or(false) {
            misscheduled += 1;
            deletes.extend(pods.iter().map(|p| p.name_any()));
            pods.clear();
        }
    }
    for (node, ok) in &eligible {
        if !ok {
            continue;
        }
        let pods = by_node.entry(node.clone()).or_default();
        // The oldest pods of each revision stay; duplicates go.
        pods.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        let mut seen_hashes: Vec<Option<String>> = Vec::new();
        pods.retain(|p| {
            let h = hash_of(p).map(str::to_string);
            if seen_hashes.contains(&h) {
                deletes.push(p.name_any());
                false
            } else {
                seen_hashes.push(h);
                true
            }
        });
        if pods.is_empty() {
            creates.push(node.clone());
        }
    }
    let desired = eligible.values().filter(|ok| **ok).count();
    let mut requeue = Duration::from_secs(300);
    // Rolling update: old pods give way within the budget.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let ru = strategy.rolling_update.unwrap_or_default();
        let max_surge = scaled(ru.max_surge.as_ref(), desired, 0);
        let max_unavailable = scaled(ru.max_unavailable.as_ref(), desired, 1);
        let max_unavailable = if max_surge == 0 {
            max_unavailable.max(1)
        } else {
            max_unavailable
        };
        let mut unavailable = 0;
        let mut old_unavailable = Vec::new();
        let mut old_available = Vec::new();
        let mut surging = 0;
        let mut surge_candidates = Vec::new();
        for (node, ok) in &eligible {
            if !ok {
                continue;
            }
            let pods = by_node.get(node).cloned().unwrap_or_default();
            let new = pods.iter().find(|p| hash_of(p) == Some(hash.as_str()));
            let old: Vec<&Pod> = pods
                .iter()
                .filter(|p| hash_of(p) != Some(hash.as_str()))
                .collect();
            let any_available = pods.iter().any(|p| is_available(p, min_ready));
            if !any_available {
                unavailable += 1;
            }
            if let Some(wait) = pods
                .iter()
                .filter_map(|p| available_in(p, min_ready))
                .filter(|d| !d.is_zero())
                .min()
            {
                requeue = requeue.min(wait + Duration::from_secs(1));
            }
            match (new, old.is_empty()) {
                (_, true) => {}
                (Some(n), false) => {
                    // The new pod is there: old ones go once it is available.
                    if is_available(n, min_ready) || max_surge == 0 {
                        deletes.extend(old.iter().map(|p| p.name_any()));
                    } else {
                        surging += 1;
                    }
                }
                (None, false) => {
                    if max_surge > 0 {
                        surge_candidates.push(node.clone());
                    } else if old.iter().any(|p| is_available(p, min_ready)) {
                        old_available.extend(old.iter().map(|p| p.name_any()));
                    } else {
                        old_unavailable.extend(old.iter().map(|p| p.name_any()));
                    }
                }
            }
        }
        if max_surge > 0 {
            let room = max_surge.saturating_sub(surging);
            creates.extend(surge_candidates.into_iter().take(room));
        } else {
            // Unavailable old pods cost nothing to replace; available ones take budget.
            deletes.extend(old_unavailable);
            let budget = max_unavailable.saturating_sub(unavailable);
            deletes.extend(old_available.into_iter().take(budget));
        }
    }
    let events = ctx.events.for_component("daemonset-controller");
    let reference = crate::client::events::reference(ds.as_ref());
    for node in &creates {
        let pod = daemon_pod(&ds, node, &hash, &owner);
        let created = pods_api.create(&PostParams::default(), &pod).await?;
        tracing::info!(daemonset = %name, node = %node, "created a daemon pod");
        events
            .normal(
                &reference,
                "SuccessfulCreate",
                &format!("Created pod: {}", created.name_any()),
            )
            .await;
    }
    deletes.sort();
    deletes.dedup();
    for p in &deletes {
        match pods_api.delete(p, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(daemonset = %name, pod = %p, "deleted a daemon pod");
                events
                    .normal(&reference, "SuccessfulDelete", &format!("Deleted pod: {p}"))
                    .await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    // Status, per node from the pods that stay.
    let mut current = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    for (node, ok) in &eligible {
        if !ok {
            continue;
        }
        let pods: Vec<&Pod> = by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter(|p| !deletes.contains(&p.name_any()))
            .collect();
        if pods.is_empty() {
            continue;
        }
        current += 1;
        if pods.iter().any(|p| is_ready(p)) {
            ready += 1;
        }
        if pods.iter().any(|p| is_available(p, min_ready)) {
            available += 1;
        }
        if pods.iter().any(|p| hash_of(p) == Some(hash.as_str())) {
            updated += 1;
        }
    }
    let status = DaemonSetStatus {
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
        current_number_scheduled: current,
        desired_number_scheduled: desired as i32,
        number_available: Some(available),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_unavailable: Some(desired as i32 - available).filter(|n| *n > 0),
        observed_generation: ds.metadata.generation,
        updated_number_scheduled: Some(updated),
    };
    if ds.status.as_ref() != Some(&status) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    tracing::debug!(daemonset = %name, revision, desired, current, updated, "reconciled");
    if !creates.is_empty() || !deletes.is_empty() {
        requeue = requeue.min(Duration::from_secs(5));
    }
    Ok(Action::requeue(requeue))
}

/// The node a pod is pinned to by a `metadata.name In [node]` field term.
fn pinned_node(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "u1", "generation": 2},
            "spec": spec
        }))
        .unwrap()
    }

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    #[test]
    fn daemon_pods_run_where_selectors_and_taints_allow() {
        let d = ds(serde_json::json!({
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
                "nodeSelector": {"edge": "true"},
                "containers": [{"name": "c", "image": "i"}]}}
        }));
        assert!(should_run(
            &d,
            &node(
                "n1",
                serde_json::json!({"edge": "true"}),
                serde_json::json!([])
            )
        ));
        assert!(!should_run(
            &d,
            &node("n2", serde_json::json!({}), serde_json::json!([]))
        ));
        // A NoSchedule taint keeps daemons off unless tolerated; PreferNoSchedule does not;
        // cordoned and not-ready nodes keep them (the daemon tolerations).
        let tainted = |effect: &str, key: &str| {
            node(
                "n",
                serde_json::json!({"edge": "true"}),
                serde_json::json!([{"key": key, "effect": effect}]),
            )
        };
        assert!(!should_run(&d, &tainted("NoSchedule", "dedicated")));
        assert!(should_run(&d, &tainted("PreferNoSchedule", "dedicated")));
        assert!(should_run(
            &d,
            &tainted("NoSchedule", "node.kubernetes.io/unschedulable")
        ));
        assert!(should_run(
            &d,
            &tainted("NoExecute", "node.kubernetes.io/not-ready")
        ));
    }

    #[test]
    fn a_daemon_pod_is_pinned_to_its_node_and_carries_its_revision() {
        let d = ds(serde_json::json!({
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "arch", "operator": "In", "values": ["arm64"]}]}]}}},
                "containers": [{"name": "c", "image": "i"}]}}
        }));
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "agent".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let p = daemon_pod(&d, "n7", "abc", &owner);
        assert_eq!(pinned_node(&p).as_deref(), Some("n7"));
        let terms = &p
            .spec
            .as_ref()
            .unwrap()
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(terms[0].match_expressions.as_ref().unwrap()[0].key, "arch");
        assert_eq!(
            p.labels().get(REVISION_HASH).map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            p.labels()
                .get("pod-template-generation")
                .map(String::as_str),
            Some("2")
        );
        let tolerations = p.spec.unwrap().tolerations.unwrap();
        assert!(tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
    }

    #[test]
    fn budgets_scale_like_kube() {
        assert_eq!(scaled(None, 10, 1), 1);
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 10, 1), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, 1), 2);
    }
}
