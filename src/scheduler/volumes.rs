//! VolumeBinding, as far as the scheduler's part goes: a pod's claims must exist and not be
//! going away; a bound claim's volume must admit the node (its `nodeAffinity`); an unbound
//! claim of an Immediate class keeps the pod off every node until the volume controller
//! binds it; an unbound claim of a WaitForFirstConsumer class needs an available volume
//! that fits the node, or a provisioner, and once a node is chosen the claim is marked for
//! it (`volume.kubernetes.io/selected-node`, or the volume's `claimRef`) and the pod waits
//! for the binding before it is bound itself.
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filter::Reject;
pub use crate::resources::storage::SELECTED_NODE;
use crate::resources::storage::{self, NO_PROVISIONER};

/// What to do to a claim before the pod can be bound to the chosen node.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimAction {
    /// Ask the claim's provisioner for a volume on this node.
    SelectNode { namespace: String, claim: String },
    /// Reserve this available volume for the claim (the volume controller binds them).
    Reserve {
        volume: String,
        namespace: String,
        claim: String,
        claim_uid: String,
    },
}

#[derive(Default)]
pub struct VolumeState {
    bound: Vec<Option<Arc<PersistentVolume>>>,
    waiting: Vec<Arc<PersistentVolumeClaim>>,
}

impl VolumeState {
    pub fn new(pod: &PodInfo, cache: &Cache) -> Result<VolumeState, String> {
        let mut state = VolumeState::default();
        let ns = pod.namespace();
        let pod_name = pod.pod.name_any();
        let mut immediate_unbound = false;
        for v in pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let (claim, ephemeral) = match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => (c.claim_name.clone(), false),
                (None, Some(_)) => (format!("{pod_name}-{}", v.name), true),
                _ => continue,
            };
            let Some(pvc) = cache.claims.get(&format!("{ns}/{claim}")) else {
                return Err(format!("persistentvolumeclaim \"{claim}\" not found"));
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Err(format!(
                    "persistentvolumeclaim \"{claim}\" is being deleted"
                ));
            }
            if ephemeral
                && !pvc
                    .owner_references()
                    .iter()
                    .any(|o| o.uid == pod.uid && o.controller == Some(true))
            {
                return Err(format!(
                    "PVC {ns}/{claim} was not created for pod {ns}/{pod_name} (pod is not owner)"
                ));
            }
            let volume = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if !volume.is_empty() {
                state.bound.push(cache.volumes.get(&volume).cloned());
            } else if binding_mode(pvc, cache) == "WaitForFirstConsumer" {
                state.waiting.push(pvc.clone());
            } else {
                immediate_unbound = true;
            }
        }
        if immediate_unbound {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        Ok(state)
    }

    pub fn filter(&self, node: &NodeInfo, cache: &Cache) -> Result<(), Reject> {
        let Some(n) = node.node.as_ref() else {
            return Ok(());
        };
        for pv in &self.bound {
            let Some(pv) = pv else {
                return Err(Reject::fixed(
                    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)",
                ));
            };
            if !storage::admits(pv, n) {
                return Err(Reject::fixed("node(s) had volume node affinity conflict"));
            }
        }
        for pvc in &self.waiting {
            // A claim already handed to a provisioner for one node waits for that node.
            let elsewhere = pvc
                .annotations()
                .get(SELECTED_NODE)
                .is_some_and(|sel| *sel != n.name_any());
            if elsewhere || (find_volume(pvc, n, cache).is_none() && !provisionable(pvc, cache)) {
                return Err(Reject::fixed(
                    "node(s) didn't find available persistent volumes to bind",
                ));
            }
        }
        Ok(())
    }

    /// What the claims waiting for a consumer need once the pod is placed on `node`.
    pub fn actions(&self, node: &NodeInfo, cache: &Cache) -> Vec<ClaimAction> {
        let Some(n) = node.node.as_ref() else {
            return vec![];
        };
        let mut taken: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for pvc in &self.waiting {
            let namespace = pvc.namespace().unwrap_or_default();
            let claim = pvc.name_any();
            match find_volume(pvc, n, cache).filter(|pv| !taken.contains(&pv.name_any())) {
                Some(pv) => {
                    taken.push(pv.name_any());
                    out.push(ClaimAction::Reserve {
                        volume: pv.name_any(),
                        namespace,
                        claim,
                        claim_uid: pvc.uid().unwrap_or_default(),
                    });
                }
                None => {
                    let already = pvc.annotations().get(SELECTED_NODE) == Some(&n.name_any());
                    if !already {
                        out.push(ClaimAction::SelectNode { namespace, claim });
                    }
                }
            }
        }
        out
    }

    /// Whether the pod must wait for claims to be bound before it is bound itself.
    pub fn waits(&self) -> bool {
        !self.waiting.is_empty()
    }
}

fn binding_mode(pvc: &PersistentVolumeClaim, cache: &Cache) -> String {
    cache
        .classes
        .get(&storage::claim_class(pvc))
        .and_then(|c| c.volume_binding_mode.clone())
        .unwrap_or_else(|| "Immediate".into())
}

fn provisionable(pvc: &PersistentVolumeClaim, cache: &Cache) -> bool {
    cache
        .classes
        .get(&storage::claim_class(pvc))
        .is_some_and(|c| c.provisioner != NO_PROVISIONER)
}

/// The smallest available volume that serves the claim on this node.
fn find_volume(
    pvc: &PersistentVolumeClaim,
    node: &k8s_openapi::api::core::v1::Node,
    cache: &Cache,
) -> Option<Arc<PersistentVolume>> {
    let best = storage::best_match(cache.volumes.values().map(|v| v.as_ref()), pvc, Some(node))?;
    cache.volumes.get(&best.name_any()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn cache() -> Cache {
        let mut c = Cache::default();
        for n in ["a", "b"] {
            c.set_node(Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}}),
                )
                .unwrap(),
            ));
        }
        let class = |name: &str, prov: &str| {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name}, "provisioner": prov,
                "volumeBindingMode": "WaitForFirstConsumer"}))
                .unwrap(),
            )
        };
        c.classes
            .insert("local".into(), class("local", NO_PROVISIONER));
        c.classes
            .insert("dyn".into(), class("dyn", "rancher.io/local-path"));
        c
    }

    fn claim(c: &mut Cache, name: &str, class: &str, volume: Option<&str>) {
        c.claims.insert(
            format!("d/{name}"),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"storageClassName": class, "volumeName": volume, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}))
                .unwrap(),
            ),
        );
    }

    fn volume(c: &mut Cache, name: &str, node: &str, size: &str) {
        c.volumes.insert(name.into(), Arc::new(serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"storageClassName": "local", "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": "Available"}})).unwrap()));
    }

    fn pod_with(claim: &str) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value::<Pod>(json!({"metadata": {"name": "p", "namespace": "d", "uid": "p"},
            "spec": {"containers": [], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}))
            .unwrap(),
        ))
    }

    #[test]
    fn missing_and_immediate_unbound_claims_fit_nowhere() {
        let mut c = cache();
        assert_eq!(
            VolumeState::new(&pod_with("nope"), &c).err().unwrap(),
            "persistentvolumeclaim \"nope\" not found"
        );
        claim(&mut c, "imm", "", None);
        assert_eq!(
            VolumeState::new(&pod_with("imm"), &c).err().unwrap(),
            "pod has unbound immediate PersistentVolumeClaims"
        );
    }

    #[test]
    fn bound_volumes_pin_the_pod_to_their_node() {
        let mut c = cache();
        volume(&mut c, "pv-b", "b", "1Gi");
        claim(&mut c, "data", "local", Some("pv-b"));
        let s = VolumeState::new(&pod_with("data"), &c).unwrap();
        assert_eq!(
            s.filter(&c.nodes["a"], &c).unwrap_err().reasons,
            ["node(s) had volume node affinity conflict"]
        );
        assert_eq!(s.filter(&c.nodes["b"], &c), Ok(()));
    }

    #[test]
    fn waiting_claims_need_a_volume_on_the_node_or_a_provisioner() {
        let mut c = cache();
        volume(&mut c, "small", "b", "512Mi");
        volume(&mut c, "pv-b", "b", "2Gi");
        claim(&mut c, "data", "local", None);
        let s = VolumeState::new(&pod_with("data"), &c).unwrap();
        assert!(s.waits());
        assert!(s.filter(&c.nodes["a"], &c).is_err());
        assert_eq!(s.filter(&c.nodes["b"], &c), Ok(()));
        assert_eq!(
            s.actions(&c.nodes["b"], &c),
            [ClaimAction::Reserve {
                volume: "pv-b".into(),
                namespace: "d".into(),
                claim: "data".into(),
                claim_uid: "data".into()
            }]
        );
        claim(&mut c, "dynamic", "dyn", None);
        let s = VolumeState::new(&pod_with("dynamic"), &c).unwrap();
        assert_eq!(s.filter(&c.nodes["a"], &c), Ok(()));
        assert_eq!(
            s.actions(&c.nodes["a"], &c),
            [ClaimAction::SelectNode {
                namespace: "d".into(),
                claim: "dynamic".into()
            }]
        );
    }
}
