//! Pod traffic between nodes, through rtnetlink: with `host-gw`, a route to every other
//! node's pod range via that node's address (nodes on one L2 segment); with `vxlan` (the
//! default, as k3s's flannel), a VXLAN device `krab.1` (VNI 1, UDP 8472) whose address is the
//! first address of this node's range, its MAC published on the Node, and for every other
//! node a forwarding entry (its VTEP MAC → its address), a neighbour entry and a route to its
//! pod range through the tunnel. On a dual-stack cluster the IPv6 pod ranges get the same
//! treatment over the same device (VXLAN carries either family inside), or a route via the
//! node's IPv6 address with host-gw. Routes follow nodes as they join and leave.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::NeighbourFlags;
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};
use tokio_util::sync::CancellationToken;

use crate::agent::mirror::Mirror;

pub const VXLAN_DEVICE: &str = "krab.1";
const VNI: u32 = 1;
const VXLAN_PORT: u16 = 8472;
/// VXLAN's 50 bytes of headers taken from a 1500-byte uplink.
pub const VXLAN_MTU: u32 = 1450;
pub const VTEP_MAC_ANNOTATION: &str = "krab.io/vtep-mac";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Routes via the other nodes' addresses (one L2 segment).
    #[value(name = "host-gw")]
    HostGw,
    /// A VXLAN overlay (any network between the nodes).
    #[value(name = "vxlan")]
    Vxlan,
    /// No routes between nodes (single node, or another tool routes).
    #[value(name = "none")]
    None,
}

#[derive(Debug, Clone)]
pub struct PodNetworkConfig {
    pub backend: Backend,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// `--pod-network-iface`: the VXLAN device's underlay link.
    pub iface: Option<String>,
}

/// Another node as the data path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    pod_cidr: Ipv4Net,
    address: Ipv4Addr,
    vtep_mac: Option<Vec<u8>>,
    /// Its IPv6 pod range (dual-stack) and, for host-gw, its IPv6 address.
    pod_cidr6: Option<Ipv6Net>,
    address6: Option<Ipv6Addr>,
}

fn pod_cidr(n: &Node) -> Option<Ipv4Net> {
    let spec = n.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse().ok())
}

fn pod_cidr6(n: &Node) -> Option<Ipv6Net> {
    n.spec
        .as_ref()?
        .pod_cidrs
        .iter()
        .flatten()
        .find_map(|c| match c.parse::<IpNet>() {
            Ok(IpNet::V6(v6)) => Some(v6),
            _ => None,
        })
}

fn internal_ip6(n: &Node) -> Option<Ipv6Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

fn show_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct Programmer {
    handle: Handle,
    config: PodNetworkConfig,
    /// Peers as programmed, by node name.
    peers: BTreeMap<String, Peer>,
    vxlan: Option<(u32, Vec<u8>)>,
}

impl Programmer {
    async fn link_index(&self, name: &str) -> Result<Option<(u32, Vec<u8>)>, rtnetlink::Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => {
                let mac = l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Address(m) => Some(m.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                Ok(Some((l.header.index, mac)))
            }
            Ok(None) => Ok(None),
            // "No such device" comes back as an error.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The VXLAN device with this node's VTEP address, created if missing.
    async fn ensure_vxlan(
        &mut self,
        own: Ipv4Net,
        own6: Option<Ipv6Net>,
    ) -> anyhow::Result<(u32, Vec<u8>)> {
        if self.link_index(VXLAN_DEVICE).await?.is_none() {
            let mut vxlan = LinkVxlan::new(VXLAN_DEVICE, VNI)
                .local(self.config.node_ip)
                .port(VXLAN_PORT)
                .learning(false)
                .mtu(VXLAN_MTU);
            if let Some(iface) = self.config.iface.clone() {
                let Some((underlay, _)) = self.link_index(&iface).await? else {
                    anyhow::bail!("--pod-network-iface {iface}: no such interface");
                };
                vxlan = vxlan.dev(underlay);
            }
            self.handle.link().add(vxlan.up().build()).execute().await?;
            tracing::info!(device = VXLAN_DEVICE, local = %self.config.node_ip, "created the VXLAN device");
        }
        let Some((index, mac)) = self.link_index(VXLAN_DEVICE).await? else {
            anyhow::bail!("the VXLAN device {VXLAN_DEVICE} vanished after it was created");
        };
        self.handle
            .address()
            .add(index, IpAddr::V4(own.network()), 32)
            .replace()
            .execute()
            .await?;
        if let Some(own6) = own6 {
            self.handle
                .address()
                .add(index, IpAddr::V6(own6.network()), 128)
                .replace()
                .execute()
                .await?;
        }
        self.handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await?;
        Ok((index, mac))
    }

    fn route(&self, peer: &Peer) -> netlink_packet_route::route::RouteMessage {
        let b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(peer.pod_cidr.network(), peer.pod_cidr.prefix_len());
        match (self.config.backend, &self.vxlan) {
            (Backend::Vxlan, Some((index, _))) => b
                .gateway(peer.pod_cidr.network())
                .output_interface(*index)
                .onlink()
                .build(),
            _ => b.gateway(peer.address).build(),
        }
    }

    /// The IPv6 route to a peer's IPv6 pod range (None without one, or under host-gw
    /// when the peer has no IPv6 address).
    fn route6(&self, peer: &Peer) -> Option<netlink_packet_route::route::RouteMessage> {
        let cidr = peer.pod_cidr6?;
        let b = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len());
        Some(match (self.config.backend, &self.vxlan) {
            (Backend::Vxlan, Some((index, _))) => b
                .gateway(cidr.network())
                .output_interface(*index)
                .onlink()
                .build(),
            _ => b.gateway(peer.address6?).build(),
        })
    }

    async fn add_peer(&self, peer: &Peer) -> Result<(), rtnetlink::Error> {
        if let (Backend::Vxlan, Some((index, _))) = (self.config.backend, &self.vxlan) {
            let Some(mac) = &peer.vtep_mac else {
                return Ok(());
            };
            let gateways = std::iter::once(IpAddr::V4(peer.pod_cidr.network()))
                .chain(peer.pod_cidr6.map(|c| IpAddr::V6(c.network())));
            for gateway in gateways {
                self.handle
                    .neighbours()
                    .add(*index, gateway)
                    .link_layer_address(mac)
                    .replace()
                    .execute()
                    .await?;
            }
            self.handle
                .neighbours()
                .add_bridge(*index, mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(peer.address))
                .replace()
                .execute()
                .await?;
        }
        if let Some(route) = self.route6(peer) {
            self.handle.route().add(route).replace().execute().await?;
        }
        self.handle
            .route()
            .add(self.route(peer))
            .replace()
            .execute()
            .await
    }

    async fn remove_peer(&self, peer: &Peer) {
        if let Err(e) = self.handle.route().del(self.route(peer)).execute().await {
            tracing::debug!(pod_cidr = %peer.pod_cidr, error = %e, "removing a pod route failed");
        }
        if let Some(route) = self.route6(peer) {
            if let Err(e) = self.handle.route().del(route).execute().await {
                tracing::debug!(pod_cidr = ?peer.pod_cidr6, error = %e, "removing a pod route failed");
            }
        }
    }

    /// Brings routes (and tunnel entries) in line with the nodes; returns this node's VTEP
    /// MAC when it must be published.
    async fn sync(
        &mut self,
        nodes: &HashMap<String, std::sync::Arc<Node>>,
    ) -> anyhow::Result<Option<String>> {
        let Some(own) = nodes.get(&self.config.node_name) else {
            return Ok(None);
        };
        let Some(own_cidr) = pod_cidr(own) else {
            return Ok(None);
        };
        let mut publish = None;
        if self.config.backend == Backend::Vxlan {
            let (index, mac) = self.ensure_vxlan(own_cidr, pod_cidr6(own)).await?;
            let shown = show_mac(&mac);
            let published = own
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(VTEP_MAC_ANNOTATION));
            if published != Some(&shown) {
                publish = Some(shown);
            }
            self.vxlan = Some((index, mac));
        }
        let mut wanted = BTreeMap::new();
        for (name, n) in nodes {
            if *name == self.config.node_name {
                continue;
            }
            let (Some(cidr), Some(address)) = (pod_cidr(n), internal_ip(n)) else {
                continue;
            };
            let vtep_mac = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(VTEP_MAC_ANNOTATION))
                .and_then(|m| parse_mac(m));
            wanted.insert(
                name.clone(),
                Peer {
                    pod_cidr: cidr,
                    address,
                    vtep_mac,
                    pod_cidr6: pod_cidr6(n),
                    address6: internal_ip6(n),
                },
            );
        }
        for (name, old) in &self.peers {
            if wanted.get(name) != Some(old) {
                self.remove_peer(old).await;
            }
        }
        let mut programmed = BTreeMap::new();
        for (name, peer) in wanted {
            if self.peers.get(&name) == Some(&peer) {
                programmed.insert(name, peer);
                continue;
            }
            match self.add_peer(&peer).await {
                Ok(()) => {
                    tracing::info!(node = %name, pod_cidr = %peer.pod_cidr, via = %peer.address, "pod route to a node");
                    programmed.insert(name, peer);
                }
                Err(e) => {
                    tracing::warn!(node = %name, pod_cidr = %peer.pod_cidr, error = %e, "cannot route to a node's pods")
                }
            }
        }
        self.peers = programmed;
        Ok(publish)
    }
}

/// Removes the VXLAN device (`krab agent --cleanup`); true when there was one.
pub async fn cleanup() -> anyhow::Result<bool> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let conn = tokio::spawn(connection);
    let p = Programmer {
        handle: handle.clone(),
        config: PodNetworkConfig {
            backend: Backend::None,
            node_name: String::new(),
            node_ip: Ipv4Addr::UNSPECIFIED,
            iface: None,
        },
        peers: BTreeMap::new(),
        vxlan: None,
    };
    let found = p.link_index(VXLAN_DEVICE).await?;
    if let Some((index, _)) = found {
        handle.link().del(index).execute().await?;
    }
    conn.abort();
    Ok(found.is_some())
}

/// Follows the nodes and keeps this node's routes to their pods until shutdown.
pub async fn run(
    client: kube::Client,
    config: PodNetworkConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let conn = tokio::spawn(connection);
    let node_name = config.node_name.clone();
    let mut programmer = Programmer {
        handle,
        config,
        peers: BTreeMap::new(),
        vxlan: None,
    };
    let nodes_api: Api<Node> = Api::all(client);
    if !crate::agent::mirror::wait_until_listable(&nodes_api, &shutdown).await {
        conn.abort();
        return Ok(());
    }
    let mut events = watcher(nodes_api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut nodes: Mirror<Node> = Mirror::new();
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = events.next() => match ev {
                Some(Ok(e)) => {
                    nodes.apply(e, |n| n.metadata.name.clone().unwrap_or_default());
                    if !nodes.synced {
                        continue;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pod network: node watch failed; retrying");
                    continue;
                }
                None => break,
            },
            // Re-applied now and then: routes removed by hand come back.
            _ = resync.tick() => {
                programmer.peers.clear();
            }
        }
        if !nodes.synced {
            continue;
        }
        match programmer.sync(&nodes.now).await {
            Ok(Some(mac)) => {
                let patch =
                    serde_json::json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: mac}}});
                if let Err(e) = nodes_api
                    .patch(&node_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(node = %node_name, error = %e, "cannot publish the VTEP address");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "programming the pod network failed"),
        }
    }
    conn.abort();
    let _ = conn.await;
    Ok(())
}
