//! NetworkPolicies turned into nftables chains for the pods of one node, as the Kubernetes
//! documentation describes them: a pod selected by a policy of a type is isolated for that
//! direction and allows only what some rule of those policies allows (peers by pod selector,
//! namespace selector, both, or ipBlock with except; ports by number, name or range; any
//! protocol); a pod no policy selects is not isolated. Replies of allowed connections pass.
//! Compiled per IP family (a table each): a family's rules hold the pods' addresses and
//! the ipBlocks of that family.
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::agent::service_proxy::rules::{
    proto_number, BaseHook, ChainDef, Family, Hook, Rule, Stmt,
};

/// One rule of a policy: its peers and its ports (None: any).
type AllowRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

/// What policy needs to know of a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Its addresses (one per family on a dual-stack cluster).
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub node: String,
    /// Container ports: (name, number, protocol).
    pub ports: Vec<(String, u16, String)>,
}

pub use crate::resources::placement::label_selector_matches as selects;

impl PodInfo {
    fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(ip) == family)
    }
}

/// The source (or destination) matches of one peer, each a list of statements.
fn peer_matches<'p>(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    pods: &'p [PodInfo],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    ingress: bool,
    family: Family,
) -> Vec<(Vec<Stmt>, Option<&'p PodInfo>)> {
    let field = |net: IpNet, negate: bool| {
        if ingress {
            Stmt::Saddr { net, negate }
        } else {
            Stmt::Daddr { net, negate }
        }
    };
    let of_family = |net: &IpNet| Family::of(&net.addr()) == family;
    if let Some(block) = &peer.ip_block {
        let Some(cidr) = block.cidr.parse::<IpNet>().ok().filter(of_family) else {
            return vec![];
        };
        let mut stmts: Vec<Stmt> = block
            .except
            .iter()
            .flatten()
            .filter_map(|e| e.parse::<IpNet>().ok().filter(of_family))
            .map(|e| field(e.trunc(), true))
            .collect();
        stmts.push(field(cidr.trunc(), false));
        return vec![(stmts, None)];
    }
    let empty = BTreeMap::new();
    pods.iter()
        .filter(|p| match (&peer.namespace_selector, &peer.pod_selector) {
            (None, Some(ps)) => p.namespace == policy_ns && selects(ps, &p.labels),
            (Some(ns), ps) => {
                selects(ns, namespaces.get(&p.namespace).unwrap_or(&empty))
                    && ps.as_ref().is_none_or(|ps| selects(ps, &p.labels))
            }
            (None, None) => false,
        })
        .filter_map(|p| Some((vec![field(IpNet::from(p.ip_of(family)?), false)], Some(p))))
        .collect()
}

/// The port matches of a rule's ports for traffic to `target` (named ports resolve there);
/// one empty match when the rule names no ports.
fn port_matches(
    ports: Option<&Vec<NetworkPolicyPort>>,
    target: Option<&PodInfo>,
) -> Vec<Vec<Stmt>> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![vec![]];
    };
    let mut out = Vec::new();
    for p in ports {
        let proto_name = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let Some(proto) = proto_number(Some(&proto_name)) else {
            continue;
        };
        match &p.port {
            None => out.push(vec![Stmt::L4Proto(proto)]),
            Some(IntOrString::Int(n)) => {
                let Ok(lo) = u16::try_from(*n) else { continue };
                match p.end_port.and_then(|e| u16::try_from(e).ok()) {
                    Some(hi) if hi > lo => {
                        out.push(vec![Stmt::L4Proto(proto), Stmt::DportRange(lo, hi)])
                    }
                    _ => out.push(vec![Stmt::L4Proto(proto), Stmt::Dport(lo)]),
                }
            }
            Some(IntOrString::String(name)) => {
                for (_, number, _) in target
                    .iter()
                    .flat_map(|t| t.ports.iter())
                    .filter(|(n, _, pr)| n == name && *pr == proto_name)
                {
                    out.push(vec![Stmt::L4Proto(proto), Stmt::Dport(*number)]);
                }
            }
        }
    }
    out
}

fn types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.clone().unwrap_or_default();
    match spec.policy_types {
        Some(t) => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        None => (true, spec.egress.is_some()),
    }
}

/// The `forward` base chain and one chain per isolated direction of each local pod, for
/// the table of `family`.
pub fn compile(
    policies: &[&NetworkPolicy],
    pods: &[PodInfo],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    node: &str,
    family: Family,
) -> Vec<ChainDef> {
    let mut chains = Vec::new();
    let mut dispatch = vec![Rule(vec![Stmt::CtEstablished, Stmt::Accept])];
    for pod in pods.iter().filter(|p| p.node == node) {
        let Some(pod_ip) = pod.ip_of(family) else {
            continue;
        };
        let selecting: Vec<&NetworkPolicy> = policies
            .iter()
            .copied()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                    && p.spec.as_ref().is_some_and(|s| {
                        s.pod_selector
                            .as_ref()
                            .is_none_or(|sel| selects(sel, &pod.labels))
                    })
            })
            .collect();
        for ingress in [true, false] {
            let isolating: Vec<&NetworkPolicy> = selecting
                .iter()
                .copied()
                .filter(|p| if ingress { types(p).0 } else { types(p).1 })
                .collect();
            if isolating.is_empty() {
                continue;
            }
            let name = format!(
                "{}/{}/{}",
                if ingress { "ingress" } else { "egress" },
                pod.namespace,
                pod.name
            );
            let mut rules = Vec::new();
            for policy in &isolating {
                let spec = policy.spec.clone().unwrap_or_default();
                let policy_ns = policy.metadata.namespace.clone().unwrap_or_default();
                let allow: Vec<AllowRule> = if ingress {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.from.clone(), r.ports.clone()))
                        .collect()
                } else {
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.to.clone(), r.ports.clone()))
                        .collect()
                };
                for (peers, ports) in allow {
                    let peer_list: Vec<(Vec<Stmt>, Option<&PodInfo>)> =
                        match peers.filter(|p| !p.is_empty()) {
                            None => vec![(vec![], None)],
                            Some(peers) => peers
                                .iter()
                                .flat_map(|p| {
                                    peer_matches(p, &policy_ns, pods, namespaces, ingress, family)
                                })
                                .collect(),
                        };
                    for (peer, peer_pod) in &peer_list {
                        // Named ports are the destination's: this pod for ingress, the
                        // peer for egress.
                        let target = if ingress { Some(pod) } else { *peer_pod };
                        for port in port_matches(ports.as_ref(), target) {
                            let mut r = peer.clone();
                            r.extend(port);
                            r.push(Stmt::Return);
                            rules.push(Rule(r));
                        }
                    }
                }
            }
            rules.push(Rule(vec![Stmt::Drop]));
            dispatch.push(Rule(vec![
                if ingress {
                    Stmt::Daddr {
                        net: IpNet::from(pod_ip),
                        negate: false,
                    }
                } else {
                    Stmt::Saddr {
                        net: IpNet::from(pod_ip),
                        negate: false,
                    }
                },
                Stmt::Jump(name.clone()),
            ]));
            chains.push(ChainDef {
                name,
                hook: None,
                rules,
            });
        }
    }
    chains.push(ChainDef {
        name: "forward".into(),
        hook: Some(BaseHook {
            nat: false,
            hook: Hook::Forward,
            priority: 0,
        }),
        rules: dispatch,
    });
    chains
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::service_proxy::rules::render;

    fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)], node: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            ips: ip.split(',').map(|i| i.parse().unwrap()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: node.into(),
            ports: vec![("http".into(), 8080, "TCP".into())],
        }
    }

    #[test]
    fn selected_pods_allow_only_their_peers_and_ports() {
        let pods = vec![
            pod("app", "web", "10.42.0.5", &[("app", "web")], "n1"),
            pod("app", "client", "10.42.1.6", &[("app", "client")], "n2"),
            pod("other", "x", "10.42.1.7", &[], "n2"),
        ];
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = [
            ("app".to_string(), BTreeMap::new()),
            (
                "other".to_string(),
                [("team".to_string(), "a".to_string())].into(),
            ),
        ]
        .into();
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "app"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "http"}]},
                    {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]},
                    {"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}],
                     "ports": [{"port": 9000, "endPort": 9010, "protocol": "UDP"}]}
                ]
            }
        }))
        .unwrap();
        let chains = compile(&[&policy], &pods, &namespaces, "n1", Family::V4);
        let text = render(&chains, Family::V4);
        assert!(
            text.contains("ip daddr 10.42.0.5 jump \"ingress/app/web\""),
            "{text}"
        );
        assert!(
            text.contains("ip saddr 10.42.1.6 meta l4proto tcp th dport 8080 return"),
            "{text}"
        );
        assert!(text.contains("ip saddr 10.42.1.7 return"), "{text}");
        assert!(text.contains(
            "ip saddr != 192.0.2.128/25 ip saddr 192.0.2.0/24 meta l4proto udp th dport 9000-9010 return"
        ), "{text}");
        assert!(text.contains("\t\tdrop\n"), "{text}");
        // Not isolated for egress, and pods of other nodes are not this node's to police.
        assert!(!text.contains("egress/"), "{text}");
        assert!(!text.contains("ingress/app/client"), "{text}");
    }

    #[test]
    fn an_empty_ingress_list_denies_all() {
        let pods = vec![pod("app", "web", "10.42.0.5", &[("app", "web")], "n1")];
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "app"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        }))
        .unwrap();
        let chains = compile(&[&policy], &pods, &BTreeMap::new(), "n1", Family::V4);
        let ingress = chains.iter().find(|c| c.name == "ingress/app/web").unwrap();
        assert_eq!(ingress.rules, vec![Rule(vec![Stmt::Drop])]);
        assert!(chains.iter().any(|c| c.name == "egress/app/web"));
    }

    #[test]
    fn each_family_polices_its_own_addresses() {
        let pods = vec![
            pod(
                "app",
                "web",
                "10.42.0.5,fd00:42::5",
                &[("app", "web")],
                "n1",
            ),
            pod(
                "app",
                "client",
                "10.42.1.6,fd00:42:0:1::6",
                &[("app", "client")],
                "n2",
            ),
        ];
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "app"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]},
                    {"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}
                ]
            }
        }))
        .unwrap();
        let ns = BTreeMap::new();
        let v6 = render(
            &compile(&[&policy], &pods, &ns, "n1", Family::V6),
            Family::V6,
        );
        assert!(
            v6.contains("ip6 daddr fd00:42::5 jump \"ingress/app/web\""),
            "{v6}"
        );
        assert!(v6.contains("ip6 saddr fd00:42:0:1::6 return"), "{v6}");
        // An IPv4 block allows nothing over IPv6.
        assert!(!v6.contains("192.0.2.0"), "{v6}");
        assert!(!v6.contains("10.42."), "{v6}");
        let v4 = render(
            &compile(&[&policy], &pods, &ns, "n1", Family::V4),
            Family::V4,
        );
        assert!(v4.contains("ip saddr 192.0.2.0/24 return"), "{v4}");
        assert!(!v4.contains("fd00"), "{v4}");
    }
}
