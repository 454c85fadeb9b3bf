//! A pod's sandbox configuration: hostname, DNS, host ports, cgroup parent by QoS class,
//! namespaces and the pod-level security context, as the kubelet derives them.
use std::collections::HashMap;

use k8s_cri::v1 as pb;
use k8s_openapi::api::core::v1::Pod;

use super::Cri;

/// What the node contributes to every sandbox.
#[derive(Debug, Clone)]
pub struct SandboxContext {
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// Where pod log directories are created (`/var/log/pods`).
    pub log_root: std::path::PathBuf,
    /// The node's own resolv.conf search domains (appended after the cluster's).
    pub host_search: Vec<String>,
    /// The node's own resolv.conf nameservers (dnsPolicy Default with a dnsConfig).
    pub host_nameservers: Vec<String>,
    pub node_name: String,
}

#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub config: pb::PodSandboxConfig,
}

fn int64(v: Option<i64>) -> Option<pb::Int64Value> {
    v.map(|value| pb::Int64Value { value })
}

/// The cgroup parent for a QoS class (cgroupfs layout, as the kubelet names them).
pub fn cgroup_parent(qos: &str, uid: &str) -> String {
    let pod = format!("pod{uid}");
    match qos {
        "Guaranteed" => format!("/kubepods/{pod}"),
        "BestEffort" => format!("/kubepods/besteffort/{pod}"),
        _ => format!("/kubepods/burstable/{pod}"),
    }
}

/// DNS for the sandbox per dnsPolicy; None means the node's resolv.conf as it is.
fn dns(pod: &Pod, ctx: &SandboxContext) -> Option<pb::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let node_settings = || pb::DnsConfig {
        servers: ctx.host_nameservers.clone(),
        searches: ctx.host_search.clone(),
        options: Vec::new(),
    };
    let mut cfg = match policy {
        "None" => pb::DnsConfig::default(),
        // The node's settings (as the kubelet reads them from its resolv.conf; with none
        // known, the runtime copies the node's file).
        "Default" => node_settings(),
        "ClusterFirst" if host_network => node_settings(),
        _ => {
            let d = &ctx.cluster_domain;
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            searches.extend(ctx.host_search.iter().cloned());
            pb::DnsConfig {
                servers: ctx.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
    };
    if let Some(extra) = &spec.dns_config {
        for server in extra.nameservers.iter().flatten() {
            if !cfg.servers.contains(server) {
                cfg.servers.push(server.clone());
            }
        }
        for search in extra.searches.iter().flatten() {
            if !cfg.searches.contains(search) {
                cfg.searches.push(search.clone());
            }
        }
        for o in extra.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            cfg.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            cfg.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    if cfg == pb::DnsConfig::default() && policy != "None" {
        return None;
    }
    // resolv.conf holds at most 3 nameservers and 32 search domains (the kubelet trims).
    cfg.servers.truncate(3);
    cfg.searches.truncate(32);
    Some(cfg)
}

impl SandboxSpec {
    pub fn for_pod(pod: &Pod, attempt: u32, ctx: &SandboxContext) -> SandboxSpec {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let hostname = if host_network {
            ctx.node_name.clone()
        } else {
            let h = spec.hostname.clone().unwrap_or_else(|| name.clone());
            h.chars()
                .take(63)
                .collect::<String>()
                .trim_end_matches(['-', '.'])
                .to_string()
        };
        let mut ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let Some(host_port) = p.host_port.filter(|p| *p > 0) else {
                    continue;
                };
                ports.push(pb::PortMapping {
                    protocol: match p.protocol.as_deref() {
                        Some("UDP") => pb::Protocol::Udp as i32,
                        Some("SCTP") => pb::Protocol::Sctp as i32,
                        _ => pb::Protocol::Tcp as i32,
                    },
                    container_port: p.container_port,
                    host_port,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
        let mut labels: HashMap<String, String> = meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        labels.extend(Cri::pod_labels(&uid, &namespace, &name));
        let annotations: HashMap<String, String> = meta
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let psc = spec.security_context.clone().unwrap_or_default();
        let mode = |host: Option<bool>| {
            if host.unwrap_or(false) {
                pb::NamespaceMode::Node as i32
            } else {
                pb::NamespaceMode::Pod as i32
            }
        };
        let pid = if spec.host_pid.unwrap_or(false) {
            pb::NamespaceMode::Node as i32
        } else if spec.share_process_namespace.unwrap_or(false) {
            pb::NamespaceMode::Pod as i32
        } else {
            pb::NamespaceMode::Container as i32
        };
        let qos = pod
            .status
            .as_ref()
            .and_then(|s| s.qos_class.clone())
            .unwrap_or_else(|| "BestEffort".into());
        let sysctls = psc
            .sysctls
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect();
        let config = pb::PodSandboxConfig {
            metadata: Some(pb::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: namespace.clone(),
                attempt,
            }),
            hostname,
            log_directory: ctx
                .log_root
                .join(format!("{namespace}_{name}_{uid}"))
                .display()
                .to_string(),
            dns_config: dns(pod, ctx),
            port_mappings: ports,
            labels,
            annotations,
            linux: Some(pb::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent(&qos, &uid),
                security_context: Some(pb::LinuxSandboxSecurityContext {
                    namespace_options: Some(pb::NamespaceOption {
                        network: mode(spec.host_network),
                        pid,
                        ipc: mode(spec.host_ipc),
                        ..Default::default()
                    }),
                    run_as_user: int64(psc.run_as_user),
                    run_as_group: int64(psc.run_as_group),
                    supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                    // containerd refuses a privileged container in an unprivileged
                    // sandbox; the kubelet makes the sandbox privileged for any.
                    privileged: has_privileged_container(&spec),
                    ..Default::default()
                }),
                sysctls,
                ..Default::default()
            }),
            ..Default::default()
        };
        SandboxSpec { config }
    }

    pub fn log_directory(&self) -> &str {
        &self.config.log_directory
    }
}

/// Whether any container of the pod (init, app or ephemeral) asks to be privileged.
fn has_privileged_container(spec: &k8s_openapi::api::core::v1::PodSpec) -> bool {
    let privileged = |sc: Option<&k8s_openapi::api::core::v1::SecurityContext>| {
        sc.and_then(|s| s.privileged) == Some(true)
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| privileged(c.security_context.as_ref()))
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| privileged(c.security_context.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> SandboxContext {
        SandboxContext {
            cluster_dns: vec!["10.43.0.10".into()],
            cluster_domain: "cluster.local".into(),
            log_root: "/var/log/pods".into(),
            host_search: vec!["lan".into()],
            host_nameservers: vec!["192.0.2.53".into()],
            node_name: "n1".into(),
        }
    }

    fn dns_of(spec: serde_json::Value) -> Option<pb::DnsConfig> {
        let mut spec = spec;
        spec["containers"] = serde_json::json!([{"name": "c", "image": "i"}]);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": spec
        }))
        .unwrap();
        SandboxSpec::for_pod(&pod, 0, &ctx()).config.dns_config
    }

    #[test]
    fn every_dns_policy_gives_what_the_kubelet_gives() {
        // Default: the node's resolv.conf as the agent read it.
        let d = dns_of(serde_json::json!({"dnsPolicy": "Default"})).unwrap();
        assert_eq!(
            (d.servers, d.searches),
            (vec!["192.0.2.53".to_string()], vec!["lan".to_string()])
        );
        // Default with one: the node's servers and searches, then the pod's.
        let d = dns_of(serde_json::json!({"dnsPolicy": "Default",
            "dnsConfig": {"nameservers": ["198.51.100.1"], "searches": ["corp"]}}))
        .unwrap();
        assert_eq!(d.servers, ["192.0.2.53", "198.51.100.1"]);
        assert_eq!(d.searches, ["lan", "corp"]);
        // None: only the pod's own.
        let d = dns_of(serde_json::json!({"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["198.51.100.1"], "options": [{"name": "edns0"}]}}))
        .unwrap();
        assert_eq!(d.servers, ["198.51.100.1"]);
        assert!(d.searches.is_empty());
        assert_eq!(d.options, ["edns0"]);
        // Host network: ClusterFirst falls back to the node's, ClusterFirstWithHostNet not.
        let d = dns_of(serde_json::json!({"hostNetwork": true})).unwrap();
        assert_eq!(d.servers, ["192.0.2.53"]);
        let d = dns_of(
            serde_json::json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        )
        .unwrap();
        assert_eq!(d.servers, ["10.43.0.10"]);
        assert_eq!(
            d.searches[..3],
            ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        );
        assert_eq!(d.options, ["ndots:5"]);
    }

    #[test]
    fn cluster_first_dns_searches_the_namespace_first() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}],
                     "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]}}
        }))
        .unwrap();
        let s = SandboxSpec::for_pod(&pod, 0, &ctx());
        let dns = s.config.dns_config.unwrap();
        assert_eq!(dns.servers, vec!["10.43.0.10"]);
        assert_eq!(dns.searches[0], "ns.svc.cluster.local");
        assert_eq!(dns.options, vec!["ndots:2"]);
        assert_eq!(s.config.port_mappings[0].host_port, 8080);
        assert_eq!(s.config.log_directory, "/var/log/pods/ns_p_u1");
        assert_eq!(
            s.config.linux.unwrap().cgroup_parent,
            "/kubepods/besteffort/podu1"
        );
    }

    #[test]
    fn a_privileged_container_makes_a_privileged_sandbox() {
        let pod = |privileged: bool| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
                "spec": {
                    "initContainers": [{"name": "i", "securityContext": {"privileged": privileged}}],
                    "containers": [{"name": "c"}],
                },
            }))
            .unwrap()
        };
        let privileged = |p: &Pod| {
            SandboxSpec::for_pod(p, 0, &ctx())
                .config
                .linux
                .and_then(|l| l.security_context)
                .map(|s| s.privileged)
        };
        assert_eq!(privileged(&pod(true)), Some(true));
        assert_eq!(privileged(&pod(false)), Some(false));
    }
}
