//! How far a running validation has got: counters the blocking validation
//! bumps (from many rayon threads) and the async side reads as often as it
//! reports, turned into the [`ValidationProgress`] the API shows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// How far a validation has got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValidationProgress {
    /// `queued` (waiting for a validation slot), `extracting`, `checking`
    /// (decoding every image) or `done`.
    pub phase: String,
    /// Images decoded and checked so far.
    pub images_checked: u64,
    /// Images to check; known once the archive is extracted.
    pub images_total: Option<u64>,
    /// Images checked per second, since checking began.
    pub images_per_sec: Option<f64>,
    /// Seconds until every image is checked, at that rate.
    pub eta_seconds: Option<f64>,
    /// Seconds since this validation started (extraction included).
    pub elapsed_seconds: f64,
}

/// Shared between a validation and its reporter.
#[derive(Debug)]
pub struct IngestProgress {
    started: Instant,
    /// Set once the layout is known and images are being decoded.
    checking: AtomicBool,
    /// Milliseconds after `started` at which checking began.
    checking_since_ms: AtomicU64,
    checked: AtomicU64,
    total: AtomicU64,
    /// Set when the service shuts down: the validation stops early (and
    /// runs again at the next start).
    stop: Arc<AtomicBool>,
}

impl Default for IngestProgress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            checking: AtomicBool::new(false),
            checking_since_ms: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            total: AtomicU64::new(0),
            stop: Default::default(),
        }
    }
}

impl IngestProgress {
    /// Counters for a validation that stops early once `stop` is set.
    pub fn with_stop(stop: Arc<AtomicBool>) -> Self {
        Self {
            stop,
            ..Self::default()
        }
    }

    /// True once the service is shutting down: skip the remaining work.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The archive is extracted and its layout found: `total` images to check.
    pub fn start_checking(&self, total: usize) {
        self.total.store(total as u64, Ordering::Relaxed);
        self.checking_since_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.checking.store(true, Ordering::Release);
    }

    /// One more image decoded (or found undecodable).
    pub fn checked_one(&self) {
        self.checked.fetch_add(1, Ordering::Relaxed);
    }

    /// What the API shows now. `waiting`: the validation has not started
    /// (every validation slot is busy).
    pub fn snapshot(&self, waiting: bool) -> ValidationProgress {
        let elapsed = self.started.elapsed().as_secs_f64();
        if waiting {
            return ValidationProgress {
                phase: "queued".into(),
                ..Default::default()
            };
        }
        if !self.checking.load(Ordering::Acquire) {
            return ValidationProgress {
                phase: "extracting".into(),
                elapsed_seconds: elapsed,
                ..Default::default()
            };
        }
        let checked = self.checked.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let since = self.checking_since_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let checking_for = (elapsed - since).max(0.0);
        let rate = (checked > 0 && checking_for > 0.0).then(|| checked as f64 / checking_for);
        ValidationProgress {
            phase: if checked >= total {
                "finishing"
            } else {
                "checking"
            }
            .into(),
            images_checked: checked,
            images_total: Some(total),
            images_per_sec: rate.map(round2),
            eta_seconds: rate.map(|r| round2(total.saturating_sub(checked) as f64 / r)),
            elapsed_seconds: round2(elapsed),
        }
    }

    /// The last snapshot of a validation that ended.
    pub fn done(&self) -> ValidationProgress {
        let mut p = self.snapshot(false);
        p.phase = "done".into();
        p.eta_seconds = p.images_total.map(|_| 0.0);
        p
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_eta_follow_the_checked_images() {
        let p = IngestProgress::default();
        assert_eq!(p.snapshot(true).phase, "queued");
        assert_eq!(p.snapshot(false).phase, "extracting");
        p.start_checking(10);
        let s = p.snapshot(false);
        assert_eq!((s.phase.as_str(), s.images_checked), ("checking", 0));
        assert_eq!(s.images_total, Some(10));
        assert_eq!(s.images_per_sec, None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        for _ in 0..4 {
            p.checked_one();
        }
        let s = p.snapshot(false);
        assert_eq!(s.images_checked, 4);
        let rate = s.images_per_sec.unwrap();
        assert!(rate > 0.0 && rate < 4.0 / 0.019, "{rate}");
        let eta = s.eta_seconds.unwrap();
        assert!((eta - 6.0 / rate).abs() < 0.05, "{eta} vs {}", 6.0 / rate);
        for _ in 0..6 {
            p.checked_one();
        }
        assert_eq!(p.snapshot(false).phase, "finishing");
        assert_eq!(p.done().phase, "done");
    }
}
