//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), which client-go's typed
//! clients send (kubectl create namespace/configmap/secret/service/job/..., the conformance
//! suite): the `k8s\0` envelope around a runtime.Unknown, decoded with the descriptors of
//! upstream's .proto files (proto/k8s, compiled by build.rs) and turned into the JSON kube's
//! Go types would print: its field names, inlined structs, zero values omitted where Go's
//! `omitempty` omits them (proto/k8s/json_fields.txt), times as RFC 3339, int-or-strings,
//! quantities and raw extensions as themselves. Responses stay JSON, which those clients
//! also accept.
use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value as PValue,
};
use serde_json::{json, Map, Value};

use super::status::ApiError;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s_descriptors.bin"));
static JSON_FIELDS: &str = include_str!("../../proto/k8s/json_fields.txt");

/// The media type client-go's typed clients use.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// kube's protobuf envelope prefix.
const MAGIC: &[u8] = b"k8s\x00";

static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| {
    DescriptorPool::decode(DESCRIPTORS)
        .map_err(|e| tracing::error!(error = %e, "the embedded protobuf descriptors do not decode"))
        .ok()
});

/// How a field appears in JSON when not by its own name with zeros omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Zero,
    Inline,
    Name(String),
}

static RULES: LazyLock<HashMap<(String, String), Vec<Rule>>> = LazyLock::new(|| {
    let mut m: HashMap<(String, String), Vec<Rule>> = HashMap::new();
    for line in JSON_FIELDS.lines() {
        let mut parts = line.split_whitespace();
        let (Some(msg), Some(field), Some(rule)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rule = match rule {
            "zero" => Rule::Zero,
            "inline" => Rule::Inline,
            r => match r.strip_prefix("name=") {
                Some(n) => Rule::Name(n.to_string()),
                None => continue,
            },
        };
        m.entry((msg.to_string(), field.to_string()))
            .or_default()
            .push(rule);
    }
    m
});

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// The message type of a kind in an API version.
/// A message of the embedded descriptors by its full name (`openapi.v2.Document`).
pub fn message_named(full_name: &str) -> Option<MessageDescriptor> {
    POOL.as_ref()?.get_message_by_name(full_name)
}

fn message_for(pool: &DescriptorPool, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let label = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    [
        format!("k8s.io.api.{label}.{version}.{kind}"),
        format!("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.{version}.{kind}"),
        format!("k8s.io.apimachinery.pkg.apis.meta.{version}.{kind}"),
        format!("k8s.io.apimachinery.pkg.apis.meta.v1.{kind}"),
    ]
    .iter()
    .find_map(|n| pool.get_message_by_name(n))
}

/// Decodes a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let pool = POOL
        .as_ref()
        .ok_or_else(|| ApiError::internal("protobuf descriptors are unavailable"))?;
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the protobuf body does not start with kube's envelope (k8s\\0)"))?;
    let unknown_desc = pool
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .ok_or_else(|| ApiError::internal("runtime.Unknown is missing from the descriptors"))?;
    let unknown = DynamicMessage::decode(unknown_desc, rest)
        .map_err(|e| bad(format!("the protobuf envelope does not decode: {e}")))?;
    let type_meta = unknown.get_field_by_name("typeMeta");
    let type_meta = type_meta.as_deref().and_then(PValue::as_message);
    let text = |m: Option<&DynamicMessage>, f: &str| -> String {
        m.and_then(|m| {
            m.get_field_by_name(f)
                .and_then(|v| v.as_str().map(String::from))
        })
        .unwrap_or_default()
    };
    let api_version = text(type_meta, "apiVersion");
    let kind = text(type_meta, "kind");
    let raw = unknown
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let desc = message_for(pool, &api_version, &kind).ok_or_else(|| {
        bad(format!(
            "no kind \"{kind}\" is registered for version \"{api_version}\" in protobuf"
        ))
    })?;
    let msg = DynamicMessage::decode(desc, raw.as_ref()).map_err(|e| {
        bad(format!(
            "{kind} in version \"{api_version}\" cannot be handled as a {kind}: {e}"
        ))
    })?;
    let mut obj = message(&msg);
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

fn is_zero(v: &PValue) -> bool {
    match v {
        PValue::Bool(b) => !b,
        PValue::I32(n) => *n == 0,
        PValue::I64(n) => *n == 0,
        PValue::U32(n) => *n == 0,
        PValue::U64(n) => *n == 0,
        PValue::F32(n) => *n == 0.0,
        PValue::F64(n) => *n == 0.0,
        PValue::String(s) => s.is_empty(),
        PValue::Bytes(b) => b.is_empty(),
        PValue::EnumNumber(n) => *n == 0,
        PValue::List(l) => l.is_empty(),
        PValue::Map(m) => m.is_empty(),
        PValue::Message(_) => false,
    }
}

fn rfc3339(seconds: i64, nanos: i32, micro: bool) -> Value {
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(seconds) else {
        return Value::Null;
    };
    let base = super::objects::rfc3339(t);
    if micro {
        let b = base.trim_end_matches('Z');
        return json!(format!("{b}.{:06}Z", nanos / 1000));
    }
    json!(base)
}

fn raw_json(m: &DynamicMessage, field: &str) -> Value {
    m.get_field_by_name(field)
        .and_then(|v| v.as_bytes().cloned())
        .filter(|b| !b.is_empty())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// A message as kube's JSON.
fn message(m: &DynamicMessage) -> Value {
    let d = m.descriptor();
    let int = |f: &str| -> i64 {
        match m.get_field_by_name(f).as_deref() {
            Some(PValue::I64(n)) => *n,
            Some(PValue::I32(n)) => i64::from(*n),
            _ => 0,
        }
    };
    let text = |f: &str| -> String {
        m.get_field_by_name(f)
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    match d.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            return rfc3339(int("seconds"), int("nanos") as i32, false)
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            return rfc3339(int("seconds"), int("nanos") as i32, true)
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return if int("type") == 1 {
                json!(text("strVal"))
            } else {
                json!(int("intVal"))
            }
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => return json!(text("string")),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            return json!(go_duration(int("duration")))
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => return raw_json(m, "raw"),
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => return raw_json(m, "Raw"),
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => {
            return raw_json(m, "raw")
        }
        // The schema unions print as one of their cases, as their Go MarshalJSON does.
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray" => {
            return match m.get_field_by_name("jSONSchemas").as_deref() {
                Some(PValue::List(l)) if !l.is_empty() => value(&PValue::List(l.clone())),
                _ => present(m, "schema").unwrap_or(Value::Null),
            };
        }
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool" => {
            return present(m, "schema").unwrap_or_else(|| {
                json!(matches!(
                    m.get_field_by_name("allows").as_deref(),
                    Some(PValue::Bool(true))
                ))
            });
        }
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray" => {
            return match m.get_field_by_name("property").as_deref() {
                Some(PValue::List(l)) if !l.is_empty() => value(&PValue::List(l.clone())),
                _ => present(m, "schema").unwrap_or(Value::Null),
            };
        }
        _ => {}
    }
    // Slice aliases (ExtraValue, ...) are a message with one repeated `items` field.
    if d.name().ends_with("ExtraValue") {
        return m
            .get_field_by_name("items")
            .map(|v| value(&v))
            .unwrap_or(json!([]));
    }
    let mut out = Map::new();
    fill(m, &mut out);
    Value::Object(out)
}

/// A message field's JSON when the field is set.
fn present(m: &DynamicMessage, field: &str) -> Option<Value> {
    let f = m.descriptor().get_field_by_name(field)?;
    m.has_field(&f).then(|| value(&m.get_field(&f)))
}

fn fill(m: &DynamicMessage, out: &mut Map<String, Value>) {
    let full = m.descriptor().full_name().to_string();
    for (f, v) in m.fields() {
        let rules = RULES.get(&(full.clone(), f.name().to_string()));
        let has = |r: &Rule| rules.is_some_and(|rs| rs.contains(r));
        if has(&Rule::Inline) {
            if let Some(inner) = v.as_message() {
                fill(inner, out);
            }
            continue;
        }
        if is_zero(v) && !has(&Rule::Zero) && !matches!(v, PValue::List(_) | PValue::Map(_)) {
            continue;
        }
        let name = rules
            .and_then(|rs| {
                rs.iter().find_map(|r| match r {
                    Rule::Name(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| f.name().to_string());
        let json = value(v);
        if !json.is_null() {
            out.insert(name, json);
        }
    }
}

fn value(v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => message(m),
        PValue::List(l) => Value::Array(l.iter().map(value).collect()),
        PValue::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                out.insert(key, value(v));
            }
            Value::Object(out)
        }
    }
}

/// A duration in nanoseconds as Go prints it (`1h2m3s`, `1.5s`, `0s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let ns = ns.unsigned_abs();
    let (h, rem) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let secs = rem as f64 / 1e9;
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if h > 0 {
        s.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        s.push_str(&format!("{m}m"));
    }
    s.push_str(&format!("{secs}s"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Builds a body the way client-go does: the envelope around the encoded object.
    fn envelope(api_version: &str, kind: &str, obj: DynamicMessage) -> Vec<u8> {
        let pool = POOL.as_ref().unwrap();
        let unknown = pool
            .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
            .unwrap();
        let tm = pool
            .get_message_by_name("k8s.io.apimachinery.pkg.runtime.TypeMeta")
            .unwrap();
        let mut t = DynamicMessage::new(tm);
        t.set_field_by_name("apiVersion", PValue::String(api_version.into()));
        t.set_field_by_name("kind", PValue::String(kind.into()));
        let mut u = DynamicMessage::new(unknown);
        u.set_field_by_name("typeMeta", PValue::Message(t));
        u.set_field_by_name("raw", PValue::Bytes(obj.encode_to_vec().into()));
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn a_namespace_and_a_secret_decode_as_their_json() {
        let pool = POOL.as_ref().unwrap();
        let meta_desc = pool
            .get_message_by_name("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .unwrap();
        let mut meta = DynamicMessage::new(meta_desc);
        meta.set_field_by_name("name", PValue::String("s1".into()));
        // What a Go encoder writes for unset non-pointer strings.
        meta.set_field_by_name("generateName", PValue::String(String::new()));
        let mut secret = DynamicMessage::new(
            pool.get_message_by_name("k8s.io.api.core.v1.Secret")
                .unwrap(),
        );
        secret.set_field_by_name("metadata", PValue::Message(meta));
        let mut data = HashMap::new();
        data.insert(
            MapKey::String("k".into()),
            PValue::Bytes(b"v".to_vec().into()),
        );
        secret.set_field_by_name("data", PValue::Map(data));
        secret.set_field_by_name("type", PValue::String("Opaque".into()));
        let obj = decode(&envelope("v1", "Secret", secret)).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "data": {"k": "dg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn inline_fields_flatten_and_int_or_string_reads_as_either() {
        let pool = POOL.as_ref().unwrap();
        let vs = pool
            .get_message_by_name("k8s.io.api.core.v1.VolumeSource")
            .unwrap();
        let ed = pool
            .get_message_by_name("k8s.io.api.core.v1.EmptyDirVolumeSource")
            .unwrap();
        let mut source = DynamicMessage::new(vs);
        source.set_field_by_name("emptyDir", PValue::Message(DynamicMessage::new(ed)));
        let mut vol = DynamicMessage::new(
            pool.get_message_by_name("k8s.io.api.core.v1.Volume")
                .unwrap(),
        );
        vol.set_field_by_name("name", PValue::String("v".into()));
        vol.set_field_by_name("volumeSource", PValue::Message(source));
        assert_eq!(message(&vol), json!({"name": "v", "emptyDir": {}}));
        let mut ios = DynamicMessage::new(
            pool.get_message_by_name("k8s.io.apimachinery.pkg.util.intstr.IntOrString")
                .unwrap(),
        );
        ios.set_field_by_name("type", PValue::I64(1));
        ios.set_field_by_name("strVal", PValue::String("http".into()));
        assert_eq!(message(&ios), json!("http"));
        assert!(decode(b"{}").is_err());
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
    }

    #[test]
    fn schema_unions_print_as_the_case_they_hold() {
        let pool = POOL.as_ref().unwrap();
        let v1 = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1";
        let msg =
            |n: &str| DynamicMessage::new(pool.get_message_by_name(&format!("{v1}.{n}")).unwrap());
        let mut item = msg("JSONSchemaProps");
        item.set_field_by_name("type", PValue::String("string".into()));
        let mut items = msg("JSONSchemaPropsOrArray");
        items.set_field_by_name("schema", PValue::Message(item.clone()));
        let mut extra = msg("JSONSchemaPropsOrBool");
        extra.set_field_by_name("allows", PValue::Bool(true));
        let mut array = msg("JSONSchemaProps");
        array.set_field_by_name("type", PValue::String("array".into()));
        array.set_field_by_name("items", PValue::Message(items));
        array.set_field_by_name("additionalItems", PValue::Message(extra));
        assert_eq!(
            message(&array),
            json!({"type": "array", "items": {"type": "string"}, "additionalItems": true})
        );
        let mut deps = msg("JSONSchemaPropsOrStringArray");
        deps.set_field_by_name("property", PValue::List(vec![PValue::String("a".into())]));
        assert_eq!(message(&deps), json!(["a"]));
        let mut with_schema = msg("JSONSchemaPropsOrBool");
        with_schema.set_field_by_name("schema", PValue::Message(item));
        assert_eq!(message(&with_schema), json!({"type": "string"}));
    }
}
