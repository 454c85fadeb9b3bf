//! One pod's worker: brings the runtime in line with the pod (volumes, sandbox, init
//! containers in order, then app containers, restarts with back-off), tears it down when the
//! pod is deleted, and writes the pod's status back. Stateless across agent restarts: what
//! runs is found again through the runtime's labels, so pods are adopted, never duplicated.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};

use super::actions::run_hook;
use super::probes::{Probes, Running};
use super::status::{self, Observed};
use super::volumes::{self, Prepared, Refresh, VolumeContext};
use super::{env, node_shutdown, termination, Kubelet};
use crate::agent::cri::container::Resources;
use crate::agent::cri::{ContainerDetail, ContainerSpec, MountSpec, SandboxSpec, State};
use crate::resources::quantity::milli;

/// CrashLoopBackOff and ImagePullBackOff: 10 s doubling to 5 min, forgotten after 10 min of
/// running.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
    until: Instant,
}

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long a sandbox may be reported not ready while its containers run before it is
/// replaced (containerd restoring it after a restart).
const SANDBOX_UNREADY_GRACE: Duration = Duration::from_secs(15);

impl Backoff {
    fn next(prev: Option<Backoff>, from: Instant) -> Backoff {
        let delay = match prev {
            Some(b) => (b.delay * 2).min(BACKOFF_MAX),
            None => BACKOFF_START,
        };
        Backoff {
            delay,
            until: from + delay,
        }
    }
}

pub enum Next {
    After(Duration),
    Done,
}

pub struct PodWorker {
    k: Arc<Kubelet>,
    uid: String,
    crash: HashMap<String, Backoff>,
    pull: HashMap<String, Backoff>,
    sandbox_backoff: Option<Backoff>,
    volumes: BTreeMap<String, Prepared>,
    volumes_synced: Option<Instant>,
    refresh: Refresh,
    waiting: BTreeMap<String, (String, String)>,
    failed: Option<(String, String)>,
    /// The last exited container we have decided about, by name (so a restart is planned
    /// once per exit).
    handled_exit: HashMap<String, String>,
    probes: Probes,
    /// When the pod's sandbox was first seen not ready while its containers still ran.
    sandbox_unready_since: Option<Instant>,
    /// Set once the kubelet ended or refused the pod itself: it is finished whatever the
    /// (possibly stale) pod in the store still says.
    ended: bool,
}

fn ns_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

impl PodWorker {
    pub fn new(k: Arc<Kubelet>, uid: String) -> PodWorker {
        PodWorker {
            k,
            uid,
            crash: HashMap::new(),
            pull: HashMap::new(),
            sandbox_backoff: None,
            volumes: BTreeMap::new(),
            volumes_synced: None,
            refresh: Refresh::default(),
            waiting: BTreeMap::new(),
            failed: None,
            handled_exit: HashMap::new(),
            probes: Probes::default(),
            sandbox_unready_since: None,
            ended: false,
        }
    }

    fn pod_dir(&self) -> PathBuf {
        self.k.pods_dir.join(&self.uid)
    }

    /// Stops and removes every container and sandbox of this pod (containers get `grace`).
    async fn kill_all(&self, pod: Option<&Pod>, grace: Duration) {
        let cri = &self.k.cri;
        let containers: Vec<_> = cri
            .list_containers()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.pod_uid == self.uid)
            .collect();
        let running: Vec<_> = containers
            .iter()
            .filter(|c| c.state == State::Running)
            .collect();
        if let Some(pod) = pod {
            for c in &running {
                self.k
                    .events
                    .pod(
                        pod,
                        Some(&c.name),
                        false,
                        "Killing",
                        &format!("Stopping container {}", c.name),
                    )
                    .await;
            }
        }
        futures::future::join_all(running.iter().map(|c| async move {
            let spec = pod.and_then(|p| container_spec(p, &c.name));
            self.stop_one(pod, spec, &c.id, &c.sandbox_id, grace).await;
        }))
        .await;
        let sandboxes: Vec<_> = cri
            .list_sandboxes()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.uid == self.uid)
            .collect();
        for s in &sandboxes {
            if let Err(e) = cri.stop_sandbox(&s.id).await {
                tracing::warn!(pod_uid = %self.uid, sandbox = %s.id, error = %e, "stopping the sandbox failed");
            }
        }
        for c in &containers {
            let _ = cri.remove_container(&c.id).await;
        }
        for s in &sandboxes {
            if let Err(e) = cri.remove_sandbox(&s.id).await {
                tracing::warn!(pod_uid = %self.uid, sandbox = %s.id, error = %e, "removing the sandbox failed");
            }
        }
    }

    /// Removes the pod's log directory (`<log-root>/<ns>_<name>_<uid>`), as the kubelet
    /// does when a pod is gone.
    fn remove_logs(&self) {
        let suffix = format!("_{}", self.uid);
        let root = &self.k.sandbox.log_root;
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(&suffix) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove the pod's logs");
                }
            }
        }
    }

    /// Stops one container: its preStop hook first (within the grace period), then the
    /// runtime's stop with what is left of it.
    async fn stop_one(
        &self,
        pod: Option<&Pod>,
        spec: Option<&Container>,
        id: &str,
        sandbox_id: &str,
        grace: Duration,
    ) {
        let begun = Instant::now();
        let hook = spec.and_then(|c| {
            c.lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .map(|h| (c, h))
        });
        if let Some((c, h)) = hook {
            let result = run_hook(&self.k.cri, c, h, id, sandbox_id, grace).await;
            if let (Err(message), Some(pod)) = (result, pod) {
                self.k
                    .events
                    .pod(
                        pod,
                        Some(&c.name),
                        true,
                        "FailedPreStopHook",
                        &format!("PreStopHook failed: {message}"),
                    )
                    .await;
            }
        }
        let left = grace.saturating_sub(begun.elapsed());
        if let Err(e) = self.k.cri.stop_container(id, left).await {
            tracing::warn!(pod_uid = %self.uid, container = %id, error = %e, "stopping the container failed");
        }
    }

    /// One pass; `pod` is None when the pod is gone from the API.
    pub async fn sync(&mut self, pod: Option<Arc<Pod>>) -> Next {
        let Some(pod) = pod else {
            self.kill_all(None, Duration::from_secs(2)).await;
            volumes::remove_pod_dir(&self.pod_dir());
            self.remove_logs();
            return Next::Done;
        };
        let (ns, name) = ns_name(&pod);
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .unwrap_or(30)
                .max(0) as u64;
            self.kill_all(Some(&pod), Duration::from_secs(grace)).await;
            volumes::remove_pod_dir(&self.pod_dir());
            self.remove_logs();
            let api: Api<Pod> = Api::namespaced(self.k.client.clone(), &ns);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            return match api.delete(&name, &params).await {
                Ok(_) => Next::Done,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Next::Done,
                Err(e) => {
                    tracing::warn!(namespace = %ns, pod = %name, error = %e, "final delete failed; retrying");
                    Next::After(Duration::from_secs(1))
                }
            };
        }
        match self.run(&pod).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %name, error = %e, "pod sync failed");
                Next::After(Duration::from_secs(2))
            }
        }
    }

    async fn prepare_volumes(&mut self, pod: &Pod) -> Result<(), String> {
        let due = self
            .volumes_synced
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
            || self
                .refresh
                .tokens_due
                .is_some_and(|d| d <= SystemTime::now());
        if !due {
            return Ok(());
        }
        let allocatable = self.k.allocatable();
        let pod_dir = self.pod_dir();
        let ctx = VolumeContext {
            client: &self.k.client,
            pod,
            pod_dir: &pod_dir,
            node_allocatable: &allocatable,
        };
        let mut refresh = Refresh::default();
        let mut prepared = BTreeMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            match volumes::prepare(&ctx, v, &mut refresh).await {
                Ok(p) => {
                    prepared.insert(v.name.clone(), p);
                }
                Err(e) => {
                    return Err(format!(
                        "MountVolume.SetUp failed for volume {:?} : {e}",
                        v.name
                    ))
                }
            }
        }
        self.volumes = prepared;
        self.refresh = refresh;
        self.volumes_synced = Some(Instant::now());
        Ok(())
    }

    async fn run(&mut self, pod: &Arc<Pod>) -> Result<Next, crate::agent::cri::Error> {
        let k = self.k.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let mut next = Duration::from_secs(10);

        if let Some(t) = k.terminations.take(&self.uid) {
            self.ended = true;
            self.terminate(pod, t).await?;
            return Ok(Next::After(Duration::from_secs(60)));
        }

        // A finished pod keeps its containers (for logs) but not its sandbox.
        if self.ended || phase == "Succeeded" || phase == "Failed" {
            self.stop_sandboxes().await?;
            return Ok(Next::After(Duration::from_secs(60)));
        }

        // kube's admission: a pod that has not started is not admitted while the node shuts
        // down.
        if k.shutdown_state.shutting_down()
            && !k
                .cri
                .list_sandboxes()
                .await?
                .iter()
                .any(|s| s.uid == self.uid)
        {
            self.ended = true;
            self.reject(
                pod,
                node_shutdown::REJECTED_REASON,
                node_shutdown::REJECTED_MESSAGE,
            )
            .await;
            return Ok(Next::After(Duration::from_secs(60)));
        }

        let pass = Instant::now();
        let volumes = self.prepare_volumes(pod).await;
        tracing::debug!(pod_uid = %self.uid, elapsed_ms = pass.elapsed().as_millis() as u64, "volumes prepared");
        if let Err(message) = volumes {
            k.events.pod(pod, None, true, "FailedMount", &message).await;
            self.write_status(
                pod,
                Observed {
                    host_ip: k.node_ip.clone(),
                    ..Default::default()
                },
            )
            .await;
            return Ok(Next::After(Duration::from_secs(5)));
        }

        let sandboxes: Vec<_> = k
            .cri
            .list_sandboxes()
            .await?
            .into_iter()
            .filter(|s| s.uid == self.uid)
            .collect();
        let all: Vec<_> = k
            .cri
            .list_containers()
            .await?
            .into_iter()
            .filter(|c| c.pod_uid == self.uid)
            .collect();
        let current = sandboxes
            .iter()
            .filter(|s| s.ready)
            .max_by_key(|s| s.created_at)
            .cloned();
        // Right after containerd restarts it may report a sandbox not ready for a moment
        // while restoring it; its containers still run. Give that a grace period rather than
        // tearing the pod down and starting it again.
        let newest = sandboxes.iter().max_by_key(|s| s.created_at);
        let still_running = newest.is_some_and(|s| {
            all.iter()
                .any(|c| c.sandbox_id == s.id && c.state == State::Running)
        });
        if current.is_none() && still_running {
            let since = *self.sandbox_unready_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SANDBOX_UNREADY_GRACE {
                tracing::debug!(pod_uid = %self.uid, "sandbox not ready while its containers run; waiting");
                return Ok(Next::After(Duration::from_secs(1)));
            }
        } else {
            self.sandbox_unready_since = None;
        }
        let sandbox_spec;
        let sandbox_id = match current {
            Some(s) => {
                sandbox_spec = SandboxSpec::for_pod(pod, s.attempt, &k.sandbox);
                s.id
            }
            None => {
                let ran_before = !all.is_empty();
                if ran_before && restart_policy == "Never" {
                    // The sandbox died under a pod that never restarts: it has failed.
                    self.failed = Some((
                        "SandboxChanged".into(),
                        "Pod sandbox changed, it will be killed and re-created.".into(),
                    ));
                }
                if let Some(b) = self.sandbox_backoff.filter(|b| b.until > Instant::now()) {
                    return Ok(Next::After(b.until - Instant::now()));
                }
                for old in &sandboxes {
                    for c in all
                        .iter()
                        .filter(|c| c.sandbox_id == old.id && c.state == State::Running)
                    {
                        let _ = k.cri.stop_container(&c.id, Duration::from_secs(2)).await;
                    }
                    let _ = k.cri.stop_sandbox(&old.id).await;
                }
                if ran_before {
                    let seen: Vec<(&str, bool)> =
                        sandboxes.iter().map(|s| (s.id.as_str(), s.ready)).collect();
                    let states: Vec<(&str, State)> =
                        all.iter().map(|c| (c.id.as_str(), c.state)).collect();
                    tracing::info!(pod_uid = %self.uid, sandboxes = ?seen, containers = ?states, "no ready sandbox; starting a new one");
                    k.events
                        .pod(
                            pod,
                            None,
                            false,
                            "SandboxChanged",
                            "Pod sandbox changed, it will be killed and re-created.",
                        )
                        .await;
                }
                let attempt = sandboxes.iter().map(|s| s.attempt + 1).max().unwrap_or(0);
                sandbox_spec = SandboxSpec::for_pod(pod, attempt, &k.sandbox);
                let log_dir = PathBuf::from(sandbox_spec.log_directory());
                if let Err(e) = std::fs::create_dir_all(&log_dir) {
                    tracing::warn!(dir = %log_dir.display(), error = %e, "cannot create the pod log directory");
                }
                let sandbox_started = Instant::now();
                let ran = k.cri.run_sandbox(&sandbox_spec).await;
                tracing::debug!(pod_uid = %self.uid, elapsed_ms = sandbox_started.elapsed().as_millis() as u64, "sandbox run");
                match ran {
                    Ok(id) => {
                        self.sandbox_backoff = None;
                        id
                    }
                    Err(e) => {
                        let b = Backoff::next(self.sandbox_backoff, Instant::now());
                        self.sandbox_backoff = Some(Backoff {
                            delay: b.delay.min(Duration::from_secs(30)),
                            until: Instant::now() + b.delay.min(Duration::from_secs(30)) / 5,
                        });
                        k.events
                            .pod(
                                pod,
                                None,
                                true,
                                "FailedCreatePodSandBox",
                                &format!("Failed to create pod sandbox: {e}"),
                            )
                            .await;
                        self.write_status(
                            pod,
                            Observed {
                                host_ip: k.node_ip.clone(),
                                ..Default::default()
                            },
                        )
                        .await;
                        return Ok(Next::After(Duration::from_secs(2)));
                    }
                }
            }
        };
        let pod_ips = if spec.host_network.unwrap_or(false) {
            vec![k.node_ip.clone()]
        } else {
            k.cri.sandbox_ips(&sandbox_id).await.unwrap_or_default()
        };

        // What ran, newest attempt first, per container name.
        let details = self.details_of(&all).await;
        let in_sandbox: HashMap<String, String> = all
            .iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .map(|c| (c.id.clone(), c.name.clone()))
            .collect();
        let latest = |name: &str| -> Option<ContainerDetail> {
            details
                .get(name)
                .and_then(|l| l.iter().find(|d| in_sandbox.contains_key(&d.id)))
                .cloned()
        };
        let next_attempt = |name: &str| -> u32 {
            details
                .get(name)
                .and_then(|l| l.first())
                .map(|d| d.attempt + 1)
                .unwrap_or(0)
        };

        // Init containers, in order.
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let sidecar = is_sidecar(c);
            match latest(&c.name) {
                None => {
                    initialized = false;
                    self.start(
                        pod,
                        c,
                        &sandbox_id,
                        &sandbox_spec,
                        next_attempt(&c.name),
                        &pod_ips,
                    )
                    .await;
                    next = Duration::from_secs(1);
                    if !sidecar {
                        break;
                    }
                }
                Some(d) if d.state == State::Running => {
                    if !sidecar {
                        initialized = false;
                        next = Duration::from_secs(1);
                        break;
                    }
                }
                Some(d) if d.state == State::Exited && d.exit_code == 0 && !sidecar => continue,
                Some(d) if d.state == State::Exited => {
                    initialized = false;
                    if restart_policy == "Never" && !sidecar {
                        break;
                    }
                    next = next.min(
                        self.restart(pod, c, &d, &sandbox_id, &sandbox_spec, &pod_ips)
                            .await,
                    );
                    if !sidecar {
                        break;
                    }
                }
                Some(_) => {
                    initialized = false;
                    next = Duration::from_secs(1);
                    break;
                }
            }
        }
        if initialized {
            for c in &spec.containers {
                match latest(&c.name) {
                    None => {
                        self.start(
                            pod,
                            c,
                            &sandbox_id,
                            &sandbox_spec,
                            next_attempt(&c.name),
                            &pod_ips,
                        )
                        .await;
                        next = Duration::from_secs(1);
                    }
                    Some(d) if d.state == State::Exited => {
                        let restart = match restart_policy.as_str() {
                            "Always" => true,
                            "OnFailure" => d.exit_code != 0,
                            _ => false,
                        };
                        if restart {
                            next = next.min(
                                self.restart(pod, c, &d, &sandbox_id, &sandbox_spec, &pod_ips)
                                    .await,
                            );
                        } else {
                            self.waiting.remove(&c.name);
                        }
                    }
                    Some(d) if d.state == State::Running => {
                        self.waiting.remove(&c.name);
                        if let Some(b) = self.crash.get(&c.name) {
                            let ran = SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map(|n| n.as_nanos() as i64 - d.started_at)
                                .unwrap_or(0);
                            if ran > BACKOFF_RESET.as_nanos() as i64 && b.until < Instant::now() {
                                self.crash.remove(&c.name);
                            }
                        }
                    }
                    Some(_) => next = Duration::from_secs(1),
                }
            }
        }
        // Probes of what runs now; a failed liveness or startup probe restarts the container.
        let pod_ip = pod_ips.first().cloned().unwrap_or_default();
        let specs: Vec<&Container> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c))
            .chain(spec.containers.iter())
            .collect();
        let current: Vec<(&Container, ContainerDetail)> = specs
            .into_iter()
            .filter_map(|c| latest(&c.name).map(|d| (c, d)))
            .filter(|(_, d)| d.state == State::Running)
            .collect();
        let running: Vec<Running<'_>> = current
            .iter()
            .map(|(c, d)| Running {
                container: c,
                id: &d.id,
                started_at: d.started_at,
            })
            .collect();
        let verdict = self.probes.run(&k, pod, &running, &pod_ip).await;
        for r in &verdict.restart {
            k.events
                .pod(pod, Some(&r.name), false, "Killing", &r.message)
                .await;
            let grace = r
                .grace
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64;
            let c = current
                .iter()
                .find(|(c, _)| c.name == r.name)
                .map(|(c, _)| *c);
            self.stop_one(Some(pod), c, &r.id, &sandbox_id, Duration::from_secs(grace))
                .await;
            next = Duration::from_millis(100);
        }
        if let Some(due) = verdict.next {
            next = next.min(due.max(Duration::from_millis(100)));
        }

        // Keep the newest two containers per name (current and previous, for logs).
        for list in details.values() {
            for old in list.iter().skip(2).filter(|d| d.state == State::Exited) {
                let _ = k.cri.remove_container(&old.id).await;
            }
        }
        let fresh = self.runtime_details().await?;
        let obs = Observed {
            sandbox_ready: true,
            pod_ips,
            host_ip: k.node_ip.clone(),
            containers: fresh,
            waiting: self.waiting.clone(),
            failed: self.failed.clone(),
            ready: verdict.ready,
            started: verdict.started,
        };
        self.write_status(pod, obs).await;
        tracing::debug!(pod_uid = %self.uid, elapsed_ms = pass.elapsed().as_millis() as u64, "pod synced");
        if let Some(due) = self.refresh.tokens_due {
            if let Ok(left) = due.duration_since(SystemTime::now()) {
                next = next.min(left.max(Duration::from_secs(1)));
            }
        }
        Ok(Next::After(next))
    }

    /// Stops this pod's ready sandboxes (and so every container in them).
    async fn stop_sandboxes(&self) -> Result<(), crate::agent::cri::Error> {
        for s in self
            .k
            .cri
            .list_sandboxes()
            .await?
            .into_iter()
            .filter(|s| s.uid == self.uid && s.ready)
        {
            self.k.cri.stop_sandbox(&s.id).await?;
        }
        Ok(())
    }

    /// Refuses the pod, as the kubelet's admission does: a Warning event, and the pod Failed
    /// with the reason (its QoS class kept).
    async fn reject(&self, pod: &Pod, reason: &str, message: &str) {
        self.k.events.pod(pod, None, true, reason, message).await;
        let (ns, name) = ns_name(pod);
        let patch = serde_json::json!({
            "metadata": {"uid": self.uid},
            "status": {"phase": "Failed", "reason": reason, "message": format!("Pod was rejected: {message}")},
        });
        let api: Api<Pod> = Api::namespaced(self.k.client.clone(), &ns);
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(namespace = %ns, pod = %name, reason, error = %e, "recording the pod's rejection failed");
        }
    }

    /// Every container the runtime has for this pod, by name, newest attempt first.
    async fn runtime_details(
        &self,
    ) -> Result<BTreeMap<String, Vec<ContainerDetail>>, crate::agent::cri::Error> {
        let mine: Vec<_> = self
            .k
            .cri
            .list_containers()
            .await?
            .into_iter()
            .filter(|c| c.pod_uid == self.uid)
            .collect();
        Ok(self.details_of(&mine).await)
    }

    /// The runtime's details of `containers`, by name, newest attempt first.
    async fn details_of(
        &self,
        containers: &[crate::agent::cri::Container],
    ) -> BTreeMap<String, Vec<ContainerDetail>> {
        let mut details: BTreeMap<String, Vec<ContainerDetail>> = BTreeMap::new();
        for c in containers {
            if let Ok(d) = self.k.cri.container_status(&c.id).await {
                details.entry(c.name.clone()).or_default().push(d);
            }
        }
        for list in details.values_mut() {
            list.sort_by(|a, b| {
                b.attempt
                    .cmp(&a.attempt)
                    .then(b.created_at.cmp(&a.created_at))
            });
        }
        details
    }

    /// Ends the pod for the kubelet's own reasons (eviction, node shutdown): its running
    /// containers get `t.grace` (preStop hooks first; none at all when zero), then the pod
    /// is marked Failed with `t.reason` and kube's DisruptionTarget condition. An evicted
    /// pod also gets an Evicted event.
    async fn terminate(
        &self,
        pod: &Pod,
        t: termination::Termination,
    ) -> Result<(), crate::agent::cri::Error> {
        let k = &self.k;
        if !t.grace.is_zero() {
            let running: Vec<_> = k
                .cri
                .list_containers()
                .await?
                .into_iter()
                .filter(|c| c.pod_uid == self.uid && c.state == State::Running)
                .collect();
            futures::future::join_all(running.iter().map(|c| async move {
                k.events
                    .pod(
                        pod,
                        Some(&c.name),
                        false,
                        "Killing",
                        &format!("Stopping container {}", c.name),
                    )
                    .await;
                let spec = container_spec(pod, &c.name);
                self.stop_one(Some(pod), spec, &c.id, &c.sandbox_id, t.grace)
                    .await;
            }))
            .await;
        }
        self.stop_sandboxes().await?;
        if t.reason == "Evicted" {
            k.events.pod(pod, None, true, "Evicted", &t.message).await;
        }
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let previous = pod.status.clone().unwrap_or_default();
        let obs = Observed {
            sandbox_ready: false,
            pod_ips: previous
                .pod_ips
                .iter()
                .flatten()
                .map(|ip| ip.ip.clone())
                .collect(),
            host_ip: k.node_ip.clone(),
            containers: self.runtime_details().await.unwrap_or_default(),
            failed: Some((t.reason.to_string(), t.message.clone())),
            ..Default::default()
        };
        let mut fresh = status::compute(pod, &obs, now.clone());
        let mut conditions: Vec<PodCondition> = fresh
            .conditions
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "DisruptionTarget")
            .collect();
        conditions.push(PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("TerminationByKubelet".into()),
            message: Some(t.message.clone()),
            last_transition_time: Some(now),
            ..Default::default()
        });
        fresh.conditions = Some(conditions);
        let (ns, name) = ns_name(pod);
        let patch =
            serde_json::json!({"metadata": {"uid": self.uid}, "status": status_json(&fresh)});
        let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(namespace = %ns, pod = %name, reason = t.reason, error = %e, "recording the pod's termination failed");
        }
        if let Some(done) = t.done {
            let _ = done.send(());
        }
        Ok(())
    }

    async fn write_status(&self, pod: &Pod, obs: Observed) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let fresh = status::compute(pod, &obs, now);
        let old = pod.status.clone().unwrap_or_default();
        if !status::differs(&old, &fresh) {
            return;
        }
        let (ns, name) = ns_name(pod);
        let api: Api<Pod> = Api::namespaced(self.k.client.clone(), &ns);
        let patch =
            serde_json::json!({ "metadata": {"uid": self.uid}, "status": status_json(&fresh) });
        if let Err(e) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(namespace = %ns, pod = %name, error = %e, "status update failed");
        }
    }

    /// Restarts an exited container once its back-off has passed; returns when to look again.
    async fn restart(
        &mut self,
        pod: &Pod,
        c: &Container,
        exited: &ContainerDetail,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        pod_ips: &[String],
    ) -> Duration {
        let now = Instant::now();
        if self.handled_exit.get(&c.name) != Some(&exited.id) {
            self.handled_exit.insert(c.name.clone(), exited.id.clone());
            let ran_long = exited.finished_at - exited.started_at > BACKOFF_RESET.as_nanos() as i64;
            let prev = if ran_long {
                None
            } else {
                self.crash.get(&c.name).copied()
            };
            // The first restart is immediate, as the kubelet's; later ones back off.
            let b = match prev {
                None if exited.attempt == 0 || ran_long => Backoff {
                    delay: Duration::ZERO,
                    until: now,
                },
                None => Backoff::next(None, now),
                Some(p) if p.delay.is_zero() => Backoff::next(None, now),
                Some(p) => Backoff::next(Some(p), now),
            };
            self.crash.insert(c.name.clone(), b);
        }
        let b = self.crash.get(&c.name).copied().unwrap_or(Backoff {
            delay: Duration::ZERO,
            until: now,
        });
        if b.until > now {
            let (ns, name) = ns_name(pod);
            let uid = &self.uid;
            let message = format!(
                "back-off {}s restarting failed container={} pod={name}_{ns}({uid})",
                b.delay.as_secs(),
                c.name
            );
            if self.waiting.get(&c.name).map(|w| w.0.as_str()) != Some("CrashLoopBackOff") {
                self.k
                    .events
                    .pod(
                        pod,
                        Some(&c.name),
                        true,
                        "BackOff",
                        "Back-off restarting failed container",
                    )
                    .await;
            }
            self.waiting
                .insert(c.name.clone(), ("CrashLoopBackOff".into(), message));
            return (b.until - now).max(Duration::from_millis(100));
        }
        self.start(pod, c, sandbox_id, sandbox, exited.attempt + 1, pod_ips)
            .await;
        Duration::from_secs(1)
    }

    /// Pulls (per imagePullPolicy), creates and starts one container; failures become the
    /// container's waiting reason and an event.
    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        attempt: u32,
        _pod_ips: &[String],
    ) {
        match self.try_start(pod, c, sandbox_id, sandbox, attempt).await {
            Ok(()) => {
                self.waiting.remove(&c.name);
            }
            Err((reason, message)) => {
                self.waiting.insert(c.name.clone(), (reason, message));
            }
        }
    }

    async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Result<String, (String, String)> {
        let k = &self.k;
        let image = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            if image.ends_with(":latest") || !image.rsplit('/').next().unwrap_or("").contains(':') {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let present = k.cri.image_id(&image).await.ok().flatten();
        match (policy.as_str(), present) {
            ("Never", Some(_)) | ("IfNotPresent", Some(_)) => {
                return Ok(image);
            }
            ("Never", None) => {
                let msg =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                k.events
                    .pod(pod, Some(&c.name), true, "ErrImageNeverPull", &msg)
                    .await;
                return Err(("ErrImageNeverPull".into(), msg));
            }
            _ => {}
        }
        if let Some(b) = self.pull.get(&image).filter(|b| b.until > Instant::now()) {
            let _ = b;
            return Err((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{image}\""),
            ));
        }
        k.events
            .pod(
                pod,
                Some(&c.name),
                false,
                "Pulling",
                &format!("Pulling image \"{image}\""),
            )
            .await;
        let started = Instant::now();
        let auths = super::pull_secrets::auths(&k.client, pod, &image).await;
        match k.cri.pull_image(&image, &auths).await {
            Ok(_) => {
                self.pull.remove(&image);
                k.events
                    .pod(
                        pod,
                        Some(&c.name),
                        false,
                        "Pulled",
                        &format!(
                            "Successfully pulled image \"{image}\" in {:.3}s",
                            started.elapsed().as_secs_f64()
                        ),
                    )
                    .await;
                Ok(image)
            }
            Err(e) => {
                let b = Backoff::next(self.pull.get(&image).copied(), Instant::now());
                self.pull.insert(image.clone(), b);
                let msg = format!("Failed to pull image \"{image}\": {e}");
                k.events.pod(pod, Some(&c.name), true, "Failed", &msg).await;
                Err(("ErrImagePull".into(), msg))
            }
        }
    }

    async fn try_start(
        &mut self,
        pod: &Pod,
        c: &Container,
        sandbox_id: &str,
        sandbox: &SandboxSpec,
        attempt: u32,
    ) -> Result<(), (String, String)> {
        let image = self.ensure_image(pod, c).await?;
        let k = self.k.clone();
        let allocatable = k.allocatable();
        let envs = env::build(&k.client, pod, c, &allocatable)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()));
        let envs = match envs {
            Ok(e) => e,
            Err(e) => {
                k.events
                    .pod(
                        pod,
                        Some(&c.name),
                        true,
                        "Failed",
                        &format!("Error: {}", e.1),
                    )
                    .await;
                return Err(e);
            }
        };
        let mut mounts = Vec::new();
        for vm in c.volume_mounts.iter().flatten() {
            let Some(v) = self.volumes.get(&vm.name) else {
                return Err((
                    "CreateContainerConfigError".into(),
                    format!("volume {:?} not found", vm.name),
                ));
            };
            let mut host = v.host_path.clone();
            if let Some(sub) = vm.sub_path.as_ref().filter(|s| !s.is_empty()) {
                if sub.split('/').any(|p| p == "..") || sub.starts_with('/') {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!("invalid subPath {sub:?}"),
                    ));
                }
                host = host.join(sub);
                if !host.exists() {
                    if let Err(e) = std::fs::create_dir_all(&host) {
                        return Err((
                            "CreateContainerConfigError".into(),
                            format!("subPath {sub:?}: {e}"),
                        ));
                    }
                }
            }
            mounts.push(MountSpec {
                container_path: vm.mount_path.clone(),
                host_path: host.display().to_string(),
                readonly: vm.read_only.unwrap_or(false) || v.read_only,
            });
        }
        // The termination message file, mounted where the container says.
        let term_dir = self.pod_dir().join("containers").join(&c.name);
        let term_file = term_dir.join(format!("{attempt}"));
        if std::fs::create_dir_all(&term_dir)
            .and_then(|_| std::fs::write(&term_file, b""))
            .is_ok()
        {
            mounts.push(MountSpec {
                container_path: c
                    .termination_message_path
                    .clone()
                    .unwrap_or_else(|| "/dev/termination-log".into()),
                host_path: term_file.display().to_string(),
                readonly: false,
            });
        }
        let res = c.resources.clone().unwrap_or_default();
        let get = |m: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                   key: &str| { m.as_ref().and_then(|m| m.get(key)).map(milli) };
        let resources = Resources {
            cpu_request_milli: get(&res.requests, "cpu").map(|v| v as i64),
            cpu_limit_milli: get(&res.limits, "cpu").map(|v| v as i64),
            memory_limit: get(&res.limits, "memory").map(|v| (v / 1000) as i64),
        };
        let log_rel = format!("{}/{attempt}.log", c.name);
        let _ = std::fs::create_dir_all(PathBuf::from(sandbox.log_directory()).join(&c.name));
        let spec = ContainerSpec::new(pod, c, attempt, &image, envs, mounts, resources, log_rel);
        let id = match k.cri.create_container(sandbox_id, sandbox, spec).await {
            Ok(id) => id,
            Err(e) => return Err(step_failed(&k, pod, c, "CreateContainerError", e).await),
        };
        k.events
            .pod(
                pod,
                Some(&c.name),
                false,
                "Created",
                &format!("Created container {}", c.name),
            )
            .await;
        if let Err(e) = k.cri.start_container(&id).await {
            return Err(step_failed(&k, pod, c, "RunContainerError", e).await);
        }
        k.events
            .pod(
                pod,
                Some(&c.name),
                false,
                "Started",
                &format!("Started container {}", c.name),
            )
            .await;
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let grace = Duration::from_secs(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30)
                    .max(1) as u64,
            );
            let result = run_hook(&k.cri, c, hook, &id, sandbox_id, grace).await;
            if let Err(message) = result {
                let message = format!("PostStartHook failed: {message}");
                k.events
                    .pod(pod, Some(&c.name), true, "FailedPostStartHook", &message)
                    .await;
                if let Err(e) = k.cri.stop_container(&id, grace).await {
                    tracing::warn!(container = %id, error = %e, "stopping the container failed");
                }
                return Err(("PostStartHookError".into(), message));
            }
        }
        Ok(())
    }
}

/// A container step that failed: kube's `Failed` event, and the container's waiting reason
/// and message.
async fn step_failed(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    reason: &str,
    error: impl std::fmt::Display,
) -> (String, String) {
    let msg = error.to_string();
    k.events
        .pod(pod, Some(&c.name), true, "Failed", &format!("Error: {msg}"))
        .await;
    (reason.to_string(), msg)
}

/// The spec of container `name` (app, init or sidecar) of `pod`.
fn container_spec<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The status as JSON for a merge patch: lists are replaced whole, and fields that became
/// absent are nulled so the patch clears them.
fn status_json(s: &PodStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        for key in [
            "podIP",
            "podIPs",
            "reason",
            "message",
            "initContainerStatuses",
        ] {
            obj.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    v
}
