//! What the `make bench-*` examples share: a release `krab server` in a temp dir, its admin
//! client, its memory, and percentiles.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub struct Server {
    pub child: Child,
    pub kubeconfig: PathBuf,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn stop(&mut self) {
        // SAFETY: signalling the child this process started and still owns.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Resident memory of process `pid` in MiB (0 when it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts `krab server` on `dir/data`; without its agent unless `agent`.
pub fn start(bin: &Path, dir: &Path, agent: bool, extra: &[&str]) -> anyhow::Result<Server> {
    let port = free_port();
    let kubeconfig = dir.join("kubeconfig.yaml");
    let child = Command::new(bin)
        .arg("server")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--config", "/dev/null", "--bind-address", "127.0.0.1"])
        .args(if agent {
            vec!["--kubelet-port".to_string(), free_port().to_string()]
        } else {
            vec!["--disable-agent".to_string()]
        })
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--etcd-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--etcd-peer-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Server {
        child,
        kubeconfig,
        port,
    })
}

pub async fn client(s: &Server) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(kc) = Kubeconfig::read_from(&s.kubeconfig) {
            let config =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            let client = Client::try_from(config)?;
            let ready = client
                .request_text(axum::http::Request::get("/readyz").body(Vec::new())?)
                .await;
            if ready.is_ok() {
                return Ok(client);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Creates namespace `name`.
pub async fn make_namespace(c: &Client, name: &str) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}
