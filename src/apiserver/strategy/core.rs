//! Core kinds without much behaviour of their own: namespaces (finalizer and phase),
//! LimitRange defaults, and the data kinds, Secret and ConfigMap (stringData folding, base64, key names, immutability).
use serde_json::{json, Value};

use super::super::resources::Resource;
use super::super::status::ApiError;
use super::super::validation::FieldErrors;

/// Create-time defaults of the core kinds not handled elsewhere.
pub fn default(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    match r.plural {
        "namespaces" => {
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            obj["status"] = json!({"phase": "Active"});
            label_namespace_name(obj);
        }
        "secrets" => normalize_secret(obj)?,
        "limitranges" => default_limit_range(obj),
        _ => {}
    }
    Ok(())
}

/// kube's LimitRange defaults for Container items: a missing default limit is the max; a
/// missing default request is the default limit, else the min.
pub fn default_limit_range(obj: &mut Value) {
    let Some(items) = obj
        .pointer_mut("/spec/limits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for item in items {
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let fill = |item: &mut Value, into: &str, from: &str| {
            let Some(source) = item.get(from).and_then(Value::as_object).cloned() else {
                return;
            };
            if source.is_empty() {
                return;
            }
            if !item.get(into).is_some_and(Value::is_object) {
                item[into] = json!({});
            }
            for (k, v) in source {
                if item[into].get(&k).is_none() {
                    item[into][k] = v;
                }
            }
        };
        fill(item, "default", "max");
        fill(item, "defaultRequest", "default");
        fill(item, "defaultRequest", "min");
    }
}

/// Every namespace carries `kubernetes.io/metadata.name: <name>`, set on each write (as
/// kube-apiserver does), so policies can select namespaces by name.
pub fn label_namespace_name(obj: &mut Value) {
    let Some(name) = obj.pointer("/metadata/name").cloned() else {
        return;
    };
    if !obj
        .pointer("/metadata/labels")
        .is_some_and(Value::is_object)
    {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
}

/// On every write of a Secret: `stringData` folds into base64 `data`, values must be
/// base64, and the type defaults to Opaque.
pub fn normalize_secret(obj: &mut Value) -> Result<(), ApiError> {
    use base64::Engine;
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
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
            for (k, v) in string_data {
                let s = v.as_str().unwrap_or_default().to_string();
                data.insert(k, json!(b64.encode(s.as_bytes())));
            }
        }
    }
    if obj.get("type").is_none_or(|t| t.as_str() == Some("")) {
        obj["type"] = json!("Opaque");
    }
    Ok(())
}

/// A ConfigMap or Secret key: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Data keys, total size, a Secret's type, and immutability once `immutable` is set.
pub fn validate_data(r: &Resource, obj: &Value, old: Option<&Value>, errs: &mut FieldErrors) {
    let mut total = 0usize;
    for field in ["data", "binaryData"] {
        if let Some(m) = obj.get(field).and_then(Value::as_object) {
            for (k, v) in m {
                if !config_key(k) {
                    errs.invalid(
                        format!("{field}[{k}]"),
                        &json!(k),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    );
                }
                total += v.as_str().map(str::len).unwrap_or(0);
            }
        }
    }
    if total > 1024 * 1024 + 512 * 1024 {
        errs.too_long("data", 1024 * 1024);
    }
    let Some(old) = old else { return };
    if r.plural == "secrets" && obj.get("type") != old.get("type") {
        errs.immutable("type", obj.get("type").unwrap_or(&Value::Null));
    }
    if old.get("immutable") == Some(&json!(true)) {
        for f in ["data", "binaryData", "immutable"] {
            if obj.get(f) != old.get(f) {
                errs.forbidden(f, "field is immutable when `immutable` is set");
            }
        }
    }
}

/// A node's pod ranges are set once: from empty to a value, never changed after (as
/// kube-apiserver has it).
pub fn validate_node(obj: &Value, old: Option<&Value>, errs: &mut FieldErrors) {
    let Some(old) = old else {
        return;
    };
    for (field, path) in [("podCIDR", "/spec/podCIDR"), ("podCIDRs", "/spec/podCIDRs")] {
        let before = old
            .pointer(path)
            .filter(|v| !v.is_null() && *v != "" && *v != &json!([]));
        if before.is_some() && obj.pointer(path) != before {
            errs.forbidden(
                format!("spec.{field}"),
                "node updates may not change podCIDR except from \"\" to valid",
            );
        }
    }
}
