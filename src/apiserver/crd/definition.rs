//! A CustomResourceDefinition read as what it makes the server serve: per served version, a
//! resource row (interned names, see `resources::intern`) with its schema, subresources and
//! printer columns; plus kube's defaulting and validation of the CRD object itself.
use std::sync::Arc;

use serde_json::{json, Value};

use super::schema::Schema;
use crate::apiserver::resources::{self, intern, intern_list, Resource};
use crate::apiserver::validation::{dns1035_label, dns1123_label, dns1123_subdomain, FieldErrors};

/// The finalizer that holds a deleted CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// What a custom resource's version adds to its resource row.
#[derive(Debug)]
pub struct CustomKind {
    /// The version objects are stored at.
    pub storage_version: &'static str,
    /// Whether other versions are served too (objects then change apiVersion on the way).
    pub multi_version: bool,
    pub schema: Option<Schema>,
    /// The schema has defaults, which objects read from the store get too.
    pub defaults_on_read: bool,
    /// The version's `openAPIV3Schema` as written, for the OpenAPI documents.
    pub raw_schema: Value,
    pub scale: Option<ScalePaths>,
    pub columns: Vec<PrinterColumn>,
    /// The CRD is being deleted: its objects may be read and deleted, not created.
    pub terminating: bool,
    /// `selectableFields`: the fields field selectors may name (`spec.color`), beyond
    /// metadata.name and metadata.namespace.
    pub selectable_fields: Vec<String>,
}

/// `subresources.scale`: where the replica counts and the selector are.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One of `additionalPrinterColumns`.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The strings of the list at a JSON pointer (`/spec/names/shortNames`).
fn strings(v: &Value, pointer: &str) -> Vec<String> {
    match pointer.rsplit_once('/') {
        Some((parent, key)) => v
            .pointer(parent)
            .map(|p| super::schema::strings_at(p, key))
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// Whether the CRD's Established condition is True.
pub fn established(crd: &Value) -> bool {
    condition(crd, "Established") == Some("True")
}

pub fn condition<'a>(crd: &'a Value, ty: &str) -> Option<&'a str> {
    crd.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))?
        .get("status")?
        .as_str()
}

/// A dotted JSON path of the scale subresource (`.spec.replicas`) as a JSON pointer.
pub fn pointer_of(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut p, part| {
            p.push('/');
            p.push_str(part);
            p
        })
}

/// The resource rows the CRD serves, one per served version (none unless Established).
pub fn served(crd: &Value) -> Vec<Resource> {
    if !established(crd) {
        return Vec::new();
    }
    let group = intern(s(crd, "/spec/group"));
    let plural = intern(s(crd, "/status/acceptedNames/plural"));
    let kind = intern(s(crd, "/status/acceptedNames/kind"));
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = match s(crd, "/status/acceptedNames/singular") {
        "" => intern(&kind.to_ascii_lowercase()),
        x => intern(x),
    };
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .map(|v| intern(s(v, "/name")))
        .unwrap_or("");
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .collect();
    let terminating = crd.pointer("/metadata/deletionTimestamp").is_some();
    let short_names = intern_list(&strings(crd, "/status/acceptedNames/shortNames"));
    let categories = intern_list(&strings(crd, "/status/acceptedNames/categories"));
    let storage = intern(&format!("{group}/{plural}"));
    served
        .iter()
        .map(|v| {
            let raw_schema = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .unwrap_or(Value::Null);
            let schema = Schema::parse(&raw_schema, "")
                .ok()
                .filter(|_| !raw_schema.is_null());
            let status = v.pointer("/subresources/status").is_some();
            let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
                spec_replicas: s(sc, "/specReplicasPath").to_string(),
                status_replicas: s(sc, "/statusReplicasPath").to_string(),
                label_selector: sc
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
            let subresources: &'static [&'static str] = match (status, scale.is_some()) {
                (true, true) => &["scale", "status"],
                (true, false) => &["status"],
                (false, true) => &["scale"],
                (false, false) => &[],
            };
            let columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: s(c, "/name").to_string(),
                            ty: s(c, "/type").to_string(),
                            format: s(c, "/format").to_string(),
                            description: s(c, "/description").to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            json_path: s(c, "/jsonPath").to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Resource {
                group,
                version: intern(s(v, "/name")),
                plural,
                singular,
                kind,
                namespaced: s(crd, "/spec/scope") != "Cluster",
                short_names,
                categories,
                subresources,
                storage,
                generation: true,
                verbs: resources::VERBS,
                custom: Some(Arc::new(CustomKind {
                    storage_version,
                    multi_version: served.len() > 1,
                    defaults_on_read: schema.as_ref().is_some_and(Schema::has_defaults),
                    schema,
                    raw_schema,
                    scale,
                    columns,
                    terminating,
                    selectable_fields: v
                        .get("selectableFields")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|f| s(f, "/jsonPath").trim_start_matches('.').to_string())
                        .collect(),
                })),
            }
        })
        .collect()
}

/// kube's defaults for a CRD: conversion None, singular and list kind from the names.
pub fn default(crd: &mut Value) {
    if crd.pointer("/spec/conversion/strategy").is_none() {
        crd["spec"]["conversion"] = json!({"strategy": "None"});
    }
    let kind = s(crd, "/spec/names/kind").to_string();
    if let Some(names) = crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        if names
            .get("singular")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            names.insert("singular".into(), json!(kind.to_ascii_lowercase()));
        }
        if names
            .get("listKind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
}

/// kube's validation of a CRD (the parts that decide what gets served).
pub fn validate(crd: &Value, old: Option<&Value>, errs: &mut FieldErrors) {
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let name = s(crd, "/metadata/name");
    if name != format!("{plural}.{group}") {
        errs.invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        );
    }
    if group.is_empty() {
        errs.required("spec.group", "");
    } else if !group.contains('.') || !dns1123_subdomain(group) {
        errs.invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        );
    } else if resources::RESOURCES.iter().any(|r| r.group == group) {
        errs.invalid(
            "spec.group",
            &json!(group),
            "is a group served by the API server itself",
        );
    }
    match s(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => errs.required("spec.scope", ""),
        other => errs.not_supported("spec.scope", &json!(other), &["Cluster", "Namespaced"]),
    }
    for (field, value) in [
        ("plural", plural),
        ("singular", s(crd, "/spec/names/singular")),
    ] {
        if value.is_empty() {
            if field == "plural" {
                errs.required("spec.names.plural", "");
            }
        } else if !dns1123_label(value) {
            errs.invalid(
                format!("spec.names.{field}"),
                &json!(value),
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            );
        }
    }
    let kind = s(crd, "/spec/names/kind");
    if kind.is_empty() {
        errs.required("spec.names.kind", "");
    } else if !dns1035_label(&kind.to_ascii_lowercase()) {
        // kube checks the lowercased kind as a DNS-1035 label.
        errs.invalid(
            "spec.names.kind",
            &json!(kind),
            "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
        );
    }
    for (i, short) in strings(crd, "/spec/names/shortNames").iter().enumerate() {
        if !dns1123_label(short) {
            errs.invalid(
                format!("spec.names.shortNames[{i}]"),
                &json!(short),
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
            );
        }
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        );
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.invalid(
            "spec.versions",
            &json!(versions.iter().map(|v| s(v, "/name")).collect::<Vec<_>>()),
            "must have exactly one version marked as storage version",
        );
    }
    for (i, v) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        let vname = s(v, "/name");
        if !dns1123_label(vname) {
            errs.invalid(
                format!("{path}.name"),
                &json!(vname),
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            );
        }
        if versions[..i].iter().any(|o| s(o, "/name") == vname) {
            errs.duplicate(format!("{path}.name"), &json!(vname));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.required(
                format!("{path}.schema.openAPIV3Schema"),
                "schemas are required",
            ),
            Some(raw) => {
                let at = format!("{path}.schema.openAPIV3Schema");
                match Schema::parse(raw, &at) {
                    Ok(schema) => {
                        validate_selectable_fields(v, &schema, &path, errs);
                        if schema.ty.as_deref() != Some("object") {
                            errs.invalid(
                                format!("{at}.type"),
                                &json!(schema.ty.unwrap_or_default()),
                                "must be object at the root",
                            );
                        }
                    }
                    Err(e) => match e.detail.strip_prefix("Required value: ") {
                        Some(d) => errs.required(e.field, d),
                        None => errs.invalid(e.field, &e.value, &e.detail),
                    },
                }
            }
        }
        if let Some(sc) = v.pointer("/subresources/scale") {
            for f in ["specReplicasPath", "statusReplicasPath"] {
                let p = s(sc, &format!("/{f}"));
                if !p.starts_with('.') {
                    errs.invalid(
                        format!("{path}.subresources.scale.{f}"),
                        &json!(p),
                        "should be a json path under .spec or .status",
                    );
                }
            }
        }
    }
    if let Some(old) = old {
        let old_scope = s(old, "/spec/scope");
        if !old_scope.is_empty() && old_scope != s(crd, "/spec/scope") {
            errs.immutable("spec.scope", &json!(s(crd, "/spec/scope")));
        }
        if s(old, "/spec/group") != group {
            errs.immutable("spec.group", &json!(group));
        }
        // A version stored before must stay listed while objects may still be at it.
        for stored in strings(old, "/status/storedVersions") {
            if !versions.iter().any(|v| s(v, "/name") == stored) {
                errs.invalid(
                    "status.storedVersions",
                    &json!(stored),
                    "must appear in spec.versions",
                );
            }
        }
    }
}

/// kube's version order: GA before beta before alpha, higher numbers first, others last
/// alphabetically (`v2`, `v1`, `v1beta2`, `v1beta1`, `v1alpha1`, `foo`).
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn rank(v: &str) -> (u8, u64, u8, u64) {
        let Some(rest) = v.strip_prefix('v') else {
            return (0, 0, 0, 0);
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(major) = digits.parse::<u64>() else {
            return (0, 0, 0, 0);
        };
        let tail = &rest[digits.len()..];
        let (level, n) = if tail.is_empty() {
            (3, "0")
        } else if let Some(n) = tail.strip_prefix("beta") {
            (2, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (1, n)
        } else {
            return (0, 0, 0, 0);
        };
        match n.parse::<u64>() {
            Ok(n) => (1, major, level, n),
            Err(_) => (0, 0, 0, 0),
        }
    }
    let (ra, rb) = (rank(a), rank(b));
    match (ra.0, rb.0) {
        (1, 1) => (rb.2, rb.1, rb.3).cmp(&(ra.2, ra.1, ra.3)),
        (1, 0) => std::cmp::Ordering::Less,
        (0, 1) => std::cmp::Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// kube's checks of a version's `selectableFields`: at most 8, each a simple path to a
/// string, integer or boolean field of the schema, none twice.
fn validate_selectable_fields(v: &Value, schema: &Schema, path: &str, errs: &mut FieldErrors) {
    let fields = v
        .get("selectableFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if fields.len() > 8 {
        errs.invalid(
            format!("{path}.selectableFields"),
            &json!(fields.len()),
            "must have at most 8 items",
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let at = format!("{path}.selectableFields[{i}].jsonPath");
        let json_path = f.get("jsonPath").and_then(Value::as_str).unwrap_or("");
        let Some(rest) = json_path.strip_prefix('.').filter(|r| !r.is_empty()) else {
            errs.required(at, "");
            continue;
        };
        let mut node = Some(schema);
        for part in rest.split('.') {
            node = node.and_then(|n| n.properties.get(part));
        }
        match node.and_then(|n| n.ty.as_deref()) {
            None => errs.invalid(
                &at,
                &json!(json_path),
                "is an invalid path: does not refer to a valid field",
            ),
            Some("string" | "integer" | "boolean") => {}
            Some(_) => errs.invalid(
                &at,
                &json!(json_path),
                "must point to a field of type string, boolean or integer. Enum string fields and strings with formats are allowed.",
            ),
        }
        if seen.contains(&json_path) {
            errs.duplicate(at, &json!(json_path));
        }
        seen.push(json_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}},
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                ],
            },
            "status": {
                "conditions": [{"type": "Established", "status": "True"}],
                "acceptedNames": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            },
        })
    }

    #[test]
    fn an_established_crd_serves_each_served_version() {
        let rows = served(&crd());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].api_version(), "example.com/v1");
        assert_eq!(rows[0].subresources, &["scale", "status"]);
        assert_eq!(rows[0].short_names, &["wd"]);
        assert_eq!(
            rows[0].key(Some("a"), "b"),
            b"/registry/example.com/widgets/a/b"
        );
        assert_eq!(rows[1].key(Some("a"), "b"), rows[0].key(Some("a"), "b"));
        let custom = rows[1].custom.as_ref().unwrap();
        assert_eq!(custom.storage_version, "v1");
        assert!(custom.multi_version);
        let mut pending = crd();
        pending["status"] = json!({});
        assert!(served(&pending).is_empty());
    }

    #[test]
    fn invalid_crds_name_their_fields() {
        let mut bad = crd();
        bad["spec"]["group"] = json!("example");
        bad["spec"]["versions"][1]["storage"] = json!(true);
        bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"] =
            json!({"type": "object", "properties": {"spec": {}}});
        let mut errs = FieldErrors::default();
        validate(&bad, None, &mut errs);
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.group",
                "spec.versions",
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].type",
            ]
        );
        let mut errs = FieldErrors::default();
        validate(&crd(), None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        // Kinds are checked lowercased, dashes allowed (the conformance suite's kinds).
        for (kind, ok) in [
            ("e2e-test-crd-1", true),
            ("MyKind2", true),
            ("2Kind", false),
            ("Kind_x", false),
        ] {
            let mut c = crd();
            c["spec"]["names"]["kind"] = json!(kind);
            let mut errs = FieldErrors::default();
            validate(&c, None, &mut errs);
            assert_eq!(errs.is_empty(), ok, "{kind}: {errs:?}");
        }
    }

    #[test]
    fn versions_sort_as_kube_sorts_them() {
        let mut v = vec!["v1alpha1", "foo", "v1", "v1beta2", "v2", "v1beta1", "v10"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            v,
            vec!["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }
}
