//! DELETE and DELETECOLLECTION as kube-apiserver does them: preconditions, graceful deletion
//! of pods running on a node (deletionTimestamp now + grace; the kubelet finishes it),
//! finalizers (the object stays, marked, until they are gone), propagationPolicy recorded as
//! the garbage collector's finalizers, and namespaces that go Terminating first.
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::super::objects;
use super::super::resources::Resource;
use super::super::status::ApiError;
use super::{ListOptions, Registry};

/// Namespaces kube's NamespaceLifecycle admission never lets go.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// metav1.DeleteOptions, from the body and the query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads a decoded DeleteOptions body.
    pub fn from_value(v: &Value) -> Result<Self, ApiError> {
        let mut o = DeleteOptions {
            grace_period_seconds: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation_policy: v
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string),
            precondition_uid: v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            precondition_resource_version: v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
            dry_run: v
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|m| m.iter().any(|x| x == "All")),
        };
        // The deprecated orphanDependents maps onto a policy.
        if o.propagation_policy.is_none() {
            match v.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => o.propagation_policy = Some("Orphan".into()),
                Some(false) => o.propagation_policy = Some("Background".into()),
                None => {}
            }
        }
        if let Some(p) = &o.propagation_policy {
            if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""),
                ));
            }
        }
        Ok(o)
    }
}

fn add_finalizer(obj: &mut Value, f: &str) {
    let meta = &mut obj["metadata"];
    if !meta.get("finalizers").is_some_and(Value::is_array) {
        meta["finalizers"] = json!([]);
    }
    if let Some(list) = meta["finalizers"].as_array_mut() {
        if !list.iter().any(|x| x == f) {
            list.push(json!(f));
        }
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty())
}

/// What DELETE answers for a removed object: the object for the kinds kube returns it for,
/// a Success Status otherwise.
fn deleted_answer(r: &Resource, obj: Value, name: &str) -> Value {
    if matches!(
        r.plural,
        "pods" | "services" | "namespaces" | "customresourcedefinitions"
    ) {
        return obj;
    }
    let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
    let mut details = json!({ "name": name, "kind": r.plural, "uid": uid });
    if !r.group.is_empty() {
        details["group"] = json!(r.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

impl Registry {
    /// DELETE: without preconditions, a write that lost a race with another (a controller
    /// writing status while a finalizer or deletionTimestamp is added) is tried again on
    /// the new object, as kube's guaranteed update does; with them, the conflict is the
    /// client's.
    pub async fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(StatusCode, Value), ApiError> {
        let retry = opts.precondition_uid.is_none() && opts.precondition_resource_version.is_none();
        let mut attempts = 0;
        loop {
            match self.delete_once(r, ns, name, opts).await {
                Err(e) if retry && e.reason == "Conflict" && attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    async fn delete_once(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(StatusCode, Value), ApiError> {
        let key = r.key(ns, name);
        let (current, mut obj) = self.current(r, ns, name).await?;
        if let Some(uid) = &opts.precondition_uid {
            let actual = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict(r.group, r.plural, name).with_message(format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}",
                    r.plural
                )));
            }
        }
        if let Some(rv) = &opts.precondition_resource_version {
            if *rv != current.mod_revision.to_string() {
                return Err(ApiError::conflict(r.group, r.plural, name).with_message(format!(
                    "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    r.plural, current.mod_revision
                )));
            }
        }
        if let Some(req) = self.admission(r, "", "DELETE", ns, name) {
            self.webhooks.validate(self, &req, None, Some(&obj)).await?;
        }
        if r.group.is_empty() && r.plural == "namespaces" {
            return self
                .delete_namespace(r, key, current.mod_revision, obj, name)
                .await;
        }
        let was_deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let mut changed = false;
        match opts.propagation_policy.as_deref() {
            Some("Foreground") => {
                add_finalizer(&mut obj, "foregroundDeletion");
                changed = true;
            }
            Some("Orphan") => {
                add_finalizer(&mut obj, "orphan");
                changed = true;
            }
            _ => {}
        }
        // Graceful deletion: a pod on a node is stopped by its kubelet, which then deletes it
        // with a zero grace period.
        let grace = if r.group.is_empty() && r.plural == "pods" {
            let scheduled = obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let terminal = matches!(
                obj.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            let requested = opts.grace_period_seconds.unwrap_or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            if !scheduled || terminal {
                0
            } else {
                requested.max(0)
            }
        } else {
            0
        };
        let pending_grace = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        if grace > 0 && pending_grace.is_none_or(|g| grace < g) {
            let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(grace);
            obj["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(at));
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            changed = true;
        } else if grace == 0 && pending_grace.is_some_and(|g| g > 0) {
            // A forced deletion (grace 0) of a pod already terminating.
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            changed = true;
        }
        if r.group == "apiextensions.k8s.io"
            && r.plural == "customresourcedefinitions"
            && !was_deleting
        {
            // Held until its custom resources are gone (`crd` reconciles).
            add_finalizer(
                &mut obj,
                crate::apiserver::crd::definition::CLEANUP_FINALIZER,
            );
            changed = true;
        }
        let waits = has_finalizers(&obj) || grace > 0;
        if !waits {
            let gone = self
                .remove(r, &key, current.mod_revision, &obj, name)
                .await?;
            return Ok((StatusCode::OK, deleted_answer(r, gone, name)));
        }
        if !was_deleting && obj.pointer("/metadata/deletionTimestamp").is_none() {
            obj["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            changed = true;
        }
        if !changed {
            return Ok((
                StatusCode::OK,
                objects::with_resource_version(obj, current.mod_revision),
            ));
        }
        let revision = self
            .put_guarded(r, name, key, current.mod_revision, &obj)
            .await?;
        Ok((
            StatusCode::OK,
            objects::with_resource_version(obj, revision),
        ))
    }

    /// Namespaces go Terminating for the namespace controller to empty and finalize; one whose
    /// finalizers are already done goes at once.
    async fn delete_namespace(
        &self,
        r: &Resource,
        key: Vec<u8>,
        mod_revision: i64,
        mut obj: Value,
        name: &str,
    ) -> Result<(StatusCode, Value), ApiError> {
        if IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let spec_done = obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if spec_done && !has_finalizers(&obj) {
            let gone = self.remove(r, &key, mod_revision, &obj, name).await?;
            return Ok((StatusCode::OK, gone));
        }
        if obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok((
                StatusCode::OK,
                objects::with_resource_version(obj, mod_revision),
            ));
        }
        obj["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
        obj["status"] = json!({"phase": "Terminating"});
        let revision = self.put_guarded(r, name, key, mod_revision, &obj).await?;
        Ok((
            StatusCode::OK,
            objects::with_resource_version(obj, revision),
        ))
    }

    /// DELETECOLLECTION: every object the selectors match, one by one, as kube does.
    pub async fn delete_collection(
        &self,
        r: &Resource,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let page = self.list(r, ns, list).await?;
        let mut deleted = Vec::new();
        for obj in page.items {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let item_ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string);
            match self.delete(r, item_ns.as_deref(), &name, opts).await {
                Ok((_, v)) => deleted.push(v),
                Err(e) if e.code == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": {},
            "items": deleted.into_iter().filter(|v| v.get("kind") != Some(&json!("Status"))).collect::<Vec<_>>(),
        }))
    }
}
