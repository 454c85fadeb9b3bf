//! RBAC evaluation without I/O: request attributes, PolicyRule matching (wildcards,
//! `resource/subresource`, resourceNames, nonResourceURL prefixes), binding subjects, and
//! the Forbidden message kube-apiserver writes.
use serde_json::Value;

use crate::apiserver::auth::User;

/// What a request asks to do, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

fn strings<'a>(rule: &'a Value, field: &str) -> Vec<&'a str> {
    rule.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn has(list: &[&str], want: &str) -> bool {
    list.iter().any(|v| *v == "*" || *v == want)
}

/// Whether one PolicyRule allows the request.
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            if !has(&strings(rule, "verbs"), verb) || !has(&strings(rule, "apiGroups"), group) {
                return false;
            }
            let resources = strings(rule, "resources");
            let matches_resource = match subresource {
                None => has(&resources, resource),
                Some(sub) => resources.iter().any(|r| {
                    *r == "*"
                        || *r == format!("{resource}/{sub}")
                        || *r == format!("*/{sub}")
                        || *r == format!("{resource}/*")
                }),
            };
            if !matches_resource {
                return false;
            }
            let names = strings(rule, "resourceNames");
            names.is_empty() || name.as_deref().is_some_and(|n| names.contains(&n))
        }
        Attributes::NonResource { verb, path } => {
            has(&strings(rule, "verbs"), verb)
                && strings(rule, "nonResourceURLs").iter().any(|u| {
                    *u == "*"
                        || *u == path
                        || u.strip_suffix('*')
                            .is_some_and(|prefix| path.starts_with(prefix))
                })
        }
    }
}

/// Whether a binding's subject is `user`; `binding_ns` defaults a ServiceAccount's namespace.
pub fn subject_is(subject: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .or(binding_ns)
                .unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// kube-apiserver's Forbidden message for a denied request.
pub fn forbidden_message(user: &User, attrs: &Attributes) -> String {
    match attrs {
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let what = match subresource {
                Some(s) => format!("{resource}/{s}"),
                None => resource.clone(),
            };
            // The object is named by its resource alone (kube's GroupResource).
            let object = match name {
                Some(n) => format!("{resource} {n:?}"),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".to_string(),
            };
            format!(
                "{object} is forbidden: User {:?} cannot {verb} resource {what:?} in API group \
                 {group:?} {scope}",
                user.name
            )
        }
        Attributes::NonResource { verb, path } => {
            format!(
                "forbidden: User {:?} cannot {verb} path {path:?}",
                user.name
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get_pods(name: Option<&str>, sub: Option<&str>) -> Attributes {
        Attributes::Resource {
            verb: "get".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: sub.map(str::to_string),
            namespace: Some("default".into()),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        assert!(rule_allows(&rule, &get_pods(Some("p"), None)));
        assert!(rule_allows(&rule, &get_pods(Some("p"), Some("log"))));
        assert!(!rule_allows(&rule, &get_pods(Some("p"), Some("exec"))));
        let named = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["a"]});
        assert!(rule_allows(&named, &get_pods(Some("a"), None)));
        assert!(!rule_allows(&named, &get_pods(Some("b"), None)));
        assert!(!rule_allows(&named, &get_pods(None, None)));
        let all = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(&all, &get_pods(None, Some("exec"))));
        let urls = json!({"nonResourceURLs": ["/api", "/apis/*"], "verbs": ["get"]});
        let path = |p: &str| Attributes::NonResource {
            verb: "get".into(),
            path: p.into(),
        };
        assert!(rule_allows(&urls, &path("/api")));
        assert!(rule_allows(&urls, &path("/apis/apps/v1")));
        assert!(!rule_allows(&urls, &path("/metrics")));
    }

    #[test]
    fn subjects_and_messages_look_like_kubes() {
        let user = User {
            name: "system:serviceaccount:ns1:robot".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        assert!(subject_is(
            &json!({"kind": "ServiceAccount", "name": "robot"}),
            &user,
            Some("ns1")
        ));
        assert!(!subject_is(
            &json!({"kind": "ServiceAccount", "name": "robot", "namespace": "ns2"}),
            &user,
            Some("ns1")
        ));
        assert!(subject_is(
            &json!({"kind": "Group", "name": "system:serviceaccounts"}),
            &user,
            None
        ));
        assert_eq!(
            forbidden_message(&user, &get_pods(None, None)),
            "pods is forbidden: User \"system:serviceaccount:ns1:robot\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(
            forbidden_message(&user, &get_pods(Some("p"), Some("exec"))),
            "pods \"p\" is forbidden: User \"system:serviceaccount:ns1:robot\" cannot get resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
    }
}
