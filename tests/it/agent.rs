//! The agent inside `krab server` against the real containerd, runc and CNI plugins: node
//! registration, heartbeat Lease, the pause image imported without a registry, the pod
//! network config from the node's podCIDR, and containerd stopped with the server.
use std::process::Command;
use std::time::Duration;

use crate::support::{run_bounded, wait_for, Server};

fn containerd_running_for(dir: &std::path::Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let program = cmd.split('\0').next().unwrap_or_default();
            (program == "containerd" || program.ends_with("/containerd")) && cmd.contains(&needle)
        })
}

#[test]
fn the_local_agent_registers_a_ready_node_with_containerd() {
    let _net = crate::pods_support::PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut s = Server::start_with_agent(&data, &[]);
    let node = wait_for("a Ready node", Duration::from_secs(60), || {
        let out = s.kubectl(&["get", "nodes", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let node = v["items"].as_array()?.first()?.clone();
        let ready = node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let cidr = node["spec"]["podCIDR"].as_str().is_some();
        // The server gives its node the control-plane role (its kubelet may not).
        let role = node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true";
        (ready && cidr && role).then_some(node)
    });
    let info = &node["status"]["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{info}"
    );
    assert!(
        info["kubeletVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.32."),
        "{info}"
    );
    assert_eq!(
        node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"],
        "true"
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    let name = node["metadata"]["name"].as_str().unwrap().to_string();

    // The heartbeat Lease.
    wait_for("the node lease", Duration::from_secs(20), || {
        s.kubectl(&["-n", "kube-node-lease", "get", "lease", &name])
            .status
            .success()
            .then_some(())
    });

    // The pause image is in containerd, imported without any registry.
    let socket = data.join("agent/run/containerd/containerd.sock");
    let mut ctr = Command::new("ctr");
    ctr.arg("-a")
        .arg(&socket)
        .args(["-n", "k8s.io", "images", "ls", "-q"]);
    let images =
        String::from_utf8_lossy(&run_bounded(ctr, Duration::from_secs(10)).stdout).to_string();
    assert!(images.contains("krab.local/pause:"), "{images}");

    // The CNI config names the node's range.
    let cidr = node["spec"]["podCIDR"].as_str().unwrap().to_string();
    let conf = wait_for("the CNI conflist", Duration::from_secs(10), || {
        std::fs::read_to_string(data.join("agent/etc/cni/net.d/10-krab.conflist")).ok()
    });
    assert!(conf.contains(&cidr), "{conf}");

    // containerd goes with the server.
    assert!(containerd_running_for(&data));
    s.stop();
    wait_for("containerd to stop", Duration::from_secs(15), || {
        (!containerd_running_for(&data)).then_some(())
    });
}

pub fn ctr(data: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = Command::new("ctr");
    cmd.arg("-a")
        .arg(data.join("agent/run/containerd/containerd.sock"))
        .args(["-n", "k8s.io"])
        .args(args);
    String::from_utf8_lossy(&run_bounded(cmd, Duration::from_secs(10)).stdout).to_string()
}

fn running_pod(s: &Server, name: &str) -> (String, String) {
    wait_for("the pod to run", Duration::from_secs(60), || {
        let out = s.kubectl(&["get", "pod", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let ip = v["status"]["podIP"].as_str()?.to_string();
        let c = &v["status"]["containerStatuses"][0];
        (v["status"]["phase"] == "Running" && c["ready"] == true).then(|| {
            (
                ip,
                c["containerID"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// A pod on the pause image (present without any registry): it runs with an IP from the
/// node's range, keeps running when the server is killed, is adopted (not duplicated) by
/// the next start, and its sandbox goes away with it.
#[test]
fn a_pod_runs_survives_an_agent_kill_and_is_removed_with_its_sandbox() {
    let _net = crate::pods_support::PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut s = Server::start_with_agent(&data, &[]);
    let image = format!("krab.local/pause:{}", env!("CARGO_PKG_VERSION"));
    let manifest = crate::support::write(
        dir.path(),
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: c\n    image: {image}\n    command: [/pause]\n    resources: {{limits: {{memory: 32Mi, cpu: 100m}}}}\n"
        ),
    );
    s.kube_ok(&["apply", "-f", &manifest]);
    let (ip, id) = running_pod(&s, "p");
    assert!(ip.starts_with("10.42."), "{ip}");
    let tasks_before = ctr(&data, &["tasks", "ls", "-q"]);
    assert_eq!(
        tasks_before.lines().count(),
        2,
        "sandbox and container: {tasks_before}"
    );

    s.kill9();
    let mut s = Server::start_with_agent(&data, &[]);
    let (ip2, id2) = running_pod(&s, "p");
    assert_eq!((ip2, id2), (ip, id.clone()), "the same container, adopted");
    // A few relist rounds later, still exactly one sandbox and one container.
    std::thread::sleep(Duration::from_secs(3));
    let sorted = |text: &str| {
        let mut ids: Vec<String> = text.lines().map(str::to_string).collect();
        ids.sort();
        ids
    };
    let tasks = ctr(&data, &["tasks", "ls", "-q"]);
    if sorted(&tasks) != sorted(&tasks_before) {
        let events = s.kubectl(&["get", "events", "-o", "wide"]);
        let log = s.log();
        let tail: Vec<&str> = log.lines().rev().take(80).collect();
        panic!(
            "the pod was not adopted as it ran: {tasks_before:?} became {tasks:?}\n{}\n--- server log ---\n{}",
            String::from_utf8_lossy(&events.stdout),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    s.kube_ok(&["delete", "pod", "p", "--timeout=60s"]);
    wait_for("the sandbox to go", Duration::from_secs(30), || {
        ctr(&data, &["containers", "ls", "-q"])
            .trim()
            .is_empty()
            .then_some(())
    });
    s.stop();
}
