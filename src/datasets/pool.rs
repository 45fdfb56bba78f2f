//! Validating stored uploads in the background, on a bounded pool.
//!
//! At most `concurrency` datasets are validated at once (a semaphore; the
//! others report `queued`), and their images decode on a rayon pool of
//! their own whose threads run at a lower CPU priority, not on the global
//! pool that decodes `/predict` images: a 10,000-photo upload takes the
//! cores only when requests leave them idle.
//!
//! Each running validation has a watch channel carrying its record, so
//! that server-sent events and requests waiting for the outcome (an inline
//! `dataset` part of `POST /jobs`) see progress and the end at once; the
//! database stays the record of truth (progress is written every second).
//!
//! A parser a user's file reaches must not take the process down: the
//! ingestion threads have a large stack ([`INGEST_STACK_BYTES`]) and each
//! validation runs inside `catch_unwind` ([`Validations::install`]), so a
//! panic fails that dataset alone. What neither can catch (an overflow of
//! even that stack, an abort) is bounded by the count of starts kept in
//! the row (`--max-validation-starts`, see [`super::quarantine`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use super::record::DatasetRecord;
use crate::data::progress::IngestProgress;

/// The background validation pool. Cheap to clone.
#[derive(Clone)]
pub struct Validations {
    permits: Arc<Semaphore>,
    pool: Arc<rayon::ThreadPool>,
    live: Arc<Mutex<HashMap<Uuid, watch::Sender<DatasetRecord>>>>,
    /// Set on shutdown: running validations stop at the next image and
    /// stay `validating` (with their uploads), to run again at the next
    /// start; blocking threads still decoding would hold the exit.
    stopping: Arc<AtomicBool>,
    /// The validation tasks, so that shutdown can wait for them to leave
    /// nothing behind in `tmp/`.
    tasks: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Validations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validations")
            .field("available", &self.permits.available_permits())
            .field("threads", &self.pool.current_num_threads())
            .finish()
    }
}

/// The stack of each ingestion thread. Parsers reached by a user's file
/// recurse (a Parquet schema nested thousands deep overflowed the 2 MiB
/// default); the memory is reserved, not used, until a thread needs it.
pub const INGEST_STACK_BYTES: usize = 64 << 20;

/// How often a running validation publishes its progress to subscribers,
/// and how often it writes it to the database.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

impl Validations {
    /// `concurrency` datasets at once, their images decoded by `threads`
    /// threads at nice +10 (both at least 1).
    pub fn new(concurrency: usize, threads: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("vitrine-ingest-{i}"))
            .stack_size(INGEST_STACK_BYTES)
            .start_handler(|_| {
                crate::torch_info::threads::lower_thread_priority();
            })
            .build()?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            pool: Arc::new(pool),
            live: Default::default(),
            stopping: Default::default(),
            tasks: Default::default(),
        })
    }

    /// Registers a validation about to start; false when one of this
    /// dataset already runs here.
    pub(super) fn register(&self, record: &DatasetRecord) -> bool {
        let mut live = self.live.lock().unwrap();
        if live.contains_key(&record.id) {
            return false;
        }
        live.insert(record.id, watch::channel(record.clone()).0);
        true
    }

    /// Sends the record to the subscribers of its validation.
    pub(super) fn publish(&self, record: &DatasetRecord) {
        if let Some(tx) = self.live.lock().unwrap().get(&record.id) {
            tx.send_replace(record.clone());
        }
    }

    /// Sends the final record and forgets the validation.
    pub(super) fn finish(&self, record: &DatasetRecord) {
        if let Some(tx) = self.live.lock().unwrap().remove(&record.id) {
            tx.send_replace(record.clone());
        }
    }

    /// The live record of a validation running here (`None`: none runs;
    /// read the database). Subscribe before reading the database, so that
    /// no change falls in between.
    pub fn subscribe(&self, id: Uuid) -> Option<watch::Receiver<DatasetRecord>> {
        self.live.lock().unwrap().get(&id).map(|tx| tx.subscribe())
    }

    /// Runs a validation task, tracked for [`stopped`](Self::stopped).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Waits until every validation task has ended (after [`stop`](Self::stop):
    /// each stops at its next image and removes its work directory).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Stops every validation at its next image (shutdown).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Counters for a new validation, tied to [`stop`](Self::stop).
    pub(super) fn progress(&self) -> IngestProgress {
        IngestProgress::with_stop(self.stopping.clone())
    }

    /// Waits for a validation slot.
    pub(super) async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Runs `work` on the ingestion pool (from a blocking thread); a
    /// panic in it (or in any of its parallel parts) is caught and
    /// returned as its message, the pool left working.
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> Result<R, String> {
        self.pool
            .install(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)))
            .map_err(|payload| panic_message(payload.as_ref()))
    }
}

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    crate::error::panic_message(payload).unwrap_or_else(|| "a panic without a message".into())
}

/// Throttles progress reports: publishing (cheap) and database writes.
pub(super) struct Throttle {
    last_write: Instant,
}

impl Throttle {
    pub fn new() -> Self {
        Self {
            last_write: Instant::now(),
        }
    }

    /// True when a database write is due (and counts it as done).
    pub fn write_due(&mut self) -> bool {
        if self.last_write.elapsed() >= WRITE_EVERY {
            self.last_write = Instant::now();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// A panic inside a validation, even in one of its parallel parts, is
    /// that validation's error; the pool keeps working.
    #[test]
    fn a_panic_in_a_validation_is_contained() {
        let pool = Validations::new(1, 2).unwrap();
        let caught = pool.install(|| {
            (0..64)
                .into_par_iter()
                .map(|i| {
                    if i == 33 {
                        panic!("parser bug at {i}")
                    } else {
                        i
                    }
                })
                .sum::<i32>()
        });
        assert_eq!(caught.unwrap_err(), "parser bug at 33");
        assert_eq!(pool.install(|| 2 + 2), Ok(4));
    }

    /// Recursion far deeper than a default 2 MiB thread stack allows
    /// (about 24 MiB of frames) runs on the ingestion threads.
    #[test]
    fn ingestion_threads_have_a_large_stack() {
        fn depth(n: u32) -> u64 {
            let frame = std::hint::black_box([n as u8; 4096]);
            if n == 0 {
                return u64::from(frame[0]);
            }
            depth(n - 1) + u64::from(std::hint::black_box(frame)[7])
        }
        let pool = Validations::new(1, 1).unwrap();
        assert!(pool.install(|| depth(6_000)).is_ok());
    }
}
