//! Field errors as kube-apiserver reports them: each names its field path and problem
//! (`spec.containers[0].image: Required value`), and together they make one 422 Invalid
//! Status with a cause per field.
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::status::ApiError;

/// kube's field.ErrorType, as the reason of a cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    Forbidden,
    Duplicate,
    TooLong,
    NotFound,
}

impl ErrorType {
    fn reason(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::NotFound => "FieldValueNotFound",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    /// The full message after the field path, e.g. `Invalid value: "x": must be positive`.
    pub message: String,
}

/// The field errors found in one object.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

/// A value as kube's messages print it (Go's %#v for strings and string maps).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(m) if m.values().all(Value::is_string) => {
            let mut pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or("")))
                .collect();
            pairs.sort();
            format!("map[string]string{{{}}}", pairs.join(", "))
        }
        other => other.to_string(),
    }
}

impl FieldErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn required(&mut self, field: impl Into<String>, detail: &str) {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        self.0.push(FieldError {
            kind: ErrorType::Required,
            field: field.into(),
            message,
        });
    }

    pub fn invalid(&mut self, field: impl Into<String>, value: &Value, detail: &str) {
        self.0.push(FieldError {
            kind: ErrorType::Invalid,
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", show(value)),
        });
    }

    pub fn not_supported(&mut self, field: impl Into<String>, value: &Value, allowed: &[&str]) {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        self.0.push(FieldError {
            kind: ErrorType::NotSupported,
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                show(value),
                list.join(", ")
            ),
        });
    }

    pub fn forbidden(&mut self, field: impl Into<String>, detail: &str) {
        self.0.push(FieldError {
            kind: ErrorType::Forbidden,
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        });
    }

    pub fn duplicate(&mut self, field: impl Into<String>, value: &Value) {
        self.0.push(FieldError {
            kind: ErrorType::Duplicate,
            field: field.into(),
            message: format!("Duplicate value: {}", show(value)),
        });
    }

    pub fn too_long(&mut self, field: impl Into<String>, max: usize) {
        self.0.push(FieldError {
            kind: ErrorType::TooLong,
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }

    /// A reference to something that is not there (a volume mount naming no volume).
    pub fn not_found_volume(&mut self, field: impl Into<String>, value: &str) {
        self.0.push(FieldError {
            kind: ErrorType::NotFound,
            field: field.into(),
            message: format!("Not found: {value:?}"),
        });
    }

    /// An immutable field that changed.
    pub fn immutable(&mut self, field: impl Into<String>, value: &Value) {
        self.0.push(FieldError {
            kind: ErrorType::Invalid,
            field: field.into(),
            message: format!("Invalid value: {}: field is immutable", show(value)),
        });
    }

    /// Ok when no errors were found, else kube's 422 Invalid Status.
    pub fn into_result(self, kind: &str, name: &str, group: &str) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        let summary = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let causes: Vec<Value> = self
            .0
            .iter()
            .map(|e| json!({"reason": e.kind.reason(), "message": e.message, "field": e.field}))
            .collect();
        let mut err = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {summary}"),
        );
        err.causes = causes;
        err.details = Some(Box::new((
            name.to_string(),
            group.to_string(),
            kind.to_string(),
        )));
        Err(err)
    }
}

/// kube's DNS-1123 label check (names of namespaces, services, containers, ports).
/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (kube's IsDNS1035Label).
pub fn dns1035_label(s: &str) -> bool {
    dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

pub fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

pub const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric \
    characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  \
    or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
    (e.g. 'example.com', regex used for validation is \
    '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// A qualified name (label keys, annotation keys, finalizers): `[prefix/]name`, the name part
/// at most 63 characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| p.is_empty() || !dns1123_subdomain(p)) {
        return false;
    }
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label value: empty, or up to 63 characters like a qualified name's name part.
pub fn label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

pub const QUALIFIED_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or \
    '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  \
    or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

pub const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of \
    alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
    character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is \
    '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// kube's limit on the total size of an object's annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// ObjectMeta checks every kind shares: label keys and values, annotation keys and size,
/// finalizer names.
pub fn object_meta(obj: &Value, errs: &mut FieldErrors) {
    let Some(meta) = obj.get("metadata") else {
        return;
    };
    if let Some(labels) = meta.get("labels") {
        match labels.as_object() {
            Some(labels) => {
                for (k, v) in labels {
                    if !qualified_name(k) {
                        errs.invalid("metadata.labels", &json!(k), QUALIFIED_MSG);
                    }
                    match v.as_str() {
                        Some(s) if !label_value(s) => {
                            errs.invalid("metadata.labels", v, LABEL_VALUE_MSG)
                        }
                        Some(_) => {}
                        None if v.is_null() => {}
                        None => errs.invalid("metadata.labels", v, "must be a string"),
                    }
                }
            }
            None if labels.is_null() => {}
            None => errs.invalid("metadata.labels", labels, "must be an object"),
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            if !qualified_name(&k.to_ascii_lowercase()) {
                errs.invalid("metadata.annotations", &json!(k), QUALIFIED_MSG);
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errs.too_long("metadata.annotations", MAX_ANNOTATIONS_BYTES);
        }
    }
    if let Some(finalizers) = meta.get("finalizers").and_then(Value::as_array) {
        for (i, f) in finalizers.iter().enumerate() {
            if !f.as_str().is_some_and(qualified_name) {
                errs.invalid(format!("metadata.finalizers[{i}]"), f, QUALIFIED_MSG);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_shaped_like_kube() {
        let mut e = FieldErrors::default();
        e.required("spec.containers[0].image", "");
        let err = e.into_result("Pod", "p", "").unwrap_err();
        assert_eq!(
            err.message,
            "Pod \"p\" is invalid: spec.containers[0].image: Required value"
        );
        assert_eq!(err.causes[0]["reason"], "FieldValueRequired");
        let mut e = FieldErrors::default();
        e.required("a", "");
        e.invalid("b", &json!(-1), "must be greater than or equal to 0");
        let err = e.into_result("Deployment", "d", "apps").unwrap_err();
        assert_eq!(
            err.message,
            "Deployment \"d\" is invalid: [a: Required value, b: Invalid value: -1: must be greater than or equal to 0]"
        );
    }

    #[test]
    fn label_rules() {
        assert!(qualified_name("app.kubernetes.io/name"));
        assert!(qualified_name("app"));
        assert!(!qualified_name("-app"));
        assert!(!qualified_name("a/b/c"));
        assert!(label_value(""));
        assert!(label_value("v1.2_3"));
        assert!(!label_value("has space"));
        let mut e = FieldErrors::default();
        object_meta(
            &json!({"metadata": {"labels": {"ok": "bad value"}}}),
            &mut e,
        );
        assert_eq!(e.0.len(), 1);
    }
}
