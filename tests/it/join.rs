//! `krab agent --server --token` against `krab server --disable-agent` on the same machine:
//! a wrong token is refused with a message that says what is wrong, and a right one joins a
//! node that runs pods, with logs and exec through the API server.
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::PodNetwork;
use crate::support::{free_port, run_bounded, wait_for, write, Server};

fn agent_command(s: &Server, data: &std::path::Path, token: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krab"));
    cmd.args(["agent", "--config", "/dev/null", "--node-name", "worker-1"])
        // The server's own agent programs this network namespace's service rules.
        .args(["--disable-kube-proxy", "--disable-network-policy"])
        .args(["--node-ip", "127.0.0.1", "--kubelet-port"])
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(data)
        .arg("--server")
        .arg(format!("https://127.0.0.1:{}", s.api_port))
        .arg("--token")
        .arg(token)
        .env_remove("RUST_LOG");
    cmd
}

fn node_token(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir.join("server/node-token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_wrong_join_token_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let token = node_token(&s);
    assert!(
        token.starts_with("K10") && token.contains("::node:"),
        "{token}"
    );
    let refused = |token: &str| {
        let out = run_bounded(
            agent_command(&s, &dir.path().join("a"), token),
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "the agent accepted {token:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let wrong_ca = refused("K10deadbeef::node:whatever");
    assert!(
        wrong_ca.contains("does not present the CA this token names"),
        "{wrong_ca}"
    );
    let (hash_part, _) = token.rsplit_once(':').unwrap();
    let wrong_secret = refused(&format!("{hash_part}:not-the-secret"));
    assert!(
        wrong_secret.contains("refused the token") && wrong_secret.contains("not this cluster's"),
        "{wrong_secret}"
    );
    let no_hash = refused("just-a-secret");
    assert!(no_hash.contains("has no CA hash"), "{no_hash}");
}

struct Agent(Child);

impl Agent {
    /// `krab agent` joined to `s` with the node token, logging to `log`.
    fn start(s: &Server, data: &std::path::Path, log: &std::path::Path) -> Agent {
        let log = std::fs::File::create(log).unwrap();
        Agent(
            agent_command(s, data, &node_token(s))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_agent_joins_and_runs_pods_reached_through_the_server() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &[]);
    let data = dir.path().join("a");
    write_busybox_image(&data.join("agent/images"));
    let _agent = Agent::start(&s, &data, &dir.path().join("agent.log"));
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    wait_for(
        "the joined node to be Ready",
        Duration::from_secs(60),
        || {
            let out = s.kubectl(&[
                "get",
                "node",
                "worker-1",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
        },
    );
    assert!(data.join("agent/kubelet.kubeconfig").exists());
    let pod = write(
        dir.path(),
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hello}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sh, -c, 'echo hello from the agent; sleep 600']\n"
        ),
    );
    s.kube_ok(&["apply", "-f", &pod]);
    let ran = wait_for(
        "the pod to run on the agent",
        Duration::from_secs(60),
        || {
            let out = s.kube_ok(&[
                "get",
                "pod",
                "hello",
                "-o",
                "jsonpath={.spec.nodeName} {.status.phase}",
            ]);
            (out == "worker-1 Running").then_some(out)
        },
    );
    assert_eq!(ran, "worker-1 Running", "{}", agent_log());
    let logs = wait_for("the pod's log", Duration::from_secs(20), || {
        let out = s.kubectl(&["logs", "hello"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            .filter(|l| !l.is_empty())
    });
    assert_eq!(logs, "hello from the agent\n");
    assert_eq!(
        s.kube_ok(&["exec", "hello", "--", "echo", "exec ok"]),
        "exec ok\n"
    );
    s.kube_ok(&["delete", "pod", "hello", "--timeout=60s"]);
}

/// With node certificates that last 30 s (`cluster-signing-duration`), a joined agent renews
/// them at 70–90% of their life without restarting, and keeps working past the first ones'
/// expiry: its Lease heartbeat (client certificate) and the API server's calls to its
/// kubelet API (serving certificate).
#[test]
fn an_agent_renews_its_certificates_before_they_expire() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("d"),
        &["--kube-controller-manager-arg=cluster-signing-duration=30s"],
    );
    let data = dir.path().join("a");
    let _agent = Agent::start(&s, &data, &dir.path().join("agent.log"));
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let cert = data.join("agent/client-kubelet.crt");
    let first = wait_for("the agent to join", Duration::from_secs(60), || {
        std::fs::read_to_string(&cert).ok()
    });
    let joined = std::time::Instant::now();
    let renewed = wait_for("a renewed certificate", Duration::from_secs(60), || {
        std::fs::read_to_string(&cert).ok().filter(|c| *c != first)
    });
    assert!(renewed.contains("BEGIN CERTIFICATE"));
    assert!(
        agent_log().contains("node certificates renewed"),
        "{}",
        agent_log()
    );
    // Past the first certificates' expiry (30 s after issue), the node still works.
    if let Some(left) = Duration::from_secs(35).checked_sub(joined.elapsed()) {
        std::thread::sleep(left);
    }
    let renew_time = || {
        s.kube_ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            "worker-1",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let before = renew_time();
    wait_for("a heartbeat after expiry", Duration::from_secs(30), || {
        (renew_time() != before).then_some(())
    });
    let healthz = wait_for(
        "the kubelet API after expiry",
        Duration::from_secs(20),
        || {
            let out = s.kubectl(&["get", "--raw", "/api/v1/nodes/worker-1/proxy/healthz"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert_eq!(healthz, "ok", "{}", agent_log());
}
