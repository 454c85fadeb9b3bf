//! The scheduler: pods of `schedulerName: default-scheduler` without a node are taken one
//! at a time from the scheduling queue (`queue`: priority order, backoff, and an
//! unschedulable set woken by the cluster events that could make them fit), judged against
//! the cached cluster (`cache`) by kube's filters (`filter`, `volumes`, `affinity`,
//! `spread`) and scores (`score`), and bound through pods/binding by a task of its own
//! (`bind`), the pod assumed on its node meanwhile. When no node fits, `preemption` may
//! evict lower-priority pods and nominate a node; otherwise the pod gets PodScheduled=False
//! with kube's "0/N nodes are available: ..." message.
mod affinity;
mod bind;
mod cache;
mod filter;
mod preemption;
mod queue;
mod score;
mod spread;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use cache::{key_of, Cache, PodInfo};
use filter::{PodState, Reject};
use queue::SchedulingQueue;

use crate::client::events::EventRecorder;

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Bindings (and other writes) in flight at once, as kube's parallel binding cycles.
const MAX_IN_FLIGHT: usize = 64;

/// One watch event, of whichever kind.
enum Change {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Claim(Box<watcher::Event<PersistentVolumeClaim>>),
    Volume(Box<watcher::Event<PersistentVolume>>),
    Class(Box<watcher::Event<StorageClass>>),
    Budget(Box<watcher::Event<PodDisruptionBudget>>),
}

/// How a write task ended, for the loop to account.
enum Done {
    Bound {
        key: String,
        uid: String,
        result: bind::Bound,
    },
    Wrote {
        what: &'static str,
        result: Result<(), kube::Error>,
    },
}

type Watch = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Forwards one kind's watch events into the loop.
fn forward<K>(
    api: Api<K>,
    tx: mpsc::UnboundedSender<Change>,
    wrap: fn(watcher::Event<K>) -> Change,
) -> Watch
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    Box::pin(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .for_each(move |e| {
                match e {
                    Ok(e) => {
                        let _ = tx.send(wrap(e));
                    }
                    Err(e) => tracing::debug!(error = %e, "scheduler watch error, retrying"),
                }
                async {}
            }),
    )
}

/// Runs the scheduler until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let (tx, rx) = mpsc::unbounded_channel();
    let c = &client;
    let watches: Vec<Watch> = vec![
        forward(Api::<Pod>::all(c.clone()), tx.clone(), |e| {
            Change::Pod(Box::new(e))
        }),
        forward(Api::<Node>::all(c.clone()), tx.clone(), |e| {
            Change::Node(Box::new(e))
        }),
        forward(Api::<Namespace>::all(c.clone()), tx.clone(), |e| {
            Change::Namespace(Box::new(e))
        }),
        forward(
            Api::<PersistentVolumeClaim>::all(c.clone()),
            tx.clone(),
            |e| Change::Claim(Box::new(e)),
        ),
        forward(Api::<PersistentVolume>::all(c.clone()), tx.clone(), |e| {
            Change::Volume(Box::new(e))
        }),
        forward(Api::<StorageClass>::all(c.clone()), tx.clone(), |e| {
            Change::Class(Box::new(e))
        }),
        forward(Api::<PodDisruptionBudget>::all(c.clone()), tx, |e| {
            Change::Budget(Box::new(e))
        }),
    ];
    let mut scheduler = Scheduler {
        events: EventRecorder::new(client.clone(), SCHEDULER_NAME, None),
        client: client.clone(),
        cache: Cache::default(),
        queue: SchedulingQueue::default(),
        nominated: HashMap::new(),
        relists: Relists::default(),
        synced: [false; 7],
        tasks: JoinSet::new(),
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = futures::future::join_all(watches) => {}
        _ = scheduler.run(rx, &stop) => {}
    }
    scheduler.tasks.shutdown().await;
}

/// Objects of a re-list, gathered until it is complete.
#[derive(Default)]
struct Relists {
    pods: Option<Vec<Pod>>,
    nodes: Option<Vec<Node>>,
    namespaces: Option<Vec<Namespace>>,
    claims: Option<Vec<PersistentVolumeClaim>>,
    volumes: Option<Vec<PersistentVolume>>,
    classes: Option<Vec<StorageClass>>,
    budgets: Option<Vec<PodDisruptionBudget>>,
}

/// Folds a watch event into a re-list buffer; Some(list) once the re-list is complete.
fn relist<K>(buffer: &mut Option<Vec<K>>, e: &watcher::Event<K>) -> Option<Vec<K>>
where
    K: Clone,
{
    match e {
        watcher::Event::Init => {
            *buffer = Some(Vec::new());
            None
        }
        watcher::Event::InitApply(o) => {
            buffer.get_or_insert_with(Vec::new).push(o.clone());
            None
        }
        watcher::Event::InitDone => Some(buffer.take().unwrap_or_default()),
        _ => None,
    }
}

fn keyed<K: kube::Resource>(o: &K) -> String {
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.meta().name.as_deref().unwrap_or("")),
        None => o.meta().name.clone().unwrap_or_default(),
    }
}

struct Scheduler {
    client: kube::Client,
    events: EventRecorder,
    cache: Cache,
    queue: SchedulingQueue,
    /// Pending pods nominated to a node by preemption: key → (node, pod).
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
    relists: Relists,
    /// Whether each watch has listed once (pods, nodes, namespaces, claims, volumes,
    /// classes, budgets).
    synced: [bool; 7],
    tasks: JoinSet<Done>,
}

fn needs_scheduling(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && !cache::terminal(p)
}

fn gated(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

/// Whether a node changed in a way that could make a pending pod fit.
fn node_changed(old: Option<&Node>, new: &Node) -> bool {
    let Some(old) = old else {
        return true;
    };
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
    };
    let spec = |n: &Node| n.spec.as_ref().map(|s| (s.taints.clone(), s.unschedulable));
    let alloc = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    old.metadata.labels != new.metadata.labels
        || spec(old) != spec(new)
        || alloc(old) != alloc(new)
        || ready(old) != ready(new)
}

impl Scheduler {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Change>, stop: &CancellationToken) {
        loop {
            while let Ok(change) = rx.try_recv() {
                self.apply(change);
            }
            while let Some(done) = self.tasks.try_join_next() {
                self.finished(done);
            }
            let now = Instant::now();
            if self.synced.iter().all(|s| *s) && self.tasks.len() < MAX_IN_FLIGHT {
                if let Some(pod) = self.queue.pop(now) {
                    self.schedule_one(pod, now);
                    continue;
                }
            }
            let wake = self
                .queue
                .next_ready()
                .unwrap_or(now + Duration::from_secs(60));
            tokio::select! {
                _ = stop.cancelled() => return,
                change = rx.recv() => match change {
                    Some(c) => self.apply(c),
                    None => return,
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => self.finished(done),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn finished(&mut self, done: Result<Done, tokio::task::JoinError>) {
        match done {
            Ok(Done::Bound { key, uid, result }) => match result {
                bind::Bound::Yes => self.queue.done(&key),
                bind::Bound::Moot => {
                    self.cache.forget(&uid);
                    self.queue.done(&key);
                }
                bind::Bound::Failed(e) => {
                    tracing::warn!(pod = %key, error = %e, "binding failed, retrying");
                    self.cache.forget(&uid);
                    self.queue.error(&key);
                }
            },
            Ok(Done::Wrote {
                what,
                result: Err(e),
            }) => {
                tracing::warn!(error = %e, "scheduler could not write {what}")
            }
            Ok(Done::Wrote { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "scheduler task failed"),
        }
    }

    fn apply(&mut self, change: Change) {
        let now = Instant::now();
        match change {
            Change::Pod(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.pods, &e) {
                    self.synced[0] = true;
                    let all: Vec<Arc<Pod>> = all.into_iter().map(Arc::new).collect();
                    let present: std::collections::HashSet<String> =
                        all.iter().map(|p| key_of(p)).collect();
                    self.cache.reset_pods(all.clone());
                    for p in all {
                        self.pending(p);
                    }
                    // Pending pods deleted while the watch was away.
                    for key in self.queue_keys() {
                        if !present.contains(&key) {
                            self.queue.remove(&key);
                            self.nominated.remove(&key);
                        }
                    }
                    self.queue.move_all(now);
                    return;
                }
                match e {
                    watcher::Event::Apply(p) => {
                        let p = Arc::new(p);
                        let assigned = p
                            .spec
                            .as_ref()
                            .is_some_and(|s| !s.node_name.as_deref().unwrap_or("").is_empty());
                        if assigned {
                            let key = key_of(&p);
                            self.queue.remove(&key);
                            self.nominated.remove(&key);
                            let before = self
                                .cache
                                .nodes
                                .values()
                                .flat_map(|n| n.pods.iter())
                                .find(|i| Some(&i.uid) == p.metadata.uid.as_ref())
                                .map(|i| {
                                    (
                                        i.pod.metadata.labels.clone(),
                                        i.pod.metadata.deletion_timestamp.is_some(),
                                    )
                                });
                            self.cache.set_pod(p.clone());
                            // Room freed (a finished pod) or labels that affinity and
                            // spreading count changed.
                            let now_state = (
                                p.metadata.labels.clone(),
                                p.metadata.deletion_timestamp.is_some(),
                            );
                            if cache::terminal(&p) {
                                self.queue.move_all(now);
                            } else if before.as_ref() != Some(&now_state) {
                                self.queue.move_pod_dependent(now);
                            }
                        } else {
                            self.pending(p);
                        }
                    }
                    watcher::Event::Delete(p) => {
                        let key = key_of(&p);
                        self.queue.remove(&key);
                        self.nominated.remove(&key);
                        if let Some(uid) = p.metadata.uid.as_deref() {
                            self.cache.remove_pod(uid);
                        }
                        self.queue.move_all(now);
                    }
                    _ => {}
                }
            }
            Change::Node(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.nodes, &e) {
                    self.synced[1] = true;
                    let names: Vec<String> = all.iter().map(|n| n.name_any()).collect();
                    let stale: Vec<String> = self
                        .cache
                        .nodes
                        .keys()
                        .filter(|n| !names.contains(n))
                        .cloned()
                        .collect();
                    for n in stale {
                        self.cache.remove_node(&n);
                    }
                    for n in all {
                        self.cache.set_node(Arc::new(n));
                    }
                    self.queue.move_all(now);
                    return;
                }
                match e {
                    watcher::Event::Apply(n) => {
                        let old = self
                            .cache
                            .nodes
                            .get(&n.name_any())
                            .and_then(|i| i.node.clone());
                        let changed = node_changed(old.as_deref(), &n);
                        self.cache.set_node(Arc::new(n));
                        if changed {
                            self.queue.move_all(now);
                        }
                    }
                    watcher::Event::Delete(n) => self.cache.remove_node(&n.name_any()),
                    _ => {}
                }
            }
            Change::Namespace(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.namespaces, &e) {
                    self.synced[2] = true;
                    self.cache.namespaces = all
                        .into_iter()
                        .map(|n| (n.name_any(), n.labels().clone()))
                        .collect();
                    return;
                }
                match e {
                    watcher::Event::Apply(n) => {
                        let labels = n.labels().clone();
                        if self.cache.namespaces.insert(n.name_any(), labels.clone())
                            != Some(labels)
                        {
                            self.queue.move_pod_dependent(now);
                        }
                    }
                    watcher::Event::Delete(n) => {
                        self.cache.namespaces.remove(&n.name_any());
                    }
                    _ => {}
                }
            }
            Change::Claim(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.claims, &e) {
                    self.synced[3] = true;
                    self.cache.claims = all.into_iter().map(|o| (keyed(&o), Arc::new(o))).collect();
                    return;
                }
                self.volume_event(e, |c| &mut c.claims, now);
            }
            Change::Volume(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.volumes, &e) {
                    self.synced[4] = true;
                    self.cache.volumes =
                        all.into_iter().map(|o| (keyed(&o), Arc::new(o))).collect();
                    return;
                }
                self.volume_event(e, |c| &mut c.volumes, now);
            }
            Change::Class(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.classes, &e) {
                    self.synced[5] = true;
                    self.cache.classes =
                        all.into_iter().map(|o| (keyed(&o), Arc::new(o))).collect();
                    return;
                }
                self.volume_event(e, |c| &mut c.classes, now);
            }
            Change::Budget(e) => {
                let e = *e;
                if let Some(all) = relist(&mut self.relists.budgets, &e) {
                    self.synced[6] = true;
                    self.cache.budgets = all.into_iter().map(Arc::new).collect();
                    return;
                }
                match e {
                    watcher::Event::Apply(b) => {
                        let k = keyed(&b);
                        self.cache.budgets.retain(|x| keyed(x.as_ref()) != k);
                        self.cache.budgets.push(Arc::new(b));
                    }
                    watcher::Event::Delete(b) => {
                        let k = keyed(&b);
                        self.cache.budgets.retain(|x| keyed(x.as_ref()) != k);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A claim, volume or class changed: kept by key; pending pods may fit now.
    fn volume_event<K: kube::Resource>(
        &mut self,
        e: watcher::Event<K>,
        map: fn(&mut Cache) -> &mut HashMap<String, Arc<K>>,
        now: Instant,
    ) {
        match e {
            watcher::Event::Apply(o) => {
                map(&mut self.cache).insert(keyed(&o), Arc::new(o));
            }
            watcher::Event::Delete(o) => {
                map(&mut self.cache).remove(&keyed(&o));
            }
            _ => return,
        }
        self.queue.move_all(now);
    }

    fn queue_keys(&self) -> Vec<String> {
        self.nominated
            .keys()
            .cloned()
            .chain(self.queue.keys())
            .collect()
    }

    /// An unassigned pod as the watch shows it.
    fn pending(&mut self, p: Arc<Pod>) {
        let key = key_of(&p);
        if !needs_scheduling(&p) {
            self.queue.remove(&key);
            self.nominated.remove(&key);
            return;
        }
        if gated(&p) {
            self.queue.remove(&key);
            let client = self.client.clone();
            let pod = (*p).clone();
            self.tasks.spawn(async move {
                Done::Wrote {
                    what: "the SchedulingGated condition",
                    result: bind::gated(client, pod).await,
                }
            });
            return;
        }
        // Bound by us a moment ago; the watch has not caught up.
        if p.metadata
            .uid
            .as_deref()
            .is_some_and(|uid| self.cache.is_assumed(uid))
        {
            return;
        }
        match p
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone())
            .filter(|n| !n.is_empty())
        {
            Some(node) => {
                self.nominated
                    .insert(key, (node, Arc::new(PodInfo::new(p.clone()))));
            }
            None => {
                self.nominated.remove(&key);
            }
        }
        self.queue.upsert(p);
    }

    /// The node as a pod of this priority sees it: with the pods nominated to it that
    /// come first.
    fn view(&self, node: &cache::NodeInfo, pod: &PodInfo) -> Option<cache::NodeInfo> {
        if self.nominated.is_empty() {
            return None;
        }
        let name = node.name();
        let extra: Vec<Arc<PodInfo>> = self
            .nominated
            .values()
            .filter(|(n, p)| *n == name && p.priority >= pod.priority && p.key != pod.key)
            .map(|(_, p)| p.clone())
            .collect();
        if extra.is_empty() {
            return None;
        }
        let mut v = node.without(&Default::default());
        for p in extra {
            v.add(p);
        }
        Some(v)
    }

    fn schedule_one(&mut self, pod: Arc<Pod>, now: Instant) {
        let info = Arc::new(PodInfo::new(pod.clone()));
        let key = info.key.clone();
        let span = tracing::debug_span!("schedule", kind = "Pod", namespace = %info.namespace(), name = %pod.name_any());
        let _g = span.enter();
        let nodes = self.cache.node_count();
        let state = match PodState::new(info.clone(), &self.cache) {
            Ok(s) => s,
            Err(why) => {
                let post = match preemption::eligible(&info, &self.cache) {
                    Ok(()) => format!(
                        "preemption: 0/{nodes} nodes are available: {nodes} {}.",
                        preemption::NO_VICTIMS
                    ),
                    Err(e) => e,
                };
                let message = format!("0/{nodes} nodes are available: {why}. {post}.");
                self.failed(&key, pod, message, None, false, now);
                return;
            }
        };
        let mut feasible = Vec::new();
        let mut rejects: BTreeMap<String, Reject> = BTreeMap::new();
        let views: Vec<(String, Option<cache::NodeInfo>)> = self
            .cache
            .schedulable()
            .map(|n| (n.name(), self.view(n, &info)))
            .collect();
        for (name, view) in &views {
            let Some(node) = self.cache.nodes.get(name) else {
                continue;
            };
            let node = view.as_ref().unwrap_or(node);
            match filter::filter(&state, node, &self.cache) {
                Ok(()) => feasible.push(node),
                Err(r) => {
                    rejects.insert(name.clone(), r);
                }
            }
        }
        if let Some(node) = score::pick(&state, &feasible, &self.cache) {
            drop(feasible);
            if state.volumes.waits() {
                // The claims are marked for this node; the pod is bound once they are.
                let actions = self
                    .cache
                    .nodes
                    .get(&node)
                    .map(|n| state.volumes.actions(n, &self.cache))
                    .unwrap_or_default();
                self.queue.unschedulable(&key, now, false);
                if !actions.is_empty() {
                    let client = self.client.clone();
                    self.tasks.spawn(async move {
                        Done::Wrote {
                            what: "claims for the chosen node",
                            result: bind::claim_volumes(client, node, actions).await,
                        }
                    });
                }
                return;
            }
            self.cache.assume(&info, &node);
            let (client, events, uid) =
                (self.client.clone(), self.events.clone(), info.uid.clone());
            let pod = (*pod).clone();
            self.tasks.spawn(async move {
                let result = bind::bind(client, events, pod, node).await;
                Done::Bound { key, uid, result }
            });
            return;
        }
        drop(feasible);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for r in rejects.values() {
            for reason in &r.reasons {
                *counts.entry(reason.as_str()).or_default() += 1;
            }
        }
        let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        let mut message = if nodes == 0 {
            "no nodes available to schedule pods".to_string()
        } else {
            format!("0/{nodes} nodes are available: {}.", parts.join(", "))
        };
        let pod_dependent = rejects
            .values()
            .flat_map(|r| r.reasons.iter())
            .any(|r| r.contains("affinity") || r.contains("spread") || r.contains("ports"));
        let found = match preemption::eligible(&info, &self.cache) {
            Err(e) => Err(e),
            Ok(()) if nodes == 0 => Err(String::new()),
            Ok(()) => preemption::find(&state, &rejects, &self.cache),
        };
        let nominate = match found {
            Ok(candidate) => {
                tracing::info!(node = %candidate.node, victims = candidate.victims.len(), "preempting");
                let denominate: Vec<Pod> = self
                    .nominated
                    .values()
                    .filter(|(n, p)| {
                        *n == candidate.node && p.priority < info.priority && p.key != key
                    })
                    .map(|(_, p)| (*p.pod).clone())
                    .collect();
                let victims: Vec<Pod> =
                    candidate.victims.iter().map(|v| (*v.pod).clone()).collect();
                let (client, events, preemptor, node) = (
                    self.client.clone(),
                    self.events.clone(),
                    (*pod).clone(),
                    candidate.node.clone(),
                );
                self.tasks.spawn(async move {
                    Done::Wrote {
                        what: "preemption",
                        result: bind::preempt(client, events, preemptor, node, victims, denominate)
                            .await,
                    }
                });
                Some(Some(candidate.node))
            }
            Err(post) => {
                if !post.is_empty() {
                    message = format!("{message} {post}.");
                }
                let had = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.nominated_node_name.as_deref())
                    .is_some_and(|n| !n.is_empty());
                had.then_some(None)
            }
        };
        self.failed(&key, pod, message, nominate, pod_dependent, now);
    }

    fn failed(
        &mut self,
        key: &str,
        pod: Arc<Pod>,
        message: String,
        nominate: Option<Option<String>>,
        pod_dependent: bool,
        now: Instant,
    ) {
        tracing::debug!(pod = %key, %message, "unschedulable");
        self.queue.unschedulable(key, now, pod_dependent);
        let (client, events, pod) = (self.client.clone(), self.events.clone(), (*pod).clone());
        self.tasks.spawn(async move {
            Done::Wrote {
                what: "an unschedulable pod's status",
                result: bind::unschedulable(client, events, pod, message, nominate).await,
            }
        });
    }
}
