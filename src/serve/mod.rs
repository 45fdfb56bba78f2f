//! Serving predictions: which model answers (`registry`), the per-device
//! batching inference threads (`engine`), and the answer's shape (`output`).

pub mod engine;
pub mod output;
pub mod registry;

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntGauge};
use tch::Tensor;

use crate::error::{AppError, AppResult};
use engine::{ArrivalTicket, Arrivals, Engine, EngineConfig, Job, Refused};
pub use registry::{ModelInfo, Registry};

/// Everything `/predict` needs, shared by the handlers.
#[derive(Clone)]
pub struct Inference {
    engines: Arc<Vec<Engine>>,
    arrivals: Arrivals,
    pub registry: Registry,
    pub queue_depth: IntGauge,
}

impl Inference {
    /// Starts one engine thread per device.
    pub fn start(
        devices: &[tch::Device],
        config: EngineConfig,
        registry: &prometheus::Registry,
    ) -> Self {
        let batch_sizes = Histogram::with_opts(
            HistogramOpts::new("vitrine_inference_batch_size", "Images per forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric");
        let queue_depth = IntGauge::new(
            "vitrine_inference_queue_depth",
            "Prediction requests waiting or running",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(batch_sizes.clone()));
        let _ = registry.register(Box::new(queue_depth.clone()));
        let devices = if devices.is_empty() {
            vec![tch::Device::Cpu]
        } else {
            devices.to_vec()
        };
        let arrivals = Arrivals::default();
        let engines = devices
            .iter()
            .map(|&d| Engine::start(d, config, batch_sizes.clone(), arrivals.clone()))
            .collect();
        Self {
            engines: Arc::new(engines),
            arrivals,
            registry: Registry::default(),
            queue_depth,
        }
    }

    /// Waits (up to `within`) until no engine has a request queued or
    /// running. Shutdown calls it after the HTTP server stopped: a request
    /// whose client went away still runs to the end of its batch, and the
    /// process must not exit (tearing libtorch down) under a forward pass.
    /// Returns whether the engines went idle in time.
    pub async fn drain(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.engines.iter().all(|e| e.depth() == 0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Announces a request that will reach [`Inference::logits`] once its
    /// images are decoded: engines gathering a batch wait for it (up to
    /// `max_wait`) only while such requests exist. Take it before decoding.
    pub fn announce(&self) -> ArrivalTicket {
        self.arrivals.announce()
    }

    /// Runs preprocessed images through `model` on the least busy device;
    /// returns logits [n, labels]. `ticket` (from [`Inference::announce`])
    /// travels with the job and is withdrawn when an engine receives it.
    pub async fn logits(
        &self,
        model: &ModelInfo,
        pixels: Tensor,
        ticket: ArrivalTicket,
    ) -> AppResult<Tensor> {
        let engine = self
            .engines
            .iter()
            .min_by_key(|e| e.depth())
            .expect("at least one engine");
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            model_id: model.id.clone(),
            model_dir: model.dir.clone(),
            pixels,
            reply,
            arrival: Some(ticket),
        };
        match engine.submit(job) {
            Ok(()) => {}
            Err(Refused::Busy) => {
                return Err(AppError::Overloaded {
                    retry_after_secs: 1,
                    detail: "the prediction queue is full; retry shortly".into(),
                })
            }
            Err(Refused::Stopped) => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "inference engine stopped"
                )))
            }
        }
        self.queue_depth
            .set(self.engines.iter().map(Engine::depth).sum());
        let result = rx.await.map_err(|_| {
            AppError::Internal(anyhow::anyhow!("inference engine dropped a request"))
        })?;
        self.queue_depth
            .set(self.engines.iter().map(Engine::depth).sum());
        result.map_err(|e| AppError::Internal(anyhow::anyhow!(e)))
    }
}
