//! Live job events, fanned out to server-sent-event subscribers.
//!
//! What a client can make grow here is bounded: a channel exists only while
//! someone follows a job (a follower's [`Subscription`] removes the channel
//! when it is the last to leave) and until the job ends (its terminal event
//! removes it), and the HTTP layer subscribes only to jobs that exist and
//! caps the streams open at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

/// Events a slow follower may fall behind before it skips some (it then
/// reads the job's state from the database, as every stream does now and
/// then). Each channel allocates its slots up front.
const CHANNEL_CAPACITY: usize = 256;

/// One event about one job: `kind` is the SSE event name, `data` its JSON.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
    /// True for the last event of a job (its terminal status).
    #[serde(skip)]
    pub terminal: bool,
}

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<JobEvent>>>>;

/// Per-job broadcast channels, created on first subscription and dropped
/// when the job ends or its last follower leaves; on PostgreSQL also
/// relayed to the other nodes ([`super::relay`]).
#[derive(Clone, Default)]
pub struct EventHub {
    channels: Channels,
    relay: Arc<OnceLock<mpsc::UnboundedSender<(String, JobEvent)>>>,
}

/// A follower of one job: receives its events; dropping it leaves, and the
/// last follower to leave frees the job's channel.
pub struct Subscription {
    /// `Some` until dropped: `Drop` lets go of the receiver before it
    /// counts the receivers left.
    rx: Option<broadcast::Receiver<JobEvent>>,
    job_id: String,
    channels: Channels,
}

impl Subscription {
    /// The next event; `Lagged` when this follower fell behind, `Closed`
    /// when the channel went away (the job ended).
    pub async fn recv(&mut self) -> Result<JobEvent, RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(RecvError::Closed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Under the lock, so that no subscriber joins between the count and
        // the removal.
        let mut map = lock(&self.channels);
        drop(self.rx.take());
        if map
            .get(&self.job_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.job_id);
        }
    }
}

fn lock(channels: &Channels) -> MutexGuard<'_, HashMap<String, broadcast::Sender<JobEvent>>> {
    channels
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EventHub {
    /// Follows `job_id`. Callers check first that the job exists: the
    /// channel lives as long as a subscription to it does.
    pub fn subscribe(&self, job_id: &str) -> Subscription {
        let rx = lock(&self.channels)
            .entry(job_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
            job_id: job_id.to_string(),
            channels: self.channels.clone(),
        }
    }

    /// Sends to current subscribers here (none listening is fine) and, when
    /// relaying, to the other nodes.
    pub fn publish(&self, job_id: &str, event: JobEvent) {
        if let Some(relay) = self.relay.get() {
            let _ = relay.send((job_id.to_string(), event.clone()));
        }
        self.publish_here(job_id, event);
    }

    /// Whether anyone here follows `job_id`.
    pub fn is_followed(&self, job_id: &str) -> bool {
        lock(&self.channels).contains_key(job_id)
    }

    /// How many jobs have a channel here (followed and not ended).
    pub fn len(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Whether no job has a channel here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets where published events are relayed; false if already set.
    pub(crate) fn relay_to(&self, tx: mpsc::UnboundedSender<(String, JobEvent)>) -> bool {
        self.relay.set(tx).is_ok()
    }

    /// Sends to the subscribers of this process only.
    pub fn publish_here(&self, job_id: &str, event: JobEvent) {
        let mut map = lock(&self.channels);
        if let Some(tx) = map.get(job_id) {
            let terminal = event.terminal;
            let _ = tx.send(event);
            if terminal || tx.receiver_count() == 0 {
                map.remove(job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(terminal: bool) -> JobEvent {
        JobEvent {
            kind: "status",
            data: serde_json::json!({}),
            terminal,
        }
    }

    /// The channel lives while someone follows: the last follower to leave
    /// frees it, an earlier one does not.
    #[test]
    fn the_last_follower_to_leave_frees_the_channel() {
        let hub = EventHub::default();
        let a = hub.subscribe("j");
        let b = hub.subscribe("j");
        assert_eq!(hub.len(), 1);
        drop(a);
        assert!(hub.is_followed("j"));
        drop(b);
        assert!(hub.is_empty());
        // Publishing to nobody creates nothing.
        hub.publish("j", event(false));
        assert!(hub.is_empty());
    }

    /// A terminal event reaches the follower and frees the channel; the
    /// follower leaving afterwards touches a newer channel of the same job
    /// only if it has no followers.
    #[tokio::test]
    async fn the_end_of_a_job_frees_its_channel() {
        let hub = EventHub::default();
        let mut old = hub.subscribe("j");
        hub.publish("j", event(true));
        assert!(hub.is_empty());
        assert!(old.recv().await.unwrap().terminal);
        let newer = hub.subscribe("j");
        drop(old);
        assert!(hub.is_followed("j"));
        drop(newer);
        assert!(hub.is_empty());
    }
}
