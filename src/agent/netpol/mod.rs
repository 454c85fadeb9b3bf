//! NetworkPolicy enforcement on this node (k3s embeds kube-router for it): Pods, Namespaces
//! and NetworkPolicies watched through the API, the rules for this node's pods compiled
//! (`compile`) into the `ip krab-policy` table and swapped in whole, in one netlink batch,
//! whenever they change. Switched off with `--disable-network-policy`.
pub mod compile;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio_util::sync::CancellationToken;

use self::compile::PodInfo;
use crate::agent::mirror::{object_key, Mirror};
use crate::agent::service_proxy::nft::{self, Tx};
use crate::agent::service_proxy::rules::ChainDef;

pub const TABLE: &str = "krab-policy";

enum Input {
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Policy(Box<watcher::Event<NetworkPolicy>>),
}

fn pod_info(p: &Pod) -> Option<PodInfo> {
    let status = p.status.as_ref()?;
    let ip = status.pod_ip.as_ref()?.parse().ok()?;
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    Some(PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        ip,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        node: spec.node_name.clone().unwrap_or_default(),
        ports: spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|port| {
                Some((
                    port.name.clone()?,
                    u16::try_from(port.container_port).ok()?,
                    port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect(),
    })
}

/// Replaces the whole table with `chains` in one transaction.
fn apply(chains: &[ChainDef]) -> Result<(), nft::Error> {
    let mut tx = Tx::for_table(TABLE)?;
    tx.add_table();
    tx.delete_table();
    tx.add_table();
    for c in chains.iter().filter(|c| c.hook.is_none()) {
        tx.add_chain_def(c)?;
    }
    for c in chains.iter().filter(|c| c.hook.is_some()) {
        tx.add_chain_def(c)?;
    }
    nft::send(&tx.finalize())
}

/// Removes the table (`krab agent --cleanup`).
pub fn cleanup() -> Result<(), nft::Error> {
    let mut tx = Tx::for_table(TABLE)?;
    tx.add_table();
    tx.delete_table();
    nft::send(&tx.finalize())
}

/// Enforces the cluster's NetworkPolicies on this node's pods until shutdown.
pub async fn run(
    client: kube::Client,
    node: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !crate::agent::mirror::wait_until_listable(
        &Api::<NetworkPolicy>::all(client.clone()),
        &shutdown,
    )
    .await
    {
        return Ok(());
    }
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Input::Pod(Box::new(e))));
    let namespaces = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Input::Namespace(Box::new(e))));
    let policies = watcher(
        Api::<NetworkPolicy>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Input::Policy(Box::new(e))));
    let mut events =
        futures::stream::select(futures::stream::select(pods, namespaces), policies).boxed();
    let mut pod_mirror: Mirror<Pod> = Mirror::new();
    let mut ns_mirror: Mirror<Namespace> = Mirror::new();
    let mut policy_mirror: Mirror<NetworkPolicy> = Mirror::new();
    let mut applied: Option<Vec<ChainDef>> = None;
    let mut check = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick() => {
                // Re-applied if someone removed the table.
                if applied.is_some() {
                    let gone = tokio::task::spawn_blocking(table_missing).await.unwrap_or(false);
                    if gone {
                        tracing::warn!("the krab-policy table was removed; programming it again");
                        applied = None;
                    }
                }
            }
            ev = events.next() => {
                let Some(ev) = ev else { return Ok(()) };
                match ev {
                    Ok(Input::Pod(e)) => { pod_mirror.apply(*e, |p| object_key(&p.metadata)); }
                    Ok(Input::Namespace(e)) => {
                        ns_mirror.apply(*e, |n| n.metadata.name.clone().unwrap_or_default());
                    }
                    Ok(Input::Policy(e)) => { policy_mirror.apply(*e, |p| object_key(&p.metadata)); }
                    Err(e) => {
                        tracing::warn!(error = %e, "network policy watch failed; retrying");
                        continue;
                    }
                }
            }
        }
        if !(pod_mirror.synced && ns_mirror.synced && policy_mirror.synced) {
            continue;
        }
        let infos: Vec<PodInfo> = pod_mirror
            .now
            .values()
            .filter_map(|p| pod_info(p))
            .collect();
        let labels: BTreeMap<String, BTreeMap<String, String>> = ns_mirror
            .now
            .iter()
            .map(|(k, n)| (k.clone(), n.metadata.labels.clone().unwrap_or_default()))
            .collect();
        let mut policies: Vec<&NetworkPolicy> =
            policy_mirror.now.values().map(|p| p.as_ref()).collect();
        policies.sort_by_key(|p| object_key(&p.metadata));
        let mut infos = infos;
        infos.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let chains = compile::compile(&policies, &infos, &labels, &node);
        if applied.as_ref() == Some(&chains) {
            continue;
        }
        let to_apply = chains.clone();
        match tokio::task::spawn_blocking(move || apply(&to_apply)).await? {
            Ok(()) => {
                tracing::debug!(chains = chains.len(), "network policy rules applied");
                applied = Some(chains);
            }
            Err(e) => {
                tracing::warn!(error = %e, "programming network policy rules failed");
                applied = None;
            }
        }
    }
}

fn table_missing() -> bool {
    // The base chain of the table; a missing table reads as no rules at all.
    matches!(nft::count_rules_in(TABLE, "forward"), Ok(None))
}
