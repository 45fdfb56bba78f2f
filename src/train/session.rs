//! The training loop for all three modes.
//!
//! On a GPU nothing in a step waits for the device: inputs are copied
//! without blocking, the optimiser and clipping keep their decisions on the
//! device, and the loss is read back only every [`LOSS_READ_EVERY`] steps
//! (and at the end of an epoch).

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::amp::{LossScaler, PrecisionPlan};
use super::batches::spawn_loader;
use super::calibrate::{calibrate, Calibrated};
use super::checkpoint::{Checkpoints, LoopState};
use super::config::{InputCacheMode, JobConfig, MicroBatch, Mode};
use super::data::{prepare, Prepared};
use super::distributed::Ranks;
use super::eval::{evaluate, loss, targets_tensor, EpochMetrics, Evaluation};
use super::input::{InputPlacer, PixelFormat};
use super::mix::Mixer;
use super::oom::{self, infer_in_chunks, retry_smaller, FailureKind};
use super::optim::{lr_at, AdamW};
use super::record::ModelCard;
use super::timing::{Phase, StepClock, TimeShares};
use super::{features, Events, StopFlag, TrainError, TrainEvent, TrainOutcome, TrainSpec};
use crate::imaging::input_cache::{CacheForm, CachedImages};
use crate::imaging::{Pipeline, PreprocessorConfig};
use crate::model::lora::Adapter;
use crate::model::{Model, ParamGroup, Regularisation, Trainable};
use crate::task::Task;
use crate::torchx;

/// Optimiser steps between two reads of the loss on the host (each read
/// waits for the device to finish the steps queued so far).
pub const LOSS_READ_EVERY: u64 = 10;

/// Trains `spec`'s job to the end, to early stopping, or until `stop` is set.
/// A libtorch error anywhere (tch panics) ends the run with an error; on a
/// GPU, an error that means the CUDA context is dead is
/// [`TrainError::DeviceFatal`], wherever it surfaced.
/// A job with several `devices` trains on that many ranks
/// (`train/distributed.rs`), each through [`run_rank`].
pub fn run(spec: TrainSpec, events: Events, stop: StopFlag) -> Result<TrainOutcome, TrainError> {
    let world = spec.config.ranks_per_node();
    if world > 1 {
        return super::distributed::run(spec, events, stop, world);
    }
    run_guarded(spec, events, stop, None)
}

/// One rank of a data-parallel job (its process group already joined).
pub(super) fn run_rank(
    spec: TrainSpec,
    events: Events,
    stop: StopFlag,
    ranks: Ranks,
) -> Result<TrainOutcome, TrainError> {
    run_guarded(spec, events, stop, Some(ranks))
}

fn run_guarded(
    spec: TrainSpec,
    events: Events,
    stop: StopFlag,
    ranks: Option<Ranks>,
) -> Result<TrainOutcome, TrainError> {
    let device = spec.device;
    std::panic::catch_unwind(AssertUnwindSafe(|| run_job(spec, events, stop, ranks)))
        .unwrap_or_else(|p| {
            Err(TrainError::retry(format!(
                "training crashed: {}",
                oom::panic_message(&p)
            )))
        })
        .map_err(|e| device_fatal_if_so(e, device))
}

/// Re-labels an error whose message shows a dead CUDA context.
fn device_fatal_if_so(e: TrainError, device: Device) -> TrainError {
    match e {
        TrainError::Fatal(m) | TrainError::Retryable(m)
            if device.is_cuda() && oom::classify(&m) == FailureKind::DeviceFatal =>
        {
            TrainError::DeviceFatal(m)
        }
        e => e,
    }
}

/// A shim error (seeding, autocast, fused kernels) as a training error.
fn torch_error(device: Device, context: &str) -> impl Fn(torchx::TorchError) -> TrainError + '_ {
    move |e| TrainError::from_failure(oom::Failure::new(e.0), device, context)
}

fn run_job(
    spec: TrainSpec,
    events: Events,
    stop: StopFlag,
    mut ranks: Option<Ranks>,
) -> Result<TrainOutcome, TrainError> {
    // Each rank steps on its share of the global batch.
    let local = super::distributed::local_config(&spec.config, ranks.as_ref());
    let cfg = &local;
    // Rank 0's scratch is the work directory; the others' a folder in it.
    std::fs::create_dir_all(spec.rank_scratch(ranks.as_ref().map_or(0, Ranks::rank)))
        .map_err(|e| TrainError::retry(format!("creating the job's work directory: {e}")))?;
    let data = prepare(&spec)?;
    let (plan, _tf32) = set_up_device(&spec)?;
    let model = load_model(&spec, &data)?;
    let pipeline = pipeline_for(&spec, &model)?;
    let adapter = lora_adapter(&model, cfg)?;
    let params = select_trainable(&model, cfg, adapter.as_ref());
    if params.is_empty() {
        return Err(TrainError::fatal("no trainable parameters for this mode"));
    }
    let trainable_parameters = params.iter().map(|(_, t, _)| t.numel() as u64).sum();
    let mut opt = AdamW::new(params, cfg.weight_decay);
    let ckpt = Checkpoints::new(&spec.work_dir);
    let mut state = match restore(&ckpt, &mut opt, &model.buffers())? {
        Some(s) => s,
        None => first_state(cfg),
    };
    if let Some(r) = ranks.as_mut() {
        start_in_step(r, &opt, &model)?;
    }
    let mut scaler = plan.loss_scaling.then(|| {
        let mut s = LossScaler::new(spec.device);
        if let Some(saved) = state.loss_scaler {
            s.restore(saved);
        }
        s
    });
    let augmented = cfg.augmentation && cfg.mode != Mode::LinearProbe;
    let mut clock = StepClock::new(spec.device);
    // The decode-once pass is the input of the first epoch.
    let (train_cache, eval_cache) = clock.host(Phase::InputWait, || {
        input_caches(&spec, &data, &pipeline, augmented, (&events, &stop))
    });
    let mut trainer = Trainer {
        spec: &spec,
        cfg,
        data: &data,
        model: &model,
        adapter: adapter.as_ref(),
        placer: InputPlacer::new(&pipeline, spec.device),
        train_format: PixelFormat::for_device(spec.device, &pipeline, augmented),
        eval_format: PixelFormat::for_device(spec.device, &pipeline, false),
        pipeline,
        mixer: mixer_for(cfg, &data),
        plan,
        events: &events,
        stop: &stop,
        best_dir: spec.work_dir.join("best"),
        trainable_parameters,
        clock: RefCell::new(clock),
        train_cache,
        eval_cache,
        ranks: ranks.as_ref(),
    };
    if cfg.micro_batch == Some(MicroBatch::Auto) && cfg.mode != Mode::LinearProbe {
        state.micro_batch = trainer.probe_micro_batch(&mut opt)?;
    }
    let interrupted = trainer.train(&mut opt, &mut scaler, &mut state, &ckpt)?;
    trainer.finish(&mut opt, &state, interrupted)
}

/// Every rank starts from rank 0's weights and buffers (restored or
/// fresh), then averages its gradients through the reducer.
fn start_in_step(ranks: &mut Ranks, opt: &AdamW, model: &Model) -> Result<(), TrainError> {
    let trainable: Vec<Tensor> = opt
        .params
        .iter()
        .map(|p| p.tensor.shallow_clone())
        .collect();
    let mut all: Vec<Tensor> = trainable.iter().map(Tensor::shallow_clone).collect();
    all.extend(model.buffers().into_iter().map(|(_, t)| t));
    ranks.broadcast_from_leader(&all)?;
    ranks.attach_reducer(&trainable)
}

/// The decode-once caches this job reads (`input_cache: auto` on a node
/// with a cache): training copies when it augments, evaluation outputs when
/// the preprocessing has a fixed size. Built in one decoding pass over every
/// image of the dataset by the first job that needs them.
fn input_caches(
    spec: &TrainSpec,
    data: &Prepared,
    pipeline: &Pipeline,
    augmented: bool,
    (events, stop): (&Events, &StopFlag),
) -> (Option<Arc<CachedImages>>, Option<Arc<CachedImages>>) {
    let cache = spec.input_cache.as_ref();
    let Some(cache) = cache.filter(|_| spec.config.input_cache == InputCacheMode::Auto) else {
        return (None, None);
    };
    let wants_eval = pipeline.output_size().is_some();
    let mut forms = Vec::new();
    if augmented {
        forms.push(CacheForm::train_for(pipeline));
    }
    if wants_eval {
        forms.push(CacheForm::Eval);
    }
    if forms.is_empty() {
        return (None, None);
    }
    let mut paths = data.train.paths();
    paths.extend(data.validation.paths());
    if let Some(test) = &data.test {
        paths.extend(test.paths());
    }
    let mut progress = |done, total| {
        let _ = events.send(TrainEvent::Caching { done, total });
        !stop.load(Ordering::Relaxed)
    };
    let mut got = cache
        .prepare(pipeline, &forms, &paths, &mut progress)
        .into_iter();
    let train = if augmented {
        got.next().flatten()
    } else {
        None
    };
    let eval = if wants_eval {
        got.next().flatten()
    } else {
        None
    };
    (train, eval)
}

/// Seeds this job's device, chooses its precision and takes its TF32
/// setting and a stream of its own. The lease, when there is one, must be
/// held for the whole run.
fn set_up_device(
    spec: &TrainSpec,
) -> Result<(PrecisionPlan, Option<torchx::Tf32Lease>), TrainError> {
    let cfg = &spec.config;
    // Only this job's device: other workers' generators are left alone.
    torchx::manual_seed(spec.device, cfg.seed).map_err(torch_error(spec.device, "seeding"))?;
    let plan = PrecisionPlan::for_job(cfg.mixed_precision, cfg.strict_fp32, spec.device);
    tracing::info!(job = %spec.job_id, device = ?spec.device, plan = ?plan, "training precision");
    let tf32 = spec
        .device
        .is_cuda()
        .then(|| torchx::Tf32Lease::acquire(plan.tf32))
        .transpose()
        .map_err(torch_error(spec.device, "setting TF32"))?;
    // A stream of this thread's own: `/predict` on the same GPU does not
    // wait behind the training kernels (nor they behind it).
    torchx::use_own_stream(spec.device).map_err(torch_error(spec.device, "taking a stream"))?;
    Ok((plan, tf32))
}

/// The base model with this job's labels (a new head, drawn from the
/// seeded generator), regularisation and image size.
fn load_model(spec: &TrainSpec, data: &Prepared) -> Result<Model, TrainError> {
    let cfg = &spec.config;
    // Stochastic depth and dropout act in training only: not for linear
    // probes, whose backbone runs in evaluation mode.
    let regularisation = match cfg.mode {
        Mode::LinearProbe => Regularisation::default(),
        _ => Regularisation {
            drop_path_rate: cfg.drop_path_rate,
            dropout: cfg.dropout,
        },
    };
    let mut model = crate::model::load_pretrained_regularised(
        &spec.base_model_dir,
        spec.device,
        Some(&data.labels),
        &regularisation,
    )
    .map_err(|e| TrainError::fatal(format!("loading base model: {e:#}")))?;
    if let Some(size) = cfg.image_size {
        super::resolution::adapt(&mut model, size)?;
    }
    Ok(model)
}

/// The image pipeline, as the saved model will be served: an output size
/// the preprocessor leaves open is the model's `image_size` (after
/// [`super::resolution::adapt`]).
fn pipeline_for(spec: &TrainSpec, model: &Model) -> Result<Pipeline, TrainError> {
    let cfg = &spec.config;
    let preprocessor: PreprocessorConfig = serde_json::from_value(model.preprocessor_json.clone())
        .map_err(|e| {
            TrainError::fatal(format!("the base model's preprocessor_config.json: {e}"))
        })?;
    let pipeline = Pipeline::from_preprocessor(&preprocessor, cfg.image_size)
        .with_model_size(model.image_size() as u32)
        .with_randaugment(cfg.randaugment);
    Ok(match &spec.decode_budget {
        Some(budget) => pipeline.with_decode_budget(budget.clone()),
        None => pipeline,
    })
}

/// The loop's state before the first epoch (no checkpoint yet).
fn first_state(cfg: &JobConfig) -> LoopState {
    LoopState {
        epochs_done: 0,
        global_step: 0,
        best_epoch: None,
        best_score: None,
        epochs_since_best: 0,
        micro_batch: match cfg.micro_batch {
            Some(MicroBatch::Size(n)) => n,
            _ => cfg.batch_size / cfg.grad_accum_steps,
        },
        history: vec![],
        loss_scaler: None,
    }
}

/// MixUp / CutMix for image batches, when the job asks for it (never for
/// a linear probe, whose batches are cached features).
fn mixer_for(cfg: &JobConfig, data: &Prepared) -> Option<Mixer> {
    (cfg.mode != Mode::LinearProbe)
        .then(|| {
            Mixer::new(
                cfg.mixup_alpha,
                cfg.cutmix_alpha,
                data.task,
                data.labels.len(),
            )
        })
        .flatten()
}

/// Reads the checkpoint if there is one; a damaged one is a retryable error.
fn restore(
    ckpt: &Checkpoints,
    opt: &mut AdamW,
    buffers: &[(String, Tensor)],
) -> Result<Option<LoopState>, TrainError> {
    ckpt.restore(opt, buffers)
        .map_err(|e| TrainError::retry(format!("{e:#}")))
}

/// A `lora` job's new adapter, attached to the model (A drawn from the
/// job's seeded generator, B zeros; the head is the model's own).
fn lora_adapter(model: &Model, cfg: &JobConfig) -> Result<Option<Adapter>, TrainError> {
    if cfg.mode != Mode::Lora {
        return Ok(None);
    }
    let adapter = Adapter::init(model, &cfg.lora_spec())
        .and_then(|a| a.attach(model).map(|()| a))
        .map_err(|e| TrainError::fatal(format!("LoRA: {e}")))?;
    Ok(Some(adapter))
}

/// Which parameters train in this mode, with their learning-rate scale.
/// Roles come from the model's own parameter groups (embeddings, block or
/// stage i, final norm, head). Batch norms of frozen parts stop updating
/// their statistics ([`crate::model::ImageClassifier::set_trainable_parts`]).
/// A LoRA job trains its adapter's tensors (PEFT's names) and the head.
fn select_trainable(
    model: &Model,
    cfg: &JobConfig,
    adapter: Option<&Adapter>,
) -> Vec<(String, Tensor, f64)> {
    let depth = model.net.num_layers();
    let which = match cfg.mode {
        Mode::LinearProbe | Mode::Lora => Trainable::HeadOnly,
        Mode::Partial => Trainable::LastLayers(cfg.unfreeze_last_n()),
        Mode::Full => Trainable::All,
    };
    model.net.set_trainable_parts(which);
    if let Some(adapter) = adapter {
        for (_, _, t) in model.grouped_variables() {
            let _ = t.set_requires_grad(false);
        }
        return adapter
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.set_requires_grad(true), 1.0))
            .collect();
    }
    let mut out = Vec::new();
    for (name, group, tensor) in model.grouped_variables() {
        let trains = which.includes(group, depth);
        let tensor = tensor.set_requires_grad(trains);
        if !trains {
            continue;
        }
        // Layer-wise decay: the head and final norm at full rate, block i
        // at decay^(depth - i), the embeddings one step further down.
        let distance = match group {
            ParamGroup::Layer(l) => depth - l,
            ParamGroup::Embeddings => depth + 1,
            ParamGroup::FinalNorm | ParamGroup::Head => 0,
        };
        let scale = match cfg.layer_lr_decay {
            Some(d) if cfg.mode == Mode::Full => d.powi(distance as i32),
            _ => 1.0,
        };
        out.push((name, tensor, scale));
    }
    out
}

struct Trainer<'a> {
    spec: &'a TrainSpec,
    cfg: &'a JobConfig,
    data: &'a Prepared,
    model: &'a Model,
    /// A `lora` job's adapter (saved in PEFT's format instead of the model).
    adapter: Option<&'a Adapter>,
    pipeline: Pipeline,
    /// MixUp / CutMix of image batches (never of cached features).
    mixer: Option<Mixer>,
    plan: PrecisionPlan,
    /// Puts loader batches on the device (normalising 8-bit ones there).
    placer: InputPlacer,
    train_format: PixelFormat,
    eval_format: PixelFormat,
    events: &'a Events,
    stop: &'a StopFlag,
    best_dir: PathBuf,
    trainable_parameters: u64,
    /// Where the run's time goes (`train/timing.rs`).
    clock: RefCell<StepClock>,
    /// Training copies (augmented runs) from the decode-once cache.
    train_cache: Option<Arc<CachedImages>>,
    /// Evaluation outputs from the decode-once cache.
    eval_cache: Option<Arc<CachedImages>>,
    /// This rank's process group when the job runs on several ranks.
    ranks: Option<&'a Ranks>,
}

/// Per-mode inputs: cached features (linear probe) or image paths.
enum Inputs {
    Features {
        train: Tensor,
        validation: Tensor,
        test: Option<Tensor>,
    },
    Images,
}

impl Trainer<'_> {
    fn device(&self) -> Device {
        self.spec.device
    }

    /// Whether to stop now. With several ranks every rank asks at the same
    /// points and all agree (a rank that left would leave the others
    /// waiting in a collective); a failed agreement stops too.
    fn stopped(&self) -> bool {
        let local = self.stop.load(Ordering::Relaxed);
        match self.ranks {
            Some(r) => r.any(local).unwrap_or(true),
            None => local,
        }
    }

    /// Batch norms' statistics follow rank 0 (DDP's `broadcast_buffers`),
    /// before every step and every evaluation.
    fn follow_leader_buffers(&self) -> Result<(), TrainError> {
        let Some(r) = self.ranks else { return Ok(()) };
        let buffers: Vec<Tensor> = self.model.buffers().into_iter().map(|(_, t)| t).collect();
        if buffers.is_empty() {
            return Ok(());
        }
        r.broadcast_from_leader(&buffers)
    }

    /// Whether this run writes files and events (rank 0, or the only rank).
    fn leads(&self) -> bool {
        self.ranks.is_none_or(Ranks::is_leader)
    }

    /// The forward pass of images as the plan says (autocast or fp32).
    fn forward_images(&self, xs: &Tensor, train: bool) -> Result<Tensor, String> {
        let _autocast = self.plan.autocast().map_err(|e| e.0)?;
        Ok(self.model.net.forward_t(xs, train))
    }

    fn inputs(&self) -> Result<Option<Inputs>, TrainError> {
        if self.cfg.mode != Mode::LinearProbe {
            return Ok(Some(Inputs::Images));
        }
        let mut splits = vec![
            ("train", self.data.train.paths()),
            ("validation", self.data.validation.paths()),
        ];
        if let Some(test) = &self.data.test {
            splits.push(("test", test.paths()));
        }
        let batch = (self.cfg.batch_size as usize).max(16);
        let found = features::compute_or_load(
            &features::FeatureSource {
                work_dir: &self.spec.rank_scratch(self.ranks.map_or(0, Ranks::rank)),
                net: self.model.net.as_ref(),
                pipeline: &self.pipeline,
                placer: &self.placer,
                format: self.eval_format,
                cache: self.eval_cache.clone(),
                batch,
                device: self.device(),
                events: self.events,
                stop: self.stop,
            },
            &splits,
        )?;
        if let (Some(sync), Some(_)) = (&self.spec.artifacts, &found) {
            sync.features_saved();
        }
        Ok(found.map(|mut f| {
            let test = (f.len() == 3).then(|| f.pop().unwrap());
            let validation = f.pop().unwrap();
            let train = f.pop().unwrap();
            Inputs::Features {
                train,
                validation,
                test,
            }
        }))
    }

    /// Runs the remaining epochs; returns whether it was interrupted.
    fn train(
        &mut self,
        opt: &mut AdamW,
        scaler: &mut Option<LossScaler>,
        state: &mut LoopState,
        ckpt: &Checkpoints,
    ) -> Result<bool, TrainError> {
        // A linear probe's feature pass is the backbone's forward passes.
        let inputs = self
            .clock
            .borrow_mut()
            .device(Phase::Compute, || self.inputs())?;
        let Some(inputs) = inputs else {
            return Ok(true);
        };
        let schedule = self.start(state);
        while state.epochs_done < self.cfg.epochs {
            let Some(totals) = self.run_epoch(opt, scaler, state, &inputs, &schedule)? else {
                return Ok(true);
            };
            match self.end_epoch(opt, scaler.as_ref(), state, ckpt, &inputs, totals)? {
                AfterEpoch::Continue => {}
                AfterEpoch::EarlyStop => break,
                AfterEpoch::Stopped => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The run's schedule, announced with [`TrainEvent::Started`].
    fn start(&self, state: &LoopState) -> Schedule {
        let cfg = self.cfg;
        let n_train = self.data.train.len();
        let local_n = match self.ranks {
            Some(r) => n_train.div_ceil(r.world()),
            None => n_train,
        };
        let steps_per_epoch = local_n.div_ceil(cfg.batch_size as usize) as u64;
        let total_steps = steps_per_epoch * cfg.epochs as u64;
        let warmup = (total_steps as f64 * cfg.warmup_ratio).round() as usize;
        let _ = self.events.send(TrainEvent::Started {
            epochs: cfg.epochs,
            start_epoch: state.epochs_done,
            steps_per_epoch,
            train_images: n_train,
            validation_images: self.data.validation.len(),
            micro_batch: state.micro_batch,
            trainable_parameters: self.trainable_parameters,
            ranks: vec![
                crate::torch_info::device_name(self.device());
                self.ranks.map_or(1, Ranks::world)
            ],
        });
        let targets = targets_tensor(
            &self.data.train.targets(),
            self.data.task,
            self.data.labels.len(),
        );
        Schedule {
            n_train,
            steps_per_epoch,
            total_steps,
            warmup,
            targets,
            started: Instant::now(),
            steps_at_start: state.global_step,
        }
    }

    /// The optimiser steps of epoch `state.epochs_done`, in its shuffled
    /// order. `None`: stopped part-way.
    fn run_epoch(
        &self,
        opt: &mut AdamW,
        scaler: &mut Option<LossScaler>,
        state: &mut LoopState,
        inputs: &Inputs,
        schedule: &Schedule,
    ) -> Result<Option<EpochTotals>, TrainError> {
        let cfg = self.cfg;
        let epoch = state.epochs_done;
        let order = self.epoch_order(epoch, schedule.n_train)?;
        let mut totals = EpochTotals {
            started: Instant::now(),
            loss_sum: 0.0,
            seen: 0,
            lr: 0.0,
        };
        // The epoch's order and targets go to the device once; each
        // batch is then a slice of them (a copy from pageable memory
        // per batch would wait for the device every step).
        let order_cpu = Tensor::from_slice(&order.iter().map(|&v| v as i64).collect::<Vec<_>>());
        let epoch_targets = schedule
            .targets
            .index_select(0, &order_cpu)
            .to_device(self.device());
        let batch = cfg.batch_size as i64;
        let mut batches = self.batch_source(inputs, &order_cpu, order, epoch);
        let mut window = LossWindow::default();
        let mut step_in_epoch = 0u64;
        loop {
            // (A `while let` would hold the clock's borrow through the body.)
            let next = self
                .clock
                .borrow_mut()
                .host(Phase::InputWait, || batches.next());
            let Some(item) = next else { break };
            if self.stopped() {
                return Ok(None);
            }
            let (len, x) = item?;
            let (x, y) = self.clock.borrow_mut().device(Phase::Compute, || {
                let x = self.placer.place(&x);
                let y = epoch_targets.narrow(0, step_in_epoch as i64 * batch, len as i64);
                self.mix(x, y, epoch, step_in_epoch)
            });
            totals.lr = lr_at(
                state.global_step as usize,
                schedule.total_steps as usize,
                schedule.warmup,
                cfg.lr(),
            );
            let batch_loss = self.step(opt, scaler, state, inputs, &x, &y, totals.lr)? * len as f64;
            window.add(batch_loss, len);
            totals.seen += len;
            state.global_step += 1;
            step_in_epoch += 1;
            if step_in_epoch % LOSS_READ_EVERY == 0 || step_in_epoch == schedule.steps_per_epoch {
                self.read_loss(&mut window, &mut totals, state, schedule)?;
            }
        }
        Ok(Some(totals))
    }

    /// The shuffled order of `epoch`'s training samples. Seeds the device's
    /// generator too: everything random in an epoch derives from
    /// (seed, epoch), so a resumed run repeats the epochs it redoes.
    fn epoch_order(&self, epoch: u32, n_train: usize) -> Result<Vec<usize>, TrainError> {
        let (device, seed) = (self.device(), self.cfg.seed);
        torchx::manual_seed(device, seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9))
            .map_err(torch_error(device, "seeding"))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64));
        let mut order: Vec<usize> = (0..n_train).collect();
        order.shuffle(&mut rng);
        Ok(match self.ranks {
            Some(r) => {
                super::distributed::shard(&order, r.rank(), r.world(), self.cfg.batch_size as usize)
            }
            None => order,
        })
    }

    /// The epoch's batches: slices of the cached features (linear probe),
    /// or images decoded and augmented by a loader thread.
    fn batch_source(
        &self,
        inputs: &Inputs,
        order_cpu: &Tensor,
        order: Vec<usize>,
        epoch: u32,
    ) -> StepBatches<'static> {
        let cfg = self.cfg;
        let batch = cfg.batch_size as i64;
        match inputs {
            Inputs::Features { train, .. } => {
                let order_dev = order_cpu.to_device(train.device());
                let train = train.shallow_clone();
                let n = order.len() as i64;
                Box::new((0..n).step_by(batch as usize).map(move |start| {
                    let len = batch.min(n - start);
                    Ok((
                        len as usize,
                        train.index_select(0, &order_dev.narrow(0, start, len)),
                    ))
                }))
            }
            Inputs::Images => {
                let seed = cfg.augmentation.then_some(rng_seed(cfg.seed, epoch));
                // Augmented batches come from training copies; without
                // augmentation training reads evaluation outputs.
                let cache = match seed {
                    Some(_) => self.train_cache.clone(),
                    None => self.eval_cache.clone(),
                };
                let rx = spawn_loader(
                    self.pipeline.clone(),
                    self.data.train.paths(),
                    order,
                    cfg.batch_size as usize,
                    seed,
                    self.train_format,
                    cache,
                );
                Box::new(rx.into_iter().map(|b| {
                    b.pixels
                        .map(|p| (b.indices.len(), p))
                        .map_err(TrainError::fatal)
                }))
            }
        }
    }

    /// MixUp / CutMix of one image batch, drawn from (seed, epoch, step) so
    /// that a resumed run draws the same.
    fn mix(&self, x: Tensor, y: Tensor, epoch: u32, step_in_epoch: u64) -> (Tensor, Tensor) {
        match &self.mixer {
            Some(mixer) => {
                let size = x.size();
                let mut rng = Mixer::rng(rng_seed(self.cfg.seed, epoch), step_in_epoch);
                let mix = mixer.draw(size[2], size[3], &mut rng);
                mixer.apply(mix, &x, &y)
            }
            None => (x, y),
        }
    }

    /// Reads the loss window on the host (this waits for the device), fails
    /// the run on a loss that is no longer finite, and reports progress.
    fn read_loss(
        &self,
        window: &mut LossWindow,
        totals: &mut EpochTotals,
        state: &LoopState,
        schedule: &Schedule,
    ) -> Result<(), TrainError> {
        let (sum, images) = window.read();
        let mean = sum / images.max(1) as f64;
        if !mean.is_finite() {
            return Err(TrainError::fatal(format!(
                "the loss became {mean}; lower the learning rate"
            )));
        }
        totals.loss_sum += sum;
        let elapsed = schedule.started.elapsed().as_secs_f64();
        let done_here = (state.global_step - schedule.steps_at_start) as f64;
        let per_step = elapsed / done_here.max(1.0);
        let images_per_sec = totals.seen as f64 / totals.started.elapsed().as_secs_f64().max(1e-9);
        let _ = self.events.send(TrainEvent::Step {
            epoch: state.epochs_done + 1,
            step: state.global_step,
            total_steps: schedule.total_steps,
            loss: mean,
            learning_rate: totals.lr,
            images_per_sec,
            eta_secs: per_step * (schedule.total_steps - state.global_step) as f64,
        });
        Ok(())
    }

    /// Evaluates the finished epoch, keeps its weights if they are the best
    /// so far, writes the checkpoint and decides on early stopping.
    fn end_epoch(
        &self,
        opt: &AdamW,
        scaler: Option<&LossScaler>,
        state: &mut LoopState,
        ckpt: &Checkpoints,
        inputs: &Inputs,
        totals: EpochTotals,
    ) -> Result<AfterEpoch, TrainError> {
        let epoch = state.epochs_done;
        let train_secs = totals.started.elapsed().as_secs_f64();
        let evaluated = self.clock.borrow_mut().host(Phase::Eval, || {
            self.evaluate_split(inputs, Split::Validation, None)
        })?;
        let Some((val_loss, validation)) = evaluated else {
            return Ok(AfterEpoch::Stopped);
        };
        let mut metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: totals.loss_sum / totals.seen.max(1) as f64,
            validation_loss: val_loss,
            learning_rate: totals.lr,
            seconds: totals.started.elapsed().as_secs_f64(),
            train_images_per_sec: totals.seen as f64 / train_secs.max(1e-9),
            time_shares: Default::default(),
            validation,
        };
        let score = metrics.validation.score_by(self.cfg.selection_metric);
        let improved = state.best_score.is_none_or(|b| score > b);
        if improved {
            self.clock
                .borrow_mut()
                .host(Phase::Checkpoint, || self.save_best(&metrics))?;
            state.best_score = Some(score);
            state.best_epoch = Some(epoch + 1);
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        // The epoch checkpoint's own write counts in the next lap.
        metrics.time_shares = self.clock.borrow_mut().lap();
        state.history.push(metrics.clone());
        state.epochs_done += 1;
        self.clock.borrow_mut().host(Phase::Checkpoint, || {
            self.save_checkpoint(opt, scaler, state, ckpt, improved)
        })?;
        let _ = self.events.send(TrainEvent::Epoch(metrics));
        match self.cfg.early_stopping_patience {
            Some(p) if state.epochs_since_best >= p => {
                tracing::info!(job = %self.spec.job_id, epoch = epoch + 1, "early stopping");
                Ok(AfterEpoch::EarlyStop)
            }
            _ => Ok(AfterEpoch::Continue),
        }
    }

    /// Writes the epoch checkpoint (`state` already counts the epoch) and,
    /// with an artefact store, uploads it.
    fn save_checkpoint(
        &self,
        opt: &AdamW,
        scaler: Option<&LossScaler>,
        state: &mut LoopState,
        ckpt: &Checkpoints,
        improved: bool,
    ) -> Result<(), TrainError> {
        state.loss_scaler = scaler.map(LossScaler::state);
        if !self.leads() {
            return Ok(());
        }
        ckpt.save(opt, &self.model.buffers(), state)
            .map_err(|e| TrainError::retry(format!("writing checkpoint: {e:#}")))?;
        if let Some(sync) = &self.spec.artifacts {
            // Past the retries, a store outage fails the job; the
            // stored pointer still names the previous checkpoint.
            sync.epoch_saved(state.epochs_done, improved)
                .map_err(|e| TrainError::fatal(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// One optimiser step over a batch, split into micro-batches; halves the
    /// micro-batch and retries when memory runs out (in the forward or
    /// backward pass, unscaling, clipping, or the optimiser before it starts
    /// changing weights). Returns the batch's mean loss, on the device.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        opt: &mut AdamW,
        scaler: &mut Option<LossScaler>,
        state: &mut LoopState,
        inputs: &Inputs,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
    ) -> Result<Tensor, TrainError> {
        let n = x.size()[0];
        let job = &self.spec.job_id;
        // Set once the optimiser may have changed weights: a retry then
        // would apply part of the update twice.
        let updating = Cell::new(false);
        let attempt = |micro: i64| -> Result<Tensor, String> {
            let err = |e: torchx::TorchError| e.0;
            opt.zero_grad().map_err(err)?;
            let mut total: Option<Tensor> = None;
            let mut start = 0;
            while start < n {
                let len = micro.min(n - start);
                if start + len >= n {
                    // The step's last backward pass averages over ranks.
                    self.ranks.map(Ranks::arm_backward).transpose()?;
                }
                let xs = x.narrow(0, start, len);
                let ys = y.narrow(0, start, len);
                let part = self.clock.borrow_mut().device(Phase::Compute, || {
                    self.forward_backward(inputs, scaler.as_ref(), &xs, &ys, len as f64 / n as f64)
                })? * len as f64;
                total = Some(match total.take() {
                    Some(t) => t + part,
                    None => part,
                });
                start += len;
            }
            self.clock.borrow_mut().device(Phase::Optimizer, || {
                if let Some(s) = scaler.as_mut() {
                    s.unscale(&opt.grads()).map_err(err)?;
                }
                let clipped = opt.clip_grad_norm(self.cfg.max_grad_norm).map_err(err)?;
                updating.set(true);
                // Skipped on the device when the gradients hold inf/NaN (an
                // fp16 overflow, or a diverging run the loss check reports).
                opt.step(lr, Some(&clipped.found_inf)).map_err(err)?;
                if let Some(s) = scaler.as_mut() {
                    s.update().map_err(err)?;
                }
                Ok::<(), String>(())
            })?;
            Ok(total.expect("a non-empty batch") / n as f64)
        };
        self.follow_leader_buffers()?;
        let smaller = |micro_batch: u32| {
            tracing::warn!(%job, micro_batch, "out of memory; retrying with a smaller micro-batch");
            let _ = self.events.send(TrainEvent::OutOfMemory { micro_batch });
        };
        let mean = retry_smaller(&mut state.micro_batch, n, attempt, smaller, || {
            !updating.get()
        })
        .map_err(|f| TrainError::from_failure(f, self.device(), "training step failed"))?;
        match self.ranks {
            Some(r) => r.mean(&mean),
            None => Ok(mean),
        }
    }

    /// The forward and backward passes of one micro-batch (`weight`: its
    /// share of the batch), through activation checkpointing when the job
    /// asks for it; returns its mean loss, detached.
    fn forward_backward(
        &self,
        inputs: &Inputs,
        scaler: Option<&LossScaler>,
        xs: &Tensor,
        ys: &Tensor,
        weight: f64,
    ) -> Result<Tensor, String> {
        if let Some(limit) = self.spec.oom_above_micro_batch {
            if xs.size()[0] > i64::from(limit) {
                return Err(format!(
                    "CUDA out of memory (injected above {limit} images)"
                ));
            }
        }
        let mut mean = None;
        let mut to_backward = |logits: &Tensor| {
            let l = loss(logits, ys, self.data.task, self.cfg.label_smoothing);
            let weighted = &l * weight;
            mean = Some(l.detach());
            match scaler {
                Some(s) => s.scale_loss(&weighted),
                None => weighted,
            }
        };
        match inputs {
            Inputs::Features { .. } => to_backward(&self.model.net.head(xs)).backward(),
            Inputs::Images if self.cfg.gradient_checkpointing => {
                let _autocast = self.plan.autocast().map_err(|e| e.0)?;
                let units = self.model.net.chain(true);
                super::recompute::forward_backward(&units, self.device(), xs, to_backward)?;
            }
            Inputs::Images => to_backward(&self.forward_images(xs, true)?).backward(),
        }
        Ok(mean.expect("the loss was computed"))
    }

    /// `micro_batch: auto`: the largest micro-batch that fits this model,
    /// mode, device, precision, size and checkpointing, probed with real
    /// training micro-steps on blank images (their gradients dropped, batch
    /// norm statistics and the generator put back) and remembered.
    fn probe_micro_batch(&self, opt: &mut AdamW) -> Result<u32, TrainError> {
        let cfg = self.cfg;
        let (h, w) = self.pipeline.train_size();
        let key = super::micro_batch::ProbeKey {
            base_model: cfg.base_model.clone(),
            mode: format!("{:?}", cfg.mode),
            device: format!("{:?}", self.device()),
            precision: format!("{:?}", self.plan),
            image_size: i64::from(h.max(w)),
            checkpointing: cfg.gradient_checkpointing,
        };
        let buffers: Vec<(Tensor, Tensor)> = self
            .model
            .buffers()
            .into_iter()
            .map(|(_, t)| (t.copy(), t))
            .collect();
        let rng =
            torchx::rng_state(self.device()).map_err(torch_error(self.device(), "probing"))?;
        let try_size = |m: u32| -> Result<(), String> {
            let opts = (Kind::Float, self.device());
            let xs = Tensor::zeros([i64::from(m), 3, i64::from(h), i64::from(w)], opts);
            let ys = match self.data.task {
                Task::MultiClass => Tensor::zeros([i64::from(m)], (Kind::Int64, self.device())),
                Task::MultiLabel => {
                    Tensor::zeros([i64::from(m), self.data.labels.len() as i64], opts)
                }
            };
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.forward_backward(&Inputs::Images, None, &xs, &ys, 1.0)
            }));
            let _ = opt.zero_grad();
            match run {
                Ok(r) => r.map(|_| ()),
                Err(p) => Err(oom::panic_message(&p)),
            }
        };
        let found = super::micro_batch::largest_fitting(&key, cfg.batch_size, try_size);
        tch::no_grad(|| {
            for (saved, mut live) in buffers {
                live.copy_(&saved);
            }
        });
        torchx::set_rng_state(self.device(), &rng)
            .map_err(torch_error(self.device(), "probing"))?;
        let micro = found.map_err(|e| {
            TrainError::from_failure(
                oom::Failure::new(e),
                self.device(),
                "probing the micro-batch",
            )
        })?;
        tracing::info!(job = %self.spec.job_id, micro, "micro-batch probed");
        Ok(micro)
    }

    /// Logits of a whole split, then its loss and metrics. `None`: stopped.
    fn evaluate_split(
        &self,
        inputs: &Inputs,
        split: Split,
        thresholds: Option<&[f64]>,
    ) -> Result<Option<(f64, Evaluation)>, TrainError> {
        let Some(logits) = self.split_logits(inputs, split)? else {
            return Ok(None);
        };
        Ok(Some(evaluate(
            &logits,
            &self.samples(split).targets(),
            self.data.task,
            &self.data.labels,
            thresholds,
        )))
    }

    fn samples(&self, split: Split) -> &super::data::Samples {
        match split {
            Split::Validation => &self.data.validation,
            Split::Test => self.data.test.as_ref().expect("a test split"),
        }
    }

    /// The logits of a whole split. `None`: stopped.
    fn split_logits(&self, inputs: &Inputs, split: Split) -> Result<Option<Tensor>, TrainError> {
        self.follow_leader_buffers()?;
        let samples = self.samples(split);
        let logits = match inputs {
            Inputs::Features {
                validation, test, ..
            } => {
                let f = match split {
                    Split::Validation => validation,
                    Split::Test => test.as_ref().expect("test features"),
                };
                tch::no_grad(|| self.model.net.head(f))
            }
            Inputs::Images => {
                let order: Vec<usize> = match self.ranks {
                    Some(r) => r.eval_shard(samples.len()),
                    None => (0..samples.len()).collect(),
                };
                let rx = spawn_loader(
                    self.pipeline.clone(),
                    samples.paths(),
                    order,
                    self.cfg.batch_size as usize,
                    None,
                    self.eval_format,
                    self.eval_cache.clone(),
                );
                let mut parts = Vec::new();
                let mut micro = self.cfg.batch_size;
                for b in rx {
                    if self.stopped() {
                        return Ok(None);
                    }
                    let x = self.placer.place(&b.pixels.map_err(TrainError::fatal)?);
                    let out = infer_in_chunks(
                        &mut micro,
                        &x,
                        |xs| {
                            let out = tch::no_grad(|| self.forward_images(xs, false))?;
                            Ok(out.to_kind(Kind::Float))
                        },
                        |micro| {
                            tracing::warn!(job = %self.spec.job_id, micro, "out of memory while evaluating; smaller batches")
                        },
                    )
                    .map_err(|f| TrainError::from_failure(f, self.device(), "evaluating"))?;
                    parts.push(out);
                }
                let local = Tensor::cat(&parts, 0);
                match self.ranks {
                    Some(r) => r.gather_rows(&local, samples.len())?,
                    None => local,
                }
            }
        };
        Ok(Some(logits))
    }

    /// Fits temperature scaling on the validation split with the best
    /// weights, and measures it there and on the test split, whose metrics
    /// it also computes (`train/calibrate.rs`). `None`: stopped.
    fn calibrate(&self, inputs: &Inputs) -> Result<Option<Calibrated>, TrainError> {
        let Some(validation) = self.split_logits(inputs, Split::Validation)? else {
            return Ok(None);
        };
        let test = match &self.data.test {
            Some(samples) => match self.split_logits(inputs, Split::Test)? {
                Some(logits) => Some((logits, samples.targets())),
                None => return Ok(None),
            },
            None => None,
        };
        let targets = self.data.validation.targets();
        Ok(Some(calibrate(
            self.data.task,
            &self.data.labels,
            (&validation, &targets),
            test.as_ref().map(|(l, t)| (l, t.as_slice())),
        )))
    }

    /// Writes the current weights as the best model so far (HF layout).
    fn save_best(&self, metrics: &EpochMetrics) -> Result<(), TrainError> {
        if !self.leads() {
            return Ok(());
        }
        let tmp = self.best_dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let problem = match self.data.task {
            Task::MultiClass => crate::model::ProblemType::SingleLabel,
            Task::MultiLabel => crate::model::ProblemType::MultiLabel,
        };
        match self.adapter {
            Some(adapter) => crate::model::lora::save_adapter(
                self.model,
                adapter,
                &tmp,
                &self.cfg.base_model,
                problem,
            ),
            None => crate::model::save_pretrained(self.model, &tmp, problem),
        }
        .map_err(|e| TrainError::retry(format!("saving the model: {e:#}")))?;
        std::fs::write(
            tmp.join("epoch_metrics.json"),
            serde_json::to_vec_pretty(metrics).map_err(TrainError::retry)?,
        )
        .map_err(TrainError::retry)?;
        let _ = std::fs::remove_dir_all(&self.best_dir);
        std::fs::rename(&tmp, &self.best_dir).map_err(TrainError::retry)?;
        Ok(())
    }

    /// Loads the best weights back, evaluates the test split once, and
    /// writes `metrics.json` beside the best model.
    /// Loads the best weights back (rank 0 reads them; the other ranks
    /// receive them).
    fn restore_best(&self, opt: &AdamW, weights: &Path) -> Result<(), TrainError> {
        if self.leads() {
            load_weights(&opt.params, weights)?;
        }
        if let Some(r) = self.ranks {
            let params: Vec<Tensor> = opt
                .params
                .iter()
                .map(|p| p.tensor.shallow_clone())
                .collect();
            r.broadcast_from_leader(&params)?;
        }
        Ok(())
    }

    fn finish(
        &mut self,
        opt: &mut AdamW,
        state: &LoopState,
        interrupted: bool,
    ) -> Result<TrainOutcome, TrainError> {
        let weights = self.best_dir.join(match self.adapter {
            Some(_) => crate::model::lora::files::WEIGHTS_FILE,
            None => "model.safetensors",
        });
        // Only rank 0 wrote the best model; the others follow its record.
        let has_best = (!self.leads() || weights.exists()) && state.best_epoch.is_some();
        let mut outcome = TrainOutcome {
            best_model_dir: None,
            interrupted,
            card: None,
        };
        if !has_best {
            return Ok(outcome);
        }
        let best_epoch = state.best_epoch.unwrap();
        let best = state
            .history
            .iter()
            .find(|m| m.epoch == best_epoch)
            .cloned();
        let mut calibrated = None;
        if !interrupted {
            self.restore_best(opt, &weights)?;
            if let Some(inputs) = self.inputs()? {
                calibrated = self.calibrate(&inputs)?;
            }
        }
        if !self.leads() {
            return Ok(outcome);
        }
        let (thresholds, test, calibration) = match calibrated {
            Some(c) => (c.thresholds, c.test, Some(c.calibration)),
            None => (
                best.as_ref().and_then(|m| m.validation.thresholds()),
                None,
                None,
            ),
        };
        let card = ModelCard {
            task: self.data.task,
            labels: self.data.labels.clone(),
            best_epoch,
            validation: best,
            test,
            thresholds,
            calibration,
            history: state.history.clone(),
            dataset: self.data.split_counts(),
            // The job's own recipe (the global batch), not this rank's share.
            config: self.spec.config.clone(),
            time_shares: Some(
                state
                    .history
                    .iter()
                    .fold(TimeShares::default(), |mut t, m| {
                        t.add(&m.time_shares);
                        t
                    }),
            ),
        };
        card.write(&self.best_dir).map_err(TrainError::retry)?;
        std::fs::write(
            self.best_dir.join("training_config.json"),
            serde_json::to_vec_pretty(&self.spec.config).map_err(TrainError::retry)?,
        )
        .map_err(TrainError::retry)?;
        outcome.best_model_dir = Some(self.best_dir.clone());
        outcome.card = Some(card);
        Ok(outcome)
    }
}

/// The batches of one epoch, in the epoch's order: size and inputs.
type StepBatches<'a> = Box<dyn Iterator<Item = Result<(usize, Tensor), TrainError>> + 'a>;

/// Fixed for the whole run: the schedule's length and the training targets.
struct Schedule {
    n_train: usize,
    steps_per_epoch: u64,
    total_steps: u64,
    warmup: usize,
    /// The training split's targets, in dataset order, on the host.
    targets: Tensor,
    /// When this run (not the job: a resumed job restarts it) began, and
    /// the step it began at: the ETA counts only this run's steps.
    started: Instant,
    steps_at_start: u64,
}

/// What one epoch's steps add up to, for its metrics.
struct EpochTotals {
    started: Instant,
    /// Losses times batch sizes, summed as read back from the device.
    loss_sum: f64,
    seen: usize,
    /// The learning rate of the epoch's last step.
    lr: f64,
}

/// Losses (times batch sizes) summed on the device since the last read,
/// and the images they cover: the host reads them only every
/// [`LOSS_READ_EVERY`] steps.
#[derive(Default)]
struct LossWindow {
    sum: Option<Tensor>,
    images: usize,
}

impl LossWindow {
    fn add(&mut self, batch_loss: Tensor, images: usize) {
        self.sum = Some(match self.sum.take() {
            Some(w) => w + batch_loss,
            None => batch_loss,
        });
        self.images += images;
    }

    /// The summed loss and the images it covers, read on the host (which
    /// waits for the device); empties the window.
    fn read(&mut self) -> (f64, usize) {
        let sum = self.sum.take().map(|w| w.double_value(&[])).unwrap_or(0.0);
        (sum, std::mem::take(&mut self.images))
    }
}

/// How the loop goes on after an epoch.
enum AfterEpoch {
    Continue,
    EarlyStop,
    /// Stopped during the evaluation.
    Stopped,
}

#[derive(Clone, Copy)]
enum Split {
    Validation,
    Test,
}

fn rng_seed(seed: u64, epoch: u32) -> u64 {
    seed.wrapping_mul(0x5851_F42D_4C95_7F2D)
        .wrapping_add(epoch as u64)
}

/// Copies the tensors of a safetensors file into the parameters by name.
fn load_weights(params: &[super::optim::Param], file: &Path) -> Result<(), TrainError> {
    let stored: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(file)
        .map_err(TrainError::retry)?
        .into_iter()
        .collect();
    tch::no_grad(|| {
        for p in params {
            if let Some(src) = stored.get(&p.name) {
                let mut dst = p.tensor.shallow_clone();
                dst.copy_(src);
            }
        }
    });
    Ok(())
}

impl From<anyhow::Error> for TrainError {
    fn from(e: anyhow::Error) -> Self {
        TrainError::fatal(format!("{e:#}"))
    }
}

#[cfg(test)]
#[path = "speed_tests.rs"]
mod speed_tests;

#[cfg(all(test, vitrine_c10d))]
#[path = "distributed_tests.rs"]
mod distributed_tests;

#[cfg(test)]
#[path = "lora_tests.rs"]
mod lora_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model() -> Model {
        let config = crate::model::ModelConfig::from_json(
            serde_json::json!({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 3,
                "num_attention_heads": 2, "intermediate_size": 32, "image_size": 16, "patch_size": 8}),
            std::path::Path::new("config.json"),
        )
        .unwrap();
        Model::from_config(config, vec!["a".into(), "b".into()], tch::Device::Cpu).unwrap()
    }

    fn config(mode: &str, extra: serde_json::Value) -> JobConfig {
        let mut v = serde_json::json!({"base_model": "x", "mode": mode});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    /// A dataset archive (two labels, `n` small PNGs each) ingested as
    /// `POST /datasets` does, and a tiny ViT saved in the HF layout.
    pub(super) fn tiny_job(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
        use std::io::Write;
        let zip_path = dir.join("data.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for (label, tint) in [("cat", 40u8), ("dog", 200u8)] {
            for i in 0..n {
                let img = image::RgbImage::from_fn(20 + i as u32, 18, |x, y| {
                    image::Rgb([tint, ((x * 9 + y * 5) % 256) as u8, (i * 17 % 256) as u8])
                });
                let mut png = Vec::new();
                img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .unwrap();
                zip.start_file(
                    format!("train/{label}/{i}.png"),
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                zip.write_all(&png).unwrap();
            }
        }
        zip.finish().unwrap();
        let dataset = dir.join("dataset");
        let limits = crate::data::IngestLimits {
            max_entries: 1000,
            max_uncompressed_bytes: 1 << 30,
            max_image_pixels: 1 << 20,
            max_undecodable_fraction: 0.0,
            max_image_file_bytes: 64 << 20,
            decode_budget: crate::budget::DecodeBudget::new(1 << 30),
        };
        crate::data::ingest::ingest_archive(&zip_path, &dataset, &limits, &Default::default())
            .unwrap();
        let model_dir = dir.join("base");
        crate::model::save_pretrained(
            &tiny_model(),
            &model_dir,
            crate::model::ProblemType::SingleLabel,
        )
        .unwrap();
        (dataset, model_dir)
    }

    /// The body of `a_cpu_training_run_prints_no_warnings`, run in a child
    /// process so that libtorch's stderr can be captured: a full fine-tune
    /// on the CPU through `run`, plus the mixed-precision machinery a GPU
    /// job uses (autocast guard, TF32 switches, loss scaling, fused AdamW),
    /// driven on the CPU. With `VITRINE_TEST_DEPRECATED_AUTOCAST` set it
    /// calls tch's autocast instead, to show the capture sees warnings.
    #[test]
    #[ignore = "run in a child process by a_cpu_training_run_prints_no_warnings"]
    fn cpu_training_run_child() {
        if std::env::var_os("VITRINE_TEST_DEPRECATED_AUTOCAST").is_some() {
            // What `tch::autocast` calls first on a GPU (on the CPU it calls
            // nothing): torch-sys's wrapper of a deprecated ATen function.
            extern "C" {
                fn at_autocast_is_enabled() -> bool; // the control: warns
            }
            assert!(!unsafe { at_autocast_is_enabled() }); // the control: warns
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (dataset_dir, base_model_dir) = tiny_job(dir.path(), 10);
        let config = JobConfig::from_json(
            &serde_json::json!({
                "base_model": base_model_dir, "mode": "full", "epochs": 2, "batch_size": 4,
                "grad_accum_steps": 2, "layer_lr_decay": 0.8, "learning_rate": 1e-3,
                "mixed_precision": "auto"
            })
            .to_string(),
        )
        .unwrap();
        let spec = TrainSpec {
            job_id: "child".into(),
            config,
            dataset_dir,
            base_model_dir,
            work_dir: dir.path().join("work"),
            device: Device::Cpu,
            artifacts: None,
            decode_budget: None,
            input_cache: None,
            oom_above_micro_batch: None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outcome = run(spec, tx, Default::default()).unwrap();
        assert_eq!(outcome.card.unwrap().history.len(), 2);
        let mut steps = vec![];
        while let Ok(ev) = rx.try_recv() {
            if let TrainEvent::Step { step, loss, .. } = ev {
                assert!(loss.is_finite());
                steps.push(step);
            }
        }
        // 16 training images, batches of 4: 4 steps per epoch, the loss
        // read once per epoch (fewer than LOSS_READ_EVERY steps).
        assert_eq!(steps, vec![4, 8]);

        std::thread::spawn(|| {
            let x = Tensor::ones([4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let _tf32 = torchx::Tf32Lease::acquire(true).unwrap();
            let mut scaler = LossScaler::new(Device::Cpu);
            let mut opt = AdamW::new(vec![("w".into(), x.shallow_clone(), 1.0)], 0.01);
            let y = {
                let _g = torchx::AutocastGuard::enter(
                    torchx::AutocastDevice::Cpu,
                    torchx::FloatKind::BF16,
                )
                .unwrap();
                x.matmul(&x).sum(Kind::Float)
            };
            scaler.scale_loss(&y).backward();
            scaler.unscale(&opt.grads()).unwrap();
            let clipped = opt.clip_grad_norm(1.0).unwrap();
            opt.step(1e-3, Some(&clipped.found_inf)).unwrap();
            scaler.update().unwrap();
        })
        .join()
        .unwrap();
    }

    fn run_child(deprecated: bool) -> String {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "train::session::tests::cpu_training_run_child",
            "--ignored",
            "--test-threads=1",
        ]);
        if deprecated {
            cmd.env("VITRINE_TEST_DEPRECATED_AUTOCAST", "1");
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{stderr}"
        );
        stderr
    }

    fn warns(stderr: &str) -> bool {
        let s = stderr.to_ascii_lowercase();
        s.contains("warning") || s.contains("deprecat")
    }

    /// Issue 14: torch-sys's autocast calls print a deprecation warning per
    /// call, which broke JSON logs. A CPU training run (and the GPU-only
    /// machinery, driven on the CPU) now prints nothing on stderr, while the
    /// old call still does (so the capture works).
    #[test]
    fn a_cpu_training_run_prints_no_warnings() {
        let control = run_child(true);
        assert!(warns(&control), "the old autocast should warn: {control:?}");
        let stderr = run_child(false);
        assert!(!warns(&stderr), "warnings on stderr:\n{stderr}");
    }

    /// Nothing in the crate calls tch's autocast or torch-sys's deprecated
    /// autocast functions any more (but the control above).
    #[test]
    fn no_code_uses_tchs_autocast() {
        let needles = [concat!("tch::", "autocast("), concat!("at_", "autocast_")];
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let uses = text
                        .lines()
                        .filter(|l| needles.iter().any(|n| l.contains(n)))
                        .filter(|l| !l.ends_with("// the control: warns"))
                        .count();
                    assert_eq!(uses, 0, "{} calls tch's autocast", path.display());
                }
            }
        }
    }

    fn train_tiny(
        dir: &Path,
        base_model_dir: PathBuf,
        dataset_dir: PathBuf,
        extra: serde_json::Value,
    ) -> (TrainOutcome, Vec<f64>) {
        let (outcome, events) = train_tiny_with(dir, base_model_dir, dataset_dir, extra, |_| {});
        let losses = events
            .iter()
            .filter_map(|ev| match ev {
                TrainEvent::Step { loss, .. } => Some(*loss),
                _ => None,
            })
            .collect();
        (outcome, losses)
    }

    /// A full fine-tune of the tiny model (2 epochs of batches of 4 unless
    /// `extra` says otherwise), `tweak` setting the node's side of the spec;
    /// its outcome and every event.
    pub(super) fn train_tiny_with(
        dir: &Path,
        base_model_dir: PathBuf,
        dataset_dir: PathBuf,
        extra: serde_json::Value,
        tweak: impl FnOnce(&mut TrainSpec),
    ) -> (TrainOutcome, Vec<TrainEvent>) {
        train_tiny_run(
            dir,
            (base_model_dir, dataset_dir),
            extra,
            tweak,
            Default::default(),
        )
    }

    /// [`train_tiny_with`] with a stop flag the caller may raise.
    #[cfg_attr(not(vitrine_c10d), allow(dead_code))]
    pub(super) fn train_tiny_stoppable(
        dir: &Path,
        base_model_dir: PathBuf,
        dataset_dir: PathBuf,
        extra: serde_json::Value,
        stop: StopFlag,
    ) -> (TrainOutcome, Vec<TrainEvent>) {
        train_tiny_run(dir, (base_model_dir, dataset_dir), extra, |_| {}, stop)
    }

    fn train_tiny_run(
        dir: &Path,
        (base_model_dir, dataset_dir): (PathBuf, PathBuf),
        extra: serde_json::Value,
        tweak: impl FnOnce(&mut TrainSpec),
        stop: StopFlag,
    ) -> (TrainOutcome, Vec<TrainEvent>) {
        let mut json = serde_json::json!({
            "base_model": base_model_dir, "mode": "full", "epochs": 2, "batch_size": 4,
            "learning_rate": 1e-3
        });
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let spec = TrainSpec {
            job_id: "recipes".into(),
            config: JobConfig::from_json(&json.to_string()).unwrap(),
            dataset_dir,
            base_model_dir,
            work_dir: dir.join("work"),
            device: Device::Cpu,
            artifacts: None,
            decode_budget: None,
            input_cache: None,
            oom_above_micro_batch: None,
        };
        let mut spec = spec;
        tweak(&mut spec);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outcome = run(spec, tx, stop).unwrap();
        let mut events = vec![];
        while let Ok(ev) = rx.try_recv() {
            events.push(ev);
        }
        (outcome, events)
    }

    /// Every recipe at once on the tiny ViT (RandAugment, MixUp and CutMix,
    /// dropout, label smoothing, heavy weight decay) trains with finite
    /// losses, and the saved `config.json` records the dropout.
    #[test]
    fn every_recipe_trains_with_finite_losses() {
        let dir = tempfile::tempdir().unwrap();
        let (dataset_dir, base_model_dir) = tiny_job(dir.path(), 10);
        let (outcome, losses) = train_tiny(
            dir.path(),
            base_model_dir,
            dataset_dir,
            serde_json::json!({"randaugment": {"n": 2, "m": 9}, "mixup_alpha": 0.8,
                "cutmix_alpha": 1.0, "dropout": 0.1, "label_smoothing": 0.1,
                "weight_decay": "heavy"}),
        );
        assert_eq!(losses.len(), 2);
        assert!(
            losses.iter().all(|l| l.is_finite() && *l > 0.0),
            "{losses:?}"
        );
        let card = outcome.card.unwrap();
        assert!(card
            .history
            .iter()
            .all(|m| m.train_loss.is_finite() && m.validation_loss.is_finite()));
        assert_eq!(card.config.weight_decay, 0.1);
        let saved: serde_json::Value = serde_json::from_slice(
            &std::fs::read(outcome.best_model_dir.unwrap().join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved["hidden_dropout_prob"], 0.1);
    }

    /// `drop_path_rate` on a tiny DINOv2: it trains, the saved `config.json`
    /// records the rate, and `transformers` loads the directory.
    #[test]
    fn drop_path_trains_and_the_saved_model_loads_in_transformers() {
        let dir = tempfile::tempdir().unwrap();
        let (dataset_dir, _) = tiny_job(dir.path(), 6);
        let config = crate::model::ModelConfig::from_json(
            serde_json::json!({"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 2, "image_size": 16, "patch_size": 8}),
            Path::new("config.json"),
        )
        .unwrap();
        let model = Model::from_config(config, vec!["a".into(), "b".into()], Device::Cpu).unwrap();
        let base = dir.path().join("dinov2");
        crate::model::save_pretrained(&model, &base, crate::model::ProblemType::SingleLabel)
            .unwrap();
        let (outcome, losses) = train_tiny(
            dir.path(),
            base,
            dataset_dir,
            serde_json::json!({"epochs": 1, "drop_path_rate": 0.3, "dropout": 0.1}),
        );
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        let best = outcome.best_model_dir.unwrap();
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(best.join("config.json")).unwrap()).unwrap();
        assert_eq!(saved["drop_path_rate"], 0.3);
        let python = std::env::var_os("VITRINE_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import sys; from transformers import AutoModelForImageClassification as A; \
                 m = A.from_pretrained(sys.argv[1]); print(m.config.drop_path_rate, m.config.hidden_dropout_prob)",
            ])
            .arg(&best)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "0.3 0.1");
    }

    #[test]
    fn each_mode_trains_what_it_says_with_layer_wise_decay() {
        let model = tiny_model();
        let names = |sel: &[(String, Tensor, f64)]| -> Vec<String> {
            sel.iter().map(|(n, _, _)| n.clone()).collect()
        };
        let probe = select_trainable(&model, &config("linear_probe", serde_json::json!({})), None);
        assert!(
            names(&probe).iter().all(|n| n.starts_with("classifier.")),
            "{:?}",
            names(&probe)
        );
        assert_eq!(probe.len(), 2);

        let partial = names(&select_trainable(
            &model,
            &config("partial", serde_json::json!({"unfreeze_last_n": 1})),
            None,
        ));
        assert!(partial.iter().any(|n| n.contains("encoder.layer.2.")));
        assert!(partial.iter().any(|n| n.starts_with("vit.layernorm.")));
        assert!(!partial
            .iter()
            .any(|n| n.contains("layer.1.") || n.contains("embeddings")));
        // Frozen variables no longer require gradients.
        let frozen =
            model.vs.variables()["vit.encoder.layer.0.output.dense.weight"].requires_grad();
        assert!(!frozen);

        let full = select_trainable(
            &model,
            &config("full", serde_json::json!({"layer_lr_decay": 0.5})),
            None,
        );
        assert_eq!(full.len(), model.vs.variables().len());
        let scale = |name: &str| full.iter().find(|(n, _, _)| n == name).unwrap().2;
        assert_eq!(scale("classifier.weight"), 1.0);
        assert_eq!(scale("vit.encoder.layer.2.output.dense.weight"), 0.5);
        assert_eq!(scale("vit.encoder.layer.0.output.dense.weight"), 0.125);
        assert_eq!(scale("vit.embeddings.cls_token"), 0.0625);
    }
}
