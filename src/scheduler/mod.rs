//! The scheduler: pods of `schedulerName: default-scheduler` without a node are bound, one
//! at a time, to the feasible node with the most room left (kube's LeastAllocated), through
//! the pods/binding subresource. Filters: node readiness and `unschedulable`, taints and
//! tolerations, nodeSelector and required node affinity (matchExpressions on labels), and
//! resource requests (CPU, memory, pod count) against allocatable. A pod nothing fits gets
//! the PodScheduled=False/Unschedulable condition and is retried on cluster changes.
mod fit;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Api(#[from] kube::Error),
}

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Runs the scheduler until `stop`.
pub async fn run(client: kube::Client, stop: CancellationToken) {
    let events = crate::client::events::EventRecorder::new(client.clone(), SCHEDULER_NAME, None);
    let nodes_api: Api<Node> = Api::all(client.clone());
    let (nodes, writer) = reflector::store();
    let node_watch = reflector(writer, watcher(nodes_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|_| async {});
    let pods_api: Api<Pod> = Api::all(client.clone());
    let (pods, pod_writer) = reflector::store();
    // Every pod change (a new pending pod, a pod gone that freed room) is a reason to try.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<()>(1);
    let wake_nodes = wake_tx.clone();
    let pod_watch = reflector(pod_writer, watcher(pods_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(move |_| {
            let _ = wake_tx.try_send(());
            async {}
        });
    let node_wake = async move {
        // Node changes (a node becoming ready) also wake the loop, a little later.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = wake_nodes.try_send(());
        }
    };
    let schedule_loop = async {
        let _ = nodes.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                w = wake_rx.recv() => if w.is_none() { return },
            }
            let pending: Vec<Arc<Pod>> = pods
                .state()
                .into_iter()
                .filter(|p| needs_scheduling(p))
                .collect();
            // Pods bound in this pass count against their nodes before the watch says so.
            let mut known: Vec<Arc<Pod>> = pods.state();
            let node_list = nodes.state();
            for pod in pending {
                match schedule_one(&client, &events, &pod, &node_list, &known).await {
                    Ok(Some(node)) => {
                        let mut bound = (*pod).clone();
                        if let Some(spec) = bound.spec.as_mut() {
                            spec.node_name = Some(node);
                        }
                        known.retain(|p| p.uid() != pod.uid());
                        known.push(Arc::new(bound));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(pod = %pod.name_any(), namespace = ?pod.namespace(), error = %e, "scheduling failed")
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = node_watch => {}
        _ = pod_watch => {}
        _ = node_wake => {}
        _ = schedule_loop => {}
    }
}

fn needs_scheduling(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    p.metadata.deletion_timestamp.is_none()
        && spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

async fn schedule_one(
    client: &kube::Client,
    events: &crate::client::events::EventRecorder,
    pod: &Pod,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
) -> Result<Option<String>, Error> {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let span = tracing::debug_span!("schedule", kind = "Pod", namespace = %ns, name = %name);
    let _g = span.enter();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match fit::choose(pod, nodes, pods) {
        Ok(node) => {
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    kind: Some("Node".into()),
                    name: Some(node.clone()),
                    api_version: Some("v1".into()),
                    ..Default::default()
                },
            };
            match api
                .create_subresource::<Binding, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %node, "bound pod");
                    events
                        .normal(
                            &crate::client::events::reference(pod),
                            "Scheduled",
                            &format!("Successfully assigned {ns}/{name} to {node}"),
                        )
                        .await;
                    return Ok(Some(node));
                }
                // Already bound (by us a moment ago, or someone else), or gone.
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(reasons) => {
            let message = format!("0/{} nodes are available: {}", nodes.len(), reasons);
            let already = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.message.as_deref() == Some(message.as_str())
                    })
                });
            if !already {
                let patch = serde_json::json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
                }]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await?;
                events
                    .warning(
                        &crate::client::events::reference(pod),
                        "FailedScheduling",
                        &message,
                    )
                    .await;
            }
        }
    }
    Ok(None)
}
