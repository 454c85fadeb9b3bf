//! The service proxy's rules as data: the statements it uses (a small subset of nftables),
//! the chains they live in and the fixed skeleton of the `ip krab` and `ip6 krab` tables,
//! each renderable in nft's own syntax (for logs, tests and `krab agent --cleanup` messages).
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The address family a table (and everything in it) is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// nft's word for the table family and its address matches (`ip`, `ip6`).
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The Kubernetes name (`IPv4`, `IPv6`: EndpointSlice addressType, ipFamilies).
    pub fn api_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// Where the source and destination addresses sit in the network header.
    pub fn saddr_offset(self) -> u32 {
        match self {
            Family::V4 => 12,
            Family::V6 => 8,
        }
    }

    pub fn daddr_offset(self) -> u32 {
        match self {
            Family::V4 => 16,
            Family::V6 => 24,
        }
    }

    /// The loopback range, never a service's destination.
    pub fn loopback(self) -> IpNet {
        match self {
            Family::V4 => {
                IpNet::V4(ipnet::Ipv4Net::new([127, 0, 0, 0].into(), 8).unwrap_or_default())
            }
            Family::V6 => IpNet::V6(
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default(),
            ),
        }
    }
}

/// The table every rule lives in; nothing else is touched.
pub const TABLE: &str = "krab";
/// Verdict map: service virtual IP → `goto svc/<ns>/<name>`.
pub const SERVICE_IPS: &str = "service-ips";
/// Verdict map: node port (and load-balancer port on node addresses) → `goto ports/<ns>/<name>`.
pub const SERVICE_PORTS: &str = "service-ports";
/// kube-proxy's masquerade mark.
pub const MASQUERADE_MARK: u32 = 0x4000;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// One nftables statement (a match or an action), as `nft` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `ip daddr [!=] <net>` (`ip6` for an IPv6 range)
    Daddr { net: IpNet, negate: bool },
    /// `ip saddr [!=] <net>`
    Saddr { net: IpNet, negate: bool },
    /// `meta l4proto <proto>`
    L4Proto(u8),
    /// `th dport <port>`
    Dport(u16),
    /// `fib daddr type local`
    FibDaddrLocal,
    /// `numgen random mod <m> 0`: true with probability 1/m.
    NumgenZero { modulus: u32 },
    /// `meta mark set meta mark | <bits>`
    SetMark(u32),
    /// `meta mark & <bits> == <bits>`
    MarkHas(u32),
    /// `ip saddr @<set>`
    SaddrInSet(String, Family),
    /// `update @<set> { ip saddr }` (adds the client, or refreshes its timeout)
    UpdateSaddr(String, Family),
    /// `ip daddr vmap @<map>`
    DaddrVmap(String, Family),
    /// `th dport vmap @<map>`
    DportVmap(String),
    /// `dnat to <addr>:<port>` (`[<v6 addr>]:<port>`)
    Dnat { addr: IpAddr, port: u16 },
    /// `masquerade`
    Masquerade,
    /// `reject` (ICMP port unreachable: a TCP client sees "connection refused")
    Reject,
    /// `goto <chain>`
    Goto(String),
    /// `jump <chain>`
    Jump(String),
    /// `return`
    Return,
    /// `accept`
    Accept,
    /// `drop`
    Drop,
    /// `th dport <lo>-<hi>`
    DportRange(u16, u16),
    /// `ct state established,related`
    CtEstablished,
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = |n: &bool| if *n { "!= " } else { "" };
        match self {
            Stmt::Daddr { net, negate } => {
                write!(f, "{} daddr {}{}", kw(net), neg(negate), show(net))
            }
            Stmt::Saddr { net, negate } => {
                write!(f, "{} saddr {}{}", kw(net), neg(negate), show(net))
            }
            Stmt::L4Proto(p) => write!(f, "meta l4proto {}", proto_name(*p)),
            Stmt::Dport(p) => write!(f, "th dport {p}"),
            Stmt::FibDaddrLocal => write!(f, "fib daddr type local"),
            Stmt::NumgenZero { modulus } => write!(f, "numgen random mod {modulus} 0"),
            Stmt::SetMark(b) => write!(f, "meta mark set meta mark | {b:#x}"),
            Stmt::MarkHas(b) => write!(f, "meta mark & {b:#x} == {b:#x}"),
            Stmt::SaddrInSet(m, fam) => write!(f, "{} saddr @{m}", fam.keyword()),
            Stmt::UpdateSaddr(m, fam) => write!(f, "update @{m} {{ {} saddr }}", fam.keyword()),
            Stmt::DaddrVmap(m, fam) => write!(f, "{} daddr vmap @{m}", fam.keyword()),
            Stmt::DportVmap(m) => write!(f, "th dport vmap @{m}"),
            Stmt::Dnat { addr, port } => {
                write!(f, "dnat to {}", std::net::SocketAddr::new(*addr, *port))
            }
            Stmt::Masquerade => write!(f, "masquerade"),
            Stmt::Reject => write!(f, "reject"),
            Stmt::Goto(c) => write!(f, "goto \"{c}\""),
            Stmt::Jump(c) => write!(f, "jump \"{c}\""),
            Stmt::Return => write!(f, "return"),
            Stmt::Accept => write!(f, "accept"),
            Stmt::Drop => write!(f, "drop"),
            Stmt::DportRange(lo, hi) => write!(f, "th dport {lo}-{hi}"),
            Stmt::CtEstablished => write!(f, "ct state established,related"),
        }
    }
}

fn kw(net: &IpNet) -> &'static str {
    Family::of(&net.addr()).keyword()
}

fn show(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        TCP => "tcp",
        UDP => "udp",
        SCTP => "sctp",
        _ => "unknown",
    }
}

/// A protocol named as Kubernetes names it (`TCP`, `UDP`, `SCTP`).
pub fn proto_number(name: Option<&str>) -> Option<u8> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// One rule: its statements in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule(pub Vec<Stmt>);

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(" "))
    }
}

/// Where a base chain hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Output,
    Postrouting,
    Forward,
}

/// A base chain's hook: (type is nat or filter, hook, priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseHook {
    pub nat: bool,
    pub hook: Hook,
    pub priority: i32,
}

/// A chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    pub name: String,
    pub hook: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

/// What the skeleton depends on.
#[derive(Debug, Clone)]
pub struct Skeleton {
    /// The family of every range and address here.
    pub family: Family,
    pub cluster_cidr: IpNet,
    pub service_cidr: IpNet,
    /// Every node's pod range: other pod-range addresses are rejected, never routed out.
    pub node_pod_cidrs: Vec<IpNet>,
    /// The cluster DNS address and where this node serves it.
    pub cluster_dns: Option<(IpAddr, IpAddr, u16)>,
}

pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const SERVICES: &str = "services";
pub const CLUSTER_GUARD: &str = "cluster-guard";
pub const CLUSTER_DNS: &str = "cluster-dns";

fn net(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

impl Skeleton {
    /// The fixed chains (their rules depend only on the cluster's ranges, the nodes' pod
    /// ranges and the DNS address).
    pub fn chains(&self) -> Vec<ChainDef> {
        let nat = |hook, priority| {
            Some(BaseHook {
                nat: true,
                hook,
                priority,
            })
        };
        let filter = |hook| {
            Some(BaseHook {
                nat: false,
                hook,
                priority: -10,
            })
        };
        let mut guard = Vec::new();
        for cidr in &self.node_pod_cidrs {
            guard.push(Rule(vec![
                Stmt::Daddr {
                    net: *cidr,
                    negate: false,
                },
                Stmt::Return,
            ]));
        }
        // Still addressed to a service range after DNAT: no such service, port or endpoint.
        guard.push(Rule(vec![
            Stmt::Daddr {
                net: self.service_cidr,
                negate: false,
            },
            Stmt::Reject,
        ]));
        // A pod-range address no node owns.
        guard.push(Rule(vec![
            Stmt::Daddr {
                net: self.cluster_cidr,
                negate: false,
            },
            Stmt::Reject,
        ]));
        let mut dns = Vec::new();
        if let Some((_, local, port)) = self.cluster_dns {
            for p in [UDP, TCP] {
                dns.push(Rule(vec![
                    Stmt::L4Proto(p),
                    Stmt::Dport(53),
                    Stmt::Dnat { addr: local, port },
                ]));
            }
        }
        let mut services = Vec::new();
        if let Some((ip, _, _)) = self.cluster_dns {
            services.push(Rule(vec![
                Stmt::Daddr {
                    net: net(ip),
                    negate: false,
                },
                Stmt::Goto(CLUSTER_DNS.into()),
            ]));
        }
        services.push(Rule(vec![Stmt::DaddrVmap(SERVICE_IPS.into(), self.family)]));
        services.push(Rule(vec![
            Stmt::Daddr {
                net: self.family.loopback(),
                negate: true,
            },
            Stmt::FibDaddrLocal,
            Stmt::DportVmap(SERVICE_PORTS.into()),
        ]));
        vec![
            ChainDef {
                name: SERVICES.into(),
                hook: None,
                rules: services,
            },
            ChainDef {
                name: CLUSTER_DNS.into(),
                hook: None,
                rules: dns,
            },
            ChainDef {
                name: CLUSTER_GUARD.into(),
                hook: None,
                rules: guard,
            },
            ChainDef {
                name: NAT_PREROUTING.into(),
                hook: nat(Hook::Prerouting, -100),
                rules: vec![Rule(vec![Stmt::Jump(SERVICES.into())])],
            },
            ChainDef {
                name: NAT_OUTPUT.into(),
                hook: nat(Hook::Output, -100),
                rules: vec![Rule(vec![Stmt::Jump(SERVICES.into())])],
            },
            ChainDef {
                name: NAT_POSTROUTING.into(),
                hook: nat(Hook::Postrouting, 100),
                rules: vec![
                    Rule(vec![Stmt::MarkHas(MASQUERADE_MARK), Stmt::Masquerade]),
                    // Pods reaching beyond the cluster's pod range leave with the node's
                    // address (pod to pod, on any node, keeps its source).
                    Rule(vec![
                        Stmt::Saddr {
                            net: self.cluster_cidr,
                            negate: false,
                        },
                        Stmt::Daddr {
                            net: self.cluster_cidr,
                            negate: true,
                        },
                        Stmt::Masquerade,
                    ]),
                ],
            },
            ChainDef {
                name: FILTER_FORWARD.into(),
                hook: filter(Hook::Forward),
                rules: vec![Rule(vec![Stmt::Jump(CLUSTER_GUARD.into())])],
            },
            ChainDef {
                name: FILTER_OUTPUT.into(),
                hook: filter(Hook::Output),
                rules: vec![Rule(vec![Stmt::Jump(CLUSTER_GUARD.into())])],
            },
        ]
    }
}

/// Renders chains as `nft list table` would (without handles and counters).
pub fn render(chains: &[ChainDef], family: Family) -> String {
    let mut out = format!("table {} {TABLE} {{\n", family.keyword());
    for c in chains {
        out.push_str(&format!("\tchain {} {{\n", c.name));
        if let Some(h) = c.hook {
            let hook = match h.hook {
                Hook::Prerouting => "prerouting",
                Hook::Output => "output",
                Hook::Postrouting => "postrouting",
                Hook::Forward => "forward",
            };
            let kind = if h.nat { "nat" } else { "filter" };
            out.push_str(&format!(
                "\t\ttype {kind} hook {hook} priority {}; policy accept;\n",
                h.priority
            ));
        }
        for r in &c.rules {
            out.push_str(&format!("\t\t{r}\n"));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_render_as_nft_writes_them() {
        let r = Rule(vec![
            Stmt::Saddr {
                net: "10.42.0.0/16".parse().unwrap(),
                negate: true,
            },
            Stmt::SetMark(MASQUERADE_MARK),
        ]);
        assert_eq!(
            r.to_string(),
            "ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x4000"
        );
        let d = Rule(vec![
            Stmt::L4Proto(TCP),
            Stmt::Dnat {
                addr: "10.42.0.7".parse().unwrap(),
                port: 8080,
            },
        ]);
        assert_eq!(d.to_string(), "meta l4proto tcp dnat to 10.42.0.7:8080");
    }

    #[test]
    fn an_ipv6_skeleton_speaks_ip6() {
        let s = Skeleton {
            family: Family::V6,
            cluster_cidr: "fd00:42::/56".parse().unwrap(),
            service_cidr: "fd00:43::/112".parse().unwrap(),
            node_pod_cidrs: vec!["fd00:42::/64".parse().unwrap()],
            cluster_dns: None,
        };
        let text = render(&s.chains(), Family::V6);
        assert!(text.starts_with("table ip6 krab {"), "{text}");
        assert!(text.contains("ip6 daddr vmap @service-ips"), "{text}");
        assert!(
            text.contains("ip6 daddr != ::1 fib daddr type local"),
            "{text}"
        );
        assert!(
            text.contains(
                "\t\tip6 daddr fd00:42::/64 return\n\t\tip6 daddr fd00:43::/112 reject\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("ip6 saddr fd00:42::/56 ip6 daddr != fd00:42::/56 masquerade"),
            "{text}"
        );
    }

    #[test]
    fn the_skeleton_rejects_unowned_ranges_after_known_pod_ranges() {
        let s = Skeleton {
            family: Family::V4,
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.43.0.0/16".parse().unwrap(),
            node_pod_cidrs: vec!["10.42.1.0/24".parse().unwrap()],
            cluster_dns: Some((
                "10.43.0.10".parse().unwrap(),
                "192.0.2.2".parse().unwrap(),
                53,
            )),
        };
        let text = render(&s.chains(), Family::V4);
        assert!(text.contains(
            "\t\tip daddr 10.42.1.0/24 return\n\t\tip daddr 10.43.0.0/16 reject\n\t\tip daddr 10.42.0.0/16 reject\n"
        ), "{text}");
        assert!(text.contains("ip daddr 10.43.0.10 goto \"cluster-dns\""));
        assert!(
            text.contains("ip saddr 10.42.0.0/16 ip daddr != 10.42.0.0/16 masquerade"),
            "{text}"
        );
        assert!(text.contains("meta l4proto udp th dport 53 dnat to 192.0.2.2:53"));
    }
}
