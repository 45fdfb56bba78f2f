//! Live job events, fanned out to server-sent-event subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// One event about one job: `kind` is the SSE event name, `data` its JSON.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
    /// True for the last event of a job (its terminal status).
    #[serde(skip)]
    pub terminal: bool,
}

/// Per-job broadcast channels, created on first use and dropped when the
/// job ends; on PostgreSQL also relayed to the other nodes
/// ([`super::relay`]).
#[derive(Clone, Default)]
pub struct EventHub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<JobEvent>>>>,
    relay: Arc<OnceLock<mpsc::UnboundedSender<(String, JobEvent)>>>,
}

impl EventHub {
    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<JobEvent> {
        self.channels
            .lock()
            .unwrap()
            .entry(job_id.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe()
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
        self.channels.lock().unwrap().contains_key(job_id)
    }

    /// Sets where published events are relayed; false if already set.
    pub(crate) fn relay_to(&self, tx: mpsc::UnboundedSender<(String, JobEvent)>) -> bool {
        self.relay.set(tx).is_ok()
    }

    /// Sends to the subscribers of this process only.
    pub fn publish_here(&self, job_id: &str, event: JobEvent) {
        let mut map = self.channels.lock().unwrap();
        if let Some(tx) = map.get(job_id) {
            let terminal = event.terminal;
            let _ = tx.send(event);
            if terminal || tx.receiver_count() == 0 {
                map.remove(job_id);
            }
        }
    }
}
