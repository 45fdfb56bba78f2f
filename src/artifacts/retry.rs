//! Retrying a store operation through an outage: exponential backoff,
//! bounded in attempts, then the last error. The object store client
//! retries single requests briefly on its own; this covers the longer
//! outages a training job should ride out before it fails.

use std::future::Future;
use std::time::Duration;

/// The schedule: `attempts` tries, waiting `initial`, then twice as long
/// each time (at most 16 s). The default, 5 attempts from 2 s, spans
/// about 30 s of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub initial: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The waits between tries (one fewer than the attempts).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let initial = self.initial;
        (0..self.attempts.saturating_sub(1))
            .map(move |i| (initial * 2u32.saturating_pow(i)).min(Duration::from_secs(16)))
    }

    /// Runs `op` until it succeeds or the attempts are spent; the error
    /// then says how many attempts failed and the last cause.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut delays = self.delays();
        let mut tries = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match delays.next() {
                    Some(wait) => {
                        tracing::warn!(what, attempt = tries, error = %format!("{e:#}"), retry_in = ?wait, "artifact store operation failed; retrying");
                        tokio::time::sleep(wait).await;
                        tries += 1;
                    }
                    None => {
                        return Err(e.context(format!("{what} failed after {tries} attempts")));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_spans_about_thirty_seconds() {
        let b = Backoff::default();
        let delays: Vec<_> = b.delays().collect();
        assert_eq!(delays.len(), 4);
        let total: Duration = delays.iter().sum();
        assert_eq!(total, Duration::from_secs(30));
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_with_the_last_error() {
        let b = Backoff {
            attempts: 3,
            initial: Duration::from_millis(1),
        };
        let mut calls = 0;
        let e = b
            .run("uploading x", || {
                calls += 1;
                let n = calls;
                async move { Err::<(), _>(anyhow::anyhow!("outage {n}")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 3);
        let text = format!("{e:#}");
        assert!(
            text.starts_with("uploading x failed after 3 attempts") && text.ends_with("outage 3"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_later_success_is_a_success() {
        let b = Backoff {
            attempts: 5,
            initial: Duration::from_millis(1),
        };
        let mut calls = 0;
        let v = b
            .run("x", || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        anyhow::bail!("not yet")
                    }
                    Ok(n)
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
    }
}
