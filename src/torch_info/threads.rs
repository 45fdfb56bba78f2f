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

/// Caps libtorch's OpenMP team on the calling thread at `n` threads (at
/// least 1); other threads keep theirs. For background work that must
/// leave cores to the request path (explanations).
pub fn limit_torch_threads(n: usize) {
    let _ = tch::get_num_threads();
    native::set_thread_local_threads(n.clamp(1, i32::MAX as usize) as i32);
}

/// Lowers the calling thread's CPU priority to nice +10 (Linux: a
/// thread's own nice value), for background work such as checking an
/// uploaded dataset: it then takes the cores only when request threads
/// leave them idle. Best effort: returns whether it took.
pub fn lower_thread_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority on our own
        // thread id only changes this thread's nice value.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The OpenMP wait policy `serve` runs with when the environment sets
/// none: how long libgomp's threads spin at the end of a parallel region
/// before they sleep (`GOMP_SPINCOUNT`, in pause instructions).
pub const SERVE_SPINCOUNT: &str = "10000";

/// What libgomp should be told before it loads, given the environment
/// (`var` reads a variable): `GOMP_SPINCOUNT=SERVE_SPINCOUNT` unless
/// `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` is set already (the operator's
/// choice wins, and a re-executed process finds it set).
pub fn openmp_env_to_set(
    var: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, &'static str)> {
    if var("OMP_WAIT_POLICY").is_some() || var("GOMP_SPINCOUNT").is_some() {
        return None;
    }
    Some(("GOMP_SPINCOUNT", SERVE_SPINCOUNT))
}

/// libgomp reads its wait policy once, as it loads with libtorch, before
/// `main`. Its default spins each idle team thread for 300,000 pauses
/// (8-10 ms here) after every parallel region: fastest on an idle machine,
/// but when other processes (or our own decoding) take a core, a thread
/// spinning at a barrier for a preempted peer burns the time its peer
/// needs, and a lone `/predict` went from 23 ms to 75-340 ms at a load of
/// 3 on 2 cores. So `serve` re-executes itself once with a short spin
/// ([`openmp_env_to_set`]) unless the environment chose a policy. Returns
/// only when it did not re-execute (nothing to set, or `exec` failed: the
/// service then runs with libgomp's default, and says so).
pub fn reexec_with_openmp_wait_policy() {
    use std::os::unix::process::CommandExt;
    let Some((name, value)) = openmp_env_to_set(|v| std::env::var(v).ok()) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env(name, value)
        .exec();
    eprintln!("vitrine: could not re-execute with {name}={value} ({err}); libgomp keeps its default wait policy");
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
    fn the_wait_policy_is_set_only_when_the_environment_has_none() {
        let env = |set: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                set.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            openmp_env_to_set(env(&[])),
            Some(("GOMP_SPINCOUNT", SERVE_SPINCOUNT))
        );
        assert_eq!(
            openmp_env_to_set(env(&[("OMP_WAIT_POLICY", "active")])),
            None
        );
        assert_eq!(
            openmp_env_to_set(env(&[("GOMP_SPINCOUNT", "300000")])),
            None
        );
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
