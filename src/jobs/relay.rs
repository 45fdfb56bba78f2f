//! Live job events across nodes (PostgreSQL only).
//!
//! A job's events are published where it trains, on a worker node, while
//! clients follow `/jobs/{id}/events` on an API node. On PostgreSQL each
//! process sends the events it publishes as `NOTIFY vitrine_job_events`
//! and relays those of other processes into its own [`EventHub`], so a
//! stream on any node sees the progress and epochs of a job training on
//! any other. On SQLite one process owns the database and trains its jobs:
//! nothing to relay.
//!
//! A notification carries at most 8000 bytes. An event too large for one
//! (an epoch with the confusion matrix of many classes) goes out without
//! its data, and the receiving node reads it back from the job's row: the
//! worker writes the epoch's metrics before it publishes the event.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::events::{EventHub, JobEvent};
use crate::db::{Backend, Db};

/// The channel events travel on.
pub const CHANNEL: &str = "vitrine_job_events";

/// Payloads up to this size carry the event's data (PostgreSQL's limit is
/// 8000 bytes).
const MAX_PAYLOAD: usize = 7900;

/// The kinds of event that travel; others stay on their node.
const KINDS: [&str; 3] = ["status", "progress", "epoch"];

/// One event on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// The process that published it, which ignores its own.
    origin: String,
    job: String,
    kind: String,
    terminal: bool,
    /// `None` when the event was too large: read it from the job's row.
    data: Option<serde_json::Value>,
}

/// Starts relaying this process's events out and other processes' events
/// in, until `shutdown`. Returns false (and does nothing) on SQLite.
pub fn start(db: &Db, hub: &EventHub, shutdown: CancellationToken) -> bool {
    if Backend::of(db) != Backend::Postgres {
        return false;
    }
    let origin = uuid::Uuid::now_v7().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    if !hub.relay_to(tx) {
        return true; // already relaying
    }
    tokio::spawn(send(db.clone(), origin.clone(), rx, shutdown.clone()));
    let url = db.connect_options().database_url.to_string();
    tokio::spawn(receive(url, db.clone(), hub.clone(), origin, shutdown));
    true
}

/// Sends the events published here, in order, one NOTIFY each.
async fn send(
    db: Db,
    origin: String,
    mut rx: mpsc::UnboundedReceiver<(String, JobEvent)>,
    shutdown: CancellationToken,
) {
    loop {
        let (job, event) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = rx.recv() => match next { Some(e) => e, None => return },
        };
        if !KINDS.contains(&event.kind) {
            continue;
        }
        let payload = encode(&origin, &job, &event);
        if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&db)
            .await
        {
            tracing::warn!(error = %e, job = %job, "relaying a job event failed");
        }
    }
}

fn encode(origin: &str, job: &str, event: &JobEvent) -> String {
    let mut wire = Wire {
        origin: origin.into(),
        job: job.into(),
        kind: event.kind.into(),
        terminal: event.terminal,
        data: Some(event.data.clone()),
    };
    let full = serde_json::to_string(&wire).unwrap_or_default();
    if full.len() <= MAX_PAYLOAD {
        return full;
    }
    wire.data = None;
    serde_json::to_string(&wire).unwrap_or_default()
}

/// Listens for other processes' events and publishes them here;
/// reconnects with backoff when the connection drops.
async fn receive(url: String, db: Db, hub: EventHub, origin: String, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match super::wake::subscribe(&url, CHANNEL).await {
            Ok(mut listener) => {
                backoff = Duration::from_millis(500);
                loop {
                    let received = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = listener.try_recv() => r,
                    };
                    match received {
                        Ok(Some(n)) => deliver(&db, &hub, &origin, n.payload()).await,
                        Ok(None) => tracing::warn!("job events: connection lost, reconnecting"),
                        Err(e) => {
                            tracing::warn!(error = %e, "job events: listener failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "job events: cannot listen"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn deliver(db: &Db, hub: &EventHub, origin: &str, payload: &str) {
    let Ok(wire) = serde_json::from_str::<Wire>(payload) else {
        tracing::warn!("job events: an unreadable notification was ignored");
        return;
    };
    let Some(kind) = KINDS.iter().copied().find(|k| *k == wire.kind) else {
        return;
    };
    if wire.origin == origin || !hub.is_followed(&wire.job) {
        return;
    }
    let data = match wire.data {
        Some(data) => data,
        None => match last_epoch(db, &wire.job).await {
            Some(data) => data,
            None => return,
        },
    };
    hub.publish_here(
        &wire.job,
        JobEvent {
            kind,
            data,
            terminal: wire.terminal,
        },
    );
}

/// The newest epoch recorded for `job`: what a too-large epoch event held.
async fn last_epoch(db: &Db, job: &str) -> Option<serde_json::Value> {
    let row = crate::store::jobs::get(db, job).await.ok()??;
    match serde_json::from_str(&row.metrics).ok()? {
        serde_json::Value::Array(mut list) => list.pop(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_event_travels_without_its_data() {
        let small = JobEvent {
            kind: "epoch",
            data: serde_json::json!({"epoch": 1}),
            terminal: false,
        };
        let wire: Wire = serde_json::from_str(&encode("o", "j", &small)).unwrap();
        assert_eq!(wire.data, Some(serde_json::json!({"epoch": 1})));
        let big = JobEvent {
            data: serde_json::json!({"epoch": 2, "confusion": vec![vec![7u32; 100]; 100]}),
            ..small
        };
        let payload = encode("o", "j", &big);
        assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
        let wire: Wire = serde_json::from_str(&payload).unwrap();
        assert_eq!((wire.kind.as_str(), wire.data), ("epoch", None));
    }
}
