//! Legacy service-account token secrets, as kube's tokens controller keeps them: a Secret of
//! type `kubernetes.io/service-account-token` naming a service account gets a signed token,
//! `ca.crt` and `namespace`; one whose service account is gone (or was recreated with
//! another uid) is deleted.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};
use crate::tls::service_account::legacy_claims;

const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME: &str = "kubernetes.io/service-account.name";
const SA_UID: &str = "kubernetes.io/service-account.uid";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    if ctx.service_account_key.is_none() {
        tracing::info!("no service-account key: legacy token secrets are not filled");
        return;
    }
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().fields(&format!("type={TOKEN_TYPE}")),
    );
    let secrets = controller.store();
    controller
        .watches(
            Api::<ServiceAccount>::all(client),
            watcher::Config::default(),
            move |sa| {
                // The secrets that name this service account.
                let ns = sa.namespace();
                let name = sa.name_any();
                secrets
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace() == ns && s.annotations().get(SA_NAME) == Some(&name))
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn error_policy(secret: Arc<Secret>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = ?secret.namespace(), name = %secret.name_any(), error = %e, "token secret failed");
    Action::requeue(retry_after(e))
}

async fn reconcile(secret: Arc<Secret>, ctx: Arc<Context>) -> Result<Action, Error> {
    let (Some(ns), Some(key)) = (secret.namespace(), ctx.service_account_key.as_ref()) else {
        return Ok(Action::await_change());
    };
    if secret.metadata.deletion_timestamp.is_some() || secret.type_.as_deref() != Some(TOKEN_TYPE) {
        return Ok(Action::await_change());
    }
    let name = secret.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let sa_name = secret
        .annotations()
        .get(SA_NAME)
        .cloned()
        .unwrap_or_default();
    let sa = if sa_name.is_empty() {
        None
    } else {
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&sa_name)
            .await?
    };
    let sa_uid = sa.as_ref().and_then(|s| s.metadata.uid.clone());
    let recorded_uid = secret.annotations().get(SA_UID);
    let orphaned = match (&sa_uid, recorded_uid) {
        (None, _) => true,
        (Some(uid), Some(recorded)) => uid != recorded,
        (Some(_), None) => false,
    };
    if orphaned {
        tracing::info!(namespace = %ns, name = %name, service_account = %sa_name, "deleting the token secret of a service account that is gone");
        match secrets.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    let sa_uid = sa_uid.unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let complete = data.get("token").is_some_and(|t| !t.0.is_empty())
        && data.contains_key("namespace")
        && (ctx.root_ca.is_none() || data.contains_key("ca.crt"));
    if complete && recorded_uid.is_some() {
        return Ok(Action::await_change());
    }
    let mut updated = (*secret).clone();
    let mut data: BTreeMap<String, ByteString> = data;
    if data.get("token").is_none_or(|t| t.0.is_empty()) {
        let token = key
            .sign(&legacy_claims(&ns, &name, &sa_name, &sa_uid))
            .map_err(|_| Error::Missing("a signable service-account key"))?;
        data.insert("token".into(), ByteString(token.into_bytes()));
    }
    data.insert("namespace".into(), ByteString(ns.clone().into_bytes()));
    if let Some(ca) = &ctx.root_ca {
        data.insert("ca.crt".into(), ByteString(ca.clone().into_bytes()));
    }
    updated.data = Some(data);
    updated
        .annotations_mut()
        .insert(SA_UID.to_string(), sa_uid.clone());
    match secrets
        .replace(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            tracing::info!(namespace = %ns, name = %name, service_account = %sa_name, "token secret filled");
            Ok(Action::requeue(Duration::from_secs(3600)))
        }
        // Changed meanwhile: the watch brings the new version.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}
