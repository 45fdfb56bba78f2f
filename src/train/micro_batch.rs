//! `micro_batch: auto`: the largest micro-batch that fits, probed once per
//! (model, mode, device, precision, image size, checkpointing) and
//! remembered for the life of the process, so a sweep's candidates and a
//! resumed job do not probe again. The global batch stays the user's
//! `batch_size` through gradient accumulation, so results do not depend on
//! the card: only how many images go through the network at once does.
//!
//! The probe runs real training micro-steps (forward and backward, the
//! gradients then dropped) and searches between the largest size known to
//! fit and the smallest known not to: halving from the batch size, then
//! bisecting, so a card that fits 20 of 32 trains at 20, not 16.

use std::collections::HashMap;
use std::sync::Mutex;

use super::oom::{classify, FailureKind};

/// What a probed size depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    pub base_model: String,
    pub mode: String,
    pub device: String,
    pub precision: String,
    pub image_size: i64,
    pub checkpointing: bool,
}

/// Sizes probed so far in this process: the largest that fitted, and the
/// batch size it was probed up to (a larger batch probes again).
static PROBED: Mutex<Option<HashMap<ProbeKey, (u32, u32)>>> = Mutex::new(None);

/// The largest micro-batch up to `batch` that `try_size` runs without
/// running out of memory, remembered under `key`. `try_size` runs one
/// micro-step of that many images and must leave nothing behind; any error
/// other than out-of-memory ends the probe with that error.
pub fn largest_fitting(
    key: &ProbeKey,
    batch: u32,
    mut try_size: impl FnMut(u32) -> Result<(), String>,
) -> Result<u32, String> {
    if let Some(&(fits, probed_to)) = PROBED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(key)
    {
        if probed_to >= batch || fits < probed_to {
            return Ok(fits.min(batch));
        }
    }
    let mut fits = 0; // largest size known to fit
    let mut fails = batch + 1; // smallest size known not to
    let mut size = batch;
    while size > fits && size < fails {
        match try_size(size) {
            Ok(()) => fits = size,
            Err(e) if classify(&e) == FailureKind::OutOfMemory => fails = size,
            Err(e) => return Err(e),
        }
        size = if fits == 0 {
            size / 2 // halving until something fits
        } else {
            fits + (fails - fits) / 2 // then bisecting
        };
        if size == 0 {
            break;
        }
    }
    if fits == 0 {
        return Err("out of memory even with a micro-batch of one image".into());
    }
    PROBED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(key.clone(), (fits, batch));
    Ok(fits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn key(name: &str) -> ProbeKey {
        ProbeKey {
            base_model: name.into(),
            mode: "full".into(),
            device: "cpu".into(),
            precision: "fp32".into(),
            image_size: 224,
            checkpointing: false,
        }
    }

    /// A step that really runs out of memory above `limit` images: it
    /// allocates 4 TiB, which the CPU allocator refuses.
    fn step(limit: u32, tried: &mut Vec<u32>) -> impl FnMut(u32) -> Result<(), String> + '_ {
        move |m| {
            tried.push(m);
            let per_image: i64 = if m > limit { 1 << 40 } else { 16 };
            let t = std::panic::catch_unwind(|| {
                Tensor::empty([i64::from(m) * per_image], (Kind::Float, tch::Device::Cpu))
            });
            t.map(|_| ())
                .map_err(|p| crate::error::panic_message(p.as_ref()).unwrap_or_default())
        }
    }

    #[test]
    fn the_largest_size_that_fits_is_found_and_remembered() {
        let mut tried = vec![];
        assert_eq!(largest_fitting(&key("a"), 32, step(20, &mut tried)), Ok(20));
        assert_eq!(tried, vec![32, 16, 24, 20, 22, 21]);
        // Remembered: no step runs again, for this batch or a smaller one.
        let mut again = vec![];
        assert_eq!(largest_fitting(&key("a"), 32, step(20, &mut again)), Ok(20));
        assert_eq!(largest_fitting(&key("a"), 12, step(20, &mut again)), Ok(12));
        assert!(again.is_empty());
        // Everything fits: the batch itself, in one try.
        let mut once = vec![];
        assert_eq!(largest_fitting(&key("b"), 8, step(100, &mut once)), Ok(8));
        assert_eq!(once, vec![8]);
    }

    #[test]
    fn other_errors_end_the_probe_and_nothing_fitting_is_an_error() {
        let r = largest_fitting(&key("c"), 8, |_| Err("shape mismatch".into()));
        assert_eq!(r, Err("shape mismatch".into()));
        let mut tried = vec![];
        let r = largest_fitting(&key("d"), 8, step(0, &mut tried));
        assert!(r.unwrap_err().contains("one image"));
        assert_eq!(tried, vec![8, 4, 2, 1]);
    }
}
