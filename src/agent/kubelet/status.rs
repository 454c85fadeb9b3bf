//! A pod's status computed from what the runtime reports and what the pod worker knows
//! (why a container is waiting, what the probes say): phase, conditions, container statuses,
//! IPs, as the kubelet writes them.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::agent::cri::{ContainerDetail, State};

/// What the worker observed for one pod.
#[derive(Debug, Default)]
pub struct Observed {
    pub sandbox_ready: bool,
    pub pod_ips: Vec<String>,
    pub host_ip: String,
    /// Every container the runtime has for the pod, by name, newest attempt first.
    pub containers: BTreeMap<String, Vec<ContainerDetail>>,
    /// Why a container is waiting, when the worker knows better than "ContainerCreating".
    pub waiting: BTreeMap<String, (String, String)>,
    /// Readiness by container name (probes); absent means "ready when running".
    pub ready: BTreeMap<String, bool>,
    /// Whether the startup probe passed, by name; absent means "started when running".
    pub started: BTreeMap<String, bool>,
    /// Set when the whole pod has failed (e.g. an init container under restartPolicy Never).
    pub failed: Option<(String, String)>,
}

fn time_ns(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    k8s_openapi::jiff::Timestamp::from_nanosecond(ns as i128)
        .ok()
        .map(Time)
}

fn terminated(d: &ContainerDetail) -> ContainerStateTerminated {
    let reason = if !d.reason.is_empty() {
        d.reason.clone()
    } else if d.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: d.exit_code,
        reason: Some(reason),
        message: Some(d.message.clone()).filter(|m| !m.is_empty()),
        started_at: time_ns(d.started_at),
        finished_at: time_ns(d.finished_at),
        container_id: Some(format!("containerd://{}", d.id)),
        signal: None,
    }
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn container_status(c: &Container, obs: &Observed, default_waiting: &str) -> ContainerStatus {
    let history = obs
        .containers
        .get(&c.name)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let latest = history.first();
    let previous = history.get(1);
    let waiting = obs.waiting.get(&c.name);
    let mut status = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        restart_count: latest.map(|l| l.attempt as i32).unwrap_or(0),
        ..Default::default()
    };
    let waiting_state = |reason: &str, message: &str| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: Some(message.to_string()).filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    };
    match latest {
        Some(l) => {
            status.container_id = Some(format!("containerd://{}", l.id));
            status.image_id = l.image_ref.clone();
            match l.state {
                State::Running => {
                    status.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: time_ns(l.started_at),
                        }),
                        ..Default::default()
                    });
                    let started = obs.started.get(&c.name).copied().unwrap_or(true);
                    status.started = Some(started);
                    status.ready = started
                        && obs
                            .ready
                            .get(&c.name)
                            .copied()
                            .unwrap_or(c.readiness_probe.is_none());
                    status.last_state =
                        previous
                            .filter(|p| p.state == State::Exited)
                            .map(|p| ContainerState {
                                terminated: Some(terminated(p)),
                                ..Default::default()
                            });
                }
                State::Exited => {
                    status.started = Some(false);
                    match waiting {
                        Some((reason, message)) => {
                            status.state = Some(waiting_state(reason, message));
                            status.last_state = Some(ContainerState {
                                terminated: Some(terminated(l)),
                                ..Default::default()
                            });
                        }
                        None => {
                            status.state = Some(ContainerState {
                                terminated: Some(terminated(l)),
                                ..Default::default()
                            });
                            status.last_state =
                                previous.filter(|p| p.state == State::Exited).map(|p| {
                                    ContainerState {
                                        terminated: Some(terminated(p)),
                                        ..Default::default()
                                    }
                                });
                        }
                    }
                }
                State::Created | State::Unknown => {
                    status.started = Some(false);
                    let (r, m) = waiting
                        .cloned()
                        .unwrap_or_else(|| (default_waiting.to_string(), String::new()));
                    status.state = Some(waiting_state(&r, &m));
                }
            }
        }
        None => {
            status.started = Some(false);
            let (r, m) = waiting
                .cloned()
                .unwrap_or_else(|| (default_waiting.to_string(), String::new()));
            status.state = Some(waiting_state(&r, &m));
        }
    }
    if status.image_id.is_empty() {
        status.image_id = String::new();
    }
    status
}

fn cond(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

/// The new status; `previous` keeps transition times, PodScheduled and foreign conditions.
pub fn compute(pod: &Pod, obs: &Observed, now: Time) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let previous = pod.status.clone().unwrap_or_default();
    let restart_policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let inits = spec.init_containers.clone().unwrap_or_default();
    let init_statuses: Vec<ContainerStatus> = inits
        .iter()
        .map(|c| container_status(c, obs, "PodInitializing"))
        .collect();
    let mut pending_init = Vec::new();
    for (c, s) in inits.iter().zip(&init_statuses) {
        let done = if is_sidecar(c) {
            s.started == Some(true)
        } else {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        };
        if !done {
            pending_init.push(c.name.clone());
        }
    }
    let initialized = pending_init.is_empty();
    let app_waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, obs, app_waiting))
        .collect();

    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in &statuses {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if st.waiting.is_some() {
            if s.last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .is_some()
            {
                stopped += 1;
            } else {
                waiting += 1;
            }
        }
    }
    let init_failed = restart_policy == "Never"
        && inits.iter().zip(&init_statuses).any(|(c, s)| {
            !is_sidecar(c)
                && s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0)
        });
    let phase = if obs.failed.is_some() || init_failed {
        "Failed"
    } else if !initialized || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if restart_policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if restart_policy == "OnFailure" {
            "Running"
        } else {
            "Failed"
        }
    } else {
        "Pending"
    };
    let terminal = phase == "Succeeded" || phase == "Failed";

    let unready: Vec<String> = spec
        .containers
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| !s.ready)
        .map(|(c, _)| c.name.clone())
        .chain(
            inits
                .iter()
                .zip(&init_statuses)
                .filter(|(c, s)| is_sidecar(c) && !s.ready)
                .map(|(c, _)| c.name.clone()),
        )
        .collect();
    let containers_ready = unready.is_empty() && initialized;
    let gates_ok = spec.readiness_gates.iter().flatten().all(|g| {
        previous
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == g.condition_type && c.status == "True")
    });
    let not_ready_msg = if !initialized {
        format!(
            "containers with incomplete status: [{}]",
            pending_init.join(" ")
        )
    } else {
        format!("containers with unready status: [{}]", unready.join(" "))
    };
    let (cr_reason, ready_reason) = if terminal {
        ("PodCompleted", "PodCompleted")
    } else if !initialized {
        ("ContainersNotInitialized", "ContainersNotInitialized")
    } else {
        (
            "ContainersNotReady",
            if containers_ready {
                "ReadinessGatesNotReady"
            } else {
                "ContainersNotReady"
            },
        )
    };
    let mut conditions = vec![
        cond("PodReadyToStartContainers", obs.sandbox_ready, None, None),
        cond(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                pending_init.join(" ")
            )),
        ),
        cond(
            "ContainersReady",
            containers_ready && !terminal,
            Some(cr_reason),
            Some(not_ready_msg.clone()),
        ),
        cond(
            "Ready",
            containers_ready && gates_ok && !terminal,
            Some(ready_reason),
            Some(not_ready_msg),
        ),
    ];
    if terminal && initialized {
        for c in conditions.iter_mut().skip(2) {
            c.message = None;
        }
    }
    for c in &mut conditions {
        c.last_probe_time = None;
        c.last_transition_time = previous
            .conditions
            .iter()
            .flatten()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .and_then(|p| p.last_transition_time.clone())
            .or_else(|| Some(now.clone()));
    }
    let managed = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ];
    for p in previous.conditions.iter().flatten() {
        if !managed.contains(&p.type_.as_str()) {
            conditions.push(p.clone());
        }
    }
    let (reason, message) = match &obs.failed {
        Some((r, m)) => (Some(r.clone()), Some(m.clone())),
        None => (None, None),
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: if inits.is_empty() {
            None
        } else {
            Some(init_statuses)
        },
        host_ip: Some(obs.host_ip.clone()).filter(|s| !s.is_empty()),
        host_ips: Some(vec![HostIP {
            ip: obs.host_ip.clone(),
        }])
        .filter(|_| !obs.host_ip.is_empty()),
        pod_ip: obs.pod_ips.first().cloned(),
        pod_ips: if obs.pod_ips.is_empty() {
            None
        } else {
            Some(
                obs.pod_ips
                    .iter()
                    .map(|ip| PodIP { ip: ip.clone() })
                    .collect(),
            )
        },
        qos_class: previous.qos_class.clone(),
        start_time: previous.start_time.clone().or(Some(now)),
        reason,
        message,
        nominated_node_name: previous.nominated_node_name.clone(),
        ..Default::default()
    }
}

/// Whether two statuses differ in anything but heartbeat-like times.
pub fn differs(a: &PodStatus, b: &PodStatus) -> bool {
    let strip = |s: &PodStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_probe_time = None;
        }
        serde_json::to_value(s).unwrap_or_default()
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(name: &str, attempt: u32, state: State, exit: i32) -> ContainerDetail {
        ContainerDetail {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            attempt,
            state,
            created_at: 1,
            started_at: 1_000_000_000,
            finished_at: if state == State::Exited {
                2_000_000_000
            } else {
                0
            },
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image: "busybox".into(),
            image_ref: "sha256:abc".into(),
            log_path: String::new(),
        }
    }

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}
        }))
        .unwrap()
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    #[test]
    fn a_running_container_makes_a_ready_running_pod() {
        let mut obs = Observed {
            sandbox_ready: true,
            pod_ips: vec!["10.42.0.5".into()],
            host_ip: "192.0.2.2".into(),
            ..Default::default()
        };
        obs.containers
            .insert("c".into(), vec![detail("c", 0, State::Running, 0)]);
        let s = compute(&pod("Always"), &obs, now());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert!(s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .any(|c| c.type_ == "PodScheduled"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.5"));
        assert_eq!(
            s.container_statuses.unwrap()[0].container_id.as_deref(),
            Some("containerd://c-0")
        );
    }

    #[test]
    fn a_crash_looping_container_waits_with_its_last_termination() {
        let mut obs = Observed {
            sandbox_ready: true,
            ..Default::default()
        };
        obs.containers.insert(
            "c".into(),
            vec![
                detail("c", 2, State::Exited, 1),
                detail("c", 1, State::Exited, 1),
            ],
        );
        obs.waiting.insert(
            "c".into(),
            ("CrashLoopBackOff".into(), "back-off 20s".into()),
        );
        let s = compute(&pod("Always"), &obs, now());
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let c = &s.container_statuses.unwrap()[0];
        assert_eq!(c.restart_count, 2);
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            c.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
    }

    #[test]
    fn never_restarting_pods_end_succeeded_or_failed() {
        let mut obs = Observed {
            sandbox_ready: true,
            ..Default::default()
        };
        obs.containers
            .insert("c".into(), vec![detail("c", 0, State::Exited, 0)]);
        assert_eq!(
            compute(&pod("Never"), &obs, now()).phase.as_deref(),
            Some("Succeeded")
        );
        obs.containers
            .insert("c".into(), vec![detail("c", 0, State::Exited, 3)]);
        let s = compute(&pod("Never"), &obs, now());
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let t = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    }
}
