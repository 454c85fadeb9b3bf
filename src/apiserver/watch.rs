//! WATCH: a stream of `{"type": ..., "object": ...}` lines, starting after the requested
//! resourceVersion (or with the current state as ADDED events when none is given), with
//! BOOKMARK events when asked for (`allowWatchBookmarks`; and the `initial-events-end`
//! bookmark of `sendInitialEvents`), ending with an ERROR event carrying a 410 Status when
//! that history is compacted.
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::objects;
use super::registry::{ListOptions, Registry};
use super::representation::Representation;
use super::resources::Resource;
use super::selector::Filter;
use super::status::ApiError;
use crate::store::types::{EventKind, Revision};
use crate::store::watch::WatchMessage;

/// One event line, the object in the representation the client asked for.
fn event(r: &Resource, rep: Representation, kind: &str, obj: Value) -> Bytes {
    line(kind, rep.object(r, obj))
}

/// How often a watch that allows bookmarks gets one (kube: about a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// A BOOKMARK: only the kind and the resourceVersion the client may resume from.
fn bookmark(r: &Resource, rep: Representation, revision: Revision, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let (kind, api_version) = match rep {
        Representation::Object => (r.kind.to_string(), r.api_version()),
        _ => (
            "PartialObjectMetadata".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
    };
    line(
        "BOOKMARK",
        json!({"kind": kind, "apiVersion": api_version, "metadata": meta}),
    )
}

fn line(kind: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// What a watch request asks for.
pub struct WatchRequest {
    pub resource: std::borrow::Cow<'static, Resource>,
    pub namespace: Option<String>,
    pub resource_version: Option<String>,
    pub filter: Filter,
    pub representation: Representation,
    pub timeout: Duration,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents` (with resourceVersionMatch=NotOlderThan).
    pub send_initial_events: bool,
}

pub async fn serve(
    registry: Registry,
    req: WatchRequest,
    shutdown: CancellationToken,
) -> Result<Response, ApiError> {
    let WatchRequest {
        resource: r,
        namespace: ns,
        resource_version,
        filter,
        representation: rep,
        timeout,
        bookmarks,
        send_initial_events,
    } = req;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    // Where to start: after the given revision, or (none / "0") from the current state.
    let start: Option<Revision> = match resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let mut initial = Vec::new();
    let from = match start {
        Some(rv) => rv + 1,
        None => {
            let page = registry
                .list(&r, ns.as_deref(), &ListOptions::all())
                .await?;
            initial = page.items;
            page.revision + 1
        }
    };
    let prefix = r.prefix(ns.as_deref());
    let cancel = shutdown.child_token();
    let mut events = registry.watch_events(prefix, from, cancel.clone());
    tokio::spawn(async move {
        let _guard = cancel.clone().drop_guard();
        for obj in initial {
            if filter.matches(&obj) && tx.send(Ok(event(&r, rep, "ADDED", obj))).await.is_err() {
                return;
            }
        }
        // Everything up to here has been sent: a client may resume from it.
        let mut delivered = from - 1;
        if send_initial_events
            && tx
                .send(Ok(bookmark(&r, rep, delivered, true)))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            let msg = tokio::select! {
                _ = &mut deadline => return,
                _ = cancel.cancelled() => return,
                _ = ticks.tick(), if bookmarks => {
                    if tx.send(Ok(bookmark(&r, rep, delivered, false))).await.is_err() {
                        return;
                    }
                    continue;
                }
                m = events.recv() => m,
            };
            match msg {
                Some(WatchMessage::Events { events, .. }) => {
                    for e in events {
                        delivered = delivered.max(e.kv.mod_revision);
                        let decode = |kv: &crate::store::types::KeyValue| {
                            let mut obj = serde_json::from_slice::<Value>(&kv.value).ok()?;
                            super::registry::served_at(&r, &mut obj);
                            Some(obj)
                        };
                        let prev = e.prev_kv.as_ref().and_then(decode);
                        let prev_matched = prev.as_ref().is_some_and(|p| filter.matches(p));
                        let (kind, obj) = match e.kind {
                            EventKind::Put => {
                                let Some(obj) = decode(&e.kv) else { continue };
                                // Selectors see transitions: an object that starts matching is
                                // ADDED, one that stops matching is DELETED, as in kube.
                                match (prev_matched, filter.matches(&obj)) {
                                    (false, true) => ("ADDED", obj),
                                    (true, true) => ("MODIFIED", obj),
                                    (true, false) => ("DELETED", obj),
                                    (false, false) => continue,
                                }
                            }
                            EventKind::Delete => match prev {
                                Some(p) if prev_matched => ("DELETED", p),
                                _ => continue,
                            },
                        };
                        // A deleted object carries the deletion's revision.
                        let obj = objects::with_resource_version(obj, e.kv.mod_revision);
                        if tx.send(Ok(event(&r, rep, kind, obj))).await.is_err() {
                            return;
                        }
                    }
                }
                Some(WatchMessage::Compacted { .. }) => {
                    let status = ApiError::gone(format!(
                        "too old resource version: {} ({})",
                        from - 1,
                        from
                    ))
                    .status_body();
                    let _ = tx.send(Ok(line("ERROR", status))).await;
                    return;
                }
                Some(WatchMessage::Failed(reason)) => {
                    let status =
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", reason)
                            .status_body();
                    let _ = tx.send(Ok(line("ERROR", status))).await;
                    return;
                }
                None => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
