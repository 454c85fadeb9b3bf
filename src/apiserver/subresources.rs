//! Subresources that present an object differently: `scale` (autoscaling/v1 Scale over a
//! workload's replicas); `eviction` lives in `apiserver::eviction`.
use serde_json::{json, Value};

use super::resources::Resource;
use super::status::ApiError;

/// A LabelSelector as the Scale's `status.selector` string (`app=web,tier in (a,b)`).
fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
            Some("Exists") => parts.push(key.to_string()),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// Where a resource keeps its replica counts and selector: the CRD's scale paths for a
/// custom resource, `.spec.replicas`, `.status.replicas` and `.spec.selector` otherwise.
fn scale_paths(r: &Resource) -> (String, String, Option<String>) {
    use super::crd::definition::pointer_of;
    match r.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(s) => (
            pointer_of(&s.spec_replicas),
            pointer_of(&s.status_replicas),
            s.label_selector.as_deref().map(pointer_of),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into(), None),
    }
}

/// Sets the value at a JSON pointer, making the objects on the way.
fn set_at(obj: &mut Value, pointer: &str, v: Value) {
    let mut at = obj;
    for part in pointer.trim_start_matches('/').split('/') {
        if !at.is_object() {
            *at = json!({});
        }
        at = &mut at[part];
    }
    *at = v;
}

/// The Scale view of a workload.
pub fn scale_view(r: &Resource, obj: &Value) -> Value {
    let (spec_path, status_path, selector_path) = scale_paths(r);
    let selector = match obj.pointer("/spec/selector") {
        // A custom resource keeps its selector as a string, where its CRD says.
        _ if r.custom.is_some() => selector_path
            .and_then(|p| obj.pointer(&p))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        // A ReplicationController's selector is a plain map.
        Some(Value::Object(m)) if r.plural == "replicationcontrollers" => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        Some(sel) => selector_string(sel),
        None => String::new(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let keep = [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ];
    let meta: serde_json::Map<String, Value> = meta
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer(&spec_path).cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer(&status_path).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// The object with the replicas a Scale asks for (and its resourceVersion precondition).
pub fn apply_scale(r: &Resource, obj: &Value, scale: &Value) -> Result<Value, ApiError> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::invalid(
            "Scale",
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
            "spec.replicas",
            &format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    let mut out = obj.clone();
    set_at(&mut out, &scale_paths(r).0, json!(replicas));
    match scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv) if !rv.is_empty() => out["metadata"]["resourceVersion"] = json!(rv),
        _ => {
            if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_reads_replicas_and_selector() {
        let r = super::super::resources::find("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d", "resourceVersion": "5", "labels": {"x": "y"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
            "status": {"replicas": 2}});
        let s = scale_view(r, &d);
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "app=web,tier in (a,b)");
        assert!(s["metadata"].get("labels").is_none());
        let mut want = s.clone();
        want["spec"]["replicas"] = json!(5);
        let out = apply_scale(r, &d, &want).unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["metadata"]["resourceVersion"], "5");
    }
}
