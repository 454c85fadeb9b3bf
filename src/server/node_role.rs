//! The server's own node gets `node-role.kubernetes.io/control-plane=true` from the server
//! (an admin write), not from its kubelet, which NodeRestriction forbids to set role
//! labels; put back if the node is registered again.
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

const ROLE: &str = "node-role.kubernetes.io/control-plane";

/// Keeps the label on node `name` until `shutdown` (checked every second until the node
/// has it, then every 10 s).
pub async fn label_control_plane(
    client: kube::Client,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": {ROLE: "true"}}});
    loop {
        let labelled = match nodes.get_opt(&name).await {
            Ok(Some(n))
                if n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ROLE))
                    .is_none() =>
            {
                match nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(node = %name, "labelled {ROLE}");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "could not label {ROLE}");
                        false
                    }
                }
            }
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "node not readable yet");
                false
            }
        };
        let wait = Duration::from_secs(if labelled { 10 } else { 1 });
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
