//! Serving predictions: which model answers (`registry`), the per-device
//! batching inference threads (`engine`), and the answer's shape (`output`);
//! `predict` the one prediction service, which orders a request's steps
//! (caps, model, decoding budget, arrival ticket, decode, inference,
//! answer) for `/predict` and `vitrine predict` alike; `thumbnails` the web
//! page's dataset previews.

pub mod adapters;
pub mod embed;
pub mod engine;
pub mod explain;
pub mod output;
pub mod predict;
pub mod registry;
pub mod thumbnails;

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntGauge};
use tch::Tensor;

use crate::devices::DeviceHealth;
use crate::error::{AppError, AppResult, ErrorKind};
use engine::{ArrivalTicket, Arrivals, Engine, EngineConfig, EngineError, Job, Refused};
pub use registry::{ModelInfo, Registry};

/// Everything `/predict` needs, shared by the handlers.
#[derive(Clone)]
pub struct Inference {
    engines: Arc<Vec<Engine>>,
    arrivals: Arrivals,
    health: DeviceHealth,
    pub registry: Registry,
    pub queue_depth: IntGauge,
}

impl Inference {
    /// Starts one engine thread per device; `health` takes a device out
    /// of service after a fatal error (shared with the training workers).
    pub fn start(
        devices: &[tch::Device],
        config: EngineConfig,
        registry: &prometheus::Registry,
        health: DeviceHealth,
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
        let adapter_gauges = adapters::AdapterGauges::register(registry);
        let engines = devices
            .iter()
            .map(|&d| {
                Engine::start(
                    d,
                    config,
                    batch_sizes.clone(),
                    arrivals.clone(),
                    health.clone(),
                    adapter_gauges.clone(),
                )
            })
            .collect();
        Self {
            engines: Arc::new(engines),
            arrivals,
            health,
            registry: Registry::default(),
            queue_depth,
        }
    }

    /// One engine on `device` for a command-line run (`vitrine predict`,
    /// `vitrine explain`): fp32 (as `transformers` runs by default), up to
    /// `max_batch` images in one batch with no wait, one model loaded.
    pub fn local(device: tch::Device, max_batch: usize) -> Self {
        let metrics = prometheus::Registry::new();
        let health = DeviceHealth::new(&[crate::torch_info::device_name(device)], &metrics);
        let engine = EngineConfig {
            max_batch: max_batch.max(1),
            max_wait: std::time::Duration::ZERO,
            queue: 1,
            cache: 1,
            precision: engine::PredictPrecision::Fp32,
            adapter_cache_bytes: u64::MAX,
        };
        Self::start(&[device], engine, &metrics, health)
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

    /// Announces a request whose images are about to decode: engines
    /// gathering a batch wait for it (up to `max_wait`) only while such
    /// requests exist. Only [`predict`]'s admitted requests take one,
    /// before they decode.
    fn announce(&self) -> ArrivalTicket {
        self.arrivals.announce()
    }

    /// Runs preprocessed images through a model on the least busy device
    /// in service ([`pick_engine`]); returns logits [n, labels].
    async fn infer(
        &self,
        model_id: String,
        model_dir: std::path::PathBuf,
        pixels: Tensor,
        arrival: Option<ArrivalTicket>,
        output: engine::Output,
    ) -> AppResult<Tensor> {
        let loads: Vec<EngineLoad> = self
            .engines
            .iter()
            .map(|e| EngineLoad {
                gpu: e.device.is_cuda(),
                depth: e.depth(),
                up: self.health.is_up(&e.name),
            })
            .collect();
        let Some(engine) = pick_engine(&loads).map(|i| &self.engines[i]) else {
            return Err(no_device_in_service(&self.health));
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            model_id,
            model_dir,
            pixels,
            reply,
            arrival,
            output,
        };
        match engine.submit(job) {
            Ok(()) => {}
            Err(Refused::Busy) => {
                return Err(AppError::Overloaded {
                    retry_after_secs: 1,
                    detail: "the prediction queue is full; retry shortly".into(),
                })
            }
            // The engine ended between the health check and the send: its
            // device went out of service just now.
            Err(Refused::Stopped) if !self.health.is_up(&engine.name) => {
                return Err(device_down(&engine.name))
            }
            Err(Refused::Stopped) => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "inference engine stopped"
                )))
            }
        }
        self.queue_depth
            .set(self.engines.iter().map(Engine::depth).sum());
        let result = rx.await;
        self.queue_depth
            .set(self.engines.iter().map(Engine::depth).sum());
        match result {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(EngineError::DeviceDown(device, _))) => Err(device_down(&device)),
            Ok(Err(EngineError::Failed(msg))) => Err(AppError::Internal(anyhow::anyhow!(msg))),
            Err(_) if !self.health.is_up(&engine.name) => Err(device_down(&engine.name)),
            Err(_) => Err(AppError::Internal(anyhow::anyhow!(
                "inference engine dropped a request"
            ))),
        }
    }
}

/// What [`pick_engine`] knows of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLoad {
    /// Whether the engine runs on a GPU.
    pub gpu: bool,
    /// Requests queued or running.
    pub depth: i64,
    /// Whether its device is in service.
    pub up: bool,
}

/// The engine a request goes to: the least busy one in service; on a tie a
/// GPU engine before the CPU (with `cpu,cuda:0` a lone request must not
/// run on the CPU), then the first listed. `None` when no device is in
/// service.
pub fn pick_engine(engines: &[EngineLoad]) -> Option<usize> {
    engines
        .iter()
        .enumerate()
        .filter(|(_, e)| e.up)
        .min_by_key(|(i, e)| (e.depth, !e.gpu, *i))
        .map(|(i, _)| i)
}

/// The request's device failed for good; another may answer a retry.
fn device_down(device: &str) -> AppError {
    AppError::client(
        ErrorKind::Unavailable,
        "device_unavailable",
        format!("device {device} went out of service after a fatal error; retry the request"),
    )
}

fn no_device_in_service(health: &DeviceHealth) -> AppError {
    let down: Vec<String> = health.down().into_iter().map(|(d, _)| d).collect();
    AppError::client(
        ErrorKind::Unavailable,
        "device_unavailable",
        format!(
            "no device can serve predictions: {} out of service after a fatal error",
            down.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(gpu: bool, depth: i64) -> EngineLoad {
        EngineLoad {
            gpu,
            depth,
            up: true,
        }
    }

    #[test]
    fn ties_go_to_a_gpu_engine_and_load_decides_otherwise() {
        let cpu_first = [load(false, 0), load(true, 0)];
        assert_eq!(pick_engine(&cpu_first), Some(1), "cpu,cuda:0 idle: the GPU");
        assert_eq!(pick_engine(&[load(true, 0), load(false, 0)]), Some(0));
        assert_eq!(
            pick_engine(&[load(false, 0), load(true, 2)]),
            Some(0),
            "the GPU is busier"
        );
        assert_eq!(
            pick_engine(&[load(false, 1), load(true, 1), load(true, 1)]),
            Some(1),
            "among tied GPUs, the first"
        );
        assert_eq!(
            pick_engine(&[load(false, 3), load(true, 1), load(true, 0)]),
            Some(2)
        );
        assert_eq!(pick_engine(&[load(false, 0)]), Some(0));
    }

    #[test]
    fn devices_out_of_service_are_skipped() {
        let mut engines = [load(false, 5), load(true, 0)];
        engines[1].up = false;
        assert_eq!(pick_engine(&engines), Some(0));
        engines[0].up = false;
        assert_eq!(pick_engine(&engines), None);
        assert_eq!(pick_engine(&[]), None);
    }

    fn config() -> EngineConfig {
        EngineConfig {
            max_batch: 8,
            max_wait: std::time::Duration::from_millis(1),
            queue: 8,
            cache: 1,
            precision: engine::PredictPrecision::Auto,
            adapter_cache_bytes: 1 << 20,
        }
    }

    fn pixels() -> Tensor {
        Tensor::zeros([1, 3, 4, 4], (tch::Kind::Float, tch::Device::Cpu))
    }

    /// An injected fatal error on `cuda:0` (the engine never reaches a GPU:
    /// the fault fires before the model loads, as a failing kernel would
    /// inside the forward pass) takes that device out; the CPU engine
    /// continues to take requests.
    #[tokio::test]
    async fn a_fatal_error_takes_its_engine_out_and_the_others_continue() {
        let registry = prometheus::Registry::new();
        let health = DeviceHealth::new(&["cpu".into(), "cuda:0".into()], &registry);
        let inference = Inference::start(
            &[tch::Device::Cpu, tch::Device::Cuda(0)],
            config(),
            &registry,
            health.clone(),
        );
        health.inject_fault(
            "cuda:0",
            "CUDA error: an illegal memory access was encountered
CUDA kernel errors might be asynchronously reported",
        );
        let missing = std::path::PathBuf::from("/nonexistent/model");
        // Both idle: the GPU engine gets it, and fails for good.
        let err = inference
            .infer(
                "m".into(),
                missing.clone(),
                pixels(),
                None,
                Default::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AppError::Client { kind: ErrorKind::Unavailable, code: "device_unavailable", detail } if detail.contains("cuda:0")),
            "{err:?}"
        );
        assert!(!health.is_up("cuda:0"));
        assert_eq!(
            health.down()[0].1,
            "inference crashed: CUDA error: an illegal memory access was encountered"
        );
        // The next request goes to the CPU engine, which runs it (the model
        // directory does not exist: an ordinary, internal failure).
        for _ in 0..2 {
            let err = inference
                .infer(
                    "m".into(),
                    missing.clone(),
                    pixels(),
                    None,
                    Default::default(),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&err, AppError::Internal(e) if e.to_string().contains("loading model m")),
                "{err:?}"
            );
        }
        assert!(health.is_up("cpu"));
        // With the CPU out too, nothing can answer.
        health.report_fatal("cpu", "CUDA error: misaligned address");
        let err = inference
            .infer("m".into(), missing, pixels(), None, Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AppError::Client { kind: ErrorKind::Unavailable, detail, .. } if detail.contains("cpu, cuda:0")),
            "{err:?}"
        );
    }
}
