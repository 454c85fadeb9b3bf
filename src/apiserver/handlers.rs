//! The HTTP surface: health and version for anyone, then (authenticated) discovery and the
//! resource verbs, dispatched from the request's RequestInfo to the generic registry.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::auth::{Caller, User};
use super::openapi::{self, FieldValidation};
use super::patch::PatchType;
use super::rbac::rules::Attributes;
use super::registry::{DeleteOptions, ListOptions, Registry};
use super::representation::{self, Representation};
use super::request_info::{self, RequestInfo};
use super::selector::Filter;
use super::status::ApiError;
use super::strategy::Write;
use super::tokens::TokenAuthority;
use super::{
    discovery, health, kubelet_proxy, patch, protobuf, resources, subresources, table, watch,
};

/// kube-apiserver's request body limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub shutdown: CancellationToken,
    pub bootstrapped: health::Bootstrapped,
    pub tokens: Arc<TokenAuthority>,
    pub kubelets: Arc<super::kubelet_proxy::KubeletClient>,
    pub streams: crate::proxy::Streams,
    pub node_join: Option<Arc<super::node_join::NodeJoin>>,
    pub policy: super::rbac::PolicyCache,
    /// Where this API server is reached, for the OIDC discovery document.
    pub advertise: Option<std::net::IpAddr>,
    pub port: u16,
    /// The in-process loops' health.
    pub loops: crate::lifecycle::health::LoopHealth,
    /// The resources CustomResourceDefinitions define.
    pub crds: super::crd::CustomResources,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/livez", get(health::livez))
        .route("/livez/{*check}", get(health::livez_one))
        .route("/readyz", get(health::readyz))
        .route("/readyz/{*check}", get(health::readyz_one))
        .route("/version", get(|| async { Json(discovery::version()) }))
        // Agents joining: the CA (checked against the token's hash), then credentials.
        .route("/cacerts", get(super::node_join::cacerts))
        .route(
            "/v1-krab/node-credentials",
            axum::routing::post(super::node_join::node_credentials),
        )
        .fallback(dispatch)
        .with_state(state)
}

async fn dispatch(State(state): State<ApiState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let in_process = parts.extensions.get::<Caller>().and_then(|c| c.0.clone());
    let from_cert = || {
        let crate::https::PeerCertificate(der) = parts.extensions.get()?;
        super::auth::user_from_cert(der.as_deref()?)
    };
    let user = match in_process.or_else(from_cert) {
        Some(user) => user,
        None => match bearer(&parts.headers) {
            Some(token) => match state.tokens.authenticate(&state.registry, token).await {
                Some(user) => user,
                None => return ApiError::unauthorized().into_response(),
            },
            None => return ApiError::unauthorized().into_response(),
        },
    };
    let user = match super::impersonation::effective_user(&state.policy, user, &parts.headers).await
    {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let span = tracing::debug_span!("request", method = %parts.method, path = parts.uri.path(), user = %user.name);
    async move {
        // Streams to and from a kubelet (logs, exec, attach, port-forward, proxy) carry their
        // own bodies and upgrades.
        if kubelet_proxy::handles(parts.uri.path()) {
            let request = axum::extract::Request::from_parts(parts, body);
            return match kubelet_proxy::serve(&state, &user, request).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            };
        }
        let query: HashMap<String, String> = match Query::try_from_uri(&parts.uri) {
            Ok(Query(q)) => q,
            Err(e) => return ApiError::bad_request(format!("invalid query: {e}")).into_response(),
        };
        let body = match axum::body::to_bytes(body, MAX_BODY_BYTES + 1).await {
            Ok(b) => b,
            Err(_) => return too_large(MAX_BODY_BYTES + 1).into_response(),
        };
        let path = parts.uri.path();
        match handle(
            &state,
            &user,
            &parts.method,
            path,
            &query,
            &parts.headers,
            body,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(code = e.code.as_u16(), reason = e.reason, "request failed");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn handle(
    state: &ApiState,
    user: &User,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let trimmed = path.trim_end_matches('/');
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let parsed = request_info::parse(method, path, watch);
    if parsed.is_none() {
        let verb = match *method {
            Method::HEAD => "get".to_string(),
            ref m => m.as_str().to_ascii_lowercase(),
        };
        state
            .policy
            .authorize(
                user,
                &Attributes::NonResource {
                    verb,
                    path: trimmed.to_string(),
                },
            )
            .await?;
    }
    if method == Method::GET {
        let customs = state.crds.rows();
        if let Some(r) = serve_discovery(trimmed, accept, &customs) {
            return r;
        }
        if let Some(r) = openapi::serve(trimmed, headers, &customs) {
            return r;
        }
        if let Some(r) = serve_oidc(state, trimmed, headers) {
            return Ok(r);
        }
    }
    let info = parsed.ok_or_else(not_found_path)?;
    let r: Cow<'static, resources::Resource> =
        match resources::find(&info.group, &info.version, &info.resource) {
            Some(r) => Cow::Borrowed(r),
            None => Cow::Owned(
                state
                    .crds
                    .find_fresh(&state.registry, &info.group, &info.version, &info.resource)
                    .await
                    .ok_or_else(not_found_path)?,
            ),
        };
    let resource = r.clone();
    let r = &*r;
    let sub = info.subresource.as_deref();
    if sub.is_some_and(|s| !r.has_subresource(s)) {
        return Err(not_found_path());
    }
    if sub.is_none() && !r.verbs.contains(&info.verb) {
        return Err(ApiError::method_not_allowed());
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
    state
        .policy
        .authorize(
            user,
            &Attributes::Resource {
                verb: info.verb.to_string(),
                group: r.group.to_string(),
                resource: r.plural.to_string(),
                subresource: sub.map(str::to_string),
                namespace: ns.clone(),
                name: info.name.clone(),
            },
        )
        .await?;
    if r.group == "metrics.k8s.io" {
        return super::metrics::serve(state, r, ns.as_deref(), info.name.as_deref(), query).await;
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
    // DELETE carries its options as a DeleteOptions body, or in the query.
    let mut delete_opts = DeleteOptions::default();
    if matches!(info.verb, "delete" | "deletecollection") {
        if !body.iter().all(u8::is_ascii_whitespace) {
            delete_opts = DeleteOptions::from_value(&parse_body(headers, &body)?)?;
        }
        if let Some(g) = query.get("gracePeriodSeconds") {
            delete_opts.grace_period_seconds =
                Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?);
        }
        if let Some(p) = query.get("propagationPolicy") {
            delete_opts.propagation_policy = Some(p.clone());
        }
        dry_run |= delete_opts.dry_run;
    }
    let validation = FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?;
    // Decoding a body into the kind's type: unknown fields dropped and, with duplicate
    // fields of a JSON body, reported or refused.
    let duplicates = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        _ if validation == FieldValidation::Ignore || body.is_empty() => Vec::new(),
        Some(ct) if ct.contains("yaml") || ct.starts_with(protobuf::MEDIA_TYPE) => Vec::new(),
        _ => super::json_duplicates::duplicate_fields(&body),
    };
    let decode = |obj: &mut Value| {
        let mut findings = match r.custom {
            Some(_) => super::crd::decode(r, obj, FieldValidation::Warn),
            None => openapi::normalize(r.group, r.version, r.kind, obj, FieldValidation::Warn),
        }?;
        findings.extend(
            duplicates
                .iter()
                .map(|d| format!("duplicate field \"{d}\"")),
        );
        validation.settle(r.kind, r.version, findings)
    };
    if info.verb == "create" && r.custom.as_ref().is_some_and(|c| c.terminating) {
        return Err(ApiError::method_not_allowed()
            .with_message("create not allowed while custom resource definition is terminating"));
    }
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) if m.chars().count() > 128 => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "fieldManager: Too long: may not be more than 128 bytes",
            ))
        }
        Some(m) => m.clone(),
        None => super::apply::default_manager(
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            &user.name,
        ),
    };
    let reg = &state
        .registry
        .for_request(dry_run)
        .managed_by(&manager)
        .by_node(super::rbac::node::node_of(user))
        .requested_by(user);
    let shape = Representation::from_accept(accept);
    let ns = ns.as_deref();
    match (info.verb, sub) {
        ("get", None | Some("status")) => {
            let obj = reg.get(r, ns, name(&info)?).await?;
            Ok(Json(shape.object(r, obj)).into_response())
        }
        ("get", Some("scale")) => {
            let obj = reg.get(r, ns, name(&info)?).await?;
            Ok(Json(subresources::scale_view(r, &obj)).into_response())
        }
        ("list", None) => {
            let opts = list_options(r, query)?;
            let floor = not_older_than(query);
            let meta = |revision: i64, cont: &Option<String>, remaining: Option<i64>| {
                let mut meta = json!({"resourceVersion": revision.to_string()});
                if let Some(c) = cont {
                    meta["continue"] = json!(c);
                }
                if let Some(n) = remaining {
                    meta["remainingItemCount"] = json!(n);
                }
                meta
            };
            match shape {
                Representation::Table => {
                    let page = reg.list(r, ns, &opts).await?;
                    too_new(floor, page.revision)?;
                    let mut t = table::build(r, &page.items, None);
                    t["metadata"] = meta(page.revision, &page.continue_token, page.remaining);
                    return Ok(Json(t).into_response());
                }
                Representation::Metadata => {
                    let page = reg.list(r, ns, &opts).await?;
                    too_new(floor, page.revision)?;
                    let items: Vec<Value> = page
                        .items
                        .into_iter()
                        .map(representation::partial)
                        .collect();
                    return Ok(Json(json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta(page.revision, &page.continue_token, page.remaining),
                        "items": items,
                    }))
                    .into_response());
                }
                Representation::Object => {}
            }
            // The items are copied from the store as they are, not rebuilt.
            let page = reg.list_json(r, ns, &opts).await?;
            too_new(floor, page.revision)?;
            let head = json!({
                "kind": format!("{}List", r.kind),
                "apiVersion": r.api_version(),
                "metadata": meta(page.revision, &page.continue_token, page.remaining),
            });
            let head = serde_json::to_vec(&head).unwrap_or_default();
            let size = head.len() + page.items.iter().map(|i| i.len() + 1).sum::<usize>() + 16;
            let mut body = Vec::with_capacity(size);
            body.extend_from_slice(&head);
            body.pop();
            body.extend_from_slice(b",\"items\":[");
            for (i, item) in page.items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.extend_from_slice(b"]}");
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        ("watch", None) => {
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(30 * 60));
            watch::serve(
                reg.clone(),
                watch::WatchRequest {
                    resource,
                    namespace: ns.map(str::to_string),
                    resource_version: query.get("resourceVersion").cloned(),
                    filter: Filter::parse(
                        r,
                        query.get("labelSelector").map(String::as_str),
                        query.get("fieldSelector").map(String::as_str),
                    )?,
                    representation: shape,
                    timeout,
                    bookmarks: flag(query, "allowWatchBookmarks"),
                    send_initial_events: initial_events(query)?,
                },
                state.shutdown.clone(),
            )
            .await
        }
        // Reviews are answers, not objects with metadata: no Table or metadata-only form.
        ("create", None)
            if shape != Representation::Object
                && (r.plural == "selfsubjectreviews" || r.group == "authorization.k8s.io") =>
        {
            Err(ApiError::new(
                StatusCode::NOT_ACCEPTABLE,
                "NotAcceptable",
                "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
            ))
        }
        ("create", None) if r.plural == "selfsubjectreviews" => {
            // `kubectl auth whoami`: who the server takes the caller to be.
            parse_body(headers, &body)?;
            let review = json!({
                "kind": "SelfSubjectReview",
                "apiVersion": r.api_version(),
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": user.name, "groups": user.groups}},
            });
            Ok((StatusCode::CREATED, Json(review)).into_response())
        }
        ("create", None) if r.group == "authorization.k8s.io" => {
            let review = parse_body(headers, &body)?;
            let answered = super::rbac::review::answer(&state.policy, user, r, ns, review)?;
            Ok((StatusCode::CREATED, Json(answered)).into_response())
        }
        ("create", None) if r.plural == "bindings" => {
            let b = parse_body(headers, &body)?;
            let pod = b
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("a Binding needs metadata.name"))?;
            reg.bind(ns.unwrap_or("default"), pod, &b).await?;
            Ok((StatusCode::CREATED, Json(success_status())).into_response())
        }
        ("create", None) => {
            let mut obj = parse_body(headers, &body)?;
            let warnings = decode(&mut obj)?;
            let created = reg.create(r, ns, obj).await?;
            Ok(warn(
                (StatusCode::CREATED, Json(created)).into_response(),
                &warnings,
            ))
        }
        ("create", Some("token")) => {
            let req = parse_body(headers, &body)?;
            let issued = state
                .tokens
                .request(reg, ns.unwrap_or("default"), name(&info)?, req)
                .await?;
            Ok((StatusCode::CREATED, Json(issued)).into_response())
        }
        ("create", Some("binding")) => {
            let b = parse_body(headers, &body)?;
            reg.bind(ns.unwrap_or("default"), name(&info)?, &b).await?;
            Ok((StatusCode::CREATED, Json(success_status())).into_response())
        }
        ("create", Some("eviction")) => {
            let e = parse_body(headers, &body)?;
            let opts = match e.get("deleteOptions") {
                Some(o) => DeleteOptions::from_value(o)?,
                None => DeleteOptions::default(),
            };
            super::eviction::evict(reg, r, ns.unwrap_or("default"), name(&info)?, &opts).await?;
            Ok((StatusCode::CREATED, Json(success_status())).into_response())
        }
        ("update", None | Some("status")) => {
            let mut obj = parse_body(headers, &body)?;
            let warnings = decode(&mut obj)?;
            let write = write_of(sub);
            let updated = reg.update(r, ns, name(&info)?, obj, write).await?;
            Ok(warn(Json(updated).into_response(), &warnings))
        }
        ("update", Some("finalize")) => {
            // Only spec.finalizers changes through namespaces/finalize.
            let obj = parse_body(headers, &body)?;
            let name = name(&info)?;
            let mut current = reg.get(r, ns, name).await?;
            current["spec"]["finalizers"] = obj
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
                current["metadata"]["resourceVersion"] = rv.clone();
            }
            Ok(Json(reg.update(r, ns, name, current, Write::Main).await?).into_response())
        }
        ("update", Some("scale")) => {
            let scale = parse_body(headers, &body)?;
            let name = name(&info)?;
            let current = reg.get(r, ns, name).await?;
            let updated = reg
                .update(
                    r,
                    ns,
                    name,
                    subresources::apply_scale(r, &current, &scale)?,
                    Write::Main,
                )
                .await?;
            Ok(Json(subresources::scale_view(r, &updated)).into_response())
        }
        ("patch", None | Some("status") | Some("scale")) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = PatchType::from_content_type(content_type)?;
            if kind == PatchType::Apply {
                let name = name(&info)?;
                let applied = decode_apply(&body, r, name, ns, sub)?;
                return server_side_apply(reg, r, ns, name, sub, applied, query, &decode).await;
            }
            if r.custom.is_some() && kind == PatchType::Strategic {
                // Custom resources have no patch strategies to merge by, as in kube.
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            check_size(body.len())?;
            let name = name(&info)?;
            let ty = openapi::kind_type(r.group, r.version, r.kind);
            let scale_ty = openapi::kind_type("autoscaling", "v1", "Scale");
            // As kube's GuaranteedUpdate: re-read and re-apply when another write slipped in
            // between, unless the patch itself pinned a resourceVersion.
            let mut attempts = 0;
            let mut warnings = Vec::new();
            loop {
                let current = reg.get(r, ns, name).await?;
                let result = if sub == Some("scale") {
                    let view = subresources::scale_view(r, &current);
                    let patched = patch::apply(kind, &view, &body, scale_ty.as_ref())?;
                    let pinned = patched.pointer("/metadata/resourceVersion")
                        != view.pointer("/metadata/resourceVersion");
                    let obj = subresources::apply_scale(r, &current, &patched)?;
                    (pinned, reg.update(r, ns, name, obj, Write::Main).await)
                } else {
                    let mut patched = patch::apply(kind, &current, &body, ty.as_ref())?;
                    warnings = decode(&mut patched)?;
                    let pinned = patched.pointer("/metadata/resourceVersion")
                        != current.pointer("/metadata/resourceVersion");
                    (
                        pinned,
                        reg.update(r, ns, name, patched, write_of(sub)).await,
                    )
                };
                match result {
                    (pinned, Err(e)) if e.reason == "Conflict" && !pinned && attempts < 5 => {
                        attempts += 1
                    }
                    (_, other) => {
                        let obj = other?;
                        if sub == Some("scale") {
                            return Ok(Json(subresources::scale_view(r, &obj)).into_response());
                        }
                        return Ok(warn(Json(obj).into_response(), &warnings));
                    }
                }
            }
        }
        ("delete", None) => {
            let (code, v) = reg.delete(r, ns, name(&info)?, &delete_opts).await?;
            Ok((code, Json(v)).into_response())
        }
        ("deletecollection", None) => {
            let opts = list_options(r, query)?;
            Ok(Json(reg.delete_collection(r, ns, &opts, &delete_opts).await?).into_response())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// An apply patch's body as the object to apply: JSON or YAML, with the kind's apiVersion
/// and kind, the URL's name; only status for the status subresource, no status otherwise
/// (when the kind has a status subresource).
fn decode_apply(
    body: &[u8],
    r: &resources::Resource,
    name: &str,
    ns: Option<&str>,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    check_size(body.len())?;
    let mut applied: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
    };
    let Some(o) = applied.as_object_mut() else {
        return Err(ApiError::bad_request("the apply patch must be an object"));
    };
    for f in ["apiVersion", "kind"] {
        if o.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "{f} must be set in an apply patch"
            )));
        }
    }
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    match meta.get("name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        _ => meta["name"] = json!(name),
    }
    if let Some(ns) = ns.filter(|_| r.namespaced) {
        meta["namespace"] = json!(ns);
    }
    match sub {
        Some("status") => {
            let keep = ["apiVersion", "kind", "metadata", "status"];
            o.retain(|k, _| keep.contains(&k.as_str()));
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "resourceVersion"));
            }
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("apply patches are not supported on the {other} subresource"),
            ))
        }
        None => {
            if r.has_subresource("status") {
                o.remove("status");
            }
        }
    }
    Ok(applied)
}

/// PATCH with `application/apply-patch+yaml`: merged into the live object by
/// `apiserver::apply` (or creating it), retried when another write slips in between.
#[allow(clippy::too_many_arguments)]
async fn server_side_apply(
    reg: &Registry,
    r: &resources::Resource,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    mut applied: Value,
    query: &HashMap<String, String>,
    decode: &(dyn Fn(&mut Value) -> Result<Vec<String>, ApiError> + Sync),
) -> Result<Response, ApiError> {
    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let force = flag(query, "force");
    let warnings = decode(&mut applied)?;
    let pinned = applied
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|rv| !rv.is_empty());
    let subresource = sub.unwrap_or("");
    let mut attempts = 0;
    loop {
        let (result, created) = match reg.get(r, ns, name).await {
            Ok(live) => {
                let mut merged = super::apply::apply(
                    r,
                    Some(&live),
                    applied.clone(),
                    manager,
                    force,
                    subresource,
                )?;
                if !pinned {
                    merged["metadata"]["resourceVersion"] = live
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                }
                (reg.update(r, ns, name, merged, write_of(sub)).await, false)
            }
            Err(e) if e.code == StatusCode::NOT_FOUND && sub.is_none() => {
                let obj = super::apply::apply(r, None, applied.clone(), manager, force, "")?;
                (reg.create(r, ns, obj).await, true)
            }
            Err(e) => return Err(e),
        };
        match result {
            Err(e) if e.reason == "Conflict" && e.causes.is_empty() && !pinned && attempts < 5 => {
                attempts += 1;
            }
            Err(e) if e.reason == "AlreadyExists" && attempts < 5 => attempts += 1,
            Err(e) => return Err(e),
            Ok(obj) => {
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(warn((code, Json(obj)).into_response(), &warnings));
            }
        }
    }
}

/// Adds kube's `Warning: 299 - "..."` headers (kubectl prints them as `Warning: ...`).
fn warn(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    matches!(query.get(name).map(String::as_str), Some("true" | "1"))
}

/// `sendInitialEvents`, which kube allows only with resourceVersionMatch=NotOlderThan.
fn initial_events(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    let wanted = flag(query, "sendInitialEvents");
    let not_older = query.get("resourceVersionMatch").map(String::as_str) == Some("NotOlderThan");
    if wanted && !not_older {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
        ));
    }
    if wanted && !flag(query, "allowWatchBookmarks") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "ListOptions.meta.k8s.io \"\" is invalid: allowWatchBookmarks: Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is set",
        ));
    }
    Ok(wanted)
}

fn write_of(sub: Option<&str>) -> Write {
    if sub == Some("status") {
        Write::Status
    } else {
        Write::Main
    }
}

fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// Discovery documents, legacy or aggregated as the client asks; None for other paths.
/// Service-account issuer discovery: the OIDC configuration and the key set that verifies
/// service-account tokens.
fn serve_oidc(state: &ApiState, path: &str, headers: &HeaderMap) -> Option<Response> {
    match path {
        "/.well-known/openid-configuration" => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| state.advertise.map(|ip| format!("{ip}:{}", state.port)))
                .unwrap_or_else(|| "kubernetes.default.svc".into());
            let uri = format!("https://{host}/openid/v1/jwks");
            Some(Json(state.tokens.openid_configuration(&uri)).into_response())
        }
        "/openid/v1/jwks" => {
            let mut resp = Json(state.tokens.key().jwks()).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/jwk-set+json"),
            );
            Some(resp)
        }
        _ => None,
    }
}

fn serve_discovery(
    path: &str,
    accept: &str,
    customs: &[resources::Resource],
) -> Option<Result<Response, ApiError>> {
    let aggregated = discovery::aggregated_wanted(accept);
    let doc = match (path, aggregated) {
        ("/api", Some(media)) | ("/apis", Some(media)) => {
            let body = discovery::aggregated(path == "/api", media, customs);
            let mut resp = Json(body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(media),
            );
            return Some(Ok(resp));
        }
        ("/api", None) => Some(discovery::core_versions()),
        ("/apis", None) => Some(discovery::groups(customs)),
        ("/api/v1", _) => discovery::resources("", "v1", customs),
        _ => {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["apis", group] => discovery::group(group, customs),
                ["apis", group, version] => discovery::resources(group, version, customs),
                _ => return None,
            }
        }
    };
    Some(found(doc))
}

/// LIST options from the query: selectors, resourceVersion, limit, continue.
fn list_options(
    r: &resources::Resource,
    query: &HashMap<String, String>,
) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        filter: Filter::parse(
            r,
            query.get("labelSelector").map(String::as_str),
            query.get("fieldSelector").map(String::as_str),
        )?,
        revision: list_revision(query)?,
        limit: match query.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            None => 0,
        },
        continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

/// The revision a LIST reads at, from resourceVersion and resourceVersionMatch as kube's
/// documentation tabulates them: unset or "0" (or NotOlderThan) is the current state, which
/// is never older than any resourceVersion a client has seen; Exact (and a limited list at
/// a given resourceVersion) is that revision.
fn list_revision(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let matching = query
        .get("resourceVersionMatch")
        .map(String::as_str)
        .unwrap_or("");
    let parsed = |rv: &str| {
        rv.parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))
    };
    let limited = query
        .get("limit")
        .is_some_and(|l| l != "0" && !l.is_empty());
    match (rv, matching) {
        ("", "") => Ok(0),
        ("", m) => Err(ApiError::bad_request(format!(
            "resourceVersionMatch {m:?} is forbidden unless resourceVersion is provided"
        ))),
        ("0", "Exact") => Err(ApiError::bad_request(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
        )),
        ("0", _) => Ok(0),
        (rv, "Exact") => parsed(rv),
        (rv, "") if limited => parsed(rv),
        (rv, "" | "NotOlderThan") => {
            parsed(rv)?;
            Ok(0)
        }
        (_, m) => Err(ApiError::bad_request(format!(
            "resourceVersionMatch {m:?} is not supported (Exact, NotOlderThan)"
        ))),
    }
}

/// The resourceVersion a NotOlderThan LIST must reach (0: none).
fn not_older_than(query: &HashMap<String, String>) -> i64 {
    let exact = query.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    match query.get("resourceVersion") {
        Some(rv) if !exact => rv.parse().unwrap_or(0),
        _ => 0,
    }
}

/// kube answers a LIST for a resourceVersion the store has not reached with 504.
fn too_new(floor: i64, revision: i64) -> Result<(), ApiError> {
    if floor > revision {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {floor}, current: {revision}"),
        ));
    }
    Ok(())
}

fn too_large(len: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("the request body is {len} bytes, over the {MAX_BODY_BYTES} byte limit"),
    )
}

fn check_size(len: usize) -> Result<(), ApiError> {
    if len > MAX_BODY_BYTES {
        return Err(too_large(len));
    }
    Ok(())
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
    check_size(body.len())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.starts_with(protobuf::MEDIA_TYPE) {
        return protobuf::decode(body);
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
