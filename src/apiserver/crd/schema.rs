//! A custom resource's structural schema (a CRD version's `openAPIV3Schema`) and what
//! kube-apiserver does with it to every object written: nulls of non-nullable fields
//! dropped, unknown fields pruned (reported for `fieldValidation`), defaults filled in, then
//! the value validated with go-openapi's messages (`spec.replicas in body must be of type
//! integer: "two"`).
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::apiserver::validation::FieldErrors;

/// The schema of one node of an object.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub ty: Option<String>,
    pub format: Option<String>,
    pub properties: BTreeMap<String, Schema>,
    /// `additionalProperties` as a schema (a map's values).
    pub additional: Option<Box<Schema>>,
    /// `additionalProperties: true`.
    pub additional_any: bool,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enumeration: Vec<Value>,
    pub pattern: Option<(String, regex::Regex)>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub unique_items: bool,
    pub nullable: bool,
    pub default: Option<Value>,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded_resource: bool,
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
    /// `x-kubernetes-map-type: atomic`: the object is owned whole by server-side apply.
    pub map_type_atomic: bool,
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
}

/// A schema that cannot be used, with the field path of the problem inside the CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub field: String,
    pub value: Value,
    pub detail: String,
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn f64_at(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// The strings of a list at `key` (other items skipped).
pub fn strings_at(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

impl Schema {
    /// Reads a JSONSchemaProps object; `path` is where it sits in the CRD, for errors.
    pub fn parse(v: &Value, path: &str) -> Result<Schema, SchemaError> {
        let err = |field: String, value: &Value, detail: &str| SchemaError {
            field,
            value: value.clone(),
            detail: detail.to_string(),
        };
        if !v.is_object() {
            return Err(err(path.to_string(), v, "must be an object"));
        }
        let ty = v.get("type").and_then(Value::as_str).map(str::to_string);
        if let Some(t) = &ty {
            if !matches!(
                t.as_str(),
                "object" | "array" | "string" | "integer" | "number" | "boolean"
            ) {
                return Err(SchemaError {
                    field: format!("{path}.type"),
                    value: Value::String(t.clone()),
                    detail: "supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\"".into(),
                });
            }
        }
        let mut s = Schema {
            ty,
            format: v.get("format").and_then(Value::as_str).map(str::to_string),
            required: strings_at(v, "required"),
            enumeration: v
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            minimum: f64_at(v, "minimum"),
            maximum: f64_at(v, "maximum"),
            exclusive_minimum: flag(v, "exclusiveMinimum"),
            exclusive_maximum: flag(v, "exclusiveMaximum"),
            multiple_of: f64_at(v, "multipleOf"),
            min_length: u64_at(v, "minLength"),
            max_length: u64_at(v, "maxLength"),
            min_items: u64_at(v, "minItems"),
            max_items: u64_at(v, "maxItems"),
            min_properties: u64_at(v, "minProperties"),
            max_properties: u64_at(v, "maxProperties"),
            unique_items: flag(v, "uniqueItems"),
            nullable: flag(v, "nullable"),
            default: v.get("default").cloned(),
            preserve_unknown: flag(v, "x-kubernetes-preserve-unknown-fields"),
            int_or_string: flag(v, "x-kubernetes-int-or-string"),
            embedded_resource: flag(v, "x-kubernetes-embedded-resource"),
            list_type: v
                .get("x-kubernetes-list-type")
                .and_then(Value::as_str)
                .map(str::to_string),
            list_map_keys: strings_at(v, "x-kubernetes-list-map-keys"),
            map_type_atomic: v.get("x-kubernetes-map-type").and_then(Value::as_str)
                == Some("atomic"),
            ..Schema::default()
        };
        if let Some(p) = v.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(p).map_err(|e| {
                err(
                    format!("{path}.pattern"),
                    &Value::String(p.into()),
                    &format!("must be a valid regular expression, but isn't: {e}"),
                )
            })?;
            s.pattern = Some((p.to_string(), re));
        }
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                s.properties.insert(
                    k.clone(),
                    Schema::parse(p, &format!("{path}.properties[{k}]"))?,
                );
            }
        }
        match v.get("additionalProperties") {
            Some(Value::Bool(b)) => s.additional_any = *b,
            Some(a @ Value::Object(_)) => {
                if !s.properties.is_empty() {
                    return Err(err(
                        format!("{path}.additionalProperties"),
                        &Value::String(String::new()),
                        "additionalProperties and properties are mutual exclusive",
                    ));
                }
                s.additional = Some(Box::new(Schema::parse(
                    a,
                    &format!("{path}.additionalProperties"),
                )?));
            }
            _ => {}
        }
        match v.get("items") {
            Some(i @ Value::Object(_)) => {
                s.items = Some(Box::new(Schema::parse(i, &format!("{path}.items"))?))
            }
            Some(Value::Array(_)) => {
                return Err(err(
                    format!("{path}.items"),
                    &Value::String(String::new()),
                    "items must be a schema object and not an array",
                ))
            }
            _ => {}
        }
        if s.ty.as_deref() == Some("array") && s.items.is_none() {
            return Err(SchemaError {
                field: format!("{path}.items"),
                value: Value::Null,
                detail: "Required value: must be specified".into(),
            });
        }
        for (key, into) in [
            ("allOf", &mut s.all_of),
            ("anyOf", &mut s.any_of),
            ("oneOf", &mut s.one_of),
        ] {
            if let Some(list) = v.get(key).and_then(Value::as_array) {
                for (i, x) in list.iter().enumerate() {
                    into.push(Schema::parse(x, &format!("{path}.{key}[{i}]"))?);
                }
            }
        }
        if let Some(n) = v.get("not") {
            s.not = Some(Box::new(Schema::parse(n, &format!("{path}.not"))?));
        }
        // A structural schema names a type everywhere except where anything goes.
        if s.ty.is_none() && !s.preserve_unknown && !s.int_or_string && path.contains('.') {
            return Err(SchemaError {
                field: format!("{path}.type"),
                value: Value::Null,
                detail: "Required value: must not be empty for specified object fields".into(),
            });
        }
        Ok(s)
    }

    /// Whether fields this schema does not name are kept.
    fn keeps_unknown(&self) -> bool {
        self.preserve_unknown || self.additional_any
    }

    /// Drops nulls and unknown fields (collected as `unknown`, with their paths), then fills
    /// in defaults. `path` is the field path so far (`spec.template`).
    pub fn prune_and_default(&self, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                let child = |k: &str| {
                    if path.is_empty() {
                        k.to_string()
                    } else {
                        format!("{path}.{k}")
                    }
                };
                if let Some(values) = &self.additional {
                    for (k, x) in m.iter_mut() {
                        values.prune_and_default(x, &child(k), unknown);
                    }
                    return;
                }
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    match self.properties.get(&k) {
                        Some(p) => {
                            if m.get(&k).is_some_and(Value::is_null) && !p.nullable {
                                m.remove(&k);
                            } else if let Some(x) = m.get_mut(&k) {
                                p.prune_and_default(x, &child(&k), unknown);
                            }
                        }
                        None if self.embedded_resource
                            && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                        None if self.keeps_unknown() => {}
                        None => {
                            unknown.push(child(&k));
                            m.remove(&k);
                        }
                    }
                }
                for (k, p) in &self.properties {
                    if let (None, Some(d)) = (m.get(k), &p.default) {
                        let mut d = d.clone();
                        p.prune_and_default(&mut d, &child(k), &mut Vec::new());
                        m.insert(k.clone(), d);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item) = &self.items {
                    for (i, x) in items.iter_mut().enumerate() {
                        item.prune_and_default(x, &format!("{path}[{i}]"), unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether any node of the schema has a default.
    pub fn has_defaults(&self) -> bool {
        self.default.is_some()
            || self.properties.values().any(Schema::has_defaults)
            || self.additional.as_ref().is_some_and(|a| a.has_defaults())
            || self.items.as_ref().is_some_and(|i| i.has_defaults())
    }

    /// Fills in missing defaults and nothing else: what kube does to objects read from the
    /// store (written before the default existed).
    pub fn fill_defaults(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(values) = &self.additional {
                    for x in m.values_mut() {
                        values.fill_defaults(x);
                    }
                    return;
                }
                for (k, p) in &self.properties {
                    match m.get_mut(k) {
                        Some(x) => p.fill_defaults(x),
                        None => {
                            if let Some(d) = &p.default {
                                let mut d = d.clone();
                                p.fill_defaults(&mut d);
                                m.insert(k.clone(), d);
                            }
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item) = &self.items {
                    items.iter_mut().for_each(|x| item.fill_defaults(x));
                }
            }
            _ => {}
        }
    }

    /// Validates `v` at `path`, adding kube's field errors.
    pub fn validate(&self, v: &Value, path: &str, errs: &mut FieldErrors) {
        let shown = if path.is_empty() { "body" } else { path };
        if v.is_null() {
            if !self.nullable && self.ty.is_some() {
                errs.invalid(
                    shown,
                    v,
                    &format!(
                        "{shown} in body must be of type {}: \"null\"",
                        self.ty.as_deref().unwrap_or("object")
                    ),
                );
            }
            return;
        }
        if self.int_or_string {
            if !(v.is_string() || v.is_i64() || v.is_u64()) {
                errs.invalid(
                    shown,
                    v,
                    &format!(
                        "{shown} in body must be of type integer,string: \"{}\"",
                        kind_of(v)
                    ),
                );
                return;
            }
        } else if let Some(ty) = &self.ty {
            let fits = match ty.as_str() {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                _ => true,
            };
            if !fits {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body must be of type {ty}: \"{}\"", kind_of(v)),
                );
                return;
            }
        }
        if !self.enumeration.is_empty() && !self.enumeration.contains(v) {
            let allowed: Vec<String> = self
                .enumeration
                .iter()
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            errs.not_supported(shown, v, &allowed);
        }
        match v {
            Value::String(s) => self.validate_string(s, v, shown, errs),
            Value::Number(n) => self.validate_number(n.as_f64().unwrap_or(0.0), v, shown, errs),
            Value::Array(items) => self.validate_array(items, v, path, shown, errs),
            Value::Object(m) => self.validate_object(m, v, path, shown, errs),
            _ => {}
        }
        for s in &self.all_of {
            s.validate(v, path, errs);
        }
        if !self.any_of.is_empty()
            && !self.any_of.iter().any(|s| {
                let mut e = FieldErrors::default();
                s.validate(v, path, &mut e);
                e.is_empty()
            })
        {
            errs.invalid(
                shown,
                v,
                &format!("{shown} in body must match anyOf schemas"),
            );
        }
        if !self.one_of.is_empty() {
            let matching = self
                .one_of
                .iter()
                .filter(|s| {
                    let mut e = FieldErrors::default();
                    s.validate(v, path, &mut e);
                    e.is_empty()
                })
                .count();
            if matching != 1 {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body must validate one and only one schema (oneOf)"),
                );
            }
        }
        if let Some(not) = &self.not {
            let mut e = FieldErrors::default();
            not.validate(v, path, &mut e);
            if e.is_empty() {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body must not validate the schema (not)"),
                );
            }
        }
    }

    fn validate_string(&self, s: &str, v: &Value, shown: &str, errs: &mut FieldErrors) {
        let chars = s.chars().count() as u64;
        if let Some(max) = self.max_length {
            if chars > max {
                errs.too_long(shown, max as usize);
            }
        }
        if let Some(min) = self.min_length {
            if chars < min {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should be at least {min} chars long"),
                );
            }
        }
        if let Some((p, re)) = &self.pattern {
            if !re.is_match(s) {
                errs.invalid(shown, v, &format!("{shown} in body should match '{p}'"));
            }
        }
        if let Some(f) = &self.format {
            if !format_matches(f, s) {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body must be of type {f}: {s:?}"),
                );
            }
        }
    }

    fn validate_number(&self, n: f64, v: &Value, shown: &str, errs: &mut FieldErrors) {
        let show = |x: f64| {
            if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{}", x as i64)
            } else {
                x.to_string()
            }
        };
        if let Some(min) = self.minimum {
            if n < min || (self.exclusive_minimum && n == min) {
                let how = if self.exclusive_minimum {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should be {how} {}", show(min)),
                );
            }
        }
        if let Some(max) = self.maximum {
            if n > max || (self.exclusive_maximum && n == max) {
                let how = if self.exclusive_maximum {
                    "less than"
                } else {
                    "less than or equal to"
                };
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should be {how} {}", show(max)),
                );
            }
        }
        if let Some(m) = self.multiple_of.filter(|m| *m > 0.0) {
            let q = n / m;
            if (q - q.round()).abs() > 1e-9 {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should be a multiple of {}", show(m)),
                );
            }
        }
    }

    fn validate_array(
        &self,
        items: &[Value],
        v: &Value,
        path: &str,
        shown: &str,
        errs: &mut FieldErrors,
    ) {
        let n = items.len() as u64;
        if let Some(max) = self.max_items {
            if n > max {
                errs.0.push(crate::apiserver::validation::FieldError {
                    kind: crate::apiserver::validation::ErrorType::TooLong,
                    field: shown.to_string(),
                    message: format!("Too many: {n}: must have at most {max} items"),
                });
            }
        }
        if let Some(min) = self.min_items {
            if n < min {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should have at least {min} items"),
                );
            }
        }
        match self.list_type.as_deref() {
            Some("set") => {
                for (i, x) in items.iter().enumerate() {
                    if items[..i].contains(x) {
                        errs.duplicate(format!("{path}[{i}]"), x);
                    }
                }
            }
            Some("map") => {
                let key_of = |x: &Value| -> Vec<Value> {
                    self.list_map_keys
                        .iter()
                        .map(|k| x.get(k).cloned().unwrap_or(Value::Null))
                        .collect()
                };
                for (i, x) in items.iter().enumerate() {
                    let key = key_of(x);
                    if items[..i].iter().any(|y| key_of(y) == key) {
                        let shown_key: Map<String, Value> = self
                            .list_map_keys
                            .iter()
                            .cloned()
                            .zip(key.iter().cloned())
                            .collect();
                        errs.duplicate(format!("{path}[{i}]"), &Value::Object(shown_key));
                    }
                }
            }
            _ if self.unique_items => {
                for (i, x) in items.iter().enumerate() {
                    if items[..i].contains(x) {
                        errs.duplicate(format!("{path}[{i}]"), x);
                    }
                }
            }
            _ => {}
        }
        if let Some(item) = &self.items {
            for (i, x) in items.iter().enumerate() {
                item.validate(x, &format!("{path}[{i}]"), errs);
            }
        }
    }

    fn validate_object(
        &self,
        m: &Map<String, Value>,
        v: &Value,
        path: &str,
        shown: &str,
        errs: &mut FieldErrors,
    ) {
        let child = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        for r in &self.required {
            if !m.contains_key(r) {
                errs.required(child(r), "");
            }
        }
        let n = m.len() as u64;
        if let Some(max) = self.max_properties {
            if n > max {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should have at most {max} properties"),
                );
            }
        }
        if let Some(min) = self.min_properties {
            if n < min {
                errs.invalid(
                    shown,
                    v,
                    &format!("{shown} in body should have at least {min} properties"),
                );
            }
        }
        for (k, x) in m {
            if let Some(p) = self.properties.get(k) {
                p.validate(x, &child(k), errs);
            } else if let Some(values) = &self.additional {
                values.validate(x, &child(k), errs);
            }
        }
        if self.embedded_resource {
            for f in ["apiVersion", "kind"] {
                if m.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    errs.required(child(f), "must not be empty");
                }
            }
        }
    }
}

/// The JSON type go-openapi names in its messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The string formats kube's CRD validation checks; unknown formats pass, as in kube.
fn format_matches(format: &str, s: &str) -> bool {
    use crate::apiserver::validation::{dns1123_label, dns1123_subdomain};
    match format {
        "byte" => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).is_ok(),
        "date-time" | "datetime" => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        }
        "date" => {
            let b = s.as_bytes();
            b.len() == 10
                && b[4] == b'-'
                && b[7] == b'-'
                && s.chars()
                    .enumerate()
                    .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.parse::<ipnet::IpNet>().is_ok(),
        "uuid" => {
            let b = s.as_bytes();
            b.len() == 36
                && s.chars().enumerate().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        "hostname" => dns1123_subdomain(s),
        "dns1123label" => dns1123_label(s),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::parse(
            &json!({
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {"type": "string", "minLength": 1},
                            "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                            "color": {"type": "string", "enum": ["red", "blue"]},
                            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                            "port": {"x-kubernetes-int-or-string": true},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 3},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        },
                    },
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                },
            }),
            "spec.versions[0].schema.openAPIV3Schema",
        )
        .unwrap()
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported_and_defaults_filled() {
        let s = schema();
        let mut obj = json!({"spec": {"image": "x", "bogus": 1, "free": {"a": {"b": 1}}, "color": null}, "extra": true});
        let mut unknown = Vec::new();
        s.prune_and_default(&mut obj, "", &mut unknown);
        assert_eq!(unknown, vec!["extra".to_string(), "spec.bogus".to_string()]);
        assert_eq!(
            obj,
            json!({"spec": {"image": "x", "free": {"a": {"b": 1}}, "replicas": 1}})
        );
    }

    #[test]
    fn values_are_checked_with_kube_messages() {
        let s = schema();
        let check = |v: Value| {
            let mut errs = FieldErrors::default();
            s.validate(&v, "", &mut errs);
            errs.0
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
        };
        assert!(
            check(json!({"spec": {"image": "x", "port": "http", "labels": {"a": "b"}}})).is_empty()
        );
        assert_eq!(
            check(json!({"spec": {"image": "x", "replicas": "two"}})),
            vec![
                r#"spec.replicas: Invalid value: "two": spec.replicas in body must be of type integer: "string""#
            ]
        );
        assert_eq!(
            check(json!({"spec": {"replicas": 11}})),
            vec![
                "spec.image: Required value".to_string(),
                "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10".to_string(),
            ]
        );
        assert_eq!(
            check(json!({"spec": {"image": "x", "color": "pink"}})),
            vec![r#"spec.color: Unsupported value: "pink": supported values: "red", "blue""#]
        );
        assert_eq!(
            check(json!({"spec": {"image": "x", "name": "ABCDEFG"}})),
            vec![
                "spec.name: Too long: may not be more than 5 bytes".to_string(),
                r#"spec.name: Invalid value: "ABCDEFG": spec.name in body should match '^[a-z]+$'"#
                    .to_string(),
            ]
        );
        assert_eq!(
            check(json!({"spec": {"image": "x", "tags": ["a", "a"], "labels": {"k": 1}}})),
            vec![
                r#"spec.labels.k: Invalid value: 1: spec.labels.k in body must be of type string: "integer""#.to_string(),
                r#"spec.tags[1]: Duplicate value: "a""#.to_string(),
            ]
        );
        assert_eq!(
            check(json!({"spec": {"image": "x", "port": 1.5}})),
            vec![
                r#"spec.port: Invalid value: 1.5: spec.port in body must be of type integer,string: "number""#
            ]
        );
    }

    #[test]
    fn schemas_without_types_or_with_bad_patterns_are_refused() {
        let e =
            Schema::parse(&json!({"type": "object", "properties": {"a": {}}}), "s").unwrap_err();
        assert_eq!(e.field, "s.properties[a].type");
        let e = Schema::parse(&json!({"type": "string", "pattern": "("}), "s").unwrap_err();
        assert_eq!(e.field, "s.pattern");
        let e = Schema::parse(&json!({"type": "array"}), "s").unwrap_err();
        assert_eq!(e.field, "s.items");
    }
}
