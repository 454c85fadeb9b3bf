//! `make bench-api`: the API server of `krab server --disable-agent` (release build) over
//! HTTPS with the admin kubeconfig, through the `kube` client. Prints a table: creates/s and
//! p50/p99 latency of 1 KiB ConfigMaps with 16 clients, LIST latency of 10k pods, 100
//! watchers all receiving every event, and server RSS idle and with 10k pods.
//! Env: BENCH_PODS (10000), BENCH_CREATES (4000), KRAB_BIN.
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, make_namespace, percentile, start};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::Client;

/// `total` creates from 16 clients; returns (creates/s, latencies sorted).
async fn creates(c: &Client, total: usize) -> anyhow::Result<(f64, Vec<Duration>)> {
    make_namespace(c, "bench-cm").await?;
    let value = "x".repeat(1024);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), "bench-cm");
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..total).step_by(16) {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("cm-{i}")),
                        ..Default::default()
                    },
                    data: Some([("v".to_string(), value.clone())].into()),
                    ..Default::default()
                };
                let t = Instant::now();
                api.create(&PostParams::default(), &cm).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    all.sort();
    Ok((rate, all))
}

async fn create_pods(c: &Client, total: usize) -> anyhow::Result<()> {
    make_namespace(c, "bench-pods").await?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "3600"]}]},
    }))?;
    let pod = Arc::new(pod);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let api: Api<Pod> = Api::namespaced(c.clone(), "bench-pods");
        let pod = pod.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(16) {
                let mut p = (*pod).clone();
                p.metadata.name = Some(format!("pod-{i}"));
                api.create(&PostParams::default(), &p).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// LIST of every pod, `runs` times; latencies sorted.
async fn lists(c: &Client, runs: usize, expect: usize) -> anyhow::Result<Vec<Duration>> {
    let api: Api<Pod> = Api::namespaced(c.clone(), "bench-pods");
    let mut lat = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let l = api.list(&ListParams::default()).await?;
        lat.push(t.elapsed());
        anyhow::ensure!(l.items.len() == expect, "listed {} pods", l.items.len());
    }
    lat.sort();
    Ok(lat)
}

/// 100 watchers on a namespace, `events` creates; time until every watcher saw every one.
async fn watchers(c: &Client, events: usize) -> anyhow::Result<Duration> {
    make_namespace(c, "bench-watch").await?;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "bench-watch");
    let rv = api
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let api = api.clone();
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default().timeout(290), &rv)
                .await?
                .boxed();
            let mut seen = 0;
            while seen < events {
                match stream.try_next().await? {
                    Some(WatchEvent::Added(_)) => seen += 1,
                    Some(_) => {}
                    None => anyhow::bail!("watch ended after {seen} events"),
                }
            }
            anyhow::Ok(Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    for i in 0..events {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("w-{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &cm).await?;
    }
    let mut last = started;
    for t in tasks {
        last = last.max(t.await??);
    }
    Ok(last - started)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let bin = std::env::var("KRAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/release/krab"));
    let pods: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let total: usize = std::env::var("BENCH_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let dir = tempfile::tempdir()?;
    // The whole server as users run it without an agent, loops included.
    let server = start(&bin, dir.path(), false, &[])?;
    let c = client(&server).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = server.rss_mib();
    let (rate, lat) = creates(&c, total).await?;
    let watch = watchers(&c, 1000).await?;
    drop(server);
    // 10k pending pods with no scheduler (it would write 10k Unschedulable conditions).
    let dir2 = tempfile::tempdir()?;
    let server = start(&bin, dir2.path(), false, &["--disable-scheduler"])?;
    let c = client(&server).await?;
    let t = Instant::now();
    create_pods(&c, pods).await?;
    let pod_rate = pods as f64 / t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_creates = server.rss_mib();
    let list = lists(&c, 10, pods).await?;
    let with_pods = server.rss_mib();
    println!("| measure | krab | goal |");
    println!("| --- | --- | --- |");
    println!("| ConfigMap creates/s, 16 clients, 1 KiB ({total}) | {rate:.0} | ≥ 2,000 |");
    println!(
        "| create latency p50 / p99 | {:.1} / {:.1} ms | p99 < 50 ms |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!("| pod creates/s, 16 clients ({pods}) | {pod_rate:.0} | |");
    println!(
        "| LIST {pods} pods p50 / max (10 runs) | {:.0} / {:.0} ms | < 100 ms |",
        percentile(&list, 0.5),
        percentile(&list, 1.0)
    );
    println!(
        "| 100 watchers × 1,000 events, all delivered | {:.2} s ({:.0} events/s) | |",
        watch.as_secs_f64(),
        100_000.0 / watch.as_secs_f64()
    );
    println!("| RSS idle (--disable-agent) | {idle:.1} MiB | < 40 MB |");
    println!("| RSS with {pods} pods, before / after the LISTs | {after_creates:.1} / {with_pods:.1} MiB | |");
    Ok(())
}
