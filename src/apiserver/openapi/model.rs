//! The compact schema model of the built-in kinds: per definition, its fields and their
//! types, with the patch and list metadata (merge keys, strategies, list types). Built from
//! the embedded OpenAPI v2 document by build.rs (which includes this file) and read at start,
//! so the server never holds the full document in memory.
use serde::{Deserialize, Serialize};

/// A field's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ty {
    /// Another definition, by index.
    Ref(u32),
    Array(Box<Ty>),
    Map(Box<Ty>),
    String,
    Integer,
    Number,
    Boolean,
    /// intstr.IntOrString: a number or a string.
    IntOrString,
    /// resource.Quantity: a string, or a number kube accepts and keeps.
    Quantity,
    /// Anything (RawExtension, free-form objects, FieldsV1).
    Any,
}

/// One field of a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub ty: Ty,
    /// `x-kubernetes-patch-strategy` (`merge`, `retainKeys`, `merge,retainKeys`, `replace`).
    pub patch_strategy: Option<String>,
    /// `x-kubernetes-patch-merge-key`.
    pub merge_key: Option<String>,
    /// `x-kubernetes-list-type` (`atomic`, `set`, `map`).
    pub list_type: Option<String>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: Vec<String>,
    /// Whether Go's encoder omits the zero value (`omitempty` on a non-pointer field): an
    /// empty string, zero, false, empty list or map is then absent from kube's JSON.
    pub omit_empty: bool,
}

/// One definition (an object type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Def {
    pub name: String,
    /// Sorted by name.
    pub fields: Vec<Field>,
}

/// The whole model: definitions, and the definition of each group/version/kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub defs: Vec<Def>,
    /// (group, version, kind, definition index), sorted.
    pub kinds: Vec<(String, String, String, u32)>,
}
