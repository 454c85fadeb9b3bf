//! The kubelet: watches the pods bound to this node through the API, runs one worker per pod
//! (sync on pod changes, on runtime changes seen by the relister, and on its own timers), and
//! cleans up sandboxes whose pods are gone.
mod actions;
mod env;
mod events;
pub mod eviction;
pub mod image_gc;
pub mod log_rotation;
mod logind;
pub mod node;
pub mod node_shutdown;
mod probes;
mod pull_secrets;
pub mod resource_metrics;
pub mod resource_stats;
pub mod static_pods;
pub mod status;
pub mod termination;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::events::Recorder;
use self::worker::{Next, PodWorker};
use crate::agent::cri::sandbox::SandboxContext;
use crate::agent::cri::{Cri, State};

/// What every pod worker shares.
pub struct Kubelet {
    pub client: kube::Client,
    pub cri: Cri,
    pub node_name: String,
    pub node_ip: String,
    pub sandbox: SandboxContext,
    /// `<data-dir>/agent/pods`: per-pod volumes and termination-message files.
    pub pods_dir: PathBuf,
    pub events: Recorder,
    allocatable: RwLock<BTreeMap<String, String>>,
    /// The last CPU and memory sample of the node and its containers (`/stats/summary`).
    pub stats: resource_stats::ResourceStats,
    /// `--eviction-hard`, `--eviction-soft` and their settings.
    pub thresholds: eviction::Thresholds,
    /// Since when each soft threshold has been crossed.
    pub soft_clock: eviction::SoftClock,
    /// Pods the kubelet ends itself (evictions, node shutdown), for their workers to stop.
    pub terminations: termination::PodTerminations,
    /// Unused images deleted when the image filesystem fills.
    pub image_gc: image_gc::ImageGc,
    /// Graceful node shutdown's grace periods (`--kubelet-arg shutdown-grace-period`).
    pub shutdown_policy: node_shutdown::ShutdownPolicy,
    /// Whether the node is shutting down (shared with the node's status).
    pub shutdown_state: Arc<node_shutdown::ShutdownState>,
}

impl Kubelet {
    pub fn new(
        client: kube::Client,
        cri: Cri,
        node_name: String,
        node_ip: String,
        sandbox: SandboxContext,
        pods_dir: PathBuf,
    ) -> Kubelet {
        Kubelet {
            events: Recorder::new(client.clone(), node_name.clone()),
            client,
            cri,
            node_name,
            node_ip,
            sandbox,
            pods_dir,
            allocatable: RwLock::new(BTreeMap::new()),
            stats: resource_stats::ResourceStats::default(),
            thresholds: eviction::Thresholds::default(),
            soft_clock: eviction::SoftClock::default(),
            terminations: termination::PodTerminations::default(),
            image_gc: image_gc::ImageGc::new(image_gc::ImageGcPolicy::default(), []),
            shutdown_policy: node_shutdown::ShutdownPolicy::default(),
            shutdown_state: Arc::default(),
        }
    }

    pub fn allocatable(&self) -> BTreeMap<String, String> {
        self.allocatable
            .read()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    pub fn set_allocatable(&self, node: &k8s_openapi::api::core::v1::Node) {
        let a = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        if let Ok(mut w) = self.allocatable.write() {
            *w = a;
        }
    }
}

struct WorkerHandle {
    wake: mpsc::Sender<()>,
}

async fn work(
    k: Arc<Kubelet>,
    store: Store<Pod>,
    oref: ObjectRef<Pod>,
    uid: String,
    mut wake: mpsc::Receiver<()>,
    stop: CancellationToken,
) -> String {
    let mut w = PodWorker::new(k, uid.clone());
    loop {
        let pod = store
            .get(&oref)
            .filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str()));
        let span = tracing::debug_span!("pod", namespace = %oref.namespace.clone().unwrap_or_default(), pod = %oref.name);
        let _ = &span;
        match w.sync(pod).await {
            Next::Done => return uid,
            Next::After(d) => {
                tokio::select! {
                    _ = stop.cancelled() => return uid,
                    _ = tokio::time::sleep(d) => {}
                    m = wake.recv() => if m.is_none() { return uid },
                }
                // Coalesce a burst of wake-ups into one sync.
                while wake.try_recv().is_ok() {}
            }
        }
    }
}

/// Runs the pod workers until shutdown. Containers keep running when it stops.
pub async fn run(k: Arc<Kubelet>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::all(k.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", k.node_name));
    let (store, writer) = reflector::store();
    let mut events = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut running: JoinSet<String> = JoinSet::new();
    let stop = shutdown.child_token();
    let mut relist = tokio::time::interval(Duration::from_secs(1));
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    // kube's image record period.
    let mut image_gc = tokio::time::interval(Duration::from_secs(30));
    let mut seen_states: HashMap<String, (String, State)> = HashMap::new();
    let mut synced = false;
    // The shutdown manager reaches pod workers by uid through here.
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<String>();
    let node_shutdown = node_shutdown::run(k.clone(), store.clone(), wake_tx, stop.clone());
    tokio::pin!(node_shutdown);
    let mut node_shutdown_done = false;
    let notify =
        |workers: &mut HashMap<String, WorkerHandle>, running: &mut JoinSet<String>, pod: &Pod| {
            let Some(uid) = pod.metadata.uid.clone() else {
                return;
            };
            if let Some(h) = workers.get(&uid) {
                let _ = h.wake.try_send(());
                return;
            }
            let (tx, rx) = mpsc::channel(1);
            workers.insert(uid.clone(), WorkerHandle { wake: tx });
            running.spawn(work(
                k.clone(),
                store.clone(),
                ObjectRef::from_obj(pod),
                uid,
                rx,
                stop.clone(),
            ));
        };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod))) => {
                    notify(&mut workers, &mut running, &pod);
                }
                // A (re)list is buffered by the reflector and swapped into the store only at
                // InitDone: a worker woken before then would find its pod missing and tear
                // it down. So the whole list is acted on at InitDone.
                Some(Ok(watcher::Event::InitApply(_))) => {}
                Some(Ok(watcher::Event::InitDone)) => {
                    let listed = store.state();
                    let present: std::collections::HashSet<String> =
                        listed.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                    for pod in &listed {
                        notify(&mut workers, &mut running, pod);
                    }
                    // Pods that went away while the watch was down.
                    for (uid, h) in &workers {
                        if !present.contains(uid) {
                            let _ = h.wake.try_send(());
                        }
                    }
                    if !synced {
                        synced = true;
                        housekeeping.reset_immediately();
                    }
                }
                Some(Ok(watcher::Event::Init)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(uid) = done {
                    workers.remove(&uid);
                    // The pod may have come back under the same uid (a restart of the watch).
                    if let Some(pod) = store.state().into_iter().find(|p| p.metadata.uid.as_deref() == Some(uid.as_str())) {
                        if pod.metadata.deletion_timestamp.is_none() {
                            notify(&mut workers, &mut running, &pod);
                        }
                    }
                }
            }
            _ = relist.tick() => {
                // The relister: one runtime listing a second; workers whose containers
                // changed state are woken (CRI v1 on containerd 1.6 has no event stream).
                if let Ok(list) = k.cri.list_containers().await {
                    let mut now: HashMap<String, (String, State)> = HashMap::new();
                    for c in list {
                        now.insert(c.id.clone(), (c.pod_uid.clone(), c.state));
                    }
                    let mut changed: std::collections::HashSet<String> = std::collections::HashSet::new();
                    for (id, (uid, st)) in &now {
                        if seen_states.get(id).map(|(_, s)| s) != Some(st) {
                            changed.insert(uid.clone());
                        }
                    }
                    for (id, (uid, _)) in &seen_states {
                        if !now.contains_key(id) {
                            changed.insert(uid.clone());
                        }
                    }
                    seen_states = now;
                    for uid in changed {
                        if let Some(h) = workers.get(&uid) {
                            let _ = h.wake.try_send(());
                        }
                    }
                }
            }
            _ = housekeeping.tick(), if synced => {
                orphans(&k, &store, &mut workers, &mut running, &stop).await;
                evict_under_pressure(&k, &store, &workers).await;
            }
            _ = image_gc.tick(), if synced => collect_images(&k).await,
            Some(uid) = wake_rx.recv() => {
                if let Some(h) = workers.get(&uid) {
                    let _ = h.wake.try_send(());
                }
            }
            r = &mut node_shutdown, if !node_shutdown_done => {
                node_shutdown_done = true;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "the node shutdown manager stopped");
                }
            }
        }
    }
    stop.cancel();
    while running.join_next().await.is_some() {}
    Ok(())
}

/// The image collector's round; a shortfall is a Warning event on the node, as kube's.
async fn collect_images(k: &Kubelet) {
    match k.image_gc.collect(&k.cri).await {
        Ok(_) => {}
        Err(e @ image_gc::Error::NotEnough { .. }) => {
            tracing::warn!(error = %e, "image garbage collection fell short");
            k.events
                .node(&k.node_name, true, "ImageGCFailed", &e.to_string())
                .await;
        }
        Err(e) => tracing::debug!(error = %e, "image garbage collection skipped"),
    }
}

/// The eviction manager's round: under memory or disk pressure one pod is chosen (none
/// while an earlier choice is still being carried out) and its worker woken. Under disk
/// pressure, unused images go first; a pod is chosen only if none could be deleted.
async fn evict_under_pressure(
    k: &Kubelet,
    store: &Store<Pod>,
    workers: &HashMap<String, WorkerHandle>,
) {
    if k.terminations.any_pending() {
        return;
    }
    let signals = node::signals(&k.pods_dir);
    let Some(trigger) = k
        .thresholds
        .trigger(&signals, &k.soft_clock, std::time::Instant::now())
    else {
        return;
    };
    let pressure = trigger.pressure;
    if pressure == eviction::Pressure::Disk {
        match k.image_gc.delete_unused(&k.cri).await {
            Ok(done) if done.freed > 0 => {
                tracing::info!(
                    freed = done.freed,
                    images = done.deleted.len(),
                    "disk pressure: reclaimed unused images before evicting"
                );
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "disk pressure: images not reclaimed"),
        }
    }
    let usage: HashMap<String, u64> = k
        .stats
        .latest()
        .map(|s| {
            s.pods
                .iter()
                .map(|p| {
                    (
                        p.pod_ref.uid.clone(),
                        p.memory.working_set_bytes.unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let pods = store.state();
    let Some((pod, message)) =
        eviction::victim(&pods, &usage, pressure, trigger.threshold, &signals)
    else {
        return;
    };
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    tracing::warn!(namespace = %pod.metadata.namespace.clone().unwrap_or_default(), pod = %pod.metadata.name.clone().unwrap_or_default(), ?pressure, "evicting");
    k.terminations.request(
        &uid,
        termination::Termination {
            reason: "Evicted",
            message,
            // A soft threshold's eviction lets the pod end within the max pod grace period.
            grace: pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .map_or(trigger.max_grace, |g| {
                    Duration::from_secs(g.max(0) as u64).min(trigger.max_grace)
                }),
            done: None,
        },
    );
    if let Some(h) = workers.get(&uid) {
        let _ = h.wake.try_send(());
    }
}

/// Sandboxes whose pods are not bound here any more get a worker that tears them down.
async fn orphans(
    k: &Arc<Kubelet>,
    store: &Store<Pod>,
    workers: &mut HashMap<String, WorkerHandle>,
    running: &mut JoinSet<String>,
    stop: &CancellationToken,
) {
    let known: std::collections::HashSet<String> = store
        .state()
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let Ok(sandboxes) = k.cri.list_sandboxes().await else {
        return;
    };
    for s in sandboxes {
        if known.contains(&s.uid) || workers.contains_key(&s.uid) || s.uid.is_empty() {
            continue;
        }
        tracing::info!(namespace = %s.namespace, pod = %s.name, sandbox = %s.id, "removing the sandbox of a pod that is gone");
        let (tx, rx) = mpsc::channel(1);
        workers.insert(s.uid.clone(), WorkerHandle { wake: tx });
        let oref = ObjectRef::new(&s.name).within(&s.namespace);
        running.spawn(work(
            k.clone(),
            store.clone(),
            oref,
            s.uid.clone(),
            rx,
            stop.clone(),
        ));
    }
    // Pod directories of pods that no longer exist here.
    if let Ok(dir) = std::fs::read_dir(&k.pods_dir) {
        for e in dir.flatten() {
            let uid = e.file_name().to_string_lossy().to_string();
            if !known.contains(&uid) && !workers.contains_key(&uid) {
                volumes::remove_pod_dir(&e.path());
            }
        }
    }
}
