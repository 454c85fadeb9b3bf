//! Services: kube's defaults (type, ports, IP families, traffic policies), validation, and
//! the allocation of cluster IPs and node ports. Each allocated IP or port is a key of its
//! own (`/registry/krab/serviceips/<ip>`, `/registry/krab/servicenodeports/<port>`) written
//! in the same transaction as the Service, so allocations never leak or double up and need
//! no repair loop.
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{json, Value};

use super::super::status::ApiError;
use super::super::validation::{self, FieldErrors};
use super::set_default;
use crate::store::datastore::Datastore;
use crate::store::types::{prefix_end, RangeRequest};

/// The ranges Services take their addresses and node ports from.
#[derive(Debug, Clone)]
pub struct ServiceNetwork {
    pub cidr: Ipv4Net,
    pub node_ports: RangeInclusive<u16>,
    /// The cluster DNS address (the `kube-dns` Service in kube-system holds it).
    pub cluster_dns: Option<Ipv4Addr>,
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork {
            cidr: Ipv4Net::new(Ipv4Addr::new(10, 43, 0, 0), 16).unwrap_or_default(),
            node_ports: 30000..=32767,
            cluster_dns: None,
        }
    }
}

impl ServiceNetwork {
    /// The first usable address: the `kubernetes` Service's.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }
}

const IP_PREFIX: &str = "/registry/krab/serviceips/";
const PORT_PREFIX: &str = "/registry/krab/servicenodeports/";

fn service_type(obj: &Value) -> &str {
    obj.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(obj: &Value) -> bool {
    match service_type(obj) {
        "NodePort" => true,
        "LoadBalancer" => obj.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)),
        _ => false,
    }
}

pub fn default(obj: &mut Value) {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set_default(spec, "sessionAffinity", json!("None"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
    if ty != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if spec.get("sessionAffinity") == Some(&json!("ClientIP")) {
        set_default(
            spec,
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
    }
    obj["status"] = json!({"loadBalancer": {}});
}

/// On update, what the client left out is kept: the allocated IPs and node ports.
pub fn prepare_update(old: &Value, new: &mut Value) {
    let (Some(old_spec), Some(spec)) = (
        old.get("spec").cloned(),
        new.get_mut("spec").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    let new_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if new_type != "ExternalName" {
        for f in ["clusterIP", "clusterIPs"] {
            if spec.get(f).is_none_or(|v| v == "" || v.is_null()) {
                if let Some(v) = old_spec.get(f) {
                    spec.insert(f.into(), v.clone());
                }
            }
        }
    }
    let old_ports = old_spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("nodePort")
                .is_some_and(|n| n.as_i64().unwrap_or(0) != 0)
            {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").unwrap_or(&json!("TCP"))
                        == p.get("protocol").unwrap_or(&json!("TCP"))
            });
            if let Some(n) = same.and_then(|o| o.get("nodePort")) {
                p.insert("nodePort".into(), n.clone());
            }
        }
    }
}

pub fn validate(obj: &Value, old: Option<&Value>, errs: &mut FieldErrors) {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let ty = service_type(obj);
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&ty) {
        errs.not_supported("spec.type", &json!(ty), &types);
    }
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let headless = spec.get("clusterIP") == Some(&json!("None"));
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.required("spec.ports", "");
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            errs.required(format!("{at}.name"), "");
        } else if !name.is_empty() {
            if !validation::dns1123_label(name) {
                errs.invalid(format!("{at}.name"), &json!(name), validation::LABEL_MSG);
            } else if names.contains(&name) {
                errs.duplicate(format!("{at}.name"), &json!(name));
            }
            names.push(name);
        }
        match p.get("port").and_then(Value::as_i64) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => errs.invalid(
                format!("{at}.port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ),
            None => errs.required(format!("{at}.port"), ""),
        }
        if let Some(proto) = p.get("protocol") {
            if !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP")) {
                errs.not_supported(format!("{at}.protocol"), proto, &["SCTP", "TCP", "UDP"]);
            }
        }
        if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0
            && !(ty == "NodePort" || ty == "LoadBalancer")
        {
            errs.forbidden(
                format!("{at}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            );
        }
    }
    if ty == "ExternalName" {
        match spec.get("externalName").and_then(Value::as_str) {
            Some(n) if validation::dns1123_subdomain(n.trim_end_matches('.')) => {}
            Some(n) => errs.invalid("spec.externalName", &json!(n), validation::SUBDOMAIN_MSG),
            None => errs.required("spec.externalName", ""),
        }
    }
    if let Some(sel) = spec.get("selector").and_then(Value::as_object) {
        for (k, v) in sel {
            if !validation::qualified_name(k) {
                errs.invalid("spec.selector", &json!(k), validation::QUALIFIED_MSG);
            }
            if !v.as_str().is_some_and(validation::label_value) {
                errs.invalid("spec.selector", v, validation::LABEL_VALUE_MSG);
            }
        }
    }
    if let Some(a) = spec.get("sessionAffinity") {
        if !matches!(a.as_str(), Some("None" | "ClientIP")) {
            errs.not_supported("spec.sessionAffinity", a, &["ClientIP", "None"]);
        }
    }
    if let Some(old) = old {
        let old_ip = old.pointer("/spec/clusterIP");
        let new_ip = spec.get("clusterIP");
        if ty != "ExternalName"
            && service_type(old) != "ExternalName"
            && old_ip.is_some()
            && old_ip != new_ip
        {
            errs.invalid(
                "spec.clusterIPs[0]",
                new_ip.unwrap_or(&Value::Null),
                "may not change once set",
            );
        }
    }
}

/// The allocation keys a Service holds.
pub fn reserved_keys(net: &ServiceNetwork, obj: &Value) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let ips = obj
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| {
            obj.pointer("/spec/clusterIP")
                .into_iter()
                .cloned()
                .collect()
        });
    for ip in ips.iter().filter_map(Value::as_str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            if net.cidr.contains(&ip) {
                keys.push(format!("{IP_PREFIX}{ip}").into_bytes());
            }
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

fn invalid_ip(name: &str, ip: &str, why: &str) -> ApiError {
    let mut errs = FieldErrors::default();
    errs.invalid(
        "spec.clusterIPs",
        &json!(format!("[]string{{\"{ip}\"}}")),
        &format!("failed to allocate IP {ip}: {why}"),
    );
    match errs.into_result("Service", name, "") {
        Err(e) => e,
        Ok(()) => ApiError::internal("allocation failed"),
    }
}

/// Fills in a cluster IP and node ports where the Service needs them and the client gave
/// none, and checks the ones the client gave; the registry's transaction makes them its own.
pub async fn allocate(
    ds: &Datastore,
    net: &ServiceNetwork,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if service_type(obj) != "ExternalName" {
        let given = obj
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = match given.as_str() {
            "None" => None,
            "" => {
                let used = used(ds, IP_PREFIX).await?;
                Some(
                    pick_ip(net, &used)
                        .ok_or_else(|| invalid_ip(&name, "", "range is full"))?
                        .to_string(),
                )
            }
            ip => {
                let parsed: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| invalid_ip(&name, ip, "must be a valid IP address"))?;
                if !net.cidr.contains(&parsed) {
                    return Err(invalid_ip(
                        &name,
                        ip,
                        &format!(
                            "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            net.cidr
                        ),
                    ));
                }
                if used(ds, IP_PREFIX).await?.contains(ip) {
                    return Err(invalid_ip(&name, ip, "provided IP is already allocated"));
                }
                Some(ip.to_string())
            }
        };
        match ip {
            Some(ip) => {
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
            None => {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
    }
    allocate_node_ports(ds, net, obj, None).await
}

/// Node ports for a Service of type NodePort or LoadBalancer (also on update to such a type).
pub async fn allocate_node_ports(
    ds: &Datastore,
    net: &ServiceNetwork,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if !wants_node_ports(obj) {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
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

/// A free IP, preferring the upper part of the range (kube leaves the lower band to
/// addresses users choose, such as the DNS service's).
fn pick_ip(net: &ServiceNetwork, used: &HashSet<String>) -> Option<Ipv4Addr> {
    let base = u32::from(net.cidr.network());
    let size = 1u64 << (32 - net.cidr.prefix_len());
    if size < 4 {
        return None;
    }
    let (first, last) = (1u64, size - 2);
    let band = (size / 16).clamp(16, 256).min(last);
    let mut rng = rand::thread_rng();
    for (lo, hi) in [(band, last), (first + 1, last)] {
        if lo > hi {
            continue;
        }
        for _ in 0..64 {
            let ip = Ipv4Addr::from(base + rng.gen_range(lo..=hi) as u32);
            if !used.contains(&ip.to_string()) {
                return Some(ip);
            }
        }
        for off in lo..=hi {
            let ip = Ipv4Addr::from(base + off as u32);
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

    #[test]
    fn defaults_and_keys() {
        let mut s = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}], "clusterIP": "10.43.0.10"}});
        default(&mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        let keys = reserved_keys(&ServiceNetwork::default(), &s);
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn picks_free_addresses_in_the_upper_band() {
        let net = ServiceNetwork::default();
        let ip = pick_ip(&net, &HashSet::new()).unwrap();
        assert!(net.cidr.contains(&ip));
        assert!(u32::from(ip) - u32::from(net.cidr.network()) >= 256);
        let small = ServiceNetwork {
            cidr: "10.0.0.0/30".parse().unwrap(),
            node_ports: 30000..=30001,
            cluster_dns: None,
        };
        let used: HashSet<String> = ["10.0.0.1".to_string()].into();
        assert_eq!(pick_ip(&small, &used), Some("10.0.0.2".parse().unwrap()));
        let used: HashSet<String> = ["10.0.0.1".to_string(), "10.0.0.2".to_string()].into();
        assert_eq!(pick_ip(&small, &used), None);
        let used: HashSet<String> = ["30000".to_string()].into();
        assert_eq!(pick_port(&small, &used), Some(30001));
    }
}
