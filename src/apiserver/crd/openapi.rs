//! The OpenAPI v3 document of a custom resource group version, as kube-apiserver publishes
//! it: a path per verb (PATCH with `fieldValidation`, which is how kubectl learns the server
//! validates fields itself), and each kind's schema from its CRD with ObjectMeta and the
//! other meta types it refers to, so `kubectl explain` walks it like a built-in kind.
use serde_json::{json, Map, Value};

use crate::apiserver::resources::Resource;

/// kube's schema name of a custom kind: the group reversed (`com.example.v1.Widget`).
pub fn schema_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    format!("{}.{version}.{kind}", parts.join("."))
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

fn meta_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{META}.{name}")})
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn operation(
    r: &Resource,
    action: &str,
    id: &str,
    body: Option<&[&str]>,
    params: Vec<Value>,
) -> Value {
    let kind_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(r.group, r.version, r.kind))});
    let list_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(r.group, r.version, &format!("{}List", r.kind)))});
    let response = match action {
        "list" => list_ref,
        "deletecollection" | "delete" => meta_ref("Status"),
        _ => kind_ref.clone(),
    };
    let mut op = json!({
        "operationId": id,
        "tags": [r.group],
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": response}, "application/yaml": {"schema": response}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    });
    if let Some(types) = body {
        let schema = if action == "patch" {
            meta_ref("Patch")
        } else {
            kind_ref
        };
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": schema})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn write_params() -> Vec<Value> {
    vec![
        query("dryRun", "string", "When present, indicates that modifications should not be persisted."),
        query("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes."),
        query("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict."),
    ]
}

fn list_params() -> Vec<Value> {
    [
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
    ]
    .iter()
    .map(|n| query(n, "string", ""))
    .collect()
}

/// The paths of one resource.
fn paths(r: &Resource, out: &mut Map<String, Value>) {
    let base = format!("/apis/{}/{}", r.group, r.version);
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let kind = r.kind;
    let mut scope_params = vec![
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}),
    ];
    if r.namespaced {
        scope_params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    }
    let ns_param: Vec<Value> = scope_params[1..].to_vec();
    let patch_types: &[&str] = &[
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    let mut patch_params = write_params();
    patch_params.push(query(
        "force",
        "boolean",
        "Force is going to \"force\" Apply requests.",
    ));
    out.insert(
        collection.clone(),
        json!({
            "get": operation(r, "list", &format!("list{kind}"), None, list_params()),
            "post": operation(r, "post", &format!("create{kind}"), Some(&["application/json", "application/yaml"]), write_params()),
            "delete": operation(r, "deletecollection", &format!("deletecollection{kind}"), None, list_params()),
            "parameters": ns_param,
        }),
    );
    out.insert(
        format!("{collection}/{{name}}"),
        json!({
            "get": operation(r, "get", &format!("read{kind}"), None, vec![]),
            "put": operation(r, "put", &format!("replace{kind}"), Some(&["application/json", "application/yaml"]), write_params()),
            "patch": operation(r, "patch", &format!("patch{kind}"), Some(patch_types), patch_params.clone()),
            "delete": operation(r, "delete", &format!("delete{kind}"), None, vec![query("gracePeriodSeconds", "integer", ""), query("propagationPolicy", "string", "")]),
            "parameters": scope_params,
        }),
    );
    if r.namespaced {
        out.insert(
            format!("{base}/{}", r.plural),
            json!({"get": operation(r, "list", &format!("list{kind}ForAllNamespaces"), None, list_params())}),
        );
    }
    if r.has_subresource("status") {
        out.insert(
            format!("{collection}/{{name}}/status"),
            json!({
                "get": operation(r, "get", &format!("read{kind}Status"), None, vec![]),
                "put": operation(r, "put", &format!("replace{kind}Status"), Some(&["application/json", "application/yaml"]), write_params()),
                "patch": operation(r, "patch", &format!("patch{kind}Status"), Some(patch_types), patch_params),
                "parameters": scope_params,
            }),
        );
    }
}

/// The schema of a kind: the CRD's, with apiVersion, kind and metadata as kube fills them in.
fn kind_schema(r: &Resource) -> Value {
    let mut schema = r
        .custom
        .as_ref()
        .map(|c| c.raw_schema.clone())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let props = schema
        .as_object_mut()
        .map(|o| o.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(props)) = props {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
        props.insert("metadata".into(), json!({"allOf": [meta_ref("ObjectMeta")], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    }
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
    schema
}

/// The v3 document of one custom group version (its rows), or None when nothing is served.
pub fn document(rows: &[&Resource], meta_schemas: &Map<String, Value>) -> Option<Value> {
    rows.first()?;
    let mut paths_map = Map::new();
    let mut schemas = meta_schemas.clone();
    for r in rows {
        paths(r, &mut paths_map);
        schemas.insert(schema_name(r.group, r.version, r.kind), kind_schema(r));
        let list = format!("{}List", r.kind);
        schemas.insert(
            schema_name(r.group, r.version, &list),
            json!({
                "type": "object",
                "required": ["items"],
                "description": format!("{list} is a list of {}", r.kind),
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"allOf": [meta_ref("ListMeta")]},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{}", schema_name(r.group, r.version, r.kind))}},
                },
                "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": list}],
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths_map,
        "components": {"schemas": schemas},
    }))
}

/// The schemas `roots` refer to, transitively, from a document's components.
pub fn closure(all: &Map<String, Value>, roots: &[&str]) -> Map<String, Value> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    if let Some(name) = r.strip_prefix("#/components/schemas/") {
                        out.push(name.to_string());
                    }
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut out = Map::new();
    let mut todo: Vec<String> = roots.iter().map(|r| format!("{META}.{r}")).collect();
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        if let Some(s) = all.get(&name) {
            refs(s, &mut todo);
            out.insert(name, s.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_reverse_the_group() {
        assert_eq!(
            schema_name("stable.example.com", "v1", "CronTab"),
            "com.example.stable.v1.CronTab"
        );
    }
}
