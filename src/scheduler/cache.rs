//! The scheduler's view of the cluster, kept from its watches: each node with the pods
//! bound (or assumed bound) to it and what they request, plus the volumes, namespaces and
//! disruption budgets the filters consult. Owned by the scheduling loop alone (no locks);
//! a pod the loop has just bound is "assumed" on its node until the watch confirms it, so
//! the next pod does not see the room it took as free.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use crate::resources::pod_resources::add;
pub use crate::resources::pod_resources::requests;
use crate::resources::quantity::milli;

pub use crate::resources::pod_resources::Resources;

/// kube's defaults for a container that requests no cpu or memory, used only to score
/// (`GetNonzeroRequests`): 100m cpu, 200 MiB memory.
const DEFAULT_CPU_MILLI: i128 = 100;
const DEFAULT_MEMORY_MILLI: i128 = 200 * 1024 * 1024 * 1000;

/// A host port a pod holds: protocol, host IP (empty for all) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports collide: same protocol and port, and the same IP or either
    /// one on every address.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || any(&self.ip) || any(&other.ip))
    }
}

/// A pod with what the scheduler needs from it worked out once.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub key: String,
    pub uid: String,
    pub requests: Resources,
    /// cpu and memory with kube's non-zero defaults, for scoring.
    pub nonzero: (i128, i128),
    pub ports: Vec<HostPort>,
    pub priority: i32,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let key = key_of(&pod);
        let uid = pod.uid().unwrap_or_default();
        let requests = requests(&pod);
        let nonzero = nonzero_requests(&pod);
        let ports = host_ports(&pod);
        let priority = priority(&pod);
        PodInfo {
            pod,
            key,
            uid,
            requests,
            nonzero,
            ports,
            priority,
        }
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.pod.labels()
    }

    pub fn tolerations(&self) -> &[k8s_openapi::api::core::v1::Toleration] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
    }
}

/// `namespace/name` of a pod.
pub fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// A pod's priority (set by the API's Priority admission; 0 without).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// cpu and memory requests with kube's defaults for containers that name none.
fn nonzero_requests(pod: &Pod) -> (i128, i128) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str, d: i128| r.and_then(|r| r.get(k)).map(milli).unwrap_or(d);
        (
            get("cpu", DEFAULT_CPU_MILLI),
            get("memory", DEFAULT_MEMORY_MILLI),
        )
    };
    let (mut cpu, mut mem) = (0, 0);
    for c in &spec.containers {
        let (c, m) = of(c);
        cpu += c;
        mem += m;
    }
    for c in spec.init_containers.iter().flatten() {
        let (c, m) = of(c);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    if let Some(o) = spec.overhead.as_ref() {
        cpu += o.get("cpu").map(milli).unwrap_or(0);
        mem += o.get("memory").map(milli).unwrap_or(0);
    }
    (cpu, mem)
}

/// The host ports a pod's containers ask for.
fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return vec![];
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: p.host_ip.clone().unwrap_or_default(),
                port,
            })
        })
        .collect()
}

/// What of a placed pod the filters, scores and preemption read once its requests and
/// ports are worked out: identity, labels, affinity, priority, deletion and start time.
/// Placed pods are most of a cluster's pods, so the cache keeps only this.
fn slim(p: &Pod) -> Pod {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;
    Pod {
        metadata: ObjectMeta {
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            uid: p.metadata.uid.clone(),
            labels: p.metadata.labels.clone(),
            deletion_timestamp: p.metadata.deletion_timestamp.clone(),
            resource_version: p.metadata.resource_version.clone(),
            ..Default::default()
        },
        spec: p.spec.as_ref().map(|s| PodSpec {
            node_name: s.node_name.clone(),
            affinity: s.affinity.clone(),
            priority: s.priority,
            containers: Vec::new(),
            ..Default::default()
        }),
        status: p.status.as_ref().map(|s| PodStatus {
            phase: s.phase.clone(),
            start_time: s.start_time.clone(),
            ..Default::default()
        }),
    }
}

/// A node and the pods on it.
#[derive(Debug, Default)]
pub struct NodeInfo {
    pub node: Option<Arc<Node>>,
    pub pods: Vec<Arc<PodInfo>>,
    pub requested: Resources,
    pub nonzero: (i128, i128),
}

impl NodeInfo {
    pub fn allocatable(&self, resource: &str) -> i128 {
        self.node
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(resource))
            .map(milli)
            .unwrap_or(0)
    }

    pub fn add(&mut self, p: Arc<PodInfo>) {
        add(&mut self.requested, &p.requests);
        self.nonzero.0 += p.nonzero.0;
        self.nonzero.1 += p.nonzero.1;
        self.pods.push(p);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(i) = self.pods.iter().position(|p| p.uid == uid) {
            let p = self.pods.swap_remove(i);
            for (k, v) in &p.requests {
                if let Some(e) = self.requested.get_mut(k) {
                    *e -= v;
                }
            }
            self.nonzero.0 -= p.nonzero.0;
            self.nonzero.1 -= p.nonzero.1;
        }
    }

    /// This node with some of its pods taken away (preemption's what-if).
    pub fn without(&self, gone: &HashSet<String>) -> NodeInfo {
        let mut n = NodeInfo {
            node: self.node.clone(),
            ..Default::default()
        };
        for p in self.pods.iter().filter(|p| !gone.contains(&p.uid)) {
            n.add(p.clone());
        }
        n
    }

    pub fn name(&self) -> String {
        self.node.as_ref().map(|n| n.name_any()).unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.as_ref().map(|n| n.labels()).unwrap_or(&EMPTY)
    }
}

/// Everything the scheduler knows.
#[derive(Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    /// uid → node of every pod counted on a node.
    placed: HashMap<String, String>,
    /// uids bound by this scheduler whose binding the watch has not shown yet.
    assumed: HashSet<String>,
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    pub claims: HashMap<String, Arc<PersistentVolumeClaim>>,
    pub volumes: HashMap<String, Arc<PersistentVolume>>,
    pub classes: HashMap<String, Arc<StorageClass>>,
    pub budgets: Vec<Arc<PodDisruptionBudget>>,
}

/// Whether a pod has finished (the scheduler no longer counts it anywhere).
pub fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Cache {
    pub fn set_node(&mut self, node: Arc<Node>) {
        let name = node.name_any();
        self.nodes.entry(name).or_default().node = Some(node);
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// A pod bound to a node as the watch shows it (confirming an assumed one), or gone
    /// from it when it has finished.
    pub fn set_pod(&mut self, pod: Arc<Pod>) {
        let uid = pod.uid().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            return;
        }
        self.remove_pod(&uid);
        if terminal(&pod) {
            return;
        }
        self.placed.insert(uid, node.clone());
        let mut info = PodInfo::new(pod);
        info.pod = Arc::new(slim(&info.pod));
        self.nodes.entry(node).or_default().add(Arc::new(info));
    }

    pub fn remove_pod(&mut self, uid: &str) {
        self.assumed.remove(uid);
        if let Some(node) = self.placed.remove(uid) {
            if let Some(info) = self.nodes.get_mut(&node) {
                info.remove(uid);
                if info.node.is_none() && info.pods.is_empty() {
                    self.nodes.remove(&node);
                }
            }
        }
    }

    /// Counts a pod on the node it is being bound to, ahead of the watch.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        let mut bound = (*pod.pod).clone();
        if let Some(spec) = bound.spec.as_mut() {
            spec.node_name = Some(node.to_string());
        }
        self.set_pod(Arc::new(bound));
        self.assumed.insert(pod.uid.clone());
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.assumed.contains(uid)
    }

    /// Takes back an assumption whose binding failed.
    pub fn forget(&mut self, uid: &str) {
        if self.assumed.contains(uid) {
            self.remove_pod(uid);
        }
    }

    /// Replaces every pod after a re-list, keeping assumptions the list predates.
    pub fn reset_pods(&mut self, pods: Vec<Arc<Pod>>) {
        // Assumptions stand unless the list already shows the pod bound.
        let listed: HashSet<String> = pods
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .filter_map(|p| p.uid())
            .collect();
        let keep: Vec<Arc<PodInfo>> = self
            .nodes
            .values()
            .flat_map(|n| n.pods.iter())
            .filter(|p| self.assumed.contains(&p.uid) && !listed.contains(&p.uid))
            .cloned()
            .collect();
        for info in self.nodes.values_mut() {
            info.pods.clear();
            info.requested.clear();
            info.nonzero = (0, 0);
        }
        self.nodes.retain(|_, n| n.node.is_some());
        self.placed.clear();
        self.assumed
            .retain(|uid| keep.iter().any(|p| &p.uid == uid));
        for p in pods {
            self.set_pod(p);
        }
        for p in keep {
            let node = p
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            self.placed.insert(p.uid.clone(), node.clone());
            self.nodes.entry(node).or_default().add(p);
        }
    }

    /// The nodes pods can go to (known Node objects), in name order.
    pub fn schedulable(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.node.is_some())
    }

    pub fn node_count(&self) -> usize {
        self.schedulable().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_count_init_containers_sidecars_and_overhead_as_kube_does() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m", "memory": "1Ki"}}}],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "500m"}}},
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                {"name": "j", "resources": {"requests": {"cpu": "400m"}}}],
            "overhead": {"cpu": "10m"}}}));
        let r = requests(&p);
        // App 300m + sidecar 50m = 350m; init peak max(500m, 50m+400m) = 500m; + 10m.
        assert_eq!(r["cpu"], 510);
        assert_eq!(r["memory"], 1_024_000);
        // Scoring defaults: no memory request on `a` counts as 200 MiB.
        let (cpu, mem) = nonzero_requests(&p);
        assert_eq!(cpu, 510);
        assert_eq!(mem, DEFAULT_MEMORY_MILLI + 1_024_000);
    }

    #[test]
    fn host_ports_conflict_on_the_same_address_or_any() {
        let a = HostPort {
            protocol: "TCP".into(),
            ip: "".into(),
            port: 80,
        };
        let b = HostPort {
            ip: "10.0.0.1".into(),
            ..a.clone()
        };
        let c = HostPort {
            ip: "10.0.0.2".into(),
            ..a.clone()
        };
        let udp = HostPort {
            protocol: "UDP".into(),
            ..a.clone()
        };
        assert!(a.conflicts(&b));
        assert!(!b.conflicts(&c));
        assert!(!a.conflicts(&udp));
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut cache = Cache::default();
        cache.set_node(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap(),
        ));
        let p = Arc::new(PodInfo::new(Arc::new(pod(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}})))));
        cache.assume(&p, "n");
        assert_eq!(cache.nodes["n"].requested["cpu"], 1000);
        // A re-list that predates the binding keeps the assumption.
        cache.reset_pods(vec![]);
        assert_eq!(cache.nodes["n"].pods.len(), 1);
        cache.forget("u1");
        assert_eq!(cache.nodes["n"].requested["cpu"], 0);
        assert!(cache.nodes["n"].pods.is_empty());
    }
}
