//! The per-node filters, in kube-scheduler's order: NodeUnschedulable, TaintToleration
//! (incl. not-ready), NodeAffinity, NodePorts, NodeResourcesFit, VolumeBinding's node
//! checks, PodTopologySpread, InterPodAffinity. The first filter that refuses a node gives
//! its reasons in kube's words, and whether taking pods away (preemption) could change it.
use std::sync::Arc;

use k8s_openapi::api::core::v1::Taint;

use super::affinity::AffinityState;
use super::cache::{Cache, NodeInfo, PodInfo};
use super::spread::SpreadState;
use super::volumes::VolumeState;
use crate::resources::placement::{node_selector_matches, tolerated};

/// Why a node was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub reasons: Vec<String>,
    /// Whether evicting pods from the node could make room (kube's Unschedulable as
    /// against UnschedulableAndUnresolvable).
    pub resolvable: bool,
}

impl Reject {
    pub fn fixed(reason: impl Into<String>) -> Reject {
        Reject {
            reasons: vec![reason.into()],
            resolvable: false,
        }
    }

    pub fn resolvable(reason: impl Into<String>) -> Reject {
        Reject {
            reasons: vec![reason.into()],
            resolvable: true,
        }
    }
}

/// What the filters work out once per pod and attempt (kube's PreFilter state).
pub struct PodState {
    pub info: Arc<PodInfo>,
    pub affinity: AffinityState,
    pub spread: SpreadState,
    pub volumes: VolumeState,
}

impl PodState {
    /// Works out the pod's state against the cluster, or why it fits no node at all.
    pub fn new(info: Arc<PodInfo>, cache: &Cache) -> Result<PodState, String> {
        let volumes = VolumeState::new(&info, cache)?;
        let affinity = AffinityState::new(&info, cache, None);
        let spread = SpreadState::new(&info, cache, None);
        Ok(PodState {
            info,
            affinity,
            spread,
            volumes,
        })
    }
}

/// Runs every filter on one node.
pub fn filter(state: &PodState, node: &NodeInfo, cache: &Cache) -> Result<(), Reject> {
    node_conditions(&state.info, node)?;
    node_ports(&state.info, node)?;
    resources_fit(&state.info, node)?;
    state.volumes.filter(node, cache)?;
    state.spread.filter(node)?;
    state.affinity.filter(node)?;
    Ok(())
}

/// NodeUnschedulable, TaintToleration and NodeAffinity: what no eviction changes.
pub fn node_conditions(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reject> {
    let Some(n) = node.node.as_ref() else {
        return Err(Reject::fixed("node(s) not found"));
    };
    let tolerations = pod.tolerations();
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerated(tolerations, &taint) {
            return Err(Reject::fixed("node(s) were unschedulable"));
        }
    }
    // A node that is not Ready, before the node lifecycle controller has tainted it.
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let mut taints: Vec<Taint> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if !ready
        && !taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/not-ready")
    {
        taints.insert(
            0,
            Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            },
        );
    }
    for taint in taints.iter().filter(|t| t.effect != "PreferNoSchedule") {
        if !tolerated(tolerations, taint) {
            return Err(Reject::fixed(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            )));
        }
    }
    if !node_selector_matches(&pod.pod, n) {
        return Err(Reject::fixed(
            "node(s) didn't match Pod's node affinity/selector",
        ));
    }
    Ok(())
}

/// NodePorts: no host port the pod asks for is held on the node.
fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reject> {
    let taken = pod.ports.iter().any(|want| {
        node.pods
            .iter()
            .flat_map(|p| p.ports.iter())
            .any(|held| held.conflicts(want))
    });
    if taken {
        return Err(Reject::resolvable(
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    Ok(())
}

/// NodeResourcesFit: pod count and every requested resource against allocatable, all
/// shortfalls named.
fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reject> {
    let mut reasons = Vec::new();
    if (node.pods.len() as i128 + 1) * 1000 > node.allocatable("pods") {
        reasons.push("Too many pods".to_string());
    }
    for (res, want) in &pod.requests {
        if *want == 0 {
            continue;
        }
        let used = node.requested.get(res).copied().unwrap_or(0);
        if used + want > node.allocatable(res) {
            reasons.push(format!("Insufficient {res}"));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Reject {
            reasons,
            resolvable: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn node(name: &str, ready: bool, cpu: &str, extra: serde_json::Value) -> NodeInfo {
        let mut n = json!({"metadata": {"name": name, "labels": {"zone": "a"}}, "spec": {},
            "status": {"allocatable": {"cpu": cpu, "memory": "512Mi", "pods": "2"},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(spec) = extra.get("spec") {
            n["spec"] = spec.clone();
        }
        NodeInfo {
            node: Some(Arc::new(serde_json::from_value(n).unwrap())),
            ..Default::default()
        }
    }

    fn pod(cpu: &str, extra: serde_json::Value) -> PodInfo {
        let mut p = json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}});
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                p["spec"][k] = v.clone();
            }
        }
        PodInfo::new(Arc::new(serde_json::from_value::<Pod>(p).unwrap()))
    }

    #[test]
    fn taints_readiness_selectors_and_unschedulable_cannot_be_preempted_away() {
        let n = node(
            "t",
            true,
            "4",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            node_conditions(&pod("1", json!({})), &n),
            Err(Reject::fixed(
                "node(s) had untolerated taint {dedicated: gpu}"
            ))
        );
        let tolerant = pod(
            "1",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(node_conditions(&tolerant, &n), Ok(()));
        assert_eq!(
            node_conditions(&pod("1", json!({})), &node("n", false, "4", json!({}))),
            Err(Reject::fixed(
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
            ))
        );
        let cordoned = node("c", true, "4", json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            node_conditions(&pod("1", json!({})), &cordoned),
            Err(Reject::fixed("node(s) were unschedulable"))
        );
        let elsewhere = pod("1", json!({"nodeSelector": {"zone": "b"}}));
        assert!(node_conditions(&elsewhere, &n).is_err());
    }

    #[test]
    fn resources_name_every_shortfall_and_count_pods() {
        let mut n = node("n", true, "1", json!({}));
        assert_eq!(
            resources_fit(&pod("2", json!({})), &n).unwrap_err().reasons,
            ["Insufficient cpu", "Insufficient memory"]
        );
        let small = || {
            Arc::new(PodInfo::new(Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": "x", "uid": "x"}, "spec": {"containers": []}}),
                )
                .unwrap(),
            )))
        };
        n.add(small());
        n.add(small());
        let zero = pod("0", json!({"containers": [{"name": "c"}]}));
        assert_eq!(
            resources_fit(&zero, &n).unwrap_err().reasons,
            ["Too many pods"]
        );
    }

    #[test]
    fn host_ports_held_on_the_node_refuse_the_pod() {
        let mut n = node("n", true, "4", json!({}));
        let web = |name: &str| {
            Arc::new(PodInfo::new(Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": name, "uid": name}, "spec": {"containers": [
                    {"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
                )
                .unwrap(),
            )))
        };
        assert_eq!(node_ports(&web("a"), &n), Ok(()));
        n.add(web("a"));
        assert!(node_ports(&web("b"), &n).unwrap_err().resolvable);
    }
}
