//! Getting image batches onto the training device cheaply.
//!
//! On a GPU, the loader thread builds each batch as 8-bit pixels (a quarter
//! of the bytes of floats) in page-locked memory, the copy to the GPU is
//! asynchronous (the host queues it and moves on), and the GPU normalises
//! with the pipeline's own table: a lookup, so the floats are bit-identical
//! to the CPU pipeline's. On the CPU nothing changes: float batches.

use tch::{Device, Kind, Tensor};

use crate::imaging::input_cache::CachedImages;
use crate::imaging::Pipeline;
use crate::torchx;

/// How the loader thread should build batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Normalised f32, ready to use (CPU training, or colour jitter).
    F32,
    /// Raw 8-bit values; `pinned`: in page-locked memory.
    U8 { pinned: bool },
}

impl PixelFormat {
    /// 8-bit pinned batches for a GPU whenever the pipeline can give them.
    pub fn for_device(device: Device, pipeline: &Pipeline, augmented: bool) -> Self {
        if device.is_cuda() && pipeline.has_u8_batches(augmented) {
            Self::U8 { pinned: true }
        } else {
            Self::F32
        }
    }

    /// Builds one batch on the loader thread.
    pub fn load(
        self,
        pipeline: &Pipeline,
        cache: Option<&CachedImages>,
        paths: &[std::path::PathBuf],
        augment: Option<u64>,
    ) -> Result<Tensor, String> {
        match self {
            Self::F32 => pipeline
                .load_batch_from(cache, paths, augment)
                .map_err(|e| e.to_string()),
            Self::U8 { pinned } => {
                let t = pipeline
                    .load_batch_u8_from(cache, paths, augment)
                    .map_err(|e| e.to_string())?;
                if pinned {
                    torchx::pin_memory(&t).map_err(|e| e.to_string())
                } else {
                    Ok(t)
                }
            }
        }
    }
}

/// Puts loader batches on the device as the model's input floats.
pub struct InputPlacer {
    device: Device,
    /// The pipeline's normalisation table on the device, flattened
    /// (`[3 * 256]`: channel-major).
    table: Tensor,
    /// `[1, 3, 1, 1]` offsets of each channel's row in `table`.
    offsets: Tensor,
}

impl InputPlacer {
    pub fn new(pipeline: &Pipeline, device: Device) -> Self {
        let lut = pipeline.normalisation_table();
        let flat: Vec<f32> = lut.iter().flatten().copied().collect();
        Self {
            device,
            table: Tensor::from_slice(&flat).to_device(device),
            offsets: Tensor::from_slice(&[0i64, 256, 512])
                .view([1, 3, 1, 1])
                .to_device(device),
        }
    }

    /// The batch on the device as floats: u8 batches are copied without
    /// blocking the host (when pinned) and normalised there.
    pub fn place(&self, batch: &Tensor) -> Tensor {
        if batch.kind() != Kind::Uint8 {
            return batch.to_device(self.device);
        }
        let on_device = batch.to_device_(self.device, Kind::Uint8, true, false);
        self.normalise(&on_device)
    }

    /// Looks every 8-bit value up in its channel's row of the table.
    fn normalise(&self, pixels: &Tensor) -> Tensor {
        let index = pixels.to_kind(Kind::Int64) + &self.offsets;
        self.table.take(&index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{AugmentConfig, PreprocessorConfig};
    use image::RgbImage;

    fn write_images(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        [(64, 48), (30, 90), (17, 17), (200, 120)]
            .iter()
            .enumerate()
            .map(|(i, &(w, h))| {
                let img = RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([
                        ((x * 7 + y * 3 + i as u32) % 256) as u8,
                        ((x * y + 11) % 256) as u8,
                        ((x + 2 * y * y) % 256) as u8,
                    ])
                });
                let path = dir.join(format!("{i}.png"));
                img.save(&path).unwrap();
                path
            })
            .collect()
    }

    /// The device-side normalisation (here on the CPU device: the same
    /// table lookup) gives exactly the floats of the CPU pipeline, for
    /// evaluation, augmented training batches (with and without
    /// RandAugment), a non-default mean/std and rescale, and a centre crop
    /// larger than the image (zero padding).
    #[test]
    fn device_normalisation_is_bit_identical_to_the_cpu_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_images(dir.path());
        let configs = [
            r#"{}"#,
            r#"{"image_mean":[0.485,0.456,0.406],"image_std":[0.229,0.224,0.225],"resample":3}"#,
            r#"{"size":{"shortest_edge":40},"do_center_crop":true,"crop_size":{"height":48,"width":48},"rescale_factor":0.003921568627451}"#,
            r#"{"do_normalize":false}"#,
        ];
        for json in configs {
            let cfg: PreprocessorConfig = serde_json::from_str(json).unwrap();
            let plain = Pipeline::from_preprocessor(&cfg, Some(32)).with_model_size(32);
            // RandAugment gives 8-bit images: the u8 path stays exact.
            let randaugmented = plain
                .clone()
                .with_randaugment(Some(crate::imaging::RandAugment { n: 2, m: 12 }));
            for (pipeline, augment) in [
                (&plain, None),
                (&plain, Some(9u64)),
                (&randaugmented, Some(9u64)),
            ] {
                let placer = InputPlacer::new(pipeline, Device::Cpu);
                let want = pipeline.load_batch(&paths, augment).unwrap();
                let raw = PixelFormat::U8 { pinned: false }
                    .load(pipeline, None, &paths, augment)
                    .unwrap();
                assert_eq!(raw.kind(), Kind::Uint8);
                let got = placer.place(&raw);
                assert_eq!(got.kind(), Kind::Float);
                assert_eq!(got.size(), want.size());
                // Bit for bit: compare the raw bits, not the values.
                let bits = |t: &Tensor| -> Vec<u32> {
                    Vec::<f32>::try_from(t.flatten(0, -1))
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert!(bits(&got) == bits(&want), "{json} augment={augment:?}");
            }
        }
    }

    #[test]
    fn float_batches_when_u8_cannot_be_exact() {
        let jitter = Pipeline::from_preprocessor(&PreprocessorConfig::default(), Some(32))
            .with_augmentation(AugmentConfig {
                colour_jitter: 0.2,
                ..Default::default()
            });
        let cuda = Device::Cuda(0);
        assert_eq!(
            PixelFormat::for_device(cuda, &jitter, true),
            PixelFormat::F32
        );
        assert_eq!(
            PixelFormat::for_device(cuda, &jitter, false),
            PixelFormat::U8 { pinned: true }
        );
        assert_eq!(
            PixelFormat::for_device(Device::Cpu, &jitter, false),
            PixelFormat::F32
        );
        let dir = tempfile::tempdir().unwrap();
        let paths = write_images(dir.path());
        assert!(jitter.load_batch_u8(&paths, Some(1)).is_err());
    }
}
