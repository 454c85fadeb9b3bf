//! The service proxy never breaks an established connection: a TCP connection through a
//! ClusterIP keeps working while the Service's endpoints change (even the one it uses goes
//! from the slice) and while the whole table is rebuilt, and new connections follow the new
//! endpoints. Real kernel, real nftables, in network namespaces of the test's own (a "node"
//! and a "pod" behind a veth pair); the proxy is driven through its library API.
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use krab::agent::service_proxy::{ProxyConfig, ServiceProxy};
use kube::runtime::watcher::Event;

use crate::support::run_bounded;

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Moves the calling thread into a named network namespace.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid namespace fd; it affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// The namespaces of one test, removed when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

fn slice(addresses: &[&str]) -> Event<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    Event::Apply(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "echo-x", "namespace": "t", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap(),
    )
}

/// One line out, one line back (`<endpoint address> <line>`).
fn round_trip(conn: &mut BufReader<TcpStream>, line: &str) -> String {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut back = String::new();
    conn.read_line(&mut back).unwrap();
    back.trim().to_string()
}

#[test]
fn established_connections_survive_endpoint_changes_and_a_full_rebuild() {
    let tag = std::process::id() % 100000;
    let (node, pod) = (format!("kpu{tag}n"), format!("kpu{tag}p"));
    let _ns = Namespaces(vec![node.clone(), pod.clone()]);
    ip(&["netns", "add", &node]);
    ip(&["netns", "add", &pod]);
    let veth = format!("kpu{tag}");
    ip(&[
        "link", "add", &veth, "netns", &node, "type", "veth", "peer", "name", "eth0", "netns", &pod,
    ]);
    ip(&["-n", &node, "addr", "add", "10.42.0.1/24", "dev", &veth]);
    ip(&["-n", &node, "link", "set", &veth, "up"]);
    ip(&["-n", &node, "link", "set", "lo", "up"]);
    // Service addresses route like any off-node address (towards the pod side).
    ip(&["-n", &node, "route", "add", "default", "dev", &veth]);
    for a in ["10.42.0.2/24", "10.42.0.3/24"] {
        ip(&["-n", &pod, "addr", "add", a, "dev", "eth0"]);
    }
    ip(&["-n", &pod, "link", "set", "eth0", "up"]);
    ip(&["-n", &pod, "route", "add", "default", "via", "10.42.0.1"]);

    // Two echo endpoints in the pod namespace, each naming itself in its answers.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let pod_ns = pod.clone();
    std::thread::spawn(move || {
        enter(&pod_ns);
        for addr in ["10.42.0.2:8080", "10.42.0.3:8080"] {
            let l = TcpListener::bind(addr).unwrap();
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    std::thread::spawn(move || {
                        let me = s
                            .local_addr()
                            .map(|a| a.ip().to_string())
                            .unwrap_or_default();
                        let mut out = s.try_clone().unwrap();
                        for line in BufReader::new(s).lines().map_while(Result::ok) {
                            if out.write_all(format!("{me} {line}\n").as_bytes()).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
        let _ = ready_tx.send(());
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The proxy and the client, in the node namespace.
    let node_ns = node.clone();
    let result = std::thread::spawn(move || {
        enter(&node_ns);
        let mut proxy = ServiceProxy::new(ProxyConfig {
            cluster_cidrs: vec!["10.42.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.43.0.0/16".parse().unwrap()],
            cluster_dns: None,
            node_name: None,
        });
        for e in [Event::Init, Event::InitDone] {
            proxy.on_service(e);
        }
        for e in [Event::Init, Event::InitDone] {
            proxy.on_slice(e);
        }
        proxy.on_node(Event::Init);
        proxy.on_node(Event::InitApply(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n"}, "spec": {"podCIDR": "10.42.0.0/24"}
            }))
            .unwrap(),
        ));
        proxy.on_node(Event::InitDone);
        proxy.on_service(Event::Apply(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "echo", "namespace": "t"},
                "spec": {"clusterIP": "10.43.0.100", "ports": [{"name": "tcp", "port": 80, "protocol": "TCP"}]}
            }))
            .unwrap(),
        ));
        proxy.on_slice(slice(&["10.42.0.2"]));
        proxy.full_sync().unwrap();

        let connect = || {
            let s = TcpStream::connect_timeout(
                &"10.43.0.100:80".parse().unwrap(),
                Duration::from_secs(5),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            BufReader::new(s)
        };
        let mut old = connect();
        assert_eq!(round_trip(&mut old, "a"), "10.42.0.2 a");

        // The endpoint in use leaves the slice, another comes: one incremental batch.
        let keys = proxy.on_slice(slice(&["10.42.0.3"]));
        let report = proxy.sync(&keys.into_iter().collect()).unwrap();
        assert_eq!(report.services, 1);
        assert_eq!(round_trip(&mut old, "b"), "10.42.0.2 b");
        let mut new = connect();
        assert_eq!(round_trip(&mut new, "c"), "10.42.0.3 c");

        // The whole table deleted and made again in one transaction.
        proxy.full_sync().unwrap();
        assert_eq!(round_trip(&mut old, "d"), "10.42.0.2 d");
        assert_eq!(round_trip(&mut new, "e"), "10.42.0.3 e");
    })
    .join();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
