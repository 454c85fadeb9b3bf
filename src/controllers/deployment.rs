//! The Deployment controller: one ReplicaSet per pod template (named by its
//! `pod-template-hash`), rolled from old to new within maxSurge/maxUnavailable (or all at
//! once for Recreate), old ones kept up to revisionHistoryLimit, and the status and
//! conditions `kubectl rollout status` reads.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::replicaset::selector_query;
use super::{retry_after, template_hash, Context, Error};

const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(d: Arc<Deployment>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(deployment = %d.name_any(), namespace = ?d.namespace(), error = %e, "reconcile failed");
    Action::requeue(retry_after(e))
}

/// An int-or-percent of `total`, rounded up (surge) or down (unavailable) as kube does.
fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let s = match v {
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
    let x = pct * f64::from(total) / 100.0;
    (if round_up { x.ceil() } else { x.floor() }) as i32
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Who scales, for the ScalingReplicaSet events.
struct Scaler<'a> {
    events: crate::client::events::EventRecorder,
    deployment: &'a k8s_openapi::api::core::v1::ObjectReference,
}

async fn scale(
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    replicas: i32,
    by: &Scaler<'_>,
) -> Result<(), Error> {
    let from = replicas_of(rs);
    if from == replicas {
        return Ok(());
    }
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let direction = if replicas > from { "up" } else { "down" };
    by.events
        .normal(
            by.deployment,
            "ScalingReplicaSet",
            &format!(
                "Scaled {direction} replica set {} from {from} to {replicas}",
                rs.name_any()
            ),
        )
        .await;
    Ok(())
}

/// A condition's status as the API writes it.
fn tf(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    old: Option<&DeploymentCondition>,
) -> DeploymentCondition {
    let status = status.to_string();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Transition time moves only when the status flips; update time when anything changes.
    let unchanged = old.is_some_and(|o| o.status == status && o.reason.as_deref() == Some(reason));
    DeploymentCondition {
        type_: type_.into(),
        status: status.clone(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: match old {
            Some(o) if o.status == status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        },
        last_update_time: if unchanged {
            old.and_then(|o| o.last_update_time.clone())
        } else {
            Some(now)
        },
    }
}

/// Paused: no rollout, but a new replica count still reaches the one active ReplicaSet
/// (kube's sync of a paused Deployment).
async fn scale_paused<'a>(
    rs_api: &Api<ReplicaSet>,
    all: impl Iterator<Item = &'a ReplicaSet>,
    want: i32,
    by: &Scaler<'_>,
) -> Result<(), Error> {
    let mut active = all.filter(|rs| replicas_of(rs) > 0);
    if let (Some(only), None) = (active.next(), active.next()) {
        if replicas_of(only) != want {
            scale(rs_api, only, want, by).await?;
        }
    }
    Ok(())
}

/// The Progressing reason of a paused Deployment.
const PAUSED: &str = "DeploymentPaused";

/// A paused Deployment whose template has no ReplicaSet yet: only its generation is
/// observed and its Progressing condition says it is paused.
async fn pause_status(ctx: &Context, d: &Deployment) -> Result<(), Error> {
    let prev = d.status.clone().unwrap_or_default();
    let old = prev
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        .cloned();
    if old.as_ref().and_then(|c| c.reason.as_deref()) == Some(PAUSED)
        && prev.observed_generation == d.metadata.generation
    {
        return Ok(());
    }
    let mut conditions: Vec<DeploymentCondition> = prev
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "Progressing")
        .collect();
    conditions.push(condition(
        "Progressing",
        "Unknown",
        PAUSED,
        "Deployment is paused".into(),
        old.as_ref(),
    ));
    let patch = serde_json::json!({"status": {
        "observedGeneration": d.metadata.generation,
        "conditions": conditions,
    }});
    Api::<Deployment>::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default())
        .patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "Deployment", namespace = ?d.namespace(), name = %d.name_any()))]
async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = d.namespace().ok_or(Error::Missing("namespace"))?;
    let name = d.name_any();
    let uid = d.uid().ok_or(Error::Missing("uid"))?;
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = d.spec.clone().ok_or(Error::Missing("spec"))?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = crate::client::events::reference(d.as_ref());
    let by = Scaler {
        events: ctx.events.for_component("deployment-controller"),
        deployment: &reference,
    };
    let all = rs_api
        .list(&ListParams::default().labels(&selector_query(&spec.selector)))
        .await?;
    let mut owned: Vec<ReplicaSet> = all
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect();
    owned.sort_by_key(revision_of);
    // The template the ReplicaSets are compared on: the Deployment's, without the hash label.
    let template = serde_json::to_value(&spec.template).unwrap_or_default();
    let strip = |rs: &ReplicaSet| {
        let mut t = serde_json::to_value(rs.spec.as_ref().and_then(|s| s.template.clone()))
            .unwrap_or_default();
        if let Some(l) = t
            .pointer_mut("/metadata/labels")
            .and_then(|l| l.as_object_mut())
        {
            l.remove(HASH_LABEL);
        }
        t
    };
    let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
    let new_index = owned.iter().position(|rs| strip(rs) == template);
    let want = spec.replicas.unwrap_or(1).max(0);
    let paused = spec.paused == Some(true);
    let mut new_rs = match new_index {
        Some(i) => owned.remove(i),
        None if paused => {
            scale_paused(&rs_api, owned.iter(), want, &by).await?;
            pause_status(&ctx, &d).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        None => {
            let collision = d.status.as_ref().and_then(|s| s.collision_count);
            let hash = template_hash::compute(&template, collision);
            let mut tmpl = spec.template.clone();
            let meta = tmpl.metadata.get_or_insert_with(Default::default);
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut labels = meta.labels.clone().unwrap_or_default();
            labels.insert(HASH_LABEL.into(), hash.clone());
            let mut annotations = BTreeMap::new();
            annotations.insert(REVISION.to_string(), (max_revision + 1).to_string());
            annotations.insert(
                "deployment.kubernetes.io/desired-replicas".into(),
                want.to_string(),
            );
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    owner_references: Some(vec![OwnerReference {
                        api_version: Deployment::api_version(&()).to_string(),
                        kind: Deployment::kind(&()).to_string(),
                        name: name.clone(),
                        uid: uid.clone(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(0),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(tmpl),
                }),
                status: None,
            };
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(rs) => rs,
                // A ReplicaSet of that name with another template: count the collision.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                    let patch = serde_json::json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    // Reusing an older template makes it the newest revision again (rollout undo).
    if revision_of(&new_rs) < max_revision {
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
        new_rs = rs_api
            .patch(
                &new_rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    // The Deployment carries its current revision too (`kubectl rollout history` and
    // users read it there).
    let revision = revision_of(&new_rs).to_string();
    if d.annotations().get(REVISION) != Some(&revision) {
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: revision}}});
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let old = owned;
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let mut max_surge = scaled(ru.max_surge.as_ref(), want, true, "25%");
    let mut max_unavailable = scaled(ru.max_unavailable.as_ref(), want, false, "25%");
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    if recreate {
        max_surge = 0;
    }
    if paused {
        scale_paused(
            &rs_api,
            old.iter().chain(std::iter::once(&new_rs)),
            want,
            &by,
        )
        .await?;
    } else {
        if recreate {
            for rs in &old {
                scale(&rs_api, rs, 0, &by).await?;
            }
            let old_running: i32 = old.iter().map(|rs| status_of(rs).0).sum();
            if old_running == 0 {
                scale(&rs_api, &new_rs, want, &by).await?;
            }
        } else {
            let old_total: i32 = old.iter().map(replicas_of).sum();
            let new_now = replicas_of(&new_rs);
            // Scale up the new ReplicaSet within the surge.
            let room = (want + max_surge) - (old_total + new_now);
            let target = if new_now > want {
                want
            } else {
                (new_now + room.max(0)).min(want)
            };
            scale(&rs_api, &new_rs, target, &by).await?;
            // Scale down old ReplicaSets as kube does: first their unavailable pods, as far
            // as the new ReplicaSet's unavailable pods leave room, then available ones while
            // enough stay available.
            let min_available = want - max_unavailable;
            let all_pods: i32 = old.iter().map(replicas_of).sum::<i32>() + target;
            let new_unavailable = (target - status_of(&new_rs).2).max(0);
            let mut cleanup = all_pods - min_available - new_unavailable;
            let mut remaining: Vec<i32> = old.iter().map(replicas_of).collect();
            for (i, rs) in old.iter().enumerate() {
                if cleanup <= 0 {
                    break;
                }
                let unhealthy = (remaining[i] - status_of(rs).2).max(0);
                let cut = unhealthy.min(cleanup);
                remaining[i] -= cut;
                cleanup -= cut;
            }
            let available: i32 = old
                .iter()
                .chain(std::iter::once(&new_rs))
                .map(|rs| status_of(rs).2)
                .sum();
            let mut can_remove = available - min_available;
            for (i, _) in old.iter().enumerate() {
                if can_remove <= 0 {
                    break;
                }
                let cut = remaining[i].min(can_remove);
                remaining[i] -= cut;
                can_remove -= cut;
            }
            for (i, rs) in old.iter().enumerate() {
                scale(&rs_api, rs, remaining[i], &by).await?;
            }
        }
        // Keep at most revisionHistoryLimit old ReplicaSets with no pods.
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let empty: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| replicas_of(rs) == 0 && status_of(rs).0 == 0)
            .collect();
        if empty.len() > limit {
            for rs in &empty[..empty.len() - limit] {
                match rs_api
                    .delete(&rs.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    // Status.
    let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new_rs)).collect();
    let replicas: i32 = all.iter().map(|rs| status_of(rs).0).sum();
    let ready: i32 = all.iter().map(|rs| status_of(rs).1).sum();
    let available: i32 = all.iter().map(|rs| status_of(rs).2).sum();
    let updated = status_of(&new_rs).0;
    let prev = d.status.clone().unwrap_or_default();
    let prev_cond = |t: &str| {
        prev.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .cloned()
    };
    let min_available = want - max_unavailable;
    let available_cond = condition(
        "Available",
        tf(available >= min_available),
        if available >= min_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if available >= min_available {
            "Deployment has minimum availability.".into()
        } else {
            "Deployment does not have minimum availability.".into()
        },
        prev_cond("Available").as_ref(),
    );
    let complete =
        updated == want && replicas == want && available == want && replicas_of(&new_rs) == want;
    let rs_name = new_rs.name_any();
    let was_paused = prev_cond("Progressing").is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
    // While paused the rollout makes no progress, so no deadline runs (kube's
    // checkPausedConditions); resuming restarts the clock.
    let progressing_cond = if paused {
        condition(
            "Progressing",
            "Unknown",
            PAUSED,
            "Deployment is paused".into(),
            prev_cond("Progressing").as_ref(),
        )
    } else if was_paused && !complete {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed".into(),
            prev_cond("Progressing").as_ref(),
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            prev_cond("Progressing").as_ref(),
        )
    } else {
        let deadline = spec.progress_deadline_seconds.unwrap_or(600);
        let prev_p = prev_cond("Progressing");
        // Timed out: no progress for the deadline, or already timed out and still none.
        let timed_out = prev_p.as_ref().is_some_and(|c| {
            c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                || c.last_update_time.as_ref().is_some_and(|t| {
                    k8s_openapi::jiff::Timestamp::now()
                        .duration_since(t.0)
                        .as_secs()
                        > i64::from(deadline)
                })
        });
        let stalled = timed_out
            && prev.updated_replicas.unwrap_or(0) == updated
            && prev.available_replicas.unwrap_or(0) == available;
        if stalled {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                prev_p.as_ref(),
            )
        } else {
            let reason = if new_index.is_none() {
                "NewReplicaSetCreated"
            } else {
                "ReplicaSetUpdated"
            };
            let mut c = condition(
                "Progressing",
                "True",
                reason,
                format!("ReplicaSet \"{rs_name}\" is progressing."),
                prev_p.as_ref(),
            );
            // Progress (more updated or available pods) renews the deadline.
            // (Zero counts are omitted from the stored status: absent is 0.)
            if prev.updated_replicas.unwrap_or(0) != updated
                || prev.available_replicas.unwrap_or(0) != available
            {
                c.last_update_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            }
            c
        }
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        conditions: Some(vec![available_cond, progressing_cond]),
        collision_count: prev.collision_count,
        terminating_replicas: None,
    };
    let same = |a: &DeploymentStatus, b: &DeploymentStatus| {
        let strip = |s: &DeploymentStatus| {
            let mut s = s.clone();
            for c in s.conditions.iter_mut().flatten() {
                c.last_update_time = None;
                c.last_transition_time = None;
            }
            // Zero counts are stored as absent.
            for n in [
                &mut s.replicas,
                &mut s.updated_replicas,
                &mut s.ready_replicas,
                &mut s.available_replicas,
                &mut s.unavailable_replicas,
            ] {
                if *n == Some(0) {
                    *n = None;
                }
            }
            s
        };
        strip(a) == strip(b)
    };
    if !same(&prev, &status) {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(if complete {
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}
