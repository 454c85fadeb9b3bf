//! Which PersistentVolume may serve which claim, as the scheduler and the volume binder
//! both judge it: storage class, capacity, access modes, volume mode, the claim's selector,
//! a volume's pre-binding (`claimRef`) and its node affinity. No I/O.
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;

use super::placement::{label_selector_matches, node_selector_admits};
use super::quantity::milli;

/// The annotation marking a StorageClass the cluster's default.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// Set on a claim by the scheduler: the node its volume must be provisioned for.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Set on a claim by the volume binder: who provisions its volume.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// Set on a volume by its provisioner.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// A class whose volumes are only ever made by hand.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// The claim's class name ("" for none).
/// The finalizer that holds a claim while pods use it (kube's pvc-protection).
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer that holds a volume while it is bound (kube's pv-protection).
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// The claims a pod uses: its persistentVolumeClaim volumes and, for generic ephemeral
/// volumes, the `<pod>-<volume>` claims made for it.
pub fn claims_of(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                return Some(c.claim_name.clone());
            }
            v.ephemeral
                .as_ref()
                .map(|_| format!("{pod_name}-{}", v.name))
        })
        .collect()
}

pub fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

/// The storage a claim asks for, in thousandths of a byte.
pub fn requested(pvc: &PersistentVolumeClaim) -> i128 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(milli)
        .unwrap_or(0)
}

/// A volume's capacity, in thousandths of a byte.
pub fn capacity(pv: &PersistentVolume) -> i128 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(milli)
        .unwrap_or(0)
}

/// Whether the volume's claimRef names this claim (by namespace and name, and uid when
/// both have one).
pub fn claimed_by(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| {
            r.namespace == pvc.metadata.namespace
                && r.name == pvc.metadata.name
                && (r.uid.as_deref().unwrap_or("").is_empty() || r.uid == pvc.metadata.uid)
        })
}

/// Whether an unbound volume can serve the claim: available (or pre-bound to it), same
/// class, large enough, every access mode and the volume mode, and the claim's selector.
pub fn satisfies(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(s), Some(want)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    let free = s.claim_ref.is_none() || claimed_by(pv, pvc);
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let usable = matches!(phase, None | Some("Available" | "Pending")) || claimed_by(pv, pvc);
    let modes = want.access_modes.clone().unwrap_or_default();
    let pv_modes = s.access_modes.clone().unwrap_or_default();
    free && usable
        && pv.metadata.deletion_timestamp.is_none()
        && s.storage_class_name.clone().unwrap_or_default() == claim_class(pvc)
        && capacity(pv) >= requested(pvc)
        && modes.iter().all(|m| pv_modes.contains(m))
        && s.volume_mode.as_deref().unwrap_or("Filesystem")
            == want.volume_mode.as_deref().unwrap_or("Filesystem")
        && want
            .selector
            .as_ref()
            .is_none_or(|sel| label_selector_matches(sel, pv.labels()))
}

/// Whether the volume may be used on the node (its required node affinity).
pub fn admits(pv: &PersistentVolume, node: &Node) -> bool {
    pv.spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .is_none_or(|sel| node_selector_admits(sel, node))
}

/// The smallest volume that serves the claim (pre-bound ones first), on `node` if given.
pub fn best_match<'a>(
    volumes: impl Iterator<Item = &'a PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    volumes
        .filter(|pv| satisfies(pv, pvc) && node.is_none_or(|n| admits(pv, n)))
        .min_by_key(|pv| (!claimed_by(pv, pvc), capacity(pv), pv.name_any()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolume {
        let mut v = json!({"metadata": {"name": name, "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual"},
            "status": {"phase": "Available"}});
        for (k, x) in extra.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn pvc(extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut v = json!({"metadata": {"name": "data", "namespace": "d", "uid": "u1"},
            "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}});
        for (k, x) in extra.as_object().unwrap() {
            v["spec"][k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_smallest_fitting_volume_wins_and_prebinding_first() {
        let vols = [
            pv("big", "10Gi", json!({})),
            pv("small", "512Mi", json!({})),
            pv("right", "2Gi", json!({})),
            pv("rwx", "1Gi", json!({"accessModes": ["ReadWriteMany"]})),
            pv("other-class", "1Gi", json!({"storageClassName": "slow"})),
        ];
        let claim = pvc(json!({}));
        assert_eq!(
            best_match(vols.iter(), &claim, None).map(|p| p.name_any()),
            Some("right".into())
        );
        let prebound = pv(
            "mine",
            "10Gi",
            json!({"claimRef": {"namespace": "d", "name": "data"}}),
        );
        let all: Vec<_> = vols.iter().chain([&prebound]).cloned().collect();
        assert_eq!(
            best_match(all.iter(), &claim, None).map(|p| p.name_any()),
            Some("mine".into())
        );
        let taken = pv(
            "taken",
            "1Gi",
            json!({"claimRef": {"namespace": "d", "name": "someone-else"}}),
        );
        assert!(!satisfies(&taken, &claim));
        let picky = pvc(json!({"selector": {"matchLabels": {"tier": "slow"}}}));
        assert!(best_match(vols.iter(), &picky, None).is_none());
    }
}
