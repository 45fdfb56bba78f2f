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
    /// The three RGB values in f64, as written.
    pub fn rgb64(&self) -> [f64; 3] {
        match self {
            Channels::One(v) => [*v; 3],
            Channels::PerChannel(v) if v.len() >= 3 => [v[0], v[1], v[2]],
            Channels::PerChannel(v) => [v.first().copied().unwrap_or(0.0); 3],
        }
    }

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
///
/// Absent fields take the defaults of the processor the file names:
/// `ViTImageProcessor`'s, or `ConvNextImageProcessor`'s (bicubic, shortest
/// edge 384, `crop_pct` 224/256) when `image_processor_type` (or an older
/// `feature_extractor_type`) names ConvNeXt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawPreprocessorConfig")]
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
    /// `ConvNextImageProcessor`'s crop: below a 384 shortest edge, resize the
    /// shortest edge to `shortest_edge / crop_pct` and centre-crop a
    /// `shortest_edge` square; at 384 or more, warp to the square. Only
    /// ConvNeXt processors read it (timm configs carry it too, unread by
    /// `ViTImageProcessor`), see [`PreprocessorConfig::geometry`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop_pct: Option<f64>,
}

/// The resize and crop a preprocessor asks for, before any size override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub resize: Option<ResizeTarget>,
    /// `(height, width)` of the centre crop.
    pub crop: Option<(u32, u32)>,
}

/// `preprocessor_config.json` as written, every field optional, so the
/// defaults can depend on the processor class it names.
#[derive(Deserialize)]
struct RawPreprocessorConfig {
    do_resize: Option<bool>,
    size: Option<SizeSpec>,
    resample: Option<u8>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Channels>,
    image_std: Option<Channels>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeSpec>,
    do_convert_rgb: Option<bool>,
    image_processor_type: Option<String>,
    feature_extractor_type: Option<String>,
    crop_pct: Option<f64>,
}

impl From<RawPreprocessorConfig> for PreprocessorConfig {
    fn from(raw: RawPreprocessorConfig) -> Self {
        let d = Self::default();
        let class = raw
            .image_processor_type
            .as_deref()
            .or(raw.feature_extractor_type.as_deref());
        let convnext = class.is_some_and(|c| c.starts_with("ConvNext"));
        let (size, resample, crop_pct) = if convnext {
            let size = SizeSpec::Dict(SizeDict {
                shortest_edge: Some(384),
                ..Default::default()
            });
            (size, 3, raw.crop_pct.or(Some(224.0 / 256.0)))
        } else {
            (d.size, d.resample, raw.crop_pct)
        };
        Self {
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            size: raw.size.unwrap_or(size),
            resample: raw.resample.unwrap_or(resample),
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
            do_center_crop: raw.do_center_crop.unwrap_or(d.do_center_crop),
            crop_size: raw.crop_size,
            do_convert_rgb: raw.do_convert_rgb,
            // An old `ConvNextFeatureExtractor` file reads as the processor.
            image_processor_type: raw.image_processor_type.or(if convnext {
                Some("ConvNextImageProcessor".into())
            } else {
                d.image_processor_type
            }),
            crop_pct,
        }
    }
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
            crop_pct: None,
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

    /// Whether `transformers` would read this file with a ConvNeXt image
    /// processor (ConvNeXt and ResNet checkpoints on the Hub use it).
    pub fn is_convnext(&self) -> bool {
        self.image_processor_type
            .as_deref()
            .is_some_and(|c| c.starts_with("ConvNext"))
    }

    /// The resize and centre crop this file asks for at `side` x `side`
    /// output (`None`: its own size). ConvNeXt processors derive both from
    /// `size.shortest_edge` and `crop_pct` (`ConvNextImageProcessor.resize`);
    /// the others read `size` and, with `do_center_crop`, `crop_size`.
    pub fn geometry(&self, side: Option<u32>) -> Geometry {
        if self.is_convnext() && (self.do_resize || side.is_some()) {
            let Some(edge) = side.or(match self.size.target() {
                Some(ResizeTarget::ShortestEdge { shortest, .. }) => Some(shortest),
                // ConvNeXt refuses other sizes; a square is its own edge.
                Some(ResizeTarget::Exact { height, .. }) => Some(height),
                None => None,
            }) else {
                return Geometry {
                    resize: None,
                    crop: None,
                };
            };
            let crop_pct = self.crop_pct.unwrap_or(224.0 / 256.0);
            return if edge < 384 {
                Geometry {
                    resize: Some(ResizeTarget::ShortestEdge {
                        // `int(shortest_edge / crop_pct)`: truncated.
                        shortest: (f64::from(edge) / crop_pct) as u32,
                        longest: None,
                    }),
                    crop: Some((edge, edge)),
                }
            } else {
                Geometry {
                    resize: SizeSpec::square(edge).target(),
                    crop: None,
                }
            };
        }
        let mut resize = if self.do_resize && !self.is_convnext() {
            self.size.target()
        } else {
            None
        };
        let mut crop = self.centre_crop();
        if let Some(side) = side {
            match (crop, resize) {
                (Some((ch, _)), Some(ResizeTarget::ShortestEdge { shortest, longest })) => {
                    let f = f64::from(side) / f64::from(ch.max(1));
                    resize = Some(ResizeTarget::ShortestEdge {
                        shortest: (f64::from(shortest) * f).round() as u32,
                        longest: longest.map(|l| (f64::from(l) * f).round() as u32),
                    });
                }
                (None, Some(ResizeTarget::ShortestEdge { .. })) => {
                    resize = Some(ResizeTarget::ShortestEdge {
                        shortest: side,
                        longest: None,
                    })
                }
                _ => resize = SizeSpec::square(side).target(),
            }
            if crop.is_some() {
                crop = Some((side, side));
            }
        }
        Geometry { resize, crop }
    }

    fn centre_crop(&self) -> Option<(u32, u32)> {
        if !self.do_center_crop {
            return None;
        }
        self.crop_size.and_then(|c| c.target()).map(|t| match t {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShortestEdge { shortest, .. } => (shortest, shortest),
        })
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

    fn convnext(json: &str) -> PreprocessorConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn convnext_crops_by_crop_pct_below_384_and_warps_above() {
        let hub = convnext(
            r#"{"image_processor_type":"ConvNextImageProcessor","size":{"shortest_edge":224},
            "crop_pct":0.875,"resample":3}"#,
        );
        let shortest = |s| ResizeTarget::ShortestEdge {
            shortest: s,
            longest: None,
        };
        assert_eq!(
            hub.geometry(None),
            Geometry {
                resize: Some(shortest(256)),
                crop: Some((224, 224))
            }
        );
        // Fine-tuned at 160: int(160 / 0.875) = 182, crop 160.
        assert_eq!(
            hub.geometry(Some(160)),
            Geometry {
                resize: Some(shortest(182)),
                crop: Some((160, 160))
            }
        );
        let warp = Geometry {
            resize: Some(ResizeTarget::Exact {
                height: 384,
                width: 384,
            }),
            crop: None,
        };
        assert_eq!(hub.geometry(Some(384)), warp);
        // microsoft/resnet-50 as on the Hub: an old feature extractor, int size.
        let resnet = convnext(
            r#"{"crop_pct":0.875,"do_normalize":true,"do_resize":true,
            "feature_extractor_type":"ConvNextFeatureExtractor","resample":3,"size":224}"#,
        );
        assert_eq!(resnet.geometry(None), hub.geometry(None));
        // Absent fields take ConvNeXt's defaults: 384 (warped), bicubic.
        let bare = convnext(r#"{"feature_extractor_type":"ConvNextFeatureExtractor"}"#);
        assert!(bare.is_convnext());
        assert_eq!((bare.resample, bare.crop_pct), (3, Some(224.0 / 256.0)));
        assert_eq!(bare.geometry(None), warp);
    }

    #[test]
    fn crop_pct_is_ignored_by_other_processors() {
        let vit = convnext(r#"{"image_processor_type":"ViTImageProcessor","crop_pct":0.9}"#);
        assert_eq!(
            vit.geometry(None),
            Geometry {
                resize: Some(ResizeTarget::Exact {
                    height: 224,
                    width: 224
                }),
                crop: None
            }
        );
        assert_eq!(vit.resample, 2);
    }
}
