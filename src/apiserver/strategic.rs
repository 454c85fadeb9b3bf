//! Strategic merge patch, kube's patch format for built-in kinds, driven by each field's
//! patch strategy and merge key from the schema model: lists of objects with a merge key
//! merge item by item, `merge` lists of scalars union, other lists are replaced; the
//! directives `$patch` (replace/delete/merge), `$retainKeys`, `$setElementOrder/<field>` and
//! `$deleteFromPrimitiveList/<field>` are honoured. Without a schema (unknown kinds) objects
//! merge and lists are replaced, as merge patch does.
use serde_json::{Map, Value};

use super::openapi::model::{Field, Ty};
use super::status::ApiError;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(msg)
}

/// Applies a strategic merge `patch` to `target`, which has type `ty` (None: no schema).
pub fn apply(target: &Value, patch: &Value, ty: Option<&Ty>) -> Result<Value, ApiError> {
    match patch {
        Value::Object(p) => merge_map(target, p, ty),
        other => Ok(other.clone()),
    }
}

fn field<'a>(ty: Option<&Ty>, name: &str) -> Option<&'a Field> {
    match ty {
        Some(Ty::Ref(def)) => super::openapi::model().field(*def, name),
        _ => None,
    }
}

/// The type of a field's value (for maps, the value type of every key).
fn child_type(ty: Option<&Ty>, name: &str) -> Option<Ty> {
    match ty {
        Some(Ty::Ref(_)) => field(ty, name).map(|f| f.ty.clone()),
        Some(Ty::Map(v)) => Some((**v).clone()),
        _ => None,
    }
}

fn merge_map(target: &Value, p: &Map<String, Value>, ty: Option<&Ty>) -> Result<Value, ApiError> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Value::Object(strip_directives(m)));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => return Err(bad(format!("Unknown patch type: {other:?}"))),
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(f) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let cty = child_type(ty, k);
        let current = out.get(k).cloned().unwrap_or(Value::Null);
        let merged = match v {
            Value::Object(pm) => merge_map(&current, pm, cty.as_ref())?,
            Value::Array(items) => {
                let f = field(ty, k);
                let order = p
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                merge_list(&current, items, f, order)?
            }
            other => other.clone(),
        };
        if merged.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    // `$setElementOrder` for a list the patch does not otherwise touch reorders it.
    for (k, v) in p {
        if let Some(f) = k.strip_prefix("$setElementOrder/") {
            if p.contains_key(f) {
                continue;
            }
            if let (Some(Value::Array(list)), Some(order)) = (out.get(f).cloned(), v.as_array()) {
                let key = field(ty, f).and_then(|x| x.merge_key.clone());
                out.insert(
                    f.to_string(),
                    Value::Array(reorder(list, order, key.as_deref())),
                );
            }
        }
    }
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Value::Object(out))
}

/// Drops directive keys from a replacement.
fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn merge_list(
    current: &Value,
    items: &[Value],
    f: Option<&Field>,
    order: Option<&Vec<Value>>,
) -> Result<Value, ApiError> {
    let strategy = f.and_then(|f| f.patch_strategy.as_deref()).unwrap_or("");
    if !strategy.split(',').any(|s| s == "merge") {
        return Ok(Value::Array(items.to_vec()));
    }
    let cur = current.as_array().cloned().unwrap_or_default();
    // A `{"$patch": "replace"}` item replaces the whole list with the other items.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let rest: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(Value::Array(rest));
    }
    let key = f.and_then(|f| f.merge_key.as_deref());
    let item_ty = match f.map(|f| &f.ty) {
        Some(Ty::Array(t)) => Some((**t).clone()),
        _ => None,
    };
    let mut list = cur;
    match key {
        Some(key) => {
            for item in items {
                let Some(id) = item.get(key) else {
                    return Err(bad(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = list.iter().position(|x| x.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        list.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let merged = apply(&list[i], item, item_ty.as_ref())?;
                        list[i] = merged;
                    }
                    (None, false) => list.push(apply(&Value::Null, item, item_ty.as_ref())?),
                }
            }
        }
        None => {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
    }
    Ok(Value::Array(match order {
        Some(order) => reorder(list, order, key),
        None => list,
    }))
}

/// Orders `list` as `order` (items named by merge key or, for scalars, by value); items
/// not named keep their relative order after the named ones.
fn reorder(list: Vec<Value>, order: &[Value], key: Option<&str>) -> Vec<Value> {
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let mut named = Vec::new();
    let mut rest = list;
    for o in order {
        let want = id(o);
        if let Some(i) = rest.iter().position(|x| id(x) == want) {
            named.push(rest.remove(i));
        }
    }
    named.extend(rest);
    named
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy_ty() -> Ty {
        super::super::openapi::kind_type("apps", "v1", "Deployment").unwrap()
    }

    #[test]
    fn containers_merge_by_name_as_kubectl_apply_expects() {
        let cur = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a:1", "command": ["sleep", "1"]},
            {"name": "side", "image": "s:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
            "containers": [{"name": "web", "image": "a:2"}]}}}});
        let out = apply(&cur, &patch, Some(&deploy_ty())).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "side");
        assert_eq!(cs[1]["image"], "a:2");
        assert_eq!(cs[1]["command"], json!(["sleep", "1"]));
        let del = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = apply(&out, &del, Some(&deploy_ty())).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn lists_without_a_strategy_are_replaced_and_finalizers_union() {
        let cur = json!({"metadata": {"finalizers": ["a"]}, "spec": {"template": {"spec": {"containers": [{"name": "c", "args": ["x", "y"]}]}}}});
        let patch = json!({"metadata": {"finalizers": ["b"]}, "spec": {"template": {"spec": {"containers": [{"name": "c", "args": ["z"]}]}}}});
        let out = apply(&cur, &patch, Some(&deploy_ty())).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["z"])
        );
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(&out, &patch, Some(&deploy_ty())).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn retain_keys_and_replace_directives() {
        let cur = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = apply(&cur, &patch, Some(&deploy_ty())).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}});
        let cur = json!({"metadata": {"labels": {"a": "b"}}});
        let out = apply(&cur, &patch, Some(&deploy_ty())).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"only": "this"}));
    }
}
