//! What the leader election ([`crate::leader`]) and the shard membership ([`crate::shard`])
//! share about `coordination.k8s.io/v1` Leases: the timing rules, bounded calls, expiry, and the
//! [`Validity`] deadline the reconciler checks.
//!
//! Timing: a Lease lasts `duration` without renewal; its holder renews every third of it, each
//! call times out after a third, and the holder stops acting once it has not renewed for the
//! renew deadline (two thirds). So a holder that was paused or cut off from the API stops before
//! anyone else may consider its Lease expired.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::LeaseSpec,
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use tokio::time::Instant;

/// Until when this replica may act; shared with the reconciler.
#[derive(Clone, Debug, Default)]
pub struct Validity {
    /// `None`: no Lease involved, always valid.
    until: Arc<Mutex<Option<Instant>>>,
    elected: bool,
}

impl Validity {
    /// Validity under a Lease: invalid until the Lease is first written.
    pub fn elected() -> Self {
        Validity { until: Arc::new(Mutex::new(Some(Instant::now()))), elected: true }
    }

    /// Valid until `until`.
    pub fn set(&self, until: Instant) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// Whether this replica may act now.
    pub fn is_valid(&self) -> bool {
        if !self.elected {
            return true;
        }
        self.until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|u| Instant::now() < u)
    }
}

/// A Lease call that failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API refused or failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The API did not answer in time.
    #[error("the Lease call did not answer within {0:?}")]
    Timeout(Duration),
}

/// The timing rules of a Lease of a given duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long the Lease is valid without renewal.
    pub duration: Duration,
}

impl Timing {
    /// How often the holder renews (and a waiting replica retries).
    pub fn retry_period(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(500))
    }

    /// How long a holder may go without renewing before it stops: shorter than the Lease
    /// duration by at least one call timeout.
    pub fn renew_deadline(&self) -> Duration {
        self.duration.mul_f64(2.0 / 3.0)
    }

    /// The timeout of one Lease call.
    pub fn call_timeout(&self) -> Duration {
        self.retry_period()
    }

    /// `leaseDurationSeconds` of a Lease with this timing.
    pub fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(15)
    }
}

/// Runs a Lease call with a time limit.
///
/// # Errors
/// The call's error, or [`LeaseError::Timeout`].
pub async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LeaseError::Timeout(limit)),
    }
}

/// Whether a Lease is free to take: no holder, never renewed, or not renewed for its duration.
pub fn expired(spec: Option<&LeaseSpec>, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(renewed)) => {
            renewed.checked_add(SignedDuration::from_secs(duration)).is_ok_and(|deadline| deadline < now)
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: Option<&str>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: renewed.map(|r| MicroTime(r.parse().expect("a time"))),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_renewed_within_its_duration_is_held() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().expect("a time");
        assert!(!expired(Some(&spec(Some("a"), Some("2026-01-01T00:00:00Z"), 15)), now));
    }

    #[test]
    fn a_lease_not_renewed_for_its_duration_can_be_taken_over() {
        let now: Timestamp = "2026-01-01T00:00:16Z".parse().expect("a time");
        assert!(expired(Some(&spec(Some("a"), Some("2026-01-01T00:00:00Z"), 15)), now));
    }

    #[test]
    fn a_released_lease_can_be_taken_at_once() {
        let now: Timestamp = "2026-01-01T00:00:01Z".parse().expect("a time");
        assert!(expired(Some(&spec(None, None, 15)), now));
        assert!(expired(Some(&spec(Some(""), Some("2026-01-01T00:00:00Z"), 15)), now));
        assert!(expired(None, now));
    }

    #[test]
    fn the_renew_deadline_ends_before_anyone_else_may_take_over() {
        for secs in [2, 4, 15, 60] {
            let t = Timing { duration: Duration::from_secs(secs) };
            assert!(t.renew_deadline() + t.call_timeout() <= t.duration, "{secs}s");
        }
    }

    #[test]
    fn without_a_lease_this_replica_always_may_act() {
        assert!(Validity::default().is_valid());
        assert!(!Validity::elected().is_valid());
    }
}
