//! The kubelet's eviction manager on the agent inside `krab server`, with real containers:
//! a `memory.available` hard threshold above what this machine has free puts the node under
//! memory pressure (the kernel's own MemAvailable, no fake), so it reports MemoryPressure, is
//! tainted for it, and evicts its pods one per round in kube's order: the BestEffort pod
//! before the Guaranteed one, each Failed with reason Evicted, kube's message, the
//! DisruptionTarget condition and an Evicted event, its sandbox stopped.
use std::time::Duration;

use serde_json::Value;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::PodNetwork;
use crate::support::{wait_for, write, Server};

fn meminfo_kib(field: &str) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn pod(name: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  tolerations:
  - {{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}}
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sleep, '3600']
    resources: {resources}
"
    )
}

#[test]
fn memory_pressure_evicts_best_effort_pods_before_guaranteed_ones() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    // More than is free now: the node is short of memory from the start, while what it
    // reports allocatable (capacity less the threshold) still fits the Guaranteed pod.
    let available = meminfo_kib("MemAvailable:");
    let used = meminfo_kib("MemTotal:") - available;
    let threshold = format!(
        "--kubelet-arg=eviction-hard=memory.available<{}Ki",
        available + (used / 2).min(512 << 10)
    );
    let s = Server::start_with_agent(&data, &[&threshold]);
    let node: Value = wait_for(
        "the node under memory pressure",
        Duration::from_secs(60),
        || {
            let out = s.kubectl(&["get", "nodes", "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let n = v["items"].get(0)?.clone();
            let pressure = n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "MemoryPressure" && c["status"] == "True");
            let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["key"] == "node.kubernetes.io/memory-pressure")
            });
            (pressure && tainted).then_some(n)
        },
    );
    let reason = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "MemoryPressure")
        .unwrap()["reason"]
        .clone();
    assert_eq!(reason, "KubeletHasInsufficientMemory");

    let guaranteed = write(
        dir.path(),
        "g.yaml",
        &pod(
            "guaranteed",
            "{requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: 10m, memory: 32Mi}}",
        ),
    );
    let best_effort = write(dir.path(), "b.yaml", &pod("best-effort", "{}"));
    s.kube_ok(&["apply", "-f", &guaranteed, "-f", &best_effort]);

    wait_for(
        "the Guaranteed pod running",
        Duration::from_secs(60),
        || {
            let out = s.kubectl(&["get", "pod", "guaranteed", "-o", "jsonpath={.status.phase}"]);
            (String::from_utf8_lossy(&out.stdout) == "Running").then_some(())
        },
    );
    // The BestEffort pod goes first, while the Guaranteed one still runs.
    let evicted: Value = wait_for(
        "the BestEffort pod evicted",
        Duration::from_secs(120),
        || {
            let out = s.kubectl(&["get", "pod", "best-effort", "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"]["reason"] == "Evicted").then_some(v)
        },
    );
    let other: Value =
        serde_json::from_str(&s.kube_ok(&["get", "pod", "guaranteed", "-o", "json"])).unwrap();
    assert_ne!(
        other["status"]["reason"], "Evicted",
        "Guaranteed went first"
    );
    assert_eq!(evicted["status"]["phase"], "Failed");
    let message = evicted["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: "),
        "{message}"
    );
    let disruption = evicted["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DisruptionTarget")
        .cloned()
        .unwrap_or_default();
    assert_eq!(disruption["status"], "True");
    assert_eq!(disruption["reason"], "TerminationByKubelet");
    let events = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=best-effort,reason=Evicted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("low on resource: memory"), "{events}");

    // The pressure stays, so the Guaranteed pod is next.
    wait_for(
        "the Guaranteed pod evicted",
        Duration::from_secs(60),
        || {
            let out = s.kubectl(&[
                "get",
                "pod",
                "guaranteed",
                "-o",
                "jsonpath={.status.reason}",
            ]);
            (String::from_utf8_lossy(&out.stdout) == "Evicted").then_some(())
        },
    );
    // Their containers are stopped: containerd has no running task of theirs.
    for name in ["best-effort", "guaranteed"] {
        let id = s.kube_ok(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.containerStatuses[0].containerID}",
        ]);
        let id = id.trim_start_matches("containerd://").to_string();
        assert!(!id.is_empty(), "{name} never ran");
        wait_for(
            "the evicted container stopped",
            Duration::from_secs(30),
            || {
                let tasks = crate::agent::ctr(&data, &["tasks", "ls"]);
                (!tasks
                    .lines()
                    .any(|l| l.starts_with(&id) && l.contains("RUNNING")))
                .then_some(())
            },
        );
    }
}

#[test]
fn soft_thresholds_evict_after_their_grace_period_and_give_pods_time_to_stop() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let available = meminfo_kib("MemAvailable:");
    let used = meminfo_kib("MemTotal:") - available;
    let soft = format!(
        "--kubelet-arg=eviction-soft=memory.available<{}Ki",
        available + (used / 2).min(512 << 10)
    );
    let s = Server::start_with_agent(
        &data,
        &[
            &soft,
            "--kubelet-arg=eviction-soft-grace-period=memory.available=20s",
            "--kubelet-arg=eviction-max-pod-grace-period=5",
        ],
    );
    let pod = "apiVersion: v1
kind: Pod
metadata: {name: soft}
spec:
  terminationGracePeriodSeconds: 30
  tolerations:
  - {key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}
  containers:
  - name: main
    image: busybox:1.35
    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1; done\"]
";
    s.kube_ok(&["apply", "-f", &write(dir.path(), "soft.yaml", pod)]);
    // The condition shows at once; the pod runs until the threshold has held for 20 s.
    let since = wait_for("memory pressure reported", Duration::from_secs(60), || {
        let out = s.kube_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.conditions[?(@.type==\"MemoryPressure\")].status}",
        ]);
        (out == "True").then(std::time::Instant::now)
    });
    wait_for("the pod running", Duration::from_secs(60), || {
        (s.kube_ok(&["get", "pod", "soft", "-o", "jsonpath={.status.phase}"]) == "Running")
            .then_some(())
    });
    let evicted: Value = wait_for("the pod evicted", Duration::from_secs(120), || {
        let out = s.kubectl(&["get", "pod", "soft", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["reason"] == "Evicted").then_some(v)
    });
    assert!(
        since.elapsed() >= Duration::from_secs(12),
        "evicted {:?} after the pressure showed, before its 20 s grace period",
        since.elapsed()
    );
    let message = evicted["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: "),
        "{message}"
    );
    // Its container got SIGTERM and time to act on it (exit 0), not an immediate kill.
    let exit = wait_for("the container's exit", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pod",
            "soft",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
        ]);
        (!out.is_empty()).then_some(out)
    });
    assert_eq!(exit, "0");
}
