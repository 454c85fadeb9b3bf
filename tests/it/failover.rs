//! The controller manager and the scheduler in a three-server cluster: exactly one server
//! holds each loop's Lease, and when that server dies another takes both over and the
//! cluster goes on creating and placing pods.
use std::time::{Duration, Instant};

use crate::cluster::{start_member, token_of};
use crate::support::{free_port, wait_for, write, Server};
use crate::workloads::register_node;

fn holder(s: &Server, lease: &str) -> Option<String> {
    let out = s.kubectl(&[
        "get",
        "lease",
        lease,
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !h.is_empty()).then_some(h)
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox}]}
";

#[test]
fn the_loops_move_to_another_server_when_their_leader_dies() {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut first = start_member(&dirs[0], peers[0], None);
    // The first server takes both leases before anyone else can.
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        let h = wait_for(lease, Duration::from_secs(30), || holder(&first, lease));
        assert_eq!(h, "s1");
    }
    let token = token_of(&dirs[0]);
    let others: Vec<Server> = (1..3)
        .map(|i| start_member(&dirs[i], peers[i], Some((peers[0], &token))))
        .collect();
    // Joining changes nothing: the leases stay where they are.
    std::thread::sleep(Duration::from_secs(4));
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        assert_eq!(holder(&others[0], lease).as_deref(), Some("s1"));
    }

    first.kill9();
    let died = Instant::now();
    let mut took = Vec::new();
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        let h = wait_for(
            &format!("{lease} taken over"),
            Duration::from_secs(60),
            || holder(&others[0], lease).filter(|h| h != "s1"),
        );
        took.push(format!(
            "{lease} → {h} after {:.1} s",
            died.elapsed().as_secs_f64()
        ));
        assert!(h == "s2" || h == "s3", "{h}");
    }
    eprintln!("takeover: {}", took.join(", "));

    // The new leaders work: a Deployment becomes pods bound to a node.
    let s = &others[0];
    register_node(s, dir.path(), "n1", "");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "web.yaml", WEB)]);
    wait_for(
        "three pods bound after the takeover",
        Duration::from_secs(60),
        || {
            let out = s.kube_ok(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {end}",
            ]);
            (out.split_whitespace().filter(|n| *n == "n1").count() == 3).then_some(())
        },
    );
}
