//! Merging an applied configuration into the live object, as structured-merge-diff does:
//! objects field by field, keyed lists item by item (an applied item merges into the live
//! item with the same key), sets as unions, atomic lists and scalars replaced.
use serde_json::Value;

use super::fieldset::key_of;
use super::shape::{ListKind, Shape};

pub fn merge(live: &Value, applied: &Value, shape: &Shape) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !shape.atomic_object() => {
            let mut out = l.clone();
            for (k, av) in a {
                let merged = match l.get(k) {
                    Some(lv) => merge(lv, av, &shape.child(k)),
                    None => av.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => match shape.list_kind() {
            ListKind::Set => {
                let mut out = l.clone();
                for x in a {
                    if !out.contains(x) {
                        out.push(x.clone());
                    }
                }
                Value::Array(out)
            }
            ListKind::Map(keys) => {
                let item = shape.item();
                let mut out = l.clone();
                for ai in a {
                    let key = key_of(ai, &keys);
                    let at = key.as_ref().and_then(|k| {
                        out.iter()
                            .position(|x| key_of(x, &keys).as_ref() == Some(k))
                    });
                    match at {
                        Some(i) => out[i] = merge(&out[i], ai, &item),
                        None => out.push(ai.clone()),
                    }
                }
                Value::Array(out)
            }
            ListKind::Atomic => applied.clone(),
        },
        _ => applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keyed_lists_merge_by_key_and_atomic_lists_are_replaced() {
        let shape = Shape::of_kind("apps", "v1", "Deployment", None);
        let live = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "x", "args": ["1"]}, {"name": "b", "image": "y"}]}}}});
        let applied = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "z", "args": ["2"]}]}}}});
        let out = merge(&live, &applied, &shape);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "x", "args": ["1"]}, {"name": "b", "image": "z", "args": ["2"]}])
        );
        assert_eq!(out["spec"]["replicas"], 1);
    }
}
