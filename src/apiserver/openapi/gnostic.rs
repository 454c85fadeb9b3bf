//! The OpenAPI v2 document in its protobuf form (gnostic's `openapi.v2.Document`), which kubectl asks for and
//! nothing else when it validates kinds its v3 documents do not describe (a `List`). The
//! JSON document is read into gnostic's messages the way gnostic's compiler reads it: `$ref`
//! is `_ref`, `x-` keys are vendor extensions holding their value as YAML (JSON is YAML),
//! JSON maps are lists of named entries, and one-of wrappers pick their case from the value.
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value as PValue,
};
use serde_json::Value;

/// The protobuf media type of the v2 document (what responses carry: Go's mime parser
/// refuses the `@` of the older name, which clients still ask for).
pub const MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
pub const MEDIA_TYPE_DEPRECATED: &str =
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The v2 document `doc` (OpenAPI JSON) as an encoded `openapi.v2.Document`; None when the
/// embedded descriptors lack gnostic's messages.
pub fn encode(doc: &Value) -> Option<Vec<u8>> {
    use prost::Message;
    let md = super::super::protobuf::message_named("openapi.v2.Document")?;
    Some(message(&md, doc).encode_to_vec())
}

fn field(md: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    md.get_field_by_name(name)
}

/// Sets `name` (a one-of case or a plain field) of `m` to `v` read by the field's kind.
fn set(m: &mut DynamicMessage, name: &str, v: &Value) {
    if let Some(f) = field(&m.descriptor(), name) {
        if let Some(x) = field_value(&f, v) {
            m.set_field(&f, x);
        }
    }
}

/// A field's value from JSON: lists from arrays (or a single value), messages and scalars
/// by kind; None when the JSON does not fit (left unset, as gnostic skips it).
fn field_value(f: &FieldDescriptor, v: &Value) -> Option<PValue> {
    if f.is_list() {
        let items: Vec<PValue> = match v {
            Value::Array(xs) => xs.iter().filter_map(|x| single(&f.kind(), x)).collect(),
            other => single(&f.kind(), other).into_iter().collect(),
        };
        return Some(PValue::List(items));
    }
    single(&f.kind(), v)
}

fn single(kind: &Kind, v: &Value) -> Option<PValue> {
    Some(match kind {
        Kind::Message(md) => PValue::Message(message(md, v)),
        Kind::String => PValue::String(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        Kind::Bool => PValue::Bool(v.as_bool()?),
        Kind::Double => PValue::F64(v.as_f64()?),
        Kind::Int64 => PValue::I64(v.as_i64()?),
        _ => return None,
    })
}

/// Names a JSON key's field: `$ref` is `_ref`, camelCase is snake_case.
fn field_name(key: &str) -> String {
    if key == "$ref" {
        return "_ref".into();
    }
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON value as a gnostic message of type `md`.
fn message(md: &MessageDescriptor, v: &Value) -> DynamicMessage {
    let mut m = DynamicMessage::new(md.clone());
    let str_of = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    match md.name() {
        "Any" => {
            set(&mut m, "yaml", &Value::String(v.to_string()));
        }
        "TypeItem" | "StringArray" => set(&mut m, "value", v),
        "ItemsItem" => set(&mut m, "schema", v),
        "AdditionalPropertiesItem" => match v {
            Value::Bool(_) => set(&mut m, "boolean", v),
            _ => set(&mut m, "schema", v),
        },
        "SchemaItem" => match str_of("type") {
            "file" => set(&mut m, "file_schema", v),
            _ => set(&mut m, "schema", v),
        },
        "ParametersItem" | "ResponseValue" if v.get("$ref").is_some() => {
            set(&mut m, "json_reference", v)
        }
        "ParametersItem" => set(&mut m, "parameter", v),
        "ResponseValue" => set(&mut m, "response", v),
        "Parameter" => match str_of("in") {
            "body" => set(&mut m, "body_parameter", v),
            _ => set(&mut m, "non_body_parameter", v),
        },
        "NonBodyParameter" => {
            let case = match str_of("in") {
                "header" => "header_parameter_sub_schema",
                "formData" => "form_data_parameter_sub_schema",
                "path" => "path_parameter_sub_schema",
                _ => "query_parameter_sub_schema",
            };
            set(&mut m, case, v);
        }
        "SecurityDefinitionsItem" => {
            let case = match (str_of("type"), str_of("flow")) {
                ("basic", _) => "basic_authentication_security",
                ("oauth2", "implicit") => "oauth2_implicit_security",
                ("oauth2", "password") => "oauth2_password_security",
                ("oauth2", "application") => "oauth2_application_security",
                ("oauth2", _) => "oauth2_access_code_security",
                _ => "api_key_security",
            };
            set(&mut m, case, v);
        }
        // Maps whose keys are paths or response codes, beside vendor extensions.
        "Paths" => named_entries(&mut m, v, "path"),
        "Responses" => named_entries(&mut m, v, "response_code"),
        _ if is_named_map(md) => named_entries(&mut m, v, "additional_properties"),
        _ => {
            let Some(obj) = v.as_object() else {
                return m;
            };
            for (k, x) in obj {
                if k.starts_with("x-") {
                    push_extension(&mut m, k, x);
                } else {
                    set(&mut m, &field_name(k), x);
                }
            }
        }
    }
    m
}

/// A message that is a JSON map: one repeated `additional_properties` of `Named*` entries.
fn is_named_map(md: &MessageDescriptor) -> bool {
    let mut fields = md.fields();
    match (fields.next(), fields.next()) {
        (Some(f), None) => f.name() == "additional_properties" && f.is_list(),
        _ => false,
    }
}

/// Each key of the JSON object `v` as a `{name, value}` entry of `list`, except `x-` keys,
/// which are vendor extensions.
fn named_entries(m: &mut DynamicMessage, v: &Value, list: &str) {
    let Some(obj) = v.as_object() else { return };
    let Some(f) = field(&m.descriptor(), list) else {
        return;
    };
    let Kind::Message(entry) = f.kind() else {
        return;
    };
    let Some(value_field) = field(&entry, "value") else {
        return;
    };
    let mut items = Vec::new();
    for (k, x) in obj {
        if k.starts_with("x-") && list != "additional_properties" {
            push_extension(m, k, x);
            continue;
        }
        let mut e = DynamicMessage::new(entry.clone());
        e.set_field_by_name("name", PValue::String(k.clone()));
        if let Some(val) = single(&value_field.kind(), x) {
            e.set_field(&value_field, val);
        }
        items.push(PValue::Message(e));
    }
    m.set_field(&f, PValue::List(items));
}

/// Appends an `x-` key to the message's `vendor_extension` list.
fn push_extension(m: &mut DynamicMessage, key: &str, v: &Value) {
    let Some(f) = field(&m.descriptor(), "vendor_extension") else {
        return;
    };
    let Kind::Message(named) = f.kind() else {
        return;
    };
    let Some(value_field) = field(&named, "value") else {
        return;
    };
    let mut e = DynamicMessage::new(named);
    e.set_field_by_name("name", PValue::String(key.to_string()));
    if let Some(val) = single(&value_field.kind(), v) {
        e.set_field(&value_field, val);
    }
    if let PValue::List(list) = m.get_field_mut(&f) {
        list.push(PValue::Message(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_refs_types_and_extensions_read_back_from_the_encoding() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "unversioned"},
            "paths": {"/api/v1/pods": {"get": {
                "operationId": "listCoreV1PodForAllNamespaces",
                "parameters": [{"$ref": "#/parameters/limit"}, {"name": "body", "in": "body", "schema": {"$ref": "#/definitions/p"}}],
                "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/p"}}},
                "x-kubernetes-action": "list"
            }}},
            "definitions": {"io.k8s.api.core.v1.Pod": {
                "type": "object",
                "properties": {
                    "spec": {"$ref": "#/definitions/io.k8s.api.core.v1.PodSpec"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "args": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "atomic"}
                },
                "required": ["spec"],
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}]
            }},
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}]
        });
        let bytes = encode(&doc).expect("gnostic descriptors are embedded");
        let md = super::super::super::protobuf::message_named("openapi.v2.Document").unwrap();
        let back = DynamicMessage::decode(md, bytes.as_slice()).unwrap();
        let json = serde_json::to_value(&back).unwrap();
        assert_eq!(json["swagger"], "2.0");
        let def = &json["definitions"]["additionalProperties"][0];
        assert_eq!(def["name"], "io.k8s.api.core.v1.Pod");
        let schema = &def["value"];
        assert_eq!(schema["type"]["value"], json!(["object"]));
        assert_eq!(schema["required"], json!(["spec"]));
        assert_eq!(
            schema["vendorExtension"][0]["name"],
            "x-kubernetes-group-version-kind"
        );
        let gvk: Value = serde_json::from_str(
            schema["vendorExtension"][0]["value"]["yaml"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(gvk[0]["kind"], "Pod");
        let props = schema["properties"]["additionalProperties"]
            .as_array()
            .unwrap();
        let by = |n: &str| props.iter().find(|p| p["name"] == n).unwrap()["value"].clone();
        assert_eq!(
            by("spec")["Ref"],
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        assert_eq!(
            by("labels")["additionalProperties"]["schema"]["type"]["value"],
            json!(["string"])
        );
        assert_eq!(
            by("args")["items"]["schema"][0]["type"]["value"],
            json!(["string"])
        );
        let op = &json["paths"]["path"][0]["value"]["get"];
        assert_eq!(op["operationId"], "listCoreV1PodForAllNamespaces");
        assert_eq!(
            op["parameters"][0]["jsonReference"]["Ref"],
            "#/parameters/limit"
        );
        assert_eq!(
            op["parameters"][1]["parameter"]["bodyParameter"]["name"],
            "body"
        );
        assert_eq!(op["responses"]["responseCode"][0]["name"], "200");
        assert_eq!(op["vendorExtension"][0]["name"], "x-kubernetes-action");
        assert_eq!(
            json["securityDefinitions"]["additionalProperties"][0]["value"]["apiKeySecurity"]
                ["name"],
            "authorization"
        );
        assert_eq!(
            json["security"][0]["additionalProperties"][0]["name"],
            "BearerToken"
        );
    }
}
