//! /healthz, /livez and /readyz as kube-apiserver answers them: `ok` (200) when every check
//! passes, otherwise 500 with the failing checks; `?verbose` lists each check
//! (`[+]ping ok`), `?exclude=<check>` leaves one out, and `/readyz/<check>` asks for one.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::handlers::ApiState;
use crate::store::types::RangeRequest;

/// Set once the system namespaces and the `kubernetes` Service exist.
#[derive(Clone, Default)]
pub struct Bootstrapped(pub Arc<AtomicBool>);

impl Bootstrapped {
    pub fn done(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Which endpoint: liveness checks are a subset of readiness checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Health,
    Live,
    Ready,
}

async fn datastore_ok(state: &ApiState) -> bool {
    let probe = state.registry.ds.range(RangeRequest {
        key: b"/registry/health".to_vec(),
        serializable: true,
        ..Default::default()
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(_))
    )
}

async fn checks(state: &ApiState, endpoint: Endpoint) -> Vec<(String, bool)> {
    let mut out = vec![("ping".to_string(), true), ("log".to_string(), true)];
    if endpoint != Endpoint::Live {
        out.push(("etcd".into(), datastore_ok(state).await));
    }
    out.push((
        "poststarthook/bootstrap-controller".into(),
        state.bootstrapped.done(),
    ));
    if endpoint != Endpoint::Live {
        // The controllers and the scheduler, each leading, standing by or failing.
        for (name, r) in state.loops.checks() {
            if let Err(reason) = &r {
                tracing::warn!(check = %name, %reason, "loop failing");
            }
            out.push((name, r.is_ok()));
        }
    }
    if endpoint == Endpoint::Ready {
        out.push(("shutdown".into(), !state.shutdown.is_cancelled()));
    }
    out
}

async fn answer(
    state: &ApiState,
    endpoint: Endpoint,
    only: Option<&str>,
    query: &HashMap<String, String>,
) -> Response {
    let name = match endpoint {
        Endpoint::Health => "healthz",
        Endpoint::Live => "livez",
        Endpoint::Ready => "readyz",
    };
    let mut results = checks(state, endpoint).await;
    let excluded: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k.as_str() == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    results.retain(|(c, _)| !excluded.contains(&c.as_str()));
    if let Some(one) = only {
        results.retain(|(c, _)| c == one);
        if results.is_empty() {
            return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
        }
    }
    let all_ok = results.iter().all(|(_, ok)| *ok);
    let verbose = query.contains_key("verbose") || !all_ok;
    let code = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    if !verbose {
        return (code, "ok").into_response();
    }
    let mut body = String::new();
    for (c, ok) in &results {
        if *ok {
            body.push_str(&format!("[+]{c} ok\n"));
        } else {
            body.push_str(&format!("[-]{c} failed: reason withheld\n"));
        }
    }
    if all_ok {
        body.push_str(&format!("{name} check passed\n"));
    } else {
        body.push_str(&format!("{name} check failed\n"));
    }
    (code, body).into_response()
}

pub async fn healthz(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(&s, Endpoint::Health, None, &q).await
}

pub async fn livez(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(&s, Endpoint::Live, None, &q).await
}

pub async fn readyz(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(&s, Endpoint::Ready, None, &q).await
}

pub async fn readyz_one(
    State(s): State<ApiState>,
    Path(check): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(&s, Endpoint::Ready, Some(&check), &q).await
}

pub async fn livez_one(
    State(s): State<ApiState>,
    Path(check): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    answer(&s, Endpoint::Live, Some(&check), &q).await
}
