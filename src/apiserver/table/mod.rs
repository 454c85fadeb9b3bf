//! `as=Table` responses: the columns kube-apiserver prints for each kind, so `kubectl get`
//! looks as users know it (wide columns at priority 1 for `-o wide`). Rows carry the
//! object's metadata (PartialObjectMetadata). The printers live in `printers`.
mod printers;
mod server_groups;

use serde_json::{json, Value};

use super::resources::Resource;

/// One column: name, type (`string`, `integer`, `date`), priority (1: only with -o wide).
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub priority: u8,
}

pub const fn col(name: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        priority: 0,
    }
}

pub const fn int(name: &'static str) -> Column {
    Column {
        name,
        ty: "integer",
        priority: 0,
    }
}

pub const fn wide(name: &'static str) -> Column {
    Column {
        name,
        ty: "string",
        priority: 1,
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

fn column_json(c: &Column) -> Value {
    let (format, description) = match c.name {
        "Name" => ("name", NAME_DESCRIPTION),
        _ => ("", ""),
    };
    json!({"name": c.name, "type": c.ty, "format": format, "description": description, "priority": c.priority})
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

/// The AGE of an object (or of any timestamp), as kubectl shows it.
pub fn age_of(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".into();
    };
    let format = time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(ts, &format) {
        Ok(t) => human_duration((time::OffsetDateTime::now_utc() - t).whole_seconds()),
        Err(_) => "<invalid>".into(),
    }
}

pub fn age(obj: &Value) -> String {
    age_of(
        obj.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
    )
}

/// The cells of one row.
type RowCells = Box<dyn Fn(&Value) -> Vec<Value>>;

/// A Table of `items` (one object for a GET, a list's items otherwise).
pub fn build(r: &Resource, items: &[Value], resource_version: Option<String>) -> Value {
    // A custom resource prints its CRD's columns; a built-in kind, kube's printer's.
    let (definitions, cells): (Vec<Value>, RowCells) = match &r.custom {
        Some(c) => {
            let cols = crate::apiserver::crd::columns::columns_of(&c.columns);
            (
                crate::apiserver::crd::columns::definitions(&cols),
                Box::new(move |o| crate::apiserver::crd::columns::cells(&cols, o)),
            )
        }
        None => {
            let (columns, cells) = printers::printer(r);
            (columns.iter().map(column_json).collect(), Box::new(cells))
        }
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": cells(o),
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
        "columnDefinitions": definitions,
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
    }
}
