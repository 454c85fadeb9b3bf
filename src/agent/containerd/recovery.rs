//! Waiting for containerd's CRI plugin to have recovered what it ran before a restart: its
//! listings fill in from containerd's metadata a moment after the socket answers, and a
//! kubelet that looked earlier would take its running pods for gone and start them again.
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::ListContainersRequest;
use containerd_client::tonic::{metadata::MetadataValue, Request};

use crate::agent::cri::Cri;

/// How many containers (sandboxes included) containerd's metadata holds for the CRI.
async fn stored(socket: &Path) -> Option<usize> {
    let client = containerd_client::Client::from_path(socket).await.ok()?;
    let mut req = Request::new(ListContainersRequest { filters: vec![] });
    req.metadata_mut()
        .insert("containerd-namespace", MetadataValue::from_static("k8s.io"));
    let list = client.containers().list(req).await.ok()?.into_inner();
    Some(list.containers.len())
}

/// Waits (at most `limit`) until the CRI lists as many sandboxes and containers as
/// containerd stores.
pub async fn wait_for_cri(socket: &Path, cri: &Cri, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let want = stored(socket).await.unwrap_or(0);
        let sandboxes = cri.list_sandboxes().await.map(|l| l.len()).unwrap_or(0);
        let containers = cri.list_containers().await.map(|l| l.len()).unwrap_or(0);
        if sandboxes + containers >= want {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(
                stored = want,
                listed = sandboxes + containers,
                "the CRI has not recovered every container; going on"
            );
            return;
        }
        tracing::debug!(
            stored = want,
            listed = sandboxes + containers,
            "waiting for the CRI to recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
