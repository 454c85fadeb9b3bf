//! Pod garbage collection, as kube-controller-manager's podgc: pods bound to a node that no
//! longer exists (seen missing on two passes in a row, so a node being re-registered is not
//! raced) and terminating pods that were never scheduled are deleted at once; terminated
//! pods beyond the threshold are deleted oldest first.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::Context;

/// How often a pass runs.
const PERIOD: Duration = Duration::from_secs(10);
/// kube's --terminated-pod-gc-threshold.
const TERMINATED_THRESHOLD: usize = 12_500;

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let mut suspects: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        match pass(&ctx.client, &suspects).await {
            Ok(next) => suspects = next,
            Err(e) => tracing::warn!(error = %e, "pod garbage collection failed"),
        }
    }
}

async fn force_delete(client: &kube::Client, pod: &Pod, why: &str) -> Result<(), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    tracing::info!(namespace = %ns, pod = %name, reason = why, "deleting pod");
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&name, &dp)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// One pass; returns the pods whose node was missing this time (deleted if it was missing
/// the time before too).
async fn pass(
    client: &kube::Client,
    suspects: &HashSet<String>,
) -> Result<HashSet<String>, kube::Error> {
    let nodes: HashSet<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    // Pages of 500, so a pass never holds every pod of a large cluster decoded at once;
    // only finished pods are kept across pages.
    let api = Api::<Pod>::all(client.clone());
    let mut missing = HashSet::new();
    let mut terminated: Vec<Pod> = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        for pod in page.items {
            judge(client, pod, suspects, &nodes, &mut missing, &mut terminated).await?;
        }
        match next {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    if terminated.len() > TERMINATED_THRESHOLD {
        terminated.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        let excess = terminated.len() - TERMINATED_THRESHOLD;
        for pod in &terminated[..excess] {
            force_delete(client, pod, "terminated pods over the threshold").await?;
        }
    }
    Ok(missing)
}

/// One pod of a pass: deleted now, suspected, or kept as a finished pod.
async fn judge(
    client: &kube::Client,
    pod: Pod,
    suspects: &HashSet<String>,
    nodes: &HashSet<String>,
    missing: &mut HashSet<String>,
    terminated: &mut Vec<Pod>,
) -> Result<(), kube::Error> {
    let uid = pod.uid().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if node.is_empty() {
        if pod.metadata.deletion_timestamp.is_some() {
            force_delete(client, &pod, "terminating and never scheduled").await?;
        }
        return Ok(());
    }
    if !nodes.contains(&node) {
        if suspects.contains(&uid) {
            force_delete(client, &pod, "its node no longer exists").await?;
        } else {
            missing.insert(uid);
        }
        return Ok(());
    }
    if matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        terminated.push(pod);
    }
    Ok(())
}
