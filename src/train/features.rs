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

/// A base model's backbone features of `paths`, `[n, F]` on the CPU, as a
/// linear probe of it computes them (same model loading, preprocessing
/// and forward pass, no augmentation), cached in `work_dir` like a
/// probe's. For callers outside training (the dataset audit):
/// `progress(done, total)` as images pass; `None` when `stop` was set.
pub fn backbone_features(
    base_model_dir: &Path,
    paths: Vec<PathBuf>,
    device: Device,
    work_dir: &Path,
    progress: &mut (dyn FnMut(usize, usize) + Send),
    stop: &StopFlag,
) -> Result<Option<Tensor>, TrainError> {
    std::fs::create_dir_all(work_dir).map_err(TrainError::retry)?;
    // A base model from the Hub has no head, and the features need none:
    // a placeholder head of two labels, as a job's would be, never used.
    let placeholder = ["0".to_string(), "1".to_string()];
    let model = crate::model::load_pretrained(base_model_dir, device, Some(&placeholder))
        .map_err(|e| TrainError::fatal(format!("loading base model: {e:#}")))?;
    let preprocessor: crate::imaging::PreprocessorConfig =
        serde_json::from_value(model.preprocessor_json.clone()).map_err(|e| {
            TrainError::fatal(format!("the base model's preprocessor_config.json: {e}"))
        })?;
    let pipeline =
        Pipeline::from_preprocessor(&preprocessor, None).with_model_size(model.image_size() as u32);
    let placer = InputPlacer::new(&pipeline, device);
    // The progress events are read back on a second thread as they come.
    let found = std::thread::scope(|scope| {
        let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = scope.spawn(move || {
            while let Some(event) = rx.blocking_recv() {
                if let TrainEvent::Features { done, total } = event {
                    progress(done, total);
                }
            }
        });
        let source = FeatureSource {
            work_dir,
            net: model.net.as_ref(),
            pipeline: &pipeline,
            placer: &placer,
            format: PixelFormat::for_device(device, &pipeline, false),
            cache: None,
            batch: 32,
            device,
            events: &events,
            stop,
        };
        let found = compute_or_load(&source, &[("all", paths)]);
        drop(events);
        let _ = reader.join();
        found
    })?;
    Ok(found.map(|mut f| f.pop().expect("one split").to_device(Device::Cpu)))
}
