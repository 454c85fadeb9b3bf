//! Node IPAM: every node gets a pod CIDR of its own per family, a /24 (kube's default node
//! mask) out of `--cluster-cidr`'s IPv4 range and, on a dual-stack cluster, a /64 out of its
//! IPv6 range, recorded in `spec.podCIDR`/`spec.podCIDRs` (IPv4 first) and never changed
//! after.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

/// kube-controller-manager's --node-cidr-mask-size-ipv4 and -ipv6.
const NODE_MASK_V4: u8 = 24;
const NODE_MASK_V6: u8 = 64;

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let health = ctx.health.clone();
    Controller::new(
        Api::<Node>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(crate::controllers::observe(health.clone()))
    .await;
}

fn error_policy(node: Arc<Node>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %e, "pod CIDR allocation failed");
    Action::requeue(retry_after(e))
}

/// The first subnet of `cluster` not in `used`.
pub fn next_free(cluster: Ipv4Net, used: &[Ipv4Net]) -> Option<Ipv4Net> {
    cluster
        .subnets(NODE_MASK_V4.max(cluster.prefix_len()))
        .ok()?
        .find(|s| {
            !used
                .iter()
                .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
        })
}

/// The first IPv6 subnet of `cluster` not in `used`: a /64, or 8 bits longer than a range
/// too small for /64s (at most /120).
pub fn next_free_v6(cluster: Ipv6Net, used: &[Ipv6Net]) -> Option<Ipv6Net> {
    let mask = if cluster.prefix_len() < NODE_MASK_V6 {
        NODE_MASK_V6
    } else {
        (cluster.prefix_len() + 8).min(120)
    };
    cluster.subnets(mask).ok()?.take(1 << 16).find(|s| {
        !used
            .iter()
            .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
    })
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    if node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(cluster) = ctx.cluster_cidr else {
        return Ok(Action::await_change());
    };
    // A node's ranges are set once (the API refuses to change them).
    if !node_cidrs(&node).is_empty() {
        return Ok(Action::await_change());
    }
    // One allocation at a time, against the nodes as they are now.
    let _one = ctx.allocating.lock().await;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = api.list(&ListParams::default()).await?;
    let used: Vec<IpNet> = nodes.items.iter().flat_map(node_cidrs).collect();
    let name = node.name_any();
    // What the node holds now (the object this reconcile started from may predate an
    // allocation another pass just made: allocating again would give it a second range).
    let Some(fresh) = nodes.items.iter().find(|n| n.name_any() == name) else {
        return Ok(Action::await_change());
    };
    if !node_cidrs(fresh).is_empty() {
        return Ok(Action::await_change());
    }
    let mut cidrs: Vec<IpNet> = Vec::new();
    {
        let used_v4: Vec<Ipv4Net> = used
            .iter()
            .filter_map(|c| match c {
                IpNet::V4(n) => Some(*n),
                IpNet::V6(_) => None,
            })
            .collect();
        let Some(v4) = next_free(cluster.ipv4(), &used_v4) else {
            tracing::warn!(node = %name, cluster = %cluster, "the cluster CIDR has no free pod CIDR left");
            return Ok(Action::requeue(Duration::from_secs(60)));
        };
        cidrs.insert(0, IpNet::V4(v4));
    }
    if let Some(range) = cluster.ipv6() {
        let used_v6: Vec<Ipv6Net> = used
            .iter()
            .filter_map(|c| match c {
                IpNet::V6(n) => Some(*n),
                IpNet::V4(_) => None,
            })
            .collect();
        let Some(v6) = next_free_v6(range, &used_v6) else {
            tracing::warn!(node = %name, cluster = %cluster, "the cluster's IPv6 range has no free pod CIDR left");
            return Ok(Action::requeue(Duration::from_secs(60)));
        };
        cidrs.push(IpNet::V6(v6));
    }
    let shown: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let patch = serde_json::json!({"spec": {"podCIDR": shown[0], "podCIDRs": shown}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(node = %name, pod_cidrs = %shown.join(","), "allocated pod CIDRs");
    Ok(Action::await_change())
}

/// The pod CIDRs a node holds (`podCIDRs`, or the older single `podCIDR`).
fn node_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<IpNet> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect();
    if out.is_empty() {
        out.extend(
            spec.pod_cidr
                .as_deref()
                .and_then(|c| c.parse::<IpNet>().ok()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_handed_out_in_order_without_overlap() {
        let cluster: Ipv4Net = "10.42.0.0/16".parse().unwrap();
        assert_eq!(next_free(cluster, &[]).unwrap().to_string(), "10.42.0.0/24");
        let used = [
            "10.42.0.0/24".parse().unwrap(),
            "10.42.2.0/24".parse().unwrap(),
        ];
        assert_eq!(
            next_free(cluster, &used).unwrap().to_string(),
            "10.42.1.0/24"
        );
        let tiny: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert!(next_free(tiny, &[tiny]).is_none());
        let v6: Ipv6Net = "fd00:42::/56".parse().unwrap();
        let first = next_free_v6(v6, &[]).unwrap();
        assert_eq!(first.to_string(), "fd00:42::/64");
        assert_eq!(
            next_free_v6(v6, &[first]).unwrap().to_string(),
            "fd00:42:0:1::/64"
        );
        let small: Ipv6Net = "fd00:42::/112".parse().unwrap();
        assert_eq!(
            next_free_v6(small, &[]).unwrap().to_string(),
            "fd00:42::/120"
        );
    }
}
