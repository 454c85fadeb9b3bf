//! The CronJob controller: at each time the schedule names (in `spec.timeZone`, UTC when
//! unset), a Job from the template named `<cronjob>-<minutes since the epoch>`, unless the
//! CronJob is suspended, the time is older than `startingDeadlineSeconds`, or an earlier Job
//! still runs and concurrencyPolicy says Forbid (wait) or Replace (it is deleted first).
//! After a downtime only the most recent missed time runs. Finished Jobs beyond the
//! successful/failed history limits are deleted; the status lists active Jobs and the last
//! schedule and success times.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};
use crate::resources::cron_schedule::{time_zone, Schedule};

/// The scheduled time a Job was made for (RFC 3339 in the CronJob's zone).
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    Controller::new(
        Api::<CronJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Job>::all(client), watcher::Config::default())
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(cj: Arc<CronJob>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(cronjob = %cj.name_any(), namespace = ?cj.namespace(), error = %e, "reconcile failed");
    Action::requeue(retry_after(e))
}

/// Finished, and how: Some(true) complete, Some(false) failed, None still running.
fn outcome(job: &Job) -> Option<bool> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let has = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if has("Complete") {
        Some(true)
    } else if has("Failed") {
        Some(false)
    } else {
        None
    }
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some(Job::api_version(&()).to_string()),
        kind: Some(Job::kind(&()).to_string()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// The name of the Job for a scheduled time (kube's: minutes since the epoch).
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// What the schedule asks for now: the most recent due time after `since` (if any) and
/// how many were due; then when to look again.
fn due(
    schedule: &Schedule,
    tz: &jiff::tz::TimeZone,
    since: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize, Option<Timestamp>) {
    let times = schedule.times_between(since, now, tz, 101);
    let next = schedule
        .next_after(now.to_zoned(tz.clone()))
        .map(|z| z.timestamp());
    (times.last().copied(), times.len(), next)
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "CronJob", namespace = ?cj.namespace(), name = %cj.name_any()))]
async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cj.namespace().ok_or(Error::Missing("namespace"))?;
    let name = cj.name_any();
    let uid = cj.uid().ok_or(Error::Missing("uid"))?;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = cj.spec.clone().ok_or(Error::Missing("spec"))?;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let cj_api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
    let events = ctx.events.for_component("cronjob-controller");
    let reference = crate::client::events::reference(cj.as_ref());
    let mut jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));

    // History: finished Jobs beyond their limits go, oldest first.
    let old_status = cj.status.clone().unwrap_or_default();
    let mut last_success = old_status.last_successful_time.clone();
    for (successful, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Job> = jobs
            .iter()
            .filter(|j| outcome(j) == Some(successful))
            .collect();
        if successful {
            let newest = done
                .iter()
                .filter_map(|j| j.status.as_ref()?.completion_time.clone())
                .max_by_key(|t| t.0);
            if newest.as_ref().map(|t| t.0) > last_success.as_ref().map(|t| t.0) {
                last_success = newest;
            }
        }
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        for j in done.iter().take(excess) {
            match jobs_api
                .delete(&j.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {
                    tracing::info!(cronjob = %name, job = %j.name_any(), "deleted a finished job beyond the history limit");
                    events
                        .normal(
                            &reference,
                            "SuccessfulDelete",
                            &format!("Deleted job {}", j.name_any()),
                        )
                        .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let active: Vec<String> = jobs
        .iter()
        .filter(|j| outcome(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .map(|j| j.name_any())
        .collect();
    let mut replaced: Vec<String> = Vec::new();

    let mut last_schedule = old_status.last_schedule_time.clone();
    let mut requeue = None;
    let schedule = spec.schedule.parse::<Schedule>();
    let tz = time_zone(spec.time_zone.as_deref());
    match (&schedule, &tz) {
        (Err(e), _) => {
            tracing::warn!(cronjob = %name, schedule = %spec.schedule, error = %e, "unparseable schedule; not scheduling")
        }
        (_, Err(e)) => {
            tracing::warn!(cronjob = %name, time_zone = ?spec.time_zone, error = %e, "unknown time zone; not scheduling")
        }
        (Ok(schedule), Ok(tz)) if !spec.suspend.unwrap_or(false) => {
            let now = Timestamp::now();
            let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
            let mut since = last_schedule.as_ref().map_or(created, |t| t.0);
            if let Some(d) = spec.starting_deadline_seconds {
                since = since.max(now - jiff::SignedDuration::from_secs(d));
            }
            let (scheduled, count, next) = due(schedule, tz, since, now);
            if count > 100 {
                tracing::warn!(cronjob = %name, "more than 100 missed start times; starting the most recent only");
            }
            requeue = next.map(|n| {
                let secs = n.duration_since(now).as_secs().max(0) as u64;
                Duration::from_secs(secs) + Duration::from_millis(500)
            });
            if let Some(at) = scheduled {
                let job = job_name(&name, at);
                let exists = jobs
                    .iter()
                    .any(|j| j.metadata.name.as_deref() == Some(job.as_str()));
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if exists {
                    last_schedule = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
                } else if !active.is_empty() && policy == "Forbid" {
                    // Runs when the active Job ends (its change brings us back), if still due.
                    tracing::info!(cronjob = %name, "an earlier job still runs and concurrencyPolicy is Forbid; waiting");
                } else {
                    if policy == "Replace" {
                        for j in &active {
                            match jobs_api.delete(j, &DeleteParams::background()).await {
                                Ok(_) => {
                                    tracing::info!(cronjob = %name, job = %j, "replaced a running job")
                                }
                                Err(kube::Error::Api(e)) if e.code == 404 => {}
                                Err(e) => return Err(e.into()),
                            }
                            replaced.push(j.clone());
                        }
                    }
                    let template = spec.job_template.clone();
                    let meta = template.metadata.unwrap_or_default();
                    let mut annotations = meta.annotations.unwrap_or_default();
                    annotations.insert(
                        SCHEDULED_AT.into(),
                        at.to_zoned(tz.clone())
                            .strftime("%Y-%m-%dT%H:%M:%S%:z")
                            .to_string(),
                    );
                    let new = Job {
                        metadata: ObjectMeta {
                            name: Some(job.clone()),
                            labels: meta.labels,
                            annotations: Some(annotations),
                            owner_references: Some(vec![OwnerReference {
                                api_version: CronJob::api_version(&()).to_string(),
                                kind: CronJob::kind(&()).to_string(),
                                name: name.clone(),
                                uid: uid.clone(),
                                controller: Some(true),
                                block_owner_deletion: Some(true),
                            }]),
                            ..Default::default()
                        },
                        spec: template.spec,
                        status: None,
                    };
                    match jobs_api.create(&PostParams::default(), &new).await {
                        Ok(created) => {
                            tracing::info!(cronjob = %name, job = %job, "created a scheduled job");
                            events
                                .normal(
                                    &reference,
                                    "SuccessfulCreate",
                                    &format!("Created job {job}"),
                                )
                                .await;
                            jobs.push(created);
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                    last_schedule = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
                }
            }
        }
        _ => {}
    }
    let mut refs: Vec<ObjectReference> = jobs
        .iter()
        .filter(|j| outcome(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .filter(|j| !replaced.contains(&j.name_any()))
        .map(job_ref)
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    // Times are only ever set (a null in a merge patch would delete one that a view older
    // than our last write did not show yet); the active list is replaced whole.
    let mut fields = serde_json::Map::new();
    fields.insert(
        "active".into(),
        if refs.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&refs).unwrap_or_default()
        },
    );
    if let Some(t) = &last_schedule {
        fields.insert("lastScheduleTime".into(), serde_json::json!(t));
    }
    if let Some(t) = &last_success {
        fields.insert("lastSuccessfulTime".into(), serde_json::json!(t));
    }
    let mut old_active = old_status.active.clone().unwrap_or_default();
    old_active.sort_by(|a, b| a.name.cmp(&b.name));
    let unchanged = old_active == refs
        && old_status.last_schedule_time == last_schedule
        && old_status.last_successful_time == last_success;
    let status = serde_json::json!({"status": fields});
    if !unchanged {
        cj_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d.min(Duration::from_secs(3600))),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_count_minutes_since_the_epoch() {
        let t: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        assert_eq!(
            job_name("backup", t),
            format!("backup-{}", t.as_second() / 60)
        );
    }

    #[test]
    fn only_the_most_recent_missed_time_is_due() {
        let s: Schedule = "*/5 * * * *".parse().unwrap();
        let tz = jiff::tz::TimeZone::UTC;
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:17:30Z".parse().unwrap();
        let (at, count, next) = due(&s, &tz, since, now);
        assert_eq!(at, Some("2026-01-01T00:15:00Z".parse().unwrap()));
        assert_eq!(count, 3);
        assert_eq!(next, Some("2026-01-01T00:20:00Z".parse().unwrap()));
        let (at, count, _) = due(&s, &tz, now, now);
        assert_eq!((at, count), (None, 0));
    }
}
