//! The StatefulSet controller: pods with stable identities `<set>-<ordinal>` (from
//! `spec.ordinals.start`), each with hostname = its name and subdomain = `serviceName` (so
//! the headless Service gives it a DNS name), its own PersistentVolumeClaims
//! `<template>-<set>-<ordinal>` from volumeClaimTemplates made before it and kept after it
//! (unless persistentVolumeClaimRetentionPolicy says Delete). OrderedReady creates in
//! ordinal order, each once its predecessors are Running and Ready, and removes from the
//! highest ordinal one at a time; Parallel does both at once. Templates are
//! ControllerRevisions; RollingUpdate replaces pods from the highest ordinal down to
//! `partition`, one at a time and only while all are Ready; OnDelete waits for deletions.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::history::{self, REVISION_HASH};
use super::replicaset::{owned_by, selector_query};
use super::{retry_after, Context, Error};

/// The label with a pod's name (a Service can select one member).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    Controller::new(
        Api::<StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(sts: Arc<StatefulSet>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(statefulset = %sts.name_any(), namespace = ?sts.namespace(), error = %e, "reconcile failed");
    Action::requeue(retry_after(e))
}

/// The ordinal of a member pod (`<set>-<n>`).
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|n: &i32| *n >= 0)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running_and_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && is_ready(p)
        && p.metadata.deletion_timestamp.is_none()
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.labels().get(REVISION_HASH).map(String::as_str)
}

/// The claim name of one template for one member.
fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The member pod for `ordinal` from `template` (at revision `revision`).
fn member_pod(
    sts: &StatefulSet,
    template: &PodTemplateSpec,
    ordinal: i32,
    revision: &str,
    owner: &OwnerReference,
) -> Pod {
    let set = sts.name_any();
    let name = format!("{set}-{ordinal}");
    let spec_of_set = sts.spec.clone().unwrap_or_default();
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if !spec_of_set.service_name.as_deref().unwrap_or("").is_empty() {
        spec.subdomain = spec_of_set.service_name.clone();
    }
    // Each claim template becomes this member's own claim, replacing a volume of its name.
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for claim in spec_of_set.volume_claim_templates.iter().flatten() {
        let Some(cname) = claim.metadata.name.clone() else {
            continue;
        };
        volumes.retain(|v| v.name != cname);
        volumes.push(Volume {
            name: cname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&cname, &set, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Makes the member's claims that do not exist yet.
async fn ensure_claims(
    ctx: &Context,
    sts: &StatefulSet,
    ns: &str,
    ordinal: i32,
    owner: &OwnerReference,
) -> Result<(), Error> {
    let spec = sts.spec.clone().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let set = sts.name_any();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    for claim in spec.volume_claim_templates.iter().flatten() {
        let Some(cname) = claim.metadata.name.as_deref() else {
            continue;
        };
        let name = claim_name(cname, &set, ordinal);
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut labels = claim.metadata.labels.clone().unwrap_or_default();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                annotations: claim.metadata.annotations.clone(),
                // whenDeleted: Delete → the claim goes with the set (not as its controller).
                owner_references: delete_with_set.then(|| {
                    vec![OwnerReference {
                        controller: None,
                        ..owner.clone()
                    }]
                }),
                ..Default::default()
            },
            spec: claim.spec.clone(),
            status: None,
        };
        match api.create(&PostParams::default(), &pvc).await {
            Ok(_) => tracing::info!(statefulset = %set, claim = %name, "created a claim"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes a member's claims (whenScaled: Delete, after a scale-down removed it).
async fn delete_claims(
    ctx: &Context,
    sts: &StatefulSet,
    ns: &str,
    ordinal: i32,
) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let set = sts.name_any();
    for claim in sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .into_iter()
        .flatten()
    {
        let Some(cname) = claim.metadata.name.as_deref() else {
            continue;
        };
        super::unless_missing(
            api.delete(&claim_name(cname, &set, ordinal), &DeleteParams::default())
                .await,
        )?;
    }
    Ok(())
}

async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<(), Error> {
    super::unless_missing(api.delete(name, &DeleteParams::default()).await)?;
    Ok(())
}

#[tracing::instrument(name = "reconcile", level = "debug", skip_all, fields(kind = "StatefulSet", namespace = ?sts.namespace(), name = %sts.name_any()))]
async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = sts.namespace().ok_or(Error::Missing("namespace"))?;
    let name = sts.name_any();
    let uid = sts.uid().ok_or(Error::Missing("uid"))?;
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = sts.spec.clone().ok_or(Error::Missing("spec"))?;
    let owner = OwnerReference {
        api_version: StatefulSet::api_version(&()).to_string(),
        kind: StatefulSet::kind(&()).to_string(),
        name: name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let old_status = sts.status.clone().unwrap_or_default();

    // Revisions: the template now (update) and the one the set was at (current).
    let template_json = serde_json::to_value(&spec.template).unwrap_or_default();
    let hash = super::template_hash::compute(&template_json, old_status.collision_count);
    let update_revision = format!("{name}-{hash}");
    let current_revision = old_status
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.clone());
    let update = history::ensure_revision(
        &ctx,
        &ns,
        &history::Revision {
            name: update_revision.clone(),
            hash: update_revision.clone(),
            template: template_json.clone(),
            labels: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default(),
            history_limit: spec.revision_history_limit.unwrap_or(10),
        },
        &owner,
        std::slice::from_ref(&current_revision),
    )
    .await?;
    let current_template: PodTemplateSpec = if current_revision == update_revision {
        spec.template.clone()
    } else {
        history::revisions(&ctx, &ns, &uid)
            .await?
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(current_revision.as_str()))
            .and_then(history::template_of)
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_else(|| spec.template.clone())
    };

    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut members: BTreeMap<i32, Pod> = BTreeMap::new();
    for p in pods_api
        .list(&ListParams::default().labels(&selector_query(&spec.selector)))
        .await?
        .items
        .into_iter()
        .filter(|p| owned_by(p, &uid))
    {
        if let Some(o) = ordinal_of(&name, &p.name_any()) {
            members.insert(o, p);
        }
    }
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let wanted = start..start + replicas;
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let mut changed = false;

    // 1. Members in range, in ordinal order.
    for ordinal in wanted.clone() {
        match members.get(&ordinal) {
            None => {
                // New members below the partition keep the current revision.
                let (template, revision) =
                    if rolling && ordinal < partition && current_revision != update_revision {
                        (&current_template, current_revision.as_str())
                    } else {
                        (&spec.template, update_revision.as_str())
                    };
                ensure_claims(&ctx, &sts, &ns, ordinal, &owner).await?;
                let pod = member_pod(&sts, template, ordinal, revision, &owner);
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        tracing::info!(statefulset = %name, ordinal, "created a member");
                        ctx.events
                            .for_component("statefulset-controller")
                            .normal(
                                &crate::client::events::reference(sts.as_ref()),
                                "SuccessfulCreate",
                                &format!(
                                    "create Pod {name}-{ordinal} in StatefulSet {name} successful"
                                ),
                            )
                            .await;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                changed = true;
                if !parallel {
                    break;
                }
            }
            Some(p) => {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Failed" | "Succeeded"))
                    && p.metadata.deletion_timestamp.is_none()
                {
                    // A member that ended is made again (same name, same claims).
                    delete_pod(&pods_api, &p.name_any()).await?;
                    changed = true;
                    if !parallel {
                        break;
                    }
                }
                if !parallel && !running_and_ready(p) {
                    // OrderedReady: the next waits for this one.
                    break;
                }
            }
        }
    }

    // 2. Members out of range go, highest first (one at a time unless Parallel), once
    //    every remaining member is healthy.
    let condemned: Vec<(i32, Pod)> = members
        .iter()
        .rev()
        .filter(|(o, _)| !wanted.contains(o))
        .map(|(o, p)| (*o, p.clone()))
        .collect();
    let healthy = members
        .iter()
        .filter(|(o, _)| wanted.contains(o))
        .all(|(_, p)| running_and_ready(p));
    let scale_delete = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        == Some("Delete");
    for (ordinal, p) in &condemned {
        if p.metadata.deletion_timestamp.is_some() {
            if !parallel {
                break;
            }
            continue;
        }
        if !parallel && !healthy {
            break;
        }
        delete_pod(&pods_api, &p.name_any()).await?;
        ctx.events
            .for_component("statefulset-controller")
            .normal(
                &crate::client::events::reference(sts.as_ref()),
                "SuccessfulDelete",
                &format!(
                    "delete Pod {} in StatefulSet {name} successful",
                    p.name_any()
                ),
            )
            .await;
        if scale_delete {
            delete_claims(&ctx, &sts, &ns, *ordinal).await?;
        }
        tracing::info!(statefulset = %name, ordinal, "removed a member");
        changed = true;
        if !parallel {
            break;
        }
    }

    // 3. Rolling update: from the highest ordinal down to the partition, one member at a
    //    time, only while every member is Running and Ready.
    let all_ready = wanted
        .clone()
        .all(|o| members.get(&o).is_some_and(running_and_ready));
    if rolling && condemned.is_empty() && all_ready {
        if let Some((o, p)) = members
            .iter()
            .rev()
            .filter(|(o, _)| wanted.contains(o) && **o >= partition)
            .find(|(_, p)| revision_of(p) != Some(update_revision.as_str()))
        {
            delete_pod(&pods_api, &p.name_any()).await?;
            tracing::info!(statefulset = %name, ordinal = o, revision = %update_revision, "replacing a member with the new revision");
            changed = true;
        }
    }

    // Status.
    let live: Vec<&Pod> = members
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready = live.iter().filter(|p| is_ready(p)).count() as i32;
    let at = |rev: &str| live.iter().filter(|p| revision_of(p) == Some(rev)).count() as i32;
    let updated = at(&update_revision);
    let mut current_rev = current_revision.clone();
    let mut current = at(&current_revision);
    if updated == replicas && ready == replicas && live.len() as i32 == replicas {
        // Everyone is at the new revision: it becomes the current one.
        current_rev = update_revision.clone();
        current = updated;
    }
    let status = StatefulSetStatus {
        available_replicas: Some(ready),
        collision_count: old_status.collision_count,
        conditions: old_status.conditions.clone(),
        current_replicas: Some(current),
        current_revision: Some(current_rev),
        observed_generation: sts.metadata.generation,
        ready_replicas: Some(ready),
        replicas: live.len() as i32,
        update_revision: Some(update_revision.clone()),
        updated_replicas: Some(updated),
    };
    if sts.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({"status": status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    tracing::debug!(statefulset = %name, revision = update.revision, ready, updated, "reconciled");
    Ok(Action::requeue(if changed {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(300)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_have_stable_names_hosts_and_claims() {
        let sts: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "u"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}],
                    "volumes": [{"name": "data", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}
        }))
        .unwrap();
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: "db".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let template = sts.spec.as_ref().unwrap().template.clone();
        let p = member_pod(&sts, &template, 2, "db-abc", &owner);
        assert_eq!(p.metadata.name.as_deref(), Some("db-2"));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("db-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-db-2"
        );
        assert_eq!(
            p.labels().get(POD_INDEX_LABEL).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            p.labels().get(REVISION_HASH).map(String::as_str),
            Some("db-abc")
        );
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "dbx-1"), None);
        assert_eq!(ordinal_of("db", "db-1-x"), None);
    }
}
