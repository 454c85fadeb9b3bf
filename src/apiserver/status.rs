//! API errors as kube-apiserver returns them: a `metav1.Status` body with the HTTP code and
//! the reason clients switch on (`NotFound`, `AlreadyExists`, `Conflict`, …). Store errors
//! become Statuses here and nowhere else.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status: the object's name, its group and kind (resource).
    pub details: Option<Box<(String, String, String)>>,
    /// `details.causes`: one per invalid field.
    pub causes: Vec<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }
    }

    fn with_details(mut self, name: &str, group: &str, resource: &str) -> Self {
        self.details = Some(Box::new((name.into(), group.into(), resource.into())));
        self
    }

    /// `configmaps "x" not found`
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} \"{name}\" not found"),
        )
        .with_details(name, group, resource)
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .with_details(name, group, resource)
    }

    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        let what = qualified(group, resource);
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(name, group, resource)
    }

    /// The same error with kube's more specific message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 422 with the field path and problem, as kube's validation reports it.
    pub fn invalid(kind: &str, name: &str, field: &str, problem: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {field}: {problem}"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// A 403 for an object (or kind, with an empty name), with kube's details.
    pub fn forbidden_on(group: &str, resource: &str, name: &str, message: String) -> Self {
        Self::forbidden(message).with_details(name, group, resource)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    pub fn status_body(&self) -> serde_json::Value {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some((name, group, kind)) = self.details.as_deref() {
            let mut d = json!({ "name": name, "kind": kind });
            if !group.is_empty() {
                d["group"] = json!(group);
            }
            if !self.causes.is_empty() {
                d["causes"] = json!(self.causes);
            }
            body["details"] = d;
        } else if !self.causes.is_empty() {
            body["details"] = json!({ "causes": self.causes });
        }
        body
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.status_body();
        (self.code, axum::Json(body)).into_response()
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::Compacted { .. } => {
                Self::gone("The resourceVersion for the provided list is too old.".to_string())
            }
            store::Error::FutureRevision { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                "Too large resource version",
            ),
            store::Error::RequestTooLarge { .. } => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "etcdserver: request is too large",
            ),
            store::Error::NoSpace(m) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "InternalError",
                format!("the datastore is out of space: {m}"),
            ),
            store::Error::Timeout | store::Error::NoLeader | store::Error::NotLeader { .. } => {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("the datastore is unavailable: {e}"),
                )
            }
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("Internal error occurred: {other}"),
            ),
        }
    }
}
