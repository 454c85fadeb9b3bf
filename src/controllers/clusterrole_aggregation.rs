//! ClusterRole aggregation (kube's clusterrole-aggregation controller): a ClusterRole with an
//! `aggregationRule` holds the rules of every other ClusterRole its selectors match, in name
//! order, each rule once. Any ClusterRole change re-aggregates every aggregated role, so
//! chains (view into edit into admin) settle.
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};
use crate::resources::placement::label_selector_matches;

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let api = Api::<ClusterRole>::all(ctx.client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default());
    let roles = controller.store();
    controller
        .watches(api, watcher::Config::default(), move |_: ClusterRole| {
            aggregated(&roles)
        })
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn aggregated(roles: &Store<ClusterRole>) -> Vec<ObjectRef<ClusterRole>> {
    roles
        .state()
        .into_iter()
        .filter(|r| r.aggregation_rule.is_some())
        .map(|r| ObjectRef::from_obj(&*r))
        .collect()
}

fn error_policy(role: Arc<ClusterRole>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(role = %role.name_any(), error = %e, "aggregation failed");
    Action::requeue(retry_after(e))
}

/// The rules `role` aggregates from `all`: those of the roles its selectors match, by name.
pub fn rules_for(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Vec<PolicyRule> {
    let Some(rule) = role.aggregation_rule.as_ref() else {
        return Vec::new();
    };
    let selectors = rule.cluster_role_selectors.clone().unwrap_or_default();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.name_any() != role.name_any())
        .filter(|r| {
            let labels = r.labels();
            selectors.iter().any(|s| label_selector_matches(s, labels))
        })
        .collect();
    sources.sort_by_key(|r| r.name_any());
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in sources.iter().flat_map(|r| r.rules.iter().flatten()) {
        if !rules.contains(r) {
            rules.push(r.clone());
        }
    }
    rules
}

#[tracing::instrument(name = "aggregate", level = "debug", skip_all, fields(kind = "ClusterRole", name = %role.name_any()))]
async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Context>) -> Result<Action, Error> {
    if role.aggregation_rule.is_none() {
        return Ok(Action::await_change());
    }
    // A fresh list, not the reflector: the change that triggered this may not have reached
    // the store yet (a chain like view → edit → admin would stop a link short).
    let all: Vec<Arc<ClusterRole>> = Api::<ClusterRole>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let Some(role) = all
        .iter()
        .find(|r| r.name_any() == role.name_any())
        .cloned()
    else {
        return Ok(Action::await_change());
    };
    let rules = rules_for(&role, &all);
    if role.rules.clone().unwrap_or_default() == rules {
        return Ok(Action::await_change());
    }
    let mut updated = (*role).clone();
    updated.rules = Some(rules);
    Api::<ClusterRole>::all(ctx.client.clone())
        .replace(&role.name_any(), &PostParams::default(), &updated)
        .await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(v: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(serde_json::from_value(v).expect("a role"))
    }

    #[test]
    fn an_aggregated_role_takes_the_matching_roles_rules_once_in_name_order() {
        let view = role(serde_json::json!({"metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}}));
        let b = role(
            serde_json::json!({"metadata": {"name": "b", "labels": {"agg": "view"}},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
        );
        let a = role(
            serde_json::json!({"metadata": {"name": "a", "labels": {"agg": "view"}},
            "rules": [{"apiGroups": ["x"], "resources": ["y"], "verbs": ["list"]},
                      {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
        );
        let other = role(serde_json::json!({"metadata": {"name": "c"},
            "rules": [{"apiGroups": ["z"], "resources": ["z"], "verbs": ["*"]}]}));
        let rules = rules_for(&view, &[view.clone(), b, a, other]);
        let groups: Vec<_> = rules
            .iter()
            .map(|r| r.api_groups.clone().unwrap_or_default())
            .collect();
        assert_eq!(groups, [vec!["x".to_string()], vec!["".to_string()]]);
    }
}
