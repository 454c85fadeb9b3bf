//! The resources the API server serves: one table row per resource, from which discovery,
//! routing, storage keys and validation of kind/apiVersion follow. Adding a resource is adding
//! a row (and, where kube has special behaviour, a strategy in `strategy`).
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::crd::CustomKind;

#[derive(Debug, Clone)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    /// Plural, as in URLs.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// `kubectl get all` and friends.
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `scale`, `binding`, ...).
    pub subresources: &'static [&'static str],
    /// Where kube-apiserver keeps it under `/registry/` when that is not the plural.
    pub storage: &'static str,
    /// Whether metadata.generation counts changes of the desired state.
    pub generation: bool,
    /// Verbs, when not the full set (e.g. create-only virtual resources).
    pub verbs: &'static [&'static str],
    /// What a CustomResourceDefinition adds (schema, printer columns, scale paths); None for
    /// the built-in kinds.
    pub custom: Option<Arc<CustomKind>>,
}

/// Names seen in CustomResourceDefinitions, kept for the life of the process so resource
/// rows can hold `&'static str` like the built-in table: each distinct name is stored once,
/// so the memory is bounded by the names ever defined, not by how often CRDs change.
static INTERNED: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
static INTERNED_LISTS: Mutex<Option<HashSet<&'static [&'static str]>>> = Mutex::new(None);

pub fn intern(s: &str) -> &'static str {
    let Ok(mut set) = INTERNED.lock() else {
        return "";
    };
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return found;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

pub fn intern_list(items: &[String]) -> &'static [&'static str] {
    if items.is_empty() {
        return &[];
    }
    let names: Vec<&'static str> = items.iter().map(|s| intern(s)).collect();
    let Ok(mut set) = INTERNED_LISTS.lock() else {
        return &[];
    };
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(names.as_slice()) {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(names.into_boxed_slice());
    set.insert(leaked);
    leaked
}

pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const fn res(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        storage: "",
        generation: false,
        verbs: VERBS,
        custom: None,
    }
}

impl Resource {
    const fn short(mut self, s: &'static [&'static str]) -> Self {
        self.short_names = s;
        self
    }
    const fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    const fn sub(mut self, s: &'static [&'static str]) -> Self {
        self.subresources = s;
        self
    }
    const fn stored_as(mut self, s: &'static str) -> Self {
        self.storage = s;
        self
    }
    const fn generation(mut self) -> Self {
        self.generation = true;
        self
    }
    const fn version(mut self, v: &'static str) -> Self {
        self.version = v;
        self
    }
    const fn verbs(mut self, v: &'static [&'static str]) -> Self {
        self.verbs = v;
        self
    }
}

const STATUS: &[&str] = &["status"];
const SCALE_STATUS: &[&str] = &["scale", "status"];

pub const RESOURCES: &[Resource] = &[
    // core/v1
    res("", "bindings", "binding", "Binding", true).verbs(&["create"]),
    res("", "configmaps", "configmap", "ConfigMap", true).short(&["cm"]),
    res("", "endpoints", "endpoints", "Endpoints", true)
        .short(&["ep"])
        .stored_as("services/endpoints"),
    res("", "events", "event", "Event", true).short(&["ev"]),
    res("", "limitranges", "limitrange", "LimitRange", true).short(&["limits"]),
    res("", "namespaces", "namespace", "Namespace", false)
        .short(&["ns"])
        .sub(&["finalize", "status"]),
    res("", "nodes", "node", "Node", false)
        .short(&["no"])
        .sub(&["proxy", "status"])
        .stored_as("minions"),
    res(
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
    )
    .short(&["pvc"])
    .sub(STATUS),
    res(
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
    )
    .short(&["pv"])
    .sub(STATUS),
    res("", "pods", "pod", "Pod", true)
        .short(&["po"])
        .all()
        .sub(&[
            "attach",
            "binding",
            "eviction",
            "exec",
            "log",
            "portforward",
            "proxy",
            "status",
        ]),
    res("", "podtemplates", "podtemplate", "PodTemplate", true),
    res(
        "",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
    )
    .short(&["rc"])
    .all()
    .sub(SCALE_STATUS)
    .stored_as("controllers")
    .generation(),
    res("", "resourcequotas", "resourcequota", "ResourceQuota", true)
        .short(&["quota"])
        .sub(STATUS),
    res("", "secrets", "secret", "Secret", true),
    res(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
    )
    .short(&["sa"])
    .sub(&["token"]),
    res("", "services", "service", "Service", true)
        .short(&["svc"])
        .all()
        .sub(&["proxy", "status"])
        .stored_as("services/specs"),
    // apps/v1
    res(
        "apps",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
    ),
    res("apps", "daemonsets", "daemonset", "DaemonSet", true)
        .short(&["ds"])
        .all()
        .sub(STATUS)
        .generation(),
    res("apps", "deployments", "deployment", "Deployment", true)
        .short(&["deploy"])
        .all()
        .sub(SCALE_STATUS)
        .generation(),
    res("apps", "replicasets", "replicaset", "ReplicaSet", true)
        .short(&["rs"])
        .all()
        .sub(SCALE_STATUS)
        .generation(),
    res("apps", "statefulsets", "statefulset", "StatefulSet", true)
        .short(&["sts"])
        .all()
        .sub(SCALE_STATUS)
        .generation(),
    // autoscaling/v2
    res(
        "autoscaling",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
    )
    .version("v2")
    .short(&["hpa"])
    .all()
    .sub(STATUS)
    .generation(),
    // batch/v1
    res("batch", "cronjobs", "cronjob", "CronJob", true)
        .short(&["cj"])
        .all()
        .sub(STATUS)
        .generation(),
    res("batch", "jobs", "job", "Job", true)
        .all()
        .sub(STATUS)
        .generation(),
    // authentication.k8s.io/v1 (virtual: answered, never stored)
    res(
        "authentication.k8s.io",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false,
    )
    .verbs(&["create"]),
    // authorization.k8s.io/v1 (virtual: answered, never stored)
    res(
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
    )
    .verbs(&["create"]),
    res(
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false,
    )
    .verbs(&["create"]),
    res(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
    )
    .verbs(&["create"]),
    res(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true,
    )
    .verbs(&["create"]),
    // metrics.k8s.io/v1beta1 (virtual: read from the kubelets' resource statistics)
    // (never stored; their own key space keeps them apart from pods and nodes)
    res("metrics.k8s.io", "nodes", "", "NodeMetrics", false)
        .version("v1beta1")
        .stored_as("metrics.k8s.io/nodes")
        .verbs(&["get", "list"]),
    res("metrics.k8s.io", "pods", "", "PodMetrics", true)
        .version("v1beta1")
        .stored_as("metrics.k8s.io/pods")
        .verbs(&["get", "list"]),
    // certificates.k8s.io/v1
    res(
        "certificates.k8s.io",
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
    )
    .short(&["csr"])
    .sub(&["approval", "status"]),
    // coordination.k8s.io/v1
    res("coordination.k8s.io", "leases", "lease", "Lease", true),
    // discovery.k8s.io/v1
    res(
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
    ),
    // networking.k8s.io/v1
    res(
        "networking.k8s.io",
        "ingressclasses",
        "ingressclass",
        "IngressClass",
        false,
    ),
    res("networking.k8s.io", "ingresses", "ingress", "Ingress", true)
        .short(&["ing"])
        .sub(STATUS)
        .stored_as("ingress")
        .generation(),
    res(
        "networking.k8s.io",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
    )
    .short(&["netpol"])
    .generation(),
    // node.k8s.io/v1
    res(
        "node.k8s.io",
        "runtimeclasses",
        "runtimeclass",
        "RuntimeClass",
        false,
    ),
    // policy/v1
    res(
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
    )
    .short(&["pdb"])
    .sub(STATUS)
    .generation(),
    // rbac.authorization.k8s.io/v1
    res(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
    ),
    res(
        "rbac.authorization.k8s.io",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
    ),
    res(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
    ),
    res("rbac.authorization.k8s.io", "roles", "role", "Role", true),
    // scheduling.k8s.io/v1
    res(
        "scheduling.k8s.io",
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        false,
    )
    .short(&["pc"]),
    // storage.k8s.io/v1
    res(
        "storage.k8s.io",
        "csidrivers",
        "csidriver",
        "CSIDriver",
        false,
    ),
    res("storage.k8s.io", "csinodes", "csinode", "CSINode", false),
    res(
        "storage.k8s.io",
        "csistoragecapacities",
        "csistoragecapacity",
        "CSIStorageCapacity",
        true,
    ),
    res(
        "storage.k8s.io",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
    )
    .short(&["sc"]),
    res(
        "storage.k8s.io",
        "volumeattachments",
        "volumeattachment",
        "VolumeAttachment",
        false,
    )
    .sub(STATUS),
    // apiregistration.k8s.io/v1 (the local APIServices of the served groups; no aggregation)
    res(
        "apiregistration.k8s.io",
        "apiservices",
        "apiservice",
        "APIService",
        false,
    )
    .stored_as("apiregistration.k8s.io/apiservices")
    .sub(STATUS),
    // flowcontrol.apiserver.k8s.io/v1 (stored; requests are not queued by them)
    res(
        "flowcontrol.apiserver.k8s.io",
        "flowschemas",
        "flowschema",
        "FlowSchema",
        false,
    )
    .sub(STATUS)
    .generation(),
    res(
        "flowcontrol.apiserver.k8s.io",
        "prioritylevelconfigurations",
        "prioritylevelconfiguration",
        "PriorityLevelConfiguration",
        false,
    )
    .sub(STATUS)
    .generation(),
    // admissionregistration.k8s.io/v1 (webhooks called by `admission_webhook`; policies stored)
    res(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        false,
    )
    .generation(),
    res(
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
        "validatingadmissionpolicy",
        "ValidatingAdmissionPolicy",
        false,
    )
    .sub(STATUS)
    .generation(),
    res(
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
        "validatingadmissionpolicybinding",
        "ValidatingAdmissionPolicyBinding",
        false,
    )
    .generation(),
    res(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration",
        false,
    )
    .generation(),
    // events.k8s.io/v1: core/v1 Events under newer field names, kept once (`/registry/events`).
    res("events.k8s.io", "events", "event", "Event", true)
        .short(&["ev"])
        .stored_as("events"),
    // apiextensions.k8s.io/v1
    res(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
    )
    .short(&["crd", "crds"])
    .sub(STATUS)
    .stored_as("apiextensions.k8s.io/customresourcedefinitions")
    .generation(),
];

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn storage_prefix(&self) -> &'static str {
        if self.storage.is_empty() {
            self.plural
        } else {
            self.storage
        }
    }

    /// Where kube-apiserver keeps this resource in etcd: `/registry/<resource>/[<ns>/]<name>`.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> Vec<u8> {
        let base = self.storage_prefix();
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{base}/{ns}/{name}"),
            _ => format!("/registry/{base}/{name}"),
        }
        .into_bytes()
    }

    /// The key prefix for a list: one namespace, or all.
    pub fn prefix(&self, namespace: Option<&str>) -> Vec<u8> {
        let base = self.storage_prefix();
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{base}/{ns}/"),
            _ => format!("/registry/{base}/"),
        }
        .into_bytes()
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    /// The APIResource entries for discovery: the resource, then its subresources.
    pub fn discovery(&self) -> Vec<Value> {
        let mut out = vec![{
            let mut v = json!({
                "name": self.plural,
                "singularName": self.singular,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": self.verbs,
            });
            if !self.short_names.is_empty() {
                v["shortNames"] = json!(self.short_names);
            }
            if !self.categories.is_empty() {
                v["categories"] = json!(self.categories);
            }
            v
        }];
        for sub in self.subresources {
            let (kind, group, version, verbs): (&str, &str, &str, &[&str]) = match *sub {
                "status" | "finalize" | "approval" => {
                    (self.kind, "", "", &["get", "patch", "update"])
                }
                "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
                "binding" => ("Binding", "", "", &["create"]),
                "eviction" => ("Eviction", "policy", "v1", &["create"]),
                "token" => ("TokenRequest", "authentication.k8s.io", "v1", &["create"]),
                "log" => ("Pod", "", "", &["get"]),
                "exec" | "attach" | "portforward" => ("PodExecOptions", "", "", &["create", "get"]),
                "proxy" => (
                    "NodeProxyOptions",
                    "",
                    "",
                    &["create", "delete", "get", "patch", "update"],
                ),
                _ => (self.kind, "", "", &["get"]),
            };
            let kind = match (*sub, self.kind) {
                ("proxy", "Service") => "ServiceProxyOptions",
                ("proxy", "Pod") => "PodProxyOptions",
                ("attach", _) => "PodAttachOptions",
                ("portforward", _) => "PodPortForwardOptions",
                _ => kind,
            };
            let mut v = json!({
                "name": format!("{}/{sub}", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !group.is_empty() {
                v["group"] = json!(group);
                v["version"] = json!(version);
            }
            out.push(v);
        }
        out
    }
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kube_apiserver_layout() {
        let svc = find("", "v1", "services").unwrap();
        assert_eq!(svc.key(Some("a"), "b"), b"/registry/services/specs/a/b");
        let node = find("", "v1", "nodes").unwrap();
        assert_eq!(node.key(Some("ignored"), "n1"), b"/registry/minions/n1");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.prefix(Some("x")), b"/registry/deployments/x/");
    }

    #[test]
    fn every_row_is_unique_and_prefixes_do_not_overlap() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    !(a.group == b.group && a.plural == b.plural),
                    "{} twice",
                    a.plural
                );
                // events.k8s.io/v1 Events are core/v1 Events seen another way.
                let same_events = a.plural == "events" && b.plural == "events";
                if a.verbs.contains(&"get") && b.verbs.contains(&"get") && !same_events {
                    let (pa, pb) = (a.prefix(None), b.prefix(None));
                    assert!(
                        !pa.starts_with(&pb) && !pb.starts_with(&pa),
                        "{} and {} share keys",
                        a.plural,
                        b.plural
                    );
                }
            }
        }
    }
}
