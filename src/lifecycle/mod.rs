//! The supervisor of long-lived tasks: each is named, gets the shared cancellation token, and
//! is awaited. The first task to fail (or a signal) starts an orderly shutdown of the rest,
//! bounded by a grace period (k3s: a background failure requests shutdown, it does not exit).
pub mod health;

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Supervisor {
    tasks: JoinSet<(String, anyhow::Result<()>)>,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            shutdown,
            grace: Duration::from_secs(10),
        }
    }

    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a named task; it must return when the token is cancelled.
    pub fn spawn<F>(&mut self, name: &str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.to_string();
        tracing::debug!(task = %name, "starting");
        self.tasks.spawn(async move { (name, fut.await) });
    }

    /// Waits until every task has ended. The first failure, or an early end while the others
    /// run, cancels the rest; returns the first error.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        if self.tasks.is_empty() {
            self.shutdown.cancelled().await;
            return Ok(());
        }
        let next = tokio::select! {
            n = self.tasks.join_next() => Some(n),
            _ = self.shutdown.cancelled() => None,
        };
        if let Some(next) = next {
            let Some(joined) = next else { return Ok(()) };
            match joined {
                Ok((name, Ok(()))) => {
                    tracing::info!(task = %name, "task ended; shutting down");
                }
                Ok((name, Err(e))) => {
                    tracing::error!(task = %name, error = %format!("{e:#}"), "task failed; shutting down");
                    first_error = Some(e.context(format!("{name} failed")));
                }
                Err(e) => {
                    tracing::error!(error = %e, "task panicked; shutting down");
                    first_error = Some(anyhow::anyhow!("a task panicked: {e}"));
                }
            }
        }
        self.shutdown.cancel();
        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok((name, Err(e))) = joined {
                    tracing::warn!(task = %name, error = %format!("{e:#}"), "task failed while stopping");
                    if first_error.is_none() {
                        first_error = Some(e.context(format!("{name} failed")));
                    }
                }
            }
        };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!("tasks did not stop within the grace period; abandoning them");
            self.tasks.abort_all();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = term.recv() => tracing::info!("terminated; shutting down"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    });
}

/// How often freed heap memory is handed back to the kernel.
pub const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Hands memory the allocator holds free back to the kernel every `period` until `stop`.
/// glibc returns freed memory only from the top of the heap by itself; after a burst (many
/// LISTs decoded at once) the freed middle of the heap would otherwise stay resident, so
/// RSS would show the peak, not what is live.
pub async fn return_freed_memory(
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(period) => {}
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free pages of glibc's own heap; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
