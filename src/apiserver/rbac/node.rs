//! The Node authorizer and NodeRestriction, as kube-apiserver applies them to kubelets
//! (`system:node:<name>` in group `system:nodes`): a node reads only the secrets,
//! configmaps, persistent volume claims and service accounts that pods bound to it
//! reference, asks tokens only for those service accounts, and writes only its own Node,
//! its own Lease and the pods bound to it. Anything else it asks is left to RBAC.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::follow::{self, Change};
use super::rules::Attributes;
use crate::apiserver::auth::User;
use crate::apiserver::registry::Registry;
use crate::apiserver::resources;

/// What a pod bound to a node lets that node read.
#[derive(Debug, Default, Clone, PartialEq)]
struct PodRefs {
    node: String,
    namespace: String,
    name: String,
    /// (plural, name) of the objects the pod references.
    objects: HashSet<(&'static str, String)>,
}

fn names<'a>(v: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The objects a pod refers to (volumes, env, envFrom, pull secrets, its service account).
fn refs(pod: &Value) -> PodRefs {
    let mut objects = HashSet::new();
    let mut add = |plural: &'static str, name: &str| {
        if !name.is_empty() {
            objects.insert((plural, name.to_string()));
        }
    };
    add("serviceaccounts", str_at(pod, "/spec/serviceAccountName"));
    for s in names(pod, "/spec/imagePullSecrets") {
        add("secrets", str_at(s, "/name"));
    }
    for v in names(pod, "/spec/volumes") {
        add("secrets", str_at(v, "/secret/secretName"));
        add("configmaps", str_at(v, "/configMap/name"));
        add(
            "persistentvolumeclaims",
            str_at(v, "/persistentVolumeClaim/claimName"),
        );
        for p in names(v, "/projected/sources") {
            add("secrets", str_at(p, "/secret/name"));
            add("configmaps", str_at(p, "/configMap/name"));
        }
    }
    for list in [
        "/spec/containers",
        "/spec/initContainers",
        "/spec/ephemeralContainers",
    ] {
        for c in names(pod, list) {
            for e in names(c, "/env") {
                add("secrets", str_at(e, "/valueFrom/secretKeyRef/name"));
                add("configmaps", str_at(e, "/valueFrom/configMapKeyRef/name"));
            }
            for e in names(c, "/envFrom") {
                add("secrets", str_at(e, "/secretRef/name"));
                add("configmaps", str_at(e, "/configMapRef/name"));
            }
        }
    }
    PodRefs {
        node: str_at(pod, "/spec/nodeName").to_string(),
        namespace: str_at(pod, "/metadata/namespace").to_string(),
        name: str_at(pod, "/metadata/name").to_string(),
        objects,
    }
}

/// The (plural, name) of every API object a pod references (NodeRestriction refuses mirror
/// pods that have any).
pub fn references(pod: &Value) -> Vec<(&'static str, String)> {
    refs(pod).objects.into_iter().collect()
}

/// Which pods are bound where and what they reference, kept from the store.
#[derive(Clone, Default)]
pub struct NodeGraph {
    pods: Arc<RwLock<HashMap<Vec<u8>, PodRefs>>>,
}

/// The node a caller is, when it is one.
pub fn node_of(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    user.groups
        .iter()
        .any(|g| g == "system:nodes")
        .then_some(name)
}

impl NodeGraph {
    /// Follows the pods until `shutdown`.
    pub async fn run(self, registry: Registry, shutdown: CancellationToken) {
        let Some(r) = resources::find("", "v1", "pods") else {
            return;
        };
        follow::follow(r, registry, shutdown, |change| {
            let Ok(mut pods) = self.pods.write() else {
                return;
            };
            match change {
                Change::Reset(items) => {
                    *pods = items
                        .into_iter()
                        .map(|(k, v)| (k, refs(&v)))
                        .filter(|(_, r)| !r.node.is_empty())
                        .collect()
                }
                Change::Put(key, pod) => {
                    let r = refs(&pod);
                    if r.node.is_empty() {
                        pods.remove(&key);
                    } else {
                        pods.insert(key, r);
                    }
                }
                Change::Delete(key) => {
                    pods.remove(&key);
                }
            }
        })
        .await;
    }

    fn bound(&self, node: &str, check: impl Fn(&PodRefs) -> bool) -> bool {
        self.pods
            .read()
            .map(|p| p.values().any(|r| r.node == node && check(r)))
            .unwrap_or(false)
    }

    /// Allow (Some(true)), deny (Some(false)) or no opinion (None, RBAC decides).
    fn decide(&self, node: &str, attrs: &Attributes) -> Option<bool> {
        let Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } = attrs
        else {
            return None;
        };
        let ns = namespace.as_deref().unwrap_or("");
        let name = name.as_deref().unwrap_or("");
        let writes = !matches!(verb.as_str(), "get" | "list" | "watch");
        match (group.as_str(), resource.as_str(), subresource.as_deref()) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims" | "serviceaccounts", None) => {
                if verb != "get" {
                    return Some(false);
                }
                Some(self.bound(node, |p| {
                    p.namespace == ns && p.objects.iter().any(|(k, n)| k == resource && n == name)
                }))
            }
            ("", "serviceaccounts", Some("token")) => Some(self.bound(node, |p| {
                p.namespace == ns && p.objects.contains(&("serviceaccounts", name.to_string()))
            })),
            ("", "nodes", _) if writes => {
                Some(name == node || (verb == "create" && name.is_empty()))
            }
            ("coordination.k8s.io", "leases", None) if ns == "kube-node-lease" => Some(
                name == node
                    || (verb == "create" && name.is_empty())
                    || verb == "list"
                    || verb == "watch",
            ),
            ("", "pods", Some("status")) | ("", "pods", None)
                if verb == "delete" || subresource.is_some() =>
            {
                if !writes {
                    return None;
                }
                Some(self.bound(node, |p| p.namespace == ns && p.name == name))
            }
            _ => None,
        }
    }

    /// The node authorizer's verdict for `user` (None when it is not a node, or has no
    /// opinion). A reference may reach the graph a moment after the pod is bound, so a denial
    /// is looked at again for up to half a second.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Option<bool> {
        let node = node_of(user)?;
        for _ in 0..10 {
            match self.decide(node, attrs) {
                Some(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => return other,
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn graph() -> NodeGraph {
        let g = NodeGraph::default();
        let pod = json!({
            "metadata": {"name": "web", "namespace": "app"},
            "spec": {
                "nodeName": "n1",
                "serviceAccountName": "web-sa",
                "volumes": [{"name": "s", "secret": {"secretName": "tls"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}}],
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]}],
            },
        });
        if let Ok(mut p) = g.pods.write() {
            p.insert(b"/registry/pods/app/web".to_vec(), refs(&pod));
        }
        g
    }

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(str::to_string),
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name: (!name.is_empty()).then(|| name.to_string()),
        }
    }

    #[test]
    fn a_node_reads_only_what_its_pods_reference_and_writes_only_its_own() {
        let g = graph();
        let get = |r: &str, ns: &str, name: &str| attrs("get", "", r, None, ns, name);
        assert_eq!(g.decide("n1", &get("secrets", "app", "tls")), Some(true));
        assert_eq!(g.decide("n1", &get("secrets", "app", "db")), Some(true));
        assert_eq!(
            g.decide("n1", &get("configmaps", "app", "kube-root-ca.crt")),
            Some(true)
        );
        assert_eq!(g.decide("n1", &get("secrets", "app", "other")), Some(false));
        assert_eq!(g.decide("n2", &get("secrets", "app", "tls")), Some(false));
        assert_eq!(g.decide("n1", &get("secrets", "other", "tls")), Some(false));
        assert_eq!(
            g.decide("n1", &attrs("list", "", "secrets", None, "app", "")),
            Some(false)
        );
        assert_eq!(
            g.decide(
                "n1",
                &attrs(
                    "create",
                    "",
                    "serviceaccounts",
                    Some("token"),
                    "app",
                    "web-sa"
                )
            ),
            Some(true)
        );
        assert_eq!(
            g.decide(
                "n1",
                &attrs(
                    "create",
                    "",
                    "serviceaccounts",
                    Some("token"),
                    "app",
                    "default"
                )
            ),
            Some(false)
        );
        assert_eq!(
            g.decide("n1", &attrs("patch", "", "nodes", Some("status"), "", "n1")),
            Some(true)
        );
        assert_eq!(
            g.decide("n1", &attrs("patch", "", "nodes", Some("status"), "", "n2")),
            Some(false)
        );
        assert_eq!(
            g.decide("n1", &attrs("get", "", "nodes", None, "", "n2")),
            None
        );
        assert_eq!(
            g.decide(
                "n1",
                &attrs(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    None,
                    "kube-node-lease",
                    "n2"
                )
            ),
            Some(false)
        );
        assert_eq!(
            g.decide(
                "n1",
                &attrs("patch", "", "pods", Some("status"), "app", "web")
            ),
            Some(true)
        );
        assert_eq!(
            g.decide(
                "n2",
                &attrs("patch", "", "pods", Some("status"), "app", "web")
            ),
            Some(false)
        );
        assert_eq!(
            g.decide("n2", &attrs("delete", "", "pods", None, "app", "web")),
            Some(false)
        );
        assert_eq!(
            g.decide("n1", &attrs("list", "", "pods", None, "", "")),
            None
        );
        let not_a_node = User {
            name: "alice".into(),
            groups: vec![],
        };
        assert!(node_of(&not_a_node).is_none());
    }
}
