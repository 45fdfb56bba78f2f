//! One CPU thread budget for the three pools that compute on the CPU:
//! libtorch's intra-op threads (OpenMP), rayon (image decoding) and tokio
//! (HTTP), sized together from one number, `--cpu-threads` (default: the
//! cores this process may use), and applied once, at start.
//!
//! libtorch's OpenMP runtime (libgomp) gives every thread that runs a
//! parallel operator a team of its own, and a team's threads spin for a
//! while (GOMP_SPINCOUNT: 300,000 pauses, 8-10 ms on the 2-core EPYC this
//! was measured on) after each operator before they sleep. A request's
//! image was turned into a tensor on a rayon thread (`Tensor::from_slice`
//! fills its buffer in parallel) and stacked on a blocking thread, so each
//! of those threads grew a team whose spinning overlapped the inference
//! thread's forward pass: on 2 cores, three spinning threads stall each
//! other's barriers. So only the threads that compute (inference engines,
//! trainers) run libtorch in parallel; every helper thread (tokio's,
//! rayon's, data loaders) runs it single-threaded
//! ([`keep_torch_single_threaded`]) and never starts a team.

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

    /// Sizes libtorch's default and rayon's pool, whose threads run libtorch
    /// single-threaded. Call once, at start, before either has run (rayon's
    /// global pool and libtorch's inter-op pool can be sized only once);
    /// tokio's runtime takes [`ThreadBudget::tokio`] and
    /// [`keep_torch_single_threaded`] as its thread-start hook.
    pub fn apply(&self) {
        // The default of every thread that has not run libtorch yet.
        tch::set_num_threads(self.torch as i32);
        static INTEROP: std::sync::Once = std::sync::Once::new();
        // Eager inference and training never use the inter-op pool.
        INTEROP.call_once(|| tch::set_num_interop_threads(1));
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(self.rayon)
            .thread_name(|i| format!("vitrine-rayon-{i}"))
            .start_handler(|_| keep_torch_single_threaded())
            .build_global()
        {
            tracing::warn!(error = %e, "rayon's pool was already started; its size is left as is");
        }
    }
}

/// Makes libtorch run single-threaded on the calling thread (a helper:
/// tokio, rayon, a data loader), so that it never grows an OpenMP team
/// whose spinning competes with the threads that compute. Other threads
/// keep the process-wide default.
pub fn keep_torch_single_threaded() {
    // libtorch sets a thread's count lazily, at its first parallel
    // operator, from the process-wide default; do that now so it cannot
    // undo what follows. (`tch::set_num_threads` would also change that
    // default for every thread started later.)
    let _ = tch::get_num_threads();
    native::set_thread_local_threads(1);
}

/// The cores this process may run on (its affinity mask and cgroup quota,
/// as the standard library reads them).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// libgomp's per-thread setting, looked up in the process (libtorch
/// loaded libgomp; nothing links it directly).
mod native {
    use std::ffi::{c_char, c_int, c_void};
    use std::sync::OnceLock;

    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }

    /// glibc's `RTLD_DEFAULT`: search the global scope.
    const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

    /// `omp_set_num_threads(n)`: the calling thread's OpenMP ICV only.
    /// Returns whether libgomp was found.
    pub fn set_thread_local_threads(n: c_int) -> bool {
        static OMP: OnceLock<Option<usize>> = OnceLock::new();
        let omp = *OMP.get_or_init(|| {
            // SAFETY: dlsym with a NUL-terminated name only reads symbol tables.
            let p = unsafe { dlsym(RTLD_DEFAULT, c"omp_set_num_threads".as_ptr()) };
            (!p.is_null()).then_some(p as usize)
        });
        if let Some(f) = omp {
            // SAFETY: the C entry point of libgomp, `void omp_set_num_threads(int)`
            // (by value; the Fortran one is `omp_set_num_threads_`).
            let f: unsafe extern "C" fn(c_int) = unsafe { std::mem::transmute(f) };
            unsafe { f(n) };
        }
        omp.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper thread runs libtorch's parallel operators single-threaded
    /// (no OpenMP team), even after one ran; a thread that is no helper
    /// keeps the default.
    #[test]
    fn helper_threads_never_start_an_openmp_team() {
        let work = || {
            let x = tch::Tensor::ones([1 << 20], (tch::Kind::Float, tch::Device::Cpu));
            let _ = (&x * 2.0).sum(tch::Kind::Float);
            tch::get_num_threads()
        };
        let helper = std::thread::spawn(move || {
            keep_torch_single_threaded();
            work()
        });
        assert_eq!(helper.join().unwrap(), 1);
        let other = std::thread::spawn(work).join().unwrap();
        assert!(other > 1 || available_cpus() == 1, "{other}");
        assert!(native::set_thread_local_threads(1), "libgomp is found");
    }

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
