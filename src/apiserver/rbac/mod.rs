//! Authorization: RBAC from the rbac.authorization.k8s.io objects, as kube-apiserver's RBAC
//! authorizer decides (system:masters always passes). The Roles, ClusterRoles and their
//! bindings are kept in memory (`PolicyCache`: listed once, then followed through a store
//! watch), so a decision never reads the store.
pub mod bootstrap;
pub mod review;
pub mod rules;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::rules::{rule_allows, subject_is, Attributes};
use super::auth::User;
use super::registry::{ListOptions, Registry};
use super::resources::{self, Resource};
use super::status::ApiError;
use crate::store::types::EventKind;
use crate::store::watch::WatchMessage;

const KINDS: [&str; 4] = [
    "roles",
    "clusterroles",
    "rolebindings",
    "clusterrolebindings",
];

/// The RBAC objects by kind, each by store key.
#[derive(Default)]
struct Policy {
    objects: HashMap<&'static str, HashMap<Vec<u8>, Value>>,
}

/// The RBAC objects in memory, and whether all four kinds have been loaded once.
#[derive(Clone)]
pub struct PolicyCache {
    policy: Arc<RwLock<Policy>>,
    loaded: watch::Receiver<usize>,
    loaded_tx: Arc<watch::Sender<usize>>,
}

impl Default for PolicyCache {
    fn default() -> Self {
        let (tx, rx) = watch::channel(0);
        PolicyCache {
            policy: Arc::default(),
            loaded: rx,
            loaded_tx: Arc::new(tx),
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
        futures::future::join_all(tasks).await;
    }

    async fn follow(&self, kind: &'static str, registry: Registry, shutdown: CancellationToken) {
        let Some(r) = resources::find("rbac.authorization.k8s.io", "v1", kind) else {
            return;
        };
        let mut first = true;
        while !shutdown.is_cancelled() {
            match self
                .load_and_watch(r, kind, &registry, &shutdown, &mut first)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(kind, error = %e, "RBAC cache relisting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Lists `kind`, then applies the store's events to it; Err when the watch ends.
    async fn load_and_watch(
        &self,
        r: &'static Resource,
        kind: &'static str,
        registry: &Registry,
        shutdown: &CancellationToken,
        first: &mut bool,
    ) -> Result<(), String> {
        let page = registry
            .list(r, None, &ListOptions::all())
            .await
            .map_err(|e| e.to_string())?;
        let mut objects = HashMap::new();
        for obj in page.items {
            let ns = str_at(&obj, "/metadata/namespace");
            let name = str_at(&obj, "/metadata/name");
            let key = r.key((!ns.is_empty()).then_some(ns), name);
            objects.insert(key, obj);
        }
        if let Ok(mut p) = self.policy.write() {
            p.objects.insert(kind, objects);
        }
        if *first {
            *first = false;
            self.loaded_tx.send_modify(|n| *n += 1);
        }
        let prefix = r.prefix(None);
        let cancel = shutdown.child_token();
        let _stop = cancel.clone().drop_guard();
        let mut events = registry.watch_prefix(prefix, page.revision + 1, cancel);
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = events.recv() => m,
            };
            match msg {
                Some(WatchMessage::Events { events, .. }) => {
                    let Ok(mut p) = self.policy.write() else {
                        return Err("poisoned".into());
                    };
                    let map = p.objects.entry(kind).or_default();
                    for e in events {
                        match e.kind {
                            EventKind::Put => {
                                if let Ok(v) = serde_json::from_slice::<Value>(&e.kv.value) {
                                    map.insert(e.kv.key.clone(), v);
                                }
                            }
                            EventKind::Delete => {
                                map.remove(&e.kv.key);
                            }
                        }
                    }
                }
                Some(WatchMessage::Compacted { .. }) => return Err("compacted".into()),
                Some(WatchMessage::Failed(e)) => return Err(e),
                None => return Err("watch ended".into()),
            }
        }
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
        if self.allows(user, attrs) {
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
