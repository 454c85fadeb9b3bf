//! The Job controller: runs pods of the template until `completions` succeed (NonIndexed:
//! any `completions` successes; Indexed: one success per index 0..completions, each pod
//! knowing its index), at most `parallelism` at a time, replacing failed ones after a backoff
//! (10 s doubling to 6 min) until `backoffLimit` failures, `activeDeadlineSeconds` or a
//! podFailurePolicy rule fails the Job; `suspend` removes its pods until resumed. Finished
//! pods are counted as kube counts them: each pod carries the `batch.kubernetes.io/job-tracking`
//! finalizer, a finished pod is first recorded in `status.uncountedTerminatedPods`, then
//! released, then moved into the counters, so no pod is counted twice or lost to pod GC.
//! Conditions: SuccessCriteriaMet + Complete, FailureTarget + Failed, Suspended.
mod indexes;
mod policy;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use self::policy::FailureAction;
use super::replicaset::{owned_by, selector_query};
use super::{retry_after, Context, Error};

/// Keeps a finished pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// An Indexed Job's pod's index (annotation and label).
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    let jobs = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(crate::controllers::observe(health.clone()));
    tokio::join!(jobs, release_orphans(ctx, stop));
}

fn error_policy(job: Arc<Job>, e: &Error, _: Arc<Context>) -> Action {
    if matches!(e, Error::Api(kube::Error::Api(s)) if s.code == 409) {
        // Acted on a view the Job's own last write made stale: again, at once.
        tracing::debug!(job = %job.name_any(), namespace = ?job.namespace(), "job changed meanwhile; retrying");
    } else {
        tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), error = %e, "reconcile failed");
    }
    Action::requeue(retry_after(e))
}

fn condition_true(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Sets a condition (its transition time changes only when its status does).
fn set_condition(status: &mut JobStatus, type_: &str, value: bool, reason: &str, message: &str) {
    let now = Time(Timestamp::now());
    let value = if value { "True" } else { "False" };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(now.clone());
            }
            c.status = value.into();
            c.reason = Some(reason.into());
            c.message = Some(message.into());
            c.last_probe_time = Some(now);
        }
        None => conditions.push(JobCondition {
            type_: type_.into(),
            status: value.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now),
        }),
    }
}

fn has_finalizer(p: &Pod) -> bool {
    p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), Some("Succeeded" | "Failed"))
}

fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn index_of(p: &Pod) -> Option<i32> {
    p.annotations()
        .get(INDEX_KEY)
        .or_else(|| p.labels().get(INDEX_KEY))
        .and_then(|i| i.parse().ok())
}

/// Removes the tracking finalizer (the pod can then go; a finished one counts no more).
async fn release(api: &Api<Pod>, p: &Pod) -> Result<(), Error> {
    if !has_finalizer(p) {
        return Ok(());
    }
    let rest: Vec<&String> = p
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": rest}});
    super::unless_missing(
        api.patch(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await,
    )?;
    Ok(())
}

/// Deletes a pod the Job no longer wants, releasing it first so it is not counted.
async fn remove(api: &Api<Pod>, p: &Pod) -> Result<(), Error> {
    release(api, p).await?;
    super::unless_missing(api.delete(&p.name_any(), &DeleteParams::default()).await)?;
    Ok(())
}

/// A new pod of the Job (for `index` in an Indexed Job).
fn new_pod(job: &Job, owner: &OwnerReference, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(i) = index {
        labels.insert(INDEX_KEY.into(), i.to_string());
        annotations.insert(INDEX_KEY.into(), i.to_string());
        generate_name = format!("{name}-{i}-");
        // Each index has a stable hostname, and every container its index in the env.
        spec.hostname = Some(format!("{name}-{i}"));
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                }),
                ..Default::default()
            }),
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == env.name) {
                vars.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner.clone()]),
            finalizers: Some(vec![TRACKING_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "Job", namespace = ?job.namespace(), name = %job.name_any()))]
async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = job.namespace().ok_or(Error::Missing("namespace"))?;
    let name = job.name_any();
    let uid = job.uid().ok_or(Error::Missing("uid"))?;
    let spec = job.spec.clone().ok_or(Error::Missing("spec"))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let events = ctx.events.for_component("job-controller");
    let reference = crate::client::events::reference(job.as_ref());
    let selector = spec
        .selector
        .as_ref()
        .map(selector_query)
        .unwrap_or_default();
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| owned_by(p, &uid))
        .collect();
    let old_status = job.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let finished = condition_true(&status, "Complete") || condition_true(&status, "Failed");
    if job.metadata.deletion_timestamp.is_some() || finished {
        // Nothing more is counted: every pod is let go, running ones stopped.
        for p in &pods {
            if finished && is_active(p) {
                remove(&pods_api, p).await?;
            } else {
                release(&pods_api, p).await?;
            }
        }
        return Ok(Action::await_change());
    }
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let now = Timestamp::now();

    // 1. Finished pods are recorded as uncounted first (with the resourceVersion we read,
    //    so a stale view cannot record twice) ...
    let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut recorded: HashSet<String> = uncounted
        .succeeded
        .iter()
        .chain(uncounted.failed.iter())
        .flatten()
        .cloned()
        .collect();
    let mut fail_job: Option<String> = None;
    let mut ignored: Vec<&Pod> = Vec::new();
    let mut failed_indexes = status
        .failed_indexes
        .as_deref()
        .map(indexes::parse)
        .unwrap_or_default();
    let mut newly_recorded = false;
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let pod_uid = p.uid().unwrap_or_default();
        if recorded.contains(&pod_uid) {
            continue;
        }
        let succeeded = phase(p) == Some("Succeeded");
        let failed =
            phase(p) == Some("Failed") || (p.metadata.deletion_timestamp.is_some() && !succeeded);
        if succeeded {
            uncounted
                .succeeded
                .get_or_insert_with(Vec::new)
                .push(pod_uid.clone());
        } else if failed {
            match policy::evaluate(spec.pod_failure_policy.as_ref(), p) {
                FailureAction::Ignore => {
                    ignored.push(p);
                    continue;
                }
                FailureAction::FailJob(message) => {
                    fail_job.get_or_insert(message);
                }
                FailureAction::FailIndex => {
                    if let Some(i) = index_of(p) {
                        failed_indexes.insert(i);
                    }
                }
                FailureAction::Count => {}
            }
            uncounted
                .failed
                .get_or_insert_with(Vec::new)
                .push(pod_uid.clone());
        } else {
            continue;
        }
        recorded.insert(pod_uid);
        newly_recorded = true;
    }
    if newly_recorded {
        // What the failures decide is recorded with them (the pods are not looked at again).
        if let Some(message) = &fail_job {
            set_condition(
                &mut status,
                "FailureTarget",
                true,
                "PodFailurePolicy",
                message,
            );
        }
        if spec.backoff_limit_per_index.is_some() {
            status.failed_indexes = Some(indexes::format(&failed_indexes).unwrap_or_default());
        }
        status.uncounted_terminated_pods = Some(uncounted.clone());
        write_status(&jobs_api, &job, &status).await?;
        // The next reconcile (for this write) continues from the recorded state.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    for p in ignored {
        release(&pods_api, p).await?;
    }
    // 2. ... then released, 3. then counted.
    if !recorded.is_empty() {
        let mut completed = status
            .completed_indexes
            .as_deref()
            .map(indexes::parse)
            .unwrap_or_default();
        for p in pods.iter() {
            if recorded.contains(&p.uid().unwrap_or_default()) {
                release(&pods_api, p).await?;
            }
        }
        let by_uid: BTreeMap<String, &Pod> =
            pods.iter().filter_map(|p| Some((p.uid()?, p))).collect();
        let total = spec.completions.unwrap_or(i32::MAX);
        for u in uncounted.succeeded.iter().flatten() {
            match by_uid.get(u).and_then(|p| index_of(p)) {
                Some(i) if indexed => {
                    if (0..total).contains(&i) {
                        completed.insert(i);
                    }
                }
                _ if indexed => {}
                _ => status.succeeded = Some(status.succeeded.unwrap_or(0) + 1),
            }
        }
        status.failed = Some(
            status.failed.unwrap_or(0) + uncounted.failed.as_ref().map_or(0, |f| f.len() as i32),
        );
        if indexed {
            status.succeeded = Some(completed.len() as i32);
            status.completed_indexes = indexes::format(&completed);
        }
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    }
    if spec.backoff_limit_per_index.is_some() {
        status.failed_indexes = Some(indexes::format(&failed_indexes).unwrap_or_default());
    }

    let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let suspended = spec.suspend.unwrap_or(false);
    if !suspended && status.start_time.is_none() {
        status.start_time = Some(Time(now));
    }
    let succeeded = status.succeeded.unwrap_or(0);
    let failed = status.failed.unwrap_or(0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let completed = status
        .completed_indexes
        .as_deref()
        .map(indexes::parse)
        .unwrap_or_default();

    // The Job fails or completes.
    let deadline = spec
        .active_deadline_seconds
        .zip(status.start_time.as_ref())
        .map(|(d, s)| {
            let elapsed = now.duration_since(s.0).as_secs();
            d - elapsed
        });
    let target = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "FailureTarget" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let failure: Option<(String, String)> = if let Some(t) = target {
        Some(t)
    } else if let Some(m) = fail_job {
        Some(("PodFailurePolicy".into(), m))
    } else if failed > spec.backoff_limit.unwrap_or(6) && spec.backoff_limit_per_index.is_none() {
        Some((
            "BackoffLimitExceeded".to_string(),
            "Job has reached the specified backoff limit".into(),
        ))
    } else if !suspended && deadline.is_some_and(|left| left <= 0) {
        Some((
            "DeadlineExceeded".to_string(),
            "Job was active longer than specified deadline".into(),
        ))
    } else if spec
        .max_failed_indexes
        .is_some_and(|m| failed_indexes.len() as i32 > m)
    {
        Some((
            "MaxFailedIndexesExceeded".to_string(),
            "Job has exceeded the specified maximal number of failed indexes".into(),
        ))
    } else if indexed
        && !failed_indexes.is_empty()
        && spec
            .completions
            .is_some_and(|c| (completed.len() + failed_indexes.len()) as i32 >= c)
    {
        Some(("FailedIndexes".into(), "Job has failed indexes".into()))
    } else {
        None
    };
    let success = failure.is_none()
        && match (indexed, spec.completions) {
            (true, Some(c)) => completed.len() as i32 >= c,
            (false, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && active.is_empty(),
        };
    if let Some((reason, message)) = &failure {
        for p in &active {
            remove(&pods_api, p).await?;
        }
        set_condition(&mut status, "FailureTarget", true, reason, message);
        set_condition(&mut status, "Failed", true, reason, message);
        events.warning(&reference, reason, message).await;
    } else if success {
        for p in &active {
            remove(&pods_api, p).await?;
        }
        let m = "Reached expected number of succeeded pods";
        set_condition(
            &mut status,
            "SuccessCriteriaMet",
            true,
            "CompletionsReached",
            m,
        );
        set_condition(&mut status, "Complete", true, "CompletionsReached", m);
        events
            .normal(&reference, "Completed", "Job completed")
            .await;
        status.completion_time = Some(Time(now));
    }
    let mut requeue = Duration::from_secs(300);
    if failure.is_some() || success {
        status.active = Some(0);
        status.ready = Some(0);
    } else if suspended {
        for p in &active {
            remove(&pods_api, p).await?;
        }
        if !condition_true(&status, "Suspended") {
            events
                .normal(&reference, "Suspended", "Job suspended")
                .await;
        }
        set_condition(
            &mut status,
            "Suspended",
            true,
            "JobSuspended",
            "Job suspended",
        );
        status.start_time = None;
        status.active = Some(0);
        status.ready = Some(0);
    } else {
        if condition_true(&status, "Suspended") {
            set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed");
            events.normal(&reference, "Resumed", "Job resumed").await;
        }
        if let Some(left) = deadline {
            requeue = requeue.min(Duration::from_secs(left.max(1) as u64));
        }
        // A failure delays the next pod (10 s doubling).
        let wait = policy::backoff(failed);
        let last_failure = pods
            .iter()
            .filter(|p| phase(p) == Some("Failed"))
            .filter_map(policy::finished_at)
            .max();
        let hold = last_failure
            .map(|t| {
                wait.saturating_sub(Duration::from_secs(
                    now.duration_since(t).as_secs().max(0) as u64
                ))
            })
            .unwrap_or(Duration::ZERO);
        let owner = OwnerReference {
            api_version: Job::api_version(&()).to_string(),
            kind: Job::kind(&()).to_string(),
            name: name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut running = active.clone();
        if indexed {
            let total = spec.completions.unwrap_or(0);
            // One pod per index: duplicates and finished indexes' pods go.
            let mut seen = BTreeSet::new();
            let mut keep = Vec::new();
            for p in running {
                match index_of(p) {
                    Some(i)
                        if (0..total).contains(&i)
                            && !completed.contains(&i)
                            && !failed_indexes.contains(&i)
                            && seen.insert(i) =>
                    {
                        keep.push(p)
                    }
                    _ => remove(&pods_api, p).await?,
                }
            }
            running = keep;
            let missing: Vec<i32> = (0..total)
                .filter(|i| {
                    !completed.contains(i) && !failed_indexes.contains(i) && !seen.contains(i)
                })
                .collect();
            let room = (parallelism as usize).saturating_sub(running.len());
            if hold.is_zero() {
                for i in missing.into_iter().take(room) {
                    let created = pods_api
                        .create(&PostParams::default(), &new_pod(&job, &owner, Some(i)))
                        .await?;
                    tracing::info!(job = %name, index = i, "created a pod");
                    events
                        .normal(
                            &reference,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", created.name_any()),
                        )
                        .await;
                }
            } else if room > 0 {
                requeue = requeue.min(hold);
            }
        } else {
            let want = match spec.completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => 0,
                None => parallelism,
            } as usize;
            if running.len() > want {
                // Not-ready and newest pods go first.
                running.sort_by_key(|p| {
                    (
                        is_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
                    )
                });
                for p in &running[..running.len() - want] {
                    remove(&pods_api, p).await?;
                }
                running.truncate(want);
            } else if running.len() < want {
                if hold.is_zero() {
                    for _ in running.len()..want {
                        let created = pods_api
                            .create(&PostParams::default(), &new_pod(&job, &owner, None))
                            .await?;
                        events
                            .normal(
                                &reference,
                                "SuccessfulCreate",
                                &format!("Created pod: {}", created.name_any()),
                            )
                            .await;
                    }
                    tracing::info!(job = %name, created = want - running.len(), "created pods");
                } else {
                    requeue = requeue.min(hold);
                }
            }
        }
        status.active = Some(running.len() as i32);
        status.ready = Some(running.iter().filter(|p| is_ready(p)).count() as i32);
    }
    status.succeeded = Some(status.succeeded.unwrap_or(0));
    status.failed = Some(status.failed.unwrap_or(0));
    status.terminating = Some(
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && !is_terminal(p))
            .count() as i32,
    );
    if status != old_status {
        write_status(&jobs_api, &job, &status).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Replaces the Job's status, conditional on the resourceVersion the reconcile read.
async fn write_status(api: &Api<Job>, job: &Job, status: &JobStatus) -> Result<(), Error> {
    let mut updated = job.clone();
    updated.status = Some(status.clone());
    api.replace_status(&job.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(())
}

/// Pods of Jobs that are gone keep the tracking finalizer forever unless someone removes
/// it: every 10 s, pods with it whose controlling Job no longer exists are released.
async fn release_orphans(ctx: Arc<Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = release_orphans_once(&ctx).await {
            tracing::debug!(error = %e, "releasing orphaned job pods failed");
        }
    }
}

async fn release_orphans_once(ctx: &Context) -> Result<(), Error> {
    let pods = Api::<Pod>::all(ctx.client.clone())
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name"))
        .await?;
    let tracked: Vec<&Pod> = pods.items.iter().filter(|p| has_finalizer(p)).collect();
    if tracked.is_empty() {
        return Ok(());
    }
    let jobs: HashSet<String> = Api::<Job>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|j| j.uid())
        .collect();
    for p in tracked {
        let owner = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Job");
        if owner.is_some_and(|o| jobs.contains(&o.uid)) {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        release(&api, p).await?;
        tracing::info!(pod = %p.name_any(), namespace = ?p.namespace(), "released a pod of a Job that is gone");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_pods_know_their_index() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "work", "namespace": "ns", "uid": "u"},
            "spec": {"completionMode": "Indexed", "completions": 3, "template": {
                "metadata": {"labels": {"job-name": "work"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let owner = OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "work".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let p = new_pod(&job, &owner, Some(2));
        assert_eq!(index_of(&p), Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("work-2-"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        assert!(has_finalizer(&p));
        assert_eq!(p.labels().get("job-name").map(String::as_str), Some("work"));
    }
}
