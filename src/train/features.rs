//! Linear probes: the frozen backbone's features for every image, computed
//! once (no augmentation) and cached in the job's work directory, so epochs
//! only train the classifier.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tch::{Device, Tensor};

use super::batches::spawn_loader;
use super::input::{InputPlacer, PixelFormat};
use super::oom::infer_in_chunks;
use super::{Events, StopFlag, TrainError, TrainEvent};
use crate::imaging::Pipeline;
use crate::model::ImageClassifier;

/// What computing features needs.
pub struct FeatureSource<'a> {
    pub work_dir: &'a Path,
    pub net: &'a dyn ImageClassifier,
    pub pipeline: &'a Pipeline,
    pub placer: &'a InputPlacer,
    pub format: PixelFormat,
    /// The images' evaluation outputs, when the input cache holds them.
    pub cache: Option<std::sync::Arc<crate::imaging::input_cache::CachedImages>>,
    pub batch: usize,
    pub device: Device,
    pub events: &'a Events,
    pub stop: &'a StopFlag,
}

/// Features of each split, in split order; `None` when stopped early.
pub fn compute_or_load(
    src: &FeatureSource<'_>,
    splits: &[(&str, Vec<PathBuf>)],
) -> Result<Option<Vec<Tensor>>, TrainError> {
    let FeatureSource {
        work_dir,
        net,
        pipeline,
        placer,
        format,
        batch,
        device,
        events,
        stop,
        ..
    } = *src;
    let cache = work_dir.join("features.safetensors");
    if let Ok(stored) = Tensor::read_safetensors(&cache) {
        let found: Option<Vec<Tensor>> = splits
            .iter()
            .map(|(name, paths)| {
                stored
                    .iter()
                    .find(|(n, t)| n == name && t.size()[0] == paths.len() as i64)
                    .map(|(_, t)| t.to_device(device))
            })
            .collect();
        if let Some(found) = found {
            return Ok(Some(found));
        }
    }
    let total: usize = splits.iter().map(|(_, p)| p.len()).sum();
    let mut done = 0;
    let mut out = Vec::with_capacity(splits.len());
    let mut micro = batch as u32;
    for (_, paths) in splits {
        let order: Vec<usize> = (0..paths.len()).collect();
        let rx = spawn_loader(
            pipeline.clone(),
            paths.clone(),
            order,
            batch,
            None,
            format,
            src.cache.clone(),
        );
        let mut parts = Vec::new();
        for b in rx {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let pixels = placer.place(&b.pixels.map_err(TrainError::fatal)?);
            let f = infer_in_chunks(
                &mut micro,
                &pixels,
                |xs| Ok(tch::no_grad(|| net.features(xs, false)).to_kind(tch::Kind::Float)),
                |micro| tracing::warn!(micro, "out of memory computing features; smaller batches"),
            )
            .map_err(|f| TrainError::from_failure(f, device, "computing features"))?;
            parts.push(f);
            done += b.indices.len();
            let _ = events.send(TrainEvent::Features { done, total });
        }
        let hidden = parts.first().map(|t| t.size()[1]).unwrap_or(0);
        out.push(if parts.is_empty() {
            Tensor::zeros([0, hidden], (tch::Kind::Float, device))
        } else {
            Tensor::cat(&parts, 0)
        });
    }
    let named: Vec<(&str, Tensor)> = splits
        .iter()
        .zip(&out)
        .map(|((n, _), t)| (*n, t.to_device(Device::Cpu)))
        .collect();
    let tmp = cache.with_extension("tmp");
    Tensor::write_safetensors(&named, &tmp).map_err(TrainError::retry)?;
    std::fs::rename(&tmp, &cache).map_err(TrainError::retry)?;
    Ok(Some(out))
}
