//! NodeRestriction's checks of what a kubelet writes (after the Node authorizer has let the
//! request through): a node creates only mirror pods bound to itself that reference no
//! other API object, changes pods only through their status, and never sets or changes
//! node labels outside the kubelet's own (`node-role.kubernetes.io/*` is the cluster's to
//! give, as in kube, so krab's server labels its node itself).
use serde_json::Value;

use super::super::resources::Resource;
use super::super::status::ApiError;

const MIRROR: &str = "kubernetes.io/config.mirror";

/// Labels a kubelet may set on its Node (kube's `kubeletapis.IsKubeletLabel`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "node.kubernetes.io/windows-build",
];
/// Label namespaces (and their subdomains) a kubelet may use freely.
const KUBELET_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

fn in_namespace(namespace: &str, domain: &str) -> bool {
    namespace == domain || namespace.ends_with(&format!(".{domain}"))
}

/// Whether a kubelet may not set `label`.
fn forbidden_label(label: &str) -> bool {
    let Some((namespace, _)) = label.split_once('/') else {
        return false;
    };
    if in_namespace(namespace, "node-restriction.kubernetes.io") {
        return true;
    }
    let kubernetes = in_namespace(namespace, "kubernetes.io") || in_namespace(namespace, "k8s.io");
    let kubelets = KUBELET_LABELS.contains(&label)
        || KUBELET_NAMESPACES
            .iter()
            .any(|d| in_namespace(namespace, d));
    kubernetes && !kubelets
}

fn labels(obj: Option<&Value>) -> serde_json::Map<String, Value> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn refused(r: &Resource, name: &str, message: String) -> ApiError {
    ApiError::forbidden_on(
        r.group,
        r.plural,
        name,
        format!("{} {name:?} is forbidden: {message}", r.plural),
    )
}

/// Checks a write by node `node` of `new` (`old`: what is stored, None on create) through
/// `subresource` ("" for the object itself).
pub fn admit(
    r: &Resource,
    node: &str,
    old: Option<&Value>,
    new: &Value,
    subresource: &str,
) -> Result<(), ApiError> {
    if !r.group.is_empty() {
        return Ok(());
    }
    let name = new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match (r.plural, subresource, old) {
        ("pods", "", None) => admit_mirror_pod(r, node, name, new),
        ("pods", "", Some(_)) => Err(refused(
            r,
            name,
            format!("node {node:?} can only create and delete mirror pods"),
        )),
        ("pods", "status", Some(old)) => {
            let bound = old.pointer("/spec/nodeName").and_then(Value::as_str);
            if bound != Some(node) {
                return Err(refused(
                    r,
                    name,
                    format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself"),
                ));
            }
            Ok(())
        }
        ("nodes", _, _) => {
            let before = labels(old);
            let after = labels(Some(new));
            let mut changed: Vec<&str> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k.as_str())
                .chain(
                    before
                        .keys()
                        .filter(|k| !after.contains_key(*k))
                        .map(String::as_str),
                )
                .filter(|l| forbidden_label(l))
                .collect();
            changed.sort();
            changed.dedup();
            if changed.is_empty() {
                return Ok(());
            }
            let verb = if old.is_some() {
                "modify labels"
            } else {
                "set the following labels"
            };
            Err(refused(
                r,
                name,
                format!(
                    "node {node:?} is not allowed to {verb}: {}",
                    changed.join(", ")
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn admit_mirror_pod(r: &Resource, node: &str, name: &str, pod: &Value) -> Result<(), ApiError> {
    let err = |m: String| Err(refused(r, name, m));
    if pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(MIRROR))
        .is_none()
    {
        return err(format!(
            "pod does not have {MIRROR:?} annotation, node {node:?} can only create mirror pods"
        ));
    }
    if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) {
        return err(format!(
            "node {node:?} can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if owners.len() > 1 {
        return err(format!(
            "node {node:?} can only create pods with a single owner reference set to itself"
        ));
    }
    if let Some(o) = owners.first() {
        let is_self = o["apiVersion"] == "v1"
            && o["kind"] == "Node"
            && o["name"].as_str() == Some(node)
            && o["controller"] == true;
        if !is_self {
            return err(format!(
                "node {node:?} can only create pods with an owner reference set to itself"
            ));
        }
    }
    if pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return err(format!(
            "node {node:?} can not create pods that reference a service account"
        ));
    }
    let refs = crate::apiserver::rbac::node::references(pod);
    for (plural, what) in [
        ("secrets", "secrets"),
        ("configmaps", "configmaps"),
        ("persistentvolumeclaims", "persistentvolumeclaims"),
    ] {
        if refs.iter().any(|(p, _)| *p == plural) {
            return err(format!(
                "node {node:?} can not create pods that reference {what}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(plural: &str) -> Resource {
        crate::apiserver::resources::find("", "v1", plural)
            .unwrap()
            .clone()
    }

    #[test]
    fn kubelets_set_only_their_own_labels() {
        let nodes = find("nodes");
        let node = |labels: Value| json!({"metadata": {"name": "n1", "labels": labels}});
        let own = node(
            json!({"kubernetes.io/hostname": "n1", "node.kubernetes.io/exclude-from-external-load-balancers": "true", "example.com/x": "y"}),
        );
        assert!(admit(&nodes, "n1", None, &own, "").is_ok());
        let role = node(json!({"node-role.kubernetes.io/control-plane": "true"}));
        let e = admit(&nodes, "n1", None, &role, "").unwrap_err();
        assert!(e.message.contains("node \"n1\" is not allowed to set the following labels: node-role.kubernetes.io/control-plane"), "{}", e.message);
        // A label the cluster gave is kept as it is, not removed or changed.
        assert!(admit(&nodes, "n1", Some(&role), &role, "status").is_ok());
        let e = admit(&nodes, "n1", Some(&role), &own, "").unwrap_err();
        assert!(e
            .message
            .contains("is not allowed to modify labels: node-role.kubernetes.io/control-plane"));
    }

    #[test]
    fn kubelets_create_only_self_contained_mirror_pods_bound_to_themselves() {
        let pods = find("pods");
        let mirror = json!({"metadata": {"name": "p", "annotations": {MIRROR: "h"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}});
        assert!(admit(&pods, "n1", None, &mirror, "").is_ok());
        let mut plain = mirror.clone();
        plain["metadata"]["annotations"] = json!({});
        assert!(admit(&pods, "n1", None, &plain, "")
            .unwrap_err()
            .message
            .contains("can only create mirror pods"));
        assert!(admit(&pods, "n2", None, &mirror, "")
            .unwrap_err()
            .message
            .contains("spec.nodeName set to itself"));
        let mut secret = mirror.clone();
        secret["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "x"}}]);
        assert!(admit(&pods, "n1", None, &secret, "")
            .unwrap_err()
            .message
            .contains("can not create pods that reference secrets"));
        assert!(admit(&pods, "n1", Some(&mirror), &mirror, "")
            .unwrap_err()
            .message
            .contains("can only create and delete mirror pods"));
        assert!(admit(&pods, "n1", Some(&mirror), &mirror, "status").is_ok());
        assert!(admit(&pods, "n2", Some(&mirror), &mirror, "status").is_err());
    }
}
