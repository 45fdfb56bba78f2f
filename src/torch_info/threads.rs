//! One CPU thread budget for the three pools that compute on the CPU:
//! libtorch's intra-op threads (OpenMP), rayon (image decoding) and tokio
//! (HTTP). Each sizes itself to every core by default, so on a small
//! machine they take turns on the same cores (OpenMP's barrier waits spin
//! while a preempted team member is away); the budget sizes them together
//! from one number, `--cpu-threads` (default: the cores this process may
//! use), and is applied once, at start, before any of them runs.

use serde::Serialize;

/// How many threads each pool gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ThreadBudget {
    /// The budget: cores this process may use, or `--cpu-threads`.
    pub cpus: usize,
    /// libtorch intra-op threads (per forward/backward pass).
    pub torch: usize,
    /// rayon's pool: decoding and resizing images.
    pub rayon: usize,
    /// tokio's worker threads: HTTP, the database, job bookkeeping.
    pub tokio: usize,
}

impl ThreadBudget {
    /// The budget for `cpus` threads (0: the cores available to the
    /// process); `torch_threads` > 0 overrides libtorch's share.
    ///
    /// The model's forward pass is the longest CPU work of a request and
    /// parallelises well, so libtorch gets every core; decoding runs
    /// before the forward pass of the same request, so rayon gets every
    /// core too (it only works while libtorch is idle for a lone request,
    /// and keeps batches of many images fast). tokio does little CPU work
    /// here (parsing, the heavy parts are handed off) and gets a quarter,
    /// at least one.
    pub fn new(cpus: usize, torch_threads: usize) -> Self {
        let cpus = if cpus == 0 { available_cpus() } else { cpus };
        Self {
            cpus,
            torch: if torch_threads > 0 {
                torch_threads
            } else {
                cpus
            },
            rayon: cpus,
            tokio: (cpus / 4).max(1),
        }
    }

    /// Sizes libtorch's and rayon's pools. Call once, at start, before
    /// either has run (rayon's global pool can be sized only once).
    pub fn apply(&self) {
        tch::set_num_threads(self.torch as i32);
        // Eager inference and training never use the inter-op pool.
        tch::set_num_interop_threads(1);
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(self.rayon)
            .thread_name(|i| format!("vitrine-rayon-{i}"))
            .build_global()
        {
            tracing::warn!(error = %e, "rayon's pool was already started; its size is left as is");
        }
    }
}

/// The cores this process may run on (its affinity mask and cgroup quota,
/// as the standard library reads them).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_out_from_one_number() {
        let b = ThreadBudget::new(2, 0);
        assert_eq!((b.cpus, b.torch, b.rayon, b.tokio), (2, 2, 2, 1));
        let b = ThreadBudget::new(16, 0);
        assert_eq!((b.torch, b.rayon, b.tokio), (16, 16, 4));
        let b = ThreadBudget::new(2, 1);
        assert_eq!(b.torch, 1, "--torch-threads overrides libtorch's share");
        let b = ThreadBudget::new(0, 0);
        assert_eq!(b.cpus, available_cpus());
        assert!(b.tokio >= 1);
    }
}
