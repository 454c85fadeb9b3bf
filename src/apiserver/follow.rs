//! An in-memory view of one resource kept by the store: listed once, then every change
//! applied from a store watch (listed again when the watch ends or history was compacted).
//! What the authorizers decide from, so that a decision never reads the store.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::apiserver::registry::{ListOptions, Registry};
use crate::apiserver::resources::Resource;
use crate::store::types::EventKind;
use crate::store::watch::WatchMessage;

/// One change to the view.
pub enum Change {
    /// Everything, as listed (replaces what was there).
    Reset(Vec<(Vec<u8>, Value)>),
    Put(Vec<u8>, Value),
    Delete(Vec<u8>),
}

impl Change {
    /// Applies the change to a view kept by store key.
    pub fn apply_to(self, view: &mut BTreeMap<Vec<u8>, Value>) {
        match self {
            Change::Reset(items) => *view = items.into_iter().collect(),
            Change::Put(key, obj) => {
                view.insert(key, obj);
            }
            Change::Delete(key) => {
                view.remove(&key);
            }
        }
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Feeds `apply` with `r`'s objects until `shutdown`.
pub async fn follow(
    r: &'static Resource,
    registry: Registry,
    shutdown: CancellationToken,
    mut apply: impl FnMut(Change) + Send,
) {
    while !shutdown.is_cancelled() {
        match once(r, &registry, &shutdown, &mut apply).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(resource = r.plural, error = %e, "in-memory view relisting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

async fn once(
    r: &'static Resource,
    registry: &Registry,
    shutdown: &CancellationToken,
    apply: &mut (impl FnMut(Change) + Send),
) -> Result<(), String> {
    let page = registry
        .list(r, None, &ListOptions::all())
        .await
        .map_err(|e| e.to_string())?;
    let items = page
        .items
        .into_iter()
        .map(|obj| {
            let ns = str_at(&obj, "/metadata/namespace");
            let key = r.key(
                (!ns.is_empty()).then_some(ns),
                str_at(&obj, "/metadata/name"),
            );
            (key, obj)
        })
        .collect();
    apply(Change::Reset(items));
    let cancel = shutdown.child_token();
    let _stop = cancel.clone().drop_guard();
    let mut events = registry.watch_prefix(r.prefix(None), page.revision + 1, cancel);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = events.recv() => m,
        };
        match msg {
            Some(WatchMessage::Events { events, .. }) => {
                for e in events {
                    match e.kind {
                        EventKind::Put => {
                            if let Ok(v) = serde_json::from_slice::<Value>(&e.kv.value) {
                                apply(Change::Put(e.kv.key, v));
                            }
                        }
                        EventKind::Delete => apply(Change::Delete(e.kv.key)),
                    }
                }
            }
            Some(WatchMessage::Compacted { .. }) => return Err("compacted".into()),
            Some(WatchMessage::Failed(e)) => return Err(e),
            None => return Err("watch ended".into()),
        }
    }
}
