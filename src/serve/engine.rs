//! One inference thread per device. It owns the loaded models (a small LRU)
//! and batches waiting requests: after the first request arrives it takes
//! every request already queued and, while others are still being decoded
//! (`Arrivals`), waits for them up to `max_wait` or until `max_batch`
//! images; then it runs one forward pass per model and splits the results
//! back. A lone request (nothing queued, nothing on its way) runs at once
//! instead of paying `max_wait`.
//!
//! A fatal device error (see [`crate::devices`]) takes the engine's device
//! out of service: the batch that hit it and every request still queued
//! are answered [`EngineError::DeviceDown`], and the thread ends, so no
//! request runs in a dead CUDA context; engines of other devices continue.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;

use crate::devices::{is_fatal_device_error, DeviceHealth};
use crate::model::Model;
use crate::serve::adapters::{AdapterCache, AdapterGauges};
use crate::torchx::{AutocastDevice, AutocastGuard, FloatKind, Tf32Lease};

/// Images of one request for one model, and where the scores go.
pub struct Job {
    pub model_id: String,
    pub model_dir: PathBuf,
    /// [n, 3, H, W], preprocessed.
    pub pixels: Tensor,
    /// Raw logits [n, num_labels] or features [n, F] (as `output` asks),
    /// or why not.
    pub reply: oneshot::Sender<Result<Tensor, EngineError>>,
    /// Withdrawn when the engine receives the job.
    pub arrival: Option<ArrivalTicket>,
    /// What the job wants back.
    pub output: Output,
}

/// What a job wants from the forward pass. Jobs of both kinds for one
/// model share a batch: the backbone runs once, the head only when a job
/// wants logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The classifier's logits (`/predict`).
    #[default]
    Logits,
    /// The pooled representation the classifier reads
    /// (`ImageClassifier::features`; `/embed`).
    Features,
}

/// An fp32 tensor on the host.
fn host(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float).to_device(Device::Cpu)
}

/// Why an engine did not answer with logits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The model failed to load or run (logged; internal to the client).
    #[error("{0}")]
    Failed(String),
    /// The device is out of service after a fatal error (its name, the error).
    #[error("device {0} is out of service after a fatal error: {1}")]
    DeviceDown(String, String),
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
    /// Numeric precision of the forward passes on a GPU.
    pub precision: PredictPrecision,
    /// Bytes of LoRA adapters kept resident per device (their bases stay
    /// resident besides; `serve/adapters.rs`).
    pub adapter_cache_bytes: u64,
}

/// The precision of inference on a GPU (the CPU always runs fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PredictPrecision {
    /// bf16 autocast where the GPU has it (compute capability 8.0 and up),
    /// else fp16 autocast; fp32 on the CPU.
    #[default]
    Auto,
    /// bf16 autocast (GPU only).
    Bf16,
    /// fp32, with TF32 matmuls on GPUs that have them.
    Fp32,
}

impl PredictPrecision {
    /// The autocast dtype of forward passes on `device`; `None`: fp32.
    pub fn autocast(
        self,
        device: Device,
        capability: Option<(i32, i32)>,
    ) -> Option<(AutocastDevice, FloatKind)> {
        if !device.is_cuda() {
            return None;
        }
        match self {
            Self::Fp32 => None,
            Self::Bf16 => Some((AutocastDevice::Cuda, FloatKind::BF16)),
            Self::Auto if capability.is_some_and(|c| c >= (8, 0)) => {
                Some((AutocastDevice::Cuda, FloatKind::BF16))
            }
            Self::Auto => Some((AutocastDevice::Cuda, FloatKind::F16)),
        }
    }
}

/// How often a batch being gathered looks again at whether requests are
/// still on their way (one that failed to decode never arrives).
const ARRIVALS_POLL: Duration = Duration::from_millis(1);

/// Counts requests that are being decoded and will be queued soon, so an
/// engine knows whether waiting for a bigger batch can pay off.
#[derive(Clone, Default)]
pub struct Arrivals(Arc<AtomicUsize>);

impl Arrivals {
    /// Announces a request; the ticket withdraws it when dropped (by the
    /// engine when it receives the job, or when the request fails before).
    pub fn announce(&self) -> ArrivalTicket {
        self.0.fetch_add(1, Ordering::SeqCst);
        ArrivalTicket(self.0.clone())
    }

    /// Requests announced and not yet queued.
    pub fn pending(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A request on its way to an engine; see [`Arrivals::announce`].
pub struct ArrivalTicket(Arc<AtomicUsize>);

impl Drop for ArrivalTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The handle to an engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    depth: Arc<AtomicI64>,
    pub device: Device,
    /// The device's name (`cpu`, `cuda:0`), as [`DeviceHealth`] knows it.
    pub name: String,
}

/// Why a request could not be queued.
pub enum Refused {
    /// The queue is full: answer 429.
    Busy,
    /// The engine thread is gone.
    Stopped,
}

impl Engine {
    pub fn start(
        device: Device,
        config: EngineConfig,
        batch_sizes: Histogram,
        arrivals: Arrivals,
        health: DeviceHealth,
        adapter_gauges: AdapterGauges,
    ) -> Self {
        let (tx, rx) = sync_channel(config.queue.max(1));
        let depth = Arc::new(AtomicI64::new(0));
        let name = crate::torch_info::device_name(device);
        let mut thread = EngineThread::new(device, config, depth.clone(), batch_sizes, arrivals);
        thread.health = health;
        thread.adapters =
            AdapterCache::new(device, config.adapter_cache_bytes, Some(adapter_gauges));
        std::thread::Builder::new()
            .name(format!("vitrine-infer-{name}"))
            .spawn(move || thread.run(rx))
            .expect("spawning the inference thread");
        Self {
            tx,
            depth,
            device,
            name,
        }
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

/// Jobs with the same key run in one forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BatchKey {
    Model(String),
    /// LoRA models on this base directory.
    LoraBase(PathBuf),
}

struct Loaded {
    id: String,
    model: Model,
}

struct EngineThread {
    device: Device,
    /// `device`'s name in `health`.
    name: String,
    health: DeviceHealth,
    config: EngineConfig,
    depth: Arc<AtomicI64>,
    batch_sizes: Histogram,
    arrivals: Arrivals,
    /// Most recently used last.
    models: VecDeque<Loaded>,
    /// Autocast of forward passes, settled when the thread starts.
    autocast: Option<(AutocastDevice, FloatKind)>,
    /// LoRA models: shared bases, adapters by bytes.
    adapters: AdapterCache,
}

impl EngineThread {
    fn new(
        device: Device,
        config: EngineConfig,
        depth: Arc<AtomicI64>,
        batch_sizes: Histogram,
        arrivals: Arrivals,
    ) -> Self {
        Self {
            device,
            name: crate::torch_info::device_name(device),
            health: DeviceHealth::default(),
            config,
            depth,
            batch_sizes,
            arrivals,
            models: VecDeque::new(),
            autocast: None,
            adapters: AdapterCache::new(device, config.adapter_cache_bytes, None),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let _guard = tch::no_grad_guard();
        // On a GPU: a stream of this thread's own (training on the same GPU
        // runs on another), and TF32 for fp32 matmuls unless a strict job
        // forbids it for now.
        let _tf32 = match self.device.is_cuda() {
            true => match Tf32Lease::acquire(true) {
                Ok(lease) => Some(lease),
                Err(e) => {
                    tracing::warn!(error = %e, "TF32 could not be enabled");
                    None
                }
            },
            false => None,
        };
        if let Err(e) = crate::torchx::use_own_stream(self.device) {
            tracing::warn!(device = ?self.device, error = %e, "inference stays on the default stream");
        }
        let capability = match self.device {
            Device::Cuda(i) => crate::torchx::cuda_capability(i).ok().flatten(),
            _ => None,
        };
        self.autocast = self.config.precision.autocast(self.device, capability);
        tracing::info!(device = ?self.device, autocast = ?self.autocast, "inference engine ready");
        while let Ok(mut first) = rx.recv() {
            first.arrival = None;
            if !self.health.is_up(&self.name) {
                self.refuse(first);
                break;
            }
            let jobs = self.gather(first, &rx);
            let n = jobs.len() as i64;
            let jobs = without_abandoned(jobs);
            if !jobs.is_empty() {
                self.run_batch(jobs);
            }
            self.depth.fetch_sub(n, Ordering::Relaxed);
            if !self.health.is_up(&self.name) {
                break;
            }
        }
        if !self.health.is_up(&self.name) {
            // Answer what is queued; later submissions find the channel closed.
            while let Ok(job) = rx.try_recv() {
                self.refuse(job);
            }
            tracing::warn!(device = %self.name, "inference engine stopped: its device is out of service");
            // Freeing tensors into a dead CUDA context can only fail.
            std::mem::forget(std::mem::take(&mut self.models));
        }
    }

    /// The error every request on an out-of-service device gets.
    fn device_down(&self) -> EngineError {
        let reason = self
            .health
            .down()
            .into_iter()
            .find(|(d, _)| *d == self.name)
            .map_or_else(|| "fatal device error".to_string(), |(_, r)| r);
        EngineError::DeviceDown(self.name.clone(), reason)
    }

    fn refuse(&self, job: Job) {
        let _ = job.reply.send(Err(self.device_down()));
        self.depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// The batch that starts with `first`: every job already queued, then,
    /// while requests are announced (being decoded), those that arrive
    /// within `max_wait`; at most `max_batch` images (a job is never split).
    fn gather(&self, first: Job, rx: &Receiver<Job>) -> Vec<Job> {
        let mut images = images_of(&first);
        let mut jobs = vec![first];
        let deadline = Instant::now() + self.config.max_wait;
        while images < self.config.max_batch {
            let mut job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    if self.arrivals.pending() == 0 {
                        break;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left.min(ARRIVALS_POLL)) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            job.arrival = None;
            images += images_of(&job);
            jobs.push(job);
        }
        jobs
    }

    /// Groups the jobs by model (LoRA models: by base, so adapters of one
    /// base share the pass) and runs each group as one batch.
    fn run_batch(&mut self, mut jobs: Vec<Job>) {
        while !jobs.is_empty() {
            let id = jobs[0].model_id.clone();
            let key = self.batch_key(&jobs[0]);
            let (group, rest): (Vec<Job>, Vec<Job>) = std::mem::take(&mut jobs)
                .into_iter()
                .partition(|j| self.batch_key(j) == key);
            jobs = rest;
            let dir = group[0].model_dir.clone();
            if !self.health.is_up(&self.name) {
                for job in group {
                    let _ = job.reply.send(Err(self.device_down()));
                }
                continue;
            }
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &key {
                BatchKey::Model(_) => self.forward(&id, &dir, &group),
                BatchKey::LoraBase(base) => self.forward_adapters(base, &group),
            }))
            .unwrap_or_else(|panic| Err(panic_message(panic.as_ref())));
            match result {
                Ok(parts) => {
                    for (job, logits) in group.into_iter().zip(parts) {
                        let _ = job.reply.send(Ok(logits));
                    }
                }
                Err(msg) => {
                    tracing::error!(model = %id, device = %self.name, error = %msg, "inference failed");
                    let error = if is_fatal_device_error(&msg) {
                        self.health.report_fatal(&self.name, &msg);
                        self.device_down()
                    } else {
                        EngineError::Failed(msg)
                    };
                    for job in group {
                        let _ = job.reply.send(Err(error.clone()));
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
        let autocast = self.autocast;
        let batch_sizes = self.batch_sizes.clone();
        if let Some(message) = self.health.take_injected_fault(&self.name) {
            // What libtorch does with a failing kernel: tch panics with its message.
            panic!("{message}");
        }
        let model = self.model(id, dir)?;
        let sizes: Vec<i64> = group.iter().map(|j| j.pixels.size()[0]).collect();
        let x =
            Tensor::cat(&group.iter().map(|j| &j.pixels).collect::<Vec<_>>(), 0).to_device(device);
        batch_sizes.observe(x.size()[0] as f64);
        // Entered and left per batch (also when a forward pass panics): the
        // guard restores this thread's autocast state on unwind.
        let _autocast = match autocast {
            Some((dev, dtype)) => {
                Some(AutocastGuard::enter(dev, dtype).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let features = model.net.features(&x, false);
        let logits = group
            .iter()
            .any(|j| j.output == Output::Logits)
            .then(|| host(&model.net.head(&features)).split_with_sizes(&sizes, 0));
        let features = group
            .iter()
            .any(|j| j.output == Output::Features)
            .then(|| host(&features).split_with_sizes(&sizes, 0));
        Ok(group
            .iter()
            .enumerate()
            .map(|(i, j)| match j.output {
                Output::Logits => logits.as_ref().expect("computed")[i].shallow_clone(),
                Output::Features => features.as_ref().expect("computed")[i].shallow_clone(),
            })
            .collect())
    }

    /// What a job shares its forward pass with.
    fn batch_key(&mut self, job: &Job) -> BatchKey {
        match self.adapters.base_of(&job.model_dir) {
            Some(base) => BatchKey::LoraBase(base),
            None => BatchKey::Model(job.model_id.clone()),
        }
    }

    /// One pass of a shared base over jobs for adapters on it.
    fn forward_adapters(
        &mut self,
        base: &std::path::Path,
        group: &[Job],
    ) -> Result<Vec<Tensor>, String> {
        if let Some(message) = self.health.take_injected_fault(&self.name) {
            panic!("{message}");
        }
        let images: i64 = group.iter().map(|j| j.pixels.size()[0]).sum();
        self.batch_sizes.observe(images as f64);
        let _autocast = match self.autocast {
            Some((dev, dtype)) => {
                Some(AutocastGuard::enter(dev, dtype).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let requests: Vec<(&str, &std::path::Path, &Tensor)> = group
            .iter()
            .map(|j| (j.model_id.as_str(), j.model_dir.as_path(), &j.pixels))
            .collect();
        let logits = self.adapters.forward(base, &requests)?;
        Ok(logits.into_iter().map(|t| t.to_kind(Kind::Float)).collect())
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

/// Drops the jobs whose caller stopped waiting (client gone, request timed
/// out): under overload clients give up, and computing their answers would
/// only delay everyone else's.
fn without_abandoned(mut jobs: Vec<Job>) -> Vec<Job> {
    let before = jobs.len();
    jobs.retain(|j| !j.reply.is_closed());
    if jobs.len() < before {
        tracing::debug!(
            abandoned = before - jobs.len(),
            "skipped requests nobody waits for"
        );
    }
    jobs
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    crate::error::panic_message(panic).map_or_else(
        || "inference crashed".into(),
        |m| format!("inference crashed: {m}"),
    )
}

fn images_of(job: &Job) -> usize {
    job.pixels.size().first().copied().unwrap_or(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn thread(max_batch: usize, max_wait: Duration, arrivals: &Arrivals) -> EngineThread {
        let config = EngineConfig {
            max_batch,
            max_wait,
            queue: 16,
            cache: 1,
            precision: PredictPrecision::Auto,
            adapter_cache_bytes: 1 << 20,
        };
        let hist = Histogram::with_opts(HistogramOpts::new("b", "b")).unwrap();
        EngineThread::new(
            Device::Cpu,
            config,
            Arc::new(AtomicI64::new(0)),
            hist,
            arrivals.clone(),
        )
    }

    #[test]
    fn predict_precision_follows_the_device_and_its_capability() {
        use PredictPrecision::*;
        let (h100, t4) = (Some((9, 0)), Some((7, 5)));
        let bf16 = Some((AutocastDevice::Cuda, FloatKind::BF16));
        let fp16 = Some((AutocastDevice::Cuda, FloatKind::F16));
        for p in [Auto, Bf16, Fp32] {
            assert_eq!(p.autocast(Device::Cpu, None), None, "{p:?} on the CPU");
        }
        assert_eq!(Auto.autocast(Device::Cuda(0), h100), bf16);
        assert_eq!(Auto.autocast(Device::Cuda(0), t4), fp16);
        assert_eq!(Auto.autocast(Device::Cuda(0), None), fp16);
        assert_eq!(Bf16.autocast(Device::Cuda(1), t4), bf16);
        assert_eq!(Fp32.autocast(Device::Cuda(0), h100), None);
    }

    fn job(images: i64, arrival: Option<ArrivalTicket>) -> Job {
        Job {
            model_id: "m".into(),
            model_dir: PathBuf::from("m"),
            pixels: Tensor::zeros([images, 3, 2, 2], (Kind::Float, Device::Cpu)),
            reply: oneshot::channel().0,
            arrival,
            output: Output::Logits,
        }
    }

    #[test]
    fn requests_nobody_waits_for_are_not_computed() {
        let (tx, rx) = oneshot::channel();
        let waited = Job {
            reply: tx,
            ..job(1, None)
        };
        let kept = without_abandoned(vec![job(2, None), waited, job(3, None)]);
        assert_eq!(kept.len(), 1);
        assert_eq!(images_of(&kept[0]), 1);
        drop(rx);
        assert!(without_abandoned(kept).is_empty());
    }

    #[test]
    fn a_lone_request_does_not_wait_for_a_batch() {
        let arrivals = Arrivals::default();
        let engine = thread(32, Duration::from_secs(5), &arrivals);
        let (_tx, rx) = sync_channel(4);
        let started = Instant::now();
        let jobs = engine.gather(job(1, None), &rx);
        assert_eq!(jobs.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn queued_requests_join_up_to_max_batch_images() {
        let arrivals = Arrivals::default();
        let engine = thread(4, Duration::from_secs(5), &arrivals);
        let (tx, rx) = sync_channel(8);
        for _ in 0..5 {
            tx.send(job(1, Some(arrivals.announce()))).unwrap();
        }
        let jobs = engine.gather(job(1, None), &rx);
        assert_eq!(jobs.len(), 4, "capped at max_batch images");
        assert!(
            jobs.iter().all(|j| j.arrival.is_none()),
            "tickets withdrawn"
        );
        assert_eq!(
            arrivals.pending(),
            2,
            "the jobs left in the queue are still announced"
        );
        drop(rx);
    }

    #[test]
    fn announced_requests_are_waited_for_within_max_wait() {
        let arrivals = Arrivals::default();
        let engine = thread(32, Duration::from_secs(5), &arrivals);
        let (tx, rx) = sync_channel(4);
        let ticket = arrivals.announce();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(job(2, Some(ticket))).unwrap();
            tx
        });
        let jobs = engine.gather(job(1, None), &rx);
        assert_eq!(jobs.len(), 2, "the announced request joined the batch");
        assert_eq!(arrivals.pending(), 0);
        drop(sender.join().unwrap());

        // An announced request that never comes (it failed to decode): the
        // wait ends when its ticket is dropped, or at max_wait.
        let engine = thread(32, Duration::from_millis(200), &arrivals);
        let (_tx, rx) = sync_channel::<Job>(4);
        let lost = arrivals.announce();
        let started = Instant::now();
        assert_eq!(engine.gather(job(1, None), &rx).len(), 1);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2));
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(lost);
        });
        let engine = thread(32, Duration::from_secs(5), &arrivals);
        let started = Instant::now();
        assert_eq!(engine.gather(job(1, None), &rx).len(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
        dropper.join().unwrap();
    }
}
