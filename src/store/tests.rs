//! Store behaviour as etcd documents it, through the real Raft path on a one-member cluster.
use std::time::Duration;

use super::raft::transport::NoPeers;
use super::types::*;
use super::watch::{WatchMessage, WatchSpec};
use super::*;

pub(crate) fn test_config(dir: &Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir.to_path_buf());
    cfg.segment_bytes = 1 << 20;
    cfg.tick = Duration::from_millis(20);
    cfg
}

pub(crate) async fn open(dir: &Path) -> Store {
    Store::open(test_config(dir), Arc::new(NoPeers)).unwrap()
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix(p: &str) -> RangeRequest {
    RangeRequest {
        key: p.into(),
        range_end: prefix_end(p.as_bytes()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_new_store_starts_at_revision_1_and_each_put_bumps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    assert_eq!(s.current_revision(), 1);
    let r = s.put(put("a", "1")).await.unwrap();
    assert_eq!(r.revision, 2);
    let r = s.put(put("a", "2")).await.unwrap();
    assert_eq!(r.revision, 3);
    let got = s.range(get("a")).await.unwrap();
    assert_eq!(got.kvs.len(), 1);
    let kv = &got.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"2");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn reads_at_a_past_revision_see_the_past_and_compaction_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.put(put("k", "v1")).await.unwrap(); // 2
    s.put(put("k", "v2")).await.unwrap(); // 3
    s.delete(DeleteRequest {
        key: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap(); // 4
    let at = |rev| RangeRequest {
        revision: rev,
        ..get("k")
    };
    assert_eq!(s.range(at(2)).await.unwrap().kvs[0].value, b"v1");
    assert_eq!(s.range(at(3)).await.unwrap().kvs[0].value, b"v2");
    assert!(s.range(at(4)).await.unwrap().kvs.is_empty());
    assert!(matches!(
        s.range(at(9)).await,
        Err(Error::FutureRevision { current: 4 })
    ));
    s.compact(3).await.unwrap();
    assert!(matches!(
        s.range(at(2)).await,
        Err(Error::Compacted {
            compact_revision: 3
        })
    ));
    assert_eq!(s.range(at(3)).await.unwrap().kvs[0].value, b"v2");
    assert!(matches!(s.compact(3).await, Err(Error::Compacted { .. })));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn range_limit_count_sort_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    for (k, v) in [("p/b", "2"), ("p/a", "3"), ("p/c", "1"), ("q", "0")] {
        s.put(put(k, v)).await.unwrap();
    }
    let r = s
        .range(RangeRequest {
            limit: 2,
            ..prefix("p/")
        })
        .await
        .unwrap();
    assert_eq!(r.count, 3);
    assert!(r.more);
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"p/a".to_vec(), b"p/b".to_vec()]);
    let r = s
        .range(RangeRequest {
            sort_target: SortTarget::Value,
            sort_order: SortOrder::Descend,
            ..prefix("p/")
        })
        .await
        .unwrap();
    let vals: Vec<_> = r.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(vals, vec![b"3".to_vec(), b"2".to_vec(), b"1".to_vec()]);
    let r = s
        .range(RangeRequest {
            count_only: true,
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (4, 0));
    let r = s
        .range(RangeRequest {
            keys_only: true,
            ..get("q")
        })
        .await
        .unwrap();
    assert!(r.kvs[0].value.is_empty());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn txn_compares_choose_the_branch_like_kube_apiserver_updates() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let created = s.put(put("/registry/pods/ns/a", "v1")).await.unwrap();
    let update = |expected_rev| TxnRequest {
        compare: vec![Compare {
            key: "/registry/pods/ns/a".into(),
            range_end: vec![],
            result: CompareResult::Equal,
            target: CompareTarget::ModRevision(expected_rev),
        }],
        success: vec![TxnOp::Put(put("/registry/pods/ns/a", "v2"))],
        failure: vec![TxnOp::Range(get("/registry/pods/ns/a"))],
    };
    let ok = s.txn(update(created.revision)).await.unwrap();
    assert!(ok.succeeded);
    let stale = s.txn(update(created.revision)).await.unwrap();
    assert!(!stale.succeeded);
    assert_eq!(
        stale.revision, ok.revision,
        "a failed compare writes nothing"
    );
    match &stale.responses[0] {
        TxnOpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"v2"),
        other => panic!("unexpected {other:?}"),
    }
    // Create-if-absent: version 0 means the key does not exist.
    let create = TxnRequest {
        compare: vec![Compare {
            key: "new".into(),
            range_end: vec![],
            result: CompareResult::Equal,
            target: CompareTarget::Version(0),
        }],
        success: vec![TxnOp::Put(put("new", "x")), TxnOp::Range(get("new"))],
        failure: vec![],
    };
    let r = s.txn(create.clone()).await.unwrap();
    assert!(r.succeeded);
    match &r.responses[1] {
        TxnOpResponse::Range(rr) => assert_eq!(rr.kvs[0].value, b"x", "reads see earlier writes"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!s.txn(create).await.unwrap().succeeded);
    let dup = TxnRequest {
        success: vec![TxnOp::Put(put("d", "1")), TxnOp::Put(put("d", "2"))],
        ..Default::default()
    };
    assert!(matches!(s.txn(dup).await, Err(Error::DuplicateKey)));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_delete_that_deletes_nothing_does_not_bump_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.put(put("a", "1")).await.unwrap();
    let before = s.current_revision();
    let r = s
        .delete(DeleteRequest {
            key: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.deleted, r.revision), (0, before));
    let r = s
        .delete(DeleteRequest {
            key: "a".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.deleted, 1);
    assert_eq!(r.prev_kvs[0].value, b"1");
    assert_eq!(r.revision, before + 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_over_the_size_limit_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let big = PutRequest {
        key: "big".into(),
        value: vec![0; MAX_REQUEST_BYTES + 1],
        ..Default::default()
    };
    assert!(matches!(
        s.put(big).await,
        Err(Error::RequestTooLarge { .. })
    ));
    assert_eq!(s.current_revision(), 1);
    assert!(s.range(get("big")).await.unwrap().kvs.is_empty());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn leases_attach_keys_and_revoke_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let (id, ttl) = s.lease_grant(0, 60).await.unwrap();
    assert_eq!(ttl, 60);
    s.put(PutRequest {
        lease: id,
        ..put("l/a", "1")
    })
    .await
    .unwrap();
    let info = s.lease_time_to_live(id, true).await.unwrap();
    assert_eq!(info.granted_ttl, 60);
    assert!(info.ttl > 55 && info.ttl <= 60);
    assert_eq!(info.keys, vec![b"l/a".to_vec()]);
    assert_eq!(s.lease_keep_alive(id).await.unwrap(), 60);
    let missing = s
        .put(PutRequest {
            lease: 12345,
            ..put("l/b", "1")
        })
        .await;
    assert!(matches!(missing, Err(Error::LeaseNotFound)));
    s.lease_revoke(id).await.unwrap();
    assert!(s.range(get("l/a")).await.unwrap().kvs.is_empty());
    assert_eq!(s.lease_time_to_live(id, false).await.unwrap().ttl, -1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let (id, _) = s.lease_grant(0, 1).await.unwrap(); // raised to the 2 s minimum
    s.put(PutRequest {
        lease: id,
        ..put("ephemeral", "1")
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if s.range(get("ephemeral")).await.unwrap().kvs.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.leases().is_empty());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_writes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    s.put(put("w/a", "1")).await.unwrap(); // 2
    s.put(put("other", "1")).await.unwrap(); // 3
    s.put(put("w/a", "2")).await.unwrap(); // 4
    let cancel = CancellationToken::new();
    let mut rx = s.watch(
        WatchSpec {
            key: "w/".into(),
            range_end: prefix_end(b"w/"),
            start_revision: 2,
            prev_kv: true,
            ..Default::default()
        },
        cancel.clone(),
    );
    let writer = s.clone();
    let live = tokio::spawn(async move {
        for i in 0..200 {
            writer.put(put("w/b", &i.to_string())).await.unwrap();
        }
    });
    let mut revs = Vec::new();
    while revs.len() < 202 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(WatchMessage::Events { events, .. })) => {
                for e in events {
                    revs.push(e.kv.mod_revision);
                    if e.kv.mod_revision == 4 {
                        assert_eq!(e.prev_kv.as_ref().unwrap().value, b"1");
                    }
                }
            }
            other => panic!("watch ended early: {other:?}"),
        }
    }
    live.await.unwrap();
    let mut expected = vec![2, 4];
    expected.extend(5..205);
    assert_eq!(revs, expected);
    cancel.cancel();
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn watch_below_the_compaction_point_reports_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    for i in 0..5 {
        s.put(put("c", &i.to_string())).await.unwrap();
    }
    s.compact(4).await.unwrap();
    let mut rx = s.watch(
        WatchSpec {
            key: "c".into(),
            start_revision: 2,
            ..Default::default()
        },
        CancellationToken::new(),
    );
    match rx.recv().await {
        Some(WatchMessage::Compacted { compact_revision }) => assert_eq!(compact_revision, 4),
        other => panic!("expected compacted, got {other:?}"),
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn everything_acknowledged_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let (lease, _) = s.lease_grant(0, 600).await.unwrap();
    for i in 0..300 {
        s.put(put(&format!("k{i:03}"), &i.to_string()))
            .await
            .unwrap();
    }
    s.put(PutRequest {
        lease,
        ..put("leased", "x")
    })
    .await
    .unwrap();
    s.compact(100).await.unwrap();
    let rev = s.current_revision();
    s.shutdown().await.unwrap();
    drop(s);
    let s = open(dir.path()).await;
    assert_eq!(s.current_revision(), rev);
    let all = s.range(prefix("k")).await.unwrap();
    assert_eq!(all.count, 300);
    assert_eq!(s.status().compact_revision, 100);
    assert_eq!(s.leases(), vec![lease]);
    let info = s.lease_time_to_live(lease, true).await.unwrap();
    assert_eq!(info.keys, vec![b"leased".to_vec()]);
    s.put(put("after", "restart")).await.unwrap();
    assert_eq!(s.current_revision(), rev + 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_writers_are_group_committed_and_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                s.put(put(&format!("t{t}/{i}"), "v")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.current_revision(), 1 + 16 * 50);
    assert_eq!(s.range(prefix("t")).await.unwrap().count, 800);
    s.shutdown().await.unwrap();
}

/// Copies a directory's files (sled keeps a flat directory plus `blobs/`).
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Appends bytes after the last written frame of the newest log segment, as a write cut
/// short by a power failure leaves them.
fn tear_log_tail(wal_dir: &Path, garbage: &[u8]) {
    let mut segs: Vec<_> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    let seg = segs.pop().unwrap();
    let data = std::fs::read(&seg).unwrap();
    let end = data
        .iter()
        .rposition(|b| *b != 0)
        .map(|i| i + 1)
        .unwrap_or(0);
    let at = end.div_ceil(8) * 8;
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(garbage, at as u64).unwrap();
}

/// A power cut: everything fdatasync'd survives, nothing else does. The log is synced before
/// every acknowledgement; the state database only at checkpoints, so after the "cut" it is
/// rolled back to its last checkpoint, and the log's tail holds a torn, never-acknowledged
/// frame. Every acknowledged write must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_no_acknowledged_write() {
    use rand::Rng;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let durable = dir.path().join("durable-state");
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let mut last_rev = 0;
    for round in 0..6 {
        let mut cfg = test_config(dir.path());
        cfg.checkpoint_entries = rand::thread_rng().gen_range(5..40);
        let keep = durable.clone();
        cfg.on_checkpoint = Some(Arc::new(move |state: &Path| copy_dir(state, &keep)));
        let s = Store::open(cfg, Arc::new(NoPeers)).unwrap();
        if round == 0 {
            // The first start checkpointed before the hook could see it.
            copy_dir(&dir.path().join("state"), &durable);
        }
        // Everything acknowledged before is still there, and time did not go back.
        assert!(
            s.current_revision() >= last_rev,
            "round {round}: revision went back"
        );
        let snapshot = acked.lock().unwrap().clone();
        for (k, v) in snapshot.iter() {
            let got = s.range(get(k)).await.unwrap();
            assert_eq!(
                got.kvs.first().map(|kv| kv.value.clone()),
                Some(v.as_bytes().to_vec()),
                "round {round}: lost {k}"
            );
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let s = s.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let n = rand::thread_rng().gen_range(10..60);
                let mut top = 0;
                for i in 0..n {
                    let (k, v) = (format!("pc/{round}/{w}/{i}"), format!("v{i}"));
                    let r = s.put(put(&k, &v)).await.unwrap();
                    top = r.revision;
                    acked.lock().unwrap().insert(k, v);
                }
                top
            }));
        }
        for t in tasks {
            last_rev = last_rev.max(t.await.unwrap());
        }
        s.simulate_crash().await;
        drop(s);
        // The power cut: the state database loses everything since its last checkpoint...
        copy_dir(&durable, &dir.path().join("state"));
        // ...and the log ends in a torn frame.
        let mut garbage = vec![0u8; rand::thread_rng().gen_range(9..300)];
        rand::thread_rng().fill(&mut garbage[..]);
        garbage[0] = 200; // a plausible length
        tear_log_tail(&dir.path().join("wal"), &garbage);
    }
    let s = open(dir.path()).await;
    let snapshot = acked.lock().unwrap().clone();
    for (k, v) in snapshot.iter() {
        let got = s.range(get(k)).await.unwrap();
        assert_eq!(got.kvs[0].value, v.as_bytes(), "lost {k}");
    }
    assert!(s.current_revision() >= last_rev);
    s.shutdown().await.unwrap();
}

/// Unmounts a test filesystem when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk: writes fail with NoSpace, nothing acknowledged is lost, reads go on, and
/// writes work again once space returns. Uses a small tmpfs (the tests run as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI and `make test` run as root)"
    );
    let _mounted = Mount(mnt.clone());
    let data = mnt.join("db");
    let mut cfg = test_config(&data);
    cfg.segment_bytes = 1 << 20;
    cfg.min_free_bytes = 3 << 20;
    let s = Store::open(cfg.clone(), Arc::new(NoPeers)).unwrap();
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![1u8; 12 << 20]).unwrap();
    let value = "x".repeat(8 << 10);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..4000 {
        let key = format!("full/{i:05}");
        match s.put(put(&key, &value)).await {
            Ok(_) => acked.push(key),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the disk never filled");
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    assert!(err.to_string().contains("database space exceeded"), "{err}");
    assert!(acked.len() > 10);
    // Reads still work and see everything acknowledged.
    let all = s.range(prefix("full/")).await.unwrap();
    assert_eq!(all.count as usize, acked.len());
    // Space returns: writes work again.
    std::fs::remove_file(&ballast).unwrap();
    s.put(put("full/after", "ok")).await.unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    let s = Store::open(cfg, Arc::new(NoPeers)).unwrap();
    let all = s.range(prefix("full/")).await.unwrap();
    assert_eq!(all.count as usize, acked.len() + 1);
    s.shutdown().await.unwrap();
}

/// A watcher that falls far behind (past the live feed's buffer) catches up from history:
/// every event arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watcher_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let cancel = CancellationToken::new();
    let mut rx = s.watch(
        WatchSpec {
            key: "lag/".into(),
            range_end: prefix_end(b"lag/"),
            ..Default::default()
        },
        cancel.clone(),
    );
    let total = 6000;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / 16 {
                s.put(put(&format!("lag/{w}/{i}"), "v")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Only now start reading: the watcher lagged behind the whole run.
    let mut revs = Vec::new();
    while revs.len() < total {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(WatchMessage::Events { events, .. })) => {
                revs.extend(events.iter().map(|e| e.kv.mod_revision))
            }
            other => panic!("watch ended after {} events: {other:?}", revs.len()),
        }
    }
    let expected: Vec<i64> = (2..2 + total as i64).collect();
    assert_eq!(revs, expected);
    cancel.cancel();
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compactor_keeps_one_interval_of_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(super::compactor::run(
        s.clone(),
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    for i in 0..5 {
        s.put(put("c", &i.to_string())).await.unwrap();
    }
    let before = s.current_revision();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.status().compact_revision < before {
        assert!(tokio::time::Instant::now() < deadline, "never compacted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // History newer than one interval is kept: a write now is still readable at its revision.
    let r = s.put(put("c", "new")).await.unwrap();
    let at = s
        .range(RangeRequest {
            revision: r.revision,
            ..get("c")
        })
        .await
        .unwrap();
    assert_eq!(at.kvs[0].value, b"new");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    s.shutdown().await.unwrap();
}
