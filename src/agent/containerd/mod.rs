//! containerd as a supervised child of the agent: the generated config, the process started
//! with it (and restarted when it dies), and the wait until its socket answers. Containers
//! outlive it: their shims are not its children, so stopping the agent never stops a pod.
pub mod config;
pub mod recovery;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::config::{Layout, Registries};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("containerd is not installed: no `containerd` on PATH (packaging/deps.sh run installs Debian's containerd, runc and containernetworking-plugins)")]
    NotInstalled,
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to start containerd: {0}")]
    Spawn(std::io::Error),
    #[error("containerd did not answer on {socket} within {secs} s (its log: {log})")]
    NotAnswering {
        socket: String,
        secs: u64,
        log: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Writes the config and the directories containerd expects.
pub fn prepare(layout: &Layout, sandbox_image: &str, registries: &Registries) -> Result<(), Error> {
    for dir in [&layout.root, &layout.state, &layout.cni_conf_dir] {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    if let Some(dir) = layout.config.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let text = config::render(layout, sandbox_image, stream_port(), registries);
    std::fs::write(&layout.config, text).map_err(io_err(&layout.config))
}

/// A free loopback port for CRI's streaming server (exec/attach/port-forward), so agents with
/// different data dirs never collide on containerd's fixed default.
fn stream_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(10010)
}

fn pid_file(layout: &Layout) -> std::path::PathBuf {
    layout.state.join("krab-containerd.pid")
}

/// A containerd left running by an agent that was killed is stopped before a new one starts
/// on the same root (two would fight over the metadata database).
async fn stop_stale(layout: &Layout) {
    let Ok(text) = std::fs::read_to_string(pid_file(layout)) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let config = layout.config.display().to_string();
    if !String::from_utf8_lossy(&cmdline).contains(&config) {
        return;
    }
    tracing::warn!(pid, "stopping a containerd left by an earlier agent");
    // SAFETY: kill(2) with a pid we read and verified through /proc.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn spawn(layout: &Layout, binary: &Path) -> Result<Child, Error> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&layout.log)
        .map_err(io_err(&layout.log))?;
    let log2 = log.try_clone().map_err(io_err(&layout.log))?;
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(&layout.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true);
    // containerd dies with the agent (a killed agent must not leave a second containerd
    // holding the database); containers live on in their shims.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(Error::Spawn)?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(pid_file(layout), pid.to_string());
    }
    Ok(child)
}

/// Waits until the socket accepts gRPC, or the child ends, or the limit passes.
async fn wait_answering(layout: &Layout, child: &mut Child, limit: Duration) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(client) = containerd_client::Client::from_path(&layout.socket).await {
            if client.version().version(()).await.is_ok() {
                return Ok(());
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Error::NotAnswering {
        socket: layout.socket.display().to_string(),
        secs: limit.as_secs(),
        log: layout.log.display().to_string(),
    })
}

/// Runs containerd until shutdown: starts it, reports readiness through `ready`, restarts it
/// (with a doubling delay up to 30 s) whenever it exits.
pub async fn supervise(
    layout: Layout,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let binary = which("containerd").ok_or(Error::NotInstalled)?;
    stop_stale(&layout).await;
    let mut delay = Duration::from_secs(1);
    let mut first = true;
    loop {
        let mut child = spawn(&layout, &binary)?;
        let started = tokio::time::Instant::now();
        match wait_answering(&layout, &mut child, Duration::from_secs(30)).await {
            Ok(()) => {
                tracing::info!(socket = %layout.socket.display(), pid = child.id().unwrap_or(0), "containerd ready");
                let _ = ready.send(true);
            }
            Err(e) if first => {
                let _ = child.kill().await;
                return Err(e.into());
            }
            Err(e) => tracing::warn!(error = %e, "containerd did not come up"),
        }
        first = false;
        tokio::select! {
            status = child.wait() => {
                let _ = ready.send(false);
                tracing::warn!(status = ?status.ok(), log = %layout.log.display(), "containerd exited; restarting");
                if started.elapsed() > Duration::from_secs(60) {
                    delay = Duration::from_secs(1);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            _ = shutdown.cancelled() => {
                let _ = ready.send(false);
                stop_child(&mut child).await;
                let _ = std::fs::remove_file(pid_file(&layout));
                return Ok(());
            }
        }
    }
}

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
