//! The namespace controller: a namespace being deleted is emptied (every namespaced
//! resource in it deleted), and once nothing is left its `kubernetes` finalizer is removed
//! through `namespaces/<name>/finalize`, after which the API server deletes it.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    Controller::new(
        Api::<Namespace>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(ns: Arc<Namespace>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %e, "namespace cleanup failed");
    Action::requeue(retry_after(e))
}

#[tracing::instrument(name = "reconcile", level = "info", skip_all, fields(kind = "Namespace", name = %ns.name_any()))]
async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == "kubernetes") {
        return Ok(Action::await_change());
    }
    let discovery = Discovery::new(ctx.client.clone()).run().await?;
    let mut remaining = 0usize;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
            let items = api.list(&ListParams::default()).await?;
            for obj in items.items {
                remaining += 1;
                if obj.metadata.deletion_timestamp.is_none() {
                    match api
                        .delete(&obj.name_any(), &DeleteParams::background())
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    if remaining > 0 {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(
            finalizers
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect(),
        );
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => tracing::info!("namespace emptied and finalized"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
