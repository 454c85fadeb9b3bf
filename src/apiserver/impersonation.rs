//! Impersonation, as kube-apiserver does it: `Impersonate-User`, `Impersonate-Group`,
//! `Impersonate-Uid` and `Impersonate-Extra-<key>` headers make the request run as someone
//! else, once the real caller is allowed the `impersonate` verb on each (`users`, `groups`,
//! `serviceaccounts` in the core group; `uids`, `userextras/<key>` in authentication.k8s.io).
//! The impersonated user is authenticated (`system:authenticated`), a service account also
//! in `system:serviceaccounts` and its namespace's group.
use axum::http::HeaderMap;

use super::auth::User;
use super::rbac::rules::Attributes;
use super::rbac::PolicyCache;
use super::status::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn impersonate(group: &str, resource: &str, namespace: Option<&str>, name: &str) -> Attributes {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    Attributes::Resource {
        verb: "impersonate".into(),
        group: group.into(),
        resource,
        subresource,
        namespace: namespace.map(str::to_string),
        name: Some(name.to_string()),
    }
}

/// The user a request runs as: `caller`, or whom it impersonates if it may.
pub async fn effective_user(
    policy: &PolicyCache,
    caller: User,
    headers: &HeaderMap,
) -> Result<User, ApiError> {
    let user = values(headers, USER);
    let groups = values(headers, GROUP);
    let uids = values(headers, UID);
    let extras: Vec<(String, &str)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix(EXTRA)?;
            Some((key.to_string(), v.to_str().ok()?))
        })
        .collect();
    if user.is_empty() && groups.is_empty() && uids.is_empty() && extras.is_empty() {
        return Ok(caller);
    }
    let Some(name) = user.first().copied().filter(|n| !n.is_empty()) else {
        return Err(ApiError::bad_request(format!(
            "requested impersonation of groups {groups:?} without impersonating a user"
        )));
    };
    let mut checks = Vec::new();
    let service_account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    match service_account {
        Some((ns, sa)) => checks.push(impersonate("", "serviceaccounts", Some(ns), sa)),
        None => checks.push(impersonate("", "users", None, name)),
    }
    for g in &groups {
        checks.push(impersonate("", "groups", None, g));
    }
    for u in &uids {
        checks.push(impersonate("authentication.k8s.io", "uids", None, u));
    }
    for (key, value) in &extras {
        checks.push(impersonate(
            "authentication.k8s.io",
            &format!("userextras/{key}"),
            None,
            value,
        ));
    }
    for attrs in &checks {
        policy.authorize(&caller, attrs).await?;
    }
    let mut as_groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    if let Some((ns, _)) = service_account {
        as_groups.push("system:serviceaccounts".into());
        as_groups.push(format!("system:serviceaccounts:{ns}"));
    }
    let implied = if name == "system:anonymous" {
        "system:unauthenticated"
    } else {
        "system:authenticated"
    };
    if !as_groups.iter().any(|g| g == implied) {
        as_groups.push(implied.into());
    }
    tracing::debug!(caller = %caller.name, user = name, "impersonating");
    Ok(User {
        name: name.to_string(),
        groups: as_groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_headers_the_caller_is_the_user_and_groups_need_a_user() {
        let policy = PolicyCache::default();
        let caller = User {
            name: "alice".into(),
            groups: vec!["system:masters".into()],
        };
        let none = HeaderMap::new();
        assert_eq!(
            effective_user(&policy, caller.clone(), &none).await.ok(),
            Some(caller.clone())
        );
        let mut h = HeaderMap::new();
        h.append(GROUP, "devs".parse().expect("a header"));
        let err = effective_user(&policy, caller.clone(), &h).await.err();
        assert_eq!(err.map(|e| e.code.as_u16()), Some(400));
        h.append(
            USER,
            "system:serviceaccount:ci:deployer"
                .parse()
                .expect("a header"),
        );
        let as_user = effective_user(&policy, caller, &h).await.ok();
        assert_eq!(
            as_user.map(|u| (u.name, u.groups)),
            Some((
                "system:serviceaccount:ci:deployer".into(),
                vec![
                    "devs".into(),
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:ci".into(),
                    "system:authenticated".into()
                ]
            ))
        );
    }
}
