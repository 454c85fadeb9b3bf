//! Pods the kubelet itself ends while the API still wants them (kube's "terminate pod
//! abnormally"): the eviction manager's choices and the pods of a node shutting down. A
//! request waits here for the pod's worker, which stops the containers, marks the pod Failed
//! with the request's reason and kube's DisruptionTarget condition, and says when it is done.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// Why and how one pod is ended.
#[derive(Debug)]
pub struct Termination {
    /// The pod's `status.reason` (`Evicted`, `Terminated`).
    pub reason: &'static str,
    pub message: String,
    /// How long containers get after SIGTERM (and their preStop hooks); zero kills at once.
    pub grace: Duration,
    /// Told once the containers are stopped and the status is written.
    pub done: Option<oneshot::Sender<()>>,
}

/// Requests waiting for their pods' workers, by pod uid.
#[derive(Default)]
pub struct PodTerminations {
    pending: Mutex<HashMap<String, Termination>>,
}

impl PodTerminations {
    pub fn request(&self, uid: &str, t: Termination) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(uid.to_string(), t);
        }
    }

    /// The request for a pod (once).
    pub fn take(&self, uid: &str) -> Option<Termination> {
        self.pending.lock().ok()?.remove(uid)
    }

    pub fn any_pending(&self) -> bool {
        self.pending.lock().map(|p| !p.is_empty()).unwrap_or(false)
    }
}
