//! The `Datastore` interface behaves the same on the embedded store and on a real etcd
//! (Debian's etcd-server, started by the test): the path for users who outgrow the embedded one.
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krab::store::datastore::Datastore;
use krab::store::external::{ExternalConfig, ExternalEtcd};
use krab::store::raft::transport::NoPeers;
use krab::store::types::*;
use krab::store::watch::{WatchMessage, WatchSpec};
use krab::store::{Error, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use crate::support::free_port;

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd() -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--name", "t", "--log-level", "error", "--logger", "zap"])
        .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=t=http://127.0.0.1:{peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd-server is installed (make deps-test)");
    Etcd {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

async fn external(etcd: &Etcd) -> Datastore {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cfg = ExternalConfig {
            endpoints: vec![etcd.endpoint.clone()],
            ..Default::default()
        };
        if let Ok(e) = ExternalEtcd::connect(&cfg).await {
            let d = Datastore::External(Box::new(e));
            if d.range(get("probe")).await.is_ok() {
                return d;
            }
        }
        assert!(Instant::now() < deadline, "etcd did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn embedded(dir: &std::path::Path) -> Datastore {
    let mut cfg = StoreConfig::new(dir.to_path_buf());
    cfg.tick = Duration::from_millis(20);
    Datastore::Embedded(Store::open(cfg, Arc::new(NoPeers)).unwrap())
}

fn get(k: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        ..Default::default()
    }
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

/// The behaviour kube-apiserver builds on, checked identically on both backends.
async fn behaves_like_etcd(d: Datastore) {
    let r1 = d
        .put(put("/registry/configmaps/default/a", "1"))
        .await
        .unwrap();
    let base = r1.revision;
    // Optimistic concurrency: update only if unchanged since our read.
    let update = |rev: i64, v: &str| TxnRequest {
        compare: vec![Compare {
            key: "/registry/configmaps/default/a".into(),
            range_end: vec![],
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(rev),
        }],
        success: vec![TxnOp::Put(put("/registry/configmaps/default/a", v))],
        failure: vec![TxnOp::Range(get("/registry/configmaps/default/a"))],
    };
    let ok = d.txn(update(base, "2")).await.unwrap();
    assert!(ok.succeeded);
    assert_eq!(ok.revision, base + 1);
    let conflict = d.txn(update(base, "3")).await.unwrap();
    assert!(!conflict.succeeded);
    // Pagination on a consistent revision.
    for i in 0..5 {
        d.put(put(&format!("/registry/pods/ns/p{i}"), "x"))
            .await
            .unwrap();
    }
    let page = d
        .range(RangeRequest {
            key: "/registry/pods/".into(),
            range_end: prefix_end(b"/registry/pods/"),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((page.kvs.len(), page.count, page.more), (2, 5, true));
    let at = page.revision;
    d.put(put("/registry/pods/ns/p9", "late")).await.unwrap();
    let rest = d
        .range(RangeRequest {
            key: [page.kvs[1].key.clone(), vec![0]].concat(),
            range_end: prefix_end(b"/registry/pods/"),
            revision: at,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rest.kvs.len(),
        3,
        "a later page at the first page's revision"
    );
    // Watch from a revision replays, then follows.
    let cancel = CancellationToken::new();
    let mut w = d.watch(
        WatchSpec {
            key: "/registry/pods/".into(),
            range_end: prefix_end(b"/registry/pods/"),
            start_revision: at + 1,
            prev_kv: true,
            ..Default::default()
        },
        cancel.clone(),
    );
    d.delete(DeleteRequest {
        key: "/registry/pods/ns/p0".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), w.recv()).await {
            Ok(Some(WatchMessage::Events { events, .. })) => seen.extend(events),
            other => panic!("watch: {other:?}"),
        }
    }
    assert_eq!(seen[0].kv.key, b"/registry/pods/ns/p9");
    assert_eq!(seen[1].kind, EventKind::Delete);
    assert_eq!(seen[1].prev_kv.as_ref().unwrap().value, b"x");
    cancel.cancel();
    // Compaction: reads below it fail with Compacted.
    let now = d.range(get("x")).await.unwrap().revision;
    d.compact(now).await.unwrap();
    let old = d
        .range(RangeRequest {
            revision: base,
            ..get("/registry/configmaps/default/a")
        })
        .await;
    assert!(matches!(old, Err(Error::Compacted { .. })), "{old:?}");
    // Leases.
    let (id, ttl) = d.lease_grant(0, 30).await.unwrap();
    assert_eq!(ttl, 30);
    d.put(PutRequest {
        lease: id,
        ..put("/registry/leases/l", "x")
    })
    .await
    .unwrap();
    assert_eq!(d.lease_keep_alive(id).await.unwrap(), 30);
    let info = d.lease_time_to_live(id, true).await.unwrap();
    assert_eq!(info.keys, vec![b"/registry/leases/l".to_vec()]);
    d.lease_revoke(id).await.unwrap();
    assert!(d
        .range(get("/registry/leases/l"))
        .await
        .unwrap()
        .kvs
        .is_empty());
    assert!(matches!(
        d.put(PutRequest {
            lease: 777,
            ..put("k", "v")
        })
        .await,
        Err(Error::LeaseNotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_behaves_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    behaves_like_etcd(embedded(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_etcd_serves_the_same_interface() {
    let etcd = start_etcd();
    behaves_like_etcd(external(&etcd).await).await;
}

#[test]
fn krab_server_runs_on_an_external_etcd_and_names_a_bad_endpoint() {
    use crate::support::run_bounded;
    let etcd = start_etcd();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(external(&etcd));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_krab"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--disable-agent",
            "--data-dir",
        ])
        .arg(dir.path().join("d"))
        .arg("--datastore-endpoint")
        .arg(&etcd.endpoint)
        .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
        .arg(free_port().to_string())
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("datastore ready (external etcd)")
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // No embedded store was created.
    assert!(!dir.path().join("d/server/db").exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_krab"));
    cmd.args([
        "server",
        "--config",
        "/dev/null",
        "--disable-agent",
        "--data-dir",
    ])
    .arg(dir.path().join("e"))
    .arg("--datastore-endpoint")
    .arg(format!("http://127.0.0.1:{port}"))
    .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
    .arg(free_port().to_string())
    .arg("--write-kubeconfig")
    .arg(dir.path().join("kubeconfig2"));
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--datastore-endpoint"), "{err}");
}
