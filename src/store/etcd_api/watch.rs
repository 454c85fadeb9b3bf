//! etcd's Watch service: many watchers multiplexed on one bidirectional stream, with
//! creation, cancellation, progress requests and periodic progress notifications.
use std::collections::HashMap;
use std::time::Duration;

use etcd_client::proto::*;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert::*;
use crate::store::watch::{WatchMessage, WatchSpec};
use crate::store::Store;

/// etcd's default `--experimental-watch-progress-notify-interval`.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

pub struct WatchService {
    pub store: Store,
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(
        &self,
        req: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        let stream_cancel = self.shutdown.child_token();
        tokio::spawn(async move {
            let mut watchers: HashMap<i64, CancellationToken> = HashMap::new();
            let mut next_id: i64 = 0;
            loop {
                let msg = tokio::select! {
                    _ = stream_cancel.cancelled() => break,
                    m = requests.next() => m,
                };
                let Some(Ok(msg)) = msg else { break };
                match msg.request_union {
                    Some(PbWatchRequestUnion::CreateRequest(c)) => {
                        let id = if c.watch_id != 0 {
                            c.watch_id
                        } else {
                            while watchers.contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        if watchers.contains_key(&id) {
                            let _ = tx
                                .send(Ok(PbWatchResponse {
                                    header: header(store.header()),
                                    watch_id: id,
                                    created: true,
                                    canceled: true,
                                    cancel_reason:
                                        "etcdserver: duplicate watch ID provided on the \
                                                    same stream"
                                            .into(),
                                    ..Default::default()
                                }))
                                .await;
                            continue;
                        }
                        let spec = WatchSpec {
                            key: c.key,
                            range_end: c.range_end,
                            start_revision: c.start_revision,
                            prev_kv: c.prev_kv,
                            no_put: c.filters.contains(&0),
                            no_delete: c.filters.contains(&1),
                        };
                        let cancel = stream_cancel.child_token();
                        watchers.insert(id, cancel.clone());
                        if tx
                            .send(Ok(PbWatchResponse {
                                header: header(store.header()),
                                watch_id: id,
                                created: true,
                                ..Default::default()
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        let events = store.watch(spec, cancel.clone());
                        tokio::spawn(forward(
                            store.clone(),
                            id,
                            events,
                            tx.clone(),
                            cancel,
                            c.progress_notify,
                        ));
                    }
                    Some(PbWatchRequestUnion::CancelRequest(c)) => {
                        if let Some(cancel) = watchers.remove(&c.watch_id) {
                            cancel.cancel();
                            let _ = tx
                                .send(Ok(PbWatchResponse {
                                    header: header(store.header()),
                                    watch_id: c.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                }))
                                .await;
                        }
                    }
                    Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                        // etcd answers with one notification for the whole stream, id -1.
                        let _ = tx
                            .send(Ok(PbWatchResponse {
                                header: header(store.header()),
                                watch_id: -1,
                                ..Default::default()
                            }))
                            .await;
                    }
                    None => {}
                }
            }
            stream_cancel.cancel();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn forward(
    store: Store,
    id: i64,
    mut events: mpsc::Receiver<WatchMessage>,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    cancel: CancellationToken,
    progress_notify: bool,
) {
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = progress.tick(), if progress_notify => {
                let resp = PbWatchResponse {
                    header: header(store.header()),
                    watch_id: id,
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                continue;
            }
            m = events.recv() => m,
        };
        let resp = match msg {
            Some(WatchMessage::Events { revision, events }) => PbWatchResponse {
                header: header(crate::store::types::Header {
                    revision,
                    ..store.header()
                }),
                watch_id: id,
                events: events.into_iter().map(event_out).collect(),
                ..Default::default()
            },
            Some(WatchMessage::Compacted { compact_revision }) => PbWatchResponse {
                header: header(store.header()),
                watch_id: id,
                canceled: true,
                compact_revision,
                cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                ..Default::default()
            },
            Some(WatchMessage::Failed(reason)) => PbWatchResponse {
                header: header(store.header()),
                watch_id: id,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            },
            None => return,
        };
        let last = resp.canceled;
        if tx.send(Ok(resp)).await.is_err() || last {
            return;
        }
    }
}
