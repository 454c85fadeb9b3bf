//! The garbage collector: a graph of every object's ownerReferences, kept from watches of
//! every listable, deletable resource the API serves. Objects whose owners are all gone are
//! deleted (background propagation); an owner being deleted in the foreground
//! (`foregroundDeletion` finalizer) first loses its blocking dependents, one deleted with
//! `orphan` first has its dependents' references to it removed; then the finalizer goes.
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

/// One pass over the graph.
async fn collect(client: &kube::Client, graph: &Shared) -> Result<(), kube::Error> {
    let (orphans, foreground, orphaning) = {
        let Ok(g) = graph.lock() else { return Ok(()) };
        if !g.syncing.is_empty() {
            return Ok(());
        }
        // Dependents whose every owner is gone.
        let orphans: Vec<(String, Node)> = g
            .nodes
            .iter()
            .filter(|(_, n)| !n.owners.is_empty() && !n.deleting)
            .filter(|(_, n)| n.owners.iter().all(|(o, _)| !g.nodes.contains_key(o)))
            .map(|(u, n)| (u.clone(), n.clone()))
            .collect();
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
        let foreground: Vec<Deleting> = g
            .nodes
            .iter()
            .filter(|(_, n)| n.deleting && n.finalizers.iter().any(|f| f == "foregroundDeletion"))
            .map(|(u, n)| (u.clone(), n.clone(), dependents_of(u)))
            .collect();
        let orphaning: Vec<Deleting> = g
            .nodes
            .iter()
            .filter(|(_, n)| n.deleting && n.finalizers.iter().any(|f| f == "orphan"))
            .map(|(u, n)| (u.clone(), n.clone(), dependents_of(u)))
            .collect();
        (orphans, foreground, orphaning)
    };
    for (uid, n) in orphans {
        // The graph may lag; delete only what is still the object we saw (uid precondition).
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        tracing::info!(kind = %n.resource.kind, namespace = ?n.namespace, name = %n.name, "deleting an object whose owners are gone");
        ignore_gone(api_for(client, &n).delete(&n.name, &dp).await.map(|_| ()))?;
    }
    for (_, owner, dependents) in foreground {
        let blocking: Vec<&Dependent> = dependents.iter().filter(|(_, _, b)| *b).collect();
        for (uid, d, _) in &dependents {
            if !d.deleting {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::foreground()
                };
                ignore_gone(api_for(client, d).delete(&d.name, &dp).await.map(|_| ()))?;
            }
        }
        if blocking.is_empty() {
            remove_finalizer(client, &owner, "foregroundDeletion").await?;
        }
    }
    for (owner_uid, owner, dependents) in orphaning {
        for (_, d, _) in &dependents {
            let api = api_for(client, d);
            if let Some(obj) = api.get_opt(&d.name).await? {
                let refs: Vec<_> = obj
                    .owner_references()
                    .iter()
                    .filter(|r| r.uid != owner_uid)
                    .cloned()
                    .collect();
                let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.resource_version()}});
                ignore_gone(
                    api.patch(&d.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ()),
                )?;
            }
        }
        remove_finalizer(client, &owner, "orphan").await?;
    }
    Ok(())
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
