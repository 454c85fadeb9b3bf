//! What decoding into kube's Go types does to a built-in object, done on JSON with the
//! schema model: fields the type does not have are dropped (and reported, for
//! `fieldValidation`), values of the wrong JSON type are refused with the decoder's message,
//! nulls become absent, and numeric quantities become strings.
use serde_json::{json, Value};

use super::model::Ty;
use crate::apiserver::status::ApiError;

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {other:?}"
            ))),
        }
    }
}

impl FieldValidation {
    /// What the unknown fields found while decoding an object of `kind` come to: nothing
    /// (Ignore), warnings (Warn), or kube's strict decoding error (Strict).
    pub fn outcome(
        self,
        kind: &str,
        version: &str,
        unknown: &[String],
    ) -> Result<Vec<String>, ApiError> {
        let messages: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        self.settle(kind, version, messages)
    }

    /// What strict decoding's findings (`unknown field "x"`, `duplicate field "y"`) come
    /// to under this setting.
    pub fn settle(
        self,
        kind: &str,
        version: &str,
        messages: Vec<String>,
    ) -> Result<Vec<String>, ApiError> {
        match self {
            FieldValidation::Ignore => Ok(Vec::new()),
            FieldValidation::Warn => Ok(messages),
            FieldValidation::Strict if messages.is_empty() => Ok(Vec::new()),
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                messages.join(", ")
            ))),
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn go_type(ty: &Ty) -> &'static str {
    match ty {
        Ty::String => "string",
        Ty::Integer => "int",
        Ty::Number => "float64",
        Ty::Boolean => "bool",
        Ty::Array(_) => "[]",
        Ty::Map(_) => "map",
        Ty::Ref(_) => "struct",
        Ty::IntOrString => "intstr.IntOrString",
        Ty::Quantity => "resource.Quantity",
        Ty::Any => "interface {}",
    }
}

/// A number as kube prints the Quantity it decodes to (`2`, `500m`, `1.5`).
fn quantity_string(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let milli = (f * 1000.0).round();
    if (milli / 1000.0 - f).abs() < 1e-9 && milli % 1000.0 != 0.0 {
        format!("{}m", milli as i64)
    } else {
        f.to_string()
    }
}

/// The zero value of a field's type as Go's encoder sees it (structs are never empty).
fn is_empty(v: &Value, ty: &Ty) -> bool {
    match (v, ty) {
        (_, Ty::Ref(_) | Ty::Any) => false,
        (Value::String(s), _) => s.is_empty(),
        (Value::Bool(b), _) => !b,
        (Value::Number(n), Ty::Integer | Ty::Number) => n.as_f64() == Some(0.0),
        (Value::Array(a), _) => a.is_empty(),
        (Value::Object(o), Ty::Map(_)) => o.is_empty(),
        _ => false,
    }
}

struct Walk<'a> {
    unknown: &'a mut Vec<String>,
    kind: &'a str,
}

impl Walk<'_> {
    fn type_error(&self, path: &str, v: &Value, ty: &Ty) -> ApiError {
        let field = path.trim_start_matches('.');
        ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go struct field {}.{} of type {}",
            json_type(v),
            self.kind,
            field,
            go_type(ty)
        ))
    }

    /// Walks `v` as type `ty`; `path` is the field path so far (`.spec.replicas`), `shown` the
    /// same with list indices, as unknown-field reports give it.
    fn walk(&mut self, v: &mut Value, ty: &Ty, path: &str, shown: &str) -> Result<(), ApiError> {
        if v.is_null() {
            return Ok(());
        }
        let model = super::model();
        match ty {
            Ty::Any => Ok(()),
            Ty::String if v.is_string() => Ok(()),
            Ty::Boolean if v.is_boolean() => Ok(()),
            Ty::Number if v.is_number() => Ok(()),
            Ty::Integer if v.is_i64() || v.is_u64() => Ok(()),
            Ty::IntOrString if v.is_string() || v.is_i64() => Ok(()),
            Ty::Quantity => match v {
                Value::String(_) => Ok(()),
                Value::Number(n) => {
                    *v = json!(quantity_string(n));
                    Ok(())
                }
                _ => Err(self.type_error(path, v, ty)),
            },
            Ty::Array(item) => match v {
                Value::Array(items) => {
                    for (i, x) in items.iter_mut().enumerate() {
                        self.walk(x, item, path, &format!("{shown}[{i}]"))?;
                    }
                    Ok(())
                }
                _ => Err(self.type_error(path, v, ty)),
            },
            Ty::Map(value) => match v {
                Value::Object(m) => {
                    for (k, x) in m.iter_mut() {
                        self.walk(x, value, path, &format!("{shown}[{k}]"))?;
                    }
                    Ok(())
                }
                _ => Err(self.type_error(path, v, ty)),
            },
            Ty::Ref(def) => match v {
                Value::Object(m) => {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    for k in keys {
                        let child_path = format!("{path}.{k}");
                        let child_shown = if shown.is_empty() {
                            k.clone()
                        } else {
                            format!("{shown}.{k}")
                        };
                        match model.field(*def, &k) {
                            Some(f) => {
                                if m.get(&k).is_some_and(Value::is_null) {
                                    m.remove(&k);
                                    continue;
                                }
                                if let Some(x) = m.get_mut(&k) {
                                    self.walk(x, &f.ty, &child_path, &child_shown)?;
                                }
                                // What Go's `omitempty` would not write, kube never shows.
                                if f.omit_empty && m.get(&k).is_some_and(|x| is_empty(x, &f.ty)) {
                                    m.remove(&k);
                                }
                            }
                            None => {
                                self.unknown.push(child_shown);
                                m.remove(&k);
                            }
                        }
                    }
                    Ok(())
                }
                _ => Err(self.type_error(path, v, ty)),
            },
            _ => Err(self.type_error(path, v, ty)),
        }
    }
}

/// Normalizes a built-in object of `kind` in `group/version` as decoding does; returns the
/// warnings to send (unknown fields under `Warn`), or the error (type errors always, unknown
/// fields under `Strict`). Kinds without a schema pass through untouched.
pub fn normalize(
    group: &str,
    version: &str,
    kind: &str,
    obj: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(ty) = super::kind_type(group, version, kind) else {
        return Ok(Vec::new());
    };
    let mut unknown = Vec::new();
    let cannot_handle = |e: ApiError| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {}",
            e.message
        ))
    };
    Walk {
        unknown: &mut unknown,
        kind,
    }
    .walk(obj, &ty, "", "")
    .map_err(cannot_handle)?;
    validation.outcome(kind, version, &unknown)
}

/// Normalizes an object's `metadata` as an ObjectMeta (what a custom resource's decoding
/// does to it), adding its unknown fields (`metadata.x`) to `unknown`.
pub fn normalize_metadata(
    kind: &str,
    obj: &mut Value,
    unknown: &mut Vec<String>,
) -> Result<(), ApiError> {
    let model = super::model();
    let Some(def) = model
        .defs
        .iter()
        .position(|d| d.name == "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    else {
        return Ok(());
    };
    let Some(meta) = obj.get_mut("metadata") else {
        return Ok(());
    };
    Walk { unknown, kind }.walk(meta, &Ty::Ref(def as u32), ".metadata", "metadata")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_dropped_and_reported() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "bogus": 1},
            "spec": {"replicas": 2, "extra": true, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Always"}]}}}});
        let w = normalize("apps", "v1", "Deployment", &mut d, FieldValidation::Warn).unwrap();
        assert_eq!(
            w,
            vec![
                "unknown field \"metadata.bogus\"".to_string(),
                "unknown field \"spec.extra\"".to_string(),
                "unknown field \"spec.template.spec.containers[0].imagePullPolcy\"".to_string(),
            ]
        );
        assert!(d["spec"].get("extra").is_none());
        let mut d2 = json!({"spec": {"extra": true}});
        let e =
            normalize("apps", "v1", "Deployment", &mut d2, FieldValidation::Strict).unwrap_err();
        assert!(
            e.message
                .contains("strict decoding error: unknown field \"spec.extra\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn wrong_types_are_refused_and_quantities_become_strings() {
        let mut d = json!({"spec": {"replicas": "two"}});
        let e = normalize("apps", "v1", "Deployment", &mut d, FieldValidation::Ignore).unwrap_err();
        assert_eq!(e.code.as_u16(), 400);
        assert!(
            e.message.contains(
                "cannot unmarshal string into Go struct field Deployment.spec.replicas of type int"
            ),
            "{}",
            e.message
        );
        let mut p = json!({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": 0.5, "memory": 128}}}]}});
        normalize("", "v1", "Pod", &mut p, FieldValidation::Strict).unwrap();
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "128"
        );
    }
}
