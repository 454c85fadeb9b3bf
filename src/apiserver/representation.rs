//! What shape of answer the client asked for in its Accept header: the objects themselves, a
//! Table (`as=Table;g=meta.k8s.io`, kubectl get), or only their metadata
//! (`as=PartialObjectMetadata[List];g=meta.k8s.io`, metadata-only informers and the garbage
//! collectors of client libraries). The first form the server supports wins, as in kube.
use serde_json::{json, Value};

use super::resources::Resource;
use super::table;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Object,
    Table,
    Metadata,
}

impl Representation {
    pub fn from_accept(accept: &str) -> Self {
        for part in accept.split(',') {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            let has = |p: &str| params.contains(&p);
            let meta_group = has("g=meta.k8s.io");
            if meta_group && has("as=Table") {
                return Representation::Table;
            }
            if meta_group
                && (has("as=PartialObjectMetadata") || has("as=PartialObjectMetadataList"))
            {
                return Representation::Metadata;
            }
            if params.iter().all(|p| !p.starts_with("as=")) {
                // A plain media type (application/json, */*): the objects themselves.
                return Representation::Object;
            }
        }
        Representation::Object
    }

    /// One object as this representation shows it.
    pub fn object(self, r: &Resource, obj: Value) -> Value {
        match self {
            Representation::Object => obj,
            Representation::Metadata => partial(obj),
            Representation::Table => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                table::build(r, &[obj], rv)
            }
        }
    }
}

/// PartialObjectMetadata of an object.
pub fn partial(obj: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_first_supported_form() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(Representation::from_accept(kubectl), Representation::Table);
        let meta =
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(Representation::from_accept(meta), Representation::Metadata);
        assert_eq!(
            Representation::from_accept("application/json"),
            Representation::Object
        );
        assert_eq!(Representation::from_accept(""), Representation::Object);
        let other = "application/json;as=Something;g=x.io,application/json";
        assert_eq!(Representation::from_accept(other), Representation::Object);
    }
}
