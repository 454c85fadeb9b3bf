//! `make bench-scheduler`: the scheduler and controllers of `krab server --disable-agent`
//! (release build) against simulated nodes (Node objects, no kubelets; the node lifecycle
//! controller is off, as in kube's scheduler_perf). Prints a table: one 100-replica
//! Deployment from create to all pods bound; then 3,000 pods from 30 Deployments — pods
//! bound per second, Deployment create to all bound, p50/p99 latency of API calls made
//! meanwhile by another client; server RSS at the end. kube-scheduler's published
//! scheduler_perf threshold stands beside the throughput.
//! Env: BENCH_NODES (100), BENCH_PODS (3000), KRAB_BIN.
mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, make_namespace, percentile, start};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;

async fn make_nodes(c: &Client, n: usize) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(c.clone());
    for i in 0..n {
        let name = format!("node-{i:03}");
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
        }))?;
        api.create(&PostParams::default(), &node).await?;
        let status = serde_json::json!({"status": {
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated"}]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(())
}

fn deployment(name: &str, replicas: usize) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
            }
        }
    }))?)
}

/// Watches every pod and notes when each is first seen bound; returns the shared log.
fn watch_bindings(c: &Client) -> (Arc<Mutex<Vec<Instant>>>, tokio::task::JoinHandle<()>) {
    let bound = Arc::new(Mutex::new(Vec::new()));
    let log = bound.clone();
    let api: Api<Pod> = Api::all(c.clone());
    let task = tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::new();
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(e) = stream.next().await {
            let pods = match e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            for p in pods {
                let placed = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if placed && seen.insert(uid) {
                    if let Ok(mut b) = log.lock() {
                        b.push(Instant::now());
                    }
                }
            }
        }
    });
    (bound, task)
}

async fn wait_bound(
    log: &Mutex<Vec<Instant>>,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(b) = log.lock() {
            if b.len() >= n {
                return Ok(b[n - 1]);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods not all bound within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Another client's API calls while the run goes on: a GET and a ConfigMap create every
/// 20 ms, latencies sorted.
fn probe(
    c: &Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    let c = c.clone();
    tokio::spawn(async move {
        let nodes: Api<Node> = Api::all(c.clone());
        let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
        let mut lat = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            let _ = nodes.get("node-000").await;
            lat.push(t.elapsed());
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(format!("probe-{i}")),
                    ..Default::default()
                },
                ..Default::default()
            };
            let t = Instant::now();
            let _ = cms.create(&PostParams::default(), &cm).await;
            lat.push(t.elapsed());
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lat.sort();
        lat
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let bin = std::env::var("KRAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/release/krab"));
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (node_count, pods) = (env("BENCH_NODES", 100), env("BENCH_PODS", 3000));
    let dir = tempfile::tempdir()?;
    let extra: Vec<String> = std::env::var("BENCH_SERVER_ARGS")
        .map(|a| a.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut args: Vec<&str> = vec!["--disable-controller", "nodelifecycle"];
    args.extend(extra.iter().map(String::as_str));
    let server = start(&bin, dir.path(), false, &args)?;
    let c = client(&server).await?;
    make_nodes(&c, node_count).await?;
    let (bound, watch) = watch_bindings(&c);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One Deployment of 100.
    make_namespace(&c, "bench-one").await?;
    let api: Api<Deployment> = Api::namespaced(c.clone(), "bench-one");
    let t0 = Instant::now();
    api.create(&PostParams::default(), &deployment("one", 100)?)
        .await?;
    let last = wait_bound(&bound, 100, Duration::from_secs(120)).await?;
    let one = last - t0;

    // 3,000 pods from 30 Deployments, created at once, while another client probes.
    make_namespace(&c, "bench-many").await?;
    let api: Api<Deployment> = Api::namespaced(c.clone(), "bench-many");
    let per = 100;
    let deployments = pods.div_ceil(per);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probing = probe(&c, stop.clone());
    let t0 = Instant::now();
    for d in 0..deployments {
        api.create(
            &PostParams::default(),
            &deployment(&format!("many-{d:02}"), per.min(pods - d * per))?,
        )
        .await?;
    }
    let last = wait_bound(&bound, 100 + pods, Duration::from_secs(600)).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = probing.await?;
    let all = last - t0;
    let first = bound.lock().map(|b| b[100]).unwrap_or(t0);
    let binding_window = (last - first).as_secs_f64().max(1e-9);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = server.rss_mib();
    if std::env::var("BENCH_RSS_TRACE").is_ok() {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            eprintln!("rss later: {:.1} MiB", server.rss_mib());
        }
    }
    watch.abort();

    println!("| measure ({node_count} simulated nodes) | krab | goal |");
    println!("| --- | --- | --- |");
    println!(
        "| 100-replica Deployment: create → all bound | {:.0} ms | < 1 s |",
        one.as_secs_f64() * 1000.0
    );
    println!(
        "| {pods} pods ({deployments} Deployments): pods bound/s | {:.0} | ≥ 300 |",
        pods as f64 / binding_window
    );
    println!(
        "| {pods} pods: Deployments created → all bound | {:.2} s | |",
        all.as_secs_f64()
    );
    println!(
        "| API latency meanwhile (GET node, create ConfigMap) p50 / p99 | {:.1} / {:.1} ms | |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "| server RSS with {} pods | {rss:.1} MiB | < 150 MB |",
        pods + 100
    );
    println!("| kube-scheduler, scheduler_perf SchedulingBasic 5000Nodes_10000Pods (v1.32 CI threshold) | 270 pods/s | |");
    Ok(())
}
