//! `as=Table` responses: the columns kube-apiserver prints for each kind, so `kubectl get`
//! looks as users know it. Rows carry the object's metadata (PartialObjectMetadata).
use serde_json::{json, Value};

use super::resources::Resource;

/// Whether the client asked for a Table (kubectl's `Accept: application/json;as=Table;...`).
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .any(|part| part.contains("as=Table") && part.contains("g=meta.k8s.io"))
}

fn column(name: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0})
}

/// kube's `duration.HumanDuration`, as the AGE column shows it.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => {
            let (m, r) = (s / 60, s % 60);
            if r == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{r}s")
            }
        }
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => {
            let (d, h) = (s / 86400, (s % 86400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
        s if s < 2 * 365 * 86400 => format!("{}d", s / 86400),
        s if s < 8 * 365 * 86400 => {
            let (y, d) = (s / (365 * 86400), (s % (365 * 86400)) / 86400);
            if d == 0 {
                format!("{y}y")
            } else {
                format!("{y}y{d}d")
            }
        }
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn age(obj: &Value) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".into();
    };
    let format = time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(ts, &format) {
        Ok(t) => human_duration((time::OffsetDateTime::now_utc() - t).whole_seconds()),
        Err(_) => "<invalid>".into(),
    }
}

fn cells(r: &Resource, obj: &Value) -> Vec<Value> {
    let name = obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    match r.plural {
        "namespaces" => vec![
            name,
            obj.pointer("/status/phase").cloned().unwrap_or(json!("")),
            json!(age(obj)),
        ],
        "configmaps" => {
            let data = obj
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0)
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0);
            vec![name, json!(data), json!(age(obj))]
        }
        "secrets" => {
            let data = obj
                .get("data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0);
            let kind = obj.get("type").cloned().unwrap_or(json!("Opaque"));
            vec![name, kind, json!(data), json!(age(obj))]
        }
        "serviceaccounts" => {
            let secrets = obj
                .get("secrets")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            vec![name, json!(secrets), json!(age(obj))]
        }
        "leases" => {
            let holder = obj
                .pointer("/spec/holderIdentity")
                .cloned()
                .unwrap_or(json!(""));
            vec![name, holder, json!(age(obj))]
        }
        _ => vec![name, json!(age(obj))],
    }
}

fn columns(r: &Resource) -> Vec<Value> {
    let name = column(
        "Name",
        "name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    );
    let age = column(
        "Age",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
    );
    match r.plural {
        "namespaces" => vec![
            name,
            column("Status", "", "The status of the namespace"),
            age,
        ],
        "configmaps" => {
            let mut data = column("Data", "", "");
            data["type"] = json!("integer");
            vec![name, data, age]
        }
        "secrets" => {
            let mut data = column("Data", "", "");
            data["type"] = json!("integer");
            vec![name, column("Type", "", ""), data, age]
        }
        "serviceaccounts" => {
            let mut secrets = column("Secrets", "", "");
            secrets["type"] = json!("integer");
            vec![name, secrets, age]
        }
        "leases" => vec![name, column("Holder", "", "The holder of the lease"), age],
        _ => vec![name, age],
    }
}

/// A Table of `items` (one object for a GET, a list's items otherwise).
pub fn build(r: &Resource, items: &[Value], resource_version: Option<String>) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": cells(r, o),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(r),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human_duration(86400 * 3), "3d");
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }
}
