//! Three servers on loopback: joins, forwarding, and losing the leader during writes.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crash::client;
use crate::support::{free_port, Server};

const TOKEN: &str = "test-cluster-secret";

pub fn start_member(dir: &Path, peer_port: u16, join: Option<(u16, &str)>) -> Server {
    let peer = format!("127.0.0.1:{peer_port}");
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let token = join.map(|(_, t)| t).unwrap_or(TOKEN);
    let mut args = vec![
        "--etcd-peer-listen",
        &peer,
        "--token",
        token,
        "--node-name",
        &name,
    ];
    let url;
    match join {
        None => args.push("--cluster-init"),
        Some((p, _)) => {
            url = format!("https://127.0.0.1:{p}");
            args.push("--server");
            args.push(&url);
        }
    }
    Server::start(dir, &args)
}

/// The join token the first server wrote (K10<CA hash>::server:<secret>).
pub fn token_of(first: &Path) -> String {
    std::fs::read_to_string(first.join("server/token"))
        .unwrap()
        .trim()
        .to_string()
}

fn status(s: &Server) -> Option<serde_json::Value> {
    let out = s.etcdctl(&["endpoint", "status", "-w", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0]["Status"].clone())
}

fn leader_of(servers: &[&Server]) -> Option<(usize, u64)> {
    for (i, s) in servers.iter().enumerate() {
        if let Some(st) = status(s) {
            let me = st["header"]["member_id"].as_u64()?;
            let leader = st["leader"].as_u64()?;
            if leader != 0 && leader == me {
                return Some((i, leader));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_survive_losing_the_leader_during_writes() {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| dir.path().join(format!("s{i}"))).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let s0 = start_member(&dirs[0], ports[0], None);
    let token = token_of(&dirs[0]);
    assert!(token.starts_with("K10") && token.ends_with(&format!("::server:{TOKEN}")));
    let s1 = start_member(&dirs[1], ports[1], Some((ports[0], &token)));
    let s2 = start_member(&dirs[2], ports[2], Some((ports[0], &token)));
    let mut servers = vec![s0, s1, s2];
    let members = servers[2].ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");

    // One cluster, one set of CAs: a joiner's admin kubeconfig works against the first
    // server's API, and what one API server writes the others serve.
    let url0 = format!("https://127.0.0.1:{}", servers[0].api_port);
    let cm = dir.path().join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {k: v}\n",
    )
    .unwrap();
    servers[1].kube_ok(&["create", "-f", cm.to_str().unwrap()]);
    let seen = servers[1].kube_ok(&[
        "--server",
        &url0,
        "get",
        "cm",
        "shared",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert_eq!(seen, "v");
    assert_eq!(
        servers[2].kube_ok(&["get", "cm", "shared", "-o", "jsonpath={.data.k}"]),
        "v"
    );

    // A write on a follower is forwarded; a linearizable read anywhere sees it.
    servers[1].ok(&["put", "/joined", "yes"]);
    for s in &servers {
        assert!(s.ok(&["get", "/joined"]).contains("yes"));
    }

    let (leader_idx, _) = leader_of(&servers.iter().collect::<Vec<_>>()).expect("a leader");
    let writer_idx = (leader_idx + 1) % 3;
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let c = client(&servers[writer_idx]).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = c.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("/ha/{w}/{i}");
                if c.put(key.clone(), format!("v{i}"), None).await.is_ok() {
                    acked.lock().unwrap().insert(key, format!("v{i}"));
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = Instant::now();
    servers[leader_idx].kill9();
    // A new leader among the survivors within a few seconds.
    let survivors: Vec<&Server> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_idx)
        .map(|(_, s)| s)
        .collect();
    let new_leader = loop {
        if let Some((_, id)) = leader_of(&survivors) {
            break id;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no new leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failover = killed_at.elapsed();
    eprintln!("new leader {new_leader:x} after {failover:?}");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too few writes: {}", acked.len());

    // The old leader comes back and catches up; every acknowledged write is everywhere.
    let port = servers[leader_idx].etcd_port;
    let peer = format!("127.0.0.1:{}", ports[leader_idx]);
    servers[leader_idx] = Server::start_on(
        &dirs[leader_idx],
        port,
        &["--etcd-peer-listen", &peer, "--token", TOKEN],
    );
    for (i, s) in servers.iter().enumerate() {
        let c = client(s).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = c
                .clone()
                .get("/ha/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await;
            if let Ok(got) = got {
                let stored: BTreeMap<String, String> = got
                    .kvs()
                    .iter()
                    .map(|kv| (kv.key_str().unwrap().into(), kv.value_str().unwrap().into()))
                    .collect();
                if acked.iter().all(|(k, v)| stored.get(k) == Some(v)) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "server {i} never caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Removing a member (the documented way: etcdctl member remove).
    let st = status(&servers[2]).unwrap();
    let id = format!("{:x}", st["header"]["member_id"].as_u64().unwrap());
    let out = servers[0].ok(&["member", "remove", &id]);
    assert!(out.contains("removed"), "{out}");
    let members = servers[1].ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 2, "{members}");
    assert!(!members.contains(&id), "{members}");
    // Writes go on (after an election if the removed member was the leader).
    let removed_at = Instant::now();
    let deadline = removed_at + Duration::from_secs(20);
    loop {
        let out = servers[0].etcdctl(&["put", "/after-removal", "ok"]);
        if out.status.success() {
            if removed_at.elapsed() > Duration::from_secs(5)
                && std::env::var_os("KRAB_TEST_DUMP").is_some()
            {
                for (i, s) in servers.iter().enumerate() {
                    eprintln!("--- server {i} log:\n{}", s.log());
                }
            }
            eprintln!("write after removal took {:?}", removed_at.elapsed());
            break;
        }
        if Instant::now() > deadline {
            for (i, s) in servers.iter().enumerate() {
                eprintln!("--- server {i} log:\n{}", s.log());
            }
            panic!(
                "no writes after the removal: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_wrong_token_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let port = free_port();
    let _s0 = start_member(&first, port, None);
    let token = token_of(&first);
    let url = format!("https://127.0.0.1:{port}");
    let join = |name: &str, token: &str| {
        let peer = format!("127.0.0.1:{}", free_port());
        crate::support::Server::start_expecting_failure(
            &dir.path().join(name),
            &[
                "--etcd-peer-listen",
                &peer,
                "--server",
                &url,
                "--token",
                token,
            ],
        )
    };
    // Right CA, wrong secret.
    let wrong_secret = format!(
        "{}::server:not-the-secret",
        token.split("::").next().unwrap()
    );
    let err = join("a", &wrong_secret);
    assert!(err.contains("refused the token"), "{err}");
    // A CA hash that is not this cluster's.
    let other_ca = format!("K10{}::server:{TOKEN}", "0".repeat(64));
    let err = join("b", &other_ca);
    assert!(
        err.contains("does not present the CA this token names"),
        "{err}"
    );
    // A token without a CA hash cannot establish trust.
    let err = join("c", TOKEN);
    assert!(err.contains("no CA hash"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_fell_far_behind_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| dir.path().join(format!("m{i}"))).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let s0 = start_member(&dirs[0], ports[0], None);
    let token = token_of(&dirs[0]);
    let s1 = start_member(&dirs[1], ports[1], Some((ports[0], &token)));
    let mut s2 = start_member(&dirs[2], ports[2], Some((ports[0], &token)));
    let (etcd_port, peer) = (s2.etcd_port, format!("127.0.0.1:{}", ports[2]));
    s2.stop();
    // Far more entries than the leader keeps in memory (1,000), one write per entry.
    let mut c = client(&s0).await;
    for i in 0..2500 {
        c.put(format!("/far/{i:05}"), "v", None).await.unwrap();
    }
    let s2 = Server::start_on(
        &dirs[2],
        etcd_port,
        &["--etcd-peer-listen", &peer, "--token", &token],
    );
    let mut c2 = client(&s2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = c2
            .get(
                "/far/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_serializable(),
                ),
            )
            .await
            .map(|r| r.count())
            .unwrap_or(0);
        if n == 2500 {
            break;
        }
        assert!(Instant::now() < deadline, "caught up to {n} of 2500");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once when it joined, once more after the restart: the entries it missed were gone.
    let snapshots = s2
        .log()
        .matches("installing a snapshot from the leader")
        .count();
    assert!(snapshots >= 2, "{}", s2.log());
    drop(s1);
}
