//! How idle workers learn that there may be work.
//!
//! A submission in this process wakes them at once ([`Wake::notify_waiters`]).
//! Work that comes from elsewhere is found differently per backend:
//! - SQLite: one process owns the file, so the workers poll it twice a
//!   second;
//! - PostgreSQL: other nodes submit jobs, end them and validate datasets.
//!   Triggers (migrations/postgres) `NOTIFY vitrine_jobs` when a job may have
//!   become claimable, and one listener task per process (started by the
//!   first wait) wakes the local workers. Polling stays as a slow fallback
//!   for what a dropped listener connection missed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db};

/// The channel the PostgreSQL triggers notify.
pub const CHANNEL: &str = "vitrine_jobs";

/// How often idle workers look for work on SQLite.
pub const SQLITE_POLL: Duration = Duration::from_millis(500);

/// How often idle workers look for work on PostgreSQL, where notifications
/// wake them: only a fallback.
pub const POSTGRES_POLL: Duration = Duration::from_secs(5);

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A submission here, or a notification from PostgreSQL.
    Signal,
    /// The poll interval passed.
    Poll,
    /// The shutdown token fired.
    Shutdown,
}

/// The wake-ups of this process's workers. Cheap to clone; clones share
/// one state.
#[derive(Clone, Default)]
pub struct Wake {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    notify: Notify,
    /// The poll interval when not the backend's default (tests).
    poll: Option<Duration>,
    /// Whether the PostgreSQL listener task was started.
    started: AtomicBool,
    /// Whether it is subscribed to [`CHANNEL`] now.
    listening: AtomicBool,
    /// Notifications received from PostgreSQL.
    notifications: AtomicU64,
}

impl Wake {
    /// A wake whose poll interval is `poll` on either backend.
    pub fn with_poll(poll: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                poll: Some(poll),
                ..Default::default()
            }),
        }
    }

    /// Wakes every worker of this process now waiting (or about to wait:
    /// see [`Wake::wait`]).
    pub fn notify_waiters(&self) {
        self.inner.notify.notify_waiters();
    }

    /// Wakes one worker of this process, now or at its next wait (a job
    /// requeued here for a retry).
    pub fn notify_one(&self) {
        self.inner.notify.notify_one();
    }

    /// How many notifications PostgreSQL has delivered to this process.
    pub fn notifications(&self) -> u64 {
        self.inner.notifications.load(Ordering::Relaxed)
    }

    /// Whether the PostgreSQL listener is subscribed now.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// A future that ends at the next wake-up, the poll interval, or
    /// shutdown. It counts wake-ups from the moment it is created, not first
    /// polled: create it before looking for work, and a job queued while the
    /// worker looked is not missed. On PostgreSQL the first call starts the
    /// listener (it stops with `shutdown`).
    pub fn wait<'a>(
        &'a self,
        db: &Db,
        shutdown: &'a CancellationToken,
    ) -> impl Future<Output = Woken> + Send + 'a {
        let notified = self.inner.notify.notified();
        let backend = Backend::of(db);
        if backend == Backend::Postgres && !self.inner.started.swap(true, Ordering::SeqCst) {
            let url = db.connect_options().database_url.to_string();
            tokio::spawn(listen(url, Arc::downgrade(&self.inner), shutdown.clone()));
        }
        let poll = self.inner.poll.unwrap_or(match backend {
            Backend::Sqlite => SQLITE_POLL,
            Backend::Postgres => POSTGRES_POLL,
        });
        async move {
            tokio::select! {
                _ = notified => Woken::Signal,
                _ = tokio::time::sleep(poll) => Woken::Poll,
                _ = shutdown.cancelled() => Woken::Shutdown,
            }
        }
    }
}

/// The listener task: `LISTEN vitrine_jobs` on a connection of its own,
/// each notification waking the workers; reconnects (with backoff) when the
/// connection drops, and wakes the workers once after each reconnection for
/// whatever was notified meanwhile. Ends with `shutdown`, or when the
/// process no longer holds the [`Wake`].
async fn listen(url: String, inner: Weak<Inner>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match subscribe(&url, CHANNEL).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(500);
                let Some(state) = inner.upgrade() else { return };
                // What was notified before we listened is unknown: look.
                state.notify.notify_waiters();
                state.listening.store(true, Ordering::Relaxed);
                drop(state);
                tracing::debug!(channel = CHANNEL, "listening for job notifications");
                loop {
                    let received = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = listener.try_recv() => r,
                    };
                    let Some(state) = inner.upgrade() else { return };
                    match received {
                        Ok(Some(_)) => {
                            state.notifications.fetch_add(1, Ordering::Relaxed);
                            state.notify.notify_waiters();
                        }
                        // The connection dropped; the next `try_recv`
                        // reconnects and subscribes again.
                        Ok(None) => {
                            tracing::warn!("job notifications: connection lost, reconnecting");
                            state.notify.notify_waiters();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "job notifications: listener failed; workers poll until it is back");
                            state.listening.store(false, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "job notifications: cannot listen; workers poll until it can");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// A connection of its own listening on `channel`.
pub(crate) async fn subscribe(url: &str, channel: &str) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
