//! The HTTP surface: health and version for anyone, then (authenticated) discovery and the
//! resource verbs, dispatched from the request's RequestInfo to the generic registry.
use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::auth::Caller;
use super::objects::LabelSelector;
use super::patch::PatchType;
use super::registry::{ListOptions, Registry};
use super::request_info::{self, RequestInfo};
use super::status::ApiError;
use super::{discovery, patch, resources, table, watch};

/// kube-apiserver's request body limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub shutdown: CancellationToken,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(ok))
        .route("/version", get(|| async { Json(discovery::version()) }))
        .fallback(dispatch)
        .with_state(state)
}

async fn ok() -> &'static str {
    "ok"
}

async fn dispatch(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(Extension(Caller(Some(user)))) = caller else {
        return ApiError::unauthorized().into_response();
    };
    let path = uri.path();
    let span = tracing::debug_span!("request", %method, path, user = %user.name);
    let _enter = span.enter();
    match handle(&state, &method, path, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code.as_u16(), reason = e.reason, "request failed");
            e.into_response()
        }
    }
}

async fn handle(
    state: &ApiState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let trimmed = path.trim_end_matches('/');
    if method == Method::GET {
        match trimmed {
            "/api" => return Ok(Json(discovery::core_versions()).into_response()),
            "/apis" => return Ok(Json(discovery::groups()).into_response()),
            "/api/v1" => return found(discovery::resources("", "v1")),
            _ => {}
        }
        let parts: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
        if let ["apis", group, version] = parts.as_slice() {
            return found(discovery::resources(group, version));
        }
    }
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let info = request_info::parse(method, path, watch).ok_or_else(not_found_path)?;
    let r =
        resources::find(&info.group, &info.version, &info.resource).ok_or_else(not_found_path)?;
    if info.subresource.is_some() {
        return Err(not_found_path());
    }
    let ns = if r.namespaced {
        info.namespace.clone()
    } else {
        None
    };
    if r.namespaced && ns.is_none() && !matches!(info.verb, "list" | "watch") {
        return Err(ApiError::bad_request(format!(
            "the server could not find the requested resource: {} is namespaced",
            r.plural
        )));
    }
    let mut dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dry run value: {other:?} (supported: All)"
            )))
        }
    };
    // DELETE carries its options (dryRun among them) as a DeleteOptions body.
    if info.verb == "delete" && !body.is_empty() {
        let opts: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        if let Some(modes) = opts.get("dryRun").and_then(Value::as_array) {
            dry_run |= modes.iter().any(|m| m == "All");
        }
    }
    let reg = &state.registry.for_request(dry_run);
    let as_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wanted);
    match info.verb {
        "get" => {
            let obj = reg.get(r, ns.as_deref(), name(&info)?).await?;
            if as_table {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                return Ok(Json(table::build(r, &[obj], rv)).into_response());
            }
            Ok(Json(obj).into_response())
        }
        "list" => {
            let opts = ListOptions {
                selector: LabelSelector::parse(
                    query.get("labelSelector").map(String::as_str).unwrap_or(""),
                )?,
                revision: match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => 0,
                    Some(rv) => rv.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                    })?,
                },
                limit: match query.get("limit") {
                    Some(l) => l
                        .parse()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
                    None => 0,
                },
                continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
            };
            let page = reg.list(r, ns.as_deref(), &opts).await?;
            let mut meta = json!({"resourceVersion": page.revision.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if as_table {
                let mut t = table::build(r, &page.items, None);
                t["metadata"] = meta;
                return Ok(Json(t).into_response());
            }
            Ok(Json(json!({
                "kind": format!("{}List", r.kind),
                "apiVersion": r.api_version(),
                "metadata": meta,
                "items": page.items,
            }))
            .into_response())
        }
        "watch" => {
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(30 * 60));
            watch::serve(
                reg.clone(),
                watch::WatchRequest {
                    resource: r,
                    namespace: ns,
                    resource_version: query.get("resourceVersion").cloned(),
                    selector: LabelSelector::parse(
                        query.get("labelSelector").map(String::as_str).unwrap_or(""),
                    )?,
                    as_table,
                    timeout,
                },
                state.shutdown.clone(),
            )
            .await
        }
        "create" => {
            let obj = parse_body(headers, &body)?;
            let created = reg.create(r, ns.as_deref(), obj).await?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        "update" => {
            let obj = parse_body(headers, &body)?;
            Ok(Json(reg.update(r, ns.as_deref(), name(&info)?, obj).await?).into_response())
        }
        "patch" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchType::from_content_type(content_type)?;
            if body.len() > MAX_BODY_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    "the request body is too large",
                ));
            }
            let name = name(&info)?;
            // As kube's GuaranteedUpdate: re-read and re-apply when another write slipped in
            // between, unless the patch itself pinned a resourceVersion.
            let mut attempts = 0;
            loop {
                let current = reg.get(r, ns.as_deref(), name).await?;
                let patched = patch::apply(kind, &current, &body)?;
                let pinned = patched.pointer("/metadata/resourceVersion")
                    != current.pointer("/metadata/resourceVersion");
                match reg.update(r, ns.as_deref(), name, patched).await {
                    Err(e) if e.reason == "Conflict" && !pinned && attempts < 5 => attempts += 1,
                    other => return Ok(Json(other?).into_response()),
                }
            }
        }
        "delete" => {
            let (code, v) = reg.delete(r, ns.as_deref(), name(&info)?).await?;
            Ok((code, Json(v)).into_response())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn found(v: Option<Value>) -> Result<Response, ApiError> {
    v.map(|v| Json(v).into_response())
        .ok_or_else(not_found_path)
}

fn not_found_path() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn name(info: &RequestInfo) -> Result<&str, ApiError> {
    info.name
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("a name is required"))
}

/// Decodes a JSON or YAML body, refusing what kube-apiserver refuses.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!(
                "the request body is {} bytes, over the {MAX_BODY_BYTES} byte limit",
                body.len()
            ),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.contains("protobuf") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type})"),
        ));
    }
    let v: Value = if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}
