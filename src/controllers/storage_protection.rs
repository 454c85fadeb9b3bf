//! kube's pvc-protection and pv-protection controllers: a claim being deleted keeps its
//! `kubernetes.io/pvc-protection` finalizer while any pod that has not finished uses it
//! (checked against a fresh list, not a cache, as kube does), and a volume being deleted
//! keeps `kubernetes.io/pv-protection` while it is bound. Then the finalizer goes and the
//! API server finishes the deletion.
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{retry_after, unless_missing, Context, Error};
use crate::resources::storage::{claims_of, PVC_PROTECTION, PV_PROTECTION};

pub async fn run_claims(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    Controller::new(
        Api::<PersistentVolumeClaim>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    // A pod that goes or finishes may free the claims it used.
    .watches(
        Api::<Pod>::all(ctx.client.clone()),
        watcher::Config::default(),
        |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            claims_of(&pod)
                .into_iter()
                .map(|c| ObjectRef::new(&c).within(&ns))
                .collect::<Vec<_>>()
        },
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile_claim, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

pub async fn run_volumes(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    Controller::new(
        Api::<PersistentVolume>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile_volume, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy<K: kube::Resource>(obj: Arc<K>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(name = ?obj.meta().name, namespace = ?obj.meta().namespace, error = %e, "storage protection failed");
    Action::requeue(retry_after(e))
}

/// Removes `finalizer` from the object, guarded by its resourceVersion (a finalizer added
/// meanwhile is not lost: the patch conflicts and is retried).
fn without(meta: &kube::api::ObjectMeta, finalizer: &str) -> serde_json::Value {
    let rest: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .collect();
    json!({"metadata": {"finalizers": rest, "resourceVersion": meta.resource_version}})
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[tracing::instrument(name = "protect", level = "debug", skip_all, fields(kind = "PersistentVolumeClaim", namespace = ?pvc.namespace(), name = %pvc.name_any()))]
async fn reconcile_claim(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let finalizers = pvc.finalizers().to_vec();
    if pvc.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == PVC_PROTECTION)
    {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().ok_or(Error::Missing("namespace"))?;
    let name = pvc.name_any();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    if let Some(user) = pods
        .items
        .iter()
        .find(|p| !finished(p) && claims_of(p).contains(&name))
    {
        tracing::debug!(pod = %user.name_any(), "claim still in use");
        return Ok(Action::await_change());
    }
    let patch = without(&pvc.metadata, PVC_PROTECTION);
    unless_missing(
        Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await,
    )?;
    Ok(Action::await_change())
}

#[tracing::instrument(name = "protect", level = "debug", skip_all, fields(kind = "PersistentVolume", name = %pv.name_any()))]
async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let finalizers = pv.finalizers().to_vec();
    if pv.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == PV_PROTECTION) {
        return Ok(Action::await_change());
    }
    let bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if bound {
        return Ok(Action::await_change());
    }
    let patch = without(&pv.metadata, PV_PROTECTION);
    unless_missing(
        Api::<PersistentVolume>::all(ctx.client.clone())
            .patch(
                &pv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
    )?;
    Ok(Action::await_change())
}
