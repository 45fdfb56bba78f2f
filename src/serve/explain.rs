//! Explanations as a service: `/explain`, `/models/{id}/explain` and
//! `vitrine explain`. They need gradients (a forward and a backward pass
//! per label, or per path step for integrated gradients), so they never
//! join the inference engines' batches: one explainer thread runs them one
//! at a time behind a short bounded queue (`--explain-queue`); a full
//! queue is a 429 at once, and `/predict` keeps its own engines.
//!
//! A request is checked as `/predict` checks one (size, header, decode
//! budget), with one image, a method the model's family can do, labels the
//! model has and a step count within `--explain-max-steps`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::error::{AppError, AppResult};
use crate::explain::integrated::Baseline;
use crate::explain::render;
use crate::explain::{self, Completeness, Method, PathOptions};
use crate::imaging::Normalisation;
use crate::model::Model;
use crate::serve::predict::{
    checked_headers, decode, DecodePlan, ModelSource, PredictContext, Upload,
};
use crate::serve::thumbnails::blocking;
use crate::serve::Inference;
use crate::task::Task as ModelTask;

/// Integrated gradients' path points when the request names none.
pub const DEFAULT_STEPS: usize = 128;

/// Tuning of the explainer.
#[derive(Debug, Clone, Copy)]
pub struct ExplainConfig {
    /// Explanations waiting or running at most; beyond: 429.
    pub queue: usize,
    /// The most path points a request may ask of integrated gradients.
    pub max_steps: usize,
    pub device: Device,
}

/// A request to explain one image.
pub struct ExplainRequest<'a> {
    pub model: ModelSource<'a>,
    pub images: Vec<Upload>,
    /// `None`: the family's first method (rollout for ViT and DINOv2,
    /// Grad-CAM for the others).
    pub method: Option<String>,
    /// Labels to explain; empty: the `top_k` best scored.
    pub labels: Vec<String>,
    pub top_k: Option<usize>,
    pub steps: Option<usize>,
    /// Integrated gradients' baseline: `mean` (default), `black`, `white`.
    pub baseline: Option<String>,
}

/// One label's heat map.
pub struct LabelMap {
    pub label: String,
    /// The score `/predict` serves by default (softmax, or sigmoid for
    /// multi-label, of the calibrated logits when the model has them).
    pub score: f64,
    /// `[H, W]` in `[0, 1]`.
    pub map: Tensor,
    /// Integrated gradients only.
    pub completeness: Option<Completeness>,
}

/// The answer.
pub struct Explained {
    pub model: String,
    pub method: Method,
    pub height: i64,
    pub width: i64,
    pub labels: Vec<LabelMap>,
    /// Where the maps lie on the uploaded image, in its pixels:
    /// `[left, top, width, height]` (see [`crate::imaging::Pipeline::input_window`]).
    pub image_window: [f64; 4],
    /// The uploaded image's `[width, height]`.
    pub image_size: [u32; 2],
    /// The image as the model saw it `[1, 3, H, W]`, for overlays.
    pixels: Tensor,
    normalisation: Normalisation,
}

impl Explained {
    /// The heat map of label `i` over the image, as PNG.
    pub fn overlay_png(&self, i: usize) -> Vec<u8> {
        render::overlay_png(&self.pixels, &self.labels[i].map, &self.normalisation)
    }

    /// Every map stacked `[L, H, W]`, as `.npy`.
    pub fn npy(&self) -> Vec<u8> {
        let maps: Vec<Tensor> = self.labels.iter().map(|l| l.map.shallow_clone()).collect();
        render::npy(&maps)
    }
}

/// Which labels a task explains.
enum Targets {
    Indices(Vec<i64>),
    TopK(usize),
}

struct Task {
    model_id: String,
    dir: PathBuf,
    pixels: Tensor,
    method: Option<Method>,
    targets: Targets,
    path: PathOptions,
    reply: tokio::sync::oneshot::Sender<Result<Done, Failure>>,
}

struct Done {
    method: Method,
    targets: Vec<i64>,
    logits: Tensor,
    maps: explain::Maps,
}

enum Failure {
    /// The family cannot do the method: its name, and what it can do.
    Unsupported(&'static str, Vec<Method>),
    Failed(String),
}

/// The explainer thread's handle, shared by the handlers.
#[derive(Clone)]
pub struct Explainer {
    tx: SyncSender<Task>,
    /// Requests queued or running (the queue's bound counts both).
    load: Arc<AtomicUsize>,
    pub config: ExplainConfig,
}

impl Explainer {
    /// Starts the explainer thread on `config.device`.
    pub fn start(config: ExplainConfig) -> Self {
        let queue = config.queue.max(1);
        let (tx, rx) = sync_channel(queue);
        let load = Arc::new(AtomicUsize::new(0));
        let (device, counter) = (config.device, load.clone());
        std::thread::Builder::new()
            .name("vitrine-explain".into())
            .spawn(move || run(device, rx, counter))
            .expect("spawn the explainer thread");
        Self { tx, load, config }
    }

    /// Explains `req`'s image with the model it names.
    pub async fn explain(
        &self,
        inference: &Inference,
        cx: PredictContext<'_>,
        req: ExplainRequest<'_>,
    ) -> AppResult<Explained> {
        let method = parse_method(req.method.as_deref())?;
        let steps = self.check_steps(req.steps)?;
        let baseline = parse_baseline(req.baseline.as_deref())?;
        let headers = checked_one_image(&req.images, &cx)?;
        let image_size = [headers[0].width, headers[0].height];
        let model = inference.resolve(req.model).await?;
        let targets = targets(&model.labels, &req.labels, req.top_k)?;
        let plan = DecodePlan::new(&headers, &model.pipeline, cx.budget.total());
        let lease = cx.budget.try_acquire(plan.bytes, "this request's image")?;
        let pipeline = model.pipeline.clone();
        let images = req.images;
        let pixels = blocking(move || {
            let _lease = lease;
            decode(&pipeline, &images, 1)
        })
        .await??;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.submit(Task {
            model_id: model.id.clone(),
            dir: model.dir.clone(),
            pixels: pixels.shallow_clone(),
            method,
            targets,
            path: PathOptions {
                steps,
                baseline,
                normalisation: model.pipeline.normalisation(),
            },
            reply,
        })?;
        let done = match rx.await {
            Ok(Ok(done)) => done,
            Ok(Err(Failure::Unsupported(family, can))) => return Err(unsupported(family, &can)),
            Ok(Err(Failure::Failed(msg))) => return Err(AppError::Internal(anyhow::anyhow!(msg))),
            Err(_) => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "the explainer dropped a request"
                )))
            }
        };
        // The scores `/predict` serves by default: calibrated when the
        // model has a temperature.
        let logits = match model.calibration() {
            Some(c) => crate::train::calibrate::scaled(&done.logits, &c.temperatures),
            None => done.logits.shallow_clone(),
        };
        let scores = scores(&logits, model.task);
        let (height, width) = (pixels.size()[2], pixels.size()[3]);
        let labels = done
            .targets
            .iter()
            .enumerate()
            .map(|(i, &t)| LabelMap {
                label: model.labels[t as usize].clone(),
                score: scores[t as usize],
                map: done.maps.maps[i].shallow_clone(),
                completeness: done.maps.completeness.get(i).copied(),
            })
            .collect();
        Ok(Explained {
            model: model.id.clone(),
            method: done.method,
            height,
            width,
            labels,
            image_window: model.pipeline.input_window(image_size[0], image_size[1]),
            image_size,
            pixels,
            normalisation: model.pipeline.normalisation(),
        })
    }

    fn check_steps(&self, steps: Option<usize>) -> AppResult<usize> {
        let steps = steps.unwrap_or(DEFAULT_STEPS.min(self.config.max_steps));
        if steps < 2 || steps > self.config.max_steps {
            return Err(AppError::unprocessable(
                "invalid_steps",
                format!(
                    "`steps` must be from 2 to {} (--explain-max-steps); got {steps}",
                    self.config.max_steps
                ),
            ));
        }
        Ok(steps)
    }

    fn submit(&self, task: Task) -> AppResult<()> {
        let busy = || AppError::Overloaded {
            retry_after_secs: 1,
            detail: "the explanation queue is full (--explain-queue); retry shortly".into(),
        };
        if self.load.fetch_add(1, Ordering::SeqCst) >= self.config.queue.max(1) {
            self.load.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        match self.tx.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.load.fetch_sub(1, Ordering::SeqCst);
                Err(busy())
            }
            Err(TrySendError::Disconnected(_)) => {
                self.load.fetch_sub(1, Ordering::SeqCst);
                Err(AppError::Internal(anyhow::anyhow!(
                    "the explainer thread ended"
                )))
            }
        }
    }

    /// Explanations queued or running.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::SeqCst)
    }
}

fn parse_method(name: Option<&str>) -> AppResult<Option<Method>> {
    let Some(name) = name else { return Ok(None) };
    Method::parse(name).map(Some).ok_or_else(|| {
        let all: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        AppError::unprocessable(
            "unknown_method",
            format!(
                "unknown method `{name}`; the methods are {}",
                all.join(", ")
            ),
        )
    })
}

fn parse_baseline(name: Option<&str>) -> AppResult<Baseline> {
    let Some(name) = name else {
        return Ok(Baseline::default());
    };
    Baseline::parse(name).ok_or_else(|| {
        let all: Vec<&str> = Baseline::ALL.iter().map(|b| b.name()).collect();
        AppError::unprocessable(
            "unknown_baseline",
            format!(
                "unknown baseline `{name}`; the baselines are {}",
                all.join(", ")
            ),
        )
    })
}

fn unsupported(family: &str, can: &[Method]) -> AppError {
    let names: Vec<&str> = can.iter().map(|m| m.name()).collect();
    AppError::unprocessable(
        "method_not_supported",
        format!(
            "a `{family}` model cannot be explained by that method; it can by {}",
            names.join(", ")
        ),
    )
}

fn checked_one_image(
    images: &[Upload],
    cx: &PredictContext<'_>,
) -> AppResult<Vec<crate::imaging::decode::Header>> {
    if images.len() != 1 {
        return Err(AppError::unprocessable(
            "one_image",
            format!(
                "an explanation takes exactly one image; got {}",
                images.len()
            ),
        ));
    }
    checked_headers(images, &cx.caps)
}

/// The label indices to explain: the named ones (each must exist), else
/// the `top_k` (default 1) best scored, chosen on the explainer thread.
fn targets(labels: &[String], named: &[String], top_k: Option<usize>) -> AppResult<Targets> {
    if named.is_empty() {
        let k = top_k.unwrap_or(1);
        if k == 0 {
            return Err(AppError::bad_request(
                "invalid_query",
                "`top_k` must be at least 1",
            ));
        }
        return Ok(Targets::TopK(k.min(labels.len())));
    }
    let mut out = Vec::with_capacity(named.len());
    for name in named {
        let Some(i) = labels.iter().position(|l| l == name) else {
            let mut known: Vec<&str> = labels.iter().take(20).map(String::as_str).collect();
            if labels.len() > 20 {
                known.push("…");
            }
            return Err(AppError::unprocessable(
                "unknown_label",
                format!(
                    "the model has no label `{name}`; its labels are {}",
                    known.join(", ")
                ),
            ));
        };
        out.push(i as i64);
    }
    Ok(Targets::Indices(out))
}

/// Scores as `/predict` serves them: softmax, or sigmoid for multi-label.
fn scores(logits: &Tensor, task: ModelTask) -> Vec<f64> {
    let probs = match task {
        ModelTask::MultiClass => logits.softmax(-1, Kind::Double),
        ModelTask::MultiLabel => logits.to_kind(Kind::Double).sigmoid(),
    };
    Vec::try_from(probs.reshape([-1])).unwrap_or_default()
}

/// The explainer thread: one task at a time, the last model kept loaded.
fn run(device: Device, rx: Receiver<Task>, load: Arc<AtomicUsize>) {
    // On the CPU, explanations use half the cores at a lower priority (the
    // OpenMP workers this thread starts inherit its nice value), so the
    // prediction engines keep theirs: `/predict` holds its latency while
    // `/explain` is saturated.
    if device == Device::Cpu {
        let half = crate::torch_info::threads::available_cpus() / 2;
        crate::torch_info::threads::limit_torch_threads(half);
        if !crate::torch_info::threads::lower_thread_priority() {
            tracing::warn!("the explainer thread's priority could not be lowered");
        }
    }
    let mut loaded: Option<(String, Model)> = None;
    while let Ok(task) = rx.recv() {
        let result = match task.reply.is_closed() {
            true => None,
            false => Some(explain_task(device, &mut loaded, &task)),
        };
        // Freed before the answer goes out: a client that sends its next
        // request on this answer finds the slot free.
        load.fetch_sub(1, Ordering::SeqCst);
        if let Some(result) = result {
            let _ = task.reply.send(result);
        }
    }
}

fn explain_task(
    device: Device,
    loaded: &mut Option<(String, Model)>,
    task: &Task,
) -> Result<Done, Failure> {
    if loaded.as_ref().map(|(id, _)| id.as_str()) != Some(task.model_id.as_str()) {
        *loaded = None;
        let mut model = crate::model::load_pretrained(&task.dir, device, None)
            .map_err(|e| Failure::Failed(format!("loading model {}: {e:#}", task.model_id)))?;
        // Gradients flow to the input only.
        model.vs.freeze();
        *loaded = Some((task.model_id.clone(), model));
    }
    let model = &loaded.as_ref().expect("loaded above").1;
    let family = model.config.model_type();
    let can = Method::for_family(family);
    let method = task.method.unwrap_or(can[0]);
    if !can.contains(&method) {
        return Err(Failure::Unsupported(family, can));
    }
    let pixels = task.pixels.to_device(device);
    let logits = tch::no_grad(|| model.net.forward_t(&pixels, false))
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .select(0, 0);
    let targets = match &task.targets {
        Targets::Indices(t) => t.clone(),
        Targets::TopK(k) => {
            let (_, idx) = logits.topk(*k as i64, 0, true, true);
            Vec::try_from(idx).unwrap_or_default()
        }
    };
    let maps = explain::explain(model.net.as_ref(), &pixels, method, &targets, &task.path)
        .ok_or_else(|| Failure::Unsupported(family, can.clone()))?;
    let maps = explain::Maps {
        maps: maps.maps.iter().map(|m| m.to_device(Device::Cpu)).collect(),
        completeness: maps.completeness,
    };
    Ok(Done {
        method,
        targets,
        logits,
        maps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_named_or_the_best_scored() {
        let labels: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
        assert!(matches!(targets(&labels, &[], None), Ok(Targets::TopK(1))));
        assert!(matches!(
            targets(&labels, &[], Some(9)),
            Ok(Targets::TopK(2))
        ));
        match targets(&labels, &["dog".into()], None) {
            Ok(Targets::Indices(i)) => assert_eq!(i, [1]),
            _ => panic!("dog is label 1"),
        }
        match targets(&labels, &["cow".into()], None) {
            Err(AppError::Client { code, detail, .. }) => {
                assert_eq!(code, "unknown_label");
                assert!(detail.contains("cat, dog"), "{detail}");
            }
            _ => panic!("cow is no label"),
        }
    }
}
