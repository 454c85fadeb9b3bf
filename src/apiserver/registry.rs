//! Generic storage of API objects on the datastore, with kube-apiserver's semantics:
//! create-if-absent, optimistic concurrency on resourceVersion, no-op updates that write
//! nothing, lists at one revision, and namespace lifecycle (nothing is created in a missing
//! or terminating namespace). The only module that writes `/registry` keys.
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::objects::{self, LabelSelector};
use super::resources::{self, Resource};
use super::status::ApiError;
use crate::store::datastore::Datastore;
use crate::store::types::*;

#[derive(Clone)]
pub struct Registry {
    pub ds: Datastore,
    /// `dryRun=All`: every check runs, nothing is written.
    pub dry_run: bool,
}

fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!(
                "stored object at {} is not valid JSON: {e}",
                String::from_utf8_lossy(&kv.key)
            ),
        )
    })
}

fn encode(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(obj).unwrap_or_default()
}

/// Objects are stored without resourceVersion (it is the key's mod revision).
fn strip_resource_version(obj: &mut Value) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
}

/// Namespaces kube's NamespaceLifecycle admission never lets go.
const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

pub struct ListOptions {
    pub selector: LabelSelector,
    /// 0: the current revision.
    pub revision: Revision,
    /// At most this many items (0: all), with a continue token for the rest.
    pub limit: i64,
    /// Where an earlier page stopped.
    pub continue_token: Option<String>,
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: Revision,
    /// Set when more items remain; pass it back as `continue`.
    pub continue_token: Option<String>,
}

/// The continue token: the revision every page is read at, and the key to go on after, as
/// kube's (base64 of a small JSON document).
fn encode_continue(revision: Revision, last_key: &[u8], prefix: &[u8]) -> String {
    use base64::Engine;
    let start = String::from_utf8_lossy(&last_key[prefix.len().min(last_key.len())..]).into_owned();
    let doc = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE.encode(doc.to_string())
}

fn decode_continue(token: &str) -> Result<(Revision, String), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|_| bad())?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = doc.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = doc.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rv, start.to_string()))
}

impl Registry {
    /// This registry for one request, honouring its dryRun.
    pub fn for_request(&self, dry_run: bool) -> Registry {
        Registry {
            ds: self.ds.clone(),
            dry_run,
        }
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
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }

    pub async fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let kv = self
            .read(r.key(ns, name))
            .await?
            .ok_or_else(|| ApiError::not_found(r.group, r.plural, name))?;
        Ok(objects::with_resource_version(
            decode(&kv)?,
            kv.mod_revision,
        ))
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
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            name
        };
        objects::validate_name(r, &name)?;
        normalize(r, &name, &mut obj)?;
        if let Some(ns) = ns.filter(|_| r.namespaced) {
            self.check_namespace(ns).await?;
        }
        defaults_on_create(r, &mut obj);
        let key = r.key(ns, &name);
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                range_end: vec![],
                result: CompareResult::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![TxnOp::Put(PutRequest {
                key,
                value: encode(&obj),
                ..Default::default()
            })],
            failure: vec![],
        };
        let resp = self.commit(txn).await?;
        if !resp.succeeded {
            return Err(ApiError::already_exists(r.group, r.plural, &name));
        }
        Ok(objects::with_resource_version(obj, resp.revision))
    }

    /// PUT: replaces the object; a resourceVersion in the body must match the stored one.
    pub async fn update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        objects::check_type(r, &mut obj)?;
        let key = r.key(ns, name);
        let current = self
            .read(key.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(r.group, r.plural, name))?;
        let stored = decode(&current)?;
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
        if r.plural == "namespaces" {
            // Status belongs to the status subresource and the namespace controller.
            if let Some(s) = stored.get("status") {
                obj["status"] = s.clone();
            }
        }
        normalize(r, name, &mut obj)?;
        if r.plural == "secrets" && obj.get("type") != stored.get("type") {
            return Err(ApiError::invalid(
                r.kind,
                name,
                "type",
                "Invalid value: field is immutable",
            ));
        }
        if stored.get("immutable") == Some(&json!(true)) {
            for f in ["data", "binaryData", "immutable"] {
                if obj.get(f) != stored.get(f) {
                    return Err(ApiError::invalid(
                        r.kind,
                        name,
                        f,
                        "Forbidden: field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        strip_resource_version(&mut obj);
        if obj == stored {
            // Nothing changed: nothing is written and the resourceVersion stays.
            return Ok(objects::with_resource_version(obj, current.mod_revision));
        }
        let revision = self
            .put_guarded(r, name, key, current.mod_revision, &obj)
            .await?;
        Ok(objects::with_resource_version(obj, revision))
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
        let put = TxnOp::Put(PutRequest {
            key: key.clone(),
            value: encode(obj),
            ..Default::default()
        });
        let resp = self.commit(guarded(key, mod_revision, put)).await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        Ok(resp.revision)
    }

    /// DELETE. Namespaces are marked Terminating for the namespace controller to empty and
    /// finalize; other objects go at once, answered with a Success Status.
    pub async fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(StatusCode, Value), ApiError> {
        let key = r.key(ns, name);
        let current = self
            .read(key.clone())
            .await?
            .ok_or_else(|| ApiError::not_found(r.group, r.plural, name))?;
        let mut obj = decode(&current)?;
        if r.plural == "namespaces" && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        if r.plural == "namespaces" {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                objects::meta_mut(&mut obj)?
                    .insert("deletionTimestamp".into(), json!(objects::now_rfc3339()));
                obj["status"] = json!({"phase": "Terminating"});
                let revision = self
                    .put_guarded(r, name, key, current.mod_revision, &obj)
                    .await?;
                return Ok((
                    StatusCode::OK,
                    objects::with_resource_version(obj, revision),
                ));
            }
            return Ok((
                StatusCode::OK,
                objects::with_resource_version(obj, current.mod_revision),
            ));
        }
        let txn = guarded(
            key.clone(),
            current.mod_revision,
            TxnOp::Delete(DeleteRequest {
                key,
                ..Default::default()
            }),
        );
        let resp = self.commit(txn).await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
        Ok((
            StatusCode::OK,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": { "name": name, "group": r.group, "kind": r.plural, "uid": uid },
            }),
        ))
    }

    /// LIST at one revision: (items, revision).
    /// LIST: one page at one revision. Pages of a paginated list all read the first page's
    /// revision; a token whose revision was compacted is 410 Gone, as in kube.
    pub async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Page, ApiError> {
        let prefix = r.prefix(ns);
        let end = prefix_end(&prefix);
        let (mut revision, mut start) = match &opts.continue_token {
            Some(t) => {
                let (rv, start) = decode_continue(t)?;
                let mut key = prefix.clone();
                key.extend_from_slice(start.as_bytes());
                (rv, key)
            }
            None => (opts.revision, prefix.clone()),
        };
        let mut items = Vec::new();
        loop {
            // With a selector, keep reading until the page is full or the range is done.
            let want = if opts.limit > 0 {
                opts.limit - items.len() as i64
            } else {
                0
            };
            let resp = self
                .ds
                .range(RangeRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    revision,
                    limit: want,
                    ..Default::default()
                })
                .await
                .map_err(|e| match e {
                    crate::store::Error::Compacted { .. } if opts.continue_token.is_some() => ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ),
                    other => other.into(),
                })?;
            if revision == 0 {
                revision = resp.revision;
            }
            let mut last = None;
            for kv in &resp.kvs {
                let obj = objects::with_resource_version(decode(kv)?, kv.mod_revision);
                if opts.selector.matches(&obj) {
                    items.push(obj);
                }
                last = Some(kv.key.clone());
            }
            let full = opts.limit > 0 && items.len() as i64 >= opts.limit;
            match (resp.more, last) {
                (true, Some(last_key)) if full => {
                    return Ok(Page {
                        items,
                        revision,
                        continue_token: Some(encode_continue(revision, &last_key, &prefix)),
                    })
                }
                (true, Some(last_key)) => {
                    start = last_key;
                    start.push(0);
                }
                _ => {
                    return Ok(Page {
                        items,
                        revision,
                        continue_token: None,
                    })
                }
            }
        }
    }

    /// Creates the namespaces that always exist, when missing.
    pub async fn ensure_system_namespaces(&self) -> Result<(), ApiError> {
        let Some(r) = resources::find("", "v1", "namespaces") else {
            return Ok(());
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self.create(r, None, obj).await {
                Ok(_) => tracing::info!(namespace = ns, "created namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A write that happens only if the key is still at `mod_revision` (optimistic concurrency).
fn guarded(key: Vec<u8>, mod_revision: Revision, op: TxnOp) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key,
            range_end: vec![],
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(mod_revision),
        }],
        success: vec![op],
        failure: vec![],
    }
}

/// Per-kind normalisation on every write: a Secret's `stringData` folds into base64 `data`
/// (values must be base64) and its type defaults to Opaque.
fn normalize(r: &Resource, name: &str, obj: &mut Value) -> Result<(), ApiError> {
    use base64::Engine;
    if r.plural != "secrets" {
        return Ok(());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(data) = obj.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let ok = v.as_str().is_some_and(|s| b64.decode(s).is_ok()) || v.is_null();
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k:?}]"
                )));
            }
        }
    }
    if let Some(Value::Object(string_data)) =
        obj.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        let data = obj
            .as_object_mut()
            .map(|o| o.entry("data").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                ApiError::invalid(r.kind, name, "data", "Invalid value: must be an object")
            })?;
        for (k, v) in string_data {
            let s = v.as_str().unwrap_or_default().to_string();
            data.insert(k, json!(b64.encode(s.as_bytes())));
        }
    }
    if obj.get("type").is_none_or(|t| t.as_str() == Some("")) {
        obj["type"] = json!("Opaque");
    }
    Ok(())
}

/// Defaulting at creation, per kind.
fn defaults_on_create(r: &Resource, obj: &mut Value) {
    if r.plural == "namespaces" {
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        obj["status"] = json!({"phase": "Active"});
    }
}
