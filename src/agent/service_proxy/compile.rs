//! One Service and its EndpointSlices turned into the chains and map entries that carry it:
//! `svc/<ns>/<name>` (reached from `service-ips` by cluster IP and external IPs),
//! `ports/<ns>/<name>` (reached from `service-ports` by node port and, with a load-balancer
//! address, service port), and one chain per service port choosing an endpoint with equal
//! probability and DNATing to it; the service's endpoint addresses form a set that marks
//! hairpin traffic for masquerade. Ports without a ready endpoint get no
//! rule, so their traffic keeps its service address and the guard rejects it.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::rules::{proto_number, ChainDef, Family, Rule, Stmt, MASQUERADE_MARK};

/// Everything one Service contributes to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Keys of `service-ips` → the chain they go to.
    pub ips: BTreeMap<IpAddr, String>,
    /// Keys of `service-ports` → the chain they go to.
    pub ports: BTreeMap<u16, String>,
    /// The service's own chains, in the order they must be created (targets first).
    pub chains: Vec<ChainDef>,
    /// The service's address sets (its endpoints, for hairpin masquerade).
    pub sets: BTreeMap<String, Vec<IpAddr>>,
    /// sessionAffinity ClientIP: per endpoint, the clients it was chosen for, expiring
    /// after the timeout (milliseconds); kept across updates.
    pub affinity_sets: BTreeMap<String, u64>,
}

/// One endpoint address and port for one service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    addr: IpAddr,
    port: u16,
    /// On this node (externalTrafficPolicy/internalTrafficPolicy Local keep to these).
    local: bool,
}

/// The endpoints of a service port by its name: ready ones, or else serving-and-terminating
/// ones (kube-proxy's fallback so a rolling restart does not drop traffic).
fn targets(
    port: &ServicePort,
    slices: &[&EndpointSlice],
    family: Family,
    proto: &str,
    node: Option<&str>,
) -> Vec<Target> {
    let want = port.name.clone().unwrap_or_default();
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for s in slices {
        if s.address_type != family.api_name() {
            continue;
        }
        let Some(p) = s.ports.iter().flatten().find(|p| {
            p.name.clone().unwrap_or_default() == want
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue;
        };
        let Some(number) = p.port.and_then(|n| u16::try_from(n).ok()) else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            let is_ready = c.ready.unwrap_or(true);
            let serving = c.serving.unwrap_or(is_ready);
            let is_terminating = c.terminating.unwrap_or(false);
            for a in &e.addresses {
                let Some(addr) = a.parse::<IpAddr>().ok().filter(|a| Family::of(a) == family)
                else {
                    continue;
                };
                let t = Target {
                    addr,
                    port: number,
                    local: node.is_some() && e.node_name.as_deref() == node,
                };
                if is_ready {
                    ready.push(t);
                } else if serving && is_terminating {
                    terminating.push(t);
                }
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort();
    chosen.dedup();
    chosen
}

/// The rules of one Service in the table of `cluster_cidr`'s family (its addresses and
/// endpoints of that family), or nothing for a headless or ExternalName Service.
pub fn compile(
    svc: &Service,
    slices: &[&EndpointSlice],
    cluster_cidr: IpNet,
    skip_ip: Option<IpAddr>,
    node: Option<&str>,
) -> ServiceRules {
    let family = Family::of(&cluster_cidr.addr());
    let mut out = ServiceRules::default();
    let Some(spec) = svc.spec.as_ref() else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut vips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .chain(spec.external_ips.iter().flatten())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| Family::of(a) == family && Some(*a) != skip_ip)
        .collect();
    vips.sort();
    vips.dedup();
    // A load balancer of this family (its ingress addresses are node addresses).
    let lb = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .is_some_and(|ingress| {
            ingress.iter().any(|i| {
                i.ip.as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .is_some_and(|ip| Family::of(&ip) == family)
            })
        });
    let svc_chain = format!("svc/{ns}/{name}");
    let ports_chain = format!("ports/{ns}/{name}");
    let mut svc_rules = vec![Rule(vec![
        Stmt::Saddr {
            net: cluster_cidr,
            negate: true,
        },
        Stmt::SetMark(MASQUERADE_MARK),
    ])];
    let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    // Local policies keep to this node's endpoints; external traffic then keeps its client
    // address (no masquerade) and is dropped where no local endpoint exists.
    let etp_local = external && spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let mut port_rules = if etp_local {
        vec![]
    } else {
        vec![Rule(vec![Stmt::SetMark(MASQUERADE_MARK)])]
    };
    let mut endpoint_ips: Vec<IpAddr> = Vec::new();
    // sessionAffinity ClientIP: kube's default timeout is 3 hours.
    let affinity: Option<u64> = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .unwrap_or(10800)
            .clamp(1, 86400);
        secs as u64 * 1000
    });
    for p in spec.ports.iter().flatten() {
        let Some(proto) = proto_number(p.protocol.as_deref()) else {
            continue;
        };
        let proto_name = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let Ok(service_port) = u16::try_from(p.port) else {
            continue;
        };
        let eps = targets(p, slices, family, &proto_name, node);
        let proto_lower = proto_name.to_lowercase();
        let balance = |chain: String, eps: &[Target], out: &mut ServiceRules| -> Option<Stmt> {
            if eps.is_empty() {
                return None;
            }
            let n = eps.len();
            let mut choose = Vec::new();
            let affinity_set = |t: &Target| format!("{chain}/{}:{}", t.addr, t.port);
            if let Some(timeout) = affinity {
                // A client seen lately goes back to its endpoint (and is remembered longer).
                for t in eps {
                    let set = affinity_set(t);
                    choose.push(Rule(vec![
                        Stmt::SaddrInSet(set.clone(), family),
                        Stmt::UpdateSaddr(set.clone(), family),
                        Stmt::Dnat {
                            addr: t.addr,
                            port: t.port,
                        },
                    ]));
                    out.affinity_sets.insert(set, timeout);
                }
            }
            for (i, t) in eps.iter().enumerate() {
                // Endpoint i is taken with probability 1/(n-i) among those left: uniform.
                let left = (n - i) as u32;
                let mut r = Vec::new();
                if left > 1 {
                    r.push(Stmt::NumgenZero { modulus: left });
                }
                if affinity.is_some() {
                    r.push(Stmt::UpdateSaddr(affinity_set(t), family));
                }
                r.push(Stmt::Dnat {
                    addr: t.addr,
                    port: t.port,
                });
                choose.push(Rule(r));
            }
            out.chains.push(ChainDef {
                name: chain.clone(),
                hook: None,
                rules: choose,
            });
            Some(Stmt::Goto(chain))
        };
        endpoint_ips.extend(eps.iter().map(|t| t.addr));
        let all = balance(
            format!("lb/{ns}/{name}/{proto_lower}/{}", p.port),
            &eps,
            &mut out,
        );
        let local: Vec<Target> = eps.iter().filter(|t| t.local).cloned().collect();
        let local_target = if etp_local || itp_local {
            Some(
                balance(
                    format!("lb-local/{ns}/{name}/{proto_lower}/{}", p.port),
                    &local,
                    &mut out,
                )
                .unwrap_or(Stmt::Drop),
            )
        } else {
            None
        };
        let internal = if itp_local {
            local_target.clone()
        } else {
            all.clone()
        };
        let external_target = if etp_local { local_target } else { all };
        if let Some(to) = internal {
            svc_rules.push(Rule(vec![
                Stmt::L4Proto(proto),
                Stmt::Dport(service_port),
                to,
            ]));
        }
        let Some(to) = external_target else {
            continue;
        };
        let node_port = p.node_port.and_then(|n| u16::try_from(n).ok());
        if let Some(np) = node_port.filter(|n| *n > 0) {
            port_rules.push(Rule(vec![
                Stmt::L4Proto(proto),
                Stmt::Dport(np),
                to.clone(),
            ]));
            out.ports.insert(np, ports_chain.clone());
        }
        if lb {
            port_rules.push(Rule(vec![
                Stmt::L4Proto(proto),
                Stmt::Dport(service_port),
                to,
            ]));
            out.ports.insert(service_port, ports_chain.clone());
        }
    }
    endpoint_ips.sort();
    endpoint_ips.dedup();
    if !endpoint_ips.is_empty() && !vips.is_empty() {
        // Hairpin: a pod reaching its own service is masqueraded (so the reply comes back
        // through the NAT); any endpoint as the client counts, one rule for all of them.
        let set = format!("endpoints/{ns}/{name}");
        svc_rules.insert(
            1,
            Rule(vec![
                Stmt::SaddrInSet(set.clone(), family),
                Stmt::SetMark(MASQUERADE_MARK),
            ]),
        );
        out.sets.insert(set, endpoint_ips);
    }
    if !vips.is_empty() {
        for ip in vips {
            out.ips.insert(ip, svc_chain.clone());
        }
        out.chains.push(ChainDef {
            name: svc_chain,
            hook: None,
            rules: svc_rules,
        });
    }
    if !out.ports.is_empty() {
        out.chains.push(ChainDef {
            name: ports_chain,
            hook: None,
            rules: port_rules,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::service_proxy::rules::render;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_cluster_ip_service_balances_over_ready_endpoints_by_port_name() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "type": "NodePort", "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]}
        }));
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.5"]},
                {"addresses": ["10.42.0.9"], "conditions": {"ready": false}}
            ]
        }));
        let r = compile(
            &svc,
            &[&s],
            "10.42.0.0/16".parse().unwrap(),
            None,
            Some("n1"),
        );
        assert_eq!(
            r.ips
                .get(&"10.43.0.20".parse().unwrap())
                .map(String::as_str),
            Some("svc/default/web")
        );
        assert_eq!(
            r.ports.get(&30080).map(String::as_str),
            Some("ports/default/web")
        );
        let text = render(&r.chains, Family::V4);
        assert!(
            text.contains(
                "chain lb/default/web/tcp/80 {\n\t\tnumgen random mod 2 0 dnat to 10.42.0.5:8080\n\t\tdnat to 10.42.0.7:8080\n"
            ),
            "{text}"
        );
        assert!(text.contains("ip saddr @endpoints/default/web meta mark set meta mark | 0x4000"));
        assert_eq!(
            r.sets.get("endpoints/default/web"),
            Some(&vec![
                "10.42.0.5".parse().unwrap(),
                "10.42.0.7".parse().unwrap()
            ])
        );
        assert!(text.contains("meta l4proto tcp th dport 30080 goto \"lb/default/web/tcp/80\""));
        // The UDP port has no endpoint: no rule, so the guard rejects it.
        assert!(!text.contains("udp"), "{text}");
        assert!(!text.contains("10.42.0.9"));
    }

    #[test]
    fn local_traffic_policies_keep_to_this_nodes_endpoints() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "type": "NodePort", "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "nodeName": "n1"},
                {"addresses": ["10.42.1.5"], "nodeName": "n2"}
            ]
        }));
        let cidr = "10.42.0.0/16".parse().unwrap();
        let text = render(
            &compile(&svc, &[&s], cidr, None, Some("n1")).chains,
            Family::V4,
        );
        // The node port: this node's endpoint only, without masquerade.
        assert!(
            text.contains("chain lb-local/default/web/tcp/80 {\n\t\tdnat to 10.42.0.7:8080\n"),
            "{text}"
        );
        assert!(text.contains("chain ports/default/web {\n\t\tmeta l4proto tcp th dport 30080 goto \"lb-local/default/web/tcp/80\"\n"), "{text}");
        // The cluster IP still balances over all.
        assert!(
            text.contains("th dport 80 goto \"lb/default/web/tcp/80\""),
            "{text}"
        );
        // A node without local endpoints drops node-port traffic.
        let text = render(
            &compile(&svc, &[&s], cidr, None, Some("n3")).chains,
            Family::V4,
        );
        assert!(
            text.contains("meta l4proto tcp th dport 30080 drop"),
            "{text}"
        );
    }

    #[test]
    fn client_ip_affinity_sends_a_known_client_back_to_its_endpoint() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.20", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "ports": [{"name": "http", "port": 80}]}
        }));
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.42.0.7"]}, {"addresses": ["10.42.0.8"]}]
        }));
        let r = compile(&svc, &[&s], "10.42.0.0/16".parse().unwrap(), None, None);
        let set = "lb/default/web/tcp/80/10.42.0.7:8080";
        assert_eq!(r.affinity_sets.get(set), Some(&60_000));
        let text = render(&r.chains, Family::V4);
        assert!(
            text.contains(&format!(
                "ip saddr @{set} update @{set} {{ ip saddr }} dnat to 10.42.0.7:8080"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "numgen random mod 2 0 update @{set} {{ ip saddr }} dnat to 10.42.0.7:8080"
            )),
            "{text}"
        );
    }

    #[test]
    fn headless_and_external_name_services_have_no_rules() {
        let headless = service(serde_json::json!({
            "metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        assert_eq!(
            compile(&headless, &[], "10.42.0.0/16".parse().unwrap(), None, None),
            ServiceRules::default()
        );
        let ext = service(serde_json::json!({
            "metadata": {"name": "e", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }));
        assert_eq!(
            compile(&ext, &[], "10.42.0.0/16".parse().unwrap(), None, None),
            ServiceRules::default()
        );
    }
}
