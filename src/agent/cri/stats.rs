//! Containers' resource usage through CRI `ListContainerStats`: cumulative CPU time, the
//! runtime's own rate over its previous sample (containerd computes `usage_nano_cores`
//! between calls), and working-set memory, each with the pod it belongs to.
use super::{pb, Cri, Error, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// One container's usage at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    pub pod_uid: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub container: String,
    /// Nanoseconds since the epoch.
    pub timestamp: i64,
    pub cpu_core_nanoseconds: Option<u64>,
    pub cpu_nano_cores: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
}

impl Cri {
    /// Every container's usage, as the runtime samples it now.
    pub async fn container_usage(&self) -> Result<Vec<ContainerUsage>, Error> {
        let stats = self
            .runtime
            .clone()
            .list_container_stats(pb::ListContainerStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats;
        Ok(stats
            .into_iter()
            .map(|s| {
                let attrs = s.attributes.unwrap_or_default();
                let label = |k: &str| attrs.labels.get(k).cloned().unwrap_or_default();
                let cpu = s.cpu.unwrap_or_default();
                let memory = s.memory.unwrap_or_default();
                ContainerUsage {
                    pod_uid: label(LABEL_POD_UID),
                    pod_name: label(LABEL_POD_NAME),
                    pod_namespace: label(LABEL_POD_NAMESPACE),
                    container: attrs.metadata.map(|m| m.name).unwrap_or_default(),
                    timestamp: cpu.timestamp.max(memory.timestamp),
                    cpu_core_nanoseconds: cpu.usage_core_nano_seconds.map(|v| v.value),
                    cpu_nano_cores: cpu.usage_nano_cores.map(|v| v.value),
                    memory_working_set_bytes: memory.working_set_bytes.map(|v| v.value),
                    memory_usage_bytes: memory.usage_bytes.map(|v| v.value),
                }
            })
            .collect())
    }
}
