//! Graceful node shutdown on the agent inside `krab server`, with real containerd and a real
//! D-Bus daemon. logind is the one stand-in: a shutdown cannot be caused here for real (the
//! test machine has no systemd), so a logind double on a private bus hands out inhibitor
//! locks (one end of a socket pair, so the test sees when krab lets go) and announces
//! `PrepareForShutdown`, as logind does before a shutdown and after a cancelled one.
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::busybox_image::{write_busybox_image, BUSYBOX};
use crate::pods_support::PodNetwork;
use crate::support::{wait_for, write, Server};

/// A dbus-daemon of the test's own, on a socket in its temp dir.
struct PrivateBus {
    daemon: Child,
    address: String,
}

impl PrivateBus {
    fn start(dir: &Path) -> PrivateBus {
        let socket = dir.join("system_bus_socket");
        let config = write(
            dir,
            "bus.conf",
            &format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        );
        let daemon = Command::new("dbus-daemon")
            .args(["--nofork", "--nopidfile", "--config-file", &config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian's dbus-daemon package) must be installed");
        let bus = PrivateBus {
            daemon,
            address: format!("unix:path={}", socket.display()),
        };
        wait_for("the bus socket", Duration::from_secs(10), || {
            socket.exists().then_some(())
        });
        bus
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// One inhibitor lock handed out: what it was asked for, and the test's end of it.
struct Held {
    asked: (String, String, String, String),
    end: UnixStream,
}

impl Held {
    /// Whether krab closed its end.
    fn released(&mut self) -> bool {
        let _ = self.end.set_nonblocking(true);
        matches!(self.end.read(&mut [0u8; 1]), Ok(0))
    }
}

#[derive(Clone)]
struct LogindDouble {
    locks: Arc<Mutex<Vec<Held>>>,
    delay_usec: u64,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl LogindDouble {
    fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
    ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        self.locks.lock().unwrap().push(Held {
            asked: (what, who, why, mode),
            end: ours,
        });
        Ok(std::os::fd::OwnedFd::from(theirs).into())
    }

    #[zbus(property, name = "InhibitDelayMaxUSec")]
    fn inhibit_delay_max_usec(&self) -> u64 {
        self.delay_usec
    }
}

async fn serve_logind(address: &str, logind: LogindDouble) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .unwrap()
        .name("org.freedesktop.login1")
        .unwrap()
        .serve_at("/org/freedesktop/login1", logind)
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn announce(conn: &zbus::Connection, start: bool) {
    conn.emit_signal(
        None::<()>,
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "PrepareForShutdown",
        &(start,),
    )
    .await
    .unwrap();
}

fn pod_yaml(name: &str, namespace: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
spec:
  terminationGracePeriodSeconds: 30
{extra_spec}  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
    )
}

#[test]
fn pods_end_gracefully_before_the_node_shuts_down_and_the_lock_is_released_after() {
    let _net = PodNetwork::acquire();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    write_busybox_image(&data.join("agent/images"));
    let bus = PrivateBus::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let double = LogindDouble {
        locks: Arc::default(),
        delay_usec: 30_000_000,
    };
    let locks = double.locks.clone();
    let logind = rt.block_on(serve_logind(&bus.address, double));
    let s = Server::start_with_agent_env(
        &data,
        &[
            "--kubelet-arg=shutdown-grace-period=20s",
            "--kubelet-arg=shutdown-grace-period-critical-pods=8s",
        ],
        &[("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)],
    );
    let asked = wait_for("the inhibitor lock taken", Duration::from_secs(60), || {
        locks.lock().unwrap().first().map(|h| h.asked.clone())
    });
    assert_eq!(
        asked,
        (
            "shutdown".to_string(),
            "kubelet".to_string(),
            "Kubelet needs time to handle node shutdown".to_string(),
            "delay".to_string()
        )
    );
    let node = s.kube_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let pods = write(
        dir.path(),
        "pods.yaml",
        &format!(
            "{}---\n{}",
            pod_yaml("app", "default", ""),
            pod_yaml(
                "critical",
                "kube-system",
                "  priorityClassName: system-node-critical\n"
            )
        ),
    );
    s.kube_ok(&["apply", "-f", &pods]);
    for (ns, pod) in [("default", "app"), ("kube-system", "critical")] {
        wait_for(&format!("{pod} running"), Duration::from_secs(90), || {
            (s.kube_ok(&[
                "get",
                "pod",
                pod,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.phase}",
            ]) == "Running")
                .then_some(())
        });
    }
    assert!(!locks.lock().unwrap()[0].released());

    rt.block_on(announce(&logind, true));
    wait_for("the node NotReady", Duration::from_secs(30), || {
        let ready = s.kube_ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].message}",
        ]);
        (ready == "False/node is shutting down").then_some(())
    });
    wait_for("the lock released", Duration::from_secs(60), || {
        locks.lock().unwrap()[0].released().then_some(())
    });
    // Both pods ended by SIGTERM (exit 0, not a kill), marked as kube marks them, the
    // critical one after the ordinary one.
    let mut finished = Vec::new();
    for (ns, pod) in [("default", "app"), ("kube-system", "critical")] {
        let got = wait_for(
            &format!("{pod} terminated"),
            Duration::from_secs(30),
            || {
                let out = s.kube_ok(&[
                "get",
                "pod",
                pod,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.phase}|{.status.reason}|{.status.message}|{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}|{.status.containerStatuses[0].state.terminated.exitCode}|{.status.containerStatuses[0].state.terminated.finishedAt}",
            ]);
                out.starts_with("Failed|").then_some(out)
            },
        );
        let fields: Vec<&str> = got.split('|').collect();
        assert_eq!(
            fields[..5],
            [
                "Failed",
                "Terminated",
                "Pod was terminated in response to imminent node shutdown.",
                "TerminationByKubelet",
                "0"
            ],
            "{pod}: {got}"
        );
        finished.push(fields[5].to_string());
    }
    assert!(finished[0] <= finished[1], "{finished:?}");
    let event = s.kube_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=Shutdown",
        "-o",
        "jsonpath={.items[0].involvedObject.kind}: {.items[0].message}",
    ]);
    assert_eq!(event, "Node: Shutdown manager detected shutdown event");

    // A pod bound to the node now is not admitted.
    let late = write(
        dir.path(),
        "late.yaml",
        &pod_yaml("late", "default", &format!("  nodeName: {node}\n")),
    );
    s.kube_ok(&["apply", "-f", &late]);
    let rejected = wait_for("the late pod rejected", Duration::from_secs(30), || {
        let out = s.kube_ok(&[
            "get",
            "pod",
            "late",
            "-o",
            "jsonpath={.status.phase}|{.status.reason}|{.status.message}",
        ]);
        out.starts_with("Failed|").then_some(out)
    });
    assert_eq!(
        rejected,
        "Failed|NodeShutdown|Pod was rejected: Pod was rejected as the node is shutting down."
    );

    // The shutdown is cancelled: the lock is taken again and the node is Ready.
    rt.block_on(announce(&logind, false));
    wait_for("the lock taken again", Duration::from_secs(30), || {
        let mut l = locks.lock().unwrap();
        (l.len() == 2 && !l[1].released()).then_some(())
    });
    wait_for("the node Ready again", Duration::from_secs(30), || {
        (s.kube_ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]) == "True")
            .then_some(())
    });
}
