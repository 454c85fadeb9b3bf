//! What server-side apply needs to know about a place in an object: whether a list is
//! atomic, a set, or a map keyed by some of its items' fields, and the shape of what is
//! below. Built-in kinds answer from the compact schema model (list types, and patch merge
//! keys where kube's types have no list type); custom resources from their CRD's schema;
//! anything else is a granular map with atomic lists.
use crate::apiserver::crd::schema::Schema;
use crate::apiserver::openapi::model::{Field, Ty};

/// How a list merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced whole by whoever sets it.
    Atomic,
    /// Scalars, each owned on its own.
    Set,
    /// Items identified by these fields.
    Map(Vec<String>),
}

/// The shape of one node.
#[derive(Debug, Clone)]
pub enum Shape<'a> {
    /// A built-in type, with the list kind its field declares.
    Builtin(Ty, ListKind),
    Custom(&'a Schema),
    Any,
}

fn list_kind_of(f: &Field) -> ListKind {
    match f.list_type.as_deref() {
        Some("map") if !f.list_map_keys.is_empty() => {
            return ListKind::Map(f.list_map_keys.clone())
        }
        Some("set") => return ListKind::Set,
        Some("atomic") => return ListKind::Atomic,
        _ => {}
    }
    let merges = f
        .patch_strategy
        .as_deref()
        .is_some_and(|s| s.split(',').any(|p| p == "merge"));
    match (&f.ty, merges, &f.merge_key) {
        (Ty::Array(_), true, Some(key)) => ListKind::Map(vec![key.clone()]),
        (Ty::Array(_), true, None) => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

impl<'a> Shape<'a> {
    /// The shape of a whole object of a kind.
    pub fn of_kind(group: &str, version: &str, kind: &str, custom: Option<&'a Schema>) -> Self {
        if let Some(s) = custom {
            return Shape::Custom(s);
        }
        match crate::apiserver::openapi::kind_type(group, version, kind) {
            Some(ty) => Shape::Builtin(ty, ListKind::Atomic),
            None => Shape::Any,
        }
    }

    /// The shape of an object's field (or a map's value).
    pub fn child(&self, name: &str) -> Shape<'a> {
        match self {
            Shape::Builtin(Ty::Ref(def), _) => {
                match crate::apiserver::openapi::model().field(*def, name) {
                    Some(f) => Shape::Builtin(f.ty.clone(), list_kind_of(f)),
                    None => Shape::Any,
                }
            }
            Shape::Builtin(Ty::Map(v), _) => Shape::Builtin((**v).clone(), ListKind::Atomic),
            Shape::Builtin(..) => Shape::Any,
            Shape::Custom(s) => match (s.properties.get(name), &s.additional) {
                (Some(p), _) => Shape::Custom(p),
                (None, Some(v)) => Shape::Custom(v),
                // apiVersion, kind and metadata of a custom kind are kube's.
                (None, None) if name == "metadata" => Shape::object_meta(),
                _ => Shape::Any,
            },
            Shape::Any => Shape::Any,
        }
    }

    fn object_meta() -> Shape<'a> {
        let model = crate::apiserver::openapi::model();
        match model
            .defs
            .iter()
            .position(|d| d.name == "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
        {
            Some(i) => Shape::Builtin(Ty::Ref(i as u32), ListKind::Atomic),
            None => Shape::Any,
        }
    }

    /// The shape of a list's items.
    pub fn item(&self) -> Shape<'a> {
        match self {
            Shape::Builtin(Ty::Array(it), _) => Shape::Builtin((**it).clone(), ListKind::Atomic),
            Shape::Custom(s) => s.items.as_deref().map(Shape::Custom).unwrap_or(Shape::Any),
            _ => Shape::Any,
        }
    }

    /// How the list here merges.
    pub fn list_kind(&self) -> ListKind {
        match self {
            Shape::Builtin(_, k) => k.clone(),
            Shape::Custom(s) => match s.list_type.as_deref() {
                Some("map") if !s.list_map_keys.is_empty() => {
                    ListKind::Map(s.list_map_keys.clone())
                }
                Some("set") => ListKind::Set,
                _ => ListKind::Atomic,
            },
            Shape::Any => ListKind::Atomic,
        }
    }

    /// Whether an object here is owned whole (a `x-kubernetes-map-type: atomic` map, or a
    /// built-in type kube treats as a scalar, like Quantity or IntOrString).
    pub fn atomic_object(&self) -> bool {
        match self {
            Shape::Builtin(ty, _) => matches!(ty, Ty::Any | Ty::Quantity | Ty::IntOrString),
            Shape::Custom(s) => s.map_type_atomic,
            Shape::Any => false,
        }
    }
}
