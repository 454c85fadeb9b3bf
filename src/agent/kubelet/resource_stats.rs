//! The kubelet's resource statistics, the CPU and memory part of kube's Summary API
//! (`/stats/summary`): every 10 s the node's usage from /proc and each container's from
//! CRI, with CPU rates over the interval between samples. The API server's metrics.k8s.io
//! reads them (as metrics-server does on kube), so `kubectl top` and the autoscaler work.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Kubelet;
use crate::agent::cri::stats::ContainerUsage;

/// kube's housekeeping interval for the metrics metrics-server scrapes.
const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ContainerStats {
    pub name: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub containers: Vec<ContainerStats>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

/// `/stats/summary` (the CPU and memory fields of kube's stats/v1alpha1 Summary).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

/// The last summary, and the samples CPU rates are computed against.
#[derive(Default)]
pub struct ResourceStats {
    latest: RwLock<Option<Arc<Summary>>>,
    /// (timestamp ns, cumulative CPU ns) by node ("") and by pod uid + container.
    previous: Mutex<HashMap<String, (i64, u64)>>,
}

fn rfc3339(nanos: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn now_nanos() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_nanosecond() as i64
}

/// The CPU time the node has spent busy, from the first line of /proc/stat, in ns.
pub fn node_cpu_nanoseconds(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(busy.saturating_mul(1_000_000_000 / hz))
}

/// (total, available, free) bytes from /proc/meminfo.
pub fn node_memory(meminfo: &str) -> Option<(u64, u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((
        field("MemTotal:")?,
        field("MemAvailable:")?,
        field("MemFree:")?,
    ))
}

impl ResourceStats {
    pub fn latest(&self) -> Option<Arc<Summary>> {
        self.latest.read().ok().and_then(|l| l.clone())
    }

    /// A rate in nanocores from the previous sample of `key`, remembering this one.
    fn rate(&self, key: String, at: i64, cumulative: u64) -> Option<u64> {
        let mut prev = self.previous.lock().ok()?;
        let before = prev.insert(key, (at, cumulative));
        let (t0, c0) = before?;
        let dt = at.checked_sub(t0).filter(|d| *d > 0)?;
        let dc = cumulative.checked_sub(c0)?;
        Some((u128::from(dc) * 1_000_000_000 / dt as u128) as u64)
    }

    /// Builds a summary from one sample of the node and its containers.
    pub fn record(
        &self,
        node_name: &str,
        proc_stat: &str,
        meminfo: &str,
        containers: Vec<ContainerUsage>,
    ) -> Arc<Summary> {
        let now = now_nanos();
        let node_cpu = node_cpu_nanoseconds(proc_stat);
        let memory = node_memory(meminfo);
        let node = NodeStats {
            node_name: node_name.to_string(),
            cpu: CpuStats {
                time: rfc3339(now),
                usage_nano_cores: node_cpu.and_then(|c| self.rate(String::new(), now, c)),
                usage_core_nano_seconds: node_cpu,
            },
            memory: MemoryStats {
                time: rfc3339(now),
                working_set_bytes: memory.map(|(t, a, _)| t.saturating_sub(a)),
                usage_bytes: memory.map(|(t, _, f)| t.saturating_sub(f)),
                available_bytes: memory.map(|(_, a, _)| a),
            },
        };
        let mut pods: Vec<PodStats> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for c in containers.into_iter().filter(|c| !c.pod_uid.is_empty()) {
            let key = format!("{}/{}", c.pod_uid, c.container);
            let own_rate = c
                .cpu_core_nanoseconds
                .and_then(|n| self.rate(key, c.timestamp, n));
            let stats = ContainerStats {
                name: c.container.clone(),
                cpu: CpuStats {
                    time: rfc3339(c.timestamp),
                    usage_nano_cores: own_rate.or(c.cpu_nano_cores),
                    usage_core_nano_seconds: c.cpu_core_nanoseconds,
                },
                memory: MemoryStats {
                    time: rfc3339(c.timestamp),
                    working_set_bytes: c.memory_working_set_bytes,
                    usage_bytes: c.memory_usage_bytes,
                    available_bytes: None,
                },
            };
            let i = *seen.entry(c.pod_uid.clone()).or_insert_with(|| {
                pods.push(PodStats {
                    pod_ref: PodReference {
                        name: c.pod_name.clone(),
                        namespace: c.pod_namespace.clone(),
                        uid: c.pod_uid.clone(),
                    },
                    ..Default::default()
                });
                pods.len() - 1
            });
            pods[i].containers.push(stats);
        }
        // A pod's usage is its containers' sum.
        for p in &mut pods {
            let sum = |f: &dyn Fn(&ContainerStats) -> Option<u64>| -> Option<u64> {
                p.containers.iter().map(f).sum()
            };
            p.cpu = CpuStats {
                time: rfc3339(now),
                usage_nano_cores: sum(&|c| c.cpu.usage_nano_cores),
                usage_core_nano_seconds: sum(&|c| c.cpu.usage_core_nano_seconds),
            };
            p.memory = MemoryStats {
                time: rfc3339(now),
                working_set_bytes: sum(&|c| c.memory.working_set_bytes),
                usage_bytes: sum(&|c| c.memory.usage_bytes),
                available_bytes: None,
            };
        }
        let summary = Arc::new(Summary { node, pods });
        if let Ok(mut l) = self.latest.write() {
            *l = Some(summary.clone());
        }
        summary
    }
}

/// Samples the node and its containers every 10 s until `shutdown`.
pub async fn run(k: Arc<Kubelet>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        match k.cri.container_usage().await {
            Ok(containers) => {
                let stat = tokio::fs::read_to_string("/proc/stat")
                    .await
                    .unwrap_or_default();
                let meminfo = tokio::fs::read_to_string("/proc/meminfo")
                    .await
                    .unwrap_or_default();
                k.stats.record(&k.node_name, &stat, &meminfo, containers);
            }
            Err(e) => tracing::debug!(error = %e, "container stats unavailable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(at: i64, cpu: u64) -> ContainerUsage {
        ContainerUsage {
            pod_uid: "u1".into(),
            pod_name: "p".into(),
            pod_namespace: "default".into(),
            container: "c".into(),
            timestamp: at,
            cpu_core_nanoseconds: Some(cpu),
            memory_working_set_bytes: Some(4096),
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_pods_sum_their_containers() {
        let stats = ResourceStats::default();
        let stat = "cpu  100 0 50 1000 5 0 0 0 0 0\n";
        let meminfo = "MemTotal: 1000 kB\nMemFree: 200 kB\nMemAvailable: 600 kB\n";
        let first = stats.record("n1", stat, meminfo, vec![usage(1_000_000_000, 0)]);
        assert_eq!(first.pods[0].containers[0].cpu.usage_nano_cores, None);
        assert_eq!(first.node.memory.working_set_bytes, Some(400 * 1024));
        // Half a core over two seconds.
        let second = stats.record(
            "n1",
            stat,
            meminfo,
            vec![usage(3_000_000_000, 1_000_000_000)],
        );
        assert_eq!(second.pods[0].cpu.usage_nano_cores, Some(500_000_000));
        assert_eq!(second.pods[0].memory.working_set_bytes, Some(4096));
        assert_eq!(second.pods[0].pod_ref.name, "p");
        assert!(node_cpu_nanoseconds(stat).is_some_and(|n| n > 0));
    }
}
