//! Watch fan-out: the apply loop publishes each revision's events once; every watcher
//! replays history from the backend up to the present and then follows the live feed,
//! falling back to history when it lags, so no event is lost, duplicated or reordered.
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::Error;
use super::mvcc::index::KeyRange;
use super::mvcc::Mvcc;
use super::types::{Event, EventKind, Revision};

/// The events of one revision, as published by the apply loop.
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: Revision,
    pub events: Vec<Event>,
}

#[derive(Clone)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<RevisionEvents>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        WatchHub { tx }
    }

    /// Publishes events (grouped by revision, in order). Called only by the apply loop.
    pub fn publish(&self, events: Vec<Event>) {
        if self.tx.receiver_count() == 0 || events.is_empty() {
            return;
        }
        let mut group: Vec<Event> = Vec::new();
        for e in events {
            if let Some(first) = group.first() {
                if first.kv.mod_revision != e.kv.mod_revision {
                    let revision = first.kv.mod_revision;
                    let _ = self.tx.send(Arc::new(RevisionEvents {
                        revision,
                        events: std::mem::take(&mut group),
                    }));
                }
            }
            group.push(e);
        }
        if let Some(first) = group.first() {
            let revision = first.kv.mod_revision;
            let _ = self.tx.send(Arc::new(RevisionEvents {
                revision,
                events: group,
            }));
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.tx.subscribe()
    }
}

/// What a watcher wants, as etcd's WatchCreateRequest.
#[derive(Clone, Debug, Default)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// 0 = from the next revision.
    pub start_revision: Revision,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// What a watcher delivers.
#[derive(Debug)]
pub enum WatchMessage {
    Events {
        revision: Revision,
        events: Vec<Event>,
    },
    /// The requested start is below the compaction point; the watch ends.
    Compacted { compact_revision: Revision },
    /// The watcher could not go on (the store stopped or failed).
    Failed(String),
}

const HISTORY_BATCH: usize = 1000;

/// Runs one watcher until `cancel` fires or the receiver goes away.
pub async fn run_watcher(
    hub: WatchHub,
    mvcc: Arc<Mvcc>,
    spec: WatchSpec,
    out: mpsc::Sender<WatchMessage>,
    cancel: CancellationToken,
) {
    // Subscribe before reading the current revision so nothing falls between the two.
    let mut live = hub.subscribe();
    let current = mvcc.current_revision();
    let mut next = if spec.start_revision > 0 {
        spec.start_revision
    } else {
        current + 1
    };
    let filter = |e: &Event| -> Option<Event> {
        let range = KeyRange::new(&spec.key, &spec.range_end);
        if !range.contains(&e.kv.key) {
            return None;
        }
        match e.kind {
            EventKind::Put if spec.no_put => return None,
            EventKind::Delete if spec.no_delete => return None,
            _ => {}
        }
        let mut e = e.clone();
        if !spec.prev_kv {
            e.prev_kv = None;
        }
        Some(e)
    };

    // Catch up from history, then follow the live feed; go back to history after lagging.
    let mut catch_up_to = Some(current);
    loop {
        if let Some(to) = catch_up_to.take() {
            while next <= to {
                let mvcc = mvcc.clone();
                let from = next;
                let batch =
                    tokio::task::spawn_blocking(move || mvcc.history(from, to, HISTORY_BATCH))
                        .await
                        .unwrap_or_else(|e| Err(Error::Io(e.to_string())));
                let events = match batch {
                    Ok(ev) => ev,
                    Err(Error::Compacted { compact_revision }) => {
                        let _ = out.send(WatchMessage::Compacted { compact_revision }).await;
                        return;
                    }
                    Err(e) => {
                        let _ = out.send(WatchMessage::Failed(e.to_string())).await;
                        return;
                    }
                };
                let Some(last) = events.last().map(|e| e.kv.mod_revision) else {
                    next = to + 1;
                    break;
                };
                let matched: Vec<Event> = events.iter().filter_map(&filter).collect();
                if !matched.is_empty()
                    && out
                        .send(WatchMessage::Events {
                            revision: last,
                            events: matched,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
                next = last + 1;
            }
        }
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = out.closed() => return,
            m = live.recv() => m,
        };
        match msg {
            Ok(rev) => {
                if rev.revision < next {
                    continue;
                }
                if rev.revision > next {
                    // A gap (revisions whose events were all filtered out before publishing
                    // cannot exist, so this is a lag we did not see): fill it from history.
                    catch_up_to = Some(rev.revision);
                    continue;
                }
                let matched: Vec<Event> = rev.events.iter().filter_map(&filter).collect();
                next = rev.revision + 1;
                if !matched.is_empty()
                    && out
                        .send(WatchMessage::Events {
                            revision: rev.revision,
                            events: matched,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                catch_up_to = Some(mvcc.current_revision());
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = out
                    .send(WatchMessage::Failed("the store stopped".into()))
                    .await;
                return;
            }
        }
    }
}
