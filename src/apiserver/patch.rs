//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch
//! (kube's, in `strategic`, driven by the schema's merge keys). Apply patches (server-side
//! apply) are recognised here and carried out by `apiserver::apply`.
use serde_json::{Map, Value};

use super::openapi::model::Ty;
use super::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types \
                     include: application/json-patch+json, application/merge-patch+json, \
                     application/apply-patch+yaml, application/strategic-merge-patch+json \
                     (got {other})"
                ),
            )),
        }
    }
}

/// Applies `patch` to `target`.
/// Applies `patch` to `target`, an object of schema type `ty` (None: no schema).
pub fn apply(
    kind: PatchType,
    target: &Value,
    patch: &[u8],
    ty: Option<&Ty>,
) -> Result<Value, ApiError> {
    let p: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    match kind {
        PatchType::Merge => Ok(merge(target, &p)),
        PatchType::Strategic => super::strategic::apply(target, &p, ty),
        PatchType::Json => json_patch(target, &p),
        PatchType::Apply => Err(ApiError::internal(
            "an apply patch is not applied as a patch document",
        )),
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let bad = |m: &str| {
            ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("the server rejected our request due to an error in our request: operation {i}: {m}"),
        )
        };
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing \"op\""))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing \"path\""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad("missing \"value\""))
        };
        match name {
            "add" => add(&mut doc, path, value()?).map_err(|m| bad(&m))?,
            "remove" => {
                remove(&mut doc, path).map_err(|m| bad(&m))?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(|m| bad(&m))?;
                add(&mut doc, path, value()?).map_err(|m| bad(&m))?;
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing \"from\""))?;
                let v = if name == "move" {
                    remove(&mut doc, from).map_err(|m| bad(&m))?
                } else {
                    doc.pointer(from)
                        .cloned()
                        .ok_or_else(|| bad(&format!("{from} does not exist")))?
                };
                add(&mut doc, path, v).map_err(|m| bad(&m))?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(bad(&format!("test failed at {path}")));
                }
            }
            other => return Err(bad(&format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

fn split(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    let unescape = |s: &str| s.replace("~1", "/").replace("~0", "~");
    Ok((parent.to_string(), unescape(last)))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("{parent} does not exist"))?;
    match target {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("{parent} is not a container")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("{parent} does not exist"))?;
    match target {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| format!("{path} does not exist")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("{parent} is not a container")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let p = json!({"a": "z", "c": {"f": null}});
        assert_eq!(merge(&t, &p), json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let t = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        let p = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "test", "path": "/list/0", "value": 1}
        ]);
        let out = apply(PatchType::Json, &t, p.to_string().as_bytes(), None).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b/c": "2"}}, "list": [1, 2, 3]})
        );
        let failing = json!([{"op": "test", "path": "/list/0", "value": 9}]);
        assert!(apply(PatchType::Json, &t, failing.to_string().as_bytes(), None).is_err());
    }

    #[test]
    fn strategic_merge_unions_finalizers_and_merges_owner_references_by_uid() {
        let t = json!({"metadata": {
            "finalizers": ["a"],
            "ownerReferences": [{"uid": "1", "name": "x"}, {"uid": "2", "name": "y"}]
        }, "data": {"k": "v"}});
        let p = json!({"metadata": {
            "finalizers": ["b"],
            "ownerReferences": [{"uid": "2", "name": "y2"}, {"uid": "1", "$patch": "delete"}]
        }, "data": {"k2": "v2"}});
        let ty = super::super::openapi::kind_type("", "v1", "ConfigMap");
        let out = super::super::strategic::apply(&t, &p, ty.as_ref()).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "y2"}])
        );
        assert_eq!(out["data"], json!({"k": "v", "k2": "v2"}));
    }
}
