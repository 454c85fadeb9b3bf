//! CustomResourceDefinitions: the resources they define, served like built-in ones. The
//! catalog (`CustomResources`) follows the CRDs in the store and holds a resource row per
//! served version; the handlers look rows up in it after the built-in table. Its reconciler
//! does what kube's apiextensions controllers do: accepts names (or reports the conflict),
//! marks the CRD Established, records stored versions, and empties a deleted CRD of its
//! objects before letting it go.
pub mod columns;
pub mod definition;
pub mod openapi;
pub mod schema;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::definition::{condition, CLEANUP_FINALIZER};
use super::follow::{self, Change};
use super::objects;
use super::openapi::FieldValidation;
use super::registry::{DeleteOptions, ListOptions, Registry};
use super::resources::{self, Resource};
use super::status::ApiError;
use super::strategy::Write;
use super::validation::FieldErrors;

pub use self::definition::CustomKind;

/// The served custom resources, shared by the handlers and the reconciler.
#[derive(Clone)]
pub struct CustomResources {
    inner: Arc<RwLock<Catalog>>,
    /// Bumped on every change of the CRDs, so the reconciler wakes.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Catalog {
    /// The CRDs by store key.
    crds: BTreeMap<Vec<u8>, Value>,
    /// One row per served version of each established CRD, versions in kube's order.
    rows: Vec<Resource>,
}

impl Default for CustomResources {
    fn default() -> Self {
        CustomResources {
            inner: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

fn crd_resource() -> Result<&'static Resource, ApiError> {
    resources::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("the CustomResourceDefinition resource is missing"))
}

/// The rows of a set of CRDs, grouped by group with versions in kube's priority order.
fn rows_of<'a>(crds: impl Iterator<Item = &'a Value>) -> Vec<Resource> {
    let mut rows: Vec<Resource> = crds.flat_map(definition::served).collect();
    rows.sort_by(|a, b| {
        a.group
            .cmp(b.group)
            .then_with(|| definition::version_order(a.version, b.version))
            .then_with(|| a.plural.cmp(b.plural))
    });
    rows
}

impl CustomResources {
    /// The row of a served custom resource.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        let c = self.inner.read().ok()?;
        c.rows
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// As `find`, reading the CRDs from the store when the catalog does not have the row
    /// yet: a client that saw a CRD become Established may ask before the catalog's watch
    /// has delivered that change.
    pub async fn find_fresh(
        &self,
        registry: &Registry,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Resource> {
        if let Some(r) = self.find(group, version, plural) {
            return Some(r);
        }
        // Only names that could be a CRD's (the group has a dot) are worth a read.
        if !group.contains('.') {
            return None;
        }
        let page = registry
            .list(crd_resource().ok()?, None, &ListOptions::all())
            .await
            .ok()?;
        rows_of(page.items.iter())
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// Every served custom resource row.
    pub fn rows(&self) -> Vec<Resource> {
        self.inner
            .read()
            .map(|c| c.rows.clone())
            .unwrap_or_default()
    }

    fn apply(&self, change: Change) {
        let Ok(mut c) = self.inner.write() else {
            return;
        };
        change.apply_to(&mut c.crds);
        c.rows = rows_of(c.crds.values());
        drop(c);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Follows the CRDs and reconciles their status until `shutdown`.
    pub async fn run(self, registry: Registry, shutdown: CancellationToken) {
        let Ok(r) = crd_resource() else {
            return;
        };
        let catalog = self.clone();
        let followed = follow::follow(r, registry.clone(), shutdown.clone(), move |change| {
            catalog.apply(change)
        });
        tokio::join!(followed, self.reconcile(registry, shutdown));
    }

    /// Brings every CRD's status (and a deleted CRD's objects) to what it should be; again on
    /// every change, and every second while something is left to do.
    async fn reconcile(&self, registry: Registry, shutdown: CancellationToken) {
        let mut changed = self.changed.subscribe();
        loop {
            let crds: Vec<Value> = self
                .inner
                .read()
                .map(|c| c.crds.values().cloned().collect())
                .unwrap_or_default();
            let mut pending = false;
            for crd in &crds {
                let name = crd
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let span = tracing::debug_span!("crd", name);
                let _e = span.enter();
                match reconcile_one(&registry, crd, &crds).await {
                    Ok(done) => pending |= !done,
                    Err(e) => {
                        tracing::debug!(error = %e, "CRD not reconciled yet");
                        pending = true;
                    }
                }
            }
            let wait = if pending {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(300)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Decoding a custom resource as kube does: metadata as an ObjectMeta, the rest pruned to
/// the schema with defaults filled in; unknown fields are warnings, or (Strict) the error.
pub fn decode(
    r: &Resource,
    obj: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(custom) = &r.custom else {
        return Ok(Vec::new());
    };
    let cannot_handle = |detail: &str| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {detail}",
            r.kind, r.version, r.kind
        ))
    };
    let mut unknown = Vec::new();
    openapi_meta(r.kind, obj, &mut unknown).map_err(|e| cannot_handle(&e.message))?;
    if let (Some(schema), Some(o)) = (&custom.schema, obj.as_object_mut()) {
        // apiVersion, kind and metadata are the server's, whatever the schema says.
        let held: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .iter()
            .filter_map(|k| o.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        let mut rest = Value::Object(std::mem::take(o));
        schema.prune_and_default(&mut rest, "", &mut unknown);
        if let Value::Object(m) = rest {
            *o = m;
        }
        o.extend(held);
    }
    validation.outcome(r.kind, r.version, &unknown)
}

fn openapi_meta(kind: &str, obj: &mut Value, unknown: &mut Vec<String>) -> Result<(), ApiError> {
    super::openapi::normalize_metadata(kind, obj, unknown)
}

/// A custom resource's values checked against its schema (422 Invalid with kube's field
/// errors); creates are refused while its CRD is being deleted.
pub fn validate(r: &Resource, obj: &Value, errs: &mut FieldErrors) {
    let Some(schema) = r.custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return;
    };
    let mut rest = obj.clone();
    if let Some(o) = rest.as_object_mut() {
        for k in ["apiVersion", "kind", "metadata"] {
            o.remove(k);
        }
    }
    schema.validate(&rest, "", errs);
}

fn cond(ty: &str, status: &str, reason: &str, message: &str, old: &Value) -> Value {
    // The transition time stays while the status does.
    let since = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
        })
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(objects::now_rfc3339()));
    json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
}

/// The status a CRD should have given the others (names are first come, first served).
fn desired_status(crd: &Value, all: &[Value]) -> Value {
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let group = s(crd, "/spec/group");
    let name = s(crd, "/metadata/name");
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let plural = s(&names, "/plural");
    let kind = s(&names, "/kind");
    let conflict = all.iter().find_map(|other| {
        if s(other, "/metadata/name") == name || s(other, "/spec/group") != group {
            return None;
        }
        if s(other, "/status/acceptedNames/plural") == plural {
            return Some(format!("\"{plural}\" is already in use"));
        }
        if s(other, "/status/acceptedNames/kind") == kind {
            return Some(format!("\"{kind}\" is already in use"));
        }
        None
    });
    let mut status = crd.get("status").cloned().unwrap_or(json!({}));
    let mut conditions = Vec::new();
    match &conflict {
        Some(msg) => {
            conditions.push(cond("NamesAccepted", "False", "NameConflict", msg, crd));
            if !definition::established(crd) {
                conditions.push(cond(
                    "Established",
                    "False",
                    "NotAccepted",
                    "not all names are accepted",
                    crd,
                ));
            } else {
                conditions.push(cond(
                    "Established",
                    "True",
                    "InitialNamesAccepted",
                    "the initial names have been accepted",
                    crd,
                ));
            }
        }
        None => {
            status["acceptedNames"] = names.clone();
            conditions.push(cond(
                "NamesAccepted",
                "True",
                "NoConflicts",
                "no conflicts found",
                crd,
            ));
            conditions.push(cond(
                "Established",
                "True",
                "InitialNamesAccepted",
                "the initial names have been accepted",
                crd,
            ));
        }
    }
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        conditions.push(cond(
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            crd,
        ));
    }
    status["conditions"] = json!(conditions);
    if status.get("acceptedNames").is_none() {
        status["acceptedNames"] = json!({"plural": "", "kind": ""});
    }
    let mut stored: Vec<Value> = status
        .get("storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(v) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        })
        .and_then(|v| v.get("name").cloned())
    {
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    status["storedVersions"] = json!(stored);
    status
}

/// Reconciles one CRD; Ok(true) when nothing is left to do for now.
async fn reconcile_one(registry: &Registry, crd: &Value, all: &[Value]) -> Result<bool, ApiError> {
    let r = crd_resource()?;
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let status = desired_status(crd, all);
    let mut crd = crd.clone();
    if crd.get("status") != Some(&status) {
        crd["status"] = status;
        crd = registry.update(r, None, name, crd, Write::Status).await?;
    }
    let deleting = crd.pointer("/metadata/deletionTimestamp").is_some();
    let finalizing = crd
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == CLEANUP_FINALIZER));
    if !(deleting && finalizing) {
        return Ok(true);
    }
    // Empty the CRD of its objects (they may wait on their own finalizers), then let it go.
    let mut remaining = 0;
    if condition(&crd, "Established") == Some("True") {
        if let Some(row) = definition::served(&crd).into_iter().next() {
            let page = registry.list(&row, None, &ListOptions::all()).await?;
            remaining = page.items.len();
            for obj in page.items {
                if obj.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
                let n = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match registry
                    .delete(&row, ns, n, &DeleteOptions::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code.as_u16() == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if remaining > 0 {
        tracing::debug!(remaining, "waiting for the custom resources to go");
        return Ok(false);
    }
    if let Some(f) = crd
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        f.retain(|x| x != CLEANUP_FINALIZER);
    }
    registry.update(r, None, name, crd, Write::Main).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, plural: &str, kind: &str) -> Value {
        json!({
            "metadata": {"name": name},
            "spec": {
                "group": "example.com",
                "names": {"plural": plural, "kind": kind},
                "versions": [{"name": "v1", "served": true, "storage": true}],
            },
        })
    }

    #[test]
    fn names_are_accepted_unless_another_crd_holds_them() {
        let first = crd("widgets.example.com", "widgets", "Widget");
        let status = desired_status(&first, std::slice::from_ref(&first));
        assert_eq!(status["acceptedNames"]["plural"], "widgets");
        assert_eq!(status["storedVersions"], json!(["v1"]));
        let mut accepted = first.clone();
        accepted["status"] = status;
        assert!(definition::established(&accepted));
        let rival = crd("gadgets.example.com", "gadgets", "Widget");
        let status = desired_status(&rival, &[accepted, rival.clone()]);
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(
            status["conditions"][0]["message"],
            "\"Widget\" is already in use"
        );
        assert_eq!(status["conditions"][1]["status"], "False");
    }
}
