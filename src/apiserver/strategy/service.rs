//! Services: kube's defaults (type, ports, traffic policies), what an update keeps, and
//! validation. Addresses and node ports are `service_alloc`'s.
use serde_json::{json, Value};

use super::super::validation::{self, FieldErrors};
use super::set_default;

pub(super) fn service_type(obj: &Value) -> &str {
    obj.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

pub(super) fn wants_node_ports(obj: &Value) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let mut s = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}], "clusterIP": "10.43.0.10"}});
        default(&mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");
    }
}
