//! A container's environment as the kubelet builds it: Service links, `envFrom`, `env` with
//! `$(VAR)` expansion, and `valueFrom` (fieldRef, resourceFieldRef, secretKeyRef,
//! configMapKeyRef).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, ResourceFieldSelector, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams};

use crate::resources::quantity::milli;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// A downward-API field of the pod, by its fieldPath.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let subscript = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")
            .map(str::to_string)
    };
    if let Some(k) = subscript("metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(&k))
            .cloned()
            .unwrap_or_default());
    }
    if let Some(k) = subscript("metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|l| l.get(&k))
            .cloned()
            .unwrap_or_default());
    }
    let map_text = |m: Option<&BTreeMap<String, String>>| {
        m.map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}=\"{}\"",
                        v.replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(meta.labels.as_ref()),
        "metadata.annotations" => map_text(meta.annotations.as_ref()),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" => status.host_ip.unwrap_or_default(),
        "status.hostIPs" => status
            .host_ips
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
            .join(","),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        "status.podIPs" => status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip)
            .collect::<Vec<_>>()
            .join(","),
        other => return Err(format!("unsupported fieldPath {other:?}")),
    })
}

/// A resourceFieldRef's value, rounded up in units of its divisor; an unset limit is the
/// node's allocatable, as the kubelet reports it.
pub fn resource_value(
    pod: &Pod,
    sel: &ResourceFieldSelector,
    allocatable: &BTreeMap<String, String>,
) -> Result<String, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let container = match &sel.container_name {
        Some(n) if !n.is_empty() => spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| &c.name == n)
            .cloned()
            .ok_or_else(|| format!("container {n:?} not found"))?,
        _ => spec
            .containers
            .first()
            .cloned()
            .ok_or("pod has no containers")?,
    };
    let resources = container.resources.unwrap_or_default();
    let (section, name) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", sel.resource))?;
    let from = |m: Option<&BTreeMap<String, Quantity>>| m.and_then(|m| m.get(name)).map(milli);
    let value = match section {
        "limits" => from(resources.limits.as_ref()),
        "requests" => from(resources.requests.as_ref()).or_else(|| from(resources.limits.as_ref())),
        _ => return Err(format!("unsupported resource {:?}", sel.resource)),
    };
    let value = match value {
        Some(v) => v,
        None if section == "limits" => allocatable
            .get(name)
            .map(|q| milli(&Quantity(q.clone())))
            .unwrap_or(0),
        None => 0,
    };
    let divisor = sel
        .divisor
        .as_ref()
        .map(milli)
        .filter(|d| *d > 0)
        .unwrap_or(1000);
    Ok(((value + divisor - 1) / divisor).to_string())
}

/// Expands `$(VAR)` from what is defined so far; `$$` escapes; unknown references stay.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(end) = input[i + 2..].find(')') {
                    let name = &input[i + 2..i + 2 + end];
                    if let Some(v) = vars.get(name) {
                        out.push_str(v);
                        i += 3 + end;
                        continue;
                    }
                }
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// `<NAME>_SERVICE_HOST` and friends for the namespace's Services (and `kubernetes` from
/// default), as docker links named them.
async fn service_links(client: &kube::Client, pod: &Pod) -> Result<Vec<(String, String)>, Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let enable = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services: Vec<Service> = Vec::new();
    if enable {
        services.extend(
            Api::<Service>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items,
        );
    }
    if ns != "default" || !enable {
        if let Some(k) = Api::<Service>::namespaced(client.clone(), "default")
            .get_opt("kubernetes")
            .await?
        {
            services
                .retain(|s| s.metadata.name.as_deref() != Some("kubernetes") || ns == "default");
            services.push(k);
        }
    }
    let mut out = Vec::new();
    for s in services {
        let spec = s.spec.unwrap_or_default();
        let Some(ip) = spec.cluster_ip.filter(|ip| ip != "None" && !ip.is_empty()) else {
            continue;
        };
        let name = s
            .metadata
            .name
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = &p.name {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{name}_PORT_{}_{}", p.port, pr);
            out.push((
                base.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{base}_PROTO"), pr.to_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    Ok(out)
}

/// The container's environment, in the order the kubelet sets it.
pub async fn build(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    allocatable: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in service_links(client, pod).await? {
        set(&mut vars, k, v);
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match cms.get_opt(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => return Err(Error::Config(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secrets.get_opt(&r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).to_string(),
                        );
                    }
                }
                None if r.optional.unwrap_or(false) => {}
                None => return Err(Error::Config(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            Some(expand(v, &vars))
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                Some(field_value(pod, &f.field_path).map_err(Error::Config)?)
            } else if let Some(r) = &from.resource_field_ref {
                let mut sel = r.clone();
                if sel.container_name.as_deref().unwrap_or("").is_empty() {
                    sel.container_name = Some(container.name.clone());
                }
                Some(resource_value(pod, &sel, allocatable).map_err(Error::Config)?)
            } else if let Some(r) = &from.config_map_key_ref {
                match cms.get_opt(&r.name).await? {
                    Some(cm) => match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => Some(v),
                        None if r.optional.unwrap_or(false) => None,
                        None => {
                            return Err(Error::Config(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                    None if r.optional.unwrap_or(false) => None,
                    None => {
                        return Err(Error::Config(format!("configmap \"{}\" not found", r.name)))
                    }
                }
            } else if let Some(r) = &from.secret_key_ref {
                match secrets.get_opt(&r.name).await? {
                    Some(s) => match s.data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => Some(String::from_utf8_lossy(&v.0).to_string()),
                        None if r.optional.unwrap_or(false) => None,
                        None => {
                            return Err(Error::Config(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                    None if r.optional.unwrap_or(false) => None,
                    None => return Err(Error::Config(format!("secret \"{}\" not found", r.name))),
                }
            } else {
                Some(String::new())
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v);
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| vars.get(&k).map(|v| (k.clone(), v.clone())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kube() {
        let vars = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
    }

    #[test]
    fn resource_fields_round_up_by_divisor() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}]}
        }))
        .unwrap();
        let sel = |r: &str, d: Option<&str>| ResourceFieldSelector {
            container_name: Some("c".into()),
            resource: r.into(),
            divisor: d.map(|d| Quantity(d.into())),
        };
        let alloc = BTreeMap::from([("memory".to_string(), "1Gi".to_string())]);
        assert_eq!(
            resource_value(&pod, &sel("limits.cpu", None), &alloc).unwrap(),
            "1"
        );
        assert_eq!(
            resource_value(&pod, &sel("limits.cpu", Some("1m")), &alloc).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&pod, &sel("limits.memory", Some("1Mi")), &alloc).unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&pod, &sel("requests.memory", None), &alloc).unwrap(),
            (64u64 << 20).to_string()
        );
    }
}
