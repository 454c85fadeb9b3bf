//! Per-namespace defaults, as kube's ServiceAccount controller and root CA publisher keep
//! them: a `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap holding the
//! cluster CA, recreated if deleted and corrected if changed.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

const ROOT_CA: &str = "kube-root-ca.crt";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    let cm_watch = watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}"));
    let sa_watch = watcher::Config::default().fields("metadata.name=default");
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(Api::<ConfigMap>::all(client.clone()), cm_watch, |cm| {
        cm.namespace()
            .map(|ns| kube::runtime::reflector::ObjectRef::new(&ns))
    })
    .watches(Api::<ServiceAccount>::all(client), sa_watch, |sa| {
        sa.namespace()
            .map(|ns| kube::runtime::reflector::ObjectRef::new(&ns))
    })
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(ns: Arc<Namespace>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = %ns.name_any(), error = %e, "namespace defaults failed");
    Action::requeue(retry_after(e))
}

fn created_or_exists<T>(r: Result<T, kube::Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        // Exists already, or the namespace is going away.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if sas.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        created_or_exists(sas.create(&PostParams::default(), &sa).await)?;
    }
    if let Some(ca) = &ctx.root_ca {
        let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
        let data = BTreeMap::from([("ca.crt".to_string(), ca.clone())]);
        match cms.get_opt(ROOT_CA).await? {
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CA.into()),
                        annotations: Some(BTreeMap::from([(
                            "kubernetes.io/description".to_string(),
                            "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                created_or_exists(cms.create(&PostParams::default(), &cm).await)?;
            }
            Some(mut cm) if cm.data.as_ref() != Some(&data) => {
                cm.data = Some(data);
                created_or_exists(cms.replace(ROOT_CA, &PostParams::default(), &cm).await)?;
            }
            Some(_) => {}
        }
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}
