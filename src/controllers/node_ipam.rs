//! Node IPAM: every node gets a pod CIDR of its own, a /24 (kube's default node mask) out of
//! `--cluster-cidr`, recorded in `spec.podCIDR`/`spec.podCIDRs` and never changed after.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{retry_after, Context, Error};

/// kube-controller-manager's --node-cidr-mask-size for IPv4.
const NODE_MASK: u8 = 24;

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    Controller::new(
        Api::<Node>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

fn error_policy(node: Arc<Node>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %e, "pod CIDR allocation failed");
    Action::requeue(retry_after(e))
}

/// The first subnet of `cluster` not in `used`.
pub fn next_free(cluster: Ipv4Net, used: &[Ipv4Net]) -> Option<Ipv4Net> {
    cluster
        .subnets(NODE_MASK.max(cluster.prefix_len()))
        .ok()?
        .find(|s| {
            !used
                .iter()
                .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
        })
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let has = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty());
    if has || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(cluster) = ctx.cluster_cidr else {
        return Ok(Action::await_change());
    };
    // One allocation at a time, against the nodes as they are now.
    let _one = ctx.allocating.lock().await;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = api.list(&ListParams::default()).await?;
    let used: Vec<Ipv4Net> = nodes
        .items
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok())
        .collect();
    let name = node.name_any();
    let Some(cidr) = next_free(cluster, &used) else {
        tracing::warn!(node = %name, %cluster, "the cluster CIDR has no free pod CIDR left");
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let patch =
        serde_json::json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    tracing::info!(node = %name, pod_cidr = %cidr, "allocated a pod CIDR");
    Ok(Action::await_change())
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
    }
}
