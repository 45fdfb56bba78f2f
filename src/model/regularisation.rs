//! A job's stochastic depth and dropout, written into the base model's
//! configuration before the network is built, so the network uses them in
//! training (both are off in evaluation) and the saved `config.json` records
//! them under the names `transformers` reads.
//!
//! | family | `drop_path_rate` | `dropout` |
//! |---|---|---|
//! | ViT (and timm ViT) | refused: `ViTModel` has no stochastic depth | `hidden_dropout_prob` |
//! | DINOv2 | `drop_path_rate` (every block) | `hidden_dropout_prob` |
//! | Swin | `drop_path_rate` (rising linearly over blocks) | `hidden_dropout_prob` |
//! | ConvNeXt | `drop_path_rate` (rising linearly over blocks) | refused: no dropout |
//! | ResNet | refused: none | refused: none |

use super::ModelConfig;

/// The rates a job asks for; `None` keeps the base model's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Regularisation {
    pub drop_path_rate: Option<f64>,
    pub dropout: Option<f64>,
}

/// Whether a `model_type` (as [`super::preflight::BaseModelInfo`] names it)
/// has stochastic depth and dropout: `(drop_path, dropout)`, as the
/// family's default configuration says ([`super::FamilyConfig::drop_path_rate_mut`],
/// [`super::FamilyConfig::dropout_mut`]). A timm checkpoint is a ViT.
pub fn supports(model_type: &str) -> (bool, bool) {
    let model_type = if model_type == "timm" {
        "vit"
    } else {
        model_type
    };
    let default = serde_json::json!({ "model_type": model_type });
    match ModelConfig::from_json(default, std::path::Path::new("config.json")) {
        Ok(mut config) => {
            let family = config.family_mut();
            (
                family.drop_path_rate_mut().is_some(),
                family.dropout_mut().is_some(),
            )
        }
        // Not a family vitrine has: the load refuses it by name.
        Err(_) => (false, true),
    }
}

impl Regularisation {
    /// Refuses a rate the family does not have; the message names the job
    /// field and the family.
    pub fn check(&self, model_type: &str) -> Result<(), String> {
        let (drop_path, dropout) = supports(model_type);
        if self.drop_path_rate.is_some() && !drop_path {
            return Err(format!(
                "`drop_path_rate` is not supported for {model_type} base models (no stochastic \
                 depth in their `transformers` class); it applies to DINOv2, Swin and ConvNeXt"
            ));
        }
        if self.dropout.is_some() && !dropout {
            return Err(format!(
                "`dropout` is not supported for {model_type} base models (they have no dropout); \
                 it applies to ViT, DINOv2 and Swin"
            ));
        }
        Ok(())
    }

    /// Writes the rates into `config` (after [`Self::check`]).
    pub fn apply(&self, config: &mut ModelConfig) -> Result<(), String> {
        self.check(config.model_type())?;
        let family = config.family_mut();
        if let (Some(rate), Some(field)) = (self.drop_path_rate, family.drop_path_rate_mut()) {
            *field = rate;
        }
        if let (Some(p), Some(field)) = (self.dropout, family.dropout_mut()) {
            *field = p;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> ModelConfig {
        ModelConfig::from_json(json, std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn refusals_name_the_field_and_family() {
        let both = Regularisation {
            drop_path_rate: Some(0.1),
            dropout: Some(0.1),
        };
        let e = both.check("vit").unwrap_err();
        assert!(e.contains("`drop_path_rate`") && e.contains("vit"), "{e}");
        let e = both.check("convnext").unwrap_err();
        assert!(e.contains("`dropout`") && e.contains("convnext"), "{e}");
        assert!(both.check("resnet").is_err());
        both.check("dinov2").unwrap();
        both.check("swin").unwrap();
        let dropout_only = Regularisation {
            dropout: Some(0.1),
            ..Default::default()
        };
        dropout_only.check("vit").unwrap();
        dropout_only.check("timm").unwrap();
    }

    #[test]
    fn rates_land_in_the_saved_fields() {
        let reg = Regularisation {
            drop_path_rate: Some(0.2),
            dropout: Some(0.1),
        };
        let mut c = config(
            serde_json::json!({"model_type": "dinov2", "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8, "image_size": 32}),
        );
        reg.apply(&mut c).unwrap();
        let saved = c.to_json();
        assert_eq!(saved["drop_path_rate"], 0.2);
        assert_eq!(saved["hidden_dropout_prob"], 0.1);
        assert_eq!(saved["attention_probs_dropout_prob"], 0.0);
        let mut vit = config(serde_json::json!({"model_type": "vit"}));
        Regularisation {
            dropout: Some(0.1),
            ..Default::default()
        }
        .apply(&mut vit)
        .unwrap();
        assert_eq!(vit.to_json()["hidden_dropout_prob"], 0.1);
        assert!(reg.apply(&mut vit).is_err());
    }
}
