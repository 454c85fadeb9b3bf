//! Admission webhooks, as kube's MutatingAdmissionWebhook and ValidatingAdmissionWebhook
//! plugins: the MutatingWebhookConfigurations and ValidatingWebhookConfigurations are kept in
//! memory (followed through a store watch), and every write a user makes through the API is
//! sent, as an `admission.k8s.io/v1` AdmissionReview, to the webhooks whose rules and
//! selectors match it: the mutating ones in order (configurations by name, then webhooks in
//! order) after krab's built-in admission, their JSON patches applied; the validating ones
//! together, after the object's own validation. A denial, or a failed call under
//! `failurePolicy: Fail`, refuses the write with kube's messages. The webhook configurations
//! themselves are never sent to webhooks, so a webhook cannot lock itself in.
mod call;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use self::call::Target;
use self::rules::RequestShape;
use super::auth::User;
use super::follow;
use super::patch::{self, PatchType};
use super::registry::Registry;
use super::resources::{self, Resource};
use super::status::ApiError;

const GROUP: &str = "admissionregistration.k8s.io";

/// The webhook configurations by store key (so by name within each kind).
#[derive(Default)]
struct Configs {
    mutating: BTreeMap<Vec<u8>, Value>,
    validating: BTreeMap<Vec<u8>, Value>,
}

/// The webhook configurations in memory.
#[derive(Clone, Default)]
pub struct AdmissionWebhooks {
    configs: Arc<RwLock<Configs>>,
}

/// One request as admission sees it.
pub struct Request<'a> {
    pub r: &'a Resource,
    pub subresource: &'a str,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: &'static str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub user: &'a User,
    pub dry_run: bool,
}

/// A webhook that matched, with the configuration it came from.
struct Hook {
    name: String,
    spec: Value,
}

impl AdmissionWebhooks {
    /// Follows both configuration kinds until `shutdown`.
    pub async fn run(self, registry: Registry, shutdown: CancellationToken) {
        let follow_kind = |plural: &'static str, mutating: bool| {
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            let configs = self.configs.clone();
            async move {
                let Some(r) = resources::find(GROUP, "v1", plural) else {
                    return;
                };
                follow::follow(r, registry, shutdown, |change| {
                    let Ok(mut c) = configs.write() else {
                        return;
                    };
                    let map = if mutating {
                        &mut c.mutating
                    } else {
                        &mut c.validating
                    };
                    change.apply_to(map);
                })
                .await;
            }
        };
        tokio::join!(
            follow_kind("mutatingwebhookconfigurations", true),
            follow_kind("validatingwebhookconfigurations", false)
        );
    }

    fn hooks(&self, mutating: bool) -> Vec<Hook> {
        let Ok(c) = self.configs.read() else {
            return Vec::new();
        };
        let map = if mutating { &c.mutating } else { &c.validating };
        map.values()
            .flat_map(|cfg| {
                cfg.get("webhooks")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|spec| Hook {
                name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                spec,
            })
            .collect()
    }

    fn is_empty(&self, mutating: bool) -> bool {
        self.configs
            .read()
            .map(|c| {
                if mutating {
                    c.mutating.is_empty()
                } else {
                    c.validating.is_empty()
                }
            })
            .unwrap_or(true)
    }

    /// The matching webhooks of one kind for this request.
    async fn matching(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        mutating: bool,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Vec<Hook> {
        if req.r.group == GROUP || self.is_empty(mutating) {
            return Vec::new();
        }
        let shape = RequestShape {
            operation: req.operation,
            group: req.r.group,
            version: req.r.version,
            resource: req.r.plural,
            subresource: req.subresource,
            namespaced: req.r.namespaced,
        };
        let candidates: Vec<Hook> = self
            .hooks(mutating)
            .into_iter()
            .filter(|h| rules::rules_match(&h.spec, &shape))
            .filter(|h| rules::object_selected(&h.spec, object, old))
            .collect();
        if candidates.is_empty() {
            return candidates;
        }
        let ns_labels = namespace_labels(registry, req, object, old).await;
        candidates
            .into_iter()
            .filter(|h| rules::namespace_selected(&h.spec, ns_labels.as_ref()))
            .collect()
    }

    /// Runs the mutating webhooks over `obj` (a CREATE or UPDATE).
    pub async fn mutate(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let hooks = self.matching(registry, req, true, Some(obj), old).await;
        if hooks.is_empty() {
            return Ok(());
        }
        // Webhooks asking to be called again (reinvocationPolicy IfNeeded) are, once, if a
        // later webhook changed the object after them.
        let mut reinvoke: Vec<usize> = Vec::new();
        let mut changed_after: Vec<bool> = vec![false; hooks.len()];
        for (i, hook) in hooks.iter().enumerate() {
            let changed = self.mutate_once(registry, req, hook, obj, old).await?;
            if changed {
                for c in &mut changed_after[..i] {
                    *c = true;
                }
            }
            if hook.spec.get("reinvocationPolicy").and_then(Value::as_str) == Some("IfNeeded") {
                reinvoke.push(i);
            }
        }
        for i in reinvoke.into_iter().filter(|i| changed_after[*i]) {
            self.mutate_once(registry, req, &hooks[i], obj, old).await?;
        }
        Ok(())
    }

    /// One mutating call; whether it changed the object.
    async fn mutate_once(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        hook: &Hook,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<bool, ApiError> {
        let Some(resp) = self.call(registry, req, hook, Some(obj), old).await? else {
            return Ok(false);
        };
        let Some(p) = resp.get("patch").and_then(Value::as_str) else {
            return Ok(false);
        };
        let internal = |e: String| {
            ApiError::internal(format!(
                "Internal error occurred: admission webhook \"{}\" attempted to modify the object, which is not supported for this operation: {e}",
                hook.name
            ))
        };
        if req.operation == "DELETE" {
            return Err(internal("a DELETE cannot be mutated".into()));
        }
        match resp.get("patchType").and_then(Value::as_str) {
            Some("JSONPatch") => {}
            other => {
                return Err(ApiError::internal(format!(
                    "Internal error occurred: admission webhook \"{}\" returned an unsupported patchType {:?}",
                    hook.name,
                    other.unwrap_or("")
                )))
            }
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .map_err(|e| internal(format!("the patch is not base64: {e}")))?;
        let patched = patch::apply(PatchType::Json, obj, &bytes, None).map_err(|e| {
            ApiError::internal(format!(
                "Internal error occurred: admission webhook \"{}\" returned a patch that does not apply: {}",
                hook.name, e.message
            ))
        })?;
        let changed = patched != *obj;
        *obj = patched;
        Ok(changed)
    }

    /// A CONNECT (exec, attach, port-forward): both kinds of webhooks see the options
    /// object (`PodExecOptions`, ...); a mutating webhook's patch changes nothing.
    pub async fn connect(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        options: &Value,
    ) -> Result<(), ApiError> {
        let mut scratch = options.clone();
        self.mutate(registry, req, &mut scratch, None).await?;
        self.validate(registry, req, Some(options), None).await
    }

    /// Runs the validating webhooks (all at once); `object` is None for a DELETE.
    pub async fn validate(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let hooks = self.matching(registry, req, false, object, old).await;
        let calls = hooks
            .iter()
            .map(|h| self.call(registry, req, h, object, old));
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// Calls one webhook: the answer when it allowed the request, None when it failed and
    /// may be ignored; a denial or a failure under `failurePolicy: Fail` is the error.
    async fn call(
        &self,
        registry: &Registry,
        req: &Request<'_>,
        hook: &Hook,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        let spec = &hook.spec;
        let side_effects = spec
            .get("sideEffects")
            .and_then(Value::as_str)
            .unwrap_or("Unknown");
        if req.dry_run && !matches!(side_effects, "None" | "NoneOnDryRun") {
            return Err(ApiError::bad_request(format!(
                "admission webhook \"{}\" does not support dry run",
                hook.name
            )));
        }
        let fail_open = spec.get("failurePolicy").and_then(Value::as_str) == Some("Ignore");
        let timeout = Duration::from_secs(
            spec.get("timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(10)
                .clamp(1, 30),
        );
        let uid = super::objects::new_uid();
        let review = review(req, &uid, object, old);
        let client = spec.get("clientConfig").cloned().unwrap_or_default();
        let outcome = match Target::from_client_config(&client) {
            Some(target) => {
                let ca = client.get("caBundle").and_then(Value::as_str);
                call::post(registry, &target, ca, timeout, &review).await
            }
            None => Err("the webhook has neither a url nor a service".to_string()),
        }
        .and_then(|answer| {
            let resp = answer
                .get("response")
                .cloned()
                .ok_or_else(|| "the AdmissionReview has no response".to_string())?;
            let got = resp.get("uid").and_then(Value::as_str).unwrap_or("");
            if got != uid {
                return Err(format!("expected response.uid=\"{uid}\", got \"{got}\""));
            }
            Ok(resp)
        });
        let resp = match outcome {
            Ok(r) => r,
            Err(e) if fail_open => {
                tracing::warn!(webhook = %hook.name, error = %e, "webhook failed; ignored (failurePolicy Ignore)");
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(webhook = %hook.name, error = %e, "webhook failed");
                return Err(ApiError::internal(format!(
                    "Internal error occurred: failed calling webhook \"{}\": {e}",
                    hook.name
                )));
            }
        };
        if resp.get("allowed").and_then(Value::as_bool) == Some(true) {
            return Ok(Some(resp));
        }
        Err(denied(&hook.name, resp.get("status")))
    }
}

/// The namespace labels the namespaceSelector sees (None for cluster-scoped objects).
async fn namespace_labels(
    registry: &Registry,
    req: &Request<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Option<Map<String, Value>> {
    let labels_of = |o: &Value| {
        o.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    if req.r.group.is_empty() && req.r.plural == "namespaces" {
        return object.or(old).map(labels_of);
    }
    let ns = req.namespace.filter(|_| req.r.namespaced)?;
    let r = resources::find("", "v1", "namespaces")?;
    Some(
        registry
            .get(r, None, ns)
            .await
            .map(|n| labels_of(&n))
            .unwrap_or_default(),
    )
}

/// The AdmissionReview sent for `req`.
fn review(req: &Request<'_>, uid: &str, object: Option<&Value>, old: Option<&Value>) -> Value {
    let r = req.r;
    let options = match req.operation {
        "CREATE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}),
        "UPDATE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"}),
        "DELETE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}),
        _ => Value::Null,
    };
    // A CONNECT's object is its options (PodExecOptions, ...), and so is its kind.
    let kind = match (req.operation, object) {
        ("CONNECT", Some(o)) => json!({
            "group": "",
            "version": "v1",
            "kind": o.get("kind").and_then(Value::as_str).unwrap_or(""),
        }),
        _ => json!({"group": r.group, "version": r.version, "kind": r.kind}),
    };
    let mut request = json!({
        "uid": uid,
        "kind": kind,
        "resource": {"group": r.group, "version": r.version, "resource": r.plural},
        "requestKind": kind,
        "requestResource": {"group": r.group, "version": r.version, "resource": r.plural},
        "name": req.name,
        "operation": req.operation,
        "userInfo": {"username": req.user.name, "groups": req.user.groups},
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": req.dry_run,
        "options": options,
    });
    if !req.subresource.is_empty() {
        request["subResource"] = json!(req.subresource);
        request["requestSubResource"] = json!(req.subresource);
    }
    if let Some(ns) = req.namespace.filter(|_| r.namespaced) {
        request["namespace"] = json!(ns);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// kube's `ToStatusErr`: the webhook's Status, at least a 400, its message prefixed with
/// who denied the request.
fn denied(webhook: &str, status: Option<&Value>) -> ApiError {
    let by = format!("admission webhook \"{webhook}\" denied the request");
    let field = |f: &str| {
        status
            .and_then(|s| s.get(f))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let message = match (field("message"), field("reason")) {
        (m, _) if !m.is_empty() => format!("{by}: {m}"),
        (_, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    ApiError::new(code, reason_of(field("reason"), code), message)
}

/// The Status reason kube would carry (`reason` is one of metav1's StatusReasons).
fn reason_of(given: &str, code: StatusCode) -> &'static str {
    const KNOWN: [&str; 15] = [
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "InternalError",
    ];
    if let Some(k) = KNOWN.iter().find(|k| **k == given) {
        return k;
    }
    match code {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::UNPROCESSABLE_ENTITY => "Invalid",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        c if c.is_server_error() => "InternalError",
        _ => "BadRequest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_read_as_kube_writes_them() {
        let e = denied(
            "deny.example.com",
            Some(&json!({"code": 403, "message": "the pod contains unwanted label"})),
        );
        assert_eq!(e.code, StatusCode::FORBIDDEN);
        assert_eq!(e.reason, "Forbidden");
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request: the pod contains unwanted label"
        );
        let e = denied("w", None);
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "admission webhook \"w\" denied the request without explanation"
        );
        let e = denied("w", Some(&json!({"code": 200, "reason": "NotAllowed"})));
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "admission webhook \"w\" denied the request: NotAllowed"
        );
    }
}
