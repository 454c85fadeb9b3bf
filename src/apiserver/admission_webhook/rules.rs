//! Which requests a webhook sees: its `rules` (operations, groups, versions, resources with
//! subresources, scope), its `namespaceSelector` and its `objectSelector`, as kube-apiserver
//! matches them.
use serde_json::{Map, Value};

use crate::apiserver::strategy::workload::selector_matches;

/// What a request is, as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct RequestShape<'a> {
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    /// Whether the object lives in a namespace.
    pub namespaced: bool,
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn any_is(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// One rule: `resources` entries are `res`, `res/sub`, `*`, `*/*`, `res/*` or `*/sub`; a
/// `/*` suffix matches the resource and every subresource, none matches no subresource.
pub fn rule_matches(rule: &Value, req: &RequestShape<'_>) -> bool {
    let resource_ok = strings(rule, "resources").iter().any(|entry| {
        let (res, sub) = entry.split_once('/').unwrap_or((entry, ""));
        let res_ok = res == "*" || res == req.resource;
        // `res/*` covers the resource itself too, as kube matches.
        let sub_ok = sub == "*" || sub == req.subresource;
        res_ok && sub_ok
    });
    let scope_ok = match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        "Cluster" => !req.namespaced,
        "Namespaced" => req.namespaced,
        _ => true,
    };
    any_is(&strings(rule, "operations"), req.operation)
        && any_is(&strings(rule, "apiGroups"), req.group)
        && any_is(&strings(rule, "apiVersions"), req.version)
        && resource_ok
        && scope_ok
}

/// Whether any of a webhook's rules match.
pub fn rules_match(webhook: &Value, req: &RequestShape<'_>) -> bool {
    webhook
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| rule_matches(r, req))
}

fn labels(obj: Option<&Value>) -> Map<String, Value> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// `objectSelector`: the new object's or the old object's labels (either may be absent).
pub fn object_selected(webhook: &Value, object: Option<&Value>, old: Option<&Value>) -> bool {
    let Some(sel) = webhook.get("objectSelector") else {
        return true;
    };
    [object, old]
        .into_iter()
        .flatten()
        .any(|o| selector_matches(sel, &labels(Some(o))))
        || (object.is_none() && old.is_none() && selector_matches(sel, &Map::new()))
}

/// `namespaceSelector` against the labels of the request's namespace (for a Namespace
/// itself, its own labels); cluster-scoped objects always match.
pub fn namespace_selected(webhook: &Value, namespace_labels: Option<&Map<String, Value>>) -> bool {
    match (webhook.get("namespaceSelector"), namespace_labels) {
        (Some(sel), Some(l)) => selector_matches(sel, l),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req<'a>(op: &'a str, resource: &'a str, sub: &'a str) -> RequestShape<'a> {
        RequestShape {
            operation: op,
            group: "",
            version: "v1",
            resource,
            subresource: sub,
            namespaced: true,
        }
    }

    #[test]
    fn rules_match_operations_resources_subresources_and_scope() {
        let rule = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]});
        assert!(rule_matches(&rule, &req("CREATE", "pods", "")));
        assert!(!rule_matches(&rule, &req("UPDATE", "pods", "")));
        assert!(!rule_matches(&rule, &req("CREATE", "pods", "status")));
        assert!(!rule_matches(&rule, &req("CREATE", "configmaps", "")));
        let any = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]});
        assert!(rule_matches(&any, &req("DELETE", "pods", "status")));
        assert!(rule_matches(&any, &req("DELETE", "pods", "")));
        let star = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]});
        assert!(!rule_matches(&star, &req("UPDATE", "pods", "status")));
        let sub = json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/status", "*/scale"]});
        assert!(rule_matches(&sub, &req("UPDATE", "pods", "status")));
        assert!(rule_matches(&sub, &req("UPDATE", "deployments", "scale")));
        assert!(!rule_matches(&sub, &req("UPDATE", "pods", "")));
        let all_of_pods = json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/*"]});
        assert!(rule_matches(&all_of_pods, &req("UPDATE", "pods", "")));
        assert!(rule_matches(&all_of_pods, &req("UPDATE", "pods", "log")));
        let cluster = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "scope": "Cluster"});
        assert!(!rule_matches(&cluster, &req("CREATE", "pods", "")));
    }

    #[test]
    fn selectors_see_either_object_and_the_namespace_labels() {
        let hook = json!({
            "objectSelector": {"matchLabels": {"webhook": "on"}},
            "namespaceSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
        });
        let on = json!({"metadata": {"labels": {"webhook": "on"}}});
        let off = json!({"metadata": {}});
        assert!(object_selected(&hook, Some(&on), None));
        assert!(object_selected(&hook, Some(&off), Some(&on)));
        assert!(!object_selected(&hook, Some(&off), None));
        assert!(object_selected(&json!({}), Some(&off), None));
        let skip: Map<String, Value> = [("skip".to_string(), json!("yes"))].into_iter().collect();
        assert!(!namespace_selected(&hook, Some(&skip)));
        assert!(namespace_selected(&hook, Some(&Map::new())));
        assert!(namespace_selected(&hook, None));
    }
}
