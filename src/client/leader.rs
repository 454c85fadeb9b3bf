//! Leader election through a coordination.k8s.io Lease, as kube's controller manager and
//! scheduler do it: the holder renews the Lease every `renew`; another candidate takes it
//! over once it has not been renewed for `duration`. Writes are guarded by resourceVersion,
//! so two candidates never both win.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (the server's node name).
    pub identity: String,
    /// How long a lease holds without renewal (kube: 15 s).
    pub duration: Duration,
    /// How often the holder renews and candidates retry (kube: 2 s).
    pub renew: Duration,
}

pub struct LeaderElection {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElection {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        LeaderElection {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// One attempt to take or keep the lease; true when this candidate holds it.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let duration_secs = self.cfg.duration.as_secs() as i32;
        let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(mine(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let held_by_me = spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                age.as_secs() >= i64::from(d)
            }
            _ => true,
        };
        if !held_by_me
            && !expired
            && spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
        {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        let acquired = if held_by_me { spec.acquire_time } else { None };
        lease.spec = Some(mine(transitions, acquired));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `lead` while this candidate holds the lease: it gets a token cancelled when the
    /// lease is lost (or on shutdown), and is started again on re-acquiring.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, lead: F)
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            // Wait to become the leader.
            loop {
                match self.try_acquire().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, lease = %self.cfg.name, "lease not acquired")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.cfg.renew) => {}
                }
            }
            tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
            let term = shutdown.child_token();
            let renewing = async {
                let mut last_ok = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = term.cancelled() => return,
                        _ = tokio::time::sleep(self.cfg.renew) => {}
                    }
                    match self.try_acquire().await {
                        Ok(true) => last_ok = tokio::time::Instant::now(),
                        Ok(false) => break,
                        // A transient failure keeps leadership until the lease would lapse.
                        Err(e) if last_ok.elapsed() < self.cfg.duration - self.cfg.renew => {
                            tracing::warn!(error = %e, "lease renewal failed; retrying");
                        }
                        Err(_) => break,
                    }
                }
                tracing::warn!(lease = %self.cfg.name, "lost leadership");
                term.cancel();
            };
            tokio::join!(lead(term.clone()), renewing);
            if shutdown.is_cancelled() {
                return;
            }
        }
    }
}
