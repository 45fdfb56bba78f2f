//! Out-of-memory recovery: libtorch reports an allocation failure as a
//! panic in tch; a step that runs out of memory is retried with half the
//! micro-batch (gradient accumulation keeps the effective batch), down to
//! one image, before the job fails.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `attempt(micro)` with `*micro` clamped to `1..=n`, halving `*micro`
/// and calling `on_smaller(new_micro)` each time the attempt runs out of
/// memory. Any other panic, or running out of memory at one image, is an
/// error carrying the panic's message. `attempt` must leave no state
/// behind that a retry would double-count (the caller zeroes gradients).
pub fn retry_smaller<T>(
    micro: &mut u32,
    n: i64,
    mut attempt: impl FnMut(i64) -> T,
    mut on_smaller: impl FnMut(u32),
) -> Result<T, String> {
    loop {
        let m = i64::from(*micro).clamp(1, n.max(1));
        match catch_unwind(AssertUnwindSafe(|| attempt(m))) {
            Ok(v) => return Ok(v),
            Err(panic) => {
                let msg = panic_message(&panic);
                if !is_out_of_memory(&msg) || m <= 1 {
                    return Err(msg);
                }
                *micro = (m / 2) as u32;
                on_smaller(*micro);
            }
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// CUDA's and the CPU allocator's wording.
fn is_out_of_memory(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("can't allocate memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn oom_messages_are_recognised() {
        assert!(is_out_of_memory(
            "CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(is_out_of_memory(
            "DefaultCPUAllocator: can't allocate memory: you tried"
        ));
        assert!(!is_out_of_memory("shape mismatch"));
    }

    /// A real libtorch allocation failure (4 TiB per image above a
    /// micro-batch of 4) makes the micro-batch halve until it fits.
    #[test]
    fn a_real_allocation_failure_halves_the_micro_batch_until_it_fits() {
        let mut micro = 32;
        let mut reported = vec![];
        let got = retry_smaller(
            &mut micro,
            32,
            |m| {
                let per_image: i64 = if m > 4 { 1 << 40 } else { 16 };
                Tensor::empty([m * per_image], (Kind::Float, tch::Device::Cpu)).numel() as i64 / m
            },
            |m| reported.push(m),
        );
        assert_eq!(got, Ok(16));
        assert_eq!(micro, 4);
        assert_eq!(reported, vec![16, 8, 4]);
    }

    #[test]
    fn other_failures_and_oom_at_one_image_are_errors() {
        let mut micro = 8;
        let err = retry_smaller(
            &mut micro,
            8,
            |_| -> i64 { panic!("shape mismatch") },
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err, "shape mismatch");
        assert_eq!(micro, 8);

        let mut calls = 0;
        let err = retry_smaller(
            &mut micro,
            8,
            |_| -> i64 {
                calls += 1;
                panic!("CUDA out of memory. Tried to allocate 1 GiB")
            },
            |_| {},
        )
        .unwrap_err();
        assert!(err.contains("out of memory"));
        assert_eq!((micro, calls), (1, 4)); // 8, 4, 2, 1
    }
}
