//! The node side: containerd (supervised child or an existing one), the images a node needs
//! without a registry, the CNI config, node registration and heartbeat, and the kubelet's pod
//! workers. Reaches cluster state only through the Kubernetes API.
pub mod cni;
pub mod containerd;
pub mod credentials;
pub mod cri;
pub mod dns;
pub mod images;
pub mod join;
pub mod kubelet;
pub mod kubelet_api;
pub mod mirror;
pub mod netpol;
pub mod pod_network;
pub mod process;
pub mod service_proxy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Supervisor;

/// Everything the agent is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub node_name: String,
    /// The primary internal address (the first of `--node-ip`).
    pub node_ip: String,
    /// The other family's internal address on a dual-stack node.
    pub secondary_node_ips: Vec<String>,
    /// `--node-external-ip`.
    pub external_ips: Vec<String>,
    /// `--container-runtime-endpoint`: use this containerd instead of starting one.
    pub runtime_endpoint: Option<String>,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub kubelet_version: String,
    /// `/etc/krab/registries.yaml`.
    pub registries: PathBuf,
    /// `/var/log/pods`.
    pub pod_log_root: PathBuf,
    pub node_labels: BTreeMap<String, String>,
    /// The kubelet API's port (10250).
    pub kubelet_port: u16,
    /// The kubelet API's certificates; without them the kubelet API is not served.
    pub kubelet_tls: Option<kubelet_api::KubeletServingTls>,
    /// The service proxy's settings; None with `--disable-kube-proxy`.
    pub service_proxy: Option<service_proxy::ProxyConfig>,
    /// How pods reach other nodes' pods; None for `--pod-network-backend none`.
    pub pod_network: Option<pod_network::PodNetworkConfig>,
    /// Enforce NetworkPolicies on this node's pods (`--disable-network-policy` turns it off).
    pub network_policy: bool,
    /// The cluster DNS server's settings; None without the service proxy.
    pub dns: Option<dns::DnsConfig>,
    /// The hard eviction thresholds, when unused images are deleted and the node shutdown
    /// grace periods (`--kubelet-arg`).
    pub kubelet: KubeletSettings,
}

/// The kubelet settings `--kubelet-arg` gives (k3s's flag, `name=value` as the kubelet's own
/// flags); the ones krab's kubelet does not have are refused by name.
pub fn kubelet_settings(args: &[String]) -> anyhow::Result<KubeletSettings> {
    let mut settings = KubeletSettings::default();
    for arg in args {
        let arg = arg.trim_start_matches("--");
        let (name, value) = arg.split_once('=').unwrap_or((arg, ""));
        let known = match name {
            "eviction-hard"
            | "eviction-soft"
            | "eviction-soft-grace-period"
            | "eviction-max-pod-grace-period" => {
                let t = &mut settings.eviction;
                match name {
                    "eviction-hard" => t.set_hard(value),
                    "eviction-soft" => t.set_soft(value),
                    "eviction-soft-grace-period" => t.set_soft_grace(value),
                    _ => t.set_max_pod_grace(value),
                }
                .map_err(|e| anyhow::anyhow!("--kubelet-arg {name}={value:?}: {e}"))?;
                true
            }
            other => {
                let named = |e: String| anyhow::anyhow!("--kubelet-arg {other}={value:?}: {e}");
                settings.image_gc.set(other, value).map_err(named)?
                    || settings.shutdown.set(other, value).map_err(named)?
            }
        };
        if !known {
            anyhow::bail!(
                "--kubelet-arg {name:?} is not a setting krab's kubelet has (it takes eviction-hard, \
                 eviction-soft, eviction-soft-grace-period, eviction-max-pod-grace-period, \
                 image-gc-high-threshold, image-gc-low-threshold, image-minimum-gc-age, \
                 shutdown-grace-period, shutdown-grace-period-critical-pods)"
            );
        }
    }
    settings
        .image_gc
        .validate()
        .and_then(|()| settings.shutdown.validate())
        .and_then(|()| settings.eviction.validate())
        .map_err(|e| anyhow::anyhow!("--kubelet-arg: {e}"))?;
    Ok(settings)
}

/// The kubelet settings `--kubelet-arg` can change.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeletSettings {
    pub eviction: kubelet::eviction::Thresholds,
    pub image_gc: kubelet::image_gc::ImageGcPolicy,
    pub shutdown: kubelet::node_shutdown::ShutdownPolicy,
}

impl AgentConfig {
    /// The pod network's settings for a node at `node_ip` (None for `none`, or when the
    /// address is not IPv4).
    pub fn pod_network_for(
        backend: pod_network::Backend,
        node_name: &str,
        node_ip: &str,
        iface: Option<&str>,
    ) -> Option<pod_network::PodNetworkConfig> {
        if backend == pod_network::Backend::None {
            return None;
        }
        Some(pod_network::PodNetworkConfig {
            backend,
            node_name: node_name.to_string(),
            node_ip: node_ip.parse().ok()?,
            iface: iface.map(str::to_string),
        })
    }

    /// The cluster DNS server's settings for a node at `node_ip` (127.0.0.1 when it is not
    /// an IPv4 address: the service proxy forwards the cluster DNS address there).
    pub fn dns_for(node_ip: &str, port: u16, domain: &str) -> dns::DnsConfig {
        let ip: std::net::IpAddr = node_ip
            .parse::<std::net::Ipv4Addr>()
            .map(Into::into)
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        dns::DnsConfig {
            listen: std::net::SocketAddr::new(ip, port),
            domain: domain.to_string(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts_file: PathBuf::from("/etc/hosts"),
        }
    }

    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("agent").join("images")
    }
}

/// Starts the agent's tasks on `sup`: "containerd" (unless an endpoint is given) and
/// "kubelet".
pub fn spawn(
    sup: &mut Supervisor,
    config: AgentConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let layout = containerd::Layout::new(&config.data_dir);
    let (ready_tx, ready_rx) = watch::channel(false);
    let socket = match &config.runtime_endpoint {
        Some(ep) => {
            let _ = ready_tx.send(true);
            PathBuf::from(ep.trim_start_matches("unix://"))
        }
        None => {
            let registries = containerd::Registries::load(&config.registries)?;
            containerd::prepare(&layout, &images::pause::reference(), &registries)?;
            let stop = shutdown.clone();
            let l = layout.clone();
            sup.spawn("containerd", async move {
                containerd::supervise(l, ready_tx, stop).await
            });
            layout.socket.clone()
        }
    };
    // Bound now, so a taken port fails the start instead of a task later.
    let kubelet_listener = match &config.kubelet_tls {
        Some(_) => {
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], config.kubelet_port));
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("failed to listen on {addr} (the kubelet API)"))?;
            l.set_nonblocking(true)?;
            Some(tokio::net::TcpListener::from_std(l)?)
        }
        None => None,
    };
    if let Some(dns_config) = config.dns.clone() {
        let sockets = dns::bind(dns_config.listen)?;
        let client = client.clone();
        let stop = shutdown.clone();
        sup.spawn("cluster-dns", async move {
            dns::run(client, dns_config, sockets, stop).await
        });
    }
    if let Some(net) = config.pod_network.clone() {
        let client = client.clone();
        let stop = shutdown.clone();
        sup.spawn("pod-network", async move {
            pod_network::run(client, net, stop).await
        });
    }
    if config.network_policy {
        let client = client.clone();
        let stop = shutdown.clone();
        let node = config.node_name.clone();
        sup.spawn("network-policy", async move {
            netpol::run(client, node, stop).await
        });
    }
    if let Some(proxy) = config.service_proxy.clone() {
        let client = client.clone();
        let stop = shutdown.clone();
        sup.spawn("service-proxy", async move {
            service_proxy::run(client, proxy, stop).await
        });
    }
    let conf_dir = layout.cni_conf_dir.clone();
    sup.spawn("kubelet", async move {
        run_kubelet(
            config,
            client,
            socket,
            conf_dir,
            kubelet_listener,
            ready_rx,
            shutdown,
        )
        .await
    });
    Ok(())
}

async fn wait_ready(
    mut ready: watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let limit = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(limit);
    loop {
        if *ready.borrow() {
            return Ok(true);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = &mut limit => anyhow::bail!("containerd did not become ready within 60 s"),
            r = ready.changed() => if r.is_err() { return Ok(false) },
        }
    }
}

async fn run_kubelet(
    config: AgentConfig,
    client: kube::Client,
    socket: PathBuf,
    conf_dir: PathBuf,
    kubelet_listener: Option<tokio::net::TcpListener>,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !wait_ready(ready, &shutdown).await? {
        return Ok(());
    }
    let images_dir = config.images_dir();
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("failed to create {}", images_dir.display()))?;
    let imported = images::import_all(&socket, &images_dir)
        .await
        .context("failed to import the pause image into containerd")?;
    let cri = cri::Cri::connect(&socket).await?;
    let version = cri
        .version()
        .await
        .context("the container runtime does not answer CRI")?;
    tracing::info!(runtime = %version.name, version = %version.version, "container runtime connected");
    containerd::recovery::wait_for_cri(&socket, &cri, Duration::from_secs(15)).await;

    let shutdown_state = Arc::new(kubelet::node_shutdown::ShutdownState::default());
    let node_agent = kubelet::node::NodeAgent::new(
        client.clone(),
        cri.clone(),
        kubelet::node::NodeConfig {
            name: config.node_name.clone(),
            node_ip: config.node_ip.clone(),
            secondary_node_ips: config.secondary_node_ips.clone(),
            external_ips: config.external_ips.clone(),
            data_dir: config.data_dir.clone(),
            kubelet_version: config.kubelet_version.clone(),
            extra_labels: config.node_labels.clone(),
            kubelet_port: config.kubelet_port,
            eviction: config.kubelet.eviction,
            shutdown: shutdown_state.clone(),
        },
    );
    // The API may still be bootstrapping (kube-node-lease, the node's namespace objects).
    let node = loop {
        match node_agent.register().await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(node = %config.node_name, error = %e, "node registration failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let host_resolv = host_resolv_conf();
    let host_search = resolv_entries(&host_resolv, "search");
    let host_nameservers = resolv_entries(&host_resolv, "nameserver");
    let mut kubelet = kubelet::Kubelet::new(
        client.clone(),
        cri,
        config.node_name.clone(),
        config.node_ip.clone(),
        cri::sandbox::SandboxContext {
            cluster_dns: config.cluster_dns.clone(),
            cluster_domain: config.cluster_domain.clone(),
            log_root: config.pod_log_root.clone(),
            host_search,
            host_nameservers,
            node_name: config.node_name.clone(),
        },
        config.data_dir.join("agent").join("pods"),
    );
    kubelet.thresholds = config.kubelet.eviction;
    kubelet.image_gc = kubelet::image_gc::ImageGc::new(config.kubelet.image_gc, imported);
    kubelet.shutdown_policy = config.kubelet.shutdown;
    kubelet.shutdown_state = shutdown_state;
    let k = Arc::new(kubelet);
    k.set_allocatable(&node);
    let ipam_dir = config.data_dir.join("agent").join("cni").join("networks");
    let cni_options = cni::Options {
        // Under VXLAN, pods' packets carry the tunnel's 50 bytes.
        mtu: config
            .pod_network
            .as_ref()
            .filter(|n| n.backend == pod_network::Backend::Vxlan)
            .map(|_| pod_network::VXLAN_MTU),
        // With the service proxy, krab's table masquerades only traffic leaving the pod
        // range (pod-to-pod across nodes keeps its source); without it, the bridge plugin
        // masquerades everything leaving the node's range.
        bridge_masquerade: config.service_proxy.is_none(),
    };
    let cni = watch_pod_cidr(
        client.clone(),
        k.clone(),
        config.node_name.clone(),
        conf_dir,
        ipam_dir,
        cni_options,
        shutdown.clone(),
    );
    let heartbeat = node_agent.heartbeat(node, shutdown.clone());
    let api = async {
        match (kubelet_listener, config.kubelet_tls.clone()) {
            (Some(l), Some(tls)) => kubelet_api::serve(l, tls, k.clone(), shutdown.clone()).await,
            _ => Ok(()),
        }
    };
    let pods = kubelet::run(k.clone(), shutdown.clone());
    let manifests = config.data_dir.join("agent").join("pod-manifests");
    let statics = kubelet::static_pods::run(k.clone(), manifests, shutdown.clone());
    let rotation = kubelet::log_rotation::run(k.clone(), shutdown.clone());
    let stats = kubelet::resource_stats::run(k.clone(), shutdown.clone());
    let (a, b, c, d, e, f, g) = tokio::join!(cni, heartbeat, pods, api, statics, rotation, stats);
    a.and(b).and(c).and(d).and(e).and(f).and(g)
}

/// Writes the CNI conflist once the node has a podCIDR (and again if it changes).
async fn watch_pod_cidr(
    client: kube::Client,
    k: Arc<kubelet::Kubelet>,
    name: String,
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
    cni_options: cni::Options,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client);
    let mut waited = Duration::ZERO;
    loop {
        let mut delay = Duration::from_millis(500);
        match nodes.get_opt(&name).await {
            Ok(Some(node)) => {
                k.set_allocatable(&node);
                let cidrs = node
                    .spec
                    .as_ref()
                    .map(|s| {
                        let listed = s.pod_cidrs.clone().unwrap_or_default();
                        if listed.is_empty() {
                            s.pod_cidr.iter().cloned().collect()
                        } else {
                            listed
                        }
                    })
                    .filter(|c: &Vec<String>| !c.is_empty());
                match cidrs {
                    Some(cidrs) => {
                        match cni::write(&conf_dir, &cidrs, &ipam_dir, &cni_options) {
                            Ok(true) => {
                                tracing::info!(node = %name, pod_cidrs = %cidrs.join(","), "pod network configured")
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(dir = %conf_dir.display(), error = %e, "cannot write the CNI config")
                            }
                        }
                        delay = Duration::from_secs(30);
                    }
                    None if waited > Duration::from_secs(30) => {
                        tracing::warn!(node = %name, "the node has no podCIDR yet (is the node IPAM controller running?)");
                        waited = Duration::ZERO;
                    }
                    None => waited += delay,
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the node failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The node's resolv.conf: systemd-resolved's upstream file when /etc/resolv.conf only
/// names its local stub (which pods cannot reach), as the kubelet and k3s pick it.
fn host_resolv_conf() -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let stub_only = !resolv_entries(&etc, "nameserver").is_empty()
        && resolv_entries(&etc, "nameserver")
            .iter()
            .all(|s| s.starts_with("127."));
    if stub_only {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    etc
}

/// The values of one resolv.conf keyword (`search`, `nameserver`), in order.
fn resolv_entries(text: &str, keyword: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(keyword)).then(|| words.map(str::to_string).collect::<Vec<_>>())
        })
        .flatten()
        .collect()
}
