//! The ReplicaSet controller (and the sync the ReplicationController controller shares): keeps `spec.replicas` pods matching the template running,
//! creating them (owned by the ReplicaSet) or deleting the extra ones (not yet running ones
//! first), and reports replicas, ready and available counts in the status.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(rs: Arc<ReplicaSet>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(replicaset = %rs.name_any(), namespace = ?rs.namespace(), error = %e, "reconcile failed");
    Action::requeue(retry_after(e))
}

/// A label selector as a LIST query (`a=b,c in (d)`).
pub fn selector_query(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Pods of `owner`: those whose controller reference is its uid.
pub fn owned_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Whether no controller owns the pod.
fn is_orphan(pod: &Pod) -> bool {
    !pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true))
}

/// Makes `owner` the pod's controller (a strategic merge by uid, pinned to the pod's uid);
/// None when the pod changed or went meanwhile.
async fn adopt(
    pods: &Api<Pod>,
    pod: &Pod,
    owner: &OwnerReference,
) -> Result<Option<Pod>, kube::Error> {
    let patch =
        serde_json::json!({"metadata": {"ownerReferences": [owner], "uid": pod.metadata.uid}});
    match pods
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(p) => Ok(Some(p)),
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletion preference, kube's order: unscheduled, then pending, then not ready, first.
fn deletion_rank(pod: &Pod) -> (u8, u8, u8) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    (
        u8::from(scheduled),
        u8::from(phase != Some("Pending")),
        u8::from(is_ready(pod)),
    )
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "ReplicaSet", namespace = ?rs.namespace(), name = %rs.name_any()))]
async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = rs.namespace().ok_or(Error::Missing("namespace"))?;
    let name = rs.name_any();
    let spec = rs.spec.clone().ok_or(Error::Missing("spec"))?;
    let view = Replicated {
        api_version: ReplicaSet::api_version(&()).to_string(),
        kind: ReplicaSet::kind(&()).to_string(),
        component: "replicaset-controller",
        namespace: ns.clone(),
        name: name.clone(),
        uid: rs.uid().ok_or(Error::Missing("uid"))?,
        deleting: rs.metadata.deletion_timestamp.is_some(),
        selector: spec.selector.clone(),
        replicas: spec.replicas.unwrap_or(1),
        template: spec.template.clone().unwrap_or_default(),
        reference: crate::client::events::reference(rs.as_ref()),
    };
    let counts = sync(&view, &ctx).await?;
    let status = ReplicaSetStatus {
        replicas: counts.replicas,
        fully_labeled_replicas: Some(counts.fully_labeled),
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.ready),
        observed_generation: rs.metadata.generation,
        conditions: None,
        terminating_replicas: None,
    };
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// A workload that keeps `replicas` copies of a pod template (ReplicaSet or
/// ReplicationController), as the shared sync sees it.
pub struct Replicated {
    pub api_version: String,
    pub kind: String,
    /// The component its events come from.
    pub component: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub deleting: bool,
    pub selector: LabelSelector,
    pub replicas: i32,
    pub template: PodTemplateSpec,
    pub reference: k8s_openapi::api::core::v1::ObjectReference,
}

/// What the status reports.
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled: i32,
    pub ready: i32,
}

/// Creates or deletes pods until `replicas` of the owner's are active; counts them.
pub async fn sync(w: &Replicated, ctx: &Context) -> Result<Counts, Error> {
    let (ns, name, uid) = (&w.namespace, &w.name, &w.uid);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = selector_query(&w.selector);
    let pods = pods_api
        .list(&ListParams::default().labels(&selector))
        .await?;
    let owner = OwnerReference {
        api_version: w.api_version.clone(),
        kind: w.kind.clone(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut mine: Vec<Pod> = Vec::new();
    for p in pods.items {
        if owned_by(&p, uid) {
            mine.push(p);
        } else if !w.deleting && is_orphan(&p) && p.metadata.deletion_timestamp.is_none() {
            // kube's controller ref manager: a matching pod no controller owns is adopted.
            if let Some(adopted) = adopt(&pods_api, &p, &owner).await? {
                mine.push(adopted);
            }
        }
    }
    let mut active: Vec<&Pod> = mine.iter().filter(|p| is_active(p)).collect();
    let want = w.replicas.max(0) as usize;
    let events = ctx.events.for_component(w.component);
    if !w.deleting {
        if active.len() < want {
            let template = &w.template;
            for _ in active.len()..want {
                let pod = Pod {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                        annotations: template
                            .metadata
                            .as_ref()
                            .and_then(|m| m.annotations.clone()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    spec: template.spec.clone(),
                    status: None,
                };
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        events
                            .normal(
                                &w.reference,
                                "SuccessfulCreate",
                                &format!("Created pod: {}", created.name_any()),
                            )
                            .await
                    }
                    Err(e) => {
                        events
                            .warning(
                                &w.reference,
                                "FailedCreate",
                                &format!("Error creating: {}", super::said(&e)),
                            )
                            .await;
                        return Err(e.into());
                    }
                }
            }
        } else if active.len() > want {
            active.sort_by_key(|p| deletion_rank(p));
            for p in &active[..active.len() - want] {
                match pods_api
                    .delete(&p.name_any(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {
                        events
                            .normal(
                                &w.reference,
                                "SuccessfulDelete",
                                &format!("Deleted pod: {}", p.name_any()),
                            )
                            .await
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    // Counts from what exists now (the next pod event brings the next reconcile).
    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let labels = w
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| labels.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .count() as i32;
    Ok(Counts {
        replicas: active.len() as i32,
        fully_labeled,
        ready,
    })
}
