//! `make bench-store`: the embedded datastore against Debian's etcd 3.4, driven by the same
//! client (`etcd-client`) over the same etcd v3 API with the same mutual TLS and durability.
//! Prints a table: puts/s and p50/p99 latency of 1 KiB puts with 1 and 16 clients, RSS with
//! 100k keys of 1 KiB, and bytes written to disk per 1,000 puts.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

struct Proc {
    name: &'static str,
    child: Child,
    endpoint: String,
    tls: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn write_bytes(&self) -> u64 {
        let s =
            std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("write_bytes:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

async fn connect(p: &Proc) -> anyhow::Result<Client> {
    let read = |n: &str| std::fs::read(p.tls.join(n));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The server writes its certificates as it starts.
        let (Ok(ca), Ok(cert), Ok(key)) = (
            read("server-ca.crt"),
            read("client.crt"),
            read("client.key"),
        ) else {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} wrote no certificates",
                p.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key));
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_timeout(Duration::from_secs(10));
        if let Ok(mut c) = Client::connect([p.endpoint.as_str()], Some(opts)).await {
            if c.get("probe", None).await.is_ok() {
                return Ok(c);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{} did not come up", p.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `krab server` on loopback with free ports; returns the command and its etcd port.
fn krab_command(bin: &Path, dir: &Path) -> (Command, u16) {
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "server",
        "--config",
        "/dev/null",
        "--disable-agent",
        "--log-level",
        "warn",
    ])
    .env(
        "RUST_LOG",
        std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .arg("--data-dir")
    .arg(dir)
    .arg("--etcd-listen")
    .arg(format!("127.0.0.1:{port}"))
    .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
    .arg(free_port().to_string())
    .arg("--write-kubeconfig")
    .arg(dir.with_extension("kubeconfig"))
    .stdout(Stdio::null());
    (cmd, port)
}

fn krab_proc(child: Child, port: u16, dir: &Path) -> Proc {
    Proc {
        name: "krab",
        child,
        endpoint: format!("https://127.0.0.1:{port}"),
        tls: dir.join("server/tls/etcd"),
    }
}

fn start_krab(bin: &Path, dir: &Path) -> anyhow::Result<Proc> {
    let (mut cmd, port) = krab_command(bin, dir);
    let child = cmd
        .stderr(std::fs::File::create(dir.with_file_name("krab.log"))?)
        .spawn()?;
    Ok(krab_proc(child, port, dir))
}

/// etcd with the same certificates krab generated (krab's serving cert covers 127.0.0.1).
fn start_etcd(dir: &Path, tls: &Path) -> anyhow::Result<Proc> {
    let port = free_port();
    let peer = free_port();
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir)
        .args(["--name", "bench", "--log-level", "error", "--logger", "zap"])
        .arg(format!("--listen-client-urls=https://127.0.0.1:{port}"))
        .arg(format!("--advertise-client-urls=https://127.0.0.1:{port}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--cert-file={}",
            tls.join("server-client.crt").display()
        ))
        .arg(format!(
            "--key-file={}",
            tls.join("server-client.key").display()
        ))
        .arg(format!(
            "--trusted-ca-file={}",
            tls.join("server-ca.crt").display()
        ))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proc {
        name: "etcd",
        child,
        endpoint: format!("https://127.0.0.1:{port}"),
        tls: tls.to_path_buf(),
    })
}

fn copy_peer_ca(from: &Path, to: &Path) -> anyhow::Result<()> {
    let dst = to.join("server/tls/etcd");
    std::fs::create_dir_all(&dst)?;
    for f in ["peer-ca.crt", "peer-ca.key"] {
        std::fs::copy(from.join("server/tls/etcd").join(f), dst.join(f))?;
    }
    Ok(())
}

fn krab_member(bin: &Path, dir: &Path, peer: u16, join: Option<u16>) -> anyhow::Result<Proc> {
    let (mut cmd, port) = krab_command(bin, dir);
    cmd.arg("--etcd-peer-listen")
        .arg(format!("127.0.0.1:{peer}"))
        .args(["--token", "bench", "--node-name"])
        .arg(dir.file_name().unwrap_or_default());
    match join {
        None => cmd.arg("--cluster-init"),
        Some(p) => cmd.arg("--server").arg(format!("https://127.0.0.1:{p}")),
    };
    let child = cmd.stderr(Stdio::null()).spawn()?;
    Ok(krab_proc(child, port, dir))
}

/// Three krab servers on loopback; returns them with the first (the leader) first.
async fn start_krab_cluster(bin: &Path, root: &Path) -> anyhow::Result<Vec<Proc>> {
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dirs: Vec<PathBuf> = (0..3).map(|i| root.join(format!("k{i}"))).collect();
    let first = krab_member(bin, &dirs[0], peers[0], None)?;
    connect(&first).await?;
    let mut all = vec![first];
    for i in 1..3 {
        copy_peer_ca(&dirs[0], &dirs[i])?;
        let p = krab_member(bin, &dirs[i], peers[i], Some(peers[0]))?;
        connect(&p).await?;
        all.push(p);
    }
    Ok(all)
}

/// Three etcd members with TLS for clients and peers, using krab's certificates.
fn start_etcd_cluster(root: &Path, tls: &Path) -> anyhow::Result<Vec<Proc>> {
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}=https://127.0.0.1:{}", peers[i]))
        .collect();
    let mut all = Vec::new();
    for i in 0..3 {
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(root.join(format!("e{i}")))
            .arg(format!("--name=e{i}"))
            .args(["--log-level", "error", "--logger", "zap"])
            .arg(format!(
                "--listen-client-urls=https://127.0.0.1:{}",
                clients[i]
            ))
            .arg(format!(
                "--advertise-client-urls=https://127.0.0.1:{}",
                clients[i]
            ))
            .arg(format!("--listen-peer-urls=https://127.0.0.1:{}", peers[i]))
            .arg(format!(
                "--initial-advertise-peer-urls=https://127.0.0.1:{}",
                peers[i]
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!(
                "--cert-file={}",
                tls.join("server-client.crt").display()
            ))
            .arg(format!(
                "--key-file={}",
                tls.join("server-client.key").display()
            ))
            .arg(format!(
                "--trusted-ca-file={}",
                tls.join("server-ca.crt").display()
            ))
            .arg("--client-cert-auth")
            .arg(format!(
                "--peer-cert-file={}",
                tls.join("peer-server-client.crt").display()
            ))
            .arg(format!(
                "--peer-key-file={}",
                tls.join("peer-server-client.key").display()
            ))
            .arg(format!(
                "--peer-trusted-ca-file={}",
                tls.join("peer-ca.crt").display()
            ))
            .arg("--peer-client-cert-auth")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        all.push(Proc {
            name: "etcd",
            child,
            endpoint: format!("https://127.0.0.1:{}", clients[i]),
            tls: tls.to_path_buf(),
        });
    }
    Ok(all)
}

/// The member that is leader, by asking each for its status.
async fn leader_index(members: &[Proc]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, m) in members.iter().enumerate() {
            let mut c = connect(m).await?;
            if let Ok(st) = c.status().await {
                let me = st.header().map(|h| h.member_id()).unwrap_or(0);
                if st.leader() == me && me != 0 {
                    return Ok(i);
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Run {
    puts_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn put_load(
    client: &Client,
    clients: usize,
    per_client: usize,
    prefix: &str,
) -> anyhow::Result<Run> {
    let value = vec![b'x'; 1024];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = client.clone();
        let value = value.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                client
                    .put(format!("{prefix}/{c}/{i:08}"), value.clone(), None)
                    .await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    Ok(Run {
        puts_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

struct Side {
    one: Run,
    sixteen: Run,
    bytes_per_1000: f64,
    rss_100k_mb: f64,
    peak_rss_100k_mb: f64,
}

async fn measure(p: &Proc, keys: usize) -> anyhow::Result<Side> {
    let client = connect(p).await?;
    let _ = put_load(&client, 4, 50, "warmup").await?;
    let one = put_load(&client, 1, 1000, "one").await?;
    let before = p.write_bytes();
    let sixteen = put_load(&client, 16, 250, "sixteen").await?;
    let written = p.write_bytes().saturating_sub(before);
    let bytes_per_1000 = written as f64 / 4.0;
    // Fill to `keys` keys of 1 KiB.
    let _ = put_load(&client, 16, keys / 16, "fill").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Side {
        one,
        sixteen,
        bytes_per_1000,
        rss_100k_mb: p.status_kb("VmRSS:") as f64 / 1024.0,
        peak_rss_100k_mb: p.status_kb("VmHWM:") as f64 / 1024.0,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = std::env::var_os("KRAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/krab"));
    anyhow::ensure!(
        bin.exists(),
        "{} not found: run `make release` first",
        bin.display()
    );
    let keys: usize = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir()?;
    let krab_dir = tmp.path().join("krab");
    let krab = start_krab(&bin, &krab_dir)?;
    eprintln!("measuring krab ({keys} keys)...");
    let k = measure(&krab, keys).await?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("krab") {
        println!(
            "krab: 1 client {:.0}/s p50 {:.2} p99 {:.2}; 16 clients {:.0}/s p50 {:.2} p99 {:.2}; {:.0} KiB per 1000 puts; RSS {:.1} MiB",
            k.one.puts_per_sec, k.one.p50_ms, k.one.p99_ms, k.sixteen.puts_per_sec,
            k.sixteen.p50_ms, k.sixteen.p99_ms, k.bytes_per_1000 / 1024.0, k.rss_100k_mb
        );
        if std::env::var_os("BENCH_KEEP").is_some() {
            let _ = Command::new("kill")
                .arg(krab.child.id().to_string())
                .status();
            tokio::time::sleep(Duration::from_secs(2)).await;
            eprintln!("kept {}", tmp.keep().display());
        }
        return Ok(());
    }
    let etcd = start_etcd(&tmp.path().join("etcd"), &krab.tls)?;
    eprintln!("measuring etcd ({keys} keys)...");
    let e = measure(&etcd, keys).await?;
    drop(etcd);
    drop(krab);

    eprintln!("measuring three krab servers...");
    let kc = start_krab_cluster(&bin, &tmp.path().join("kc")).await?;
    let leader = leader_index(&kc).await?;
    let client = connect(&kc[leader]).await?;
    let _ = put_load(&client, 4, 50, "warmup").await?;
    let k3_one = put_load(&client, 1, 1000, "one").await?;
    let k3_sixteen = put_load(&client, 16, 250, "sixteen").await?;
    let cluster_tls = kc[0].tls.clone();
    eprintln!("measuring three etcd members...");
    let ec = start_etcd_cluster(&tmp.path().join("ec"), &cluster_tls)?;
    let leader = leader_index(&ec).await?;
    let client = connect(&ec[leader]).await?;
    let _ = put_load(&client, 4, 50, "warmup").await?;
    let e3_one = put_load(&client, 1, 1000, "one").await?;
    let e3_sixteen = put_load(&client, 16, 250, "sixteen").await?;
    drop(ec);
    drop(kc);

    let live_mb = (keys * (1024 + 20)) as f64 / (1024.0 * 1024.0);
    println!("| single server, 1 KiB puts | krab | etcd 3.4 | krab/etcd |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!("| {name} | {a:.1}{unit} | {b:.1}{unit} | {:.2}x |", a / b);
    };
    row(
        "1 client: puts/s",
        k.one.puts_per_sec,
        e.one.puts_per_sec,
        "",
    );
    row("1 client: p50 latency", k.one.p50_ms, e.one.p50_ms, " ms");
    row("1 client: p99 latency", k.one.p99_ms, e.one.p99_ms, " ms");
    row(
        "16 clients: puts/s",
        k.sixteen.puts_per_sec,
        e.sixteen.puts_per_sec,
        "",
    );
    row(
        "16 clients: p50 latency",
        k.sixteen.p50_ms,
        e.sixteen.p50_ms,
        " ms",
    );
    row(
        "16 clients: p99 latency",
        k.sixteen.p99_ms,
        e.sixteen.p99_ms,
        " ms",
    );
    row(
        "disk bytes written per 1,000 puts (KiB)",
        k.bytes_per_1000 / 1024.0,
        e.bytes_per_1000 / 1024.0,
        "",
    );
    row(
        &format!("RSS holding {keys} keys (MiB; live data {live_mb:.0} MiB)"),
        k.rss_100k_mb,
        e.rss_100k_mb,
        "",
    );
    row(
        "peak RSS (VmHWM, MiB)",
        k.peak_rss_100k_mb,
        e.peak_rss_100k_mb,
        "",
    );
    println!();
    println!(
        "| three servers on loopback, 1 KiB puts to the leader | krab | etcd 3.4 | krab/etcd |"
    );
    println!("|---|---:|---:|---:|");
    row(
        "1 client: puts/s",
        k3_one.puts_per_sec,
        e3_one.puts_per_sec,
        "",
    );
    row("1 client: p50 latency", k3_one.p50_ms, e3_one.p50_ms, " ms");
    row("1 client: p99 latency", k3_one.p99_ms, e3_one.p99_ms, " ms");
    row(
        "16 clients: puts/s",
        k3_sixteen.puts_per_sec,
        e3_sixteen.puts_per_sec,
        "",
    );
    row(
        "16 clients: p50 latency",
        k3_sixteen.p50_ms,
        e3_sixteen.p50_ms,
        " ms",
    );
    row(
        "16 clients: p99 latency",
        k3_sixteen.p99_ms,
        e3_sixteen.p99_ms,
        " ms",
    );
    println!();
    println!(
        "RSS / live data: krab {:.2}x, etcd {:.2}x",
        k.rss_100k_mb / live_mb,
        e.rss_100k_mb / live_mb
    );
    Ok(())
}
