//! One byte-counted memory budget for everything that decodes user bytes.
//!
//! Validation, Parquet, thumbnails, `/predict`, exports and training input
//! each estimate what a decode will hold in memory *before* allocating it
//! and take a [`Lease`] of that many bytes; the lease gives the bytes back
//! when dropped. A path that cannot get its bytes waits (background work:
//! [`DecodeBudget::acquire_blocking`]) or answers a named 429 at once
//! (requests: [`DecodeBudget::try_acquire`]), so the sum of concurrent
//! decodes never exceeds the budget, however many requests arrive.
//!
//! Why one budget rather than one per path: the machine's memory is one
//! pool. Sixteen thumbnails and a validation compete for the same bytes,
//! and a per-path cap would let each path alone fill memory at once.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{AppError, ErrorKind};

/// Bytes a decoded image of `width` x `height` may hold at its peak: the
/// decoder's output (up to 4 channels of 16 bits) plus one converted RGB8
/// copy. An estimate from the header, taken before any pixel is decoded.
pub fn image_decode_bytes(width: u32, height: u32) -> u64 {
    u64::from(width) * u64::from(height) * (8 + 3)
}

/// The budget's default size when none is configured: a quarter of the
/// memory this process may use (its cgroup's limit, else the machine's),
/// at least 256 MiB.
pub fn default_budget_bytes() -> u64 {
    let machine = cgroup_memory_limit().or_else(mem_total).unwrap_or(8 << 30);
    (machine / 4).max(256 << 20)
}

fn cgroup_memory_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    text.trim().parse().ok()
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

struct Inner {
    total: u64,
    used: Mutex<u64>,
    /// Wakes blocking waiters when bytes come back.
    freed: Condvar,
    /// Wakes async waiters when bytes come back.
    freed_async: tokio::sync::Notify,
}

/// A shared, byte-counted budget. Cheap to clone; clones share the bytes.
#[derive(Clone)]
pub struct DecodeBudget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DecodeBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeBudget")
            .field("total", &self.inner.total)
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// Bytes held from a [`DecodeBudget`]; given back on drop.
#[must_use = "the bytes are given back as soon as the lease is dropped"]
pub struct Lease {
    inner: Arc<Inner>,
    bytes: u64,
}

impl DecodeBudget {
    /// A budget of `total` bytes (0 is taken as 1: nothing but empty decodes).
    pub fn new(total: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                total: total.max(1),
                used: Mutex::new(0),
                freed: Condvar::new(),
                freed_async: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Bytes held by leases now.
    pub fn in_use(&self) -> u64 {
        *self.inner.used.lock().unwrap()
    }

    /// Takes `bytes` now, or answers 429 (`decode_budget_exhausted`) when
    /// the budget is busy, or 413 (`decode_too_large`) when `bytes` is more
    /// than the whole budget and could never be had. For requests: a
    /// client told to retry is better than a queue that grows.
    pub fn try_acquire(&self, bytes: u64, what: &str) -> Result<Lease, AppError> {
        self.check_fits(bytes, what)?;
        self.take(bytes).ok_or_else(|| AppError::Overloaded {
            retry_after_secs: 1,
            detail: format!(
                "the server's decoding memory is in use; {what} needs {} MiB (retry later)",
                mib(bytes)
            ),
        })
    }

    /// Takes `bytes`, waiting up to `timeout` for other leases to end. For
    /// background work (validations, training input), which may wait.
    pub fn acquire_blocking(
        &self,
        bytes: u64,
        timeout: Duration,
        what: &str,
    ) -> Result<Lease, AppError> {
        self.check_fits(bytes, what)?;
        let deadline = Instant::now() + timeout;
        let mut used = self.inner.used.lock().unwrap();
        loop {
            if *used + bytes <= self.inner.total {
                *used += bytes;
                return Ok(self.lease(bytes));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.busy(bytes, what));
            }
            used = self
                .inner
                .freed
                .wait_timeout(used, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Takes `bytes`, waiting asynchronously up to `timeout`.
    pub async fn acquire(
        &self,
        bytes: u64,
        timeout: Duration,
        what: &str,
    ) -> Result<Lease, AppError> {
        self.check_fits(bytes, what)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a release between the check
            // and the wait is not missed.
            let notified = self.inner.freed_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(lease) = self.take(bytes) {
                return Ok(lease);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.busy(bytes, what));
            }
        }
    }

    fn check_fits(&self, bytes: u64, what: &str) -> Result<(), AppError> {
        if bytes > self.inner.total {
            return Err(AppError::client(
                ErrorKind::TooLarge,
                "decode_too_large",
                format!(
                    "{what} would need {} MiB of memory to decode, more than the server's \
                     decoding budget of {} MiB",
                    mib(bytes),
                    mib(self.inner.total)
                ),
            ));
        }
        Ok(())
    }

    fn busy(&self, bytes: u64, what: &str) -> AppError {
        AppError::client(
            ErrorKind::Unavailable,
            "decode_budget_exhausted",
            format!(
                "the server's decoding memory stayed in use; {what} needs {} MiB (retry later)",
                mib(bytes)
            ),
        )
    }

    fn take(&self, bytes: u64) -> Option<Lease> {
        let mut used = self.inner.used.lock().unwrap();
        if *used + bytes > self.inner.total {
            return None;
        }
        *used += bytes;
        Some(self.lease(bytes))
    }

    fn lease(&self, bytes: u64) -> Lease {
        Lease {
            inner: self.inner.clone(),
            bytes,
        }
    }
}

impl Lease {
    /// Bytes this lease holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `extra` more bytes if the budget has them now (a reader that
    /// learns its size as it goes, such as a Parquet row group); false
    /// leaves the lease as it was.
    pub fn try_grow(&mut self, extra: u64) -> bool {
        let mut used = self.inner.used.lock().unwrap();
        if *used + extra > self.inner.total {
            return false;
        }
        *used += extra;
        self.bytes += extra;
        true
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        *self.inner.used.lock().unwrap() -= self.bytes;
        self.inner.freed.notify_all();
        self.inner.freed_async.notify_waiters();
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_and_give_back() {
        let b = DecodeBudget::new(100);
        let a = b.try_acquire(60, "a").unwrap();
        assert_eq!(b.in_use(), 60);
        let e = b.try_acquire(50, "b").err().unwrap();
        assert!(matches!(e, AppError::Overloaded { .. }), "{e:?}");
        drop(a);
        assert_eq!(b.in_use(), 0);
        let _c = b.try_acquire(100, "c").unwrap();
    }

    #[test]
    fn more_than_the_whole_budget_is_refused_at_once() {
        let b = DecodeBudget::new(100);
        let e = b
            .acquire_blocking(101, Duration::from_secs(60), "x")
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                AppError::Client {
                    code: "decode_too_large",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn blocking_waiters_wake_when_bytes_come_back() {
        let b = DecodeBudget::new(100);
        let held = b.try_acquire(100, "held").unwrap();
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || {
            b2.acquire_blocking(80, Duration::from_secs(10), "w")
                .map(|l| l.bytes())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), 80);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn blocking_wait_gives_up_after_its_timeout() {
        let b = DecodeBudget::new(10);
        let _held = b.try_acquire(10, "held").unwrap();
        let e = b
            .acquire_blocking(5, Duration::from_millis(20), "w")
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                AppError::Client {
                    code: "decode_budget_exhausted",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn async_waiters_wake_when_bytes_come_back() {
        let b = DecodeBudget::new(100);
        let held = b.try_acquire(70, "held").unwrap();
        let b2 = b.clone();
        let waiter =
            tokio::spawn(async move { b2.acquire(50, Duration::from_secs(10), "w").await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn a_lease_grows_only_within_the_budget() {
        let b = DecodeBudget::new(100);
        let mut l = b.try_acquire(40, "l").unwrap();
        assert!(l.try_grow(60));
        assert!(!l.try_grow(1));
        assert_eq!(l.bytes(), 100);
        drop(l);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn the_default_is_sized_from_the_machine() {
        let d = default_budget_bytes();
        assert!(d >= 256 << 20);
        if let Some(total) = mem_total() {
            assert!(d <= total);
        }
    }
}
