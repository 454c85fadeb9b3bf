//! `make bench-net`: the service proxy's rule programming and the data path it builds, in a
//! network namespace of its own (nothing on the host is touched).
//!
//! 1. Sync latency: 1,000 and 5,000 Services of 10 endpoints each are programmed (one full
//!    sync), then one EndpointSlice at a time changes (an endpoint replaced) and the time from
//!    the change reaching the proxy to the kernel acknowledging the batch is measured (p50/p99),
//!    with the rule count and the process's RSS holding that state.
//! 2. Throughput: a TCP sink in a second namespace (a "pod" behind a veth pair; tokio, with a
//!    deep accept queue so the sink is never what limits), reached directly and through a
//!    ClusterIP, by a Rust load generator: bulk MB/s over 4 connections, and new connections
//!    per second (each one a NAT decision). Direct and ClusterIP alternate for 5 rounds and
//!    the medians are reported (one round alone swings by several percent on 2 cores).
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use krab::agent::service_proxy::{ProxyConfig, ServiceProxy};
use kube::runtime::watcher::Event;

mod common;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("{args:?}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("{args:?}: {e}"),
    }
}

/// Moves this thread (and what it spawns from now on) into a named network namespace.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns");
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

fn service(i: usize) -> Service {
    let ip = format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .expect("service")
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = (0..10)
        .map(|e| {
            let n = (i * 10 + e + generation) % 60000;
            serde_json::json!({"addresses": [format!("10.42.{}.{}", n / 250, 1 + n % 250)], "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}-x"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("slice")
}

fn config() -> ProxyConfig {
    ProxyConfig {
        cluster_cidrs: vec!["10.42.0.0/16".parse().expect("cidr")],
        service_cidrs: vec!["10.43.0.0/16".parse().expect("cidr")],
        cluster_dns: None,
        node_name: None,
    }
}

struct SyncRow {
    services: usize,
    full_ms: f64,
    p50: f64,
    p99: f64,
    rules: usize,
    rss: f64,
}

fn sync_bench(services: usize, changes: usize) -> SyncRow {
    let mut proxy = ServiceProxy::new(config());
    for e in [Event::Init, Event::InitDone] {
        proxy.on_service(e);
    }
    for e in [Event::Init, Event::InitDone] {
        proxy.on_slice(e);
    }
    for i in 0..services {
        proxy.on_service(Event::Apply(service(i)));
        proxy.on_slice(Event::Apply(slice(i, 0)));
    }
    let started = Instant::now();
    proxy.full_sync().expect("full sync");
    let full_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut times = Vec::with_capacity(changes);
    for c in 0..changes {
        let i = (c * 7919) % services;
        let t = Instant::now();
        let keys = proxy.on_slice(Event::Apply(slice(i, c + 1)));
        proxy
            .sync(&keys.into_iter().collect())
            .expect("incremental sync");
        times.push(t.elapsed());
    }
    times.sort();
    // What a transaction costs that changes nothing of the services (the table's own
    // commit work), for comparison.
    let mut empty = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        proxy.sync(&Default::default()).expect("no-op sync");
        let mut tx =
            krab::agent::service_proxy::nft::Tx::new(krab::agent::service_proxy::rules::Family::V4);
        tx.add_table();
        krab::agent::service_proxy::nft::send(&tx.finalize()).expect("empty batch");
        empty.push(t.elapsed());
    }
    empty.sort();
    eprintln!(
        "{services} services: an empty batch takes p50 {:.2} ms",
        common::percentile(&empty, 0.5)
    );
    SyncRow {
        services,
        full_ms,
        p50: common::percentile(&times, 0.50),
        p99: common::percentile(&times, 0.99),
        rules: proxy.rule_count(),
        rss: common::rss_mib(std::process::id()),
    }
}

/// Bytes per second over `conns` connections for `secs`.
fn bulk(to: SocketAddr, conns: usize, secs: u64) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(to).expect("connect");
                let buf = vec![0u8; 64 * 1024];
                let mut sent = 0u64;
                while Instant::now() < stop {
                    match s.write(&buf) {
                        Ok(n) => sent += n as u64,
                        Err(_) => break,
                    }
                }
                sent
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / secs as f64
}

/// New connections per second (connect, one byte, close) for `secs`, from 2 threads.
fn connects(to: SocketAddr, secs: u64) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < stop {
                    if let Ok(mut s) = TcpStream::connect(to) {
                        let _ = s.write_all(b"x");
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / secs as f64
}

fn main() {
    let id = std::process::id();
    let node = format!("krab-bench-node-{id}");
    let pod = format!("krab-bench-pod-{id}");
    sh(&["ip", "netns", "add", &node]);
    sh(&["ip", "netns", "add", &pod]);
    let cleanup = || {
        let _ = Command::new("ip").args(["netns", "delete", &node]).status();
        let _ = Command::new("ip").args(["netns", "delete", &pod]).status();
    };
    let result = std::panic::catch_unwind(|| run(&node, &pod));
    cleanup();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(node: &str, pod: &str) {
    // The "node" side and a "pod" behind a veth pair, as the bridge CNI would wire it.
    let veth = format!("kb{}", std::process::id() % 100000);
    sh(&[
        "ip", "link", "add", &veth, "netns", node, "type", "veth", "peer", "name", "eth0", "netns",
        pod,
    ]);
    sh(&[
        "ip",
        "-n",
        node,
        "addr",
        "add",
        "10.42.0.1/24",
        "dev",
        &veth,
    ]);
    sh(&["ip", "-n", node, "link", "set", &veth, "up"]);
    sh(&["ip", "-n", node, "link", "set", "lo", "up"]);
    // Service addresses route like any off-node address (here: towards the pod side).
    sh(&["ip", "-n", node, "route", "add", "default", "dev", &veth]);
    sh(&[
        "ip",
        "-n",
        pod,
        "addr",
        "add",
        "10.42.0.2/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", pod, "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "-n",
        pod,
        "route",
        "add",
        "default",
        "via",
        "10.42.0.1",
    ]);

    // The sink, in the pod namespace: reads and drops. (std's listener has a backlog of 128;
    // with the load generator on the same two cores, a late accept overflowed it and a SYN
    // retransmitted a second later, which is what the connection rate then measured.)
    let pod_ns = pod.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&pod_ns);
        // Built here, so its worker threads start in the pod namespace.
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_io()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use tokio::io::AsyncReadExt;
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.set_reuseaddr(true).expect("reuseaddr");
            sock.bind("10.42.0.2:8080".parse().expect("addr"))
                .expect("bind sink");
            let l = sock.listen(4096).expect("listen");
            let _ = ready_tx.send(());
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    enter(node);

    println!("## Service rule programming (one namespace, nothing else in it)\n");
    println!("| services × endpoints | full sync | change → in kernel p50 | p99 | rules | RSS (proxy state) |");
    println!("|---|---|---|---|---|---|");
    let mut rows = BTreeMap::new();
    for n in [1000, 5000] {
        let r = sync_bench(n, 200);
        println!(
            "| {} × 10 | {:.0} ms | {:.2} ms | {:.2} ms | {} | {:.1} MiB |",
            r.services, r.full_ms, r.p50, r.p99, r.rules, r.rss
        );
        rows.insert(n, r);
    }

    // The data path: one Service in front of the sink.
    let mut proxy = ServiceProxy::new(config());
    for e in [Event::Init, Event::InitDone] {
        proxy.on_service(e);
    }
    for e in [Event::Init, Event::InitDone] {
        proxy.on_slice(e);
    }
    proxy.on_service(Event::Apply(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sink", "namespace": "bench"},
            "spec": {"clusterIP": "10.43.0.100", "ports": [{"name": "tcp", "port": 80, "protocol": "TCP"}]}
        }))
        .expect("service"),
    ));
    proxy.on_slice(Event::Apply(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sink-x", "namespace": "bench", "labels": {"kubernetes.io/service-name": "sink"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.42.0.2"], "conditions": {"ready": true}}]
        }))
        .expect("slice"),
    ));
    proxy.on_node(Event::Init);
    proxy.on_node(Event::InitApply(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bench"}, "spec": {"podCIDR": "10.42.0.0/24"}
        }))
        .expect("node"),
    ));
    proxy.on_node(Event::InitDone);
    proxy.full_sync().expect("sync");
    let direct: SocketAddr = "10.42.0.2:8080".parse().expect("addr");
    let cluster_ip: SocketAddr = "10.43.0.100:80".parse().expect("addr");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut db, mut cb, mut dc, mut cc) = (vec![], vec![], vec![], vec![]);
    for _ in 0..5 {
        db.push(bulk(direct, 4, 2));
        cb.push(bulk(cluster_ip, 4, 2));
        dc.push(connects(direct, 1));
        cc.push(connects(cluster_ip, 1));
    }
    let (d_bulk, c_bulk, d_conn, c_conn) = (median(db), median(cb), median(dc), median(cc));
    println!("\n## Through a ClusterIP vs. the pod IP directly (veth, same machine)\n");
    println!("| path (median of 5 alternating rounds) | bulk, 4 connections | new connections/s |");
    println!("|---|---|---|");
    println!(
        "| pod IP directly | {:.0} MB/s | {:.0} |",
        d_bulk / 1e6,
        d_conn
    );
    println!(
        "| ClusterIP (DNAT) | {:.0} MB/s ({:+.1}%) | {:.0} ({:+.1}%) |",
        c_bulk / 1e6,
        (c_bulk / d_bulk - 1.0) * 100.0,
        c_conn,
        (c_conn / d_conn - 1.0) * 100.0
    );
    let _ = rows;
}
