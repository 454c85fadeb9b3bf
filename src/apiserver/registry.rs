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
}

impl Registry {
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
        let resp = self.ds.txn(txn).await?;
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
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                range_end: vec![],
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(current.mod_revision),
            }],
            success: vec![TxnOp::Put(PutRequest {
                key,
                value: encode(&obj),
                ..Default::default()
            })],
            failure: vec![],
        };
        let resp = self.ds.txn(txn).await?;
        if !resp.succeeded {
            return Err(ApiError::conflict(r.group, r.plural, name));
        }
        Ok(objects::with_resource_version(obj, resp.revision))
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
                let txn = TxnRequest {
                    compare: vec![Compare {
                        key: key.clone(),
                        range_end: vec![],
                        result: CompareResult::Equal,
                        target: CompareTarget::ModRevision(current.mod_revision),
                    }],
                    success: vec![TxnOp::Put(PutRequest {
                        key,
                        value: encode(&obj),
                        ..Default::default()
                    })],
                    failure: vec![],
                };
                let resp = self.ds.txn(txn).await?;
                if !resp.succeeded {
                    return Err(ApiError::conflict(r.group, r.plural, name));
                }
                return Ok((
                    StatusCode::OK,
                    objects::with_resource_version(obj, resp.revision),
                ));
            }
            return Ok((
                StatusCode::OK,
                objects::with_resource_version(obj, current.mod_revision),
            ));
        }
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                range_end: vec![],
                result: CompareResult::Equal,
                target: CompareTarget::ModRevision(current.mod_revision),
            }],
            success: vec![TxnOp::Delete(DeleteRequest {
                key,
                ..Default::default()
            })],
            failure: vec![],
        };
        let resp = self.ds.txn(txn).await?;
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
    pub async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<(Vec<Value>, Revision), ApiError> {
        let prefix = r.prefix(ns);
        let resp = self
            .ds
            .range(RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                revision: opts.revision,
                ..Default::default()
            })
            .await?;
        let mut items = Vec::with_capacity(resp.kvs.len());
        for kv in &resp.kvs {
            let obj = objects::with_resource_version(decode(kv)?, kv.mod_revision);
            if opts.selector.matches(&obj) {
                items.push(obj);
            }
        }
        Ok((items, resp.revision))
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

/// Defaulting at creation, per kind.
fn defaults_on_create(r: &Resource, obj: &mut Value) {
    if r.plural == "namespaces" {
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        obj["status"] = json!({"phase": "Active"});
    }
}
