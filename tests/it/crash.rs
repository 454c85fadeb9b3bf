//! Crash safety: a server killed with SIGKILL at random moments while clients write loses no
//! acknowledged write, and its revision never goes back.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rand::Rng;

use crate::support::Server;

pub async fn client(s: &Server) -> Client {
    let tls = s.tls_dir();
    let read = |n: &str| std::fs::read(tls.join(n)).unwrap();
    let opts = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read("server-ca.crt")))
                .identity(Identity::from_pem(read("client.crt"), read("client.key"))),
        )
        .with_timeout(Duration::from_secs(5));
    Client::connect([s.endpoint()], Some(opts)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let mut max_rev = 0i64;
    let rounds = 8;
    for round in 0..rounds {
        let mut server = Server::start(&data, &[]);
        let c = client(&server).await;
        // Everything acknowledged in earlier rounds is still there.
        let all = c
            .clone()
            .get("c/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        let rev = all.header().unwrap().revision();
        assert!(
            rev >= max_rev,
            "round {round}: revision went back from {max_rev} to {rev}"
        );
        let stored: BTreeMap<String, String> = all
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect();
        for (k, v) in acked.lock().unwrap().iter() {
            assert_eq!(
                stored.get(k),
                Some(v),
                "round {round}: acknowledged {k} lost"
            );
        }
        // Writers run until the server dies under them.
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut c = c.clone();
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let mut top = 0i64;
                for i in 0.. {
                    let key = format!("c/{round}/{w}/{i}");
                    let value = format!("v{i}");
                    match c.put(key.clone(), value.clone(), None).await {
                        Ok(r) => {
                            top = top.max(r.header().unwrap().revision());
                            acked.lock().unwrap().insert(key, value);
                        }
                        Err(_) => break,
                    }
                }
                top
            }));
        }
        let wait = rand::thread_rng().gen_range(150..700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        for w in writers {
            let top = tokio::time::timeout(Duration::from_secs(20), w)
                .await
                .expect("writer did not notice the crash")
                .unwrap();
            max_rev = max_rev.max(top);
        }
    }
    let server = Server::start(&data, &[]);
    let c = client(&server).await;
    let all = c
        .clone()
        .get(
            "c/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    let n = acked.lock().unwrap().len() as i64;
    assert!(n > 100, "too few writes to mean anything: {n}");
    assert!(
        all.count() >= n,
        "stored {} < acknowledged {n}",
        all.count()
    );
}
