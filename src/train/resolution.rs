//! Fine-tuning at another resolution than the base model's: the position
//! embeddings are resampled once (as `transformers` interpolates them, see
//! [`crate::model::resize`]) and the config and preprocessor are updated, so
//! the saved model runs natively at the new size in vitrine and in
//! `transformers` alike.

use super::TrainError;
use crate::model::Model;

/// Makes `model` take `size`x`size` inputs natively. A no-op at its own size.
pub fn adapt(model: &mut Model, size: u32) -> Result<(), TrainError> {
    let size = i64::from(size);
    if size == model.image_size() {
        return Ok(());
    }
    model
        .set_image_size(size)
        .map_err(|e| TrainError::fatal(e.to_string()))?;
    resize_preprocessor(&mut model.preprocessor_json, size);
    Ok(())
}

/// Points the preprocessor at the new size: the crop (if it crops, keeping
/// the resize-to-crop ratio) or the resize target. A ConvNeXt processor
/// takes only `shortest_edge` and derives its crop from `crop_pct`.
fn resize_preprocessor(pre: &mut serde_json::Value, size: i64) {
    let square = serde_json::json!({"height": size, "width": size});
    let class = |key: &str| pre.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let convnext = class("image_processor_type")
        .or_else(|| class("feature_extractor_type"))
        .is_some_and(|c| c.starts_with("ConvNext"));
    if convnext {
        pre["size"] = serde_json::json!({ "shortest_edge": size });
    } else if pre.get("do_center_crop").and_then(|v| v.as_bool()) == Some(true) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convnext_preprocessor_keeps_its_shortest_edge_form() {
        let mut pre = serde_json::json!({"image_processor_type": "ConvNextImageProcessor",
            "size": {"shortest_edge": 224}, "crop_pct": 0.875});
        resize_preprocessor(&mut pre, 160);
        assert_eq!(pre["size"], serde_json::json!({"shortest_edge": 160}));
        assert_eq!(pre["crop_pct"], 0.875);
        let mut bit = serde_json::json!({"do_center_crop": true,
            "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}});
        resize_preprocessor(&mut bit, 448);
        assert_eq!(bit["size"], serde_json::json!({"shortest_edge": 512}));
        assert_eq!(
            bit["crop_size"],
            serde_json::json!({"height": 448, "width": 448})
        );
    }
}
