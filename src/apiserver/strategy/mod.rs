//! Per-kind behaviour on the way into the store, as kube's registry strategies: defaults,
//! validation (field paths and messages like kube-apiserver's), what an update may change,
//! status versus spec, and metadata.generation. The generic registry calls these hooks and
//! knows nothing about any particular kind.
mod core;
pub mod event;
mod flowcontrol;
mod pod;
pub mod service;
pub mod service_alloc;
pub mod workload;

use serde_json::{json, Value};

use super::resources::Resource;
use super::status::ApiError;
use super::validation::{self, FieldErrors};

pub use self::pod::bind;

/// Which write is being prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// POST, PUT or PATCH of the object.
    Main,
    /// PUT or PATCH of the `status` subresource.
    Status,
}

/// Sets `key` unless the object already has a (non-null) value there: kube's defaulting.
fn set_default(o: &mut serde_json::Map<String, Value>, key: &str, v: Value) {
    if o.get(key).is_none_or(Value::is_null) {
        o.insert(key.to_string(), v);
    }
}

/// Defaults and resets on create (kube's scheme defaulting and PrepareForCreate), before
/// field management sees the new object.
pub fn default_create(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    if r.has_subresource("status") && r.plural != "pods" && r.plural != "namespaces" {
        // Status is the controllers' to write, through the status subresource.
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    if r.generation {
        obj["metadata"]["generation"] = json!(1);
    } else if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("generation");
    }
    kind_defaults(r, obj)
}

/// The kind's defaults, which kube applies to every object a client sends (creates and
/// updates alike).
pub fn kind_defaults(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    match r.group {
        "" => match r.plural {
            "pods" => pod::default(obj),
            "services" => service::default(obj),
            "replicationcontrollers" => workload::default_rc(obj),
            _ => core::default(r, obj)?,
        },
        "apps" | "batch" => workload::default(r, obj),
        "apiextensions.k8s.io" => super::crd::definition::default(obj),
        "flowcontrol.apiserver.k8s.io" => flowcontrol::default(r, obj),
        _ => {}
    }
    Ok(())
}

/// What admission adds to a new object (after field management has seen it, so its
/// writer does not own what admission added, as in kube), then validation.
pub fn admit_create(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    if r.group.is_empty() && r.plural == "pods" {
        pod::admit(obj);
    }
    validate(r, obj, None)
}

/// What an update keeps from the stored object, then validation against it.
pub fn prepare_update(
    r: &Resource,
    write: Write,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    match write {
        Write::Main => {
            if r.has_subresource("status") {
                // Status changes only through the status subresource.
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
        }
        Write::Status => {
            // Only status (and, as in kube, labels and annotations on a few kinds) changes.
            let status = new.get("status").cloned();
            let meta = new.get("metadata").cloned();
            *new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if let (Some(m), Some(new_meta)) = (meta, new.get_mut("metadata")) {
                // The resourceVersion precondition travels with the status write.
                if let Some(rv) = m.get("resourceVersion") {
                    new_meta["resourceVersion"] = rv.clone();
                }
            }
        }
    }
    if r.generation {
        let changed = {
            // A custom resource without a status subresource counts status changes too.
            let status_apart = r.custom.is_none() || r.has_subresource("status");
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("metadata");
                    if status_apart {
                        o.remove("status");
                    }
                }
                v
            };
            strip(old) != strip(new)
        };
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(if changed && write == Write::Main {
            generation + 1
        } else {
            generation
        });
    }
    if write == Write::Main {
        match (r.group, r.plural) {
            ("", "pods") => pod::prepare_update(old, new)?,
            ("", "services") => service::prepare_update(old, new),
            ("", "secrets") => core::normalize_secret(new)?,
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                super::crd::definition::default(new)
            }
            ("", "namespaces") => {
                // Phase belongs to the namespace lifecycle, not the writer.
                if let Some(s) = old.get("status") {
                    new["status"] = s.clone();
                }
                core::label_namespace_name(new);
            }
            _ => {}
        }
    }
    validate(r, new, Some(old))
}

/// Validation of the whole object (with the stored object on update).
fn validate(r: &Resource, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let mut errs = FieldErrors::default();
    validation::object_meta(obj, &mut errs);
    match (r.group, r.plural) {
        ("", "pods") => pod::validate(obj, old, &mut errs),
        ("", "services") => service::validate(obj, old, &mut errs),
        ("", "secrets") | ("", "configmaps") => core::validate_data(r, obj, old, &mut errs),
        ("", "nodes") => core::validate_node(obj, old, &mut errs),
        ("", "replicationcontrollers") => workload::validate_rc(obj, &mut errs),
        ("apps" | "batch", _) => workload::validate(r, obj, old, &mut errs),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            super::crd::definition::validate(obj, old, &mut errs)
        }
        ("events.k8s.io", "events") if old.is_none() => event::validate_v1(obj, &mut errs),
        _ if r.custom.is_some() => super::crd::validate(r, obj, &mut errs),
        _ => {}
    }
    errs.into_result(r.kind, super::objects::name_of(obj), r.group)
}
