//! events.k8s.io/v1 Events: the same objects as core/v1 Events (kept once, in core/v1's form
//! under `/registry/events`), read and written through the newer field names, with the
//! validation kube applies to events created through events.k8s.io.
use serde_json::{json, Map, Value};

use crate::apiserver::validation::FieldErrors;

/// (core/v1 field, events.k8s.io/v1 field); the others have the same name in both.
const RENAMED: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

const SHARED: &[&str] = &[
    "metadata",
    "eventTime",
    "series",
    "reportingInstance",
    "action",
    "reason",
    "related",
    "type",
];

fn convert(obj: &Value, api_version: &str, to_v1: bool) -> Value {
    let mut out = Map::new();
    out.insert("kind".into(), json!("Event"));
    out.insert("apiVersion".into(), json!(api_version));
    let Some(o) = obj.as_object() else {
        return Value::Object(out);
    };
    for f in SHARED {
        if let Some(v) = o.get(*f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    for (core, v1) in RENAMED {
        let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
        if let Some(v) = o.get(*from) {
            out.insert(to.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// A stored (core/v1) Event as events.k8s.io/v1 shows it.
pub fn to_v1(core: &Value) -> Value {
    convert(core, "events.k8s.io/v1", true)
}

/// An events.k8s.io/v1 Event as core/v1 keeps it.
pub fn to_core(v1: &Value) -> Value {
    convert(v1, "v1", false)
}

/// kube's checks of an Event created through events.k8s.io/v1.
pub fn validate_v1(obj: &Value, errs: &mut FieldErrors) {
    let s = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or("");
    if obj.get("eventTime").is_none_or(Value::is_null) {
        errs.required("eventTime", "");
    }
    match s("type") {
        "Normal" | "Warning" => {}
        "" => errs.required("type", ""),
        other => errs.not_supported("type", &json!(other), &["Normal", "Warning"]),
    }
    for f in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let v = s(f);
        if v.is_empty() {
            errs.required(f, "");
        } else if v.len() > 128 {
            errs.too_long(f, 128);
        }
    }
    if s("note").len() > 1024 {
        errs.too_long("note", 1024);
    }
    if obj.get("regarding").is_none() {
        errs.required("regarding", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_forms_convert_both_ways() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p"},
            "reason": "Started", "message": "started", "type": "Normal",
            "count": 2, "source": {"component": "kubelet"},
            "reportingComponent": "kubelet", "reportingInstance": "n1",
        });
        let v1 = to_v1(&core);
        assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v1["regarding"]["name"], "p");
        assert_eq!(v1["note"], "started");
        assert_eq!(v1["deprecatedCount"], 2);
        assert_eq!(v1["reportingController"], "kubelet");
        assert_eq!(to_core(&v1), core);
        let mut errs = FieldErrors::default();
        validate_v1(&v1, &mut errs);
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["eventTime", "action"]);
    }
}
