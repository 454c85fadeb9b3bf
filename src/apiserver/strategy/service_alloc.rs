//! What a Service is given: its IP families (single- or dual-stack, as kube-apiserver
//! chooses them from `ipFamilyPolicy`, `ipFamilies`, `clusterIPs` and the cluster's ranges),
//! a cluster IP per family and its node ports. Each allocated IP or port is a key of its own
//! (`/registry/krab/serviceips/<ip>`, `/registry/krab/servicenodeports/<port>`) written in
//! the same transaction as the Service, so allocations never leak or double up and need no
//! repair loop.
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use rand::Rng;
use serde_json::{json, Value};

use super::super::status::ApiError;
use super::super::validation::FieldErrors;
use super::service::{service_type, wants_node_ports};
use crate::store::datastore::Datastore;
use crate::store::types::{prefix_end, RangeRequest};

/// The ranges Services take their addresses and node ports from.
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    /// One range per IP family, the cluster's default family first.
    pub cidrs: Vec<IpNet>,
    pub node_ports: RangeInclusive<u16>,
    /// The cluster DNS address (the `kube-dns` Service in kube-system holds it).
    pub cluster_dns: Option<IpAddr>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            cidrs: vec![IpNet::from(
                ipnet::Ipv4Net::new(Ipv4Addr::new(10, 43, 0, 0), 16).unwrap_or_default(),
            )],
            node_ports: 30000..=32767,
            cluster_dns: None,
        }
    }
}

/// `IPv4` or `IPv6`, as the API names an address's family.
pub fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl ServiceNetwork {
    /// The first usable address of the default range: the `kubernetes` Service's.
    pub fn first_ip(&self) -> Option<IpAddr> {
        self.cidrs.first().and_then(|c| c.hosts().next())
    }

    fn default_family(&self) -> &'static str {
        self.cidrs
            .first()
            .map_or("IPv4", |c| family_of(&c.network()))
    }

    fn cidr_of(&self, family: &str) -> Option<&IpNet> {
        self.cidrs
            .iter()
            .find(|c| family_of(&c.network()) == family)
    }

    fn dual_stack(&self) -> bool {
        self.cidrs.len() > 1
    }
}

const IP_PREFIX: &str = "/registry/krab/serviceips/";
const PORT_PREFIX: &str = "/registry/krab/servicenodeports/";

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn invalid(obj: &Value, errs: FieldErrors) -> Result<(), ApiError> {
    errs.into_result("Service", &name_of(obj), "")
}

/// Chooses `ipFamilyPolicy` and `ipFamilies` as kube-apiserver does: the policy is kept
/// from the stored object or defaults to SingleStack (RequireDualStack for a selectorless
/// headless Service); families follow the given cluster IPs, then the cluster's default,
/// and a dual-stack policy on a dual-stack cluster adds the other family.
pub fn init_ip_families(
    net: &ServiceNetwork,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if service_type(obj) == "ExternalName" {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            for f in ["ipFamilies", "ipFamilyPolicy", "clusterIP", "clusterIPs"] {
                spec.remove(f);
            }
        }
        return Ok(());
    }
    let spec = &obj["spec"];
    let mut ips = strings(spec.get("clusterIPs"));
    let single = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ips.is_empty() && !single.is_empty() {
        ips.push(single.clone());
    }
    let mut families = strings(spec.get("ipFamilies"));
    let headless = ips.first().is_some_and(|ip| ip == "None");
    let selectorless = spec
        .get("selector")
        .and_then(Value::as_object)
        .is_none_or(|s| s.is_empty());
    let given_policy = spec
        .get("ipFamilyPolicy")
        .and_then(Value::as_str)
        .map(str::to_string);
    let policy = match given_policy {
        Some(p) => p,
        None => match old.and_then(|o| o.pointer("/spec/ipFamilyPolicy")?.as_str()) {
            Some(p) => p.to_string(),
            None if headless && selectorless => "RequireDualStack".into(),
            None => "SingleStack".into(),
        },
    };
    if let Some(old) = old.filter(|_| policy == "SingleStack") {
        // Turning a dual-stack Service single-stack releases its secondary address.
        let old_ips = strings(old.pointer("/spec/clusterIPs"));
        if ips.len() > 1 && ips == old_ips {
            ips.truncate(1);
            obj["spec"]["clusterIPs"] = json!(ips);
        }
        if families.len() > 1 && families == strings(old.pointer("/spec/ipFamilies")) {
            families.truncate(1);
        }
    }
    let mut errs = FieldErrors::default();
    let policies = ["PreferDualStack", "RequireDualStack", "SingleStack"];
    if !policies.contains(&policy.as_str()) {
        errs.not_supported("spec.ipFamilyPolicy", &json!(policy), &policies);
    }
    if !single.is_empty() && ips.first() != Some(&single) {
        errs.invalid(
            "spec.clusterIPs",
            &json!(ips),
            "must have the same value as spec.clusterIP when both are given",
        );
    }
    if ips.len() > 2 {
        errs.invalid(
            "spec.clusterIPs",
            &json!(ips),
            "may only hold up to 2 values",
        );
    }
    if families.len() > 2 {
        errs.invalid(
            "spec.ipFamilies",
            &json!(families),
            "may only hold up to 2 values",
        );
    }
    for (i, f) in families.iter().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            errs.not_supported(
                format!("spec.ipFamilies[{i}]"),
                &json!(f),
                &["IPv4", "IPv6"],
            );
        } else if families[..i].contains(f) {
            errs.duplicate(format!("spec.ipFamilies[{i}]"), &json!(f));
        }
    }
    let mut parsed = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            if i > 0 || ips.len() > 1 {
                errs.invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ip),
                    "must not be 'None' when more than one value is given",
                );
            }
            break;
        }
        match ip.parse::<IpAddr>() {
            Ok(a) => parsed.push(a),
            Err(_) => {
                errs.invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ip),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                );
            }
        }
    }
    if parsed.len() == 2 && parsed[0].is_ipv4() == parsed[1].is_ipv4() {
        errs.invalid(
            "spec.clusterIPs[1]",
            &json!(ips[1]),
            "may not have the same family as spec.clusterIPs[0]",
        );
    }
    for (i, ip) in parsed.iter().enumerate() {
        if let Some(f) = families.get(i) {
            if f != family_of(ip) {
                errs.invalid(
                    format!("spec.ipFamilies[{i}]"),
                    &json!(f),
                    &format!("does not match IP family of spec.clusterIPs[{i}]"),
                );
            }
        }
    }
    if policy == "SingleStack" {
        if ips.len() == 2 {
            errs.invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            );
        }
        if families.len() == 2 {
            errs.invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            );
        }
    }
    if !errs.is_empty() {
        return invalid(obj, errs);
    }
    // Families inferred from the given addresses.
    for (i, ip) in parsed.iter().enumerate() {
        if i >= families.len() {
            let fam = family_of(ip);
            if net.cidr_of(fam).is_none() {
                errs.invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ips),
                    &format!("{fam} is not configured on this cluster"),
                );
            } else {
                families.push(fam.to_string());
            }
        }
    }
    if headless && selectorless {
        if families.is_empty() {
            families.push(net.default_family().to_string());
        }
        if families.len() < 2 && policy != "SingleStack" {
            let other = if families[0] == "IPv4" {
                "IPv6"
            } else {
                "IPv4"
            };
            families.push(other.to_string());
        }
    } else {
        if policy == "RequireDualStack" && !net.dual_stack() {
            errs.invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "this cluster is not configured for dual-stack services",
            );
        }
        for (i, f) in families.iter().enumerate() {
            if net.cidr_of(f).is_none() {
                errs.invalid(
                    format!("spec.ipFamilies[{i}]"),
                    &json!(f),
                    "not configured on this cluster",
                );
            }
        }
        if families.is_empty() {
            families.push(net.default_family().to_string());
        }
        if policy != "SingleStack" && families.len() == 1 && net.dual_stack() {
            let other = if families[0] == "IPv4" {
                "IPv6"
            } else {
                "IPv4"
            };
            families.push(other.to_string());
        }
    }
    if !errs.is_empty() {
        return invalid(obj, errs);
    }
    obj["spec"]["ipFamilyPolicy"] = json!(policy);
    obj["spec"]["ipFamilies"] = json!(families);
    Ok(())
}

/// The allocation keys a Service holds.
pub fn reserved_keys(net: &ServiceNetwork, obj: &Value) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut ips = strings(obj.pointer("/spec/clusterIPs"));
    if ips.is_empty() {
        ips.extend(
            obj.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .map(str::to_string),
        );
    }
    for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
        if net.cidrs.iter().any(|c| c.contains(&ip)) {
            keys.push(format!("{IP_PREFIX}{ip}").into_bytes());
        }
    }
    let mut seen = HashSet::new();
    for p in obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .filter(|n| *n != 0)
        {
            if seen.insert(n) {
                keys.push(format!("{PORT_PREFIX}{n}").into_bytes());
            }
        }
    }
    keys
}

async fn used(ds: &Datastore, prefix: &str) -> Result<HashSet<String>, ApiError> {
    let key = prefix.as_bytes().to_vec();
    let resp = ds
        .range(RangeRequest {
            range_end: prefix_end(&key),
            key,
            keys_only: true,
            ..Default::default()
        })
        .await?;
    Ok(resp
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect())
}

fn invalid_ip(obj: &Value, ips: &[String], ip: &str, why: &str) -> ApiError {
    let mut errs = FieldErrors::default();
    errs.invalid(
        "spec.clusterIPs",
        &json!(ips),
        &format!("failed to allocate IP {ip}: {why}"),
    );
    match invalid(obj, errs) {
        Err(e) => e,
        Ok(()) => ApiError::internal("allocation failed"),
    }
}

/// Chooses the families (see `init_ip_families`) and fills in a cluster IP per family and
/// node ports where the Service needs them and the client gave none, checking the ones the
/// client gave; on update (`old`), what the Service already holds stays its own. The
/// registry's transaction makes the allocations its own.
pub async fn allocate(
    ds: &Datastore,
    net: &ServiceNetwork,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    init_ip_families(net, obj, old)?;
    if service_type(obj) != "ExternalName" {
        allocate_cluster_ips(ds, net, obj, old).await?;
    }
    allocate_node_ports(ds, net, obj, old).await
}

async fn allocate_cluster_ips(
    ds: &Datastore,
    net: &ServiceNetwork,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let families = strings(obj.pointer("/spec/ipFamilies"));
    let mut ips = strings(obj.pointer("/spec/clusterIPs"));
    if ips.is_empty() {
        ips.extend(
            obj.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    if ips.first().is_some_and(|ip| ip == "None") {
        obj["spec"]["clusterIP"] = json!("None");
        obj["spec"]["clusterIPs"] = json!(["None"]);
        return Ok(());
    }
    let owned: HashSet<String> = old
        .map(|o| strings(o.pointer("/spec/clusterIPs")))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut taken: Option<HashSet<String>> = None;
    let mut out = Vec::new();
    for (i, family) in families.iter().enumerate() {
        let Some(cidr) = net.cidr_of(family) else {
            continue;
        };
        if taken.is_none() {
            taken = Some(used(ds, IP_PREFIX).await?);
        }
        let used = taken.get_or_insert_with(HashSet::new);
        match ips.get(i).filter(|ip| !ip.is_empty()) {
            None => {
                let ip = pick_ip(cidr, used).ok_or_else(|| {
                    ApiError::internal(format!(
                        "failed to allocate a serviceIP: range {cidr} is full"
                    ))
                })?;
                used.insert(ip.to_string());
                out.push(ip.to_string());
            }
            Some(given) => {
                if owned.contains(given) {
                    out.push(given.clone());
                    continue;
                }
                let parsed: IpAddr = given
                    .parse()
                    .map_err(|_| invalid_ip(obj, &ips, given, "must be a valid IP address"))?;
                if !cidr.contains(&parsed) {
                    return Err(invalid_ip(
                        obj,
                        &ips,
                        given,
                        &format!(
                            "the provided IP ({given}) is not in the valid range. The range of valid IPs is {cidr}"
                        ),
                    ));
                }
                if used.contains(&parsed.to_string()) {
                    return Err(invalid_ip(
                        obj,
                        &ips,
                        given,
                        "provided IP is already allocated",
                    ));
                }
                used.insert(parsed.to_string());
                out.push(parsed.to_string());
            }
        }
    }
    if let Some(first) = out.first() {
        obj["spec"]["clusterIP"] = json!(first);
    }
    obj["spec"]["clusterIPs"] = json!(out);
    Ok(())
}

/// Node ports for a Service of type NodePort or LoadBalancer (also on update to such a type).
async fn allocate_node_ports(
    ds: &Datastore,
    net: &ServiceNetwork,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if !wants_node_ports(obj) {
        return Ok(());
    }
    let name = name_of(obj);
    let mut used = used(ds, PORT_PREFIX).await?;
    // On update the Service's own ports are not someone else's.
    let owned: HashSet<String> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .map(|n| n.to_string())
        .collect();
    let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut errs = FieldErrors::default();
    for (i, p) in ports.iter_mut().enumerate() {
        match p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) {
            0 => {
                let port = pick_port(net, &used).ok_or_else(|| {
                    ApiError::internal("failed to allocate a nodePort: range is full")
                })?;
                used.insert(port.to_string());
                p["nodePort"] = json!(port);
            }
            n => {
                let in_range = u16::try_from(n).is_ok_and(|n| net.node_ports.contains(&n));
                if !in_range {
                    errs.invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &json!(n),
                        &format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            net.node_ports.start(),
                            net.node_ports.end()
                        ),
                    );
                } else if used.contains(&n.to_string()) && !owned.contains(&n.to_string()) {
                    errs.invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &json!(n),
                        "provided port is already allocated",
                    );
                }
            }
        }
    }
    errs.into_result("Service", &name, "")
}

/// A free address of `cidr` (neither its network address nor, for IPv4, its broadcast),
/// preferring the upper part of the range: kube leaves the lower band to addresses users
/// choose, such as the DNS service's.
fn pick_ip(cidr: &IpNet, used: &HashSet<String>) -> Option<IpAddr> {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    // Ranges beyond 2^64 addresses are searched in their first 2^64.
    let size: u128 = 1u128 << host_bits.min(64);
    if size < 4 {
        return None;
    }
    let base: u128 = match cidr.network() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let at = |off: u128| -> IpAddr {
        match cidr {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((base + off) as u32)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(base + off)),
        }
    };
    let (first, last) = (1u128, size - 2);
    let band = (size / 16).clamp(16, 256).min(last);
    let mut rng = rand::thread_rng();
    for (lo, hi) in [(band, last), (first + 1, last)] {
        if lo > hi {
            continue;
        }
        for _ in 0..64 {
            let ip = at(rng.gen_range(lo..=hi));
            if !used.contains(&ip.to_string()) {
                return Some(ip);
            }
        }
        // A scan, bounded: a range this full is searched in its first million addresses.
        for off in (lo..=hi).take(1 << 20) {
            let ip = at(off);
            if !used.contains(&ip.to_string()) {
                return Some(ip);
            }
        }
    }
    None
}

fn pick_port(net: &ServiceNetwork, used: &HashSet<String>) -> Option<u16> {
    let mut rng = rand::thread_rng();
    for _ in 0..64 {
        let p = rng.gen_range(net.node_ports.clone());
        if !used.contains(&p.to_string()) {
            return Some(p);
        }
    }
    net.node_ports
        .clone()
        .find(|p| !used.contains(&p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual() -> ServiceNetwork {
        ServiceNetwork {
            cidrs: vec![
                "10.43.0.0/16".parse().unwrap(),
                "fd00:43::/112".parse().unwrap(),
            ],
            ..ServiceNetwork::default()
        }
    }

    fn families(net: &ServiceNetwork, spec: Value) -> Result<(String, Vec<String>), String> {
        let mut s = json!({"metadata": {"name": "s"}, "spec": spec});
        init_ip_families(net, &mut s, None).map_err(|e| e.message.clone())?;
        Ok((
            s["spec"]["ipFamilyPolicy"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            strings(s.pointer("/spec/ipFamilies")),
        ))
    }

    #[test]
    fn families_follow_the_policy_and_the_cluster() {
        let single = ServiceNetwork::default();
        let sel = json!({"app": "x"});
        assert_eq!(
            families(&single, json!({"selector": sel})),
            Ok(("SingleStack".into(), vec!["IPv4".into()]))
        );
        assert_eq!(
            families(
                &single,
                json!({"selector": sel, "ipFamilyPolicy": "PreferDualStack"})
            ),
            Ok(("PreferDualStack".into(), vec!["IPv4".into()]))
        );
        let err = families(
            &single,
            json!({"selector": sel, "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert!(err.is_err_and(|e| e.contains("not configured for dual-stack")));
        let err = families(&single, json!({"selector": sel, "ipFamilies": ["IPv6"]}));
        assert!(err.is_err_and(|e| e.contains(
            "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"
        )));
        let net = dual();
        assert_eq!(
            families(
                &net,
                json!({"selector": sel, "ipFamilyPolicy": "RequireDualStack"})
            ),
            Ok((
                "RequireDualStack".into(),
                vec!["IPv4".into(), "IPv6".into()]
            ))
        );
        assert_eq!(
            families(
                &net,
                json!({"selector": sel, "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"]})
            ),
            Ok(("PreferDualStack".into(), vec!["IPv6".into(), "IPv4".into()]))
        );
        assert_eq!(
            families(&net, json!({"selector": sel, "clusterIP": "fd00:43::99"})),
            Ok(("SingleStack".into(), vec!["IPv6".into()]))
        );
        let err = families(
            &net,
            json!({"selector": sel, "ipFamilies": ["IPv4", "IPv6"]}),
        );
        assert!(err.is_err_and(|e| e.contains("must be 'RequireDualStack' or 'PreferDualStack'")));
        // Headless without a selector: both families where the cluster has them.
        assert_eq!(
            families(&net, json!({"clusterIP": "None"})),
            Ok((
                "RequireDualStack".into(),
                vec!["IPv4".into(), "IPv6".into()]
            ))
        );
    }

    #[test]
    fn keys_cover_every_family_and_node_port() {
        let s = json!({"spec": {"clusterIPs": ["10.43.0.10", "fd00:43::a"], "ports": [{"port": 80, "nodePort": 30080}]}});
        let keys = reserved_keys(&dual(), &s);
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&b"/registry/krab/serviceips/fd00:43::a".to_vec()));
        // An address outside every range holds nothing.
        assert_eq!(reserved_keys(&ServiceNetwork::default(), &s).len(), 2);
    }

    #[test]
    fn picks_free_addresses_in_the_upper_band() {
        let net = ServiceNetwork::default();
        let cidr = net.cidrs[0];
        let ip = pick_ip(&cidr, &HashSet::new()).unwrap();
        assert!(cidr.contains(&ip));
        let IpAddr::V4(v4) = ip else { panic!("{ip}") };
        assert!(u32::from(v4) - u32::from(Ipv4Addr::new(10, 43, 0, 0)) >= 256);
        let small: IpNet = "10.0.0.0/30".parse().unwrap();
        let used: HashSet<String> = ["10.0.0.1".to_string()].into();
        assert_eq!(pick_ip(&small, &used), Some("10.0.0.2".parse().unwrap()));
        let used: HashSet<String> = ["10.0.0.1".to_string(), "10.0.0.2".to_string()].into();
        assert_eq!(pick_ip(&small, &used), None);
        let v6: IpNet = "fd00:43::/112".parse().unwrap();
        let ip = pick_ip(&v6, &HashSet::new()).unwrap();
        assert!(v6.contains(&ip) && ip.is_ipv6());
        let ports = ServiceNetwork {
            node_ports: 30000..=30001,
            ..ServiceNetwork::default()
        };
        let used: HashSet<String> = ["30000".to_string()].into();
        assert_eq!(pick_port(&ports, &used), Some(30001));
    }
}
