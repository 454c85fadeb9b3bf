//! The service proxy (kube-proxy's nftables mode, in-process): watches Services,
//! EndpointSlices and Nodes through the API and keeps the `ip krab` table (and, on a
//! dual-stack cluster, `ip6 krab`) in line with them, one atomic netlink batch per table and
//! change, touching only the services that changed; re-creates a table if someone deletes or
//! flushes it. Nothing else in nftables is touched.
pub mod compile;
pub mod nft;
pub mod rules;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio_util::sync::CancellationToken;

use self::compile::ServiceRules;
use self::nft::{Key, Tx};
use self::rules::{Family, Skeleton, CLUSTER_GUARD, NAT_PREROUTING, SERVICE_IPS, SERVICE_PORTS};
use crate::agent::mirror::{object_key, Mirror, SliceIndex};

/// What the proxy is told.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The pod ranges, one per IP family.
    pub cluster_cidrs: Vec<IpNet>,
    /// The service ranges, one per IP family: each family with both ranges gets a table.
    pub service_cidrs: Vec<IpNet>,
    /// The cluster DNS address and where this node's DNS server answers.
    pub cluster_dns: Option<(IpAddr, IpAddr, u16)>,
    /// This node's name (endpoints on it are the local ones).
    pub node_name: Option<String>,
}

impl ProxyConfig {
    /// The cluster DNS address is forwarded to `<node-ip>:<dns-port>` (127.0.0.1 when the
    /// node's address is not of the DNS address's family).
    pub fn new(
        cluster: &crate::cidrs::Cidrs,
        service: &crate::cidrs::Cidrs,
        cluster_dns: IpAddr,
        node_ip: &str,
        dns_port: u16,
        node_name: &str,
    ) -> ProxyConfig {
        let local = node_ip
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| ip.is_ipv4() == cluster_dns.is_ipv4())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        ProxyConfig {
            cluster_cidrs: cluster.all(),
            service_cidrs: service.all(),
            cluster_dns: Some((cluster_dns, local, dns_port)),
            node_name: Some(node_name.to_string()),
        }
    }

    /// The table of each family the cluster has.
    fn tables(&self) -> Vec<Table> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|family| {
                let of = |list: &[IpNet]| {
                    list.iter()
                        .find(|n| Family::of(&n.addr()) == family)
                        .copied()
                };
                Some(Table {
                    family,
                    cluster_cidr: of(&self.cluster_cidrs)?,
                    service_cidr: of(&self.service_cidrs)?,
                    cluster_dns: self
                        .cluster_dns
                        .filter(|(ip, _, _)| Family::of(ip) == family),
                    applied: Applied::default(),
                })
            })
            .collect()
    }
}

/// What is in the kernel now, as far as the proxy knows.
#[derive(Default)]
struct Applied {
    services: HashMap<String, ServiceRules>,
    ip_owner: HashMap<IpAddr, String>,
    port_owner: HashMap<u16, String>,
    guard: Vec<rules::Rule>,
    /// Rules of the skeleton's other chains.
    skeleton_rules: usize,
    /// False until a full sync succeeds (and again after a failure or a flush).
    whole: bool,
}

/// One family's table: its ranges and what it holds.
struct Table {
    family: Family,
    cluster_cidr: IpNet,
    service_cidr: IpNet,
    cluster_dns: Option<(IpAddr, IpAddr, u16)>,
    applied: Applied,
}

pub struct ServiceProxy {
    config: ProxyConfig,
    services: Mirror<Service>,
    slices: Mirror<EndpointSlice>,
    nodes: Mirror<Node>,
    index: SliceIndex,
    tables: Vec<Table>,
}

/// How one sync went (for logs and the benchmark).
#[derive(Debug, Clone, Copy)]
pub struct SyncReport {
    pub services: usize,
    pub messages: usize,
    pub full: bool,
    pub elapsed: Duration,
}

impl ServiceProxy {
    pub fn new(config: ProxyConfig) -> ServiceProxy {
        ServiceProxy {
            tables: config.tables(),
            config,
            services: Mirror::new(),
            slices: Mirror::new(),
            nodes: Mirror::new(),
            index: SliceIndex::default(),
        }
    }

    fn skeleton(&self, t: &Table) -> Skeleton {
        let mut cidrs: Vec<IpNet> = self
            .nodes
            .now
            .values()
            .flat_map(|n| {
                let spec = n.spec.clone().unwrap_or_default();
                spec.pod_cidrs
                    .unwrap_or_default()
                    .into_iter()
                    .chain(spec.pod_cidr)
                    .filter_map(|c| c.parse::<IpNet>().ok())
                    .filter(|c| Family::of(&c.addr()) == t.family)
                    .collect::<Vec<_>>()
            })
            .collect();
        cidrs.sort();
        cidrs.dedup();
        Skeleton {
            family: t.family,
            cluster_cidr: t.cluster_cidr,
            service_cidr: t.service_cidr,
            node_pod_cidrs: cidrs,
            cluster_dns: t.cluster_dns,
        }
    }

    fn desired(&self, t: &Table, key: &str) -> ServiceRules {
        let Some(svc) = self.services.now.get(key) else {
            return ServiceRules::default();
        };
        let slices = self.index.of(key);
        compile::compile(
            svc,
            &slices,
            t.cluster_cidr,
            t.cluster_dns.map(|d| d.0),
            self.config.node_name.as_deref(),
        )
    }

    /// Rebuilds every table, each in one transaction (first sync, after a failure or a
    /// flush).
    pub fn full_sync(&mut self) -> Result<SyncReport, nft::Error> {
        self.each_table(|proxy, t| proxy.full_sync_table(t))
    }

    /// Brings the given services (and the guard) in line, one transaction per table.
    pub fn sync(&mut self, keys: &BTreeSet<String>) -> Result<SyncReport, nft::Error> {
        self.each_table(|proxy, t| {
            if t.applied.whole {
                proxy.sync_table(t, keys)
            } else {
                proxy.full_sync_table(t)
            }
        })
    }

    /// Runs `f` on every table; every table is tried, the first error is returned.
    fn each_table(
        &mut self,
        mut f: impl FnMut(&Self, &mut Table) -> Result<SyncReport, nft::Error>,
    ) -> Result<SyncReport, nft::Error> {
        let started = Instant::now();
        let mut tables = std::mem::take(&mut self.tables);
        let mut report = SyncReport {
            services: 0,
            messages: 0,
            full: false,
            elapsed: Duration::ZERO,
        };
        let mut first_error = None;
        for t in &mut tables {
            match f(self, t) {
                Ok(r) => {
                    report.services = report.services.max(r.services);
                    report.messages += r.messages;
                    report.full |= r.full;
                }
                Err(e) => {
                    t.applied.whole = false;
                    first_error.get_or_insert(e);
                }
            }
        }
        self.tables = tables;
        report.elapsed = started.elapsed();
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Rebuilds one table in one transaction.
    fn full_sync_table(&self, t: &mut Table) -> Result<SyncReport, nft::Error> {
        let started = Instant::now();
        let skeleton = self.skeleton(t).chains();
        let mut keys: Vec<String> = self.services.now.keys().cloned().collect();
        keys.sort();
        let mut next = Applied::default();
        let mut wanted = Vec::new();
        for k in &keys {
            let mut r = self.desired(t, k);
            claim(&mut next, k, &mut r);
            wanted.push((k.clone(), r));
        }
        let mut tx = Tx::new(t.family);
        tx.add_table();
        tx.delete_table();
        tx.add_table();
        tx.add_maps(SERVICE_IPS, SERVICE_PORTS)?;
        // Sets and chains first (rules refer to them), then rules, then map elements.
        for (_, r) in &wanted {
            for (set, addrs) in &r.sets {
                tx.add_address_set(set)?;
                tx.add_addresses(set, addrs)?;
            }
            for (set, timeout) in &r.affinity_sets {
                tx.add_affinity_set(set, *timeout)?;
            }
        }
        let service_chains = wanted.iter().flat_map(|(_, r)| r.chains.iter());
        for c in skeleton.iter().filter(|c| c.hook.is_none()) {
            tx.add_chain(&c.name, None)?;
        }
        for c in service_chains.clone() {
            tx.add_chain(&c.name, None)?;
        }
        for c in service_chains {
            for r in &c.rules {
                tx.add_rule(&c.name, r)?;
            }
        }
        let mut ips = Vec::new();
        let mut ports = Vec::new();
        for (_, r) in &wanted {
            ips.extend(r.ips.iter().map(|(ip, c)| (Key::Ip(*ip), c.clone())));
            ports.extend(r.ports.iter().map(|(p, c)| (Key::Port(*p), c.clone())));
        }
        tx.add_elements(SERVICE_IPS, &ips)?;
        tx.add_elements(SERVICE_PORTS, &ports)?;
        for c in skeleton.iter().filter(|c| c.hook.is_none()) {
            for r in &c.rules {
                tx.add_rule(&c.name, r)?;
            }
        }
        // Hooked chains last: the table starts filtering only once it is complete.
        for c in skeleton.iter().filter(|c| c.hook.is_some()) {
            tx.add_chain_def(c)?;
        }
        let messages = tx.messages;
        nft::send(&tx.finalize())?;
        next.guard = skeleton
            .iter()
            .find(|c| c.name == CLUSTER_GUARD)
            .map(|c| c.rules.clone())
            .unwrap_or_default();
        next.skeleton_rules = skeleton
            .iter()
            .filter(|c| c.name != CLUSTER_GUARD)
            .map(|c| c.rules.len())
            .sum();
        next.services = wanted.into_iter().collect();
        next.whole = true;
        t.applied = next;
        Ok(SyncReport {
            services: keys.len(),
            messages,
            full: true,
            elapsed: started.elapsed(),
        })
    }

    /// Brings the given services (and the guard) of one table in line, in one transaction.
    fn sync_table(&self, t: &mut Table, keys: &BTreeSet<String>) -> Result<SyncReport, nft::Error> {
        let started = Instant::now();
        let mut tx = Tx::new(t.family);
        let guard = self
            .skeleton(t)
            .chains()
            .into_iter()
            .find(|c| c.name == CLUSTER_GUARD)
            .map(|c| c.rules)
            .unwrap_or_default();
        let guard_changed = guard != t.applied.guard;
        if guard_changed {
            tx.flush_chain(CLUSTER_GUARD)?;
            for r in &guard {
                tx.add_rule(CLUSTER_GUARD, r)?;
            }
        }
        let mut changes = Vec::new();
        for k in keys {
            let old = t.applied.services.get(k).cloned().unwrap_or_default();
            let mut new = self.desired(t, k);
            // Give up what this service held, then claim again (a lost claim stays lost).
            release(&mut t.applied, k, &old);
            claim(&mut t.applied, k, &mut new);
            if new == old {
                continue;
            }
            changes.push((k.clone(), old, new));
        }
        if changes.is_empty() && !guard_changed {
            return Ok(SyncReport {
                services: 0,
                messages: 0,
                full: false,
                elapsed: started.elapsed(),
            });
        }
        // 1. map elements that go away or change target
        let mut del_ips = Vec::new();
        let mut del_ports = Vec::new();
        let mut add_ips = Vec::new();
        let mut add_ports = Vec::new();
        for (_, old, new) in &changes {
            for (ip, c) in &old.ips {
                if new.ips.get(ip) != Some(c) {
                    del_ips.push(Key::Ip(*ip));
                }
            }
            for (p, c) in &old.ports {
                if new.ports.get(p) != Some(c) {
                    del_ports.push(Key::Port(*p));
                }
            }
            for (ip, c) in &new.ips {
                if old.ips.get(ip) != Some(c) {
                    add_ips.push((Key::Ip(*ip), c.clone()));
                }
            }
            for (p, c) in &new.ports {
                if old.ports.get(p) != Some(c) {
                    add_ports.push((Key::Port(*p), c.clone()));
                }
            }
        }
        tx.delete_elements(SERVICE_IPS, &del_ips)?;
        tx.delete_elements(SERVICE_PORTS, &del_ports)?;
        for (_, old, new) in &changes {
            let new_names: BTreeSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
            let old_names: BTreeSet<&str> = old.chains.iter().map(|c| c.name.as_str()).collect();
            // 2. empty what exists; sets get their new members
            for c in &old.chains {
                tx.flush_chain(&c.name)?;
            }
            for (set, timeout) in &new.affinity_sets {
                if old.affinity_sets.get(set) != Some(timeout) {
                    if old.affinity_sets.contains_key(set) {
                        // A new timeout: the set is made again (its clients forgotten).
                        tx.delete_set(set)?;
                    }
                    tx.add_affinity_set(set, *timeout)?;
                }
            }
            for (set, addrs) in &new.sets {
                match old.sets.get(set) {
                    Some(before) if before == addrs => {}
                    Some(_) => {
                        tx.flush_set(set)?;
                        tx.add_addresses(set, addrs)?;
                    }
                    None => {
                        tx.add_address_set(set)?;
                        tx.add_addresses(set, addrs)?;
                    }
                }
            }
            // 3. create what is new
            for c in new
                .chains
                .iter()
                .filter(|c| !old_names.contains(c.name.as_str()))
            {
                tx.add_chain(&c.name, None)?;
            }
            // 4. fill
            for c in &new.chains {
                for r in &c.rules {
                    tx.add_rule(&c.name, r)?;
                }
            }
            // 5. remove what is gone (emptied above, no longer referenced)
            for c in old
                .chains
                .iter()
                .filter(|c| !new_names.contains(c.name.as_str()))
            {
                tx.delete_chain(&c.name)?;
            }
        }
        // 6. map elements that are new or changed
        tx.add_elements(SERVICE_IPS, &add_ips)?;
        tx.add_elements(SERVICE_PORTS, &add_ports)?;
        let messages = tx.messages;
        if let Err(e) = nft::send(&tx.finalize()) {
            t.applied.whole = false;
            return Err(e);
        }
        t.applied.guard = guard;
        let n = changes.len();
        for (k, _, new) in changes {
            if new == ServiceRules::default() {
                t.applied.services.remove(&k);
            } else {
                t.applied.services.insert(k, new);
            }
        }
        Ok(SyncReport {
            services: n,
            messages,
            full: false,
            elapsed: started.elapsed(),
        })
    }

    /// Takes in one Service watch event; returns the services to sync.
    pub fn on_service(&mut self, ev: watcher::Event<Service>) -> Vec<String> {
        self.services.apply(ev, |s| object_key(&s.metadata))
    }

    /// Takes in one EndpointSlice watch event; returns the services to sync.
    pub fn on_slice(&mut self, ev: watcher::Event<EndpointSlice>) -> Vec<String> {
        let keys = self.slices.apply(ev, |s| object_key(&s.metadata));
        if keys.is_empty() {
            return keys;
        }
        self.index.update(&keys, &self.slices)
    }

    /// Takes in one Node watch event (nodes' pod ranges shape the guard).
    pub fn on_node(&mut self, ev: watcher::Event<Node>) {
        self.nodes
            .apply(ev, |n| n.metadata.name.clone().unwrap_or_default());
    }

    /// Rules in the tables as last programmed (skeleton and services).
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .map(|t| {
                t.applied.guard.len()
                    + t.applied.skeleton_rules
                    + t.applied
                        .services
                        .values()
                        .flat_map(|r| r.chains.iter())
                        .map(|c| c.rules.len())
                        .sum::<usize>()
            })
            .sum()
    }

    fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.nodes.synced
    }
}

/// Records which map keys a service holds; keys another service holds are dropped from
/// `rules` (two services cannot share a cluster IP or a node port).
fn claim(applied: &mut Applied, key: &str, rules: &mut ServiceRules) {
    rules.ips.retain(|ip, _| match applied.ip_owner.get(ip) {
        Some(owner) if owner != key => {
            tracing::warn!(service = %key, ip = %ip, owner = %owner, "address already used by another service; skipped");
            false
        }
        _ => true,
    });
    rules.ports.retain(|p, _| match applied.port_owner.get(p) {
        Some(owner) if owner != key => {
            tracing::warn!(service = %key, port = %p, owner = %owner, "port already used by another service; skipped");
            false
        }
        _ => true,
    });
    for ip in rules.ips.keys() {
        applied.ip_owner.insert(*ip, key.to_string());
    }
    for p in rules.ports.keys() {
        applied.port_owner.insert(*p, key.to_string());
    }
}

fn release(applied: &mut Applied, key: &str, rules: &ServiceRules) {
    for ip in rules.ips.keys() {
        if applied.ip_owner.get(ip).map(String::as_str) == Some(key) {
            applied.ip_owner.remove(ip);
        }
    }
    for p in rules.ports.keys() {
        if applied.port_owner.get(p).map(String::as_str) == Some(key) {
            applied.port_owner.remove(p);
        }
    }
}

/// The kernel settings service traffic needs: forwarding, and bridged pod traffic passing
/// through nftables (so replies from a pod on the same bridge are un-NATed).
fn ensure_sysctls(ipv6: bool) {
    let mut settings = vec![
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
    ];
    if ipv6 {
        settings.push(("/proc/sys/net/ipv6/conf/all/forwarding", "1"));
        settings.push(("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1"));
    }
    for (path, value) in settings {
        match std::fs::read_to_string(path) {
            Ok(v) if v.trim() == value => {}
            Ok(_) => {
                if let Err(e) = std::fs::write(path, value) {
                    tracing::warn!(path, error = %e, "cannot set a kernel setting services need");
                }
            }
            Err(e) => {
                tracing::warn!(path, error = %e, "kernel setting missing (is br_netfilter loaded?); pods on one node may not reach each other through services")
            }
        }
    }
}

/// Deletes everything the proxy programmed (`krab agent --cleanup`): the families whose
/// table was there.
pub fn cleanup() -> Result<Vec<Family>, nft::Error> {
    let mut removed = Vec::new();
    for family in [Family::V4, Family::V6] {
        if nft::count_rules(family, NAT_PREROUTING)?.is_none() {
            continue;
        }
        let mut tx = Tx::new(family);
        tx.add_table();
        tx.delete_table();
        nft::send(&tx.finalize())?;
        removed.push(family);
    }
    Ok(removed)
}

enum Input {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Node(Box<watcher::Event<Node>>),
}

/// Runs the proxy until shutdown; the rules stay in place when it stops (pods keep working).
pub async fn run(
    client: kube::Client,
    config: ProxyConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut proxy = ServiceProxy::new(config);
    let ipv6 = proxy.tables.iter().any(|t| t.family == Family::V6);
    tokio::task::spawn_blocking(move || ensure_sysctls(ipv6)).await?;
    // The guard before anything else: nothing from the cluster ranges leaks out while the
    // first lists load (or while the API server cannot be reached).
    if let Err(e) = tokio::task::block_in_place(|| proxy.full_sync()) {
        tracing::warn!(error = %e, "cannot program the service rules' skeleton yet");
    }
    let mut pending = true;
    if !crate::agent::mirror::wait_until_listable(&Api::<Service>::all(client.clone()), &shutdown)
        .await
    {
        return Ok(());
    }
    let svc = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Input::Service(Box::new(e))));
    let eps = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(|e| Input::Slice(Box::new(e))));
    let nodes = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .map(|e| e.map(|e| Input::Node(Box::new(e))));
    let mut events = futures::stream::select(futures::stream::select(svc, eps), nodes).boxed();
    let mut check = tokio::time::interval(Duration::from_secs(5));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut retry_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = events.next() => {
                let Some(ev) = ev else { return Ok(()) };
                let mut batch = vec![ev];
                // Everything already waiting goes into the same transaction.
                while let Some(Some(ev)) = events.next().now_or_never() {
                    batch.push(ev);
                    if batch.len() >= 10_000 {
                        break;
                    }
                }
                for ev in batch {
                    match ev {
                        Ok(Input::Service(e)) => dirty.extend(proxy.on_service(*e)),
                        Ok(Input::Slice(e)) => dirty.extend(proxy.on_slice(*e)),
                        Ok(Input::Node(e)) => {
                            proxy.on_node(*e);
                            pending = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "service proxy watch failed; retrying"),
                    }
                }
                if proxy.synced() && (!dirty.is_empty() || pending) {
                    retry_at = Some(tokio::time::Instant::now());
                }
            }
            _ = check.tick() => {
                for t in proxy.tables.iter_mut().filter(|t| t.applied.whole) {
                    let family = t.family;
                    match tokio::task::spawn_blocking(move || nft::count_rules(family, NAT_PREROUTING)).await? {
                        Ok(Some(n)) if n > 0 => {}
                        Ok(_) => {
                            tracing::warn!(table = %format!("{} krab", family.keyword()), "the nftables table was deleted or flushed; programming it again");
                            t.applied.whole = false;
                            retry_at = Some(tokio::time::Instant::now());
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot read the krab table"),
                    }
                }
            }
            _ = retry => {
                retry_at = None;
                // Before the lists are in, only the skeleton (an empty service set).
                let keys = std::mem::take(&mut dirty);
                let result = tokio::task::block_in_place(|| {
                    if proxy.synced() { proxy.sync(&keys) } else { proxy.full_sync() }
                });
                pending = false;
                match result {
                    Ok(r) => {
                        if r.services > 0 || r.full {
                            tracing::debug!(services = r.services, messages = r.messages, full = r.full, elapsed_us = r.elapsed.as_micros() as u64, "service rules synced");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "programming service rules failed; retrying with a full sync");
                        retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
    }
}
