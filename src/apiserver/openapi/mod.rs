//! OpenAPI: the v2 and v3 documents of the served group versions (upstream Kubernetes'
//! published spec, embedded compressed and served as is, so `kubectl explain` and kubectl's
//! validation see exactly kube-apiserver's schemas), and the compact schema model built
//! from them that drives pruning, field validation and strategic merge patch.
mod gnostic;
pub mod model;
mod normalize;

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use self::model::{Def, Field, Model, Ty};
use super::resources::Resource;
use super::status::ApiError;

pub use self::normalize::{normalize, normalize_metadata, FieldValidation};

static MODEL_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/schema_model.bin"));

static MODEL: LazyLock<Model> = LazyLock::new(|| match postcard::from_bytes(MODEL_BYTES) {
    Ok(m) => m,
    Err(e) => {
        // Only a broken build gets here; the server then runs without schemas.
        tracing::error!(error = %e, "the embedded schema model does not decode");
        Model::default()
    }
});

pub fn model() -> &'static Model {
    &MODEL
}

impl Model {
    /// The definition of a kind.
    pub fn kind(&self, group: &str, version: &str, kind: &str) -> Option<u32> {
        self.kinds
            .binary_search_by(|(g, v, k, _)| {
                (g.as_str(), v.as_str(), k.as_str()).cmp(&(group, version, kind))
            })
            .ok()
            .map(|i| self.kinds[i].3)
    }

    pub fn def(&self, i: u32) -> Option<&Def> {
        self.defs.get(i as usize)
    }

    /// A field of a definition.
    pub fn field(&self, def: u32, name: &str) -> Option<&Field> {
        let d = self.def(def)?;
        d.fields
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .ok()
            .map(|i| &d.fields[i])
    }
}

/// The schema type of a whole object of a kind.
pub fn kind_type(group: &str, version: &str, kind: &str) -> Option<Ty> {
    model().kind(group, version, kind).map(Ty::Ref)
}

static SWAGGER: &[u8] = include_bytes!("../../../embedded/openapi/swagger.json.gz");

/// The v3 documents, by group-version path (`api/v1`, `apis/apps/v1`).
static V3: &[(&str, &[u8])] = &[
    (
        "api/v1",
        include_bytes!("../../../embedded/openapi/v3/api__v1.json.gz"),
    ),
    (
        "apis/admissionregistration.k8s.io/v1",
        include_bytes!(
            "../../../embedded/openapi/v3/apis__admissionregistration.k8s.io__v1.json.gz"
        ),
    ),
    (
        "apis/apiextensions.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__apiextensions.k8s.io__v1.json.gz"),
    ),
    (
        "apis/authentication.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__authentication.k8s.io__v1.json.gz"),
    ),
    (
        "apis/authorization.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__authorization.k8s.io__v1.json.gz"),
    ),
    (
        "apis/apiregistration.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__apiregistration.k8s.io__v1.json.gz"),
    ),
    (
        "apis/apps/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__apps__v1.json.gz"),
    ),
    (
        "apis/autoscaling/v2",
        include_bytes!("../../../embedded/openapi/v3/apis__autoscaling__v2.json.gz"),
    ),
    (
        "apis/batch/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__batch__v1.json.gz"),
    ),
    (
        "apis/certificates.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__certificates.k8s.io__v1.json.gz"),
    ),
    (
        "apis/coordination.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__coordination.k8s.io__v1.json.gz"),
    ),
    (
        "apis/discovery.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__discovery.k8s.io__v1.json.gz"),
    ),
    (
        "apis/events.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__events.k8s.io__v1.json.gz"),
    ),
    (
        "apis/flowcontrol.apiserver.k8s.io/v1",
        include_bytes!(
            "../../../embedded/openapi/v3/apis__flowcontrol.apiserver.k8s.io__v1.json.gz"
        ),
    ),
    (
        "apis/networking.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__networking.k8s.io__v1.json.gz"),
    ),
    (
        "apis/node.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__node.k8s.io__v1.json.gz"),
    ),
    (
        "apis/policy/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__policy__v1.json.gz"),
    ),
    (
        "apis/rbac.authorization.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__rbac.authorization.k8s.io__v1.json.gz"),
    ),
    (
        "apis/scheduling.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__scheduling.k8s.io__v1.json.gz"),
    ),
    (
        "apis/storage.k8s.io/v1",
        include_bytes!("../../../embedded/openapi/v3/apis__storage.k8s.io__v1.json.gz"),
    ),
];

/// Each v3 document's hash, as the index advertises it (clients cache by it).
static V3_HASHES: LazyLock<Vec<String>> =
    LazyLock::new(|| V3.iter().map(|(_, gz)| hash_of(gz)).collect());

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.trim().starts_with("gzip")))
}

/// A compressed JSON document, sent compressed when the client takes gzip.
fn document(gz: &'static [u8], headers: &HeaderMap) -> Result<Response, ApiError> {
    if accepts_gzip(headers) {
        return Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gz,
        )
            .into_response());
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut out).map_err(|e| {
        ApiError::internal(format!(
            "the embedded OpenAPI document does not decompress: {e}"
        ))
    })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response())
}

/// The meta.k8s.io schemas a custom resource's document refers to (ObjectMeta and what it
/// holds, ListMeta, Status, Patch, DeleteOptions), taken from an embedded document.
static META_SCHEMAS: LazyLock<serde_json::Map<String, serde_json::Value>> = LazyLock::new(|| {
    let Some((_, gz)) = V3.iter().find(|(p, _)| *p == "apis/apps/v1") else {
        return serde_json::Map::new();
    };
    let doc: serde_json::Value = match serde_json::from_reader(flate2::read::GzDecoder::new(*gz)) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the embedded apps/v1 OpenAPI document does not decode");
            return serde_json::Map::new();
        }
    };
    let all = doc
        .pointer("/components/schemas")
        .and_then(serde_json::Value::as_object)
        .cloned()
        .unwrap_or_default();
    super::crd::openapi::closure(
        &all,
        &["ObjectMeta", "ListMeta", "Status", "Patch", "DeleteOptions"],
    )
});

/// The v3 documents of the custom resources' group versions, by path (`apis/<g>/<v>`).
fn custom_documents(customs: &[Resource]) -> Vec<(String, serde_json::Value)> {
    let mut gvs: Vec<(&str, &str)> = customs.iter().map(|r| (r.group, r.version)).collect();
    gvs.dedup();
    gvs.into_iter()
        .filter_map(|(g, v)| {
            let rows: Vec<&Resource> = customs
                .iter()
                .filter(|r| r.group == g && r.version == v)
                .collect();
            let doc = super::crd::openapi::document(&rows, &META_SCHEMAS)?;
            Some((format!("apis/{g}/{v}"), doc))
        })
        .collect()
}

fn hash_of(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The v2 document in gnostic's protobuf form, encoded on first use and kept.
fn v2_protobuf() -> Result<Response, ApiError> {
    static ENCODED: LazyLock<Option<axum::body::Bytes>> = LazyLock::new(|| {
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(SWAGGER), &mut json).ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&json).ok()?;
        gnostic::encode(&doc).map(axum::body::Bytes::from)
    });
    match ENCODED.as_ref() {
        Some(bytes) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, gnostic::MEDIA_TYPE)],
            bytes.clone(),
        )
            .into_response()),
        None => Err(ApiError::internal(
            "the OpenAPI v2 document could not be encoded as protobuf",
        )),
    }
}

/// Serves `/openapi/v2`, `/openapi/v3` and `/openapi/v3/<group-version>` (the custom
/// resources' too); None for other paths.
pub fn serve(
    path: &str,
    headers: &HeaderMap,
    customs: &[Resource],
) -> Option<Result<Response, ApiError>> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if path == "/openapi/v2" {
        // The first clause (by q, then as listed) naming a form served, as kube-openapi
        // negotiates: JSON, or gnostic's protobuf under either of its names.
        let mut clauses: Vec<(f32, &str)> = if accept.trim().is_empty() {
            vec![(1.0, "*/*")]
        } else {
            accept
                .split(',')
                .map(|c| {
                    let mut parts = c.split(';');
                    let media = parts.next().unwrap_or("").trim();
                    let q = parts
                        .filter_map(|p| p.trim().strip_prefix("q="))
                        .find_map(|q| q.parse::<f32>().ok())
                        .unwrap_or(1.0);
                    (q, media)
                })
                .filter(|(q, _)| *q > 0.0)
                .collect()
        };
        clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, media) in clauses {
            match media {
                "*/*" | "application/*" | "application/json" => {
                    return Some(document(SWAGGER, headers))
                }
                gnostic::MEDIA_TYPE | gnostic::MEDIA_TYPE_DEPRECATED => return Some(v2_protobuf()),
                _ => {}
            }
        }
        return Some(Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, {}",
                gnostic::MEDIA_TYPE
            ),
        )));
    }
    if path == "/openapi/v3" {
        let mut paths: serde_json::Map<String, serde_json::Value> = V3
            .iter()
            .zip(V3_HASHES.iter())
            .map(|((gv, _), hash)| {
                (
                    gv.to_string(),
                    serde_json::json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
                )
            })
            .collect();
        for (gv, doc) in custom_documents(customs) {
            let hash = hash_of(doc.to_string().as_bytes());
            paths.insert(
                gv.clone(),
                serde_json::json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={hash}")}),
            );
        }
        return Some(Ok(
            axum::Json(serde_json::json!({"paths": paths})).into_response()
        ));
    }
    let gv = path.strip_prefix("/openapi/v3/")?;
    if let Some((_, doc)) = custom_documents(customs).into_iter().find(|(p, _)| p == gv) {
        return Some(Ok(axum::Json(doc).into_response()));
    }
    let Some((_, gz)) = V3.iter().find(|(p, _)| *p == gv) else {
        return Some(Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the OpenAPI document of {gv}"),
        )));
    };
    Some(document(gz, headers).map(|mut r| {
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, immutable"),
        );
        r
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_knows_the_built_in_kinds_and_their_merge_keys() {
        let m = model();
        let pod_spec = m
            .defs
            .iter()
            .position(|d| d.name == "io.k8s.api.core.v1.PodSpec")
            .unwrap() as u32;
        let containers = m.field(pod_spec, "containers").unwrap();
        assert_eq!(containers.merge_key.as_deref(), Some("name"));
        assert_eq!(containers.patch_strategy.as_deref(), Some("merge"));
        assert!(m.kind("apps", "v1", "Deployment").is_some());
        assert!(m.kind("", "v1", "Pod").is_some());
        assert!(m.kind("nope", "v1", "Pod").is_none());
        assert!(V3_HASHES.iter().all(|h| h.len() == 64));
    }
}
