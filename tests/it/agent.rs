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
        (ready && cidr).then_some(node)
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
