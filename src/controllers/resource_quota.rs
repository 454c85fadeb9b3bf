//! ResourceQuota usage (kube's resourcequota controller): `status.hard` follows the spec
//! and `status.used` is what the namespace's objects use of each limited resource, counted
//! by `resources::quota`. Recomputed when a quota changes, when an object kube replenishes
//! quota for (pods, services, claims, config maps, secrets, replication controllers) or a
//! workload (replica sets, deployments, stateful sets, daemon sets, jobs, cron jobs)
//! changes in its namespace, and every 5 minutes for the other `count/*` kinds. The API
//! server's ResourceQuota admission raises `used` as it admits; this loop brings it back
//! down as objects go.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota,
    ResourceQuotaStatus, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};
use crate::resources::quota::{self, Usage};

/// kube's `--resource-quota-sync-period`.
const FULL_RESYNC: Duration = Duration::from_secs(300);

/// The quotas of the namespace an object is in: what to recompute when it changes.
fn quotas_of<K: Resource>(quotas: &Store<ResourceQuota>, obj: &K) -> Vec<ObjectRef<ResourceQuota>> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    quotas
        .state()
        .into_iter()
        .filter(|q| q.namespace().as_deref() == Some(ns.as_str()))
        .map(|q| ObjectRef::from_obj(&*q))
        .collect()
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<ResourceQuota>::all(client.clone()),
        watcher::Config::default(),
    );
    let quotas = controller.store();
    let q = || quotas.clone();
    let (q1, q2, q3, q4, q5, q6) = (q(), q(), q(), q(), q(), q());
    let (q7, q8, q9, q10, q11, q12) = (q(), q(), q(), q(), q(), q());
    // Only an object's namespace matters here: metadata-only watches keep the traffic
    // small (secrets and config maps can be large).
    let cfg = watcher::Config::default;
    controller
        .watches(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q1, &o),
        )
        .watches(
            Api::<PartialObjectMeta<Service>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q2, &o),
        )
        .watches(
            Api::<PartialObjectMeta<PersistentVolumeClaim>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q3, &o),
        )
        .watches(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q4, &o),
        )
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q5, &o),
        )
        .watches(
            Api::<PartialObjectMeta<ReplicationController>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q6, &o),
        )
        // The workload kinds quotas commonly count (`count/replicasets.apps`, ...), which
        // kube's quota monitor follows too.
        .watches(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q7, &o),
        )
        .watches(
            Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q8, &o),
        )
        .watches(
            Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q9, &o),
        )
        .watches(
            Api::<PartialObjectMeta<DaemonSet>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q10, &o),
        )
        .watches(
            Api::<PartialObjectMeta<Job>>::all(client.clone()),
            cfg(),
            move |o| quotas_of(&q11, &o),
        )
        .watches(
            Api::<PartialObjectMeta<CronJob>>::all(client),
            cfg(),
            move |o| quotas_of(&q12, &o),
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn error_policy(q: Arc<ResourceQuota>, e: &Error, _: Arc<Context>) -> Action {
    if matches!(e, Error::Api(kube::Error::Api(s)) if s.code == 409) {
        // Admission charged the quota meanwhile: count again.
        tracing::debug!(quota = %q.name_any(), "quota changed while counting");
        return Action::requeue(retry_after(e));
    }
    tracing::warn!(quota = %q.name_any(), namespace = ?q.namespace(), error = %e, "quota sync failed");
    Action::requeue(retry_after(e))
}

/// Where to list the objects of `group/plural`: known core kinds directly, others through
/// discovery (None when the API does not serve them).
async fn resource_of(client: &kube::Client, group: &str, plural: &str) -> Option<ApiResource> {
    if group.is_empty() {
        let erase = match plural {
            "pods" => ApiResource::erase::<Pod>(&()),
            "services" => ApiResource::erase::<Service>(&()),
            "persistentvolumeclaims" => ApiResource::erase::<PersistentVolumeClaim>(&()),
            "configmaps" => ApiResource::erase::<ConfigMap>(&()),
            "secrets" => ApiResource::erase::<Secret>(&()),
            "replicationcontrollers" => ApiResource::erase::<ReplicationController>(&()),
            "resourcequotas" => ApiResource::erase::<ResourceQuota>(&()),
            _ => {
                return kube::discovery::oneshot::pinned_group(
                    client,
                    &kube::core::GroupVersion::gv("", "v1"),
                )
                .await
                .ok()?
                .recommended_resources()
                .into_iter()
                .find(|(ar, _)| ar.plural == plural)
                .map(|(ar, _)| ar)
            }
        };
        return Some(erase);
    }
    kube::discovery::oneshot::group(client, group)
        .await
        .ok()?
        .recommended_resources()
        .into_iter()
        .find(|(ar, _)| ar.plural == plural)
        .map(|(ar, _)| ar)
}

/// What the namespace's objects use of every resource `quota` limits.
async fn used(ctx: &Context, quota: &ResourceQuota, ns: &str) -> Result<Usage, Error> {
    let spec = serde_json::to_value(quota.spec.clone().unwrap_or_default()).unwrap_or_default();
    let hard: BTreeSet<String> = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    let mut kinds: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for name in &hard {
        if let Some(kind) = quota::counted_kind(name) {
            kinds.entry(kind).or_default().push(name.clone());
        }
    }
    let now = Timestamp::now();
    let mut used = Usage::new();
    for ((group, plural), names) in kinds {
        for n in &names {
            used.insert(n.clone(), 0);
        }
        let Some(ar) = resource_of(&ctx.client, &group, &plural).await else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api.list(&params).await?;
            for obj in &page.items {
                let obj = serde_json::to_value(obj).unwrap_or(Value::Null);
                if !quota::covers(&spec, &group, &plural, &obj) {
                    continue;
                }
                let u = quota::usage(&group, &plural, &obj, now);
                for n in &names {
                    if let (Some(v), Some(total)) = (u.get(n), used.get_mut(n)) {
                        *total += v;
                    }
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => params = params.continue_token(&c),
                None => break,
            }
        }
    }
    Ok(used)
}

fn to_quantities(u: &Usage) -> BTreeMap<String, Quantity> {
    quota::to_list(u)
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Quantity(v.as_str()?.to_string()))))
        .collect()
}

#[tracing::instrument(skip_all, fields(kind = "ResourceQuota", namespace = ?quota.namespace(), name = %quota.name_any()))]
async fn reconcile(quota: Arc<ResourceQuota>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = quota.namespace().ok_or(Error::Missing("namespace"))?;
    let used = used(&ctx, &quota, &ns).await?;
    let hard = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    // Amounts compare by value: "1" and "1000m" are the same limit.
    let same = |a: &Option<BTreeMap<String, Quantity>>, b: &BTreeMap<String, Quantity>| {
        let parse = |m: &BTreeMap<String, Quantity>| -> Usage {
            m.iter()
                .map(|(k, v)| (k.clone(), crate::resources::quantity::milli(v)))
                .collect()
        };
        a.as_ref().map(parse) == Some(parse(b))
    };
    let status = quota.status.clone().unwrap_or_default();
    let used_list = to_quantities(&used);
    if same(&status.hard, &hard) && same(&status.used, &used_list) {
        return Ok(Action::requeue(FULL_RESYNC));
    }
    let mut updated = (*quota).clone();
    updated.status = Some(ResourceQuotaStatus {
        hard: Some(hard),
        used: Some(used_list),
    });
    Api::<ResourceQuota>::namespaced(ctx.client.clone(), &ns)
        .replace_status(&quota.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(Action::requeue(FULL_RESYNC))
}
