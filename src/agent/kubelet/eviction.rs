//! The kubelet's eviction manager (kube's `--eviction-hard`, `--eviction-soft` with
//! `--eviction-soft-grace-period` and `--eviction-max-pod-grace-period`): every 10 s the
//! node's memory and its data directory's filesystem are compared with the thresholds; under
//! pressure (a hard threshold crossed, or a soft one crossed for its whole grace period;
//! either kind shows in the node's conditions at once) the node reports MemoryPressure or
//! DiskPressure and one pod is evicted per round (at once for a hard threshold, within the
//! max pod grace period for a soft one),
//! in kube's order (pods using more than they requested first, then lower priority, then
//! the larger use above the request, BestEffort before Burstable before Guaranteed for
//! disk): its containers are stopped at once and it is marked Failed with reason Evicted.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// The eviction thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `memory.available` (hard).
    pub memory: Threshold,
    /// `nodefs.available` (hard; the filesystem of the data directory).
    pub nodefs: Threshold,
    /// The soft thresholds, each with the time it must hold before pods are evicted.
    pub soft_memory: Soft,
    pub soft_nodefs: Soft,
    /// `--eviction-max-pod-grace-period`: what a pod evicted for a soft threshold gets at
    /// most.
    pub max_pod_grace: Duration,
}

impl Default for Thresholds {
    /// The thresholds k3s gives its kubelet (memory.available<100Mi, nodefs.available<5%),
    /// no soft ones.
    fn default() -> Self {
        Thresholds {
            memory: Threshold::Bytes(100 << 20),
            nodefs: Threshold::Percent(5.0),
            soft_memory: Soft::default(),
            soft_nodefs: Soft::default(),
            max_pod_grace: Duration::ZERO,
        }
    }
}

/// One soft threshold and its grace period (kube requires both or neither).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Soft {
    pub threshold: Option<Threshold>,
    pub grace: Option<Duration>,
}

/// The signals krab observes; the others kube names are accepted and not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Signal {
    Memory,
    Nodefs,
    Other,
}

fn signal(name: &str) -> Result<Signal, String> {
    match name {
        "memory.available" => Ok(Signal::Memory),
        "nodefs.available" | "imagefs.available" => Ok(Signal::Nodefs),
        "nodefs.inodesFree" | "imagefs.inodesFree" | "pid.available" => Ok(Signal::Other),
        other => Err(format!("unknown eviction signal {other:?}")),
    }
}

/// `<signal><<quantity>` pairs, as `--eviction-hard` and `--eviction-soft` write them.
fn thresholds(spec: &str) -> Result<Vec<(Signal, Threshold)>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
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
        out.push((signal(name)?, threshold));
    }
    Ok(out)
}

impl Thresholds {
    /// Parses kube's `--eviction-hard` (`memory.available<100Mi,nodefs.available<10%`);
    /// signals not named keep their defaults.
    pub fn parse(spec: &str) -> Result<Thresholds, String> {
        let mut t = Thresholds::default();
        t.set_hard(spec)?;
        Ok(t)
    }

    /// `--eviction-hard`; signals not named keep what they had.
    pub fn set_hard(&mut self, spec: &str) -> Result<(), String> {
        for (sig, th) in thresholds(spec)? {
            match sig {
                Signal::Memory => self.memory = th,
                Signal::Nodefs => self.nodefs = th,
                Signal::Other => {}
            }
        }
        Ok(())
    }

    /// `--eviction-soft`; each needs its grace period (`set_soft_grace`), checked by
    /// `validate`.
    pub fn set_soft(&mut self, spec: &str) -> Result<(), String> {
        for (sig, th) in thresholds(spec)? {
            match sig {
                Signal::Memory => self.soft_memory.threshold = Some(th),
                Signal::Nodefs => self.soft_nodefs.threshold = Some(th),
                Signal::Other => {}
            }
        }
        Ok(())
    }

    /// `--eviction-soft-grace-period` (`memory.available=1m30s`).
    pub fn set_soft_grace(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not <signal>=<duration>"))?;
            let d = crate::resources::duration::parse_go(value)?;
            match signal(name)? {
                Signal::Memory => self.soft_memory.grace = Some(d),
                Signal::Nodefs => self.soft_nodefs.grace = Some(d),
                Signal::Other => {}
            }
        }
        Ok(())
    }

    /// `--eviction-max-pod-grace-period` (seconds).
    pub fn set_max_pod_grace(&mut self, value: &str) -> Result<(), String> {
        let secs: u64 = value
            .parse()
            .map_err(|_| format!("{value:?} is not a number of seconds"))?;
        self.max_pod_grace = Duration::from_secs(secs);
        Ok(())
    }

    /// kube's check: every soft threshold has a grace period, every grace period a threshold.
    pub fn validate(&self) -> Result<(), String> {
        for (name, soft) in [
            ("memory.available", self.soft_memory),
            ("nodefs.available", self.soft_nodefs),
        ] {
            match (soft.threshold, soft.grace) {
                (Some(_), None) => {
                    return Err(format!(
                        "grace period must be specified for the soft eviction threshold {name}"
                    ))
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "grace period specified for the soft eviction threshold {name}, which is not set"
                    ))
                }
                _ => {}
            }
        }
        Ok(())
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

/// What drives one eviction: the resource, the threshold crossed (for the pod's message),
/// and the most time the pod's containers get (zero: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trigger {
    pub pressure: Pressure,
    pub threshold: Threshold,
    pub max_grace: Duration,
}

/// Since when each soft threshold has been crossed (kube's thresholdsFirstObservedAt).
#[derive(Debug, Default)]
pub struct SoftClock {
    since: Mutex<HashMap<Pressure, Instant>>,
}

impl SoftClock {
    /// Records whether the threshold for `p` is crossed now; how long it has been, if it is.
    fn observe(&self, p: Pressure, crossed: bool, now: Instant) -> Option<Duration> {
        let mut since = self.since.lock().ok()?;
        if !crossed {
            since.remove(&p);
            return None;
        }
        Some(now.duration_since(*since.entry(p).or_insert(now)))
    }
}

/// Which resource the node is short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pressure {
    Memory,
    Disk,
}

impl Thresholds {
    fn memory_below(t: Threshold, s: &Signals) -> bool {
        s.memory > 0 && s.memory_available < t.bytes(s.memory)
    }

    fn disk_below(t: Threshold, s: &Signals) -> bool {
        s.disk > 0 && (s.disk_available as i64) < t.bytes(s.disk as i64)
    }

    /// MemoryPressure: a hard or soft memory threshold crossed (soft ones count at once).
    pub fn memory_pressure(&self, s: &Signals) -> bool {
        Self::memory_below(self.memory, s)
            || self
                .soft_memory
                .threshold
                .is_some_and(|t| Self::memory_below(t, s))
    }

    /// DiskPressure, the same way.
    pub fn disk_pressure(&self, s: &Signals) -> bool {
        Self::disk_below(self.nodefs, s)
            || self
                .soft_nodefs
                .threshold
                .is_some_and(|t| Self::disk_below(t, s))
    }

    /// What an eviction round acts on now: a hard threshold crossed (pods go at once), or a
    /// soft one crossed for its whole grace period (pods get at most the max pod grace
    /// period). `clock` remembers since when each soft threshold has been crossed.
    pub fn trigger(&self, s: &Signals, clock: &SoftClock, now: Instant) -> Option<Trigger> {
        let at_once = |pressure, threshold| Trigger {
            pressure,
            threshold,
            max_grace: Duration::ZERO,
        };
        let soft = [
            (
                Pressure::Memory,
                self.soft_memory,
                self.soft_memory
                    .threshold
                    .is_some_and(|t| Self::memory_below(t, s)),
            ),
            (
                Pressure::Disk,
                self.soft_nodefs,
                self.soft_nodefs
                    .threshold
                    .is_some_and(|t| Self::disk_below(t, s)),
            ),
        ];
        let held: Vec<(Pressure, Soft, Duration)> = soft
            .iter()
            .filter_map(|(p, soft, crossed)| Some((*p, *soft, clock.observe(*p, *crossed, now)?)))
            .collect();
        if Self::memory_below(self.memory, s) {
            return Some(at_once(Pressure::Memory, self.memory));
        }
        if Self::disk_below(self.nodefs, s) {
            return Some(at_once(Pressure::Disk, self.nodefs));
        }
        held.into_iter().find_map(|(pressure, soft, for_how_long)| {
            let (threshold, grace) = (soft.threshold?, soft.grace?);
            (for_how_long >= grace).then_some(Trigger {
                pressure,
                threshold,
                max_grace: self.max_pod_grace,
            })
        })
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
    threshold: Threshold,
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
                threshold.show(),
                quantity::format_bytes(signals.memory_available),
                quantity::format_bytes(used),
                quantity::format_bytes(memory_request(pod)),
            )
        }
        Pressure::Disk => format!(
            "The node was low on resource: ephemeral-storage. Threshold quantity: {}, available: {}.",
            threshold.show(),
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
        let (first, message) = victim(&pods, &usage, Pressure::Memory, t.memory, &s).unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("over"));
        assert!(
            message.starts_with("The node was low on resource: memory. Threshold quantity: 100Mi"),
            "{message}"
        );
        let (first, _) = victim(&pods, &usage, Pressure::Disk, t.nodefs, &s).unwrap();
        assert_eq!(first.metadata.name.as_deref(), Some("besteffort-important"));
    }

    #[test]
    fn soft_thresholds_show_at_once_and_evict_after_their_grace_period() {
        let mut t = Thresholds::default();
        t.set_soft("memory.available<2Gi").unwrap();
        assert_eq!(
            t.validate().unwrap_err(),
            "grace period must be specified for the soft eviction threshold memory.available"
        );
        t.set_soft_grace("memory.available=1m30s").unwrap();
        t.set_max_pod_grace("20").unwrap();
        t.validate().unwrap();
        let low = Signals {
            memory: 8 << 30,
            memory_available: 1 << 30,
            disk: 100,
            disk_available: 50,
        };
        assert!(t.memory_pressure(&low), "the condition shows at once");
        let clock = SoftClock::default();
        let start = Instant::now();
        assert_eq!(t.trigger(&low, &clock, start), None);
        assert_eq!(
            t.trigger(&low, &clock, start + Duration::from_secs(60)),
            None
        );
        let fired = t
            .trigger(&low, &clock, start + Duration::from_secs(91))
            .unwrap();
        assert_eq!(fired.pressure, Pressure::Memory);
        assert_eq!(fired.threshold, Threshold::Bytes(2 << 30));
        assert_eq!(fired.max_grace, Duration::from_secs(20));
        // Recovering resets the clock.
        let fine = Signals {
            memory_available: 4 << 30,
            ..low
        };
        assert_eq!(
            t.trigger(&fine, &clock, start + Duration::from_secs(92)),
            None
        );
        assert_eq!(
            t.trigger(&low, &clock, start + Duration::from_secs(93)),
            None
        );
        // A hard threshold acts at once, whatever the soft ones say.
        let very_low = Signals {
            memory_available: 50 << 20,
            ..low
        };
        let hard = t
            .trigger(&very_low, &clock, start + Duration::from_secs(94))
            .unwrap();
        assert_eq!(hard.max_grace, Duration::ZERO);
        assert_eq!(hard.threshold, Threshold::Bytes(100 << 20));
        let mut orphan = Thresholds::default();
        orphan.set_soft_grace("nodefs.available=1m").unwrap();
        assert!(orphan.validate().is_err());
    }
}
