//! The one exponential backoff of the operator, used by the three loops that retry: the
//! reconciler (per connection, across passes), the Carerix client (per request, inside a pass)
//! and the data sync (per connection, across sync runs).
//!
//! The n-th consecutive failure waits `base * 2^(n-1)`, capped at `max`, spread by ±20% so that
//! many connections failing together do not retry in lockstep, and never less than the server's
//! `Retry-After`. A success starts again from `base`.
//!
//! kube-runtime has no per-object escalating backoff (its `error_policy` never learns about a
//! success) and `backon` retries one future in a loop, while the reconciler's failures are
//! counted across passes that kube-runtime schedules, so we keep this small type; see
//! docs/dependencies.md.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use rand::Rng;

/// The spread of a delay: ±20%.
pub const JITTER: f64 = 0.2;

/// Backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { base: Duration::from_secs(5), max: Duration::from_secs(300) }
    }
}

impl BackoffPolicy {
    /// The delay after failure number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// How long to wait after failure number `attempt` (1-based): the delay with jitter, at
    /// least `retry_after`.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let delay = jitter(self.delay(attempt), JITTER);
        retry_after.map_or(delay, |r| delay.max(r))
    }
}

/// Spreads `d` by up to ±`fraction` at random.
pub fn jitter(d: Duration, fraction: f64) -> Duration {
    let f = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    d.mul_f64(f.max(0.0))
}

/// Consecutive failures per key (a connection's `namespace/name`), each backing off on its own.
#[derive(Debug, Default)]
pub struct Backoffs {
    policy: BackoffPolicy,
    attempts: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// Backoffs with the given policy.
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoffs { policy, attempts: Mutex::new(HashMap::new()) }
    }

    /// Records a failure of `key` and returns how long to wait, at least `retry_after`.
    pub fn failed(&self, key: &str, retry_after: Option<Duration>) -> Duration {
        let attempt = {
            let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.policy.wait(attempt, retry_after)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Consecutive failures of `key`.
    pub fn attempts(&self, key: &str) -> u32 {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_per_failure_up_to_the_cap() {
        let p = BackoffPolicy { base: Duration::from_secs(5), max: Duration::from_secs(60) };
        assert_eq!(p.delay(1), Duration::from_secs(5));
        assert_eq!(p.delay(2), Duration::from_secs(10));
        assert_eq!(p.delay(4), Duration::from_secs(40));
        assert_eq!(p.delay(5), Duration::from_secs(60));
        assert_eq!(p.delay(500), Duration::from_secs(60));
    }

    #[test]
    fn the_wait_is_the_delay_within_twenty_percent_and_never_shorter_than_retry_after() {
        let p = BackoffPolicy { base: Duration::from_secs(10), max: Duration::from_secs(60) };
        for _ in 0..100 {
            let w = p.wait(2, None);
            assert!(w >= Duration::from_secs(16) && w <= Duration::from_secs(24), "{w:?}");
        }
        assert!(p.wait(1, Some(Duration::from_secs(45))) >= Duration::from_secs(45));
    }

    #[test]
    fn a_success_resets_the_backoff() {
        let b = Backoffs::new(BackoffPolicy { base: Duration::from_secs(1), max: Duration::from_secs(100) });
        b.failed("ns/a", None);
        b.failed("ns/a", None);
        assert_eq!(b.attempts("ns/a"), 2);
        b.succeeded("ns/a");
        assert_eq!(b.attempts("ns/a"), 0);
        let d = b.failed("ns/a", None);
        assert!(d <= Duration::from_millis(1200), "{d:?}");
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff() {
        let b = Backoffs::new(BackoffPolicy::default());
        assert!(b.failed("ns/a", Some(Duration::from_secs(30))) >= Duration::from_secs(30));
    }

    #[test]
    fn connections_back_off_independently() {
        let b = Backoffs::new(BackoffPolicy::default());
        b.failed("ns/a", None);
        b.failed("ns/a", None);
        assert_eq!(b.attempts("ns/b"), 0);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(100), 0.1);
            assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(110), "{d:?}");
        }
    }
}
