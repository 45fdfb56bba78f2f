//! Fine-tuning at another resolution than the base model's: the position
//! embeddings are resampled once (bicubic, as `transformers` interpolates
//! them) and the config and preprocessor are updated, so the saved model
//! runs natively at the new size in vitrine and in `transformers` alike.

use tch::{Kind, Tensor};

use super::TrainError;
use crate::model::{Model, ModelConfig};

/// Makes `model` take `size`x`size` inputs natively. A no-op at its own size.
pub fn adapt(model: &mut Model, size: u32) -> Result<(), TrainError> {
    let mut config = model.config.to_json();
    let current = config["image_size"].as_i64().unwrap_or(0);
    let patch = config["patch_size"].as_i64().unwrap_or(0);
    let size = size as i64;
    if size == current || patch <= 0 {
        return Ok(());
    }
    if size % patch != 0 {
        return Err(TrainError::fatal(format!(
            "`image_size` {size} is not a multiple of the model's patch size {patch}"
        )));
    }
    let (name, mut var) = model
        .vs
        .variables()
        .into_iter()
        .find(|(n, _)| n.ends_with("embeddings.position_embeddings"))
        .ok_or_else(|| TrainError::fatal("the model has no position embeddings to resample"))?;
    let old: Vec<i64> = var.size();
    let (tokens, dim) = (old[1], old[2]);
    let old_grid = ((tokens - 1) as f64).sqrt().round() as i64;
    if old_grid * old_grid + 1 != tokens {
        return Err(TrainError::fatal(format!(
            "{name} has {tokens} positions, not a square grid plus a class token"
        )));
    }
    let new_grid = size / patch;
    let resampled = tch::no_grad(|| {
        let cls = var.narrow(1, 0, 1);
        let grid = var
            .narrow(1, 1, tokens - 1)
            .reshape([1, old_grid, old_grid, dim])
            .permute([0, 3, 1, 2])
            .to_kind(Kind::Float);
        let grid = grid
            .upsample_bicubic2d([new_grid, new_grid], false, None, None)
            .to_kind(var.kind())
            .permute([0, 2, 3, 1])
            .reshape([1, new_grid * new_grid, dim]);
        Tensor::cat(&[cls, grid], 1)
    });
    var.set_data(&resampled);
    config["image_size"] = size.into();
    model.config = ModelConfig::from_json(config, &model.source_dir.join("config.json"))
        .map_err(|e| TrainError::fatal(e.to_string()))?;
    resize_preprocessor(&mut model.preprocessor_json, size);
    tracing::info!(tensor = %name, from = old_grid, to = new_grid, "position embeddings resampled");
    Ok(())
}

/// Points the preprocessor at the new size: the crop (if it crops, keeping
/// the resize-to-crop ratio) or the resize target.
fn resize_preprocessor(pre: &mut serde_json::Value, size: i64) {
    let square = serde_json::json!({"height": size, "width": size});
    if pre.get("do_center_crop").and_then(|v| v.as_bool()) == Some(true) {
        let ratio = pre["size"]["shortest_edge"]
            .as_f64()
            .zip(pre["crop_size"]["height"].as_f64())
            .map(|(s, c)| s / c)
            .unwrap_or(256.0 / 224.0);
        pre["crop_size"] = square;
        pre["size"] = serde_json::json!({"shortest_edge": (size as f64 * ratio).round() as i64});
    } else {
        pre["size"] = square;
    }
}
