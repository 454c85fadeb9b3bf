//! `krab server`: composes the datastore, its etcd endpoint and (as later issues land) the
//! API server, controllers, scheduler and local agent, in that order, under one supervisor.
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::args::ServerArgs;
use crate::lifecycle::Supervisor;
use crate::store::etcd_api::{self, ServingTls};
use crate::store::raft::transport::NoPeers;
use crate::store::{compactor, Store, StoreConfig};
use crate::tls;

/// Names this host answers to, for certificate SANs.
pub fn host_sans(node_name: &str) -> Vec<String> {
    let mut sans = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        node_name.to_string(),
    ];
    if let Ok(ifaces) = local_ipv4s() {
        for ip in ifaces {
            if !sans.contains(&ip) {
                sans.push(ip);
            }
        }
    }
    sans
}

fn local_ipv4s() -> std::io::Result<Vec<String>> {
    // /proc/net/fib_trie lists local addresses without any extra dependency.
    let text = std::fs::read_to_string("/proc/net/fib_trie")?;
    let mut out = Vec::new();
    let mut last_ip: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(ip) = t.strip_prefix("|-- ") {
            last_ip = Some(ip.to_string());
        } else if t.contains("/32 host LOCAL") {
            if let Some(ip) = last_ip.take() {
                if !ip.starts_with("127.") && !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    Ok(out)
}

pub fn node_name(flag: &Option<String>) -> String {
    flag.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(|_| "krab".into())
    })
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

pub async fn run(args: ServerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    validate(&args)?;
    if args.server.is_some() {
        anyhow::bail!(
            "joining an existing cluster with --server is not available yet in this build \
             (the Raft peer transport is in progress); start a single server instead"
        );
    }
    if args.datastore_endpoint.is_some() {
        anyhow::bail!(
            "--datastore-endpoint is accepted by the datastore layer but there is no API server \
             in this build to use it yet"
        );
    }
    let name = node_name(&args.node_name);
    // Bind every port before starting anything (a taken port fails fast and cleanly).
    let etcd_listener = TcpListener::bind(args.etcd_listen)
        .await
        .with_context(|| format!("failed to listen on --etcd-listen {}", args.etcd_listen))?;

    let sans = host_sans(&name);
    let certs =
        tls::ensure_etcd(&args.data_dir, &sans).context("failed to prepare certificates")?;
    let db_dir = args.data_dir.join("server").join("db");
    if args.cluster_reset {
        crate::store::reset::reset(&db_dir, &name, args.cluster_reset_restore_path.as_deref())
            .context("cluster reset failed")?;
    }
    let mut cfg = StoreConfig::new(db_dir);
    cfg.name = name.clone();
    cfg.client_url = format!("https://{}", args.etcd_listen);
    cfg.cache_bytes = args.etcd_cache_mb << 20;
    let store = tokio::task::spawn_blocking(move || Store::open(cfg, Arc::new(NoPeers)))
        .await?
        .context("failed to open the datastore")?;
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
    let result = sup.wait().await;
    store.shutdown().await.context("datastore shutdown")?;
    tracing::info!("stopped");
    result
}
