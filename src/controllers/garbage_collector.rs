//! The garbage collector: a graph of every object's ownerReferences, kept from watches of
//! every listable, deletable resource the API serves, acted on as kube's collector does. A
//! dependent with an owner still standing only loses its references to owners that are
//! gone or being deleted in the foreground; one whose owners are all gone is deleted
//! (background, or as its own finalizers ask), in the foreground when an owner waits for
//! it, with its references made non-blocking first when that would close a cycle. An owner
//! deleted in the foreground (`foregroundDeletion`) keeps its finalizer until no dependent
//! blocks it; one deleted with `orphan` first has its dependents' references to it removed.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams,
    Preconditions,
};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::Context;

/// What the graph knows of one object.
#[derive(Debug, Clone)]
struct Node {
    resource: Arc<ApiResource>,
    namespaced: bool,
    namespace: Option<String>,
    name: String,
    owners: Vec<(String, bool)>,
    deleting: bool,
    finalizers: Vec<String>,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// Watches (by resource) that have not finished their initial list: nothing is
    /// collected until all have.
    syncing: HashSet<String>,
}

type Shared = Arc<Mutex<Graph>>;

/// A dependent: its uid, what the graph knows of it, and whether it blocks its owner.
type Dependent = (String, Node, bool);
/// An owner being deleted, with its dependents.
type Deleting = (String, Node, Vec<Dependent>);

/// How often the served resources are discovered again, so the kinds CRDs add (and take
/// away) are followed, as kube's garbage collector resyncs its monitors.
const REDISCOVER_EVERY: Duration = Duration::from_secs(15);

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let graph: Shared = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut watched: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut next_discovery = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_discovery {
            match Discovery::new(ctx.client.clone()).run().await {
                Ok(d) => {
                    follow_kinds(&ctx, &d, &graph, &mut tasks, &mut watched, &stop);
                    next_discovery = tokio::time::Instant::now() + REDISCOVER_EVERY;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery failed; retrying");
                    next_discovery = tokio::time::Instant::now() + Duration::from_secs(2);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if watched.is_empty() {
            continue;
        }
        if let Err(e) = collect(&ctx.client, &graph).await {
            tracing::warn!(error = %e, "garbage collection pass failed");
        }
        // Finished watches (none end on their own) are only reaped here.
        while tasks.try_join_next().is_some() {}
    }
    tasks.shutdown().await;
}

/// Starts watching the kinds discovery lists that are not watched yet, and stops watching
/// the kinds it no longer lists.
fn follow_kinds(
    ctx: &Arc<Context>,
    discovery: &Discovery,
    graph: &Shared,
    tasks: &mut tokio::task::JoinSet<()>,
    watched: &mut HashMap<String, tokio::task::AbortHandle>,
    stop: &CancellationToken,
) {
    let mut listed = HashSet::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v));
            if !usable {
                continue;
            }
            let key = format!("{}/{}", ar.api_version, ar.plural);
            listed.insert(key.clone());
            if watched.contains_key(&key) {
                continue;
            }
            let namespaced = caps.scope == Scope::Namespaced;
            if let Ok(mut g) = graph.lock() {
                g.syncing.insert(key.clone());
            }
            let handle = tasks.spawn(watch_kind(
                ctx.client.clone(),
                Arc::new(ar),
                key.clone(),
                namespaced,
                graph.clone(),
                stop.clone(),
            ));
            watched.insert(key, handle);
        }
    }
    watched.retain(|key, handle| {
        let keep = listed.contains(key);
        if !keep {
            tracing::debug!(resource = %key, "no longer served; not followed");
            handle.abort();
            if let Ok(mut g) = graph.lock() {
                g.syncing.remove(key);
            }
        }
        keep
    });
}

async fn watch_kind(
    client: kube::Client,
    ar: Arc<ApiResource>,
    key: String,
    namespaced: bool,
    graph: Shared,
    stop: CancellationToken,
) {
    // Metadata only (PartialObjectMetadata): the graph needs nothing else.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &*ar);
    let mut synced = false;
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen_in_relist: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        let Ok(event) = event else { continue };
        let Ok(mut g) = graph.lock() else { return };
        match event {
            watcher::Event::Init => seen_in_relist.clear(),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                if let Some(uid) = o.uid() {
                    seen_in_relist.insert(uid.clone());
                    g.nodes.insert(uid, node_of(&o, &ar, namespaced));
                }
            }
            watcher::Event::Delete(o) => {
                if let Some(uid) = o.uid() {
                    g.nodes.remove(&uid);
                }
            }
            watcher::Event::InitDone => {
                // Objects of this kind not seen in a relist are gone.
                let kind = ar.kind.clone();
                let group = ar.group.clone();
                g.nodes.retain(|uid, n| {
                    !(n.resource.kind == kind && n.resource.group == group)
                        || seen_in_relist.contains(uid)
                });
                if !synced {
                    synced = true;
                    g.syncing.remove(&key);
                }
            }
        }
    }
}

fn node_of(o: &PartialObjectMeta<DynamicObject>, ar: &Arc<ApiResource>, namespaced: bool) -> Node {
    Node {
        resource: ar.clone(),
        namespaced,
        namespace: o.namespace(),
        name: o.name_any(),
        owners: o
            .owner_references()
            .iter()
            .map(|r| (r.uid.clone(), r.block_owner_deletion == Some(true)))
            .collect(),
        deleting: o.metadata.deletion_timestamp.is_some(),
        finalizers: o.finalizers().to_vec(),
    }
}

fn api_for(client: &kube::Client, n: &Node) -> Api<DynamicObject> {
    match (&n.namespace, n.namespaced) {
        (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &*n.resource),
        _ => Api::all_with(client.clone(), &*n.resource),
    }
}

/// What one pass acts on, read from the graph under its lock.
struct Pass {
    /// Objects to look at as kube's `attemptToDeleteItem` does: some owner is gone or is
    /// waiting for its dependents, or a foreground owner waits for them.
    attempts: Vec<Attempt>,
    /// Owners deleted in the foreground that no dependent blocks any more.
    unblocked: Vec<Node>,
    /// Owners deleted with `orphan`, with their dependents.
    orphaning: Vec<Deleting>,
}

/// One dependent and how its owners stand.
struct Attempt {
    uid: String,
    node: Node,
    /// Owners (uids) that exist and are not waiting for their dependents.
    solid: usize,
    /// Owners that are gone or being deleted in the foreground: their references go.
    stale: Vec<String>,
    waiting: bool,
    /// One of its own dependents is itself waiting for its dependents (a possible cycle).
    dependent_waiting: bool,
}

fn waits_for_dependents(n: &Node) -> bool {
    n.deleting && n.finalizers.iter().any(|f| f == "foregroundDeletion")
}

fn plan(g: &Graph) -> Pass {
    let dependents_of = |uid: &str| -> Vec<Dependent> {
        g.nodes
            .iter()
            .filter_map(|(u, n)| {
                n.owners
                    .iter()
                    .find(|(o, _)| o == uid)
                    .map(|(_, block)| (u.clone(), n.clone(), *block))
            })
            .collect()
    };
    let attempt = |uid: &str, n: &Node| -> Option<Attempt> {
        let (mut solid, mut stale, mut waiting) = (0, Vec::new(), false);
        for (owner, _) in &n.owners {
            match g.nodes.get(owner) {
                None => stale.push(owner.clone()),
                Some(o) if waits_for_dependents(o) => {
                    waiting = true;
                    stale.push(owner.clone());
                }
                Some(_) => solid += 1,
            }
        }
        if stale.is_empty() {
            return None;
        }
        let dependent_waiting = waiting
            && dependents_of(uid)
                .iter()
                .any(|(_, d, _)| waits_for_dependents(d));
        Some(Attempt {
            uid: uid.to_string(),
            node: n.clone(),
            solid,
            stale,
            waiting,
            dependent_waiting,
        })
    };
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut unblocked = Vec::new();
    // Foreground owners: done when no dependent blocks them; else their blocking
    // dependents are attempted (unless they wait for their own dependents).
    for (uid, owner) in g.nodes.iter().filter(|(_, n)| waits_for_dependents(n)) {
        let blocking: Vec<Dependent> = dependents_of(uid)
            .into_iter()
            .filter(|(_, _, block)| *block)
            .collect();
        if blocking.is_empty() {
            unblocked.push(owner.clone());
        }
        for (du, d, _) in blocking {
            if !waits_for_dependents(&d) && !d.deleting && seen.insert(du.clone()) {
                attempts.extend(attempt(&du, &d));
            }
        }
    }
    // Objects with a gone or waiting owner; objects being deleted are not touched.
    for (uid, n) in g
        .nodes
        .iter()
        .filter(|(_, n)| !n.owners.is_empty() && !n.deleting)
    {
        if seen.insert(uid.clone()) {
            attempts.extend(attempt(uid, n));
        }
    }
    let orphaning: Vec<Deleting> = g
        .nodes
        .iter()
        .filter(|(_, n)| n.deleting && n.finalizers.iter().any(|f| f == "orphan"))
        .map(|(u, n)| (u.clone(), n.clone(), dependents_of(u)))
        .collect();
    Pass {
        attempts,
        unblocked,
        orphaning,
    }
}

/// One pass over the graph.
async fn collect(client: &kube::Client, graph: &Shared) -> Result<(), kube::Error> {
    let pass = {
        let Ok(g) = graph.lock() else { return Ok(()) };
        if !g.syncing.is_empty() {
            return Ok(());
        }
        plan(&g)
    };
    for a in pass.attempts {
        attempt_to_delete(client, a).await?;
    }
    for owner in pass.unblocked {
        remove_finalizer(client, &owner, "foregroundDeletion").await?;
    }
    for (owner_uid, owner, dependents) in pass.orphaning {
        for (_, d, _) in &dependents {
            edit_owner_references(client, d, |refs| refs.retain(|r| r.uid != owner_uid)).await?;
        }
        remove_finalizer(client, &owner, "orphan").await?;
    }
    Ok(())
}

/// kube's `attemptToDeleteItem`: a dependent with an owner still standing only loses its
/// references to the gone and waiting owners; otherwise it is deleted (in the foreground
/// when an owner waits for it, after making its own references non-blocking if one of its
/// dependents waits too, which breaks ownership cycles).
async fn attempt_to_delete(client: &kube::Client, a: Attempt) -> Result<(), kube::Error> {
    let n = &a.node;
    if a.solid > 0 {
        tracing::info!(kind = %n.resource.kind, namespace = ?n.namespace, name = %n.name, "removing references to owners that are gone or being deleted");
        return edit_owner_references(client, n, |refs| refs.retain(|r| !a.stale.contains(&r.uid)))
            .await;
    }
    if a.dependent_waiting {
        edit_owner_references(client, n, |refs| {
            for r in refs.iter_mut() {
                r.block_owner_deletion = Some(false);
            }
        })
        .await?;
    }
    let has = |f: &str| n.finalizers.iter().any(|x| x == f);
    let policy = if has("orphan") {
        DeleteParams::orphan()
    } else if a.waiting || has("foregroundDeletion") {
        DeleteParams::foreground()
    } else {
        DeleteParams::background()
    };
    // The graph may lag; delete only what is still the object we saw (uid precondition).
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(a.uid.clone()),
            resource_version: None,
        }),
        ..policy
    };
    tracing::info!(kind = %n.resource.kind, namespace = ?n.namespace, name = %n.name, "deleting an object whose owners are gone or being deleted");
    ignore_gone(api_for(client, n).delete(&n.name, &dp).await.map(|_| ()))
}

/// Rewrites an object's ownerReferences (read fresh, written at that resourceVersion).
async fn edit_owner_references(
    client: &kube::Client,
    n: &Node,
    edit: impl FnOnce(&mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>),
) -> Result<(), kube::Error> {
    let api = api_for(client, n);
    let Some(obj) = api.get_opt(&n.name).await? else {
        return Ok(());
    };
    let mut refs = obj.owner_references().to_vec();
    edit(&mut refs);
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.resource_version()}});
    ignore_gone(
        api.patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    )
}

async fn remove_finalizer(
    client: &kube::Client,
    n: &Node,
    finalizer: &str,
) -> Result<(), kube::Error> {
    let api = api_for(client, n);
    let Some(obj) = api.get_opt(&n.name).await? else {
        return Ok(());
    };
    let rest: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
    ignore_gone(
        api.patch(&n.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    )
}

/// Not found and conflicts are the graph lagging: the next pass sees the truth.
fn ignore_gone(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other,
    }
}
