//! Authorization: RBAC from the rbac.authorization.k8s.io objects, as kube-apiserver's RBAC
//! authorizer decides (system:masters always passes). The Roles, ClusterRoles and their
//! bindings are kept in memory (`PolicyCache`: listed once, then followed through a store
//! watch), so a decision never reads the store.
pub mod bootstrap;
mod controller_roles;
pub mod node;
pub mod review;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::rules::{rule_allows, subject_is, Attributes};
use super::auth::User;
use super::follow;
use super::registry::Registry;
use super::resources;
use super::status::ApiError;

const KINDS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

/// The RBAC objects by kind, each by store key.
#[derive(Default)]
struct Policy {
    objects: HashMap<&'static str, BTreeMap<Vec<u8>, Value>>,
}

/// The RBAC objects in memory, and whether all four kinds have been loaded once.
#[derive(Clone)]
pub struct PolicyCache {
    policy: Arc<RwLock<Policy>>,
    loaded: watch::Receiver<usize>,
    loaded_tx: Arc<watch::Sender<usize>>,
    nodes: node::NodeGraph,
}

impl Default for PolicyCache {
    fn default() -> Self {
        let (tx, rx) = watch::channel(0);
        PolicyCache {
            policy: Arc::default(),
            loaded: rx,
            loaded_tx: Arc::new(tx),
            nodes: node::NodeGraph::default(),
        }
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl PolicyCache {
    /// Follows the four kinds in the store until `shutdown`.
    pub async fn run(self, registry: Registry, shutdown: CancellationToken) {
        let tasks = KINDS.map(|kind| {
            let cache = self.clone();
            let registry = registry.clone();
            let shutdown = shutdown.clone();
            async move { cache.follow(kind, registry, shutdown).await }
        });
        let nodes = self.nodes.clone().run(registry, shutdown);
        tokio::join!(futures::future::join_all(tasks), nodes);
    }

    async fn follow(&self, kind: &'static str, registry: Registry, shutdown: CancellationToken) {
        let Some(r) = resources::find("rbac.authorization.k8s.io", "v1", kind) else {
            return;
        };
        let mut first = true;
        follow::follow(r, registry, shutdown, |change| {
            let Ok(mut p) = self.policy.write() else {
                return;
            };
            let map = p.objects.entry(kind).or_default();
            change.apply_to(map);
            drop(p);
            if std::mem::take(&mut first) {
                self.loaded_tx.send_modify(|n| *n += 1);
            }
        })
        .await;
    }

    /// Waits (at most `limit`) until every kind has been loaded once.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let mut rx = self.loaded.clone();
        tokio::time::timeout(limit, rx.wait_for(|n| *n >= KINDS.len()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The rules of the role a binding refers to.
    fn role_rules(p: &Policy, binding: &Value) -> Vec<Value> {
        let name = str_at(binding, "/roleRef/name");
        let ns = str_at(binding, "/metadata/namespace");
        let (kind, want_ns) = match str_at(binding, "/roleRef/kind") {
            "ClusterRole" => ("clusterroles", ""),
            "Role" => ("roles", ns),
            _ => return Vec::new(),
        };
        p.objects
            .get(kind)
            .into_iter()
            .flat_map(|m| m.values())
            .find(|r| {
                str_at(r, "/metadata/name") == name && str_at(r, "/metadata/namespace") == want_ns
            })
            .and_then(|r| r.get("rules").and_then(Value::as_array).cloned())
            .unwrap_or_default()
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide rules included).
    pub fn rules_for(&self, user: &User, namespace: Option<&str>) -> Vec<Value> {
        let Ok(p) = self.policy.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let bindings = |kind: &str| -> Vec<&Value> {
            p.objects
                .get(kind)
                .into_iter()
                .flat_map(|m| m.values())
                .collect()
        };
        for b in bindings("clusterrolebindings") {
            let subjects = b.get("subjects").and_then(Value::as_array);
            if subjects
                .into_iter()
                .flatten()
                .any(|s| subject_is(s, user, None))
            {
                out.extend(Self::role_rules(&p, b));
            }
        }
        if let Some(ns) = namespace {
            for b in bindings("rolebindings") {
                if str_at(b, "/metadata/namespace") != ns {
                    continue;
                }
                let subjects = b.get("subjects").and_then(Value::as_array);
                if subjects
                    .into_iter()
                    .flatten()
                    .any(|s| subject_is(s, user, Some(ns)))
                {
                    out.extend(Self::role_rules(&p, b));
                }
            }
        }
        out
    }

    /// Ok when `user` may do what `attrs` describe, else kube's Forbidden Status. Waits (at
    /// most 10 s) for the policy to be loaded after a start.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<(), ApiError> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(());
        }
        self.wait_loaded(Duration::from_secs(10)).await;
        let allowed = match self.nodes.authorize(user, attrs).await {
            Some(verdict) => verdict,
            None => self.allows(user, attrs),
        };
        if allowed {
            return Ok(());
        }
        let message = rules::forbidden_message(user, attrs);
        tracing::debug!(user = %user.name, %message, "forbidden");
        Err(match attrs {
            Attributes::Resource {
                group,
                resource,
                name,
                ..
            } => ApiError::forbidden_on(group, resource, name.as_deref().unwrap_or(""), message),
            Attributes::NonResource { .. } => ApiError::forbidden(message),
        })
    }

    /// Whether `user` may do what `attrs` describe.
    pub fn allows(&self, user: &User, attrs: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        let ns = match attrs {
            Attributes::Resource { namespace, .. } => namespace.as_deref(),
            Attributes::NonResource { .. } => None,
        };
        self.rules_for(user, ns)
            .iter()
            .any(|rule| rule_allows(rule, attrs))
    }
}
