//! Epoch checkpoints: the weights, the optimiser state and the loop's own
//! state, written to a fresh directory and swapped in by rename so a crash
//! mid-write leaves the previous checkpoint intact.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::amp::ScalerState;
use super::optim::AdamW;
use super::EpochMetrics;

/// The training loop's state after a completed epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopState {
    /// Epochs completed (the next one to run, 0-based).
    pub epochs_done: u32,
    pub global_step: u64,
    pub best_epoch: Option<u32>,
    pub best_score: Option<f64>,
    pub epochs_since_best: u32,
    pub micro_batch: u32,
    pub history: Vec<EpochMetrics>,
    /// fp16's loss scale and growth tracker (absent in other precisions and
    /// in checkpoints written before loss scaling existed).
    #[serde(default)]
    pub loss_scaler: Option<ScalerState>,
}

pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    pub fn new(work_dir: &Path) -> Self {
        Self {
            dir: work_dir.join("checkpoint"),
        }
    }

    fn old(&self) -> PathBuf {
        self.dir.with_extension("old")
    }

    /// The newest complete checkpoint directory, if any.
    fn latest(&self) -> Option<PathBuf> {
        [self.dir.clone(), self.old()]
            .into_iter()
            .find(|d| d.join("state.json").exists())
    }

    /// Loads the newest checkpoint into the optimiser's parameters and state
    /// and into `buffers` (batch-norm statistics: not parameters, but they
    /// change in training).
    pub fn restore(
        &self,
        opt: &mut AdamW,
        buffers: &[(String, tch::Tensor)],
    ) -> anyhow::Result<Option<LoopState>> {
        let Some(dir) = self.latest() else {
            return Ok(None);
        };
        let state: LoopState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
            .context("reading checkpoint state")?;
        let weights: std::collections::HashMap<String, tch::Tensor> =
            tch::Tensor::read_safetensors(dir.join("weights.safetensors"))
                .context("reading checkpoint weights")?
                .into_iter()
                .collect();
        tch::no_grad(|| -> anyhow::Result<()> {
            for p in &opt.params {
                let src = weights
                    .get(&p.name)
                    .with_context(|| format!("checkpoint lacks {}", p.name))?;
                p.tensor.shallow_clone().copy_(src);
            }
            for (name, tensor) in buffers {
                let src = weights
                    .get(name)
                    .with_context(|| format!("checkpoint lacks buffer {name}"))?;
                tensor.shallow_clone().copy_(src);
            }
            Ok(())
        })?;
        opt.load(&dir.join("optimizer.safetensors"))?;
        Ok(Some(state))
    }

    /// Writes a checkpoint atomically (write aside, then rename).
    /// Only the trained parameters and the buffers are stored: frozen
    /// parameters come back from the base model.
    pub fn save(
        &self,
        opt: &AdamW,
        buffers: &[(String, tch::Tensor)],
        state: &LoopState,
    ) -> anyhow::Result<()> {
        let tmp = self.dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let named: Vec<(&str, tch::Tensor)> = opt
            .params
            .iter()
            .map(|p| (p.name.as_str(), &p.tensor))
            .chain(buffers.iter().map(|(n, t)| (n.as_str(), t)))
            .map(|(name, t)| (name, t.detach().to_device(tch::Device::Cpu)))
            .collect();
        tch::Tensor::write_safetensors(&named, tmp.join("weights.safetensors"))
            .context("writing checkpoint weights")?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        std::fs::write(tmp.join("state.json"), serde_json::to_vec(state)?)?;
        let old = self.old();
        let _ = std::fs::remove_dir_all(&old);
        if self.dir.exists() {
            std::fs::rename(&self.dir, &old)?;
        }
        std::fs::rename(&tmp, &self.dir)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, ModelConfig, ResNetConfig};
    use tch::{Device, Kind, Tensor};

    fn resnet() -> Model {
        let config = ModelConfig::ResNet(ResNetConfig {
            embedding_size: 8,
            hidden_sizes: vec![8, 16],
            depths: vec![1, 1],
            ..ResNetConfig::default()
        });
        Model::from_config(config, vec!["a".into(), "b".into()], Device::Cpu).unwrap()
    }

    fn optimiser(model: &Model) -> AdamW {
        let params = model
            .grouped_variables()
            .into_iter()
            .map(|(n, _, t)| (n, t, 1.0))
            .collect();
        AdamW::new(params, 0.0)
    }

    /// A resumed job keeps the batch-norm statistics of its last epoch, not
    /// the base model's: they are saved beside the parameters.
    #[test]
    fn batch_norm_statistics_survive_a_checkpoint() {
        let model = resnet();
        let opt = optimiser(&model);
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let _ = tch::no_grad(|| model.net.forward_t(&x, true));
        let trained: Vec<(String, Tensor)> = model
            .buffers()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        assert!(trained.iter().any(|(n, _)| n.ends_with("running_mean")));
        let dir = tempfile::tempdir().unwrap();
        let ckpt = Checkpoints::new(dir.path());
        let state = LoopState {
            epochs_done: 1,
            global_step: 1,
            best_epoch: None,
            best_score: None,
            epochs_since_best: 0,
            micro_batch: 4,
            history: vec![],
            loss_scaler: None,
        };
        ckpt.save(&opt, &model.buffers(), &state).unwrap();

        let fresh = resnet();
        let mut opt = optimiser(&fresh);
        let differs = |a: &[(String, Tensor)], b: &[(String, Tensor)]| {
            a.iter()
                .zip(b)
                .filter(|((_, x), (_, y))| !x.equal(y))
                .count()
        };
        assert!(differs(&fresh.buffers(), &trained) > 0);
        let restored = ckpt.restore(&mut opt, &fresh.buffers()).unwrap();
        assert_eq!(restored.unwrap().epochs_done, 1);
        assert_eq!(differs(&fresh.buffers(), &trained), 0);
        let counter = fresh
            .buffers()
            .into_iter()
            .find(|(n, _)| n.ends_with("num_batches_tracked"))
            .unwrap()
            .1;
        assert_eq!(counter.int64_value(&[]), 1);
    }
}
