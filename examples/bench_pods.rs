//! `make bench-pods`: pod startup on the agent inside `krab server` (release build) with
//! the real containerd, runc and CNI plugins. Prints a table: create-to-Running latency p50
//! and p99 over BENCH_PODS pods (100) created 10 at a time with the image present (busybox
//! from busybox-static, imported from an OCI archive), and memory: `krab server` with its
//! agent and containerd, idle and with pods; then a standalone `krab agent` joined to a
//! server without one, idle and with 30 pods. Env: BENCH_PODS, KRAB_BIN. Needs root.
#[path = "../tests/it/busybox_image.rs"]
mod busybox_image;
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::Client;

use common::{client, make_namespace, percentile, rss_mib, start};

const NS: &str = "bench-pods";
const BATCH: usize = 10;

/// containerd started by the server: its child named containerd.
fn containerd_pid(server: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...
        let (comm, rest) = stat.split_once(") ")?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == server && comm.ends_with("(containerd")).then_some(pid)
    })
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Records when each pod of the namespace is first seen Ready.
fn watch_ready(
    c: &Client,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(c.clone(), NS);
    tokio::spawn(async move {
        let Ok(stream) = api.watch(&WatchParams::default().timeout(290), "0").await else {
            return;
        };
        let mut stream = stream.boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                if ready(&p) {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if let Ok(mut s) = seen.lock() {
                        s.entry(name).or_insert_with(Instant::now);
                    }
                }
            }
        }
    })
}

fn pod(i: usize) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("p-{i}"), "labels": {"app": "bench"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": busybox_image::BUSYBOX, "command": ["sleep", "3600"]}],
        },
    }))?)
}

/// Waits for a Ready node with a podCIDR, then makes the bench namespace and waits for its
/// default service account.
async fn prepare(c: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(c.clone());
    wait_until("a Ready node", Duration::from_secs(60), || async {
        nodes.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.iter().any(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    && n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some()
            })
        })
    })
    .await?;
    make_namespace(c, NS).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), NS);
    wait_until(
        "the default service account",
        Duration::from_secs(30),
        || async { sas.get_opt("default").await.ok().flatten().is_some() },
    )
    .await
}

/// Creates `total` pods, BATCH at a time, each batch waited for; returns the create → Ready
/// latencies (sorted), the elapsed time, and `sample` called once 30 pods run.
async fn run_pods(
    c: &Client,
    total: usize,
    mut sample: impl FnMut(),
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let watcher = watch_ready(c, seen.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let mut created: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    for batch in 0..total.div_ceil(BATCH) {
        let range = batch * BATCH..((batch + 1) * BATCH).min(total);
        let mut posts = Vec::new();
        for i in range.clone() {
            let pods = pods.clone();
            let p = pod(i)?;
            posts.push(async move {
                let t = Instant::now();
                pods.create(&PostParams::default(), &p)
                    .await
                    .map(|_| (i, t))
            });
        }
        for r in futures::future::join_all(posts).await {
            let (i, t) = r?;
            created.insert(format!("p-{i}"), t);
        }
        let names: Vec<String> = range.map(|i| format!("p-{i}")).collect();
        wait_until("a batch to run", Duration::from_secs(120), || async {
            seen.lock()
                .map(|s| names.iter().all(|n| s.contains_key(n)))
                .unwrap_or(false)
        })
        .await?;
        if (batch + 1) * BATCH == 30 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sample();
        }
    }
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = {
        let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        created
            .iter()
            .filter_map(|(n, t)| s.get(n).map(|r| r.duration_since(*t)))
            .collect()
    };
    latencies.sort();
    watcher.abort();
    Ok((latencies, elapsed))
}

/// Deletes the bench pods and waits (bounded) until the agent has removed them.
async fn remove_pods(c: &Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let _ = wait_until("the pods to go", Duration::from_secs(180), || async {
        pods.list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    Ok(())
}

/// `krab agent` joined to a server without its own agent.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling the child this process started and still owns.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let bin = std::env::var("KRAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/release/krab"));
    let total: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);

    // 1. `krab server` with its agent.
    let dir = tempfile::tempdir()?;
    busybox_image::write_busybox_image(&dir.path().join("data/agent/images"));
    let mut server = start(&bin, dir.path(), true, &[])?;
    let c = client(&server).await?;
    prepare(&c).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let server_pid = server.child.id();
    let containerd = containerd_pid(server_pid).unwrap_or(0);
    let idle = (rss_mib(server_pid), rss_mib(containerd));
    let mut at30 = (0.0, 0.0);
    let (latencies, elapsed) = run_pods(&c, total, || {
        at30 = (rss_mib(server_pid), rss_mib(containerd));
    })
    .await?;
    let with_all = (rss_mib(server_pid), rss_mib(containerd));
    remove_pods(&c).await?;
    server.stop();

    // 2. A standalone `krab agent` joined to a server without one.
    let dir2 = tempfile::tempdir()?;
    let agent_data = dir2.path().join("agent");
    busybox_image::write_busybox_image(&agent_data.join("agent/images"));
    let mut server2 = start(&bin, dir2.path(), false, &[])?;
    let c2 = client(&server2).await?;
    let token = std::fs::read_to_string(dir2.path().join("data/server/node-token"))?;
    let agent = Agent(
        std::process::Command::new(&bin)
            .args([
                "agent",
                "--config",
                "/dev/null",
                "--node-name",
                "bench-agent",
            ])
            .args(["--disable-kube-proxy", "--disable-network-policy"])
            .args(["--node-ip", "127.0.0.1", "--kubelet-port"])
            .arg(common::free_port().to_string())
            .arg("--data-dir")
            .arg(&agent_data)
            .arg("--server")
            .arg(format!("https://127.0.0.1:{}", server2.port))
            .arg("--token")
            .arg(token.trim())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    prepare(&c2).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let agent_pid = agent.0.id();
    let agent_containerd = containerd_pid(agent_pid).unwrap_or(0);
    let agent_idle = (rss_mib(agent_pid), rss_mib(agent_containerd));
    run_pods(&c2, 30, || {}).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent_30 = (rss_mib(agent_pid), rss_mib(agent_containerd));
    remove_pods(&c2).await?;
    drop(agent);
    server2.stop();

    println!("| measure | krab | goal |");
    println!("| --- | --- | --- |");
    println!(
        "| pod startup, create → Ready, p50 / p99 ({} pods, {BATCH} at a time) | {:.0} / {:.0} ms | p50 < 500 ms, p99 < 1.5 s |",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "| throughput | {:.1} pods/s | |",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| `krab server` + agent RSS, idle / 30 pods / {total} pods | {:.1} / {:.1} / {:.1} MiB | idle < 64 MB |",
        idle.0, at30.0, with_all.0
    );
    println!(
        "| containerd RSS (child of krab), idle / 30 pods / {total} pods | {:.1} / {:.1} / {:.1} MiB | |",
        idle.1, at30.1, with_all.1
    );
    println!(
        "| `krab agent` RSS (joined, own process), idle / 30 pods | {:.1} / {:.1} MiB | idle < 20 MB |",
        agent_idle.0, agent_30.0
    );
    println!(
        "| its containerd RSS, idle / 30 pods | {:.1} / {:.1} MiB | |",
        agent_idle.1, agent_30.1
    );
    Ok(())
}
