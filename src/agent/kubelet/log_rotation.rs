//! Container log rotation, as the kubelet's container log manager does it: a running
//! container's CRI log file over 10 MiB is renamed to `<n>.log.<timestamp>` and the runtime
//! asked to reopen its log, and no container keeps more than 5 files (the current one and 4
//! rotated), the oldest going first.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Kubelet;
use crate::agent::cri::State;

/// kubelet's containerLogMaxSize and containerLogMaxFiles defaults.
pub const MAX_SIZE: u64 = 10 << 20;
pub const MAX_FILES: usize = 5;
const EVERY: Duration = Duration::from_secs(10);

/// The rotated files of `log` (`<log>.<timestamp>`), oldest first.
pub fn rotated(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.ends_with(".tmp")
        })
        .map(|e| e.path())
        .collect();
    // The timestamp suffix sorts in time order.
    files.sort();
    files
}

/// Removes the oldest rotated files beyond `max_files - 1`.
fn prune(log: &Path, max_files: usize) {
    let files = rotated(log);
    let keep = max_files.saturating_sub(1);
    for old in files.iter().take(files.len().saturating_sub(keep)) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::debug!(file = %old.display(), error = %e, "cannot remove a rotated log");
        }
    }
}

fn stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}.{:09}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    )
}

/// One pass over the running containers.
async fn rotate_all(k: &Kubelet) {
    let Ok(containers) = k.cri.list_containers().await else {
        return;
    };
    for c in containers.into_iter().filter(|c| c.state == State::Running) {
        let Ok(detail) = k.cri.container_status(&c.id).await else {
            continue;
        };
        if detail.log_path.is_empty() {
            continue;
        }
        let log = PathBuf::from(&detail.log_path);
        let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        if size > MAX_SIZE {
            let target = PathBuf::from(format!("{}.{}", log.display(), stamp()));
            if let Err(e) = std::fs::rename(&log, &target) {
                tracing::warn!(file = %log.display(), error = %e, "cannot rotate a container log");
                continue;
            }
            if let Err(e) = k.cri.reopen_container_log(&c.id).await {
                // Put it back so the container keeps writing where the logs are read.
                tracing::warn!(container = %c.id, error = %e, "the runtime did not reopen the log; rotation undone");
                let _ = std::fs::rename(&target, &log);
                continue;
            }
            tracing::debug!(container = %c.id, file = %log.display(), size, "container log rotated");
        }
        prune(&log, MAX_FILES);
    }
}

/// Rotates container logs every 10 s until `shutdown`.
pub async fn run(k: Arc<Kubelet>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(EVERY) => rotate_all(&k).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_rotated_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "current").unwrap();
        for i in 0..7 {
            std::fs::write(
                dir.path()
                    .join(format!("0.log.2024010{i}-000000.000000000")),
                "old",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("1.log"), "another attempt").unwrap();
        prune(&log, MAX_FILES);
        let left = rotated(&log);
        assert_eq!(left.len(), 4);
        assert!(left[0].ends_with("0.log.20240103-000000.000000000"));
        assert!(log.exists() && dir.path().join("1.log").exists());
        assert!(stamp().len() > 15);
    }
}
