//! The lease reaper: jobs whose worker stopped renewing its lease (a node
//! killed, a network cut) go back to the queue, or fail once their attempts
//! are spent. Workers reap before each claim, but a node whose workers are
//! all busy training claims nothing for a long time, so every node (API and
//! worker) also runs this task. Reaping is one conditional `UPDATE` on
//! expired leases: running it on many nodes at once changes nothing twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::JobQueue;

/// How often the reaper looks. Fixed, not derived from this node's
/// `--job-lease-secs`: the lease a job holds was set by the worker that
/// claimed it, on another node perhaps. One indexed `UPDATE` a second per
/// node costs the database nothing.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Reaps expired leases every [`PERIOD`] until `shutdown`; wakes this
/// node's idle workers when a job went back to the queue.
pub async fn run(queue: JobQueue, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => match crate::store::jobs::reap_expired(&queue.db).await {
                Ok((0, 0)) => {}
                Ok((requeued, failed)) => {
                    tracing::info!(requeued, failed, "expired leases reaped");
                    queue.notify.notify_waiters();
                }
                Err(e) => tracing::warn!(error = ?e, "reaping expired leases failed"),
            },
        }
    }
}
