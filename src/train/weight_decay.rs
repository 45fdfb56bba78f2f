//! `weight_decay` as a number or as a named preset. Presets are resolved when
//! the config is parsed: the stored config (and the model card) hold the
//! number, so a config that gives a number serialises exactly as before.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// A named weight-decay strength. `medium` and `heavy` are the two values of
/// the AugReg study ("How to train your ViT?", Steiner et al. 2021: 0.03
/// with dropout and stochastic depth 0.1, 0.1 without); `light` is this
/// service's default. AdamW's decoupled decay, multiplied by the learning
/// rate (torch's convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WeightDecayPreset {
    /// 0
    None,
    /// 0.01
    Light,
    /// 0.03
    Medium,
    /// 0.1
    Heavy,
}

impl WeightDecayPreset {
    pub fn value(self) -> f64 {
        match self {
            Self::None => 0.0,
            Self::Light => 0.01,
            Self::Medium => 0.03,
            Self::Heavy => 0.1,
        }
    }
}

/// What the client may send for `weight_decay`: a number in [0, 1) or a
/// preset name (`none`, `light` 0.01, `medium` 0.03, `heavy` 0.1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WeightDecay {
    Value(f64),
    Preset(WeightDecayPreset),
}

/// Deserialises a number or a preset name to the number.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Value(f64),
        Name(String),
    }
    match Raw::deserialize(d)? {
        Raw::Value(v) => Ok(v),
        Raw::Name(name) => serde_json::from_value::<WeightDecayPreset>(name.clone().into())
            .map(WeightDecayPreset::value)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`weight_decay`: unknown preset `{name}`; use a number or \
                     `none`, `light` (0.01), `medium` (0.03), `heavy` (0.1)"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use crate::train::config::JobConfig;

    #[test]
    fn presets_and_numbers() {
        let wd = |v: &str| {
            JobConfig::from_json(&format!(r#"{{"base_model":"x","weight_decay":{v}}}"#))
                .map(|c| c.weight_decay)
        };
        assert_eq!(wd(r#""none""#).unwrap(), 0.0);
        assert_eq!(wd(r#""light""#).unwrap(), 0.01);
        assert_eq!(wd(r#""medium""#).unwrap(), 0.03);
        assert_eq!(wd(r#""heavy""#).unwrap(), 0.1);
        assert_eq!(wd("0.05").unwrap(), 0.05);
        let err = wd(r#""huge""#).unwrap_err();
        assert!(
            err.contains("weight_decay") && err.contains("huge"),
            "{err}"
        );
        let err = wd("2").unwrap_err();
        assert!(err.contains("weight_decay"), "{err}");
        // Stored as the number.
        let cfg = JobConfig::from_json(r#"{"base_model":"x","weight_decay":"heavy"}"#).unwrap();
        assert_eq!(serde_json::to_value(&cfg).unwrap()["weight_decay"], 0.1);
    }
}
