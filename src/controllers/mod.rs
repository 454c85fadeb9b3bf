//! The controller manager's loops as tokio tasks: each watches through the Kubernetes API
//! (the `kube` runtime: watcher, controller, work queue with rate-limited retries) with its
//! own client, and writes back only through the API, so validation and admission apply to it
//! as to any client. They run while this server holds the controller lease.
mod autoscaler;
mod clusterrole_aggregation;
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
mod resource_quota;
mod serviceaccount;
mod servicelb;
mod statefulset;
mod storage_protection;
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
    /// How this loop is doing, for /readyz.
    pub health: crate::lifecycle::health::HealthReporter,
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
    /// Where each loop reports its health (`controller/<name>` checks on /readyz).
    pub health: crate::lifecycle::health::LoopHealth,
}

/// Which loops to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--disable-controller NAME`.
    pub disabled: Vec<String>,
}

/// The loops: each one's `--disable-controller` name and the service account in kube-system
/// it acts as (kube's names, whose `system:controller:<identity>` ClusterRole it holds).
pub const LOOPS: &[(&str, &str)] = &[
    ("deployment", "deployment-controller"),
    (
        "clusterrole-aggregation",
        "clusterrole-aggregation-controller",
    ),
    ("replicaset", "replicaset-controller"),
    ("replicationcontroller", "replication-controller"),
    ("daemonset", "daemon-set-controller"),
    ("statefulset", "statefulset-controller"),
    ("job", "job-controller"),
    ("cronjob", "cronjob-controller"),
    ("ttl-after-finished", "ttl-after-finished-controller"),
    ("garbagecollector", "generic-garbage-collector"),
    ("namespace", "namespace-controller"),
    ("serviceaccount", "service-account-controller"),
    // kube's token controller runs as the controller manager itself.
    ("serviceaccount-token", MANAGER),
    ("nodeipam", "node-controller"),
    ("nodelifecycle", "node-controller"),
    ("endpoints", "endpoint-controller"),
    ("podgc", "pod-garbage-collector"),
    ("servicelb", "service-lb-controller"),
    ("persistentvolume-binder", "persistent-volume-binder"),
    ("local-path", "local-path-provisioner"),
    ("pvc-protection", "pvc-protection-controller"),
    ("pv-protection", "pv-protection-controller"),
    ("disruption", "disruption-controller"),
    ("resourcequota", "resourcequota-controller"),
    ("horizontalpodautoscaling", "horizontal-pod-autoscaler"),
];

/// The controller manager's own identity (a user, not a service account).
pub const MANAGER: &str = "system:kube-controller-manager";

/// Makes the client a loop acts through, given the identity it acts as: `MANAGER`, or the
/// name of a service account in kube-system.
pub type ClientFor = Arc<dyn Fn(&str) -> kube::Client + Send + Sync>;

/// Runs the enabled controllers until `stop`, each through its own client.
pub async fn run(
    client_for: ClientFor,
    cluster: ClusterInfo,
    selection: Selection,
    stop: CancellationToken,
) {
    let enabled = |n: &str| !selection.disabled.iter().any(|d| d == n);
    let identities: Vec<&str> = LOOPS
        .iter()
        .filter(|(n, i)| enabled(n) && *i != MANAGER)
        .map(|(_, i)| *i)
        .collect();
    ensure_identities(&client_for(MANAGER), identities).await;
    let mut loops = tokio::task::JoinSet::new();
    for (name, identity) in LOOPS.iter().copied().filter(|(n, _)| enabled(n)) {
        let client = client_for(identity);
        let health = cluster.health.reporter(&check_name(name));
        health.running();
        let ctx = Arc::new(Context {
            health,
            events: crate::client::events::EventRecorder::new(client.clone(), identity, None),
            client,
            root_ca: cluster.root_ca.clone(),
            cluster_cidr: cluster.cluster_cidr,
            service_account_key: cluster.service_account_key.clone(),
            allocating: tokio::sync::Mutex::new(()),
            storage_dir: cluster.storage_dir.clone(),
            local_node: cluster.local_node.clone(),
        });
        let stop = stop.clone();
        match name {
            "deployment" => loops.spawn(deployment::run(ctx, stop)),
            "clusterrole-aggregation" => loops.spawn(clusterrole_aggregation::run(ctx, stop)),
            "replicaset" => loops.spawn(replicaset::run(ctx, stop)),
            "replicationcontroller" => loops.spawn(replication_controller::run(ctx, stop)),
            "daemonset" => loops.spawn(daemonset::run(ctx, stop)),
            "statefulset" => loops.spawn(statefulset::run(ctx, stop)),
            "job" => loops.spawn(job::run(ctx, stop)),
            "cronjob" => loops.spawn(cronjob::run(ctx, stop)),
            "ttl-after-finished" => loops.spawn(ttl_after_finished::run(ctx, stop)),
            "garbagecollector" => loops.spawn(garbage_collector::run(ctx, stop)),
            "namespace" => loops.spawn(namespace::run(ctx, stop)),
            "serviceaccount" => loops.spawn(serviceaccount::run(ctx, stop)),
            "serviceaccount-token" => loops.spawn(tokens::run(ctx, stop)),
            "nodeipam" => loops.spawn(node_ipam::run(ctx, stop)),
            "nodelifecycle" => loops.spawn(node_lifecycle::run(ctx, stop)),
            "endpoints" => loops.spawn(endpoints::run(ctx, stop)),
            "podgc" => loops.spawn(pod_gc::run(ctx, stop)),
            "servicelb" => loops.spawn(servicelb::run(ctx, stop)),
            "persistentvolume-binder" => loops.spawn(volume_binder::run(ctx, stop)),
            "local-path" => loops.spawn(local_path::run(ctx, stop)),
            "pvc-protection" => loops.spawn(storage_protection::run_claims(ctx, stop)),
            "pv-protection" => loops.spawn(storage_protection::run_volumes(ctx, stop)),
            "disruption" => loops.spawn(disruption::run(ctx, stop)),
            "resourcequota" => loops.spawn(resource_quota::run(ctx, stop)),
            "horizontalpodautoscaling" => loops.spawn(autoscaler::run(ctx, stop)),
            other => {
                tracing::error!(controller = other, "no such controller loop");
                continue;
            }
        };
    }
    while let Some(r) = loops.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "a controller loop panicked");
        }
    }
    // Leadership lost (or shutdown): every loop stands by.
    for (name, _) in LOOPS.iter().filter(|(n, _)| enabled(n)) {
        cluster.health.reporter(&check_name(name));
    }
}

/// A loop's check on /readyz.
pub fn check_name(loop_name: &str) -> String {
    format!("controller/{loop_name}")
}

type Outcome<K> = Result<
    (
        kube::runtime::reflector::ObjectRef<K>,
        kube::runtime::controller::Action,
    ),
    kube::runtime::controller::Error<Error, kube::runtime::watcher::Error>,
>;

/// Follows a controller's outcomes into its health: a watch that errors, or a write the API
/// forbids, marks it failing; anything else, running. (Other reconcile errors are retried
/// per object and say nothing about the loop.)
pub fn observe<K>(
    health: crate::lifecycle::health::HealthReporter,
) -> impl FnMut(Outcome<K>) -> std::future::Ready<()>
where
    K: kube::runtime::reflector::Lookup + Clone,
{
    use kube::runtime::controller::Error as Failure;
    move |outcome| {
        match &outcome {
            Err(Failure::QueueError(e)) => health.failing(format!("watch failed: {e}")),
            Err(Failure::ReconcilerFailed(Error::Api(kube::Error::Api(s)), _)) if s.code == 403 => {
                health.failing(s.message.clone())
            }
            _ => health.running(),
        }
        std::future::ready(())
    }
}

/// Creates the service accounts the enabled loops act as, as kube's controller manager does
/// (`kubectl -n kube-system get sa` lists them). A failure is logged, not fatal: RBAC decides
/// by name, so the loops work without the objects.
async fn ensure_identities(manager: &kube::Client, mut identities: Vec<&str>) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(manager.clone(), "kube-system");
    identities.dedup();
    for identity in identities {
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(identity.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&kube::api::PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => tracing::warn!(identity, error = %e, "could not create the service account"),
        }
    }
}

/// What the API server said, as kube's controllers quote it in Events (the Status message,
/// not the client's wrapping).
pub fn said(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
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
