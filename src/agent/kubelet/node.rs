//! The node as the API sees it: registration (capacity, allocatable, addresses, nodeInfo,
//! labels), the Lease heartbeat every 10 s, and status (conditions from memory, disk and
//! PIDs, and the runtime's readiness) written on change or every minute.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::agent::cri::Cri;

/// Pods per node, the kubelet's default.
const MAX_PODS: i64 = 110;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub node_ip: String,
    /// The other family's internal address on a dual-stack node.
    pub secondary_node_ips: Vec<String>,
    /// `--node-external-ip`.
    pub external_ips: Vec<String>,
    pub data_dir: PathBuf,
    pub kubelet_version: String,
    pub extra_labels: BTreeMap<String, String>,
    /// Where the kubelet API listens (status.daemonEndpoints).
    pub kubelet_port: u16,
    /// The hard eviction thresholds: pressure conditions and what is allocatable.
    pub eviction: super::eviction::Thresholds,
    /// Whether the node is shutting down (NotReady then).
    pub shutdown: std::sync::Arc<super::node_shutdown::ShutdownState>,
}

/// The eviction signals of the node whose data lives at `dir`.
pub fn signals(dir: &std::path::Path) -> super::eviction::Signals {
    let m = machine(dir);
    super::eviction::Signals {
        memory: m.memory,
        memory_available: m.memory_available,
        disk: m.disk,
        disk_available: m.disk_available,
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Machine {
    cpus: i64,
    memory: i64,
    memory_available: i64,
    disk: u64,
    disk_available: u64,
    pids: u64,
    pid_max: u64,
}

fn meminfo(key: &str, text: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn machine(data_dir: &std::path::Path) -> Machine {
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as i64;
    let (disk, disk_available) = statvfs(data_dir).unwrap_or((0, 0));
    let pids = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    Machine {
        cpus,
        memory: meminfo("MemTotal:", &mem),
        memory_available: meminfo("MemAvailable:", &mem),
        disk,
        disk_available,
        pids,
        pid_max,
    }
}

pub(super) fn statvfs(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed struct we own, with a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn q(s: impl Into<String>) -> Quantity {
    Quantity(s.into())
}

fn condition(
    kind: &str,
    pressure: bool,
    ok_reason: &str,
    ok_msg: &str,
    bad_reason: &str,
    bad_msg: &str,
) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: if pressure { "True" } else { "False" }.into(),
        reason: Some(if pressure { bad_reason } else { ok_reason }.into()),
        message: Some(if pressure { bad_msg } else { ok_msg }.into()),
        ..Default::default()
    }
}

pub struct NodeAgent {
    client: kube::Client,
    cri: Cri,
    config: NodeConfig,
}

impl NodeAgent {
    /// InternalIPs (primary first), ExternalIPs, then the Hostname, as the kubelet lists them.
    fn addresses(&self) -> Vec<NodeAddress> {
        let c = &self.config;
        let internal = std::iter::once(&c.node_ip).chain(&c.secondary_node_ips);
        internal
            .map(|ip| ("InternalIP", ip))
            .chain(c.external_ips.iter().map(|ip| ("ExternalIP", ip)))
            .chain(std::iter::once(("Hostname", &c.name)))
            .map(|(t, a)| NodeAddress {
                type_: t.into(),
                address: a.clone(),
            })
            .collect()
    }

    pub fn new(client: kube::Client, cri: Cri, config: NodeConfig) -> NodeAgent {
        NodeAgent {
            client,
            cri,
            config,
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            (
                "kubernetes.io/hostname".to_string(),
                self.config.name.clone(),
            ),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), go_arch().to_string()),
            ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
            ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
            (
                "node.kubernetes.io/instance-type".to_string(),
                "krab".to_string(),
            ),
        ]);
        l.extend(self.config.extra_labels.clone());
        l
    }

    /// The status as of now (conditions keep their transition times when unchanged).
    async fn status(&self, previous: Option<&NodeStatus>) -> NodeStatus {
        let m = machine(&self.config.data_dir);
        let runtime = self.cri.version().await.ok();
        let mut not_ready = match self.cri.not_ready().await {
            Ok(list) => list,
            Err(e) => vec![format!("container runtime is down: {e}")],
        };
        if self.config.shutdown.shutting_down() {
            not_ready.push(super::node_shutdown::NOT_READY.to_string());
        }
        let capacity = BTreeMap::from([
            ("cpu".to_string(), q(m.cpus.to_string())),
            ("memory".to_string(), q(format!("{}Ki", m.memory / 1024))),
            ("pods".to_string(), q(MAX_PODS.to_string())),
            (
                "ephemeral-storage".to_string(),
                q(format!("{}Ki", m.disk / 1024)),
            ),
            ("hugepages-2Mi".to_string(), q("0")),
        ]);
        let mut allocatable = capacity.clone();
        let thresholds = &self.config.eviction;
        allocatable.insert(
            "memory".into(),
            q(format!(
                "{}Ki",
                thresholds.allocatable_memory(m.memory) / 1024
            )),
        );
        allocatable.insert(
            "ephemeral-storage".into(),
            q(thresholds.allocatable_disk(m.disk).to_string()),
        );
        let signals = super::eviction::Signals {
            memory: m.memory,
            memory_available: m.memory_available,
            disk: m.disk,
            disk_available: m.disk_available,
        };
        let disk_pressure = thresholds.disk_pressure(&signals);
        let mut conditions = vec![
            condition(
                "MemoryPressure",
                thresholds.memory_pressure(&signals),
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            condition(
                "DiskPressure",
                disk_pressure,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            ),
            condition(
                "PIDPressure",
                m.pids * 10 > m.pid_max * 9,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            if not_ready.is_empty() {
                NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    message: Some("kubelet is posting ready status".into()),
                    ..Default::default()
                }
            } else {
                NodeCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: Some("KubeletNotReady".into()),
                    message: Some(not_ready.join("; ")),
                    ..Default::default()
                }
            },
        ];
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for c in &mut conditions {
            let prev = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|p| p.type_ == c.type_));
            c.last_heartbeat_time = Some(now.clone());
            c.last_transition_time = match prev {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => Some(now.clone()),
            };
        }
        NodeStatus {
            capacity: Some(capacity),
            allocatable: Some(allocatable),
            addresses: Some(self.addresses()),
            conditions: Some(conditions),
            daemon_endpoints: Some(k8s_openapi::api::core::v1::NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint {
                    port: i32::from(self.config.kubelet_port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: go_arch().into(),
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: runtime
                    .map(|r| format!("{}://{}", r.name, r.version))
                    .unwrap_or_default(),
                kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
                kube_proxy_version: String::new(),
                kubelet_version: self.config.kubelet_version.clone(),
                machine_id: read_trimmed("/etc/machine-id"),
                operating_system: "linux".into(),
                os_image: os_image(),
                system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
                ..Default::default()
            }),
            images: previous.and_then(|p| p.images.clone()),
            ..Default::default()
        }
    }

    /// Creates the Node (or adopts an existing one, keeping its spec) and writes its status.
    pub async fn register(&self) -> Result<Node, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                labels: Some(self.labels()),
                annotations: Some(BTreeMap::from([(
                    "node.alpha.kubernetes.io/ttl".to_string(),
                    "0".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %self.config.name, "node registered"),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let patch = serde_json::json!({"metadata": {"labels": self.labels()}});
                nodes
                    .patch(
                        &self.config.name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                tracing::info!(node = %self.config.name, "node already registered; adopted");
            }
            Err(e) => return Err(e),
        }
        let current = nodes.get(&self.config.name).await?;
        self.write_status(current.status.as_ref()).await
    }

    async fn write_status(&self, previous: Option<&NodeStatus>) -> Result<Node, kube::Error> {
        let status = self.status(previous).await;
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(
                &self.config.name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "status": status })),
            )
            .await
    }

    async fn renew_lease(&self, node_uid: &str) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(self.config.name.clone()),
            lease_duration_seconds: Some(40),
            renew_time: Some(now),
            ..Default::default()
        };
        match leases.get_opt(&self.config.name).await? {
            Some(mut lease) => {
                lease.spec = Some(spec);
                leases
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await?;
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: self.config.name.clone(),
                            uid: node_uid.to_string(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                leases.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    /// Heartbeats until shutdown: the Lease every 10 s; the status when a condition changes
    /// or a minute has passed.
    pub async fn heartbeat(
        self,
        mut node: Node,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut last_status = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            // A node shutdown is reported at once.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
                _ = self.config.shutdown.changed() => {}
            }
            let uid = node.metadata.uid.clone().unwrap_or_default();
            if let Err(e) = self.renew_lease(&uid).await {
                tracing::warn!(node = %self.config.name, error = %e, "lease renewal failed");
            }
            let fresh = self.status(node.status.as_ref()).await;
            let changed = conditions_differ(node.status.as_ref(), &fresh);
            if changed || last_status.elapsed() >= Duration::from_secs(60) {
                match self.write_status(node.status.as_ref()).await {
                    Ok(n) => {
                        node = n;
                        last_status = tokio::time::Instant::now();
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        tracing::warn!(node = %self.config.name, "node object deleted; registering again");
                        if let Ok(n) = self.register().await {
                            node = n;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.config.name, error = %e, "node status update failed")
                    }
                }
            }
        }
    }
}

fn conditions_differ(old: Option<&NodeStatus>, new: &NodeStatus) -> bool {
    let key = |s: Option<&NodeStatus>| -> Vec<(String, String)> {
        s.and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    key(old) != key(Some(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_values_are_bytes() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(meminfo("MemTotal:", text), 24_000_000 * 1024);
        assert_eq!(meminfo("MemAvailable:", text), 1000 * 1024);
        assert_eq!(meminfo("Missing:", text), 0);
    }
}
