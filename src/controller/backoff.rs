//! Per-connection exponential backoff with jitter, reset on success, and the jittered interval.
//!
//! kube-runtime has no per-object escalating backoff (its `error_policy` never learns about
//! success), so the controller keeps its own: the n-th consecutive failure of a connection waits
//! `base * 2^(n-1)` (capped), spread by ±20% so that many connections failing together do not
//! retry in lockstep, and never less than Carerix's `Retry-After`.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use rand::Rng;

/// Backoff settings.
#[derive(Clone, Copy, Debug)]
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
    /// The delay before retry number `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Spreads `d` by up to ±`fraction` at random.
pub fn jitter(d: Duration, fraction: f64) -> Duration {
    let f = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    d.mul_f64(f.max(0.0))
}

/// Failure counts per connection.
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
        let delay = jitter(self.policy.delay(attempt), 0.2);
        retry_after.map_or(delay, |r| delay.max(r))
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
