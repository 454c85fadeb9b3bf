//! ServiceLB (k3s's klipper-lb, without pods): a LoadBalancer Service with no
//! loadBalancerClass gets its status.loadBalancer.ingress set to the InternalIPs of the
//! Ready, schedulable nodes, where every agent's service proxy answers on the service port.
//! Switched off with `--disable servicelb`.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    controller
        // Any node change may change every load balancer's addresses.
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_node: Node| {
                services
                    .state()
                    .into_iter()
                    .filter(|s| is_ours(s))
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(crate::controllers::observe(health.clone()))
        .await;
}

fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

/// The addresses a load balancer answers on: every Ready, schedulable node's ExternalIPs,
/// or its InternalIPs when it has none (as k3s's ServiceLB), of the Service's IP families.
fn addresses(nodes: &[Node], families: &[String]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .flat_map(|n| {
            let all = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default();
            let of = |t: &str| -> Vec<String> {
                all.iter()
                    .filter(|a| a.type_ == t)
                    .filter(|a| {
                        let family = if a.address.contains(':') {
                            "IPv6"
                        } else {
                            "IPv4"
                        };
                        families.iter().any(|f| f == family)
                    })
                    .map(|a| a.address.clone())
                    .collect()
            };
            let external = of("ExternalIP");
            if external.is_empty() {
                of("InternalIP")
            } else {
                external
            }
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !is_ours(&svc) || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().ok_or(Error::Missing("namespace"))?;
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let families = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let ips = addresses(&nodes.items, &families);
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    let current = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    let current: Vec<String> = current.iter().filter_map(|i| i.ip.clone()).collect();
    if current != ips {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        api.patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        tracing::info!(namespace = %ns, service = %svc.name_any(), addresses = ?ips, "load balancer addresses set");
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(svc: Arc<Service>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(service = %svc.name_any(), namespace = ?svc.namespace(), error = %e, "servicelb reconcile failed");
    Action::requeue(retry_after(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, addrs: &[(&str, &str)]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "addresses": addrs.iter().map(|(t, a)| json!({"type": t, "address": a})).collect::<Vec<_>>(),
            }
        }))
        .unwrap_or_default()
    }

    #[test]
    fn external_ips_win_over_internal_ones_per_node_and_family() {
        let nodes = [
            node(
                "a",
                true,
                &[
                    ("InternalIP", "10.0.0.2"),
                    ("InternalIP", "fd00::2"),
                    ("Hostname", "a"),
                ],
            ),
            node(
                "b",
                true,
                &[("InternalIP", "10.0.0.3"), ("ExternalIP", "203.0.113.3")],
            ),
            node("c", false, &[("InternalIP", "10.0.0.4")]),
        ];
        assert_eq!(
            addresses(&nodes, &["IPv4".into()]),
            ["10.0.0.2", "203.0.113.3"]
        );
        assert_eq!(
            addresses(&nodes, &["IPv4".into(), "IPv6".into()]),
            ["10.0.0.2", "203.0.113.3", "fd00::2"]
        );
    }
}
