//! A Deployment's life through kubectl's rollout commands: updates roll out as revisions,
//! `rollout pause` holds a template change back (while `scale` still works), `resume` lets
//! it through, `restart` rolls the pods, `undo --to-revision` brings an old template back
//! as a new revision, and a rollout that never becomes ready exceeds its progress deadline
//! with kube's condition and `rollout status` failing as it does on kube.
use std::time::Duration;

use crate::support::{wait_for, write, Server};
use crate::workloads::register_node;

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: 'busybox:1'}]}
";

fn get(s: &Server, path: &str) -> String {
    s.kube_ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// Plays the kubelet: pods being deleted go, every other bound pod not yet running is
/// reported running and ready.
fn ready_all(s: &Server) {
    let out = s.kube_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[?(@.spec.nodeName)]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp}|{end}",
    ]);
    for p in out.split('|').filter(|p| !p.is_empty()) {
        let f: Vec<&str> = p.split(' ').collect();
        let (name, phase, deleting) = (
            f[0],
            f.get(1).copied().unwrap_or(""),
            f.get(2).is_some_and(|d| !d.is_empty()),
        );
        if deleting {
            let _ = s.kubectl(&[
                "delete",
                "pod",
                name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
        } else if phase != "Running" {
            let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}]}}"#;
            let _ = s.kubectl(&[
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                status,
            ]);
        }
    }
}

/// Waits for the rollout of `image` to finish: every replica updated and available.
fn rolled_out(s: &Server, image: &str) {
    wait_for(
        &format!("{image} rolled out"),
        Duration::from_secs(60),
        || {
            ready_all(s);
            let state = get(
            s,
            "{.spec.template.spec.containers[0].image} {.status.updatedReplicas} {.status.availableReplicas} {.status.replicas} {.status.observedGeneration} {.metadata.generation}",
        );
            let f: Vec<&str> = state.split(' ').collect();
            (f.len() == 6 && f[0] == image && f[1..4] == ["2", "2", "2"] && f[4] == f[5])
                .then_some(())
        },
    );
}

fn progressing(s: &Server) -> String {
    get(
        s,
        "{.status.conditions[?(@.type==\"Progressing\")].status}/{.status.conditions[?(@.type==\"Progressing\")].reason}",
    )
}

fn replica_sets(s: &Server) -> usize {
    s.kube_ok(&["get", "rs", "-l", "app=web", "-o", "name"])
        .lines()
        .count()
}

#[test]
fn deployments_pause_resume_restart_undo_and_exceed_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    register_node(&s, dir.path(), "n1", "");
    s.kube_ok(&["apply", "-f", &write(dir.path(), "web.yaml", WEB)]);
    rolled_out(&s, "busybox:1");
    s.kube_ok(&["set", "image", "deployment/web", "c=busybox:2"]);
    rolled_out(&s, "busybox:2");
    assert_eq!(progressing(&s), "True/NewReplicaSetAvailable");

    // Paused: a template change makes no ReplicaSet, scaling still reaches the pods.
    s.kube_ok(&["rollout", "pause", "deployment/web"]);
    s.kube_ok(&["set", "image", "deployment/web", "c=busybox:3"]);
    wait_for("the paused condition", Duration::from_secs(30), || {
        (progressing(&s) == "Unknown/DeploymentPaused").then_some(())
    });
    assert_eq!(replica_sets(&s), 2);
    s.kube_ok(&["scale", "deployment/web", "--replicas=3"]);
    wait_for("three pods while paused", Duration::from_secs(30), || {
        let rs = s.kube_ok(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.replicas}",
        ]);
        let mut n: Vec<&str> = rs.split_whitespace().collect();
        n.sort();
        (n == ["0", "3"]).then_some(())
    });
    assert_eq!(replica_sets(&s), 2, "nothing rolled while paused");
    s.kube_ok(&["scale", "deployment/web", "--replicas=2"]);

    // Resumed: the held change rolls out.
    s.kube_ok(&["rollout", "resume", "deployment/web"]);
    rolled_out(&s, "busybox:3");
    assert_eq!(replica_sets(&s), 3);

    // Restart: same image, new pods (the template's restartedAt annotation).
    let before = s.kube_ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    s.kube_ok(&["rollout", "restart", "deployment/web"]);
    wait_for("restarted pods", Duration::from_secs(60), || {
        ready_all(&s);
        let now = s.kube_ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "--field-selector=status.phase=Running",
            "-o",
            "name",
        ]);
        let fresh = now.lines().filter(|p| !before.contains(p)).count();
        (fresh == 2 && now.lines().count() == 2).then_some(())
    });
    rolled_out(&s, "busybox:3");

    // Undo to revision 1: its template comes back as the newest revision.
    s.kube_ok(&["rollout", "undo", "deployment/web", "--to-revision=1"]);
    rolled_out(&s, "busybox:1");
    let history = s.kube_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, ["2", "3", "4", "5"], "{history}");
    assert_eq!(
        get(
            &s,
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "5"
    );

    // A rollout whose pods never become ready exceeds its deadline.
    s.kube_ok(&[
        "patch",
        "deployment/web",
        "--type=merge",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":5}}"#,
    ]);
    s.kube_ok(&["set", "image", "deployment/web", "c=busybox:broken"]);
    wait_for("ProgressDeadlineExceeded", Duration::from_secs(60), || {
        (progressing(&s) == "False/ProgressDeadlineExceeded").then_some(())
    });
    let message = get(
        &s,
        "{.status.conditions[?(@.type==\"Progressing\")].message}",
    );
    assert!(message.ends_with("has timed out progressing."), "{message}");
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=10s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("deployment \"web\" exceeded its progress deadline"),
        "{err}"
    );
}
