//! Starting and stopping a real `krab server` for tests: free ports, a temp data dir, bounded
//! waits, and processes reaped on drop.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Flags for a server whose store nothing but the test writes to (no controllers, no
/// scheduler, so no leases renewed and no per-namespace defaults).
pub const QUIET: &[&str] = &["--disable-controller-manager", "--disable-scheduler"];

/// A port nothing listens on now, never the same one twice in this test process (the
/// kernel hands a just-released port out again, so two asked in a row could collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Server {
    pub data_dir: PathBuf,
    pub etcd_port: u16,
    pub api_port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Whether the local agent (and its containerd) runs.
    agent: bool,
}

impl Server {
    /// Starts `krab server` on a fresh or existing data dir and waits until its etcd endpoint
    /// answers.
    /// Starts a server and waits until its API is ready (/readyz), system objects included.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let etcd_port = free_port();
        let s = Self::start_on(data_dir, etcd_port, extra);
        s.wait_api_ready();
        s
    }

    /// Waits (bounded) for /readyz to answer 200.
    pub fn wait_api_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut cmd = Command::new("curl");
            cmd.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("https://127.0.0.1:{}/readyz", self.api_port));
            let out = run_bounded(cmd, Duration::from_secs(5));
            if out.stdout == b"200" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API did not become ready:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a server with its local agent (and so a containerd of its own).
    pub fn start_with_agent(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_agent_env(data_dir, extra, &[])
    }

    /// Starts a server with its local agent and these environment variables.
    pub fn start_with_agent_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let s = Self::launch(data_dir, free_port(), extra, true, env);
        s.wait_api_ready();
        s
    }

    pub fn start_on(data_dir: &Path, etcd_port: u16, extra: &[&str]) -> Server {
        Self::launch(data_dir, etcd_port, extra, false, &[])
    }

    fn launch(
        data_dir: &Path,
        etcd_port: u16,
        extra: &[&str],
        agent: bool,
        env: &[(&str, &str)],
    ) -> Server {
        let log = data_dir.with_extension(format!("log.{etcd_port}"));
        let mut s = Server {
            data_dir: data_dir.to_path_buf(),
            etcd_port,
            api_port: free_port(),
            child: None,
            log: log.clone(),
            agent,
        };
        let child = s
            .command(extra)
            .envs(env.iter().copied())
            .spawn()
            .expect("failed to start krab");
        s.child = Some(child);
        s.wait_ready();
        s
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_krab"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--etcd-listen")
            .arg(format!("127.0.0.1:{}", self.etcd_port))
            .arg("--config")
            .arg("/dev/null")
            .args(if self.agent {
                let mut a = vec!["--kubelet-port".to_string(), free_port().to_string()];
                if !extra.contains(&"--dns-port") {
                    a.extend(["--dns-port".to_string(), free_port().to_string()]);
                }
                a
            } else {
                vec!["--disable-agent".to_string()]
            })
            .args(["--bind-address", "127.0.0.1", "--https-listen-port"])
            .arg(self.api_port.to_string())
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("log file"),
            );
        cmd
    }

    /// Runs `krab server` expecting it to fail; returns its stderr.
    pub fn start_expecting_failure(data_dir: &Path, extra: &[&str]) -> String {
        let s = Server {
            data_dir: data_dir.to_path_buf(),
            etcd_port: free_port(),
            api_port: free_port(),
            child: None,
            log: data_dir.with_extension("fail.log"),
            agent: false,
        };
        let mut cmd = s.command(extra);
        cmd.stderr(Stdio::piped());
        let out = run_bounded(cmd, Duration::from_secs(20));
        assert!(!out.status.success(), "krab server was expected to fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "krab server exited early ({status}):\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
            let out = self.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "krab server did not become ready:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir
            .with_extension(format!("kubeconfig.{}", self.etcd_port))
    }

    /// Runs kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(["--request-timeout=20s"])
            .args(args);
        run_bounded(cmd, Duration::from_secs(30))
    }

    /// kubectl as the holder of `token` only (no kubeconfig, no client certificate), the
    /// server checked against the cluster's server CA.
    pub fn kubectl_with_token(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.env_remove("KUBERNETES_SERVICE_HOST")
            .arg("--kubeconfig=/dev/null")
            .arg(format!("--server=https://127.0.0.1:{}", self.api_port))
            .arg(format!(
                "--certificate-authority={}",
                self.data_dir.join("server/tls/server-ca.crt").display()
            ))
            .arg(format!("--token={token}"))
            .arg("--request-timeout=20s")
            .args(args);
        run_bounded(cmd, Duration::from_secs(30))
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kube_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub fn kube_err(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("server/tls/etcd")
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.etcd_port)
    }

    pub fn etcdctl_command(&self, args: &[&str]) -> Command {
        let tls = self.tls_dir();
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .arg("--cacert")
            .arg(tls.join("server-ca.crt"))
            .arg("--cert")
            .arg(tls.join("client.crt"))
            .arg("--key")
            .arg(tls.join("client.key"))
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        run_bounded(self.etcdctl_command(args), Duration::from_secs(30))
    }

    /// Runs etcdctl and returns stdout, failing the test with stderr when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling a child we spawned and still own.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "krab server exited with {status}");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("krab server did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the server logged a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("failed to spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a file for kubectl to read; returns its path.
pub fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

/// Polls `check` (bounded) until it returns Some.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
