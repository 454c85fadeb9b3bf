//! TTL after finished: a Job with `ttlSecondsAfterFinished` is deleted (with its pods, in
//! the foreground) that long after it completed or failed.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    Controller::new(
        Api::<Job>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(job: Arc<Job>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), error = %e, "ttl-after-finished failed");
    Action::requeue(retry_after(e))
}

/// When the Job finished: its Complete or Failed condition's transition.
pub fn finished_at(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// How long until a finished Job with a TTL is due (zero: now); None when it has none.
fn due_in(job: &Job, now: Timestamp) -> Option<Duration> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let done = finished_at(job)?;
    let left = i64::from(ttl) - now.duration_since(done).as_secs();
    Some(Duration::from_secs(left.max(0) as u64))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(wait) = due_in(&job, Timestamp::now()) else {
        return Ok(Action::await_change());
    };
    if !wait.is_zero() {
        return Ok(Action::requeue(wait));
    }
    let ns = job.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .delete(&job.name_any(), &DeleteParams::foreground())
        .await
    {
        Ok(_) => {
            tracing::info!(job = %job.name_any(), namespace = %ns, "deleted a finished job after its TTL")
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_is_due_ttl_seconds_after_its_condition() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "spec": {"ttlSecondsAfterFinished": 60, "template": {}},
            "status": {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            due_in(&job, at("2026-01-01T00:00:20Z")),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            due_in(&job, at("2026-01-01T00:05:00Z")),
            Some(Duration::ZERO)
        );
        let mut running = job.clone();
        running.status = None;
        assert_eq!(due_in(&running, at("2026-01-01T00:05:00Z")), None);
    }
}
