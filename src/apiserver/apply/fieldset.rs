//! Field sets as server-side apply sees them: the paths of an object's leaves (and of the
//! items of keyed lists), read from a value with its shape, written as and read from
//! `managedFields`' FieldsV1 (`{"f:spec":{"f:containers":{"k:{\"name\":\"web\"}":{".":{},
//! "f:image":{}}}}}`), printed as conflicts print them (`.spec.containers[name="web"].image`).
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::shape::{ListKind, Shape};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Field(String),
    /// A keyed list's item, by its key fields (name, JSON of the value), sorted by name.
    Key(Vec<(String, String)>),
    /// A set's member, as JSON.
    Value(String),
    Index(usize),
}

pub type Path = Vec<Element>;

/// The leaves of an object (and its keyed items, with no value of their own), each with
/// its value, for comparing two versions of an object.
pub type Leaves<'v> = BTreeMap<Path, Option<&'v Value>>;

/// A set of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

/// Metadata the server sets, which no manager owns (kube's stripped fields).
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "creationTimestamp",
    "selfLink",
    "uid",
    "generation",
    "managedFields",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

fn is_scalar(v: &Value) -> bool {
    !(v.is_object() || v.is_array())
}

/// The key of a keyed list's item; None when the item does not carry its keys.
pub fn key_of(item: &Value, keys: &[String]) -> Option<Vec<(String, String)>> {
    let o = item.as_object()?;
    let mut out: Vec<(String, String)> = Vec::new();
    for k in keys {
        match o.get(k) {
            Some(v) if is_scalar(v) => out.push((k.clone(), v.to_string())),
            // A missing key field that has a default (a port's protocol) is left out.
            None => {}
            Some(_) => return None,
        }
    }
    if out.is_empty() {
        return None;
    }
    out.sort();
    Some(out)
}

/// Every leaf of `obj` (a whole object of its kind) with its value, except under the
/// top-level fields `reset` names (what the write cannot set: kube's reset fields).
pub fn leaves<'v>(obj: &'v Value, shape: &Shape, reset: &[&str]) -> Leaves<'v> {
    let mut out = BTreeMap::new();
    if let Some(m) = obj.as_object() {
        let mut path = Vec::new();
        for (k, x) in m {
            if k == "apiVersion" || k == "kind" || reset.contains(&k.as_str()) {
                continue;
            }
            path.push(Element::Field(k.clone()));
            if k == "metadata" {
                if let Some(meta) = x.as_object() {
                    let meta_shape = shape.child("metadata");
                    for (mk, mx) in meta
                        .iter()
                        .filter(|(mk, _)| !SERVER_META.contains(&mk.as_str()))
                    {
                        path.push(Element::Field(mk.clone()));
                        walk(mx, &meta_shape.child(mk), &mut path, &mut out);
                        path.pop();
                    }
                }
            } else {
                walk(x, &shape.child(k), &mut path, &mut out);
            }
            path.pop();
        }
    }
    out
}

fn walk<'v>(v: &'v Value, shape: &Shape, path: &mut Path, out: &mut Leaves<'v>) {
    match v {
        Value::Object(m) if !m.is_empty() && !shape.atomic_object() => {
            for (k, x) in m {
                path.push(Element::Field(k.clone()));
                walk(x, &shape.child(k), path, out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match shape.list_kind() {
            ListKind::Set if items.iter().all(is_scalar) => {
                for x in items {
                    path.push(Element::Value(x.to_string()));
                    out.insert(path.clone(), Some(x));
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                let keyed: Option<Vec<_>> = items.iter().map(|x| key_of(x, &keys)).collect();
                let Some(keyed) = keyed else {
                    out.insert(path.clone(), Some(v));
                    return;
                };
                let item_shape = shape.item();
                for (key, x) in keyed.into_iter().zip(items) {
                    path.push(Element::Key(key));
                    out.insert(path.clone(), None);
                    walk(x, &item_shape, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone(), Some(v));
            }
        },
        _ => {
            out.insert(path.clone(), Some(v));
        }
    }
}

impl FieldSet {
    pub fn of(leaves: &Leaves) -> FieldSet {
        FieldSet(leaves.keys().cloned().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    pub fn is_disjoint(&self, other: &FieldSet) -> bool {
        self.0.is_disjoint(&other.0)
    }

    pub fn minus(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    /// As FieldsV1 JSON.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<String, Node>,
        }
        fn emit(n: &Node) -> Value {
            let mut m = Map::new();
            if n.member && !n.children.is_empty() {
                m.insert(".".into(), Value::Object(Map::new()));
            }
            for (k, c) in &n.children {
                m.insert(k.clone(), emit(c));
            }
            Value::Object(m)
        }
        let mut root = Node::default();
        for path in &self.0 {
            let mut at = &mut root;
            for e in path {
                at = at.children.entry(encode(e)).or_default();
            }
            at.member = true;
        }
        emit(&root)
    }

    /// From FieldsV1 JSON (entries it cannot read are skipped).
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        fn read(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(m) = v.as_object() else { return };
            if m.is_empty() && !path.is_empty() {
                out.insert(path.clone());
                return;
            }
            for (k, child) in m {
                if k == "." {
                    out.insert(path.clone());
                    continue;
                }
                if let Some(e) = decode(k) {
                    path.push(e);
                    read(child, path, out);
                    path.pop();
                }
            }
        }
        let mut out = BTreeSet::new();
        read(v, &mut Vec::new(), &mut out);
        FieldSet(out)
    }
}

fn encode(e: &Element) -> String {
    match e {
        Element::Field(f) => format!("f:{f}"),
        Element::Key(kv) => {
            let fields: Vec<String> = kv
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("k:{{{}}}", fields.join(","))
        }
        Element::Value(v) => format!("v:{v}"),
        Element::Index(i) => format!("i:{i}"),
    }
}

fn decode(s: &str) -> Option<Element> {
    let (tag, rest) = s.split_at_checked(2)?;
    match tag {
        "f:" => Some(Element::Field(rest.to_string())),
        "v:" => Some(Element::Value(
            serde_json::from_str::<Value>(rest).ok()?.to_string(),
        )),
        "i:" => rest.parse().ok().map(Element::Index),
        "k:" => {
            let m: Map<String, Value> = serde_json::from_str(rest).ok()?;
            let mut kv: Vec<(String, String)> =
                m.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            kv.sort();
            Some(Element::Key(kv))
        }
        _ => None,
    }
}

/// A path as kube prints it in conflicts.
pub fn path_string(p: &Path) -> String {
    p.iter()
        .map(|e| match e {
            Element::Field(f) => format!(".{f}"),
            Element::Key(kv) => format!(
                "[{}]",
                kv.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Element::Value(v) => format!("[={v}]"),
            Element::Index(i) => format!("[{i}]"),
        })
        .collect()
}

/// The value at a path.
pub fn get<'v>(obj: &'v Value, path: &[Element]) -> Option<&'v Value> {
    let mut at = obj;
    for e in path {
        at = match e {
            Element::Field(f) => at.get(f)?,
            Element::Key(kv) => at.as_array()?.iter().find(|x| item_matches(x, kv))?,
            Element::Value(v) => at.as_array()?.iter().find(|x| &x.to_string() == v)?,
            Element::Index(i) => at.get(*i)?,
        };
    }
    Some(at)
}

fn item_matches(item: &Value, kv: &[(String, String)]) -> bool {
    kv.iter()
        .all(|(k, v)| item.get(k).is_some_and(|x| &x.to_string() == v))
}

/// Removes what is at a path (a field, a keyed item, a set member); true if it was there.
pub fn remove(obj: &mut Value, path: &[Element]) -> bool {
    let Some((last, parent_path)) = path.split_last() else {
        return false;
    };
    let mut at = obj;
    for e in parent_path {
        at = match e {
            Element::Field(f) => match at.get_mut(f) {
                Some(x) => x,
                None => return false,
            },
            Element::Key(kv) => match at
                .as_array_mut()
                .and_then(|a| a.iter_mut().find(|x| item_matches(x, kv)))
            {
                Some(x) => x,
                None => return false,
            },
            Element::Value(_) | Element::Index(_) => return false,
        };
    }
    match (last, at) {
        (Element::Field(f), Value::Object(m)) => m.remove(f).is_some(),
        (Element::Key(kv), Value::Array(a)) => {
            let before = a.len();
            a.retain(|x| !item_matches(x, kv));
            a.len() != before
        }
        (Element::Value(v), Value::Array(a)) => {
            let before = a.len();
            a.retain(|x| &x.to_string() != v);
            a.len() != before
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployment_s_fields_round_trip_through_fields_v1() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                ]}},
            },
        });
        let shape = Shape::of_kind("apps", "v1", "Deployment", None);
        let set = FieldSet::of(&leaves(&d, &shape, &[]));
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1,
            json!({
                "f:metadata": {"f:finalizers": {"v:\"a\"": {}}, "f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:replicas": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                        ".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                            ".": {}, "f:containerPort": {}, "f:protocol": {},
                        }},
                    }}}},
                },
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
        let image = set
            .0
            .iter()
            .find(|p| p.last() == Some(&Element::Field("image".into())))
            .unwrap();
        assert_eq!(
            path_string(image),
            ".spec.template.spec.containers[name=\"web\"].image"
        );
        assert_eq!(get(&d, image), Some(&json!("nginx")));
        let mut d2 = d.clone();
        assert!(remove(&mut d2, &image[..image.len() - 1]));
        assert_eq!(d2["spec"]["template"]["spec"]["containers"], json!([]));
    }
}
