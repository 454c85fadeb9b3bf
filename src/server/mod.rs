//! `krab server`: composes the datastore, its etcd endpoint and (as later issues land) the
//! API server, controllers, scheduler and local agent, in that order, under one supervisor.
mod kubeconfig;
mod node_role;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::args::ServerArgs;
use crate::lifecycle::Supervisor;
use crate::store::datastore::Datastore;
use crate::store::etcd_api::{self, ServingTls};
use crate::store::external::{ExternalConfig, ExternalEtcd};
use crate::store::peer::{self, GrpcTransport, PeerService, PeerTls};
use crate::store::raft::transport::{NoPeers, Transport};
use crate::store::{compactor, Identity, Store, StoreConfig};
use crate::tls;

pub use crate::host::node_name;

/// Names this host answers to, for certificate SANs.
pub fn host_sans(node_name: &str) -> Vec<String> {
    let mut sans = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        node_name.to_string(),
    ];
    if let Ok(ifaces) = crate::host::local_ipv4s() {
        for ip in ifaces {
            if !sans.contains(&ip) {
                sans.push(ip);
            }
        }
    }
    sans
}

fn validate(args: &ServerArgs) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if args.server.is_some() && args.token.is_none() {
        problems.push("--server needs --token (the token printed by the first server)".to_string());
    }
    if args.server.is_some() && args.cluster_init {
        problems.push(
            "--cluster-init starts a new cluster; it cannot be combined with --server".into(),
        );
    }
    if args.datastore_endpoint.is_some() && (args.cluster_init || args.cluster_reset) {
        problems.push(
            "--datastore-endpoint uses an external etcd; --cluster-init and --cluster-reset are for \
             the embedded datastore"
                .into(),
        );
    }
    if let Some(p) = &args.cluster_reset_restore_path {
        if !p.is_file() {
            problems.push(format!(
                "--cluster-reset-restore-path {}: no such file",
                p.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
    }
}

/// The peer URL other servers dial: --advertise-address, the listen address when it is
/// specific, or this host's first non-loopback address.
fn advertised_peer(args: &ServerArgs) -> std::net::SocketAddr {
    let port = args.etcd_peer_listen.port();
    let ip = args.advertise_address.unwrap_or_else(|| {
        let listen = args.etcd_peer_listen.ip();
        if !listen.is_unspecified() {
            return listen;
        }
        crate::host::primary_ipv4()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    });
    std::net::SocketAddr::new(ip, port)
}

/// The address the `kubernetes` Service's endpoints name: --advertise-address, the bind
/// address when it is specific, or this host's first non-loopback address.
fn advertised_api(args: &ServerArgs) -> std::net::IpAddr {
    args.advertise_address.unwrap_or_else(|| {
        node_addresses(args)
            .ok()
            .and_then(|a| a.first().copied())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    })
}

/// The local node's internal addresses: `--node-ip`, else `--pod-network-iface`'s, else
/// `--advertise-address`, else the bind address when it is one, else the default route's
/// source.
fn node_addresses(args: &ServerArgs) -> Result<Vec<std::net::IpAddr>, crate::host::AddressError> {
    let bind = args
        .advertise_address
        .or((!args.bind_address.is_unspecified()).then_some(args.bind_address));
    crate::host::node_addresses(
        &args.network.node_ip,
        args.network.pod_network_iface.as_deref(),
        bind,
    )
}

/// A member that knows of other members keeps serving its peer port after restarts.
fn peers_configured(db_dir: &std::path::Path) -> bool {
    db_dir.join("token").exists()
}

fn read_member_id(db_dir: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(db_dir.join("member.json")).ok()?;
    serde_json::from_slice::<Identity>(&bytes)
        .ok()
        .map(|i| i.member_id)
}

/// The cluster's join token, k3s-style `K10<sha256 of the peer CA>::server:<secret>`: the
/// secret comes from --token, or an earlier start, or is generated; the token is written to
/// `<data-dir>/server/token` and `<data-dir>/server/db/token` (mode 0600).
fn cluster_token(args: &ServerArgs, ca_pem: &str) -> anyhow::Result<String> {
    use crate::store::bootstrap::Token;
    use std::os::unix::fs::PermissionsExt;
    let path = args.data_dir.join("server").join("token");
    let marker = args.data_dir.join("server").join("db").join("token");
    let secret = match (&args.token, std::fs::read_to_string(&path)) {
        (Some(t), _) => Token::parse(t).secret,
        (None, Ok(existing)) => Token::parse(&existing).secret,
        (None, Err(_)) => rand::random::<[u8; 16]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    let token = Token::format(ca_pem, &secret).map_err(anyhow::Error::msg)?;
    for p in [&path, &marker] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        std::fs::write(p, format!("{token}\n"))
            .with_context(|| format!("failed to write {}", p.display()))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::info!(path = %path.display(), "cluster join token written");
    Ok(token)
}

/// The token agents join with, `K10<sha256 of the server CA>::node:<secret>`, written to
/// `<data-dir>/server/node-token` (mode 0600); returns the secret. The secret is the
/// cluster token's when there is one (so one token joins servers and agents, as in k3s),
/// else --token's, else the one written before, else a new one.
fn node_token(args: &ServerArgs, server_ca_pem: &str) -> anyhow::Result<String> {
    use crate::tls::token::Token;
    use std::os::unix::fs::PermissionsExt;
    let dir = args.data_dir.join("server");
    let path = dir.join("node-token");
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|t| Token::parse(&t).secret)
            .filter(|s| !s.is_empty())
    };
    let secret = read(&dir.join("token"))
        .or_else(|| args.token.as_deref().map(|t| Token::parse(t).secret))
        .or_else(|| read(&path))
        .unwrap_or_else(|| {
            rand::random::<[u8; 16]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        });
    let token = Token::format_node(server_ca_pem, &secret).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    std::fs::write(&path, format!("{token}\n"))
        .with_context(|| format!("failed to write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(path = %path.display(), "agents join with the token in this file (krab agent --server https://<this server>:6443 --token <token>)");
    Ok(secret)
}

/// Prepares the cluster certificates and kubeconfig and starts the API server task.
fn start_apiserver(
    sup: &mut Supervisor,
    args: &ServerArgs,
    name: &str,
    datastore: Datastore,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sans = host_sans(name);
    if !args.bind_address.is_unspecified() && !sans.contains(&args.bind_address.to_string()) {
        sans.push(args.bind_address.to_string());
    }
    let certs = crate::tls::cluster::ensure_cluster(&args.data_dir, &sans)
        .context("failed to prepare the cluster certificates")?;
    let host = if args.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        args.bind_address.to_string()
    };
    let url = format!("https://{host}:{}", args.https_listen_port);
    kubeconfig::write(
        &args.write_kubeconfig,
        &args.write_kubeconfig_mode,
        &url,
        &certs,
    )?;
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving the Kubernetes API");
    let loops = crate::lifecycle::health::LoopHealth::default();
    let config = crate::apiserver::ApiConfig {
        loops: loops.clone(),
        services: crate::apiserver::ServiceNetwork {
            cidrs: args.service_cidr.all(),
            node_ports: args.service_node_port_range.clone(),
            cluster_dns: Some(args.cluster_dns.into()),
        },
        port: args.https_listen_port,
        watch_cache: args.watch_cache,
        advertise: Some(advertised_api(args)),
        service_account_key: Some(certs.service_account.clone()),
        node_join: Some(crate::apiserver::NodeJoin {
            secret: node_token(args, &certs.server_ca_pem)?,
            data_dir: args.data_dir.clone(),
            server_ca_pem: certs.server_ca_pem.clone(),
            signing_duration: crate::cli::args::cluster_signing_duration(
                &args.kube_controller_manager_arg,
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        }),
        kubelet_client: Some(crate::apiserver::KubeletClientTls {
            cert_pem: certs.kubelet_client.cert_pem.clone(),
            key_pem: certs.kubelet_client.key_pem.clone(),
            ca_pem: certs.server_ca_pem.clone(),
        }),
    };
    let api = crate::apiserver::ApiServer::new(datastore, config, shutdown.clone())?;
    start_loops(sup, args, name, &api, &certs, &loops, shutdown.clone());
    if !args.disable_agent {
        start_agent(sup, args, name, &api, &certs, shutdown.clone())?;
    }
    sup.spawn(
        "memory-trim",
        crate::lifecycle::return_freed_memory(crate::lifecycle::TRIM_PERIOD, shutdown.clone()),
    );
    sup.spawn("apiserver", async move {
        api.run(&certs, listener, shutdown).await
    });
    Ok(())
}

/// Starts the local agent in-process, as `system:node:<name>`.
fn start_agent(
    sup: &mut Supervisor,
    args: &ServerArgs,
    name: &str,
    api: &crate::apiserver::ApiServer,
    certs: &crate::tls::cluster::ClusterTls,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addresses = node_addresses(args)?;
    let node_ip = addresses
        .first()
        .map_or_else(|| advertised_api(args).to_string(), ToString::to_string);
    let mut sans = host_sans(name);
    if !sans.contains(&node_ip) {
        sans.push(node_ip.clone());
    }
    let serving = crate::tls::cluster::ensure_kubelet_serving(&args.data_dir, name, &sans)
        .context("failed to prepare the kubelet's serving certificate")?;
    let client =
        crate::client::in_process(api.router_as(&format!("system:node:{name}"), &["system:nodes"]));
    let config = crate::agent::AgentConfig {
        data_dir: args.data_dir.clone(),
        node_name: name.to_string(),
        node_ip: node_ip.clone(),
        secondary_node_ips: addresses.iter().skip(1).map(ToString::to_string).collect(),
        external_ips: args
            .network
            .node_external_ip
            .iter()
            .map(ToString::to_string)
            .collect(),
        runtime_endpoint: args.container_runtime_endpoint.clone(),
        cluster_dns: vec![args.cluster_dns.to_string()],
        cluster_domain: args.cluster_domain.clone(),
        kubelet_version: crate::apiserver::kube_version(),
        registries: std::path::PathBuf::from("/etc/krab/registries.yaml"),
        pod_log_root: std::path::PathBuf::from("/var/log/pods"),
        node_labels: Default::default(),
        kubelet: crate::agent::kubelet_settings(&args.network.kubelet_arg)?,
        kubelet_port: args.kubelet_port,
        kubelet_tls: Some(crate::agent::kubelet_api::KubeletServingTls {
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
            client_ca_pem: certs.client_ca_pem.clone(),
            identity: None,
        }),
        service_proxy: (!args.network.disable_kube_proxy).then(|| {
            crate::agent::service_proxy::ProxyConfig::new(
                &args.cluster_cidr,
                &args.service_cidr,
                args.cluster_dns.into(),
                &node_ip,
                args.network.dns_port,
                name,
            )
        }),
        pod_network: crate::agent::AgentConfig::pod_network_for(
            args.network.pod_network_backend,
            name,
            &node_ip,
            args.network.pod_network_iface.as_deref(),
        ),
        network_policy: !args.network.disable_network_policy,
        dns: (!args.network.disable_kube_proxy).then(|| {
            crate::agent::AgentConfig::dns_for(
                &node_ip,
                args.network.dns_port,
                &args.cluster_domain,
            )
        }),
    };
    // The node's role is the cluster's to give (NodeRestriction keeps kubelets from setting
    // `node-role.kubernetes.io/*`), as k3s's server labels its own node.
    let labeller =
        crate::client::in_process(api.router_as("system:krab-server", &["system:masters"]));
    sup.spawn(
        "control-plane-label",
        node_role::label_control_plane(labeller, name.to_string(), shutdown.clone()),
    );
    crate::agent::spawn(sup, config, client, shutdown).context("failed to start the agent")
}

/// Starts the controllers and the scheduler, each in-process under its own identity and
/// each under its own Lease, so that of several servers exactly one runs each.
fn start_loops(
    sup: &mut Supervisor,
    args: &ServerArgs,
    name: &str,
    api: &crate::apiserver::ApiServer,
    certs: &crate::tls::cluster::ClusterTls,
    health: &crate::lifecycle::health::LoopHealth,
    shutdown: CancellationToken,
) {
    use crate::client::{in_process, LeaderElection, LeaseConfig};
    let lease = |lease: &str| LeaseConfig {
        namespace: "kube-system".into(),
        name: lease.into(),
        identity: name.to_string(),
        // kube uses 15 s and retries every 2 s, so a takeover can take 17 s after the
        // leader's last renewal; 12 s keeps it within 15 s of the leader's death.
        duration: std::time::Duration::from_secs(12),
        renew: std::time::Duration::from_secs(2),
    };
    let selection = crate::controllers::Selection {
        disabled: args
            .disable_controller
            .iter()
            .cloned()
            .chain(args.disable.iter().filter_map(|d| match d.as_str() {
                "servicelb" => Some("servicelb".to_string()),
                "local-storage" => Some("local-path".to_string()),
                _ => None,
            }))
            .collect(),
    };
    let cluster = crate::controllers::ClusterInfo {
        root_ca: Some(certs.server_ca_pem.clone()),
        cluster_cidr: Some(args.cluster_cidr),
        service_account_key: Some(certs.service_account.clone()),
        storage_dir: Some(args.data_dir.join("storage")),
        local_node: (!args.disable_agent).then(|| name.to_string()),
        health: health.clone(),
    };
    use crate::controllers::MANAGER;
    let cm = in_process(api.router_as(MANAGER, &[]));
    // Each loop acts as its own service account in kube-system, so RBAC applies per loop.
    let callers = api.callers();
    let client_for: crate::controllers::ClientFor = std::sync::Arc::new(move |identity| {
        if identity == MANAGER {
            return in_process(callers.router_as(MANAGER, &[]));
        }
        let user = format!("system:serviceaccount:kube-system:{identity}");
        in_process(callers.router_as(
            &user,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
            ],
        ))
    });
    let election = LeaderElection::new(cm, lease("kube-controller-manager"));
    let stop = shutdown.clone();
    if !args.disable_controller_manager {
        // Every enabled loop has a check on /readyz from the start, standing by.
        for (loop_name, _) in crate::controllers::LOOPS {
            if !selection.disabled.iter().any(|d| d == loop_name) {
                health.reporter(&crate::controllers::check_name(loop_name));
            }
        }
        sup.spawn("controllers", async move {
            election
                .run(stop, |term| {
                    crate::controllers::run(
                        client_for.clone(),
                        cluster.clone(),
                        selection.clone(),
                        term,
                    )
                })
                .await;
            Ok(())
        });
    }
    if !args.disable_scheduler {
        let sched = in_process(api.router_as("system:kube-scheduler", &[]));
        let election = LeaderElection::new(sched.clone(), lease("kube-scheduler"));
        let reporter = health.reporter("scheduler");
        sup.spawn("scheduler", async move {
            election
                .run(shutdown, |term| {
                    let (sched, reporter) = (sched.clone(), reporter.clone());
                    async move {
                        reporter.running();
                        crate::scheduler::run(sched, term).await;
                        reporter.standby();
                    }
                })
                .await;
            Ok(())
        });
    }
}

/// With `--datastore-endpoint`, the server keeps its state in an external etcd and runs no
/// embedded store (and serves no etcd endpoint of its own), as k3s does.
async fn run_external(
    args: &ServerArgs,
    endpoint: &str,
    api_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let read = |p: &Option<std::path::PathBuf>, flag: &str| -> anyhow::Result<Option<Vec<u8>>> {
        p.as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("{flag} {}", p.display())))
            .transpose()
    };
    let cfg = ExternalConfig {
        endpoints: endpoint.split(',').map(|s| s.trim().to_string()).collect(),
        ca_pem: read(&args.datastore_cafile, "--datastore-cafile")?,
        cert_pem: read(&args.datastore_certfile, "--datastore-certfile")?,
        key_pem: read(&args.datastore_keyfile, "--datastore-keyfile")?,
    };
    // The datastore may be starting at the same time (boot): retry for a while, then give up
    // with the last error.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let datastore = loop {
        let attempt = async {
            let external = ExternalEtcd::connect(&cfg).await?;
            let datastore = Datastore::External(Box::new(external));
            // Prove the endpoint answers before declaring the datastore ready.
            datastore
                .range(crate::store::types::RangeRequest {
                    key: b"/registry/health".to_vec(),
                    ..Default::default()
                })
                .await?;
            Ok::<_, crate::store::Error>(datastore)
        };
        match attempt.await {
            Ok(d) => break d,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(endpoint, error = %e, "datastore not answering yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("--datastore-endpoint {endpoint} did not answer"))
            }
        }
    };
    tracing::info!(endpoint, "datastore ready (external etcd)");
    let name = node_name(&args.node_name);
    let mut sup = Supervisor::new(shutdown.clone());
    start_apiserver(&mut sup, args, &name, datastore, api_listener, shutdown)?;
    sup.wait().await
}

pub async fn run(args: ServerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    validate(&args)?;
    let api_addr = std::net::SocketAddr::new(args.bind_address, args.https_listen_port);
    let api_listener = TcpListener::bind(api_addr).await.with_context(|| {
        format!("failed to listen on {api_addr} (--bind-address, --https-listen-port)")
    })?;
    if let Some(endpoint) = &args.datastore_endpoint {
        return run_external(&args, endpoint, api_listener, shutdown).await;
    }
    let name = node_name(&args.node_name);
    // Bind every port before starting anything (a taken port fails fast and cleanly).
    let etcd_listener = TcpListener::bind(args.etcd_listen)
        .await
        .with_context(|| format!("failed to listen on --etcd-listen {}", args.etcd_listen))?;

    let db_dir = args.data_dir.join("server").join("db");
    let member_exists = db_dir.join("member.json").exists();
    let clustered =
        args.cluster_init || args.server.is_some() || member_exists && peers_configured(&db_dir);
    let tls_dir = args.data_dir.join("server").join("tls").join("etcd");
    if let (Some(url), false) = (&args.server, member_exists) {
        if !tls_dir.join("peer-ca.crt").exists() {
            // The token names the cluster's CA; fetch it before trusting anything else.
            let token = args.token.as_deref().unwrap_or_default();
            let cas = crate::store::bootstrap::fetch_cluster_cas(url, token)
                .await
                .with_context(|| format!("failed to join the cluster at {url}"))?;
            tls::install_ca(&tls_dir, "peer-ca", &cas.peer.0, &cas.peer.1)
                .context("failed to install the cluster's peer CA")?;
            // The API servers of one cluster share their CAs: any server's kubeconfig works
            // against every server.
            let cluster_dir = args.data_dir.join("server").join("tls");
            for (name, ca) in [("server-ca", &cas.server), ("client-ca", &cas.client)] {
                if let Some((cert, key)) = ca {
                    tls::install_ca(&cluster_dir, name, cert, key)
                        .with_context(|| format!("failed to install the cluster's {name}"))?;
                }
            }
            if let Some(pem) = &cas.service_key {
                tls::install_service_key(&cluster_dir, pem)
                    .context("failed to install the cluster's service-account key")?;
            }
            tracing::info!(server = %url, "verified the cluster CA against the token");
        }
    }
    let peer_listener = if clustered {
        let l = TcpListener::bind(args.etcd_peer_listen)
            .await
            .with_context(|| {
                format!(
                    "failed to listen on --etcd-peer-listen {}",
                    args.etcd_peer_listen
                )
            })?;
        Some(l)
    } else {
        None
    };

    let sans = host_sans(&name);
    let certs =
        tls::ensure_etcd(&args.data_dir, &sans).context("failed to prepare certificates")?;
    if args.cluster_reset {
        crate::store::reset::reset(&db_dir, &name, args.cluster_reset_restore_path.as_deref())
            .context("cluster reset failed")?;
    }
    let mut cfg = StoreConfig::new(db_dir.clone());
    cfg.name = name.clone();
    cfg.client_url = format!("https://{}", args.etcd_listen);
    cfg.peer_url = format!("https://{}", advertised_peer(&args));
    cfg.cache_bytes = args.etcd_cache_mb << 20;
    let peer_tls = PeerTls {
        ca_pem: certs.peer_ca_pem.clone(),
        cert_pem: certs.peer.cert_pem.clone(),
        key_pem: certs.peer.key_pem.clone(),
    };
    let token = if clustered {
        Some(cluster_token(&args, &certs.peer_ca_pem)?)
    } else {
        None
    };
    let mut joined_members = None;
    if let (Some(url), false) = (&args.server, member_exists) {
        let request = peer::pb::JoinRequest {
            name: name.clone(),
            peer_url: cfg.peer_url.clone(),
            client_url: cfg.client_url.clone(),
            token: String::new(),
        };
        let joined = peer::join(
            url,
            &peer_tls,
            token.as_deref().unwrap_or_default(),
            request,
        )
        .await
        .with_context(|| format!("failed to join the cluster at {url}"))?;
        tracing::info!(
            id = format!("{:x}", joined.member_id),
            members = joined.members.len(),
            "joined the cluster"
        );
        cfg.bootstrap = false;
        cfg.join_as = Some(Identity {
            member_id: joined.member_id,
            cluster_id: joined.cluster_id,
            name: name.clone(),
        });
        joined_members = Some(joined.members);
    }
    let member_id = match &cfg.join_as {
        Some(j) => j.member_id,
        None => read_member_id(&db_dir).unwrap_or(0),
    };
    let grpc = if clustered {
        Some(GrpcTransport::new(
            member_id,
            peer_tls.clone(),
            shutdown.clone(),
        ))
    } else {
        None
    };
    let transport: Arc<dyn Transport> = match &grpc {
        Some(g) => Arc::new(g.clone()),
        None => Arc::new(NoPeers),
    };
    let store = tokio::task::spawn_blocking(move || Store::open(cfg, transport))
        .await?
        .context("failed to open the datastore")?;
    if let Some(g) = &grpc {
        g.set_me(store.identity().member_id);
        g.report_to(store.sender());
        store.set_forwarder(Arc::new(g.clone()));
        match &joined_members {
            Some(members) => g.set_members(members),
            None => g.set_members(&store.members()),
        }
    }
    tracing::info!(
        member = %name,
        id = format!("{:x}", store.identity().member_id),
        rev = store.current_revision(),
        "datastore ready"
    );

    let mut sup = Supervisor::new(shutdown.clone());
    let serving = ServingTls {
        ca_pem: certs.ca_pem.clone(),
        cert_pem: certs.server.cert_pem.clone(),
        key_pem: certs.server.key_pem.clone(),
    };
    tracing::info!(addr = %args.etcd_listen, certs = %certs.dir.display(), "serving the etcd API");
    sup.spawn(
        "etcd-api",
        etcd_api::serve(
            store.clone(),
            etcd_listener,
            Some(serving),
            shutdown.clone(),
        ),
    );
    sup.spawn(
        "store-compactor",
        compactor::run(
            store.clone(),
            args.etcd_compaction_interval,
            shutdown.clone(),
        ),
    );
    if let (Some(listener), Some(g), Some(token)) = (peer_listener, grpc, token) {
        tracing::info!(addr = %args.etcd_peer_listen, "serving Raft peers");
        let service = PeerService {
            store: store.clone(),
            token,
            transport: g,
            ca_cert_pem: certs.peer_ca_pem.clone(),
            ca_key_pem: certs.peer_ca_key_pem.clone(),
            cluster_tls_dir: args.data_dir.join("server").join("tls"),
        };
        sup.spawn(
            "raft-peers",
            peer::serve(service, peer_tls, listener, shutdown.clone()),
        );
    }
    start_apiserver(
        &mut sup,
        &args,
        &name,
        Datastore::Embedded(store.clone()),
        api_listener,
        shutdown.clone(),
    )?;
    let watched = store.clone();
    let stop_watch = shutdown.clone();
    sup.spawn("store-monitor", async move {
        tokio::select! {
            _ = stop_watch.cancelled() => Ok(()),
            _ = watched.stopped() => Err(anyhow::anyhow!(
                "the datastore stopped (removed from the cluster, or a storage failure: see above)"
            )),
        }
    });
    let result = sup.wait().await;
    store.shutdown().await.context("datastore shutdown")?;
    tracing::info!("stopped");
    result
}
