//! What the API server does to every object on its way in and out: kind and apiVersion
//! checks, names (given or generated, validated as DNS-1123), uid and creationTimestamp,
//! resourceVersion from store revisions.
use rand::Rng;
use serde_json::{json, Map, Value};

use super::resources::Resource;
use super::status::ApiError;

/// The object's name (empty when it has none yet).
pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    m.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// Checks apiVersion and kind (filling them when absent) as kube's decoder does.
pub fn check_type(r: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let want_version = r.api_version();
    match o.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != want_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want_version})"
            )))
        }
        _ => {}
    }
    match o.get("kind").and_then(Value::as_str) {
        Some(k) if k != r.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                r.kind
            )))
        }
        _ => {}
    }
    o.insert("apiVersion".into(), json!(want_version));
    o.insert("kind".into(), json!(r.kind));
    Ok(())
}

/// kube's name validation: DNS-1123 labels for namespaces, DNS-1035 labels (starting with a
/// letter) for services, DNS-1123 subdomains otherwise.
pub fn validate_name(r: &Resource, name: &str) -> Result<(), ApiError> {
    use super::validation::{dns1123_label, dns1123_subdomain, LABEL_MSG, SUBDOMAIN_MSG};
    let problem = match (r.group, r.plural) {
        ("", "namespaces") => (!dns1123_label(name)).then_some(LABEL_MSG),
        ("", "services") => (!(dns1123_label(name)
            && name.starts_with(|c: char| c.is_ascii_lowercase())))
        .then_some(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character (e.g. \
             'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        ),
        // RBAC objects are named by any valid path segment (`system:node`), and so are
        // APIServices (`v1.` for the core group).
        ("rbac.authorization.k8s.io", _) | ("apiregistration.k8s.io", _) => match name {
            "." => Some("may not be '.'"),
            ".." => Some("may not be '..'"),
            n if n.contains('/') => Some("may not contain '/'"),
            n if n.contains('%') => Some("may not contain '%'"),
            _ => None,
        },
        _ => (!dns1123_subdomain(name)).then_some(SUBDOMAIN_MSG),
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(ApiError::invalid(
            r.kind,
            name,
            "metadata.name",
            &format!("Invalid value: \"{name}\": {p}"),
        )),
    }
}

/// kube's name suffix alphabet (no vowels, no confusable characters).
const SUFFIX: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn generate_name(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| SUFFIX[rng.gen_range(0..SUFFIX.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// RFC 3339 in UTC with second precision, as metav1.Time serialises.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub fn rfc3339(now: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Sets metadata.resourceVersion from the store revision (objects are stored without it).
pub fn with_resource_version(mut obj: Value, rev: i64) -> Value {
    if let Ok(m) = meta_mut(&mut obj) {
        m.insert("resourceVersion".into(), json!(rev.to_string()));
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_as_dns_1123() {
        let ns = super::super::resources::find("", "v1", "namespaces").unwrap();
        let cm = super::super::resources::find("", "v1", "configmaps").unwrap();
        assert!(validate_name(ns, "kube-system").is_ok());
        assert!(validate_name(ns, "a.b").is_err());
        assert!(validate_name(cm, "a.b").is_ok());
        let e = validate_name(cm, "Bad_Name").unwrap_err();
        assert_eq!(e.code.as_u16(), 422);
        assert!(e
            .message
            .contains("metadata.name: Invalid value: \"Bad_Name\""));
    }

    #[test]
    fn uids_look_like_uuids() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
