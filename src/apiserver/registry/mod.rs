//! Generic storage of API objects on the datastore, with kube-apiserver's semantics:
//! create-if-absent, optimistic concurrency on resourceVersion, no-op updates that write
//! nothing, lists at one revision, namespace lifecycle (nothing is created in a missing or
//! terminating namespace) and allocations (a Service's IPs and ports) written in the same
//! transaction as their owner. The only module that writes `/registry` keys; what differs
//! per kind lives in `strategy`.
mod delete;
mod limits;
mod list;
mod node_restriction;
mod quota;
mod system_objects;

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::objects;
use super::resources::{self, Resource};
use super::status::ApiError;
use super::strategy::service_alloc::{self as service, ServiceNetwork};
use super::strategy::{self, Write};
use crate::store::datastore::Datastore;
use crate::store::types::*;

pub use self::delete::DeleteOptions;
pub use self::list::ListOptions;

#[derive(Clone)]
pub struct Registry {
    pub ds: Datastore,
    /// `dryRun=All`: every check runs, nothing is written.
    pub dry_run: bool,
    /// Who this request's writes are managed by (managedFields); the API server itself when
    /// None.
    manager: Option<Arc<str>>,
    /// The node (kubelet) this request comes from, for NodeRestriction's checks.
    node: Option<Arc<str>>,
    /// Who makes this request; admission webhooks are called only for users' requests
    /// (not for the API server's own writes).
    user: Option<Arc<super::auth::User>>,
    /// The admission webhooks, shared by every request.
    pub webhooks: super::admission_webhook::AdmissionWebhooks,
    pub services: Arc<ServiceNetwork>,
    /// LISTs and WATCHes answered from memory (`watch_cache`), filled once the server runs.
    pub cache: super::watch_cache::WatchCache,
    /// The lease events are currently attached to, and when it was granted.
    event_lease: Arc<std::sync::Mutex<Option<(i64, std::time::Instant)>>>,
}

/// How long events live (kube-apiserver's --event-ttl default).
const EVENT_TTL_SECONDS: i64 = 3600;
/// Events written within this window share one lease, as kube's lease manager does.
const EVENT_LEASE_REUSE: std::time::Duration = std::time::Duration::from_secs(60);

fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!(
            "stored object at {} is not valid JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })
}

fn encode(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(obj).unwrap_or_default()
}

/// Whether objects of `r` change apiVersion between the store and the client: a custom
/// resource served at several versions is stored at one (its conversion is None, so the
/// apiVersion is all that differs).
pub fn converts(r: &Resource) -> bool {
    r.custom
        .as_ref()
        .is_some_and(|c| c.multi_version || c.defaults_on_read)
        || is_events_v1(r)
}

/// events.k8s.io/v1 Events are core/v1 Events under other field names.
fn is_events_v1(r: &Resource) -> bool {
    r.group == "events.k8s.io" && r.plural == "events"
}

/// A stored object as `r` serves it.
pub fn served_at(r: &Resource, obj: &mut Value) {
    if is_events_v1(r) {
        *obj = strategy::event::to_v1(obj);
    } else if let Some(c) = &r.custom {
        if c.multi_version {
            obj["apiVersion"] = json!(r.api_version());
        }
        // Defaults apply to what was stored before they existed, as kube reads it.
        if let (true, Some(schema), Some(o)) = (c.defaults_on_read, &c.schema, obj.as_object_mut())
        {
            let held: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
                .iter()
                .filter_map(|k| o.remove(*k).map(|v| (k.to_string(), v)))
                .collect();
            let mut rest = Value::Object(std::mem::take(o));
            schema.fill_defaults(&mut rest);
            if let Value::Object(m) = rest {
                *o = m;
            }
            o.extend(held);
        }
    }
}

/// An object of `r` as it is stored.
fn encode_for(r: &Resource, obj: &Value) -> Vec<u8> {
    if is_events_v1(r) {
        return encode(&strategy::event::to_core(obj));
    }
    match &r.custom {
        Some(c) if c.multi_version => {
            let mut stored = obj.clone();
            stored["apiVersion"] = json!(format!("{}/{}", r.group, c.storage_version));
            encode(&stored)
        }
        _ => encode(obj),
    }
}

/// Objects are stored without resourceVersion (it is the key's mod revision).
fn strip_resource_version(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
}

impl Registry {
    pub fn new(ds: Datastore, services: ServiceNetwork) -> Self {
        Registry {
            ds,
            dry_run: false,
            manager: None,
            node: None,
            user: None,
            webhooks: super::admission_webhook::AdmissionWebhooks::default(),
            services: Arc::new(services),
            cache: super::watch_cache::WatchCache::default(),
            event_lease: Arc::default(),
        }
    }

    /// The store's events under `prefix` from revision `from` (what in-memory caches follow).
    pub fn watch_prefix(
        &self,
        prefix: Vec<u8>,
        from: i64,
        cancel: tokio_util::sync::CancellationToken,
    ) -> tokio::sync::mpsc::Receiver<crate::store::watch::WatchMessage> {
        self.ds.watch(
            crate::store::watch::WatchSpec {
                range_end: crate::store::types::prefix_end(&prefix),
                key: prefix,
                start_revision: from,
                ..Default::default()
            },
            cancel,
        )
    }

    /// The events under `prefix` from revision `from`: from the watch cache when it holds
    /// them, else from the store.
    pub fn watch_events(
        &self,
        prefix: Vec<u8>,
        from: i64,
        cancel: tokio_util::sync::CancellationToken,
    ) -> super::watch_cache::EventSource {
        use super::watch_cache::EventSource;
        if let Some(w) = self.cache.watch(&prefix, from) {
            return EventSource::Cache(w);
        }
        EventSource::Store(self.ds.watch(
            crate::store::watch::WatchSpec {
                range_end: crate::store::types::prefix_end(&prefix),
                key: prefix,
                start_revision: from,
                prev_kv: true,
                ..Default::default()
            },
            cancel,
        ))
    }

    /// This registry for one request, honouring its dryRun.
    pub fn for_request(&self, dry_run: bool) -> Registry {
        Registry {
            dry_run,
            ..self.clone()
        }
    }

    /// This registry writing as `manager` (the request's field manager).
    pub fn managed_by(mut self, manager: &str) -> Registry {
        self.manager = Some(Arc::from(manager));
        self
    }

    /// This registry writing for node `node` (a kubelet's request), or not.
    pub fn by_node(mut self, node: Option<&str>) -> Registry {
        self.node = node.map(Arc::from);
        self
    }

    /// This registry writing for `user` (admission webhooks see who asks).
    pub fn requested_by(mut self, user: &super::auth::User) -> Registry {
        self.user = Some(Arc::new(user.clone()));
        self
    }

    /// The request as admission webhooks see it, when a user makes it.
    fn admission<'a>(
        &'a self,
        r: &'a Resource,
        subresource: &'a str,
        operation: &'static str,
        ns: Option<&'a str>,
        name: &'a str,
    ) -> Option<super::admission_webhook::Request<'a>> {
        Some(super::admission_webhook::Request {
            r,
            subresource,
            operation,
            namespace: ns,
            name,
            user: self.user.as_deref()?,
            dry_run: self.dry_run,
        })
    }

    /// Admission of a CONNECT (`pods/exec`, `pods/attach`, `pods/portforward`): the
    /// webhooks see the options object.
    pub async fn admit_connect(
        &self,
        r: &Resource,
        subresource: &str,
        ns: &str,
        name: &str,
        options: &Value,
    ) -> Result<(), ApiError> {
        match self.admission(r, subresource, "CONNECT", Some(ns), name) {
            Some(req) => self.webhooks.connect(self, &req, options).await,
            None => Ok(()),
        }
    }

    fn manager(&self) -> &str {
        self.manager.as_deref().unwrap_or("kube-apiserver")
    }

    /// The lease a write of `r` attaches to: events expire after an hour; nothing else does.
    async fn lease_for(&self, r: &Resource) -> Result<i64, ApiError> {
        if !((r.group.is_empty() || is_events_v1(r)) && r.plural == "events") || self.dry_run {
            return Ok(0);
        }
        let reusable = self
            .event_lease
            .lock()
            .ok()
            .and_then(|l| *l)
            .filter(|(_, at)| at.elapsed() < EVENT_LEASE_REUSE);
        if let Some((id, _)) = reusable {
            return Ok(id);
        }
        // Two writers may both grant one here; the spare lease simply expires.
        let ttl = EVENT_TTL_SECONDS + EVENT_LEASE_REUSE.as_secs() as i64;
        let (id, _) = self.ds.lease_grant(0, ttl).await?;
        if let Ok(mut l) = self.event_lease.lock() {
            *l = Some((id, std::time::Instant::now()));
        }
        Ok(id)
    }

    /// Runs a write transaction; in a dry run only its compares are evaluated.
    async fn commit(&self, mut txn: TxnRequest) -> Result<TxnResponse, ApiError> {
        if self.dry_run {
            txn.success.clear();
            txn.failure.clear();
        }
        Ok(self.ds.txn(txn).await?)
    }

    async fn read(&self, key: Vec<u8>) -> Result<Option<KeyValue>, ApiError> {
        let r = self
            .ds
            .range(RangeRequest {
                key,
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    /// The stored object and its revision; 404 when absent.
    async fn current(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(KeyValue, Value), ApiError> {
        let kv = self
            .read(r.key(ns, name))
            .await?
            .ok_or_else(|| ApiError::not_found(r.group, r.plural, name))?;
        let mut obj = decode(&kv)?;
        served_at(r, &mut obj);
        Ok((kv, obj))
    }

    /// The stored objects of a core kind in one namespace (what admission consults:
    /// LimitRanges, ResourceQuotas).
    async fn stored_in(&self, plural: &str, ns: &str) -> Result<Vec<KeyValue>, ApiError> {
        let Some(r) = resources::find("", "v1", plural) else {
            return Ok(Vec::new());
        };
        let prefix = r.prefix(Some(ns));
        Ok(self
            .ds
            .range(RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                ..Default::default()
            })
            .await?
            .kvs)
    }

    /// Namespace lifecycle admission: the namespace must exist and not be terminating.
    async fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let Some(r) = resources::find("", "v1", "namespaces") else {
            return Ok(());
        };
        let Some(kv) = self.read(r.key(None, ns)).await? else {
            return Err(ApiError::not_found("", "namespaces", ns));
        };
        let obj = decode(&kv)?;
        if obj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    pub async fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let (kv, obj) = self.current(r, ns, name).await?;
        Ok(objects::with_resource_version(obj, kv.mod_revision))
    }

    pub async fn create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        objects::check_type(r, &mut obj)?;
        let name = {
            let m = objects::meta_mut(&mut obj)?;
            let name = match (
                m.get("name").and_then(Value::as_str),
                m.get("generateName").and_then(Value::as_str),
            ) {
                (Some(n), _) if !n.is_empty() => n.to_string(),
                (_, Some(prefix)) if !prefix.is_empty() => objects::generate_name(prefix),
                _ => {
                    return Err(ApiError::invalid(
                        r.kind,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ))
                }
            };
            m.insert("name".into(), json!(name));
            if r.namespaced {
                let ns = ns.ok_or_else(|| ApiError::bad_request("a namespace is required"))?;
                match m.get("namespace").and_then(Value::as_str) {
                    Some(given) if !given.is_empty() && given != ns => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ))
                    }
                    _ => {
                        m.insert("namespace".into(), json!(ns));
                    }
                }
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(objects::new_uid()));
            m.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
            for f in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(f);
            }
            name
        };
        objects::validate_name(r, &name)?;
        if let Some(ns) = ns.filter(|_| r.namespaced) {
            self.check_namespace(ns).await?;
        }
        // Field management sees the object as decoded and defaulted, before admission
        // changes it (kube's order).
        strategy::default_create(r, &mut obj)?;
        super::apply::track_update(r, None, &mut obj, self.manager(), "");
        if let Some(ns) = ns.filter(|_| r.namespaced) {
            self.admit_limits(r, ns, &name, &mut obj).await?;
        }
        if r.group.is_empty() && r.plural == "pods" {
            self.admit_priority(&name, &mut obj).await?;
        }
        if r.group.is_empty() && r.plural == "persistentvolumeclaims" {
            self.admit_default_class(&mut obj).await?;
        }
        let admission = self.admission(r, "", "CREATE", ns, &name);
        if let Some(req) = &admission {
            self.webhooks.mutate(self, req, &mut obj, None).await?;
        }
        protect_storage(r, &mut obj);
        strategy::admit_create(r, &mut obj)?;
        if let Some(node) = &self.node {
            node_restriction::admit(r, node, None, &obj, "")?;
        }
        if let Some(req) = &admission {
            self.webhooks.validate(self, req, Some(&obj), None).await?;
        }
        let key = r.key(ns, &name);
        let is_service = r.group.is_empty() && r.plural == "services";
        // Allocation can race another create for the same address: choose again then.
        let mut attempts = 0;
        loop {
            let mut obj = obj.clone();
            let given_ip = obj
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            let reserved = if is_service {
                service::allocate(&self.ds, &self.services, &mut obj, None).await?;
                service::reserved_keys(&self.services, &obj)
            } else {
                Vec::new()
            };
            let charges = match ns.filter(|_| r.namespaced) {
                Some(ns) => self.charge_quotas(r, ns, &name, &obj).await?,
                None => quota::Charges::default(),
            };
            let charged = !charges.compare.is_empty();
            let lease = self.lease_for(r).await?;
            let mut compare = vec![absent(&key)];
            let mut success = vec![put_leased(&key, encode_for(r, &obj), lease)];
            for k in &reserved {
                compare.push(absent(k));
                success.push(put(k, key.clone()));
            }
            compare.extend(charges.compare);
            success.extend(charges.success);
            let resp = self
                .commit(TxnRequest {
                    compare,
                    success,
                    failure: vec![],
                })
                .await?;
            if resp.succeeded {
                return Ok(objects::with_resource_version(obj, resp.revision));
            }
            if (reserved.is_empty() && !charged) || self.read(key.clone()).await?.is_some() {
                return Err(ApiError::already_exists(r.group, r.plural, &name));
            }
            attempts += 1;
            if charged && attempts < 20 {
                // A quota moved under us (another create charged it): count again.
                continue;
            }
            if given_ip || attempts >= 5 {
                // A port or address the client chose was taken in between.
                return Err(ApiError::conflict(r.group, r.plural, &name).with_message(format!(
                    "Service \"{name}\" could not be created: an address or port it needs was allocated concurrently; retry"
                )));
            }
        }
    }

    /// PUT of the object (`Write::Main`) or its status (`Write::Status`); a resourceVersion
    /// in the body must match the stored one. Without one the update is unconditional: a
    /// write that lost a race is applied again to the new object, as kube's guaranteed
    /// update does.
    pub async fn update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        write: Write,
    ) -> Result<Value, ApiError> {
        let unconditional = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if !unconditional {
            return self.update_once(r, ns, name, obj, write).await;
        }
        let mut attempts = 0;
        loop {
            match self.update_once(r, ns, name, obj.clone(), write).await {
                Err(e) if e.reason == "Conflict" && attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    async fn update_once(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        write: Write,
    ) -> Result<Value, ApiError> {
        objects::check_type(r, &mut obj)?;
        let key = r.key(ns, name);
        let (current, stored) = self.current(r, ns, name).await?;
        let expected: Option<i64> = {
            let m = objects::meta_mut(&mut obj)?;
            match m.get("name").and_then(Value::as_str) {
                Some(n) if n != name => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )))
                }
                _ => {}
            }
            m.insert("name".into(), json!(name));
            if r.namespaced {
                if let Some(ns) = ns {
                    m.insert("namespace".into(), json!(ns));
                }
            }
            match m.get("resourceVersion").and_then(Value::as_str) {
                Some(rv) if !rv.is_empty() => Some(rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
                _ => None,
            }
        };
        if let Some(rv) = expected {
            if rv != current.mod_revision {
                return Err(ApiError::conflict(r.group, r.plural, name));
            }
        }
        // Fields the server owns keep their stored values.
        if let (Some(m), Some(old)) = (
            obj.get_mut("metadata").and_then(Value::as_object_mut),
            stored.get("metadata"),
        ) {
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old.get(f) {
                    Some(v) => {
                        m.insert(f.into(), v.clone());
                    }
                    None => {
                        m.remove(f);
                    }
                }
            }
        }
        check_finalizers_while_deleting(r, &stored, &obj)?;
        // What the client sent gets the kind's defaults, as kube decodes every body (a
        // Namespace's come from its stored self).
        if write == Write::Main && !(r.group.is_empty() && r.plural == "namespaces") {
            strategy::kind_defaults(r, &mut obj)?;
        }
        let subresource = if write == Write::Status { "status" } else { "" };
        let admission = self.admission(r, subresource, "UPDATE", ns, name);
        if let Some(req) = &admission {
            self.webhooks
                .mutate(self, req, &mut obj, Some(&stored))
                .await?;
        }
        strategy::prepare_update(r, write, &stored, &mut obj)?;
        if let Some(node) = &self.node {
            node_restriction::admit(r, node, Some(&stored), &obj, subresource)?;
        }
        super::apply::track_update(r, Some(&stored), &mut obj, self.manager(), subresource);
        if let Some(req) = &admission {
            self.webhooks
                .validate(self, req, Some(&obj), Some(&stored))
                .await?;
        }
        let is_service = r.group.is_empty() && r.plural == "services";
        if is_service {
            service::allocate(&self.ds, &self.services, &mut obj, Some(&stored)).await?;
        }
        strip_resource_version(&mut obj);
        if obj == stored {
            // Nothing changed: nothing is written and the resourceVersion stays.
            return Ok(objects::with_resource_version(obj, current.mod_revision));
        }
        if deletion_complete(r, &obj) {
            // The last finalizer is gone from an object being deleted: it goes now.
            return self.remove(r, &key, current.mod_revision, &obj, name).await;
        }
        let lease = self.lease_for(r).await?;
        let mut compare = vec![at_revision(&key, current.mod_revision)];
        let mut success = vec![put_leased(&key, encode_for(r, &obj), lease)];
        if is_service {
            let old_keys = service::reserved_keys(&self.services, &stored);
            let new_keys = service::reserved_keys(&self.services, &obj);
            for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
                compare.push(absent(k));
                success.push(put(k, key.clone()));
            }
            for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
                success.push(del(k));
            }
        }
        let resp = self
            .commit(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        Ok(objects::with_resource_version(obj, resp.revision))
    }

    /// Deletes the object at `key` if still at `mod_revision`, with what it holds; answers
    /// with the object as it was.
    async fn remove(
        &self,
        r: &Resource,
        key: &[u8],
        mod_revision: Revision,
        obj: &Value,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut success = vec![del(key)];
        if r.group.is_empty() && r.plural == "services" {
            for k in service::reserved_keys(&self.services, obj) {
                success.push(del(&k));
            }
        }
        let resp = self
            .commit(TxnRequest {
                compare: vec![at_revision(key, mod_revision)],
                success,
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        Ok(objects::with_resource_version(obj.clone(), resp.revision))
    }

    /// Writes `obj` at `key` if the key is still at `mod_revision` (409 Conflict otherwise);
    /// returns the new revision.
    async fn put_guarded(
        &self,
        r: &Resource,
        name: &str,
        key: Vec<u8>,
        mod_revision: Revision,
        obj: &Value,
    ) -> Result<Revision, ApiError> {
        let resp = self
            .commit(TxnRequest {
                compare: vec![at_revision(&key, mod_revision)],
                success: vec![put(&key, encode_for(r, obj))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        Ok(resp.revision)
    }

    /// pods/binding: assigns a pending pod to a node.
    pub async fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<(), ApiError> {
        let Some(r) = resources::find("", "v1", "pods") else {
            return Err(ApiError::internal("pods are not served"));
        };
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid("Binding", name, "target.name", "Required value"))?;
        let (kv, mut pod) = self.current(r, Some(ns), name).await?;
        strategy::bind(&mut pod, node)?;
        self.put_guarded(r, name, r.key(Some(ns), name), kv.mod_revision, &pod)
            .await?;
        Ok(())
    }

    /// DefaultStorageClass admission: a claim that names no class at all (not even "") gets
    /// the class annotated as the default (the newest when several are).
    async fn admit_default_class(&self, pvc: &mut Value) -> Result<(), ApiError> {
        if pvc
            .pointer("/spec/storageClassName")
            .is_some_and(|c| !c.is_null())
        {
            return Ok(());
        }
        let Some(classes) = resources::find("storage.k8s.io", "v1", "storageclasses") else {
            return Ok(());
        };
        let default = self
            .list(classes, None, &ListOptions::all())
            .await?
            .items
            .into_iter()
            .filter(|c| {
                c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true")
            })
            .max_by_key(|c| {
                (
                    c.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    c.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                )
            });
        if let (Some(class), Some(spec)) = (
            default.and_then(|c| c.pointer("/metadata/name").cloned()),
            pvc.get_mut("spec").and_then(Value::as_object_mut),
        ) {
            spec.insert("storageClassName".into(), class);
        }
        Ok(())
    }

    /// Priority admission: a pod's priorityClassName (or the cluster's globalDefault class)
    /// becomes its priority and preemption policy; an unknown class is refused.
    async fn admit_priority(&self, name: &str, pod: &mut Value) -> Result<(), ApiError> {
        let Some(pcs) = resources::find("scheduling.k8s.io", "v1", "priorityclasses") else {
            return Ok(());
        };
        let class_name = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let class = match &class_name {
            Some(c) => match self.read(pcs.key(None, c)).await? {
                Some(kv) => Some(decode(&kv)?),
                None => {
                    return Err(ApiError::forbidden(format!(
                        "pods \"{name}\" is forbidden: no PriorityClass with name {c} was found"
                    )))
                }
            },
            None => self
                .list(pcs, None, &ListOptions::all())
                .await?
                .items
                .into_iter()
                .find(|pc| pc.get("globalDefault") == Some(&json!(true))),
        };
        let Some(class) = class else {
            return Ok(());
        };
        let value = class.get("value").and_then(Value::as_i64).unwrap_or(0);
        if let Some(given) = pod.pointer("/spec/priority").and_then(Value::as_i64) {
            if given != value {
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                )));
            }
        }
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("priority".into(), json!(value));
            spec.insert(
                "priorityClassName".into(),
                class
                    .pointer("/metadata/name")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            spec.insert(
                "preemptionPolicy".into(),
                class
                    .get("preemptionPolicy")
                    .cloned()
                    .unwrap_or(json!("PreemptLowerPriority")),
            );
        }
        Ok(())
    }
}

/// kube refuses new finalizers on an object that is being deleted.
fn check_finalizers_while_deleting(
    r: &Resource,
    stored: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    if stored.pointer("/metadata/deletionTimestamp").is_none() {
        return Ok(());
    }
    let list = |v: &Value| -> Vec<String> {
        v.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    let old = list(stored);
    if list(new).iter().any(|f| !old.contains(f)) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{} \"{}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                r.kind,
                objects::name_of(stored)
            ),
        ));
    }
    Ok(())
}

/// An object being deleted whose finalizers are all done (and whose grace period, for a
/// pod, the kubelet has already waited out) is removed at once.
fn deletion_complete(r: &Resource, obj: &Value) -> bool {
    // A namespace also waits for its own finalizers (spec.finalizers, the namespace
    // controller's `kubernetes`).
    let spec_done = !(r.group.is_empty() && r.plural == "namespaces")
        || obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    spec_done
        && obj.pointer("/metadata/deletionTimestamp").is_some()
        && obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

/// StorageObjectInUseProtection admission: claims and volumes are created with the finalizer
/// the protection controllers lift once nothing uses them, so deleting a claim a pod still
/// mounts (or a bound volume) waits instead of losing data.
fn protect_storage(r: &Resource, obj: &mut Value) {
    let finalizer = match (r.group, r.plural) {
        ("", "persistentvolumeclaims") => crate::resources::storage::PVC_PROTECTION,
        ("", "persistentvolumes") => crate::resources::storage::PV_PROTECTION,
        _ => return,
    };
    if !obj["metadata"]
        .get("finalizers")
        .is_some_and(Value::is_array)
    {
        obj["metadata"]["finalizers"] = json!([]);
    }
    if let Some(list) = obj["metadata"]["finalizers"].as_array_mut() {
        if !list.iter().any(|f| f == finalizer) {
            list.push(json!(finalizer));
        }
    }
}

fn absent(key: &[u8]) -> Compare {
    Compare {
        key: key.to_vec(),
        range_end: vec![],
        result: CompareResult::Equal,
        target: CompareTarget::CreateRevision(0),
    }
}

fn at_revision(key: &[u8], mod_revision: Revision) -> Compare {
    Compare {
        key: key.to_vec(),
        range_end: vec![],
        result: CompareResult::Equal,
        target: CompareTarget::ModRevision(mod_revision),
    }
}

fn put(key: &[u8], value: Vec<u8>) -> TxnOp {
    put_leased(key, value, 0)
}

fn put_leased(key: &[u8], value: Vec<u8>, lease: i64) -> TxnOp {
    TxnOp::Put(PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..Default::default()
    })
}

fn del(key: &[u8]) -> TxnOp {
    TxnOp::Delete(DeleteRequest {
        key: key.to_vec(),
        ..Default::default()
    })
}
