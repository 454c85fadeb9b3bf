//! The watch cache: the whole keyspace mirrored in memory from one store watch, with the
//! recent events, so LISTs and WATCHes are answered without reading the store (what
//! kube-apiserver's cacher does per resource). A LIST of the current state first learns the
//! store's revision and waits (briefly) until the cache has applied it, so it is as
//! consistent as reading the store; a WATCH from a revision the cache still holds replays
//! from memory. Until the cache is ready, or for a revision older than its history, callers
//! fall back to the store.
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::datastore::Datastore;
use crate::store::types::{prefix_end, Event, EventKind, KeyValue, RangeRequest, Revision};
use crate::store::watch::{WatchMessage, WatchSpec};

/// How many recent events the cache keeps for watches that resume from a revision.
const HISTORY: usize = 4096;
/// How many batches a watch may fall behind before it is ended (its client lists again).
const WATCH_BACKLOG: usize = 256;
/// How long a LIST waits for the cache to reach the store's revision before reading the
/// store itself.
const CATCH_UP: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct WatchCache {
    state: Arc<RwLock<State>>,
    /// The revision the cache has applied (0 while it is not ready).
    applied: watch::Sender<Revision>,
    /// The live watches, each sent only the events under its prefix.
    watchers: Arc<std::sync::Mutex<Vec<Watcher>>>,
}

struct Watcher {
    prefix: Vec<u8>,
    end: Vec<u8>,
    tx: mpsc::Sender<Vec<Event>>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Vec<u8>, Arc<KeyValue>>,
    history: VecDeque<Event>,
    /// Events after this revision are all in `history`.
    oldest: Revision,
    revision: Revision,
    ready: bool,
}

impl Default for WatchCache {
    fn default() -> Self {
        WatchCache {
            state: Arc::default(),
            applied: watch::channel(0).0,
            watchers: Arc::default(),
        }
    }
}

/// Whether `key` is below a range end (`[0]`: no end, as etcd's).
fn below(key: &[u8], end: &[u8]) -> bool {
    end == [0] || key < end
}

/// Where a watch's events come from: the cache, or the store.
pub enum EventSource {
    Store(mpsc::Receiver<WatchMessage>),
    Cache(CacheWatch),
}

impl EventSource {
    pub async fn recv(&mut self) -> Option<WatchMessage> {
        match self {
            EventSource::Store(rx) => rx.recv().await,
            EventSource::Cache(w) => w.recv().await,
        }
    }
}

/// A watch served from the cache: the replayed history, then the live batches.
pub struct CacheWatch {
    from: Revision,
    replay: Option<Vec<Event>>,
    live: mpsc::Receiver<Vec<Event>>,
}

fn under(key: &[u8], prefix: &[u8], end: &[u8]) -> bool {
    key >= prefix && below(key, end)
}

impl CacheWatch {
    async fn recv(&mut self) -> Option<WatchMessage> {
        if let Some(events) = self.replay.take() {
            if let Some(last) = events.last() {
                return Some(WatchMessage::Events {
                    revision: last.kv.mod_revision,
                    events,
                });
            }
        }
        match self.live.recv().await {
            Some(events) => Some(WatchMessage::Events {
                revision: events
                    .last()
                    .map(|e| e.kv.mod_revision)
                    .unwrap_or(self.from),
                events,
            }),
            // Dropped for falling too far behind, or the cache started over: the client
            // lists again, as kube's watchers do.
            None => Some(WatchMessage::Compacted {
                compact_revision: self.from,
            }),
        }
    }
}

impl WatchCache {
    /// The objects under `prefix` at a revision no older than the store's current one (or
    /// than `at_least`); None when the cache cannot answer (not ready, or not caught up in
    /// time), and the caller reads the store.
    pub async fn list(
        &self,
        ds: &Datastore,
        prefix: &[u8],
        at_least: Revision,
    ) -> Option<(Revision, Vec<Arc<KeyValue>>)> {
        if *self.applied.borrow() == 0 {
            return None;
        }
        // A linearizable read of one (absent) key: the store's current revision.
        let current = ds
            .range(RangeRequest {
                key: vec![0],
                ..Default::default()
            })
            .await
            .ok()?
            .revision;
        let target = current.max(at_least);
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(CATCH_UP, applied.wait_for(|r| *r >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            tracing::debug!(target, "watch cache behind the store; reading the store");
            return None;
        }
        let state = self.state.read().ok()?;
        if !state.ready {
            return None;
        }
        let end = prefix_end(prefix);
        let items = state
            .objects
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| below(k, &end))
            .map(|(_, kv)| kv.clone())
            .collect();
        Some((state.revision, items))
    }

    /// A watch of `prefix` from revision `from`, if the cache holds everything since.
    pub fn watch(&self, prefix: &[u8], from: Revision) -> Option<CacheWatch> {
        let state = self.state.read().ok()?;
        if !state.ready || from <= state.oldest {
            return None;
        }
        let end = prefix_end(prefix);
        let replay: Vec<Event> = state
            .history
            .iter()
            .filter(|e| e.kv.mod_revision >= from && under(&e.kv.key, prefix, &end))
            .cloned()
            .collect();
        // Registered under the state lock: nothing applied after the replay is missed.
        let (tx, live) = mpsc::channel(WATCH_BACKLOG);
        self.watchers.lock().ok()?.push(Watcher {
            prefix: prefix.to_vec(),
            end,
            tx,
        });
        Some(CacheWatch {
            from,
            replay: Some(replay),
            live,
        })
    }

    /// Mirrors the store until `shutdown`, starting over when its watch ends.
    pub async fn run(self, ds: Datastore, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.follow(&ds, &shutdown).await {
                tracing::debug!(error = %e, "watch cache starting over");
                if let Ok(mut s) = self.state.write() {
                    s.ready = false;
                }
                // Watches served so far end; their clients list again.
                if let Ok(mut w) = self.watchers.lock() {
                    w.clear();
                }
                self.applied.send_replace(0);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn follow(&self, ds: &Datastore, shutdown: &CancellationToken) -> Result<(), String> {
        let listed = ds
            .range(RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let revision = listed.revision;
        {
            let mut s = self.state.write().map_err(|e| e.to_string())?;
            s.objects = listed
                .kvs
                .into_iter()
                .map(|kv| (kv.key.clone(), Arc::new(kv)))
                .collect();
            s.history.clear();
            s.oldest = revision;
            s.revision = revision;
            s.ready = true;
        }
        self.applied.send_replace(revision);
        tracing::debug!(revision, "watch cache filled");
        let cancel = shutdown.child_token();
        let _stop = cancel.clone().drop_guard();
        let mut events = ds.watch(
            WatchSpec {
                key: vec![0],
                range_end: vec![0],
                start_revision: revision + 1,
                ..Default::default()
            },
            cancel,
        );
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = events.recv() => m,
            };
            match msg {
                Some(WatchMessage::Events { events, .. }) => self.apply(events)?,
                Some(WatchMessage::Compacted { .. }) => return Err("history compacted".into()),
                Some(WatchMessage::Failed(e)) => return Err(e),
                None => return Err("the store's watch ended".into()),
            }
        }
    }

    /// Applies a batch: the previous values filled in from the mirror, the history trimmed.
    fn apply(&self, mut events: Vec<Event>) -> Result<(), String> {
        let revision = {
            let mut s = self.state.write().map_err(|e| e.to_string())?;
            for e in events.iter_mut() {
                let prev = s.objects.get(&e.kv.key).map(|kv| (**kv).clone());
                match e.kind {
                    EventKind::Put => {
                        s.objects.insert(e.kv.key.clone(), Arc::new(e.kv.clone()));
                    }
                    EventKind::Delete => {
                        s.objects.remove(&e.kv.key);
                    }
                }
                if e.prev_kv.is_none() {
                    e.prev_kv = prev;
                }
                s.revision = s.revision.max(e.kv.mod_revision);
                s.history.push_back(e.clone());
            }
            while s.history.len() > HISTORY {
                if let Some(old) = s.history.pop_front() {
                    s.oldest = s.oldest.max(old.kv.mod_revision);
                }
            }
            // Each watch gets the events under its prefix; one that is gone or too far
            // behind is dropped.
            if let Ok(mut watchers) = self.watchers.lock() {
                watchers.retain(|w| {
                    if w.tx.is_closed() {
                        return false;
                    }
                    let mine: Vec<Event> = events
                        .iter()
                        .filter(|e| under(&e.kv.key, &w.prefix, &w.end))
                        .cloned()
                        .collect();
                    mine.is_empty() || w.tx.try_send(mine).is_ok()
                });
            }
            s.revision
        };
        self.applied.send_replace(revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::PutRequest;

    async fn put(ds: &Datastore, key: &str, value: &str) -> Revision {
        ds.put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .revision
    }

    #[tokio::test]
    async fn lists_see_every_write_before_them_and_watches_replay_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::store::StoreConfig::new(dir.path().to_path_buf());
        cfg.tick = Duration::from_millis(20);
        let store =
            crate::store::Store::open(cfg, Arc::new(crate::store::raft::transport::NoPeers))
                .unwrap();
        let ds = Datastore::Embedded(store.clone());
        put(&ds, "/registry/a/1", "one").await;
        let cache = WatchCache::default();
        assert!(
            cache.list(&ds, b"/registry/a/", 0).await.is_none(),
            "not filled yet"
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cache.clone().run(ds.clone(), shutdown.clone()));
        let (rev, items) = loop {
            if let Some(got) = cache.list(&ds, b"/registry/a/", 0).await {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(items.len(), 1);
        // A write is in the very next list, whatever else was written.
        let written = put(&ds, "/registry/a/2", "two").await;
        put(&ds, "/registry/b/1", "other").await;
        let (rev2, items) = cache.list(&ds, b"/registry/a/", 0).await.unwrap();
        assert!(rev2 >= written);
        assert_eq!(items.len(), 2);
        // A watch from the first list's revision replays the change from memory, with the
        // previous value of an overwritten key, then follows live.
        let mut w = cache.watch(b"/registry/a/", rev + 1).unwrap();
        match w.recv().await {
            Some(WatchMessage::Events { events, .. }) => {
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].kv.key, b"/registry/a/2");
            }
            other => panic!("{other:?}"),
        }
        put(&ds, "/registry/a/1", "uno").await;
        match tokio::time::timeout(Duration::from_secs(5), w.recv()).await {
            Ok(Some(WatchMessage::Events { events, .. })) => {
                assert_eq!(events[0].kv.value, b"uno");
                assert_eq!(
                    events[0].prev_kv.as_ref().map(|kv| kv.value.clone()),
                    Some(b"one".to_vec())
                );
            }
            other => panic!("{other:?}"),
        }
        // Older than the cache: the store answers.
        assert!(cache.watch(b"/registry/a/", 1).is_none());
        shutdown.cancel();
        task.await.unwrap();
        store.shutdown().await.unwrap();
    }
}
