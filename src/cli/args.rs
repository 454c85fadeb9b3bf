//! The command line: k3s's flag names where k3s has one. Every flag can also come from a
//! `KRAB_*` environment variable and from the config file (see `config`).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "krab",
    version,
    about = "A whole Kubernetes distribution in one executable"
)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, env = "KRAB_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log output format.
    #[arg(
        long,
        global = true,
        env = "KRAB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Config file; its keys are flag names (`data-dir: /srv/krab`).
    #[arg(
        long,
        global = true,
        env = "KRAB_CONFIG_FILE",
        default_value = "/etc/krab/config.yaml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a server: datastore, API server, controllers, scheduler (and an agent).
    Server(Box<ServerArgs>),
    /// Run an agent that joins a server and runs pods.
    Agent(AgentArgs),
    /// Save embedded-datastore snapshots.
    #[command(name = "etcd-snapshot")]
    EtcdSnapshot(EtcdSnapshotArgs),
    /// Check the configuration and this host's prerequisites.
    #[command(name = "check-config")]
    CheckConfig(CheckConfigArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Folder holding state.
    #[arg(
        long,
        short = 'd',
        env = "KRAB_DATA_DIR",
        default_value = "/var/lib/krab"
    )]
    pub data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, env = "KRAB_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: std::net::IpAddr,
    /// Port the API server listens on.
    #[arg(long, env = "KRAB_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Answer LISTs and WATCHes from an in-memory mirror of the datastore (kube-apiserver's
    /// --watch-cache); `--watch-cache=false` reads the datastore instead, saving memory.
    #[arg(long, env = "KRAB_WATCH_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_cache: bool,
    /// Shared secret used to join a server or agent to a cluster.
    #[arg(long, short = 't', env = "KRAB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Server to join (https://<server>:6443).
    #[arg(long, short = 's', env = "KRAB_URL")]
    pub server: Option<String>,
    /// Start a new cluster with the embedded datastore, ready for more servers to join.
    #[arg(long, env = "KRAB_CLUSTER_INIT")]
    pub cluster_init: bool,
    /// Forget every other member and run as a one-member cluster on the existing data.
    #[arg(long, env = "KRAB_CLUSTER_RESET")]
    pub cluster_reset: bool,
    /// With --cluster-reset: restore this snapshot file first.
    #[arg(
        long,
        env = "KRAB_CLUSTER_RESET_RESTORE_PATH",
        requires = "cluster_reset"
    )]
    pub cluster_reset_restore_path: Option<PathBuf>,
    /// Node name (defaults to the hostname).
    #[arg(long, env = "KRAB_NODE_NAME")]
    pub node_name: Option<String>,
    /// Do not run a local agent.
    #[arg(long, env = "KRAB_DISABLE_AGENT")]
    pub disable_agent: bool,
    /// Where to write the admin kubeconfig.
    #[arg(
        long,
        short = 'o',
        env = "KRAB_KUBECONFIG_OUTPUT",
        default_value = "/etc/krab/krab.yaml"
    )]
    pub write_kubeconfig: PathBuf,
    /// Mode of the written kubeconfig (octal).
    #[arg(long, env = "KRAB_KUBECONFIG_MODE", default_value = "600")]
    pub write_kubeconfig_mode: String,
    /// Use an external etcd (https://host:2379) instead of the embedded datastore.
    #[arg(long, env = "KRAB_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: Option<String>,
    /// CA file for --datastore-endpoint.
    #[arg(long, env = "KRAB_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for --datastore-endpoint.
    #[arg(long, env = "KRAB_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for --datastore-endpoint.
    #[arg(long, env = "KRAB_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,
    /// The port the local agent's kubelet API (logs, exec, port-forward) listens on.
    #[arg(long, env = "KRAB_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Use an existing containerd socket instead of starting one.
    #[arg(long, env = "KRAB_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,
    /// Where the embedded datastore serves the etcd v3 API (mutual TLS).
    #[arg(long, env = "KRAB_ETCD_LISTEN", default_value = "127.0.0.1:2379")]
    pub etcd_listen: SocketAddr,
    /// Where the embedded datastore talks Raft to other servers.
    #[arg(long, env = "KRAB_ETCD_PEER_LISTEN", default_value = "0.0.0.0:2380")]
    pub etcd_peer_listen: SocketAddr,
    /// Address other servers reach this one's peer port at (defaults to the node's IP).
    #[arg(long, env = "KRAB_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<std::net::IpAddr>,
    /// How often the datastore compacts history older than one interval.
    #[arg(long, env = "KRAB_ETCD_COMPACTION_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub etcd_compaction_interval: Duration,
    /// Memory the datastore may use to cache values, in MiB.
    #[arg(long, env = "KRAB_ETCD_CACHE_MB", default_value_t = 32)]
    pub etcd_cache_mb: u64,
    /// The range pod IPs are taken from (a /24 per node; with an IPv6 range after a comma,
    /// dual-stack, a /64 per node).
    #[arg(long, env = "KRAB_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: crate::cidrs::Cidrs,
    /// The range Service cluster IPs are taken from (an IPv6 range after a comma makes
    /// dual-stack Services possible).
    #[arg(long, env = "KRAB_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: crate::cidrs::Cidrs,
    /// The port range NodePort Services are given ports from.
    #[arg(long, env = "KRAB_SERVICE_NODE_PORT_RANGE", default_value = "30000-32767", value_parser = parse_port_range)]
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
    /// The cluster DNS service's IP.
    #[arg(long, env = "KRAB_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// Do not run this controller (repeatable): deployment, replicaset, daemonset,
    /// statefulset, job, cronjob, ttl-after-finished, garbagecollector, namespace,
    /// serviceaccount, serviceaccount-token, nodeipam, nodelifecycle, endpoints, podgc,
    /// servicelb.
    #[arg(
        long = "disable-controller",
        env = "KRAB_DISABLE_CONTROLLER",
        value_delimiter = ','
    )]
    pub disable_controller: Vec<String>,
    /// Do not run these packaged components (repeatable, k3s's names): servicelb (the
    /// built-in load balancer for LoadBalancer Services), local-storage (the local-path
    /// StorageClass and its provisioner).
    #[arg(long = "disable", env = "KRAB_DISABLE", value_delimiter = ',')]
    pub disable: Vec<String>,
    /// Do not run the controller manager (none of its loops).
    #[arg(long, env = "KRAB_DISABLE_CONTROLLER_MANAGER")]
    pub disable_controller_manager: bool,
    /// A kube-controller-manager setting as `name=value` (k3s's flag; repeatable):
    /// `cluster-signing-duration` (8760h0m0s), how long the node certificates agents are
    /// issued last (they renew them before they expire).
    #[arg(
        long = "kube-controller-manager-arg",
        env = "KRAB_KUBE_CONTROLLER_MANAGER_ARG",
        value_name = "NAME=VALUE"
    )]
    pub kube_controller_manager_arg: Vec<String>,
    /// Do not run the scheduler.
    #[arg(long, env = "KRAB_DISABLE_SCHEDULER")]
    pub disable_scheduler: bool,
    /// The cluster's DNS domain.
    #[arg(long, env = "KRAB_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[command(flatten)]
    pub network: NodeNetworkArgs,
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    #[arg(
        long,
        short = 'd',
        env = "KRAB_DATA_DIR",
        default_value = "/var/lib/krab"
    )]
    pub data_dir: PathBuf,
    /// The token to join with (the server's <data-dir>/server/node-token).
    #[arg(long, short = 't', env = "KRAB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server to join (https://<server>:6443).
    #[arg(long, short = 's', env = "KRAB_URL")]
    pub server: Option<String>,
    /// Node name (defaults to the hostname).
    #[arg(long, env = "KRAB_NODE_NAME")]
    pub node_name: Option<String>,
    /// Use an existing containerd socket instead of starting one.
    #[arg(long, env = "KRAB_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,
    /// The port the kubelet API (logs, exec, port-forward) listens on.
    #[arg(long, env = "KRAB_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The cluster DNS service's IP, written into pods' resolv.conf.
    #[arg(long, env = "KRAB_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// The cluster's DNS domain.
    #[arg(long, env = "KRAB_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The range pod IPs are taken from (as the server's --cluster-cidr).
    #[arg(long, env = "KRAB_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: crate::cidrs::Cidrs,
    /// The range Service cluster IPs are taken from (as the server's --service-cidr).
    #[arg(long, env = "KRAB_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: crate::cidrs::Cidrs,
    #[command(flatten)]
    pub network: NodeNetworkArgs,
    /// Remove the nftables rules krab programmed, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// How a node's networking runs (the same flags on `krab server` and `krab agent`).
#[derive(Args, Debug, Clone)]
pub struct NodeNetworkArgs {
    /// The node's addresses (comma-separated, at most one per IP family; defaults to the
    /// address of --pod-network-iface, else the default route's source address).
    #[arg(long, env = "KRAB_NODE_IP", value_delimiter = ',')]
    pub node_ip: Vec<std::net::IpAddr>,
    /// The node's external addresses (comma-separated); load balancers answer on them.
    #[arg(long, env = "KRAB_NODE_EXTERNAL_IP", value_delimiter = ',')]
    pub node_external_ip: Vec<std::net::IpAddr>,
    /// The interface that carries pod traffic between nodes (the VXLAN underlay); its
    /// address is the node's unless --node-ip says otherwise.
    #[arg(long, env = "KRAB_POD_NETWORK_IFACE", alias = "flannel-iface")]
    pub pod_network_iface: Option<String>,
    /// Do not run the service proxy (no nftables rules for Services).
    #[arg(long, env = "KRAB_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
    /// The port this node's cluster DNS server listens on, at the node IP; the cluster DNS
    /// address is forwarded there.
    #[arg(long, env = "KRAB_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
    /// How pods reach other nodes' pods: vxlan (an overlay over any network, k3s's
    /// default), host-gw (routes via the nodes' addresses, one L2 segment) or none.
    #[arg(
        long,
        env = "KRAB_POD_NETWORK_BACKEND",
        alias = "flannel-backend",
        value_enum,
        default_value = "vxlan"
    )]
    pub pod_network_backend: crate::agent::pod_network::Backend,
    /// Do not enforce NetworkPolicies.
    #[arg(long, env = "KRAB_DISABLE_NETWORK_POLICY")]
    pub disable_network_policy: bool,
    /// A kubelet setting as `name=value` (k3s's flag; repeatable): `eviction-hard`
    /// (`memory.available<200Mi,nodefs.available<10%`), `image-gc-high-threshold` (85),
    /// `image-gc-low-threshold` (80), `image-minimum-gc-age` (2m0s), `shutdown-grace-period`
    /// and `shutdown-grace-period-critical-pods` (0s: graceful node shutdown off).
    #[arg(
        long = "kubelet-arg",
        env = "KRAB_KUBELET_ARG",
        value_name = "NAME=VALUE"
    )]
    pub kubelet_arg: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct EtcdSnapshotArgs {
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SnapshotAction {
    /// Take a snapshot of the running server's datastore.
    Save(SnapshotSaveArgs),
    /// List saved snapshots.
    #[command(alias = "ls")]
    List(SnapshotDirArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SnapshotSaveArgs {
    #[arg(
        long,
        short = 'd',
        env = "KRAB_DATA_DIR",
        default_value = "/var/lib/krab"
    )]
    pub data_dir: PathBuf,
    /// Snapshot name prefix.
    #[arg(long, default_value = "on-demand")]
    pub name: String,
    /// Folder to save into (default <data-dir>/server/db/snapshots).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The datastore's etcd endpoint.
    #[arg(long, env = "KRAB_ETCD_LISTEN", default_value = "127.0.0.1:2379")]
    pub etcd_listen: SocketAddr,
}

#[derive(Args, Debug, Clone)]
pub struct SnapshotDirArgs {
    #[arg(
        long,
        short = 'd',
        env = "KRAB_DATA_DIR",
        default_value = "/var/lib/krab"
    )]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CheckConfigArgs {
    #[arg(
        long,
        short = 'd',
        env = "KRAB_DATA_DIR",
        default_value = "/var/lib/krab"
    )]
    pub data_dir: PathBuf,
}

/// Parses `90s`, `5m`, `1h`, `250ms` or a bare number of seconds.
/// `30000-32767`: an inclusive port range.
pub fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range like 30000-32767"))?;
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?} is not a port range: the first port must be 1 or more and not above the last"
        ));
    }
    Ok(a..=b)
}

/// How long signed node certificates last, from `--kube-controller-manager-arg`; the
/// controller manager's settings krab does not have are refused by name.
pub fn cluster_signing_duration(args: &[String]) -> Result<Duration, String> {
    let mut duration = Duration::from_secs(365 * 24 * 3600);
    for arg in args {
        let arg = arg.trim_start_matches("--");
        let (name, value) = arg.split_once('=').unwrap_or((arg, ""));
        match name {
            "cluster-signing-duration" => {
                duration = crate::resources::duration::parse_go(value)
                    .map_err(|e| format!("--kube-controller-manager-arg {name}: {e}"))?;
                if duration.is_zero() {
                    return Err(format!(
                        "--kube-controller-manager-arg {name}: must be more than zero"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "--kube-controller-manager-arg {other:?} is not a setting krab's controller \
                     manager has (it takes cluster-signing-duration)"
                ))
            }
        }
    }
    Ok(duration)
}

/// A duration flag: Go's form (`30s`, `5m`, `1h30m`), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return s
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{s}` is not a duration (try 30s, 5m or 1h)"));
    }
    crate::resources::duration::parse_go(s)
}
