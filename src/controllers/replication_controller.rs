//! The ReplicationController controller: the ReplicaSet's sync (`replicaset::sync`) for the
//! older core/v1 kind, whose selector is a plain label map (the template's labels when
//! absent), and its status (replicas, fullyLabeled, ready, available, observedGeneration).
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::replicaset::{sync, Replicated};
use super::{retry_after, Context, Error};

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    Controller::new(
        Api::<ReplicationController>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(rc: Arc<ReplicationController>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(replicationcontroller = %rc.name_any(), namespace = ?rc.namespace(), error = %e, "reconcile failed");
    Action::requeue(retry_after(e))
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "ReplicationController", namespace = ?rc.namespace(), name = %rc.name_any()))]
async fn reconcile(rc: Arc<ReplicationController>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rc.namespace().ok_or(Error::Missing("namespace"))?;
    let name = rc.name_any();
    let spec = rc.spec.clone().ok_or(Error::Missing("spec"))?;
    let template = spec.template.clone().unwrap_or_default();
    let labels = spec
        .selector
        .clone()
        .or_else(|| template.metadata.as_ref().and_then(|m| m.labels.clone()))
        .unwrap_or_default();
    if labels.is_empty() {
        // An empty selector would select every pod of the namespace.
        return Err(Error::Missing("selector"));
    }
    let view = Replicated {
        api_version: ReplicationController::api_version(&()).to_string(),
        kind: ReplicationController::kind(&()).to_string(),
        component: "replication-controller",
        namespace: ns.clone(),
        name: name.clone(),
        uid: rc.uid().ok_or(Error::Missing("uid"))?,
        deleting: rc.metadata.deletion_timestamp.is_some(),
        selector: LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        },
        replicas: spec.replicas.unwrap_or(1),
        template,
        reference: crate::client::events::reference(rc.as_ref()),
    };
    let counts = sync(&view, &ctx).await?;
    let current = rc.status.clone().unwrap_or_default();
    let unchanged = current.replicas == counts.replicas
        && current.fully_labeled_replicas == Some(counts.fully_labeled)
        && current.ready_replicas == Some(counts.ready)
        && current.available_replicas == Some(counts.ready)
        && current.observed_generation == rc.metadata.generation;
    if !unchanged {
        let patch = json!({"status": {
            "replicas": counts.replicas,
            "fullyLabeledReplicas": counts.fully_labeled,
            "readyReplicas": counts.ready,
            "availableReplicas": counts.ready,
            "observedGeneration": rc.metadata.generation,
        }});
        Api::<ReplicationController>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
