//! The Endpoints and EndpointSlice controllers in one loop: for every Service with a
//! selector, the pods it selects that have an IP become its endpoints (ready or not, by
//! the pod's Ready condition; `publishNotReadyAddresses` makes all ready), with each
//! service port's targetPort resolved by number or by the container port's name. One
//! EndpointSlice per Service (`<service>-<hash>`), owned by it; Endpoints named as the Service.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// The resolved (name, port, protocol) of every service port on one pod.
type PortSet = Vec<(String, i32, String)>;
/// Ready and not-ready addresses sharing one port set.
type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    let services: Api<Service> = Api::all(client.clone());
    // A pod change touches every Service in its namespace (cheap: the selector decides).
    let controller = Controller::new(services, watcher::Config::default());
    let known = controller.store();
    controller
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod| {
                let ns = pod.namespace();
                known
                    .state()
                    .into_iter()
                    .filter(move |s| s.namespace() == ns)
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn error_policy(svc: Arc<Service>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), namespace = ?svc.namespace(), error = %e, "endpoints reconcile failed");
    Action::requeue(retry_after(e))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A service port's target on a pod: a number, or the named container port.
fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod.spec.as_ref()?.containers.iter().find_map(|c| {
            c.ports.iter().flatten().find_map(|p| {
                (p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.container_port)
            })
        }),
    }
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = svc.namespace().ok_or(Error::Missing("namespace"))?;
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
        // Services without a selector have endpoints their users manage.
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let label_query = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&label_query))
        .await?;
    let publish_all = spec.publish_not_ready_addresses == Some(true);
    let ports = spec.ports.clone().unwrap_or_default();
    // Endpoints: pods grouped by the resolved port set, ready and not ready apart.
    let mut subsets: BTreeMap<PortSet, Addresses> = BTreeMap::new();
    // A slice per IP family of the Service; Endpoints carry the primary family only.
    let families = spec
        .ip_families
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let mut slice_endpoints: BTreeMap<String, Vec<Endpoint>> =
        families.iter().map(|f| (f.clone(), Vec::new())).collect();
    let mut slice_ports: BTreeMap<(String, String), i32> = BTreeMap::new();
    for pod in &pods.items {
        let ips = pod_ips(pod);
        if ips.is_empty() {
            continue;
        }
        let Some(ip) = ip_of_family(&ips, &families[0]) else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let ready = (pod_ready(pod) && !terminating) || publish_all;
        let mut resolved = Vec::new();
        for p in &ports {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if let Some(t) = target_port(pod, p.target_port.as_ref(), p.port, &protocol) {
                let pname = p.name.clone().unwrap_or_default();
                slice_ports.insert((pname.clone(), protocol.clone()), t);
                resolved.push((pname, t, protocol));
            }
        }
        // A pod whose subdomain is this Service gets a DNS name of its own under it
        // (`<hostname>.<service>`, as StatefulSet members do).
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| s.subdomain.as_deref() == Some(name.as_str()))
            .and_then(|s| s.hostname.clone());
        let address = EndpointAddress {
            ip: ip.clone(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(ns.clone()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
                ..Default::default()
            }),
            hostname: hostname.clone(),
        };
        let entry = subsets.entry(resolved).or_default();
        if ready {
            entry.0.push(address.clone());
        } else if !terminating {
            entry.1.push(address.clone());
        }
        for (family, endpoints) in slice_endpoints.iter_mut() {
            let Some(ip) = ip_of_family(&ips, family) else {
                continue;
            };
            endpoints.push(Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(pod_ready(pod) || publish_all),
                    terminating: Some(terminating),
                }),
                node_name: address.node_name.clone(),
                target_ref: address.target_ref.clone(),
                hostname: hostname.clone(),
                ..Default::default()
            });
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .filter(|(_, (r, n))| !r.is_empty() || !n.is_empty())
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let owner = OwnerReference {
        api_version: Service::api_version(&()).to_string(),
        kind: Service::kind(&()).to_string(),
        name: name.clone(),
        uid: svc.uid().ok_or(Error::Missing("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    // Endpoints.
    let eps_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let labels = svc.labels().clone();
    let desired = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match eps_api.get_opt(&name).await? {
        None => {
            super::unless_exists(eps_api.create(&PostParams::default(), &desired).await)?;
        }
        Some(mut current) if current.subsets != desired.subsets => {
            current.subsets = desired.subsets.clone();
            eps_api
                .replace(&name, &PostParams::default(), &current)
                .await?;
        }
        Some(_) => {}
    }
    // EndpointSlices, one per family; a family the Service no longer has loses its slice.
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut slice_labels = labels;
    slice_labels.insert("kubernetes.io/service-name".into(), name.clone());
    slice_labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        MANAGED_BY.into(),
    );
    let ports: Vec<SlicePort> = slice_ports
        .into_iter()
        .map(|((name, protocol), port)| SlicePort {
            name: Some(name),
            port: Some(port),
            protocol: Some(protocol),
            app_protocol: None,
        })
        .collect();
    for family in ["IPv4", "IPv6"] {
        let slice_name = slice_name(&name, &owner.uid, family);
        let Some(mut endpoints) = slice_endpoints.remove(family) else {
            if slices.get_opt(&slice_name).await?.is_some() {
                super::unless_missing(slices.delete(&slice_name, &Default::default()).await)?;
            }
            continue;
        };
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        let desired = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name.clone()),
                labels: Some(slice_labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            address_type: family.into(),
            endpoints,
            ports: Some(ports.clone()),
        };
        match slices.get_opt(&slice_name).await? {
            None => {
                super::unless_exists(slices.create(&PostParams::default(), &desired).await)?;
            }
            Some(mut current)
                if current.endpoints != desired.endpoints || current.ports != desired.ports =>
            {
                current.endpoints = desired.endpoints;
                current.ports = desired.ports;
                slices
                    .replace(&slice_name, &PostParams::default(), &current)
                    .await?;
            }
            Some(_) => {}
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The slice of one family: `<service>-<hash of its uid>` for IPv4 (the name it always
/// had), the family in the hash for IPv6.
fn slice_name(service: &str, uid: &str, family: &str) -> String {
    let seed = if family == "IPv4" {
        serde_json::json!(uid)
    } else {
        serde_json::json!(format!("{uid}/{family}"))
    };
    format!("{service}-{}", super::template_hash::compute(&seed, None))
}

/// A pod's IPs (`podIPs`, or the older single `podIP`).
fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.clone().filter(|ip| !ip.is_empty()));
    }
    ips
}

fn ip_of_family(ips: &[String], family: &str) -> Option<String> {
    ips.iter()
        .find(|ip| ip.contains(':') == (family == "IPv6"))
        .cloned()
}
