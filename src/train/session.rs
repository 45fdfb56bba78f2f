//! The training loop for all three modes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::batches::spawn_loader;
use super::checkpoint::{Checkpoints, LoopState};
use super::config::{JobConfig, Mode, Precision};
use super::data::{prepare, Prepared};
use super::eval::{evaluate, loss, targets_tensor, EpochMetrics, Evaluation};
use super::oom::retry_smaller;
use super::optim::{lr_at, AdamW};
use super::record::{ModelCard, TestMetrics};
use super::{features, Events, StopFlag, TrainError, TrainEvent, TrainOutcome, TrainSpec};
use crate::data::Task;
use crate::imaging::{Pipeline, PreprocessorConfig};
use crate::model::{Model, ParamGroup};

/// Trains `spec`'s job to the end, to early stopping, or until `stop` is set.
pub fn run(spec: TrainSpec, events: Events, stop: StopFlag) -> Result<TrainOutcome, TrainError> {
    let cfg = &spec.config;
    std::fs::create_dir_all(&spec.work_dir)
        .map_err(|e| TrainError::retry(format!("creating the job's work directory: {e}")))?;
    let data = prepare(&spec)?;
    tch::manual_seed(cfg.seed as i64);
    let mut model =
        crate::model::load_pretrained(&spec.base_model_dir, spec.device, Some(&data.labels))
            .map_err(|e| TrainError::fatal(format!("loading base model: {e:#}")))?;
    if let Some(size) = cfg.image_size {
        super::resolution::adapt(&mut model, size)?;
    }
    let preprocessor: PreprocessorConfig = serde_json::from_value(model.preprocessor_json.clone())
        .map_err(|e| {
            TrainError::fatal(format!("the base model's preprocessor_config.json: {e}"))
        })?;
    // As the saved model will be served: an output size the preprocessor
    // leaves open is the model's `image_size` (after `adapt`).
    let pipeline = Pipeline::from_preprocessor(&preprocessor, cfg.image_size)
        .with_model_size(model.image_size() as u32);
    let params = select_trainable(&model, cfg);
    if params.is_empty() {
        return Err(TrainError::fatal("no trainable parameters for this mode"));
    }
    let mut opt = AdamW::new(params, cfg.weight_decay);
    let ckpt = Checkpoints::new(&spec.work_dir);
    let mut state = match restore(&ckpt, &mut opt)? {
        Some(s) => s,
        None => LoopState {
            epochs_done: 0,
            global_step: 0,
            best_epoch: None,
            best_score: None,
            epochs_since_best: 0,
            micro_batch: cfg.batch_size / cfg.grad_accum_steps,
            history: vec![],
        },
    };
    let mut trainer = Trainer {
        spec: &spec,
        cfg,
        data: &data,
        model: &model,
        pipeline,
        events: &events,
        stop: &stop,
        best_dir: spec.work_dir.join("best"),
    };
    let interrupted = trainer.train(&mut opt, &mut state, &ckpt)?;
    trainer.finish(&mut opt, &state, interrupted)
}

/// Reads the checkpoint if there is one; a damaged one is a retryable error.
fn restore(ckpt: &Checkpoints, opt: &mut AdamW) -> Result<Option<LoopState>, TrainError> {
    ckpt.restore(opt)
        .map_err(|e| TrainError::retry(format!("{e:#}")))
}

/// Which parameters train in this mode, with their learning-rate scale.
/// Roles come from the model's own parameter groups (embeddings, block i,
/// final norm, head).
fn select_trainable(model: &Model, cfg: &JobConfig) -> Vec<(String, Tensor, f64)> {
    let depth = model.net.num_layers();
    let first_trained = depth.saturating_sub(cfg.unfreeze_last_n());
    let mut out = Vec::new();
    for (name, group, tensor) in model.grouped_variables() {
        let trains = match (cfg.mode, group) {
            (Mode::LinearProbe, g) => g == ParamGroup::Head,
            (Mode::Partial, ParamGroup::Layer(l)) => l >= first_trained,
            (Mode::Partial, g) => g != ParamGroup::Embeddings,
            (Mode::Full, _) => true,
        };
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
    pipeline: Pipeline,
    events: &'a Events,
    stop: &'a StopFlag,
    best_dir: PathBuf,
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

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn bf16(&self) -> bool {
        self.device().is_cuda() && self.cfg.mixed_precision != Precision::Fp32
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
                work_dir: &self.spec.work_dir,
                net: self.model.net.as_ref(),
                pipeline: &self.pipeline,
                batch,
                device: self.device(),
                events: self.events,
                stop: self.stop,
            },
            &splits,
        )?;
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
        state: &mut LoopState,
        ckpt: &Checkpoints,
    ) -> Result<bool, TrainError> {
        let cfg = self.cfg;
        let Some(inputs) = self.inputs()? else {
            return Ok(true);
        };
        let n_train = self.data.train.len();
        let steps_per_epoch = n_train.div_ceil(cfg.batch_size as usize) as u64;
        let total_steps = steps_per_epoch * cfg.epochs as u64;
        let warmup = (total_steps as f64 * cfg.warmup_ratio).round() as usize;
        let _ = self.events.send(TrainEvent::Started {
            epochs: cfg.epochs,
            start_epoch: state.epochs_done,
            steps_per_epoch,
            train_images: n_train,
            validation_images: self.data.validation.len(),
            micro_batch: state.micro_batch,
        });
        let targets = targets_tensor(
            &self.data.train.targets(),
            self.data.task,
            self.data.labels.len(),
        );
        let run_started = Instant::now();
        let steps_at_start = state.global_step;
        while state.epochs_done < cfg.epochs {
            let epoch = state.epochs_done;
            // Everything random in this epoch derives from (seed, epoch).
            tch::manual_seed((cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9)) as i64);
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64));
            let mut order: Vec<usize> = (0..n_train).collect();
            order.shuffle(&mut rng);
            let epoch_started = Instant::now();
            let (mut loss_sum, mut seen) = (0.0, 0usize);
            let mut lr = 0.0;

            let mut step_batches: StepBatches = match &inputs {
                Inputs::Features { train, .. } => {
                    let chunks: Vec<Vec<usize>> = order
                        .chunks(cfg.batch_size as usize)
                        .map(|c| c.to_vec())
                        .collect();
                    let train = train.shallow_clone();
                    Box::new(chunks.into_iter().map(move |idx| {
                        let i =
                            Tensor::from_slice(&idx.iter().map(|&x| x as i64).collect::<Vec<_>>())
                                .to_device(train.device());
                        Ok((idx, train.index_select(0, &i)))
                    }))
                }
                Inputs::Images => {
                    let seed = cfg.augmentation.then_some(rng_seed(cfg.seed, epoch));
                    let rx = spawn_loader(
                        self.pipeline.clone(),
                        self.data.train.paths(),
                        order.clone(),
                        cfg.batch_size as usize,
                        seed,
                    );
                    Box::new(
                        rx.into_iter()
                            .map(|b| b.pixels.map(|p| (b.indices, p)).map_err(TrainError::fatal)),
                    )
                }
            };
            let mut interrupted = false;
            for item in &mut step_batches {
                if self.stopped() {
                    interrupted = true;
                    break;
                }
                let (idx, x) = item?;
                let x = x.to_device(self.device());
                let i = Tensor::from_slice(&idx.iter().map(|&v| v as i64).collect::<Vec<_>>());
                let y = targets.index_select(0, &i).to_device(self.device());
                lr = lr_at(
                    state.global_step as usize,
                    total_steps as usize,
                    warmup,
                    cfg.lr(),
                );
                let batch_loss = self.step(opt, state, &inputs, &x, &y, lr)?;
                loss_sum += batch_loss * idx.len() as f64;
                seen += idx.len();
                state.global_step += 1;
                let elapsed = run_started.elapsed().as_secs_f64();
                let done_here = (state.global_step - steps_at_start) as f64;
                let per_step = elapsed / done_here.max(1.0);
                let _ = self.events.send(TrainEvent::Step {
                    epoch: epoch + 1,
                    step: state.global_step,
                    total_steps,
                    loss: batch_loss,
                    learning_rate: lr,
                    images_per_sec: seen as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9),
                    eta_secs: per_step * (total_steps - state.global_step) as f64,
                });
            }
            drop(step_batches);
            if interrupted {
                return Ok(true);
            }
            let train_secs = epoch_started.elapsed().as_secs_f64();
            let Some((val_loss, validation)) =
                self.evaluate_split(&inputs, Split::Validation, None)?
            else {
                return Ok(true);
            };
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                train_loss: loss_sum / seen.max(1) as f64,
                validation_loss: val_loss,
                learning_rate: lr,
                seconds: epoch_started.elapsed().as_secs_f64(),
                train_images_per_sec: seen as f64 / train_secs.max(1e-9),
                validation,
            };
            let score = metrics.validation.score();
            let improved = state.best_score.is_none_or(|b| score > b);
            if improved {
                self.save_best(&metrics)?;
                state.best_score = Some(score);
                state.best_epoch = Some(epoch + 1);
                state.epochs_since_best = 0;
            } else {
                state.epochs_since_best += 1;
            }
            state.history.push(metrics.clone());
            state.epochs_done += 1;
            ckpt.save(opt, state)
                .map_err(|e| TrainError::retry(format!("writing checkpoint: {e:#}")))?;
            let _ = self.events.send(TrainEvent::Epoch(metrics));
            if let Some(p) = cfg.early_stopping_patience {
                if state.epochs_since_best >= p {
                    tracing::info!(job = %self.spec.job_id, epoch = epoch + 1, "early stopping");
                    break;
                }
            }
        }
        Ok(false)
    }

    /// One optimiser step over a batch, split into micro-batches; halves the
    /// micro-batch and retries when memory runs out.
    fn step(
        &self,
        opt: &mut AdamW,
        state: &mut LoopState,
        inputs: &Inputs,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
    ) -> Result<f64, TrainError> {
        let n = x.size()[0];
        let job = &self.spec.job_id;
        let attempt = |micro: i64| {
            opt.zero_grad();
            let mut total = 0.0;
            let mut start = 0;
            while start < n {
                let len = micro.min(n - start);
                let xs = x.narrow(0, start, len);
                let ys = y.narrow(0, start, len);
                let logits = match inputs {
                    Inputs::Features { .. } => self.model.net.head(&xs),
                    Inputs::Images if self.bf16() => {
                        tch::autocast(true, || self.model.net.forward_t(&xs, true))
                    }
                    Inputs::Images => self.model.net.forward_t(&xs, true),
                };
                let l = loss(&logits, &ys, self.data.task, self.cfg.label_smoothing);
                let weighted = &l * (len as f64 / n as f64);
                weighted.backward();
                total += l.double_value(&[]) * len as f64;
                start += len;
            }
            total / n as f64
        };
        let smaller = |micro_batch: u32| {
            tracing::warn!(%job, micro_batch, "out of memory; retrying with a smaller micro-batch");
            let _ = self.events.send(TrainEvent::OutOfMemory { micro_batch });
        };
        let loss = retry_smaller(&mut state.micro_batch, n, attempt, smaller)
            .map_err(|msg| TrainError::retry(format!("training step failed: {msg}")))?;
        if !loss.is_finite() {
            return Err(TrainError::fatal(format!(
                "the loss became {loss}; lower the learning rate"
            )));
        }
        opt.clip_grad_norm(self.cfg.max_grad_norm);
        opt.step(lr);
        Ok(loss)
    }

    /// Logits of a whole split, then its loss and metrics. `None`: stopped.
    fn evaluate_split(
        &self,
        inputs: &Inputs,
        split: Split,
        thresholds: Option<&[f64]>,
    ) -> Result<Option<(f64, Evaluation)>, TrainError> {
        let samples = match split {
            Split::Validation => &self.data.validation,
            Split::Test => self.data.test.as_ref().expect("a test split"),
        };
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
                let order: Vec<usize> = (0..samples.len()).collect();
                let rx = spawn_loader(
                    self.pipeline.clone(),
                    samples.paths(),
                    order,
                    self.cfg.batch_size as usize,
                    None,
                );
                let mut parts = Vec::new();
                for b in rx {
                    if self.stopped() {
                        return Ok(None);
                    }
                    let x = b
                        .pixels
                        .map_err(TrainError::fatal)?
                        .to_device(self.device());
                    let out = tch::no_grad(|| {
                        if self.bf16() {
                            tch::autocast(true, || self.model.net.forward_t(&x, false))
                        } else {
                            self.model.net.forward_t(&x, false)
                        }
                    });
                    parts.push(out.to_kind(Kind::Float));
                }
                Tensor::cat(&parts, 0)
            }
        };
        Ok(Some(evaluate(
            &logits,
            &samples.targets(),
            self.data.task,
            &self.data.labels,
            thresholds,
        )))
    }

    /// Writes the current weights as the best model so far (HF layout).
    fn save_best(&self, metrics: &EpochMetrics) -> Result<(), TrainError> {
        let tmp = self.best_dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let problem = match self.data.task {
            Task::MultiClass => crate::model::ProblemType::SingleLabel,
            Task::MultiLabel => crate::model::ProblemType::MultiLabel,
        };
        crate::model::save_pretrained(self.model, &tmp, problem)
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
    fn finish(
        &mut self,
        opt: &mut AdamW,
        state: &LoopState,
        interrupted: bool,
    ) -> Result<TrainOutcome, TrainError> {
        let has_best =
            self.best_dir.join("model.safetensors").exists() && state.best_epoch.is_some();
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
        let thresholds = best.as_ref().and_then(|m| m.validation.thresholds());
        let mut test = None;
        if self.data.test.is_some() && !interrupted {
            load_weights(&opt.params, &self.best_dir.join("model.safetensors"))?;
            if let Some(inputs) = self.inputs()? {
                if let Some((loss, metrics)) =
                    self.evaluate_split(&inputs, Split::Test, thresholds.as_deref())?
                {
                    test = Some(TestMetrics { loss, metrics });
                }
            }
        }
        let card = ModelCard {
            task: self.data.task,
            labels: self.data.labels.clone(),
            best_epoch,
            validation: best,
            test,
            thresholds,
            history: state.history.clone(),
            dataset: self.data.split_counts(),
            config: self.cfg.clone(),
        };
        card.write(&self.best_dir).map_err(TrainError::retry)?;
        std::fs::write(
            self.best_dir.join("training_config.json"),
            serde_json::to_vec_pretty(self.cfg).map_err(TrainError::retry)?,
        )
        .map_err(TrainError::retry)?;
        outcome.best_model_dir = Some(self.best_dir.clone());
        outcome.card = Some(card);
        Ok(outcome)
    }
}

/// The batches of one epoch: sample indices and inputs.
type StepBatches<'a> = Box<dyn Iterator<Item = Result<(Vec<usize>, Tensor), TrainError>> + 'a>;

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

    #[test]
    fn each_mode_trains_what_it_says_with_layer_wise_decay() {
        let model = tiny_model();
        let names = |sel: &[(String, Tensor, f64)]| -> Vec<String> {
            sel.iter().map(|(n, _, _)| n.clone()).collect()
        };
        let probe = select_trainable(&model, &config("linear_probe", serde_json::json!({})));
        assert!(
            names(&probe).iter().all(|n| n.starts_with("classifier.")),
            "{:?}",
            names(&probe)
        );
        assert_eq!(probe.len(), 2);

        let partial = names(&select_trainable(
            &model,
            &config("partial", serde_json::json!({"unfreeze_last_n": 1})),
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
        );
        assert_eq!(full.len(), model.vs.variables().len());
        let scale = |name: &str| full.iter().find(|(n, _, _)| n == name).unwrap().2;
        assert_eq!(scale("classifier.weight"), 1.0);
        assert_eq!(scale("vit.encoder.layer.2.output.dense.weight"), 0.5);
        assert_eq!(scale("vit.encoder.layer.0.output.dense.weight"), 0.125);
        assert_eq!(scale("vit.embeddings.cls_token"), 0.0625);
    }
}
