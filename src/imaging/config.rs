//! `preprocessor_config.json` as the Hugging Face image processors write it.
//!
//! Only the fields that drive resize, crop, rescale and normalise are read;
//! everything else in the file (processor class names, padding options of
//! other model families) is ignored. Absent fields take the defaults of
//! `ViTImageProcessor`: 224x224 bilinear, rescale by 1/255, mean = std = 0.5.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A `size` or `crop_size` entry: an int (a square, as `ViTImageProcessor`
/// reads it) or a dict with `height`/`width` or `shortest_edge`
/// (optionally `longest_edge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    Square(u32),
    Dict(SizeDict),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeDict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortest_edge: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_edge: Option<u32>,
}

/// What a [`SizeSpec`] asks the resize step for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTarget {
    /// Exactly this size, aspect ratio not kept.
    Exact { height: u32, width: u32 },
    /// Scale so the shorter side is `shortest`, the longer one capped at `longest`.
    ShortestEdge { shortest: u32, longest: Option<u32> },
}

impl SizeSpec {
    pub fn square(side: u32) -> Self {
        SizeSpec::Dict(SizeDict {
            height: Some(side),
            width: Some(side),
            ..Default::default()
        })
    }

    /// The resize this entry asks for; `None` when the dict names nothing usable.
    pub fn target(&self) -> Option<ResizeTarget> {
        match *self {
            SizeSpec::Square(s) => Some(ResizeTarget::Exact {
                height: s,
                width: s,
            }),
            SizeSpec::Dict(d) => match (d.height, d.width, d.shortest_edge) {
                (Some(height), Some(width), _) => Some(ResizeTarget::Exact { height, width }),
                (_, _, Some(shortest)) => Some(ResizeTarget::ShortestEdge {
                    shortest,
                    longest: d.longest_edge,
                }),
                _ => None,
            },
        }
    }
}

/// `image_mean`/`image_std`: one number for every channel, or one per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Channels {
    One(f64),
    PerChannel(Vec<f64>),
}

impl Channels {
    /// The three RGB values (a 1-element list counts for all three).
    pub fn rgb(&self) -> [f32; 3] {
        match self {
            Channels::One(v) => [*v as f32; 3],
            Channels::PerChannel(v) if v.len() >= 3 => [v[0] as f32, v[1] as f32, v[2] as f32],
            Channels::PerChannel(v) => [v.first().copied().unwrap_or(0.0) as f32; 3],
        }
    }
}

/// The fields of `preprocessor_config.json` vitrine honours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessorConfig {
    pub do_resize: bool,
    pub size: SizeSpec,
    /// PIL resampling code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
    pub resample: u8,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Channels,
    pub image_std: Channels,
    pub do_center_crop: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_size: Option<SizeSpec>,
    /// Images are always converted to RGB; kept so a config round-trips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_convert_rgb: Option<bool>,
    /// Written so that `transformers` picks its ViT processor for the model dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_processor_type: Option<String>,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeSpec::square(224),
            resample: 2,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: Channels::PerChannel(vec![0.5, 0.5, 0.5]),
            image_std: Channels::PerChannel(vec![0.5, 0.5, 0.5]),
            do_center_crop: false,
            crop_size: None,
            do_convert_rgb: None,
            image_processor_type: Some("ViTImageProcessor".into()),
        }
    }
}

impl PreprocessorConfig {
    /// Reads a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))
    }

    /// ImageNet statistics, as timm and DINOv2 processors use.
    pub fn imagenet() -> Self {
        Self {
            image_mean: Channels::PerChannel(vec![0.485, 0.456, 0.406]),
            image_std: Channels::PerChannel(vec![0.229, 0.224, 0.225]),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_vit() {
        let c: PreprocessorConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, PreprocessorConfig::default());
        assert_eq!(
            c.size.target(),
            Some(ResizeTarget::Exact {
                height: 224,
                width: 224
            })
        );
    }

    #[test]
    fn reads_dinov2_style_and_ignores_unknown_fields() {
        let c: PreprocessorConfig = serde_json::from_str(
            r#"{"crop_size":{"height":224,"width":224},"do_center_crop":true,"do_convert_rgb":true,
            "image_mean":[0.485,0.456,0.406],"image_processor_type":"BitImageProcessor",
            "image_std":[0.229,0.224,0.225],"resample":3,"rescale_factor":0.00392156862745098,
            "size":{"shortest_edge":256},"do_pad":false}"#,
        )
        .unwrap();
        assert!(c.do_center_crop);
        assert_eq!(c.resample, 3);
        assert_eq!(
            c.size.target(),
            Some(ResizeTarget::ShortestEdge {
                shortest: 256,
                longest: None
            })
        );
        assert_eq!(c.image_std.rgb(), [0.229, 0.224, 0.225]);
        let int: PreprocessorConfig =
            serde_json::from_str(r#"{"size":384,"image_mean":0.5}"#).unwrap();
        assert_eq!(
            int.size.target(),
            Some(ResizeTarget::Exact {
                height: 384,
                width: 384
            })
        );
        assert_eq!(int.image_mean.rgb(), [0.5; 3]);
    }
}
