//! Liveness, readiness and startup probes as the kubelet keeps them: per container and kind,
//! the first run initialDelaySeconds after the container started, then one run per
//! periodSeconds, results counted against successThreshold and failureThreshold. Liveness
//! and readiness wait for the startup probe; a failed liveness or startup probe asks for
//! the container to be restarted.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};

use super::actions::Action;
use super::Kubelet;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => c.startup_probe.as_ref(),
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
        }
    }
}

#[derive(Debug)]
struct Tracker {
    container_id: String,
    next_at: Instant,
    successes: i32,
    failures: i32,
    /// The probe's standing verdict (None until it has one).
    passed: Option<bool>,
}

/// A running container the probes look at.
pub struct Running<'a> {
    pub container: &'a Container,
    pub id: &'a str,
    /// Nanoseconds since the epoch.
    pub started_at: i64,
}

/// A container a probe wants restarted.
#[derive(Debug)]
pub struct Restart {
    pub name: String,
    pub id: String,
    pub message: String,
    /// The probe's own terminationGracePeriodSeconds, when it sets one.
    pub grace: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Verdict {
    /// Readiness by container, for containers with a readiness probe.
    pub ready: BTreeMap<String, bool>,
    /// Whether the startup probe passed, for containers with one.
    pub started: BTreeMap<String, bool>,
    pub restart: Vec<Restart>,
    /// When the next probe is due.
    pub next: Option<Duration>,
}

/// A pod's probe state.
#[derive(Default)]
pub struct Probes {
    trackers: HashMap<(String, Kind), Tracker>,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> i32 {
    v.unwrap_or(default).max(min)
}

/// When the container started, on the monotonic clock.
fn start_instant(started_at_ns: i64, now: Instant) -> Instant {
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let ago = Duration::from_nanos(wall.saturating_sub(started_at_ns).max(0) as u64);
    now.checked_sub(ago).unwrap_or(now)
}

impl Probes {
    /// Runs the probes that are due for `running` (of pod `pod` at `pod_ip`) and returns
    /// what they say now.
    pub async fn run(
        &mut self,
        k: &Kubelet,
        pod: &Pod,
        running: &[Running<'_>],
        pod_ip: &str,
    ) -> Verdict {
        let now = Instant::now();
        // Forget containers that are gone or were replaced.
        self.trackers.retain(|(name, _), t| {
            running
                .iter()
                .any(|r| r.container.name == *name && r.id == t.container_id)
        });
        let mut due = Vec::new();
        for r in running {
            let c = r.container;
            let started = match c.startup_probe {
                None => true,
                Some(_) => self.passed(&c.name, Kind::Startup) == Some(true),
            };
            let kinds: &[Kind] = if started {
                &[Kind::Liveness, Kind::Readiness]
            } else {
                &[Kind::Startup]
            };
            for &kind in kinds {
                let Some(probe) = kind.of(c) else { continue };
                let t = self
                    .trackers
                    .entry((c.name.clone(), kind))
                    .or_insert_with(|| Tracker {
                        container_id: r.id.to_string(),
                        next_at: start_instant(r.started_at, now)
                            + Duration::from_secs(secs(probe.initial_delay_seconds, 0, 0) as u64),
                        successes: 0,
                        failures: 0,
                        passed: None,
                    });
                if t.next_at <= now {
                    t.next_at = now + Duration::from_secs(secs(probe.period_seconds, 10, 1) as u64);
                    due.push((c, r.id, kind, probe));
                }
            }
        }
        let results =
            futures::future::join_all(due.iter().map(|(c, id, kind, probe)| async move {
                let timeout = Duration::from_secs(secs(probe.timeout_seconds, 1, 1) as u64);
                let result = match Action::of_probe(c, probe) {
                    Ok(action) => action.run(&k.cri, id, pod_ip, timeout).await,
                    Err(e) => Err(e),
                };
                (*kind, result)
            }))
            .await;

        let mut verdict = Verdict::default();
        for ((c, id, kind, probe), (_, result)) in due.iter().zip(results) {
            let Some(t) = self.trackers.get_mut(&(c.name.clone(), *kind)) else {
                continue;
            };
            match result {
                Ok(_) => {
                    t.failures = 0;
                    t.successes += 1;
                    // Liveness and startup need one success; readiness successThreshold.
                    let needed = match kind {
                        Kind::Readiness => secs(probe.success_threshold, 1, 1),
                        _ => 1,
                    };
                    if t.successes >= needed {
                        t.passed = Some(true);
                    }
                }
                Err(message) => {
                    t.successes = 0;
                    t.failures += 1;
                    k.events
                        .pod(
                            pod,
                            Some(&c.name),
                            true,
                            "Unhealthy",
                            &format!("{} probe failed: {message}", kind.word()),
                        )
                        .await;
                    if t.failures >= secs(probe.failure_threshold, 3, 1) {
                        t.passed = Some(false);
                        if *kind != Kind::Readiness {
                            t.failures = 0;
                            verdict.restart.push(Restart {
                                name: c.name.clone(),
                                id: id.to_string(),
                                message: format!(
                                    "Container {} failed {} probe, will be restarted",
                                    c.name,
                                    kind.word().to_lowercase()
                                ),
                                grace: probe.termination_grace_period_seconds,
                            });
                        }
                    }
                }
            }
        }
        for r in running {
            let c = r.container;
            if c.startup_probe.is_some() {
                let started = self.passed(&c.name, Kind::Startup) == Some(true);
                verdict.started.insert(c.name.clone(), started);
            }
            if c.readiness_probe.is_some() {
                let ready = self.passed(&c.name, Kind::Readiness) == Some(true);
                verdict.ready.insert(c.name.clone(), ready);
            }
        }
        verdict.next = self
            .trackers
            .values()
            .map(|t| t.next_at.saturating_duration_since(Instant::now()))
            .min();
        verdict
    }

    fn passed(&self, name: &str, kind: Kind) -> Option<bool> {
        self.trackers
            .get(&(name.to_string(), kind))
            .and_then(|t| t.passed)
    }
}
