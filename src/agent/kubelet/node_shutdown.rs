//! Graceful node shutdown, as the kubelet's: with `shutdown-grace-period` set, the kubelet
//! holds a logind delay lock on shutdown; when logind announces one, the node turns NotReady
//! ("node is shutting down"), new pods are rejected, and the running pods are ended with
//! SIGTERM in two rounds, ordinary pods first and critical ones (system-cluster-critical and
//! up) within the last `shutdown-grace-period-critical-pods`, each pod marked Failed with
//! reason Terminated. Then the lock is released and the machine goes down. A cancelled
//! shutdown takes the lock again.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::logind::{self, Logind};
use super::termination::Termination;
use super::Kubelet;

/// The pod status reason and message of pods ended by a shutdown (kube's).
pub const REASON: &str = "Terminated";
pub const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// What a pod that arrives during a shutdown is told (kube's admission result).
pub const REJECTED_REASON: &str = "NodeShutdown";
pub const REJECTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
/// The Ready condition's message while the node shuts down.
pub const NOT_READY: &str = "node is shutting down";
/// `scheduling.SystemCriticalPriority`.
const SYSTEM_CRITICAL: i32 = 2_000_000_000;
/// Where the inhibit delay drop-in goes.
const LOGIND_CONF_DIR: &str = "/etc/systemd/logind.conf.d";

/// kube's `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods` (zero: the node
/// shuts down at once, the kubelet's default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShutdownPolicy {
    pub grace: Duration,
    pub critical: Duration,
}

/// Pods of at least `priority` (and below the next group's) get `grace`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Group {
    pub priority: i32,
    pub grace: Duration,
}

impl ShutdownPolicy {
    /// Sets one of the two settings by its `--kubelet-arg` name; false when `name` is not one.
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, String> {
        let d = || crate::resources::duration::parse_go(value);
        match name {
            "shutdown-grace-period" => self.grace = d()?,
            "shutdown-grace-period-critical-pods" => self.critical = d()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// kube's check of the pair.
    pub fn validate(&self) -> Result<(), String> {
        if self.critical > self.grace {
            return Err(format!(
                "shutdown-grace-period-critical-pods ({}s) must be <= shutdown-grace-period ({}s)",
                self.critical.as_secs(),
                self.grace.as_secs()
            ));
        }
        Ok(())
    }

    /// The rounds, lowest priority first; none when graceful shutdown is off.
    pub fn groups(&self) -> Vec<Group> {
        if self.grace.is_zero() || self.critical > self.grace {
            return Vec::new();
        }
        vec![
            Group {
                priority: 0,
                grace: self.grace - self.critical,
            },
            Group {
                priority: SYSTEM_CRITICAL,
                grace: self.critical,
            },
        ]
    }
}

/// The round a pod of `priority` is ended in: the highest group whose priority it reaches
/// (below the lowest: the lowest).
fn group_of(groups: &[Group], priority: i32) -> usize {
    groups
        .iter()
        .rposition(|g| g.priority <= priority)
        .unwrap_or(0)
}

/// Whether the node is shutting down now; read by pod admission and the node's Ready
/// condition.
#[derive(Debug, Default)]
pub struct ShutdownState {
    now: AtomicBool,
    changed: Notify,
}

impl ShutdownState {
    pub fn shutting_down(&self) -> bool {
        self.now.load(Ordering::SeqCst)
    }

    fn set(&self, now: bool) {
        self.now.store(now, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Resolves when the state changes (for the one task that reports it: the heartbeat).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Logind(#[from] logind::Error),
    #[error(
        "logind's InhibitDelayMaxSec is {}s, less than shutdown-grace-period ({}s), and could not be raised",
        current.as_secs(), requested.as_secs()
    )]
    DelayTooShort {
        current: Duration,
        requested: Duration,
    },
    #[error("logind's PrepareForShutdown signals stopped")]
    SignalsEnded,
}

/// Watches logind for shutdowns until `stop`; idle when graceful shutdown is off. Losing
/// logind (or never finding it) is logged and retried: the node then shuts down at once.
/// `wake` reaches a pod's worker by uid.
pub async fn run(
    k: Arc<Kubelet>,
    pods: Store<Pod>,
    wake: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let groups = k.shutdown_policy.groups();
    if groups.is_empty() {
        return Ok(());
    }
    let mut delay = Duration::from_secs(1);
    let mut warned = false;
    loop {
        match watch(&k, &pods, &wake, &groups, &stop).await {
            Ok(()) => return Ok(()),
            Err(e) if !warned => {
                tracing::warn!(error = %e, "graceful node shutdown is not available; retrying");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "graceful node shutdown still not available"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// One connection to logind: take the lock, then act on its signals.
async fn watch(
    k: &Arc<Kubelet>,
    pods: &Store<Pod>,
    wake: &mpsc::UnboundedSender<String>,
    groups: &[Group],
    stop: &CancellationToken,
) -> Result<(), Error> {
    let logind = Logind::connect().await?;
    let requested: Duration = groups.iter().map(|g| g.grace).sum();
    let current = logind.inhibit_delay().await?;
    if requested > current {
        let path = logind::override_inhibit_delay(LOGIND_CONF_DIR.as_ref(), requested)?;
        tracing::info!(path = %path.display(), "raised logind's InhibitDelayMaxSec to the shutdown grace period");
        logind.reload_config().await?;
        let updated = logind.inhibit_delay().await?;
        if requested > updated {
            return Err(Error::DelayTooShort {
                current: updated,
                requested,
            });
        }
    }
    let mut signals = Box::pin(logind.shutdown_signals().await?);
    let mut lock = Some(logind.inhibit_shutdown().await?);
    tracing::info!(grace = ?requested, "watching for node shutdown");
    loop {
        let start = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            s = signals.next() => s.ok_or(Error::SignalsEnded)?,
        };
        let node = &k.node_name;
        if start {
            tracing::warn!(node = %node, "the node is shutting down; ending its pods");
            k.events
                .node(
                    node,
                    false,
                    "Shutdown",
                    "Shutdown manager detected shutdown event",
                )
                .await;
            k.shutdown_state.set(true);
            end_pods(k, pods, wake, groups).await;
            // Releasing the lock lets the shutdown go on.
            lock = None;
            tracing::info!(node = %node, "pods ended; the node may shut down");
        } else {
            tracing::info!(node = %node, "the node shutdown was cancelled");
            k.events
                .node(
                    node,
                    false,
                    "Shutdown",
                    "Shutdown manager detected shutdown cancellation",
                )
                .await;
            k.shutdown_state.set(false);
            if lock.is_none() {
                lock = Some(logind.inhibit_shutdown().await?);
            }
        }
    }
}

/// Ends the active pods round by round, each round bounded by its grace period.
async fn end_pods(
    k: &Kubelet,
    pods: &Store<Pod>,
    wake: &mpsc::UnboundedSender<String>,
    groups: &[Group],
) {
    let active: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            // Pods being deleted are already ended by their workers.
            !matches!(phase, Some("Succeeded" | "Failed"))
                && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    for (i, group) in groups.iter().enumerate() {
        let members: Vec<&Arc<Pod>> = active
            .iter()
            .filter(|p| {
                group_of(
                    groups,
                    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                ) == i
            })
            .collect();
        if members.is_empty() {
            continue;
        }
        let mut done = Vec::new();
        for pod in members {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            let own = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .map(|s| Duration::from_secs(s.max(0) as u64));
            let grace = own.map_or(group.grace, |g| g.min(group.grace));
            let (tx, rx) = oneshot::channel();
            k.terminations.request(
                &uid,
                Termination {
                    reason: REASON,
                    message: MESSAGE.to_string(),
                    grace,
                    done: Some(tx),
                },
            );
            let _ = wake.send(uid);
            done.push(rx);
        }
        let all = futures::future::join_all(done);
        if tokio::time::timeout(group.grace, all).await.is_err() {
            tracing::warn!(priority = group.priority, grace = ?group.grace, "pods not ended within their shutdown grace period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_splits_into_ordinary_and_critical_rounds() {
        let mut p = ShutdownPolicy::default();
        assert!(p.groups().is_empty(), "off by default");
        assert_eq!(p.set("shutdown-grace-period", "30s"), Ok(true));
        assert_eq!(
            p.set("shutdown-grace-period-critical-pods", "10s"),
            Ok(true)
        );
        assert_eq!(p.set("eviction-hard", "x"), Ok(false));
        p.validate().unwrap();
        let groups = p.groups();
        assert_eq!(
            groups,
            vec![
                Group {
                    priority: 0,
                    grace: Duration::from_secs(20)
                },
                Group {
                    priority: SYSTEM_CRITICAL,
                    grace: Duration::from_secs(10)
                },
            ]
        );
        assert_eq!(group_of(&groups, -5), 0);
        assert_eq!(group_of(&groups, 1000), 0);
        assert_eq!(group_of(&groups, SYSTEM_CRITICAL), 1);
        assert_eq!(group_of(&groups, 2_000_001_000), 1);
        p.set("shutdown-grace-period-critical-pods", "1m").unwrap();
        assert_eq!(
            p.validate().unwrap_err(),
            "shutdown-grace-period-critical-pods (60s) must be <= shutdown-grace-period (30s)"
        );
        assert!(p.set("shutdown-grace-period", "soon").is_err());
    }
}
