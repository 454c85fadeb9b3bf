//! Pod events as the kubelet records them (source kubelet and the node): Pulling, Pulled,
//! Created, Started, Killing, BackOff, Failed, FailedMount; repeats are counted, spam held
//! back, as kube's recorder does (`client::events`).
use k8s_openapi::api::core::v1::Pod;

use crate::client::events::{reference, EventRecorder, EventType};

#[derive(Clone)]
pub struct Recorder {
    events: EventRecorder,
}

impl Recorder {
    pub fn new(client: kube::Client, node: String) -> Recorder {
        Recorder {
            events: EventRecorder::new(client, "kubelet", Some(node)),
        }
    }

    /// Records one event about a pod (or one of its containers); best effort.
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let mut regarding = reference(pod);
        regarding.field_path = container.map(|c| format!("spec.containers{{{c}}}"));
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.events.record(&regarding, type_, reason, message).await;
    }

    /// Records one event about the node (kube's node reference: the node's name as its uid).
    pub async fn node(&self, node: &str, warning: bool, reason: &str, message: &str) {
        let regarding = k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(node.into()),
            uid: Some(node.into()),
            ..Default::default()
        };
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.events.record(&regarding, type_, reason, message).await;
    }
}
