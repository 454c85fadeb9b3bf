//! The authorization.k8s.io reviews: SelfSubjectAccessReview (`kubectl auth can-i`),
//! SubjectAccessReview and LocalSubjectAccessReview (for another user), and
//! SelfSubjectRulesReview (`kubectl auth can-i --list`), answered from the RBAC policy.
use serde_json::{json, Value};

use super::rules::Attributes;
use super::PolicyCache;
use crate::apiserver::auth::User;
use crate::apiserver::resources::Resource;
use crate::apiserver::status::ApiError;

fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// What a review's spec asks about.
fn attributes(spec: &Value) -> Result<Attributes, ApiError> {
    if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let opt = |f: &str| Some(text(ra, f)).filter(|s| !s.is_empty());
        return Ok(Attributes::Resource {
            verb: text(ra, "verb"),
            group: text(ra, "group"),
            resource: text(ra, "resource"),
            subresource: opt("subresource"),
            namespace: opt("namespace"),
            name: opt("name"),
        });
    }
    if let Some(nr) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Attributes::NonResource {
            verb: text(nr, "verb"),
            path: text(nr, "path"),
        });
    }
    Err(ApiError::invalid(
        "SubjectAccessReview",
        "",
        "spec.resourceAttributes",
        "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

/// The answered review (request echoed with its status).
pub fn answer(
    policy: &PolicyCache,
    caller: &User,
    r: &Resource,
    ns: Option<&str>,
    mut review: Value,
) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    review["kind"] = json!(r.kind);
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    let mut meta = review.get("metadata").cloned().unwrap_or(json!({}));
    meta["creationTimestamp"] = Value::Null;
    review["metadata"] = meta;
    if r.plural == "selfsubjectrulesreviews" {
        let namespace = text(&spec, "namespace");
        let rules = policy.rules_for(caller, Some(namespace.as_str()).filter(|n| !n.is_empty()));
        let mut resource_rules = Vec::new();
        let mut non_resource_rules = Vec::new();
        for rule in rules {
            if rule.get("nonResourceURLs").is_some() {
                non_resource_rules.push(
                    json!({"verbs": rule["verbs"], "nonResourceURLs": rule["nonResourceURLs"]}),
                );
            } else {
                let mut out = json!({
                    "verbs": rule["verbs"],
                    "apiGroups": rule.get("apiGroups").cloned().unwrap_or(json!([])),
                    "resources": rule.get("resources").cloned().unwrap_or(json!([])),
                });
                if let Some(n) = rule.get("resourceNames") {
                    out["resourceNames"] = n.clone();
                }
                resource_rules.push(out);
            }
        }
        review["status"] = json!({
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": false,
        });
        return Ok(review);
    }
    let mut attrs = attributes(&spec)?;
    let subject = match r.plural {
        "selfsubjectaccessreviews" => caller.clone(),
        _ => {
            let groups = spec
                .get("groups")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            let user = text(&spec, "user");
            if user.is_empty() && spec.get("groups").is_none() {
                return Err(ApiError::invalid(
                    r.kind,
                    "",
                    "spec.user",
                    "Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            User { name: user, groups }
        }
    };
    if r.plural == "localsubjectaccessreviews" {
        if let Attributes::Resource { namespace, .. } = &mut attrs {
            match (namespace.as_deref(), ns) {
                (Some(asked), Some(here)) if asked != here => {
                    return Err(ApiError::invalid(
                        r.kind,
                        "",
                        "spec.resourceAttributes.namespace",
                        &format!("Invalid value: {asked:?}: must match metadata.namespace"),
                    ))
                }
                _ => *namespace = ns.map(str::to_string),
            }
        }
    }
    let allowed =
        subject.groups.iter().any(|g| g == "system:masters") || policy.allows(&subject, &attrs);
    review["status"] = json!({"allowed": allowed});
    Ok(review)
}
