//! Local storage out of the box, as k3s ships it: the `local-path` StorageClass (the
//! default, WaitForFirstConsumer, reclaim Delete) and its provisioner (named as rancher's,
//! `rancher.io/local-path`, so k3s manifests work): once the scheduler has chosen a node
//! for a claim's first pod, a hostPath volume `<data-dir>/storage/pvc-<uid>_<ns>_<name>`
//! pinned to that node is created (the kubelet makes the directory); a released volume is
//! deleted, its directory removed when it lives on this server's own node.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{retry_after, unless_exists, unless_missing, Context, Error};
use crate::client::events::reference;
use crate::resources::storage::{
    DEFAULT_CLASS, PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER,
};

pub const PROVISIONER: &str = "rancher.io/local-path";
pub const CLASS: &str = "local-path";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    if let Err(e) = ensure_class(&ctx.client).await {
        tracing::warn!(error = %e, "could not create the local-path StorageClass");
    }
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(provision, claim_error, ctx.clone())
    .for_each(crate::controllers::observe(health.clone()));
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reclaim, volume_error, ctx)
    .for_each(crate::controllers::observe(health.clone()));
    tokio::join!(claims, volumes);
}

/// Creates the class once; a class the user changed or removed the default mark from is
/// left as it is.
async fn ensure_class(client: &kube::Client) -> Result<(), Error> {
    let class: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .map_err(|_| Error::Missing("a valid StorageClass"))?;
    unless_exists(
        Api::<StorageClass>::all(client.clone())
            .create(&PostParams::default(), &class)
            .await,
    )?;
    Ok(())
}

fn claim_error(pvc: Arc<PersistentVolumeClaim>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(claim = %pvc.name_any(), namespace = ?pvc.namespace(), error = %e, "local-path provisioning failed");
    Action::requeue(retry_after(e))
}

fn volume_error(pv: Arc<PersistentVolume>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(volume = %pv.name_any(), error = %e, "local-path reclaim failed");
    Action::requeue(retry_after(e))
}

/// The directory of a claim's volume under the storage root.
fn volume_dir(root: &Path, pvc: &PersistentVolumeClaim) -> PathBuf {
    root.join(format!(
        "pvc-{}_{}_{}",
        pvc.uid().unwrap_or_default(),
        pvc.namespace().unwrap_or_default(),
        pvc.name_any()
    ))
}

#[tracing::instrument(name = "provision", level = "info", skip_all, fields(kind = "PersistentVolumeClaim", namespace = ?pvc.namespace(), name = %pvc.name_any()))]
async fn provision(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ours = pvc
        .annotations()
        .get(STORAGE_PROVISIONER)
        .map(String::as_str)
        == Some(PROVISIONER);
    let spec = pvc.spec.clone().unwrap_or_default();
    let unbound = spec.volume_name.as_deref().unwrap_or("").is_empty();
    let Some(node_name) = pvc.annotations().get(SELECTED_NODE).cloned() else {
        return Ok(Action::await_change());
    };
    if !ours || !unbound || pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let events = ctx.events.for_component(&format!("{PROVISIONER}_krab"));
    let modes = spec.access_modes.clone().unwrap_or_default();
    if modes
        .iter()
        .any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod")
    {
        events
            .warning(
                &reference(&*pvc),
                "ProvisioningFailed",
                "failed to provision volume with StorageClass \"local-path\": Only support ReadWriteOnce and ReadWriteOncePod access modes",
            )
            .await;
        return Ok(Action::await_change());
    }
    let Some(root) = ctx.storage_dir.clone() else {
        return Err(Error::Missing("storage directory"));
    };
    let Some(node) = unless_missing(Api::<Node>::all(ctx.client.clone()).get(&node_name).await)?
    else {
        return Ok(Action::await_change());
    };
    let hostname = node
        .labels()
        .get("kubernetes.io/hostname")
        .cloned()
        .unwrap_or_else(|| node.name_any());
    let class = spec
        .storage_class_name
        .clone()
        .unwrap_or_else(|| CLASS.into());
    let reclaim = unless_missing(
        Api::<StorageClass>::all(ctx.client.clone())
            .get(&class)
            .await,
    )?
    .and_then(|c| c.reclaim_policy)
    .unwrap_or_else(|| "Delete".into());
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned());
    let name = format!("pvc-{}", pvc.uid().unwrap_or_default());
    events
        .normal(
            &reference(&*pvc),
            "Provisioning",
            &format!(
                "External provisioner is provisioning volume for claim \"{}/{}\"",
                pvc.namespace().unwrap_or_default(),
                pvc.name_any()
            ),
        )
        .await;
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: PROVISIONER, "local.path.provisioner/selected-node": node_name}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": class,
            "volumeMode": "Filesystem",
            "hostPath": {"path": volume_dir(&root, &pvc).to_string_lossy(), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": pvc.namespace(), "name": pvc.name_any(), "uid": pvc.uid()},
        }
    }))
    .map_err(|_| Error::Missing("a valid PersistentVolume"))?;
    unless_exists(
        Api::<PersistentVolume>::all(ctx.client.clone())
            .create(&PostParams::default(), &pv)
            .await,
    )?;
    tracing::info!(volume = %name, node = %node_name, "provisioned");
    events
        .normal(
            &reference(&*pvc),
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {name}"),
        )
        .await;
    Ok(Action::await_change())
}

/// A released local-path volume under the Delete policy: its directory goes (when it is
/// on this server's node), then the volume.
async fn reclaim(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let spec = pv.spec.clone().unwrap_or_default();
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    if !ours || !released || !delete || pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let node = pv
        .annotations()
        .get("local.path.provisioner/selected-node")
        .cloned()
        .unwrap_or_default();
    let path = spec.host_path.as_ref().map(|h| PathBuf::from(&h.path));
    let inside_root = |p: &Path| ctx.storage_dir.as_ref().is_some_and(|r| p.starts_with(r));
    match path {
        Some(p) if ctx.local_node.as_deref() == Some(node.as_str()) && inside_root(&p) => {
            match tokio::fs::remove_dir_all(&p).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "could not remove a released volume's directory");
                    return Ok(Action::requeue(std::time::Duration::from_secs(30)));
                }
            }
        }
        _ => {
            ctx.events
                .for_component(&format!("{PROVISIONER}_krab"))
                .warning(
                    &reference(&*pv),
                    "VolumeDataKept",
                    &format!("the volume's directory on node {node} is left in place: only volumes on the server's own node are cleaned up"),
                )
                .await;
        }
    }
    unless_missing(
        Api::<PersistentVolume>::all(ctx.client.clone())
            .delete(&pv.name_any(), &DeleteParams::default())
            .await,
    )?;
    tracing::info!(volume = %pv.name_any(), "deleted released volume");
    Ok(Action::await_change())
}
