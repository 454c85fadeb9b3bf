//! NetworkPolicy enforcement on this node (k3s embeds kube-router for it): Pods, Namespaces
//! and NetworkPolicies watched through the API, the rules for this node's pods compiled
//! (`compile`) into the `ip krab-policy` table (and `ip6 krab-policy` once a local pod has
//! an IPv6 address) and swapped in whole, in one netlink batch per table, whenever they
//! change. Switched off with `--disable-network-policy`.
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
use crate::agent::service_proxy::rules::{ChainDef, Family};

pub const TABLE: &str = "krab-policy";

enum Input {
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Policy(Box<watcher::Event<NetworkPolicy>>),
}

fn pod_info(p: &Pod) -> Option<PodInfo> {
    let status = p.status.as_ref()?;
    let mut ips: Vec<std::net::IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.push(status.pod_ip.as_ref()?.parse().ok()?);
    }
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    Some(PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        ips,
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

/// Replaces the whole table of `family` with `chains` in one transaction.
fn apply(family: Family, chains: &[ChainDef]) -> Result<(), nft::Error> {
    let mut tx = Tx::for_table(TABLE, family)?;
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

/// Removes the table of `family` (gone already is fine).
fn remove(family: Family) -> Result<(), nft::Error> {
    let mut tx = Tx::for_table(TABLE, family)?;
    tx.add_table();
    tx.delete_table();
    nft::send(&tx.finalize())
}

/// Removes both tables (`krab agent --cleanup`).
pub fn cleanup() -> Result<(), nft::Error> {
    remove(Family::V4)?;
    remove(Family::V6)
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
    // What each family's table holds as far as we know (absent: to be programmed).
    let mut applied: BTreeMap<Family, Vec<ChainDef>> = BTreeMap::new();
    let mut check = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick() => {
                // Re-applied if someone removed a table.
                for family in applied.keys().copied().collect::<Vec<_>>() {
                    let gone = tokio::task::spawn_blocking(move || table_missing(family)).await.unwrap_or(false);
                    if gone {
                        tracing::warn!(table = %format!("{} {TABLE}", family.keyword()), "the network policy table was removed; programming it again");
                        applied.remove(&family);
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
        // IPv6 is policed once a pod of this node has an IPv6 address.
        let ipv6 = infos
            .iter()
            .any(|p| p.node == node && p.ips.iter().any(|ip| ip.is_ipv6()));
        for family in [Family::V4, Family::V6] {
            if family == Family::V6 && !ipv6 {
                continue;
            }
            let chains = compile::compile(&policies, &infos, &labels, &node, family);
            if applied.get(&family) == Some(&chains) {
                continue;
            }
            let to_apply = chains.clone();
            match tokio::task::spawn_blocking(move || apply(family, &to_apply)).await? {
                Ok(()) => {
                    tracing::debug!(
                        family = family.keyword(),
                        chains = chains.len(),
                        "network policy rules applied"
                    );
                    applied.insert(family, chains);
                }
                Err(e) => {
                    tracing::warn!(family = family.keyword(), error = %e, "programming network policy rules failed");
                    applied.remove(&family);
                }
            }
        }
    }
}

fn table_missing(family: Family) -> bool {
    // The base chain of the table; a missing table reads as no rules at all.
    matches!(nft::count_rules_in(TABLE, family, "forward"), Ok(None))
}
