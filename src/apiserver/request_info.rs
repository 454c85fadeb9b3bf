//! Turning a request's method, path and query into what it asks for (kube's RequestInfo):
//! verb, group, version, namespace, resource, name, subresource.
use axum::http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub verb: &'static str,
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses a resource path (`/api/v1/...` or `/apis/<group>/<version>/...`); None for
/// anything else (discovery, health, unknown paths).
pub fn parse(method: &Method, path: &str, watch: bool) -> Option<RequestInfo> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        // `namespaces/<ns>/status` and `/finalize` are subresources of the namespace itself.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let resource = rest[0].to_string();
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return None;
    }
    // For the namespaces resource itself, the "namespace" parsed above is the object's name.
    let (namespace, name) =
        if resource == "namespaces" && rest.len() <= 3 && rest[0] == "namespaces" {
            (None, namespace.or(name))
        } else {
            (namespace, name)
        };
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(RequestInfo {
        verb,
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(m: Method, path: &str) -> RequestInfo {
        parse(&m, path, false).unwrap()
    }

    #[test]
    fn paths_resolve_like_kube_apiserver() {
        let r = p(Method::GET, "/api/v1/namespaces/default/configmaps/x");
        assert_eq!(
            (
                r.verb,
                r.namespace.as_deref(),
                r.resource.as_str(),
                r.name.as_deref()
            ),
            ("get", Some("default"), "configmaps", Some("x"))
        );
        let r = p(Method::GET, "/api/v1/namespaces");
        assert_eq!(
            (r.verb, r.resource.as_str(), r.name),
            ("list", "namespaces", None)
        );
        let r = p(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let r = p(Method::PUT, "/api/v1/namespaces/x/finalize");
        assert_eq!(
            (
                r.resource.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("finalize"))
        );
        let r = p(Method::GET, "/api/v1/configmaps");
        assert_eq!((r.verb, r.namespace), ("list", None));
        let r = p(Method::POST, "/apis/apps/v1/namespaces/a/deployments");
        assert_eq!(
            (r.verb, r.group.as_str(), r.resource.as_str()),
            ("create", "apps", "deployments")
        );
        let r = parse(&Method::GET, "/api/v1/namespaces/a/configmaps", true).unwrap();
        assert_eq!(r.verb, "watch");
        assert!(parse(&Method::GET, "/healthz", false).is_none());
    }
}
