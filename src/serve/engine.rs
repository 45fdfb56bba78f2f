//! One inference thread per device. It owns the loaded models (a small LRU)
//! and batches waiting requests: after the first request arrives it keeps
//! collecting for up to `max_wait` or until `max_batch` images, then runs
//! one forward pass per model and splits the results back.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

use crate::model::Model;

/// Images of one request for one model, and where the scores go.
pub struct Job {
    pub model_id: String,
    pub model_dir: PathBuf,
    /// [n, 3, H, W], preprocessed.
    pub pixels: Tensor,
    /// Raw logits [n, num_labels], or why not.
    pub reply: oneshot::Sender<Result<Tensor, String>>,
}

/// Tuning of one engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Requests waiting at most; beyond that callers are refused.
    pub queue: usize,
    /// Models kept loaded.
    pub cache: usize,
}

/// The handle to an engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    depth: Arc<AtomicI64>,
    pub device: Device,
}

/// Why a request could not be queued.
pub enum Refused {
    /// The queue is full: answer 429.
    Busy,
    /// The engine thread is gone.
    Stopped,
}

impl Engine {
    pub fn start(device: Device, config: EngineConfig, batch_sizes: Histogram) -> Self {
        let (tx, rx) = sync_channel(config.queue.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let thread_depth = depth.clone();
        std::thread::Builder::new()
            .name(format!(
                "vitrine-infer-{}",
                crate::torch_info::device_name(device)
            ))
            .spawn(move || EngineThread::new(device, config, thread_depth, batch_sizes).run(rx))
            .expect("spawning the inference thread");
        Self { tx, depth, device }
    }

    /// Requests queued or in the current batch.
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => Refused::Busy,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }
}

struct Loaded {
    id: String,
    model: Model,
}

struct EngineThread {
    device: Device,
    config: EngineConfig,
    depth: Arc<AtomicI64>,
    batch_sizes: Histogram,
    /// Most recently used last.
    models: VecDeque<Loaded>,
}

impl EngineThread {
    fn new(
        device: Device,
        config: EngineConfig,
        depth: Arc<AtomicI64>,
        batch_sizes: Histogram,
    ) -> Self {
        Self {
            device,
            config,
            depth,
            batch_sizes,
            models: VecDeque::new(),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let _guard = tch::no_grad_guard();
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            let mut images = images_of(&jobs[0]);
            let deadline = Instant::now() + self.config.max_wait;
            while images < self.config.max_batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => {
                        images += images_of(&job);
                        jobs.push(job);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let n = jobs.len() as i64;
            self.run_batch(jobs);
            self.depth.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Groups the jobs by model and runs each group as one batch.
    fn run_batch(&mut self, mut jobs: Vec<Job>) {
        while !jobs.is_empty() {
            let id = jobs[0].model_id.clone();
            let (group, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.model_id == id);
            jobs = rest;
            let dir = group[0].model_dir.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.forward(&id, &dir, &group)
            }))
            .unwrap_or_else(|_| Err("inference crashed".to_string()));
            match result {
                Ok(parts) => {
                    for (job, logits) in group.into_iter().zip(parts) {
                        let _ = job.reply.send(Ok(logits));
                    }
                }
                Err(msg) => {
                    tracing::error!(model = %id, error = %msg, "inference failed");
                    for job in group {
                        let _ = job.reply.send(Err(msg.clone()));
                    }
                }
            }
        }
    }

    fn forward(
        &mut self,
        id: &str,
        dir: &std::path::Path,
        group: &[Job],
    ) -> Result<Vec<Tensor>, String> {
        let device = self.device;
        let batch_sizes = self.batch_sizes.clone();
        let model = self.model(id, dir)?;
        let sizes: Vec<i64> = group.iter().map(|j| j.pixels.size()[0]).collect();
        let x =
            Tensor::cat(&group.iter().map(|j| &j.pixels).collect::<Vec<_>>(), 0).to_device(device);
        batch_sizes.observe(x.size()[0] as f64);
        let logits = model
            .net
            .forward_t(&x, false)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        Ok(logits.split_with_sizes(&sizes, 0))
    }

    /// The loaded model `id`, loading it (and evicting the least recently
    /// used) if needed.
    fn model(&mut self, id: &str, dir: &std::path::Path) -> Result<&Model, String> {
        if let Some(pos) = self.models.iter().position(|m| m.id == id) {
            let m = self.models.remove(pos).unwrap();
            self.models.push_back(m);
        } else {
            let started = Instant::now();
            let model = crate::model::load_pretrained(dir, self.device, None)
                .map_err(|e| format!("loading model {id}: {e:#}"))?;
            tracing::info!(model = %id, device = ?self.device, ms = started.elapsed().as_millis() as u64, "model loaded for inference");
            while self.models.len() >= self.config.cache.max(1) {
                self.models.pop_front();
            }
            self.models.push_back(Loaded {
                id: id.to_string(),
                model,
            });
        }
        Ok(&self.models.back().unwrap().model)
    }
}

fn images_of(job: &Job) -> usize {
    job.pixels.size().first().copied().unwrap_or(1) as usize
}
