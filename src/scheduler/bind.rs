//! What the scheduler writes, each run as its own task so the loop goes on judging the next
//! pod meanwhile: the pods/binding POST (kube's binding cycle), the PodScheduled=False
//! condition and FailedScheduling event, nomination and eviction of preemption victims,
//! claims marked for the chosen node, and the SchedulingGated condition.
use k8s_openapi::api::core::v1::{
    Binding, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

use super::volumes::{ClaimAction, SELECTED_NODE};
use super::SCHEDULER_NAME;
use crate::client::events::{reference, EventRecorder};

/// How a binding went.
#[derive(Debug)]
pub enum Bound {
    Yes,
    /// Someone else bound it first, or it is gone: nothing to retry.
    Moot,
    Failed(kube::Error),
}

/// POSTs pods/binding and records the Scheduled event.
pub async fn bind(client: kube::Client, events: EventRecorder, pod: Pod, node: String) -> Bound {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
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
            tracing::debug!(namespace = %ns, pod = %name, node = %node, "bound pod");
            events
                .normal(
                    &reference(&pod),
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node}"),
                )
                .await;
            Bound::Yes
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Bound::Moot,
        Err(e) => Bound::Failed(e),
    }
}

/// Whether the pod already carries this PodScheduled=False message.
fn has_condition(pod: &Pod, reason: &str, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message)
            })
        })
}

/// Records that no node fits: the condition (when its message changed), the
/// nominated node (set by preemption, or cleared) and a FailedScheduling event.
pub async fn unschedulable(
    client: kube::Client,
    events: EventRecorder,
    pod: Pod,
    message: String,
    nominate: Option<Option<String>>,
) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let current_nominee = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.clone());
    let nominee_changes = nominate
        .as_ref()
        .is_some_and(|n| n.as_deref().filter(|s| !s.is_empty()) != current_nominee.as_deref());
    if !has_condition(&pod, "Unschedulable", &message) || nominee_changes {
        let mut status = json!({"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }]});
        if let Some(n) = nominate {
            status["nominatedNodeName"] = json!(n);
        }
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    events
        .warning(&reference(&pod), "FailedScheduling", &message)
        .await;
    Ok(())
}

/// Evicts preemption victims: a DisruptionTarget condition first, then a graceful delete
/// and a Preempted event on each; lower-priority pods nominated to the node lose it.
pub async fn preempt(
    client: kube::Client,
    events: EventRecorder,
    preemptor: Pod,
    node: String,
    victims: Vec<Pod>,
    denominate: Vec<Pod>,
) -> Result<(), kube::Error> {
    let uid = preemptor.metadata.uid.clone().unwrap_or_default();
    for v in victims {
        let ns = v.metadata.namespace.clone().unwrap_or_default();
        let name = v.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let condition = json!({"status": {"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }]}});
        let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(&condition),
            )
            .await
        {
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        tracing::info!(namespace = %ns, pod = %name, node = %node, "preempted");
        events
            .normal(
                &reference(&v),
                "Preempted",
                &format!("Preempted by pod {uid} on node {node}"),
            )
            .await;
    }
    for p in denominate {
        let api: Api<Pod> = Api::namespaced(
            client.clone(),
            p.metadata.namespace.as_deref().unwrap_or(""),
        );
        let name = p.metadata.name.clone().unwrap_or_default();
        let clear = json!({"status": {"nominatedNodeName": null}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&clear))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Marks a pod's waiting claims for the node chosen: the provisioner's selected-node
/// annotation, or an available volume reserved through its claimRef.
pub async fn claim_volumes(
    client: kube::Client,
    node: String,
    actions: Vec<ClaimAction>,
) -> Result<(), kube::Error> {
    for a in actions {
        match a {
            ClaimAction::SelectNode { namespace, claim } => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
                let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
                api.patch(&claim, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            ClaimAction::Reserve {
                volume,
                namespace,
                claim,
                claim_uid,
            } => {
                let api: Api<PersistentVolume> = Api::all(client.clone());
                let patch = json!({"spec": {"claimRef": {
                    "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": namespace, "name": claim, "uid": claim_uid}}});
                api.patch(&volume, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Pods held by scheduling gates say so, as kube's scheduler does.
pub async fn gated(client: kube::Client, pod: Pod) -> Result<(), kube::Error> {
    let message = "Scheduling is blocked due to non-empty scheduling gates";
    if has_condition(&pod, "SchedulingGated", message) {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(client, pod.metadata.namespace.as_deref().unwrap_or(""));
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
        "message": message, "lastProbeTime": null,
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]}});
    match api
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
