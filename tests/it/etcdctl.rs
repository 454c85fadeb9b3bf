//! Debian's etcdctl (3.4) against `krab server`: the commands people type.
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{run_bounded, Server, QUIET};

/// The store's current revision.
fn revision(s: &Server) -> i64 {
    let out = s.ok(&["get", "x", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

#[test]
fn put_get_prefix_delete_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), crate::support::QUIET);
    // (No loops: this test counts revisions and keys.)
    // The API server has written its system namespaces already.
    let base = revision(&s);
    assert_eq!(
        s.ok(&["put", "/registry/pods/default/a", "one"]).trim(),
        "OK"
    );
    s.ok(&["put", "/registry/pods/default/b", "two"]);
    s.ok(&["put", "/registry/services/default/c", "three"]);
    let out = s.ok(&["get", "/registry/pods/", "--prefix", "--keys-only"]);
    let keys: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        keys,
        vec!["/registry/pods/default/a", "/registry/pods/default/b"]
    );
    let json = s.ok(&["get", "/registry/pods/default/a", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kvs"][0]["create_revision"], base + 1);
    assert_eq!(v["kvs"][0]["version"], 1);
    assert_eq!(v["header"]["revision"], base + 3);
    // A read at an old revision.
    s.ok(&["put", "/registry/pods/default/a", "uno"]);
    let at = format!("--rev={}", base + 1);
    assert!(s
        .ok(&["get", "/registry/pods/default/a", &at])
        .contains("one"));
    assert_eq!(s.ok(&["del", "/registry/pods/", "--prefix"]).trim(), "2");
    assert!(s
        .ok(&["get", "/registry/pods/", "--prefix"])
        .trim()
        .is_empty());
    // Counting and limits: the service left, plus the API server's own objects: four
    // namespaces, two system PriorityClasses, the `kubernetes` Service (and the key holding
    // its address), its Endpoints and EndpointSlice, the `kube-dns` Service (and its
    // address key), the default RBAC policy and the local APIServices.
    let rbac: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "/registry/clusterrole",
        "--prefix",
        "--keys-only",
        "-w",
        "json",
    ]))
    .unwrap();
    let rbac = rbac["count"].as_i64().unwrap_or(0);
    // 14 built-in roles (4 of them aggregated into admin/edit/view), the manager's, and one
    // per controller identity (23), each bound.
    assert_eq!(rbac, 69, "the default roles (38) and bindings (31)");
    let out = s.ok(&[
        "get",
        "/registry/",
        "--prefix",
        "--keys-only",
        "--limit=2",
        "-w",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // And a local APIService per built-in group version.
    let api_services: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "/registry/apiregistration.k8s.io/apiservices/",
        "--prefix",
        "--keys-only",
        "-w",
        "json",
    ]))
    .unwrap();
    let api_services = api_services["count"].as_i64().unwrap_or(0);
    assert!(api_services >= 20, "{api_services} APIServices");
    assert_eq!(v["count"], 13 + api_services + rbac);
    assert_eq!(v["more"], true);
    assert_eq!(v["kvs"].as_array().unwrap().len(), 2);
}

#[test]
fn txn_compare_and_swap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), QUIET);
    s.ok(&["put", "k", "v1"]);
    let txn = |script: &str| {
        let mut cmd = s.etcdctl_command(&["txn"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = txn("value(\"k\") = \"v1\"\n\nput k v2\n\nput k failed\n\n");
    assert!(out.starts_with("SUCCESS"), "{out}");
    let out = txn("value(\"k\") = \"v1\"\n\nput k v3\n\nget k\n\n");
    assert!(out.starts_with("FAILURE"), "{out}");
    assert!(out.contains("v2"), "{out}");
}

#[test]
fn watch_sees_history_and_live_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), QUIET);
    s.ok(&["put", "/w/before", "1"]);
    let mut cmd = s.etcdctl_command(&["watch", "--prefix", "/w/", "--rev=1", "--prev-kv"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut watch = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.ok(&["put", "/w/live", "2"]);
    s.ok(&["put", "/w/live", "3"]);
    s.ok(&["del", "/w/before"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // Each event prints: type, key, [prev value], value.
    assert_eq!(lines.iter().filter(|l| **l == "PUT").count(), 3, "{text}");
    assert_eq!(
        lines.iter().filter(|l| **l == "DELETE").count(),
        1,
        "{text}"
    );
    let first_put = lines.iter().position(|l| *l == "/w/before").unwrap();
    let live = lines.iter().position(|l| *l == "/w/live").unwrap();
    assert!(first_put < live, "history comes first: {text}");
}

#[test]
fn leases_grant_keepalive_timetolive_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), QUIET);
    let out = s.ok(&["lease", "grant", "3"]);
    // "lease 694d71ddacfda227 granted with TTL(3s)"
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    s.ok(&["put", "eph", "x", "--lease", &id]);
    let ttl = s.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("granted with TTL(3s)"), "{ttl}");
    assert!(ttl.contains("eph"), "{ttl}");
    let ka = s.ok(&["lease", "keep-alive", "--once", &id]);
    assert!(ka.contains("keepalived with TTL(3)"), "{ka}");
    assert!(s.ok(&["lease", "list"]).contains(&id));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !s.ok(&["get", "eph"]).trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone = s.ok(&["lease", "timetolive", &id]);
    assert!(gone.contains("already expired"), "{gone}");
}

#[test]
fn endpoint_status_and_member_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), &["--node-name", "edge-1"]);
    let status = s.ok(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let st = &v[0]["Status"];
    assert_eq!(st["version"], "3.5.0");
    assert_eq!(st["leader"], st["header"]["member_id"]);
    assert!(s.logged("datastore ready"), "{}", s.log());
    let members = s.ok(&["member", "list"]);
    assert!(members.contains("edge-1"), "{members}");
    assert!(members.contains("started"), "{members}");
}

#[test]
fn oversized_requests_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), QUIET);
    let big = "x".repeat(1536 * 1024 + 100);
    let mut cmd = s.etcdctl_command(&["put", "big"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(big.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("request is too large"), "{err}");
    assert!(s.ok(&["get", "big"]).trim().is_empty());
}

#[test]
fn compaction_makes_old_revisions_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), QUIET);
    let base = revision(&s);
    for i in 0..5 {
        s.ok(&["put", "c", &i.to_string()]);
    }
    // c=0 at base+1 ... c=4 at base+5.
    s.ok(&["compaction", &(base + 3).to_string()]);
    let out = s.etcdctl(&["get", "c", &format!("--rev={}", base + 2)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));
    assert!(s
        .ok(&["get", "c", &format!("--rev={}", base + 3)])
        .contains('2'));
}

#[test]
fn snapshots_save_and_restore_into_a_fresh_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("d"), QUIET);
    for i in 0..50 {
        s.ok(&["put", &format!("/snap/{i:02}"), &i.to_string()]);
    }
    // etcdctl's own snapshot client accepts the stream (checksum found and verified).
    let via_etcdctl = dir.path().join("etcdctl.snap");
    s.ok(&["snapshot", "save", via_etcdctl.to_str().unwrap()]);
    // krab's command saves under <data-dir>/server/db/snapshots.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_krab"));
    cmd.args([
        "etcd-snapshot",
        "save",
        "--config",
        "/dev/null",
        "--data-dir",
    ])
    .arg(&s.data_dir)
    .arg("--etcd-listen")
    .arg(format!("127.0.0.1:{}", s.etcd_port));
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = String::from_utf8_lossy(&out.stdout);
    let path = saved
        .split_whitespace()
        .nth(2)
        .expect("snapshot path in output")
        .to_string();
    s.stop();
    // Restore both into new data dirs and read the data back.
    for snap in [path.as_str(), via_etcdctl.to_str().unwrap()] {
        let fresh = tempfile::tempdir().unwrap();
        let data = fresh.path().join("d");
        let r = Server::start(
            &data,
            &["--cluster-reset", "--cluster-reset-restore-path", snap],
        );
        let out = r.ok(&["get", "/snap/", "--prefix", "--keys-only", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["count"], 50, "restored from {snap}");
        r.ok(&["put", "/after-restore", "ok"]);
    }
    // A damaged or foreign file is refused with a message naming it.
    let bad = dir.path().join("bad.snap");
    let mut bytes = std::fs::read(&via_etcdctl).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&bad, bytes).unwrap();
    let err = Server::start_expecting_failure(
        &dir.path().join("other"),
        &[
            "--cluster-reset",
            "--cluster-reset-restore-path",
            bad.to_str().unwrap(),
        ],
    );
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains("bad.snap"), "{err}");
}

#[test]
fn a_corrupt_log_refuses_to_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut s = Server::start(&data, &[]);
    for i in 0..20 {
        s.ok(&["put", "k", &i.to_string()]);
    }
    s.kill9();
    let wal_dir = data.join("server/db/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    let seg = segs.last().unwrap().clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Damage an early frame; later frames stay valid, so this is corruption, not a torn tail.
    bytes[100] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let err = Server::start_expecting_failure(&data, &[]);
    assert!(err.contains("damaged log frame"), "{err}");
    assert!(err.contains(seg.to_str().unwrap()), "{err}");
    // Nothing was reset: the data is still there for an operator to inspect.
    assert!(seg.exists());
}

#[test]
fn an_unknown_config_key_is_reported_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, "data-dir: /tmp/x\nnot-a-flag: true\n").unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_krab"));
    cmd.args(["server", "--config"]).arg(&cfg);
    let out = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not-a-flag") && err.contains("config.yaml"),
        "{err}"
    );
}

#[test]
fn missing_or_damaged_state_refuses_to_start_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut s = Server::start(&data, &[]);
    for i in 0..10 {
        s.ok(&["put", "k", &i.to_string()]);
    }
    s.stop();
    // A deleted log: refuse, naming it.
    let wal = data.join("server/db/wal");
    let aside = data.join("server/db/wal-aside");
    std::fs::rename(&wal, &aside).unwrap();
    let err = Server::start_expecting_failure(&data, &[]);
    assert!(
        err.contains("write-ahead log") && err.contains("missing"),
        "{err}"
    );
    std::fs::rename(&aside, &wal).unwrap();
    // A damaged state database: refuse, naming the state directory.
    let db = data.join("server/db/state/db");
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().take(4096) {
        *b ^= 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let err = Server::start_expecting_failure(&data, &[]);
    assert!(err.contains("server/db/state"), "{err}");
}

#[test]
fn flags_beat_environment_and_environment_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (
        crate::support::free_port(),
        crate::support::free_port(),
        crate::support::free_port(),
    );
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("etcd-listen: 127.0.0.1:{file_port}\nlog-level: debug\n"),
    )
    .unwrap();
    let serving_on = |env: Option<u16>, flag: Option<u16>, name: &str| -> u16 {
        let data = dir.path().join(name);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_krab"));
        cmd.args(["server", "--disable-agent", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
            .arg(crate::support::free_port().to_string())
            .arg("--write-kubeconfig")
            .arg(dir.path().join(format!("{name}.kubeconfig")))
            .stderr(std::process::Stdio::null());
        if let Some(p) = env {
            cmd.env("KRAB_ETCD_LISTEN", format!("127.0.0.1:{p}"));
        }
        if let Some(p) = flag {
            cmd.arg("--etcd-listen").arg(format!("127.0.0.1:{p}"));
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let found = loop {
            let up = [file_port, env_port, flag_port]
                .into_iter()
                .find(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if let Some(p) = up {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: nothing listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        found
    };
    assert_eq!(serving_on(None, None, "file"), file_port);
    assert_eq!(serving_on(Some(env_port), None, "env"), env_port);
    assert_eq!(
        serving_on(Some(env_port), Some(flag_port), "flag"),
        flag_port
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_requests_answer_with_the_current_revision() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("d"), QUIET);
    let mut c = crate::crash::client(&s).await;
    let mut stream = c.watch("/p/", None).await.unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    c.put("/other", "x", None).await.unwrap();
    let rev = c
        .put("/other", "y", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    stream.request_progress().await.unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(progress.events().is_empty());
    assert!(!progress.canceled());
    assert_eq!(progress.header().unwrap().revision(), rev);
}
