//! Live job events, fanned out to server-sent-event subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

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
/// job ends.
#[derive(Clone, Default)]
pub struct EventHub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<JobEvent>>>>,
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

    /// Sends to current subscribers (none listening is fine).
    pub fn publish(&self, job_id: &str, event: JobEvent) {
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
