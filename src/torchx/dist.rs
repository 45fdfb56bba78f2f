//! PyTorch's distributed engine, c10d, through `dist.cpp`: a [`Store`]
//! (c10d's `TCPStore`; rank 0 hosts it, the others connect), a Gloo
//! [`ProcessGroup`] with broadcast and all-reduce, and a [`GradReducer`]
//! (c10d's `Reducer`, the engine of PyTorch's DistributedDataParallel),
//! which all-reduces gradients in buckets while the backward pass still
//! runs. No collective is written here: every one is c10d's.
//!
//! `dist.cpp` needs the Gloo headers, which the torch wheel does not ship
//! (Debian's `libgloo-dev` does). `build.rs` compiles it only when it finds
//! them and then sets `cfg(vitrine_c10d)`; without it [`available`] is
//! false and every constructor returns an error that says why, so the
//! binary still builds and starts, and refuses multi-device jobs by name.
//!
//! Handles are `Send` (a rank's thread owns its group) but not `Sync`:
//! c10d's process groups are not meant to be driven from two threads.

use std::time::Duration;

use tch::Tensor;

use super::{Result, TorchError};

/// Why multi-device training is unavailable in this build, if it is.
pub const UNAVAILABLE: &str = "this vitrine was built without the Gloo headers \
     (libgloo-dev), so it cannot train one job on several devices";

/// Whether this build has c10d (Gloo) support.
pub fn available() -> bool {
    cfg!(vitrine_c10d)
}

/// How [`ProcessGroup::all_reduce`] combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Avg,
    Max,
}

impl ReduceOp {
    #[cfg_attr(not(vitrine_c10d), allow(dead_code))]
    fn code(self) -> i32 {
        match self {
            Self::Sum => 0,
            Self::Avg => 1,
            Self::Max => 2,
        }
    }
}

/// DistributedDataParallel's default bucket size (25 MiB).
pub const BUCKET_BYTES: i64 = 25 * 1024 * 1024;
/// DistributedDataParallel's first, small bucket (1 MiB): the last layers'
/// gradients start travelling as soon as they exist.
pub const FIRST_BUCKET_BYTES: i64 = 1024 * 1024;

/// A c10d `TCPStore`: the rendezvous of a process group.
pub struct Store {
    #[cfg_attr(not(vitrine_c10d), allow(dead_code))]
    ptr: *mut std::ffi::c_void,
    port: u16,
}

// SAFETY: a TCPStore is a socket client (and for rank 0 a server thread of
// its own); moving the handle between threads is what c10d itself does.
unsafe impl Send for Store {}

/// A c10d process group (Gloo backend) of `world` ranks.
pub struct ProcessGroup {
    #[cfg_attr(not(vitrine_c10d), allow(dead_code))]
    ptr: *mut std::ffi::c_void,
    rank: usize,
    world: usize,
}

// SAFETY: the group is used by the one thread that owns it at a time; its
// Gloo worker threads are c10d's own.
unsafe impl Send for ProcessGroup {}

/// c10d's `Reducer` over one rank's trainable parameters.
pub struct GradReducer {
    #[cfg_attr(not(vitrine_c10d), allow(dead_code))]
    ptr: *mut std::ffi::c_void,
    buckets: usize,
    // The parameters (the reducer keeps its own references too).
    _params: Vec<Tensor>,
}

// SAFETY: as for `ProcessGroup`: one owning thread at a time.
unsafe impl Send for GradReducer {}

impl Store {
    /// The port the store listens on (rank 0) or connected to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl ProcessGroup {
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }
}

impl GradReducer {
    /// How many buckets the gradients travel in.
    pub fn buckets(&self) -> usize {
        self.buckets
    }
}

#[cfg(vitrine_c10d)]
mod ffi;

#[cfg(vitrine_c10d)]
mod imp {
    use std::ffi::CString;

    use super::*;
    use crate::torchx::{check, handles};

    fn c_string(s: &str) -> Result<CString> {
        CString::new(s).map_err(|_| TorchError(format!("a NUL byte in {s:?}")))
    }

    fn millis(d: Duration) -> i64 {
        d.as_millis().min(i64::MAX as u128) as i64
    }

    impl Store {
        /// Hosts the store on `host:port` (0: a free port, see
        /// [`Store::port`]); rank 0 does this.
        pub fn host(host: &str, port: u16, timeout: Duration) -> Result<Self> {
            Self::open(host, port, true, timeout)
        }

        /// Connects to rank 0's store, waiting up to `timeout` for it.
        pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self> {
            Self::open(host, port, false, timeout)
        }

        fn open(host: &str, port: u16, server: bool, timeout: Duration) -> Result<Self> {
            let host = c_string(host)?;
            let (mut ptr, mut bound) = (std::ptr::null_mut(), 0u16);
            check(unsafe {
                ffi::vx_dist_store_new(
                    host.as_ptr(),
                    port,
                    server,
                    millis(timeout),
                    &mut ptr,
                    &mut bound,
                )
            })?;
            Ok(Self { ptr, port: bound })
        }
    }

    impl Drop for Store {
        fn drop(&mut self) {
            unsafe { ffi::vx_dist_store_free(self.ptr) }
        }
    }

    impl ProcessGroup {
        /// Joins the Gloo group of `world` ranks as `rank`; returns when
        /// every rank has joined, or fails after `timeout`. `hostname` is
        /// the address the other ranks reach this one at.
        pub fn gloo(
            store: &Store,
            hostname: &str,
            rank: usize,
            world: usize,
            timeout: Duration,
        ) -> Result<Self> {
            let hostname = c_string(hostname)?;
            let mut ptr = std::ptr::null_mut();
            check(unsafe {
                ffi::vx_dist_gloo_new(
                    store.ptr,
                    hostname.as_ptr(),
                    rank as i32,
                    world as i32,
                    millis(timeout),
                    &mut ptr,
                )
            })?;
            Ok(Self { ptr, rank, world })
        }

        /// Copies `root`'s tensors into every rank's, in place.
        pub fn broadcast(&self, ts: &[Tensor], root: usize) -> Result<()> {
            let hs = handles(ts);
            check(unsafe { ffi::vx_dist_broadcast(self.ptr, hs.as_ptr(), hs.len(), root as i32) })
        }

        /// Combines every rank's tensors by `op`, in place on each rank.
        pub fn all_reduce(&self, ts: &[Tensor], op: ReduceOp) -> Result<()> {
            let hs = handles(ts);
            check(unsafe { ffi::vx_dist_all_reduce(self.ptr, hs.as_ptr(), hs.len(), op.code()) })
        }

        /// Waits until every rank has reached this call.
        pub fn barrier(&self) -> Result<()> {
            check(unsafe { ffi::vx_dist_barrier(self.ptr) })
        }

        /// Aborts pending and future collectives (another rank is lost).
        pub fn abort(&self) -> Result<()> {
            check(unsafe { ffi::vx_dist_group_abort(self.ptr) })
        }
    }

    impl Drop for ProcessGroup {
        fn drop(&mut self) {
            unsafe { ffi::vx_dist_group_free(self.ptr) }
        }
    }

    impl GradReducer {
        /// A reducer over `params` (leaves requiring grad, in the model's
        /// order; the same on every rank) with DDP's bucket sizes.
        pub fn new(group: &ProcessGroup, params: &[Tensor], bucket_bytes: i64) -> Result<Self> {
            let hs = handles(params);
            let (mut ptr, mut buckets) = (std::ptr::null_mut(), 0usize);
            check(unsafe {
                ffi::vx_dist_reducer_new(
                    group.ptr,
                    hs.as_ptr(),
                    hs.len(),
                    bucket_bytes,
                    FIRST_BUCKET_BYTES.min(bucket_bytes),
                    &mut ptr,
                    &mut buckets,
                )
            })?;
            Ok(Self {
                ptr,
                buckets,
                _params: params.iter().map(Tensor::shallow_clone).collect(),
            })
        }

        /// Arms the next backward pass: its gradients are averaged over
        /// the ranks, bucket by bucket as they become ready, and are in
        /// `.grad` when `backward()` returns. Backward passes that are not
        /// armed (the earlier micro-batches of a step) only accumulate.
        pub fn prepare(&self) -> Result<()> {
            check(unsafe { ffi::vx_dist_reducer_prepare(self.ptr) })
        }
    }

    impl Drop for GradReducer {
        fn drop(&mut self) {
            unsafe { ffi::vx_dist_reducer_free(self.ptr) }
        }
    }
}

#[cfg(not(vitrine_c10d))]
mod imp {
    use super::*;

    fn unavailable<T>() -> Result<T> {
        Err(TorchError(UNAVAILABLE.into()))
    }

    impl Store {
        pub fn host(_host: &str, _port: u16, _timeout: Duration) -> Result<Self> {
            unavailable()
        }
        pub fn connect(_host: &str, _port: u16, _timeout: Duration) -> Result<Self> {
            unavailable()
        }
    }

    impl ProcessGroup {
        pub fn gloo(
            _store: &Store,
            _hostname: &str,
            _rank: usize,
            _world: usize,
            _timeout: Duration,
        ) -> Result<Self> {
            unavailable()
        }
        pub fn broadcast(&self, _ts: &[Tensor], _root: usize) -> Result<()> {
            unavailable()
        }
        pub fn all_reduce(&self, _ts: &[Tensor], _op: ReduceOp) -> Result<()> {
            unavailable()
        }
        pub fn barrier(&self) -> Result<()> {
            unavailable()
        }
        pub fn abort(&self) -> Result<()> {
            unavailable()
        }
    }

    impl GradReducer {
        pub fn new(_group: &ProcessGroup, _params: &[Tensor], _bucket_bytes: i64) -> Result<Self> {
            unavailable()
        }
        pub fn prepare(&self) -> Result<()> {
            unavailable()
        }
    }
}

#[cfg(all(test, vitrine_c10d))]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Runs `body(group)` on `world` threads, one rank each, rendezvousing
    /// at rank 0's store on a free port; returns each rank's result.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        body: impl Fn(ProcessGroup) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let store = Store::host("127.0.0.1", 0, TIMEOUT).unwrap();
        let port = store.port();
        let body = std::sync::Arc::new(body);
        let mut stores = vec![Some(store)];
        for _ in 1..world {
            stores.push(None);
        }
        let threads: Vec<_> = stores
            .into_iter()
            .enumerate()
            .map(|(rank, store)| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let store = store
                        .unwrap_or_else(|| Store::connect("127.0.0.1", port, TIMEOUT).unwrap());
                    let group =
                        ProcessGroup::gloo(&store, "127.0.0.1", rank, world, TIMEOUT).unwrap();
                    body(group)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn two_ranks_all_reduce_and_broadcast() {
        let got = on_ranks(2, |g| {
            let r = g.rank() as f64;
            let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (r + 1.0);
            let b = Tensor::from_slice(&[r as f32 + 0.5]);
            g.all_reduce(&[a.shallow_clone()], ReduceOp::Sum).unwrap();
            g.all_reduce(&[b.shallow_clone()], ReduceOp::Avg).unwrap();
            let c = Tensor::full([4], 10.0 * (r + 1.0), (Kind::Float, Device::Cpu));
            g.broadcast(&[c.shallow_clone()], 1).unwrap();
            g.barrier().unwrap();
            (
                Vec::<f32>::try_from(&a).unwrap(),
                f32::try_from(&b).unwrap(),
                Vec::<f32>::try_from(&c).unwrap(),
            )
        });
        for (a, b, c) in got {
            assert_eq!(a, vec![3.0, 6.0, 9.0]);
            assert_eq!(b, 1.0);
            assert_eq!(c, vec![20.0; 4]);
        }
    }

    /// The reducer's averaged gradients equal the mean of the ranks' own
    /// gradients computed separately, over several buckets.
    #[test]
    fn the_reducer_averages_gradients_in_buckets() {
        let got = on_ranks(2, |g| {
            let r = g.rank() as f64;
            // Two parameters of 300k floats (1.2 MB) and a small one: with
            // 1 MiB buckets at least two buckets.
            let w1 = Tensor::ones([300_000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let w2 = Tensor::ones([300_000], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let w3 = Tensor::ones([7], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let params = [w1.shallow_clone(), w2.shallow_clone(), w3.shallow_clone()];
            let reducer = GradReducer::new(&g, &params, 1024 * 1024).unwrap();
            let mut out = vec![];
            for step in 0..3 {
                for p in &params {
                    let mut grad = p.grad();
                    if grad.defined() {
                        let _ = grad.zero_();
                    }
                }
                let k = (r + 1.0) * (step as f64 + 1.0);
                let loss = (&w1 * k).sum(Kind::Float)
                    + (&w2 * (2.0 * k)).sum(Kind::Float)
                    + (&w3 * (3.0 * k)).sum(Kind::Float);
                reducer.prepare().unwrap();
                loss.backward();
                out.push(
                    params
                        .iter()
                        .map(|p| f64::try_from(p.grad().mean(Kind::Float)).unwrap())
                        .collect::<Vec<_>>(),
                );
            }
            (reducer.buckets(), out)
        });
        for (buckets, steps) in got {
            assert!(buckets >= 2, "{buckets} buckets");
            for (step, grads) in steps.iter().enumerate() {
                // The mean over ranks r = 0, 1 of (r + 1) is 1.5.
                let k = 1.5 * (step as f64 + 1.0);
                let want = [k, 2.0 * k, 3.0 * k];
                for (g, w) in grads.iter().zip(want) {
                    assert!((g - w).abs() < 1e-5, "step {step}: {g} vs {w}");
                }
            }
        }
    }
}
