//! Feeds image batches to the training loop from a background thread, so
//! decoding the next batch overlaps with the forward and backward passes.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use tch::Tensor;

use super::input::PixelFormat;
use crate::imaging::input_cache::CachedImages;
use crate::imaging::Pipeline;

/// A batch of decoded images and the indices of their samples.
pub struct Batch {
    pub indices: Vec<usize>,
    /// In `format`: place it on the device with `input::InputPlacer`.
    pub pixels: Result<Tensor, String>,
}

/// Starts a loader over `order` in chunks of `batch`. `augment_seed` gives
/// each batch its own augmentation seed; `None` means evaluation. `cache`:
/// the decode-once cache holding these images in the form this loader
/// needs (training copies when augmenting, evaluation outputs otherwise).
pub fn spawn_loader(
    pipeline: Pipeline,
    paths: Vec<PathBuf>,
    order: Vec<usize>,
    batch: usize,
    augment_seed: Option<u64>,
    format: PixelFormat,
    cache: Option<Arc<CachedImages>>,
) -> Receiver<Batch> {
    let (tx, rx) = sync_channel(2);
    std::thread::Builder::new()
        .name("vitrine-loader".into())
        .spawn(move || {
            // It builds tensors; the trainer's thread is the one that computes.
            crate::torch_info::threads::keep_torch_single_threaded();
            for (i, chunk) in order.chunks(batch.max(1)).enumerate() {
                let batch_paths: Vec<PathBuf> = chunk.iter().map(|&j| paths[j].clone()).collect();
                let seed = augment_seed.map(|s| s.wrapping_mul(1_000_003).wrapping_add(i as u64));
                let pixels = format.load(&pipeline, cache.as_deref(), &batch_paths, seed);
                let msg = Batch {
                    indices: chunk.to_vec(),
                    pixels,
                };
                if tx.send(msg).is_err() {
                    return; // the trainer stopped early
                }
            }
        })
        .expect("spawning the loader thread");
    rx
}
