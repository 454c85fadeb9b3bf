//! The cluster zone: answers for `<domain>` (cluster.local) from Services and EndpointSlices
//! as CoreDNS's kubernetes plugin gives them (A for cluster IPs, headless services to ready
//! endpoints, `<hostname>.<service>` records, SRV for named ports, CNAME for ExternalName,
//! pod A records from dashed IPs, PTR for service and endpoint addresses), the host's
//! /etc/hosts names, and NXDOMAIN for anything else under the domain. Other names are not
//! the zone's (they are forwarded).
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::agent::mirror::{Mirror, SliceIndex};

/// CoreDNS's kubernetes plugin default.
pub const TTL: u32 = 5;

/// What the zone says about one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The name exists; these are its records of the asked type (maybe none: NODATA).
    Records(Vec<Record>),
    /// The name does not exist in the zone.
    NxDomain,
    /// Not a name of the zone: ask upstream.
    Forward,
}

/// The objects the zone answers from.
pub struct Zone {
    pub domain: String,
    pub services: Mirror<Service>,
    pub slices: Mirror<EndpointSlice>,
    pub index: SliceIndex,
    /// Names from the host's /etc/hosts (lowercase, without the trailing dot).
    pub hosts: HashMap<String, Vec<IpAddr>>,
}

fn record(name: &Name, data: RData) -> Record {
    Record::from_rdata(name.clone(), TTL, data)
}

fn ip_record(name: &Name, ip: IpAddr, qtype: RecordType) -> Option<Record> {
    match (ip, qtype) {
        (IpAddr::V4(a), RecordType::A | RecordType::ANY) => Some(record(name, RData::A(A(a)))),
        (IpAddr::V6(a), RecordType::AAAA | RecordType::ANY) => {
            Some(record(name, RData::AAAA(AAAA(a))))
        }
        _ => None,
    }
}

/// Parses /etc/hosts text.
pub fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in words {
            let list = out
                .entry(name.trim_end_matches('.').to_lowercase())
                .or_default();
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }
    out
}

/// `a.b.c.d.in-addr.arpa` → the address.
fn reverse_v4(labels: &[String]) -> Option<Ipv4Addr> {
    if labels.len() != 6 || labels[4] != "in-addr" || labels[5] != "arpa" {
        return None;
    }
    let o: Vec<u8> = labels[..4]
        .iter()
        .rev()
        .map(|l| l.parse().ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
}

/// `<32 nibbles>.ip6.arpa` → the address.
fn reverse_v6(labels: &[String]) -> Option<Ipv6Addr> {
    if labels.len() != 34 || labels[32] != "ip6" || labels[33] != "arpa" {
        return None;
    }
    let mut value: u128 = 0;
    for l in labels[..32].iter().rev() {
        let nibble = u8::from_str_radix(l, 16).ok().filter(|_| l.len() == 1)?;
        value = (value << 4) | u128::from(nibble);
    }
    Some(Ipv6Addr::from(value))
}

impl Zone {
    pub fn new(domain: &str) -> Zone {
        Zone {
            domain: domain.trim_end_matches('.').to_lowercase(),
            services: Mirror::new(),
            slices: Mirror::new(),
            index: SliceIndex::default(),
            hosts: HashMap::new(),
        }
    }

    /// The zone's SOA (the authority of NXDOMAIN and NODATA answers).
    pub fn soa(&self) -> Option<Record> {
        let origin = Name::from_ascii(format!("{}.", self.domain)).ok()?;
        let mname = Name::from_ascii(format!("ns.dns.{}.", self.domain)).ok()?;
        let rname = Name::from_ascii(format!("hostmaster.{}.", self.domain)).ok()?;
        Some(Record::from_rdata(
            origin,
            TTL,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL)),
        ))
    }

    fn service(&self, ns: &str, name: &str) -> Option<&Service> {
        self.services
            .now
            .get(&format!("{ns}/{name}"))
            .map(|s| s.as_ref())
    }

    /// Ready endpoint addresses of a service, with their hostnames.
    fn endpoints(&self, ns: &str, name: &str) -> Vec<(IpAddr, Option<String>)> {
        let mut out = Vec::new();
        for s in self.index.of(&format!("{ns}/{name}")) {
            for e in &s.endpoints {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let publish = self
                    .service(ns, name)
                    .and_then(|svc| svc.spec.as_ref())
                    .and_then(|s| s.publish_not_ready_addresses)
                    .unwrap_or(false);
                if !ready && !publish {
                    continue;
                }
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        out.push((ip, e.hostname.clone()));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
        let spec = svc.spec.clone().unwrap_or_default();
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .into_iter()
            .chain(spec.cluster_ip)
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    fn headless(svc: &Service) -> bool {
        svc.spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .is_none_or(|ip| ip == "None" || ip.is_empty())
    }

    /// Answers one question.
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Answer {
        let full = qname.to_ascii().trim_end_matches('.').to_lowercase();
        let labels: Vec<String> = full.split('.').map(str::to_string).collect();
        if let Some(ip) = reverse_v4(&labels) {
            return self.reverse(qname, IpAddr::V4(ip), qtype);
        }
        if let Some(ip) = reverse_v6(&labels) {
            return self.reverse(qname, IpAddr::V6(ip), qtype);
        }
        let suffix = format!(".{}", self.domain);
        let Some(inner) = full.strip_suffix(&suffix) else {
            if full == self.domain {
                return Answer::Records(vec![]);
            }
            return self.host_file(qname, &full, qtype);
        };
        let parts: Vec<&str> = inner.split('.').collect();
        match parts.as_slice() {
            [svc, ns, "svc"] => self.service_answer(qname, ns, svc, qtype),
            [first, svc, ns, "svc"] => self.endpoint_answer(qname, ns, svc, first, qtype),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv_answer(qname, ns, svc, &port[1..], &proto[1..], qtype)
            }
            [ip, _ns, "pod"] => {
                let dotted = ip.replace('-', ".");
                let Ok(addr) = dotted.parse::<Ipv4Addr>() else {
                    let v6 = ip.replace('-', ":");
                    return match v6.parse::<Ipv6Addr>() {
                        Ok(a) => Answer::Records(
                            ip_record(qname, IpAddr::V6(a), qtype).into_iter().collect(),
                        ),
                        Err(_) => Answer::NxDomain,
                    };
                };
                Answer::Records(
                    ip_record(qname, IpAddr::V4(addr), qtype)
                        .into_iter()
                        .collect(),
                )
            }
            [_, "svc"] | ["svc"] | ["pod"] | [_, "pod"] => Answer::Records(vec![]),
            _ => Answer::NxDomain,
        }
    }

    fn host_file(&self, qname: &Name, full: &str, qtype: RecordType) -> Answer {
        match self.hosts.get(full) {
            Some(ips) => Answer::Records(
                ips.iter()
                    .filter_map(|ip| ip_record(qname, *ip, qtype))
                    .collect(),
            ),
            None => Answer::Forward,
        }
    }

    fn service_answer(&self, qname: &Name, ns: &str, name: &str, qtype: RecordType) -> Answer {
        let Some(svc) = self.service(ns, name) else {
            return Answer::NxDomain;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec.external_name.unwrap_or_default();
            return match Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) {
                Ok(t) => Answer::Records(vec![record(qname, RData::CNAME(CNAME(t)))]),
                Err(_) => Answer::Records(vec![]),
            };
        }
        let ips: Vec<IpAddr> = if Self::headless(svc) {
            self.endpoints(ns, name)
                .into_iter()
                .map(|(ip, _)| ip)
                .collect()
        } else {
            Self::cluster_ips(svc)
        };
        if qtype == RecordType::SRV {
            // SRV for the service name itself: every named port.
            let mut out = Vec::new();
            for p in spec.ports.iter().flatten() {
                if let Ok(port) = u16::try_from(p.port) {
                    out.push(record(
                        qname,
                        RData::SRV(SRV::new(0, 100, port, qname.clone())),
                    ));
                }
            }
            return Answer::Records(out);
        }
        Answer::Records(
            ips.into_iter()
                .filter_map(|ip| ip_record(qname, ip, qtype))
                .collect(),
        )
    }

    /// `<hostname>.<service>.<ns>.svc`: an endpoint of a headless service by hostname (or by
    /// its dashed IP).
    fn endpoint_answer(
        &self,
        qname: &Name,
        ns: &str,
        name: &str,
        host: &str,
        qtype: RecordType,
    ) -> Answer {
        if self.service(ns, name).is_none() {
            return Answer::NxDomain;
        }
        let matches: Vec<IpAddr> = self
            .endpoints(ns, name)
            .into_iter()
            .filter(|(ip, h)| {
                h.as_deref() == Some(host) || ip.to_string().replace(['.', ':'], "-") == host
            })
            .map(|(ip, _)| ip)
            .collect();
        if matches.is_empty() {
            return Answer::NxDomain;
        }
        Answer::Records(
            matches
                .into_iter()
                .filter_map(|ip| ip_record(qname, ip, qtype))
                .collect(),
        )
    }

    fn srv_answer(
        &self,
        qname: &Name,
        ns: &str,
        name: &str,
        port: &str,
        proto: &str,
        qtype: RecordType,
    ) -> Answer {
        let Some(svc) = self.service(ns, name) else {
            return Answer::NxDomain;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let Some(p) = spec.ports.iter().flatten().find(|p| {
            p.name.as_deref() == Some(port)
                && p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
        }) else {
            return Answer::NxDomain;
        };
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Answer::Records(vec![]);
        }
        let Ok(number) = u16::try_from(p.port) else {
            return Answer::Records(vec![]);
        };
        let base = format!("{name}.{ns}.svc.{}.", self.domain);
        let mut out = Vec::new();
        if Self::headless(svc) {
            for (ip, host) in self.endpoints(ns, name) {
                let label = host.unwrap_or_else(|| ip.to_string().replace(['.', ':'], "-"));
                if let Ok(target) = Name::from_ascii(format!("{label}.{base}")) {
                    out.push(record(qname, RData::SRV(SRV::new(0, 100, number, target))));
                }
            }
        } else if let Ok(target) = Name::from_ascii(&base) {
            out.push(record(qname, RData::SRV(SRV::new(0, 100, number, target))));
        }
        Answer::Records(out)
    }

    fn reverse(&self, qname: &Name, ip: IpAddr, qtype: RecordType) -> Answer {
        if qtype != RecordType::PTR && qtype != RecordType::ANY {
            return Answer::Forward;
        }
        let mut names = Vec::new();
        for (key, svc) in &self.services.now {
            let Some((ns, name)) = key.split_once('/') else {
                continue;
            };
            if Self::cluster_ips(svc).contains(&ip) {
                names.push(format!("{name}.{ns}.svc.{}.", self.domain));
            }
            if Self::headless(svc) {
                for (addr, host) in self.endpoints(ns, name) {
                    if addr == ip {
                        let label = host.unwrap_or_else(|| ip.to_string().replace(['.', ':'], "-"));
                        names.push(format!("{label}.{name}.{ns}.svc.{}.", self.domain));
                    }
                }
            }
        }
        if names.is_empty() {
            return Answer::Forward;
        }
        names.sort();
        Answer::Records(
            names
                .into_iter()
                .filter_map(|n| Name::from_ascii(n).ok())
                .map(|n| record(qname, RData::PTR(PTR(n))))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn zone() -> Zone {
        let mut z = Zone::new("cluster.local");
        let svc = |j: serde_json::Value| -> Service { serde_json::from_value(j).unwrap() };
        for s in [
            svc(
                serde_json::json!({"metadata": {"name": "web", "namespace": "app"},
                "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}}),
            ),
            svc(
                serde_json::json!({"metadata": {"name": "db", "namespace": "app"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            ),
            svc(
                serde_json::json!({"metadata": {"name": "ext", "namespace": "app"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            ),
            svc(
                serde_json::json!({"metadata": {"name": "dual", "namespace": "app"},
                "spec": {"clusterIP": "10.43.0.30", "clusterIPs": ["10.43.0.30", "fd00:43::1e"],
                    "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]}}),
            ),
        ] {
            z.services.apply(Event::Apply(s), |s| {
                crate::agent::mirror::object_key(&s.metadata)
            });
        }
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-x", "namespace": "app", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.6"], "hostname": "db-1", "conditions": {"ready": false}}
            ],
            "ports": [{"name": "pg", "port": 5432}]
        }))
        .unwrap();
        let keys = z.slices.apply(Event::Apply(slice), |s| {
            crate::agent::mirror::object_key(&s.metadata)
        });
        z.index.update(&keys, &z.slices);
        z.hosts = parse_hosts("192.0.2.9 files.lan files # comment\n");
        z
    }

    fn ask(z: &Zone, name: &str, t: RecordType) -> Vec<String> {
        match z.answer(&Name::from_ascii(name).unwrap(), t) {
            Answer::Records(r) => r.iter().map(|r| r.data.to_string()).collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn dual_stack_services_answer_a_and_aaaa_and_both_reverse_zones() {
        let z = zone();
        assert_eq!(
            ask(&z, "dual.app.svc.cluster.local.", RecordType::A),
            ["10.43.0.30"]
        );
        assert_eq!(
            ask(&z, "dual.app.svc.cluster.local.", RecordType::AAAA),
            ["fd00:43::1e"]
        );
        let nibbles: String = format!(
            "{:032x}",
            u128::from("fd00:43::1e".parse::<Ipv6Addr>().unwrap())
        )
        .chars()
        .rev()
        .map(|c| format!("{c}."))
        .collect();
        assert_eq!(
            ask(&z, &format!("{nibbles}ip6.arpa."), RecordType::PTR),
            ["dual.app.svc.cluster.local."]
        );
        assert_eq!(
            ask(&z, "30.0.43.10.in-addr.arpa.", RecordType::PTR),
            ["dual.app.svc.cluster.local."]
        );
    }

    #[test]
    fn services_resolve_as_coredns_answers_them() {
        let z = zone();
        assert_eq!(
            ask(&z, "web.app.svc.cluster.local.", RecordType::A),
            ["10.43.0.20"]
        );
        assert_eq!(
            ask(&z, "WEB.app.svc.cluster.local.", RecordType::A),
            ["10.43.0.20"]
        );
        assert!(ask(&z, "web.app.svc.cluster.local.", RecordType::AAAA).is_empty());
        assert_eq!(
            ask(&z, "db.app.svc.cluster.local.", RecordType::A),
            ["10.42.0.5"]
        );
        assert_eq!(
            ask(&z, "db-0.db.app.svc.cluster.local.", RecordType::A),
            ["10.42.0.5"]
        );
        assert_eq!(
            ask(&z, "_pg._tcp.db.app.svc.cluster.local.", RecordType::SRV),
            ["0 100 5432 db-0.db.app.svc.cluster.local."]
        );
        assert_eq!(
            ask(&z, "_http._tcp.web.app.svc.cluster.local.", RecordType::SRV),
            ["0 100 80 web.app.svc.cluster.local."]
        );
        assert_eq!(
            ask(&z, "ext.app.svc.cluster.local.", RecordType::A),
            ["example.com."]
        );
        assert_eq!(
            ask(&z, "10-42-0-9.app.pod.cluster.local.", RecordType::A),
            ["10.42.0.9"]
        );
        assert_eq!(
            ask(&z, "20.0.43.10.in-addr.arpa.", RecordType::PTR),
            ["web.app.svc.cluster.local."]
        );
        assert_eq!(
            ask(&z, "nope.app.svc.cluster.local.", RecordType::A),
            ["NxDomain"]
        );
        assert_eq!(
            ask(&z, "example.com.app.svc.cluster.local.", RecordType::A),
            ["NxDomain"]
        );
        assert_eq!(ask(&z, "files.lan.", RecordType::A), ["192.0.2.9"]);
        assert_eq!(ask(&z, "example.org.", RecordType::A), ["Forward"]);
    }
}
