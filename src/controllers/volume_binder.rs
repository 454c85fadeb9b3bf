//! The PersistentVolume binder (kube's persistentvolume-binder): a claim is bound to the
//! smallest available volume that serves it (after the scheduler picked a node, for
//! WaitForFirstConsumer classes), or handed to its class's provisioner; claims naming no
//! class get the default one; volumes go Available, Bound and, when their claim is gone,
//! Released (and Failed when nothing can delete them under a Delete policy).
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{retry_after, unless_missing, Context, Error};
use crate::client::events::reference;
use crate::resources::storage::{
    self, BETA_STORAGE_PROVISIONER, DEFAULT_CLASS, NO_PROVISIONER, PROVISIONED_BY, SELECTED_NODE,
    STORAGE_PROVISIONER,
};

const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// kube's PV controller resync: pending claims are looked at again this often.
const RESYNC: Duration = Duration::from_secs(15);

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PersistentVolume>::all(ctx.client.clone()),
        watcher::Config::default(),
        |pv: PersistentVolume| {
            pv.spec
                .and_then(|s| s.claim_ref)
                .and_then(|r| Some(ObjectRef::new(&r.name?).within(&r.namespace?)))
        },
    )
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(reconcile_claim, claim_error, ctx.clone())
    .for_each(crate::controllers::observe(health.clone()));
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<PersistentVolumeClaim>::all(ctx.client.clone()),
        watcher::Config::default(),
        |pvc: PersistentVolumeClaim| {
            pvc.spec
                .and_then(|s| s.volume_name)
                .filter(|v| !v.is_empty())
                .map(|v| ObjectRef::new(&v))
        },
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile_volume, volume_error, ctx)
    .for_each(crate::controllers::observe(health.clone()));
    tokio::join!(claims, volumes);
}

fn claim_error(pvc: Arc<PersistentVolumeClaim>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(claim = %pvc.name_any(), namespace = ?pvc.namespace(), error = %e, "binding a claim failed");
    Action::requeue(retry_after(e))
}

fn volume_error(pv: Arc<PersistentVolume>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(volume = %pv.name_any(), error = %e, "volume phase update failed");
    Action::requeue(retry_after(e))
}

#[tracing::instrument(name = "bind", level = "debug", skip_all, fields(kind = "PersistentVolumeClaim", namespace = ?pvc.namespace(), name = %pvc.name_any()))]
async fn reconcile_claim(
    pvc: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let events = ctx.events.for_component("persistentvolume-controller");
    let spec = pvc.spec.clone().unwrap_or_default();

    // Retroactive default class: a claim made before there was a default gets it now.
    if spec.storage_class_name.is_none() && spec.volume_name.as_deref().unwrap_or("").is_empty() {
        let default = classes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"))
            .max_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0));
        if let Some(class) = default {
            let patch = json!({"spec": {"storageClassName": class.name_any()}});
            claims
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Action::await_change());
        }
    }

    if let Some(volume) = spec.volume_name.clone().filter(|v| !v.is_empty()) {
        let Some(pv) = unless_missing(volumes.get(&volume).await)? else {
            set_claim_phase(&claims, &pvc, "Lost", None).await?;
            events
                .warning(
                    &reference(&*pvc),
                    "ClaimLost",
                    "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
                )
                .await;
            return Ok(Action::requeue(RESYNC));
        };
        match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            None => {
                // Pre-bound by the user through volumeName: claim the volume for it.
                let pv = bind_volume(&volumes, &pv, &pvc, false).await?;
                finish_claim(&claims, &pvc, &pv).await?;
                return Ok(Action::await_change());
            }
            Some(_) if storage::claimed_by(&pv, &pvc) => {
                finish_claim(&claims, &pvc, &pv).await?;
                return Ok(Action::await_change());
            }
            Some(_) => {
                events
                    .warning(
                        &reference(&*pvc),
                        "ClaimMisbound",
                        "Two claims are bound to the same volume, this one is bound incorrectly",
                    )
                    .await;
                set_claim_phase(&claims, &pvc, "Lost", None).await?;
                return Ok(Action::requeue(RESYNC));
            }
        }
    }

    // Unbound: find a volume, or ask the class's provisioner for one.
    let class_name = storage::claim_class(&pvc);
    let class = if class_name.is_empty() {
        None
    } else {
        unless_missing(classes.get(&class_name).await)?
    };
    let waits = class
        .as_ref()
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer");
    let selected = pvc.annotations().get(SELECTED_NODE).cloned();
    if waits && selected.is_none() {
        set_claim_phase(&claims, &pvc, "Pending", None).await?;
        events
            .normal(
                &reference(&*pvc),
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
        return Ok(Action::await_change());
    }
    let node = match selected.as_deref() {
        Some(n) if waits => unless_missing(Api::<Node>::all(ctx.client.clone()).get(n).await)?,
        _ => None,
    };
    let all = volumes.list(&ListParams::default()).await?.items;
    if let Some(pv) = storage::best_match(all.iter(), &pvc, node.as_ref()) {
        let prebound = storage::claimed_by(pv, &pvc);
        let pv = bind_volume(&volumes, pv, &pvc, !prebound).await?;
        let patch = json!({
            "metadata": {"annotations": {BIND_COMPLETED: "yes", BOUND_BY_CONTROLLER: "yes"}},
            "spec": {"volumeName": pv.name_any()}});
        let updated = claims
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        finish_claim(&claims, &updated, &pv).await?;
        events
            .normal(
                &reference(&*pvc),
                "Bound",
                &format!("Successfully bound to volume {}", pv.name_any()),
            )
            .await;
        return Ok(Action::await_change());
    }
    set_claim_phase(&claims, &pvc, "Pending", None).await?;
    match class {
        Some(c) if c.provisioner != NO_PROVISIONER => {
            let current = pvc.annotations().get(STORAGE_PROVISIONER);
            if current != Some(&c.provisioner) {
                let patch = json!({"metadata": {"annotations": {
                    STORAGE_PROVISIONER: c.provisioner, BETA_STORAGE_PROVISIONER: c.provisioner}}});
                claims
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            events
                .normal(
                    &reference(&*pvc),
                    "ExternalProvisioning",
                    &format!("Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.", c.provisioner),
                )
                .await;
        }
        Some(_) => {
            events
                .normal(
                    &reference(&*pvc),
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
        }
        None if !class_name.is_empty() => {
            events
                .warning(
                    &reference(&*pvc),
                    "ProvisioningFailed",
                    &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
                )
                .await;
        }
        None => {
            events
                .normal(
                    &reference(&*pvc),
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Points the volume at the claim (an update on the volume's resourceVersion, so two
/// claims never take one volume), and marks it Bound.
async fn bind_volume(
    volumes: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
    by_controller: bool,
) -> Result<PersistentVolume, Error> {
    let mut updated = pv.clone();
    let spec = updated.spec.get_or_insert_with(Default::default);
    spec.claim_ref = Some(ObjectReference {
        kind: Some("PersistentVolumeClaim".into()),
        api_version: Some("v1".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        field_path: None,
    });
    if by_controller {
        updated
            .annotations_mut()
            .insert(BOUND_BY_CONTROLLER.into(), "yes".into());
    }
    let stored = volumes
        .replace(&pv.name_any(), &PostParams::default(), &updated)
        .await?;
    tracing::info!(volume = %pv.name_any(), claim = %pvc.name_any(), "bound volume to claim");
    set_volume_phase(volumes, &stored, "Bound").await?;
    Ok(stored)
}

/// Completes the claim's side: volumeName, the bind annotations, and status Bound with
/// the volume's capacity and access modes.
async fn finish_claim(
    claims: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), Error> {
    let name = pvc.name_any();
    if pvc.annotations().get(BIND_COMPLETED).map(String::as_str) != Some("yes") {
        let patch = json!({"metadata": {"annotations": {BIND_COMPLETED: "yes"}}});
        claims
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let spec = pv.spec.clone().unwrap_or_default();
    set_claim_phase(
        claims,
        pvc,
        "Bound",
        Some(json!({"capacity": spec.capacity, "accessModes": spec.access_modes})),
    )
    .await
}

async fn set_claim_phase(
    claims: &Api<PersistentVolumeClaim>,
    pvc: &PersistentVolumeClaim,
    phase: &str,
    extra: Option<serde_json::Value>,
) -> Result<(), Error> {
    let status = pvc.status.as_ref();
    let current = status.and_then(|s| s.phase.as_deref());
    let capacity_now = status.and_then(|s| s.capacity.as_ref()).is_some();
    if current == Some(phase) && (extra.is_none() || capacity_now) {
        return Ok(());
    }
    let mut body = json!({"phase": phase});
    if let Some(serde_json::Value::Object(m)) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    unless_missing(
        claims
            .patch_status(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": body })),
            )
            .await,
    )?;
    Ok(())
}

async fn set_volume_phase(
    volumes: &Api<PersistentVolume>,
    pv: &PersistentVolume,
    phase: &str,
) -> Result<(), Error> {
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase) {
        return Ok(());
    }
    let patch = json!({"status": {"phase": phase,
        "lastPhaseTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}});
    unless_missing(
        volumes
            .patch_status(
                &pv.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
    )?;
    Ok(())
}

async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A volume being deleted is still released when its claim goes: pv-protection holds it
    // until it is no longer Bound.
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(claim_ref) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
        set_volume_phase(&volumes, &pv, "Available").await?;
        return Ok(Action::await_change());
    };
    let ns = claim_ref.namespace.clone().unwrap_or_default();
    let name = claim_ref.name.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claim = unless_missing(claims.get(&name).await)?;
    let uid_given = claim_ref.uid.as_deref().is_some_and(|u| !u.is_empty());
    let same = claim
        .as_ref()
        .is_some_and(|c| !uid_given || c.metadata.uid == claim_ref.uid);
    if same {
        let bound_here = claim
            .as_ref()
            .and_then(|c| c.spec.as_ref())
            .and_then(|s| s.volume_name.as_deref())
            == Some(pv.name_any().as_str());
        let phase = if bound_here || uid_given {
            "Bound"
        } else {
            "Available"
        };
        set_volume_phase(&volumes, &pv, phase).await?;
        return Ok(Action::await_change());
    }
    if !uid_given {
        // Pre-bound to a claim that does not exist yet.
        set_volume_phase(&volumes, &pv, "Available").await?;
        return Ok(Action::await_change());
    }
    // The claim is gone: the volume is released, then reclaimed by its policy.
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    let provisioned = pv.annotations().contains_key(PROVISIONED_BY);
    if policy == "Delete" && !provisioned {
        set_volume_phase(&volumes, &pv, "Failed").await?;
        ctx.events
            .for_component("persistentvolume-controller")
            .warning(
                &reference(&*pv),
                "VolumeFailedDelete",
                "error getting deleter volume plugin for volume: no deletable volume plugin matched",
            )
            .await;
        return Ok(Action::await_change());
    }
    // Retain stays Released; a provisioner's Delete is its provisioner's to carry out.
    set_volume_phase(&volumes, &pv, "Released").await?;
    Ok(Action::await_change())
}
