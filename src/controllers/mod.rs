//! The controller manager's loops as tokio tasks: each watches through the Kubernetes API
//! (the `kube` runtime: watcher, controller, work queue with rate-limited retries) with its
//! own client, and writes back only through the API, so validation and admission apply to it
//! as to any client. They run while this server holds the controller lease.
mod cronjob;
mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod garbage_collector;
mod history;
mod job;
mod local_path;
mod namespace;
mod node_ipam;
mod node_lifecycle;
mod pod_gc;
mod replicaset;
mod replication_controller;
mod serviceaccount;
mod servicelb;
mod statefulset;
pub mod template_hash;
mod tokens;
mod ttl_after_finished;
mod volume_binder;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A controller loop's error: an API call that failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("object has no {0}")]
    Missing(&'static str),
}

/// What every reconciler gets.
pub struct Context {
    pub client: kube::Client,
    /// The cluster CA (PEM) published to every namespace as `kube-root-ca.crt`.
    pub root_ca: Option<String>,
    /// `--cluster-cidr`, which node IPAM hands pod CIDRs out of.
    pub cluster_cidr: Option<crate::cidrs::Cidrs>,
    /// Signs legacy service-account token secrets.
    pub service_account_key: Option<crate::tls::service_account::ServiceAccountKey>,
    /// Held while node IPAM allocates, so two nodes never get the same range.
    pub allocating: tokio::sync::Mutex<()>,
    /// Events, each controller speaking as itself (`for_component`).
    pub events: crate::client::events::EventRecorder,
    /// Where local-path volumes live (`<data-dir>/storage`).
    pub storage_dir: Option<std::path::PathBuf>,
    /// This server's own node, when it runs an agent.
    pub local_node: Option<String>,
}

/// What the controllers are told about the cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    pub root_ca: Option<String>,
    pub cluster_cidr: Option<crate::cidrs::Cidrs>,
    /// Signs legacy service-account token secrets.
    pub service_account_key: Option<crate::tls::service_account::ServiceAccountKey>,
    /// Where local-path volumes live (`<data-dir>/storage`).
    pub storage_dir: Option<std::path::PathBuf>,
    /// This server's own node, when it runs an agent.
    pub local_node: Option<String>,
}

/// Which loops to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--disable-controller NAME`.
    pub disabled: Vec<String>,
}

pub const NAMES: &[&str] = &[
    "deployment",
    "replicaset",
    "replicationcontroller",
    "daemonset",
    "statefulset",
    "job",
    "cronjob",
    "ttl-after-finished",
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "nodeipam",
    "nodelifecycle",
    "endpoints",
    "podgc",
    "servicelb",
    "persistentvolume-binder",
    "local-path",
    "disruption",
];

/// Runs the enabled controllers until `stop`.
pub async fn run(
    client: kube::Client,
    cluster: ClusterInfo,
    selection: Selection,
    stop: CancellationToken,
) {
    let ctx = Arc::new(Context {
        events: crate::client::events::EventRecorder::new(
            client.clone(),
            "kube-controller-manager",
            None,
        ),
        client,
        root_ca: cluster.root_ca,
        cluster_cidr: cluster.cluster_cidr,
        service_account_key: cluster.service_account_key,
        allocating: tokio::sync::Mutex::new(()),
        storage_dir: cluster.storage_dir,
        local_node: cluster.local_node,
    });
    let enabled = |n: &str| !selection.disabled.iter().any(|d| d == n);
    let mut loops = tokio::task::JoinSet::new();
    if enabled("replicaset") {
        loops.spawn(replicaset::run(ctx.clone(), stop.clone()));
    }
    if enabled("replicationcontroller") {
        loops.spawn(replication_controller::run(ctx.clone(), stop.clone()));
    }
    if enabled("daemonset") {
        loops.spawn(daemonset::run(ctx.clone(), stop.clone()));
    }
    if enabled("statefulset") {
        loops.spawn(statefulset::run(ctx.clone(), stop.clone()));
    }
    if enabled("job") {
        loops.spawn(job::run(ctx.clone(), stop.clone()));
    }
    if enabled("cronjob") {
        loops.spawn(cronjob::run(ctx.clone(), stop.clone()));
    }
    if enabled("ttl-after-finished") {
        loops.spawn(ttl_after_finished::run(ctx.clone(), stop.clone()));
    }
    if enabled("deployment") {
        loops.spawn(deployment::run(ctx.clone(), stop.clone()));
    }
    if enabled("garbagecollector") {
        loops.spawn(garbage_collector::run(ctx.clone(), stop.clone()));
    }
    if enabled("namespace") {
        loops.spawn(namespace::run(ctx.clone(), stop.clone()));
    }
    if enabled("serviceaccount") {
        loops.spawn(serviceaccount::run(ctx.clone(), stop.clone()));
    }
    if enabled("serviceaccount-token") {
        loops.spawn(tokens::run(ctx.clone(), stop.clone()));
    }
    if enabled("endpoints") {
        loops.spawn(endpoints::run(ctx.clone(), stop.clone()));
    }
    if enabled("podgc") {
        loops.spawn(pod_gc::run(ctx.clone(), stop.clone()));
    }
    if enabled("servicelb") {
        loops.spawn(servicelb::run(ctx.clone(), stop.clone()));
    }
    if enabled("nodelifecycle") {
        loops.spawn(node_lifecycle::run(ctx.clone(), stop.clone()));
    }
    if enabled("persistentvolume-binder") {
        loops.spawn(volume_binder::run(ctx.clone(), stop.clone()));
    }
    if enabled("local-path") {
        loops.spawn(local_path::run(ctx.clone(), stop.clone()));
    }
    if enabled("disruption") {
        loops.spawn(disruption::run(ctx.clone(), stop.clone()));
    }
    if enabled("nodeipam") {
        loops.spawn(node_ipam::run(ctx.clone(), stop.clone()));
    }
    while let Some(r) = loops.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "a controller loop panicked");
        }
    }
}

/// A call on an object that may be gone already: that is no error (Ok(None)).
pub fn unless_missing<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A create of an object that may exist already (made by an earlier pass): no error.
pub fn unless_exists<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How soon to look again after an error.
pub fn retry_after(attempt_error: &Error) -> Duration {
    match attempt_error {
        Error::Api(kube::Error::Api(e)) if e.code == 409 => Duration::from_millis(100),
        _ => Duration::from_secs(5),
    }
}
