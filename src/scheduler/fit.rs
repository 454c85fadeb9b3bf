//! Where a pod fits: the filters (readiness and `unschedulable`, taints, nodeSelector and
//! required node affinity, resource requests and pod count against allocatable) and the
//! LeastAllocated score, with kube's wording for why no node fits.
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::ResourceExt;

use crate::resources::placement::{node_selector_matches as selector_matches, tolerates};
pub use crate::resources::quantity::milli;

/// A pod's requests: the larger of the app containers' sum and any init container's, plus
/// overhead, as kube counts them.
pub fn requests(pod: &Pod) -> BTreeMap<String, i128> {
    let mut sum: BTreeMap<String, i128> = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else {
        return sum;
    };
    for c in &spec.containers {
        for (k, v) in c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .into_iter()
            .flatten()
        {
            *sum.entry(k.clone()).or_default() += milli(v);
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, v) in c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .into_iter()
            .flatten()
        {
            let e = sum.entry(k.clone()).or_default();
            *e = (*e).max(milli(v));
        }
    }
    for (k, v) in spec.overhead.iter().flatten() {
        *sum.entry(k.clone()).or_default() += milli(v);
    }
    sum
}

/// Why one node does not fit, in kube's words (counted across nodes in the message).
fn misfit(
    pod: &Pod,
    node: &Node,
    used: &BTreeMap<String, i128>,
    pod_count: usize,
) -> Option<String> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    if !ready {
        let taint = Taint {
            key: "node.kubernetes.io/not-ready".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Some("node(s) were unschedulable".into());
        }
    }
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
    {
        if taint.effect == "PreferNoSchedule" {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, taint)) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
        }
    }
    if !selector_matches(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    if let Some(max) = allocatable.get("pods").map(milli) {
        if (pod_count as i128 + 1) * 1000 > max {
            return Some("Too many pods".into());
        }
    }
    for (res, want) in requests(pod) {
        let cap = allocatable.get(&res).map(milli).unwrap_or(0);
        if used.get(&res).copied().unwrap_or(0) + want > cap {
            return Some(format!("Insufficient {res}"));
        }
    }
    None
}

/// The node to bind to, or kube's summary of why none fits.
pub fn choose(pod: &Pod, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) -> Result<String, String> {
    if nodes.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(i128, String)> = None;
    for node in nodes {
        let name = node.name_any();
        let on_node: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .collect();
        let mut used: BTreeMap<String, i128> = BTreeMap::new();
        for p in &on_node {
            for (k, v) in requests(p) {
                *used.entry(k).or_default() += v;
            }
        }
        if let Some(why) = misfit(pod, node, &used, on_node.len()) {
            *reasons.entry(why).or_default() += 1;
            continue;
        }
        // LeastAllocated: the mean free fraction of CPU and memory, in parts per thousand.
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        let want = requests(pod);
        let mut score = 0i128;
        for res in ["cpu", "memory"] {
            let cap = allocatable.get(res).map(milli).unwrap_or(0);
            if cap > 0 {
                let after =
                    used.get(res).copied().unwrap_or(0) + want.get(res).copied().unwrap_or(0);
                score += (cap - after).max(0) * 1000 / cap;
            }
        }
        if best
            .as_ref()
            .is_none_or(|(s, n)| score > *s || (score == *s && name < *n))
        {
            best = Some((score, name));
        }
    }
    match best {
        Some((_, n)) => Ok(n),
        None => Err(format!(
            "{}.",
            reasons
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use serde_json::json;

    fn node(name: &str, ready: bool, cpu: &str, extra: serde_json::Value) -> Arc<Node> {
        let mut n = json!({"metadata": {"name": name, "labels": {"zone": "a"}}, "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(spec) = extra.get("spec") {
            n["spec"] = spec.clone();
        }
        Arc::new(serde_json::from_value(n).unwrap())
    }

    fn pod(cpu: &str, extra: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}});
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                p["spec"][k] = v.clone();
            }
        }
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn quantities_read_like_kube() {
        assert_eq!(milli(&Quantity("100m".into())), 100);
        assert_eq!(milli(&Quantity("2".into())), 2000);
        assert_eq!(milli(&Quantity("1Ki".into())), 1_024_000);
        assert_eq!(milli(&Quantity("0.5".into())), 500);
    }

    #[test]
    fn filters_and_the_least_allocated_node() {
        let nodes = vec![
            node("a", true, "1", json!({})),
            node("b", true, "4", json!({})),
            node("c", false, "8", json!({})),
        ];
        assert_eq!(choose(&pod("500m", json!({})), &nodes, &[]).unwrap(), "b");
        let err = choose(&pod("16", json!({})), &nodes, &[]).unwrap_err();
        assert_eq!(
            err,
            "2 Insufficient cpu, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
        );
        let selected = pod("100m", json!({"nodeSelector": {"zone": "b"}}));
        assert_eq!(
            choose(&selected, &nodes, &[]).unwrap_err(),
            "2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }."
        );
        let tainted = vec![node(
            "t",
            true,
            "4",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        )];
        assert_eq!(
            choose(&pod("1", json!({})), &tainted, &[]).unwrap_err(),
            "1 node(s) had untolerated taint {dedicated: gpu}."
        );
        let tolerant = pod(
            "1",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(choose(&tolerant, &tainted, &[]).unwrap(), "t");
    }
}
