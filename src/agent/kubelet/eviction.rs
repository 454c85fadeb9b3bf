//! The kubelet's eviction manager (hard thresholds, kube's `--eviction-hard`): every 10 s the
//! node's memory and its data directory's filesystem are compared with the thresholds; under
//! pressure the node reports MemoryPressure or DiskPressure and one pod is evicted per round,
//! in kube's order (pods using more than they requested first, then lower priority, then
//! the larger use above the request, BestEffort before Burstable before Guaranteed for
//! disk): its containers are stopped at once and it is marked Failed with reason Evicted.
use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use crate::resources::quantity;

/// A threshold: an absolute quantity or a share of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(i64),
    Percent(f64),
}

impl Threshold {
    fn bytes(&self, capacity: i64) -> i64 {
        match self {
            Threshold::Bytes(b) => *b,
            Threshold::Percent(p) => (capacity as f64 * p / 100.0) as i64,
        }
    }

    fn show(&self) -> String {
        match self {
            Threshold::Bytes(b) => quantity::format_bytes(*b),
            Threshold::Percent(p) => format!("{p}%"),
        }
    }
}

/// The hard eviction thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `memory.available`.
    pub memory: Threshold,
    /// `nodefs.available` (the filesystem of the data directory).
    pub nodefs: Threshold,
}

impl Default for Thresholds {
    /// The thresholds k3s gives its kubelet (memory.available<100Mi, nodefs.available<5%).
    fn default() -> Self {
        Thresholds {
            memory: Threshold::Bytes(100 << 20),
            nodefs: Threshold::Percent(5.0),
        }
    }
}

impl Thresholds {
    /// Parses kube's `--eviction-hard` (`memory.available<100Mi,nodefs.available<10%`);
    /// signals not named keep their defaults.
    pub fn parse(spec: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?} is not <signal><<quantity>"))?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 = p
                        .parse()
                        .map_err(|_| format!("{value:?} is not a percentage"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("{value:?} is not between 0% and 100%"));
                    }
                    Threshold::Percent(p)
                }
                None => Threshold::Bytes(
                    quantity::parse_bytes(value)
                        .ok_or_else(|| format!("{value:?} is not a quantity"))?,
                ),
            };
            match signal {
                "memory.available" => t.memory = threshold,
                "nodefs.available" | "imagefs.available" => t.nodefs = threshold,
                "nodefs.inodesFree" | "imagefs.inodesFree" | "pid.available" => {}
                other => return Err(format!("unknown eviction signal {other:?}")),
            }
        }
        Ok(t)
    }
}

/// What the node has, as the eviction signals see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    pub memory: i64,
    pub memory_available: i64,
    pub disk: u64,
    pub disk_available: u64,
}

/// Which resource the node is short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    Memory,
    Disk,
}

impl Thresholds {
    pub fn memory_pressure(&self, s: &Signals) -> bool {
        s.memory > 0 && s.memory_available < self.memory.bytes(s.memory)
    }

    pub fn disk_pressure(&self, s: &Signals) -> bool {
        s.disk > 0 && (s.disk_available as i64) < self.nodefs.bytes(s.disk as i64)
    }

    /// What memory the pods may request: capacity less the memory threshold.
    pub fn allocatable_memory(&self, capacity: i64) -> i64 {
        (capacity - self.memory.bytes(capacity)).max(0)
    }

    pub fn allocatable_disk(&self, capacity: u64) -> u64 {
        capacity.saturating_sub(self.nodefs.bytes(capacity as i64).max(0) as u64)
    }
}

fn memory_request(pod: &Pod) -> i64 {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("memory"))
        .filter_map(|q| quantity::parse_bytes(&q.0))
        .sum()
}

fn qos_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some("BestEffort") => 0,
        Some("Burstable") => 1,
        _ => 2,
    }
}

/// The pod to evict first under `pressure`, from the running pods and their memory use
/// (working set by pod uid); with the message kube gives it.
pub fn victim<'a>(
    pods: &'a [std::sync::Arc<Pod>],
    usage: &HashMap<String, u64>,
    pressure: Pressure,
    thresholds: &Thresholds,
    signals: &Signals,
) -> Option<(&'a Pod, String)> {
    // The node's active pods (starting ones too, as kube's); critical pods
    // (system-node-critical and up) stay.
    let candidates = pods.iter().filter(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        let active = !matches!(phase, Some("Succeeded" | "Failed"));
        let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        active && p.metadata.deletion_timestamp.is_none() && priority < 2_000_000_000
    });
    let key = |p: &Pod| {
        let uid = p.metadata.uid.as_deref().unwrap_or("");
        let used = usage.get(uid).copied().unwrap_or(0) as i64;
        let above = used - memory_request(p);
        let priority = p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        match pressure {
            // exceeds requests, priority, usage above requests (larger first).
            Pressure::Memory => (i64::from(above <= 0), i64::from(priority), -above, 0),
            Pressure::Disk => (i64::from(qos_rank(p)), i64::from(priority), -used, 0),
        }
    };
    let pod = candidates.min_by_key(|p| key(p))?;
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let message = match pressure {
        Pressure::Memory => {
            let used = usage.get(uid).copied().unwrap_or(0) as i64;
            format!(
                "The node was low on resource: memory. Threshold quantity: {}, available: {}. Pod was using {}, request is {}.",
                thresholds.memory.show(),
                quantity::format_bytes(signals.memory_available),
                quantity::format_bytes(used),
                quantity::format_bytes(memory_request(pod)),
            )
        }
        Pressure::Disk => format!(
            "The node was low on resource: ephemeral-storage. Threshold quantity: {}, available: {}.",
            thresholds.nodefs.show(),
            quantity::format_bytes(signals.disk_available as i64),
        ),
    };
    Some((pod, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(uid: &str, qos: &str, priority: i32, request: Option<&str>) -> Arc<Pod> {
        let resources = match request {
            Some(r) => json!({"requests": {"memory": r}}),
            None => json!({}),
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "uid": uid},
                "spec": {"priority": priority, "containers": [{"name": "c", "resources": resources}]},
                "status": {"phase": "Running", "qosClass": qos},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn thresholds_parse_as_kubelet_flags_and_say_when_there_is_pressure() {
        let t = Thresholds::parse("memory.available<1Gi, nodefs.available<15%").unwrap();
        assert_eq!(t.memory, Threshold::Bytes(1 << 30));
        assert_eq!(t.nodefs, Threshold::Percent(15.0));
        assert!(Thresholds::parse("memory.free<1Gi").is_err());
        assert!(Thresholds::parse("memory.available<lots").is_err());
        let s = Signals {
            memory: 8 << 30,
            memory_available: 512 << 20,
            disk: 100,
            disk_available: 20,
        };
        assert!(t.memory_pressure(&s));
        assert!(!t.disk_pressure(&s));
        assert_eq!(t.allocatable_memory(8 << 30), 7 << 30);
    }

    #[test]
    fn pods_over_their_requests_and_of_lower_priority_go_first() {
        let pods = vec![
            pod("guaranteed", "Guaranteed", 0, Some("100Mi")),
            pod("within", "Burstable", 0, Some("500Mi")),
            pod("over", "Burstable", 0, Some("10Mi")),
            pod("besteffort-important", "BestEffort", 1000, None),
            pod("critical", "BestEffort", 2_000_001_000, None),
        ];
        let usage: HashMap<String, u64> = [
            ("guaranteed", 50u64 << 20),
            ("within", 100 << 20),
            ("over", 200 << 20),
            ("besteffort-important", 300 << 20),
            ("critical", 900 << 20),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t = Thresholds::default();
        let s = Signals::default();
        let (first, message) = victim(&pods, &usage, Pressure::Memory, &t, &s).unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("over"));
        assert!(
            message.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi"),
            "{message}"
        );
        let (first, _) = victim(&pods, &usage, Pressure::Disk, &t, &s).unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("besteffort-important"));
    }
}
