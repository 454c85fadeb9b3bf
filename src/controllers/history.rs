//! Template revisions as ControllerRevisions (DaemonSets and StatefulSets): one per
//! template, named `<owner>-<hash>`, holding a strategic-merge patch that puts the template
//! back (what `kubectl rollout undo` applies), numbered in order of use; history beyond
//! revisionHistoryLimit goes.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

use super::{Context, Error};

/// The label naming a pod's (and a revision's) template hash.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// One template revision as its owner wants it kept.
pub struct Revision {
    /// `<owner>-<hash>`.
    pub name: String,
    pub hash: String,
    /// The pod template (JSON).
    pub template: serde_json::Value,
    /// The template's labels (kubectl finds an owner's revisions by its selector).
    pub labels: BTreeMap<String, String>,
    pub history_limit: i32,
}

/// The revisions of an owner, oldest first.
pub async fn revisions(
    ctx: &Context,
    ns: &str,
    owner_uid: &str,
) -> Result<Vec<ControllerRevision>, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let mut mine: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == owner_uid)
        })
        .collect();
    mine.sort_by_key(|r| r.revision);
    Ok(mine)
}

/// The template a revision holds (None for data not written by us).
pub fn template_of(r: &ControllerRevision) -> Option<serde_json::Value> {
    let mut t = r.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    Some(t)
}

/// The ControllerRevision of the current template (made when missing, as the newest
/// revision; an older one reused by `rollout undo` becomes the newest again); history
/// beyond revisionHistoryLimit goes. Returns the current revision number.
pub async fn ensure_revision(
    ctx: &Context,
    ns: &str,
    want: &Revision,
    owner: &OwnerReference,
    keep: &[String],
) -> Result<ControllerRevision, Error> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let mut mine = revisions(ctx, ns, &owner.uid).await?;
    let newest = mine.iter().map(|r| r.revision).max().unwrap_or(0);
    let name = want.name.as_str();
    let current = match mine
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name))
    {
        Some(r) if r.revision == newest => r.clone(),
        Some(r) => {
            let patch = serde_json::json!({"revision": newest + 1});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let mut r = r.clone();
            r.revision = newest + 1;
            r
        }
        None => {
            let mut patch_template = want.template.clone();
            if let Some(o) = patch_template.as_object_mut() {
                o.insert("$patch".into(), serde_json::json!("replace"));
            }
            let mut labels = want.labels.clone();
            labels.insert(REVISION_HASH.into(), want.hash.clone());
            let rev = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some(labels),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                data: Some(RawExtension(
                    serde_json::json!({"spec": {"template": patch_template}}),
                )),
                revision: newest + 1,
            };
            match api.create(&PostParams::default(), &rev).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            mine.push(rev.clone());
            rev
        }
    };
    // History beyond the limit goes, oldest first; revisions still in use stay.
    let limit = want.history_limit.max(0) as usize;
    let old: Vec<&ControllerRevision> = mine
        .iter()
        .filter(|r| {
            r.metadata
                .name
                .as_ref()
                .is_some_and(|n| n != name && !keep.contains(n))
        })
        .collect();
    if old.len() > limit {
        for r in &old[..old.len() - limit] {
            if let Some(n) = r.metadata.name.as_deref() {
                match api.delete(n, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(current)
}
