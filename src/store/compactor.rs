//! Automatic compaction: every interval, the leader compacts history older than the revision
//! that was current one interval ago (kube-apiserver's own 5-minute compaction does the same),
//! so watchers reconnecting within an interval never see 410 Gone.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Error, Store};

pub async fn run(
    store: Store,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if interval.is_zero() {
        return Ok(());
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut previous = store.current_revision();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let current = store.current_revision();
        if store.is_leader() && previous > store.status().compact_revision {
            match store.compact(previous).await {
                Ok(_) => tracing::info!(rev = previous, "compacted history"),
                Err(Error::Compacted { .. }) => {}
                Err(e) => tracing::warn!(rev = previous, error = %e, "compaction failed"),
            }
        }
        previous = current;
    }
}
