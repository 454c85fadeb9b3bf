//! `krab agent` as its own process: join the server named by `--server` with `--token`, then
//! run the same tasks as the agent inside `krab server` (containerd, kubelet, kubelet API)
//! under a supervisor, talking to the server over HTTPS as `system:node:<name>`.
use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::kubelet_api::KubeletServingTls;
use super::{join, AgentConfig};
use crate::cli::args::AgentArgs;
use crate::lifecycle::Supervisor;

pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.cleanup {
        let removed = tokio::task::spawn_blocking(super::service_proxy::cleanup)
            .await?
            .context("failed to remove krab's nftables rules")?;
        if removed.is_empty() {
            println!("nothing to remove: there is no nftables table ip krab or ip6 krab");
        }
        for family in removed {
            println!("removed the nftables table {} krab", family.keyword());
        }
        tokio::task::spawn_blocking(super::netpol::cleanup)
            .await?
            .context("failed to remove krab's network policy table")?;
        if super::pod_network::cleanup()
            .await
            .context("failed to remove krab's VXLAN device")?
        {
            println!(
                "removed the VXLAN device {}",
                super::pod_network::VXLAN_DEVICE
            );
        }
        return Ok(());
    }
    let (Some(server), Some(token)) = (&args.server, &args.token) else {
        anyhow::bail!(
            "krab agent needs --server https://<server>:6443 and --token <token> (the server's \
             <data-dir>/server/node-token)"
        );
    };
    let node_name = crate::host::node_name(&args.node_name);
    let addresses = crate::host::node_addresses(
        &args.network.node_ip,
        args.network.pod_network_iface.as_deref(),
        None,
    )?;
    let node_ip = addresses
        .first()
        .map(ToString::to_string)
        .unwrap_or_else(|| "127.0.0.1".into());
    let address_strings: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let joined = join::join(server, token, &node_name, &address_strings, &args.data_dir)
        .await
        .with_context(|| format!("failed to join the cluster at {server}"))?;
    let node_ip_for_proxy = node_ip.clone();
    let node_name_for_net = node_name.clone();
    let config = AgentConfig {
        data_dir: args.data_dir.clone(),
        node_name,
        node_ip,
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
        kubelet_tls: Some(KubeletServingTls {
            cert_pem: joined.credentials.serving_certificate.clone(),
            key_pem: joined.credentials.serving_key.clone(),
            client_ca_pem: joined.credentials.client_ca.clone(),
            identity: Some(joined.identity.clone()),
        }),
        service_proxy: (!args.network.disable_kube_proxy).then(|| {
            super::service_proxy::ProxyConfig::new(
                &args.cluster_cidr,
                &args.service_cidr,
                args.cluster_dns.into(),
                &node_ip_for_proxy,
                args.network.dns_port,
                &node_name_for_net,
            )
        }),
        pod_network: AgentConfig::pod_network_for(
            args.network.pod_network_backend,
            &node_name_for_net,
            &node_ip_for_proxy,
            args.network.pod_network_iface.as_deref(),
        ),
        network_policy: !args.network.disable_network_policy,
        dns: (!args.network.disable_kube_proxy).then(|| {
            AgentConfig::dns_for(
                &node_ip_for_proxy,
                args.network.dns_port,
                &args.cluster_domain,
            )
        }),
    };
    let mut sup = Supervisor::new(shutdown.clone());
    let renewer = super::credentials::CredentialRenewer {
        url: server.clone(),
        token: token.clone(),
        node: config.node_name.clone(),
        addresses: address_strings,
        data_dir: args.data_dir.clone(),
        identity: joined.identity.clone(),
    };
    sup.spawn("credential-renewer", renewer.run(shutdown.clone()));
    super::spawn(&mut sup, config, joined.client, shutdown).context("failed to start the agent")?;
    sup.wait().await
}
