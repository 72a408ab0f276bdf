//! A pass pays its tenant's rate limiter before it starts, not while it holds a worker.
//!
//! The controller runs a bounded number of reconciles at once. A pass that waited on its tenant's
//! rate limiter inside Carerix calls would keep one of those workers idle for as long as that
//! tenant is busy (an initial sync uses the whole budget), and enough such passes would delay
//! every other tenant's reconciles and deletions. So a pass first reserves the requests it
//! usually makes ([`PASS_REQUESTS`]); when they are due later, the pass is requeued for that
//! moment and the worker is free meanwhile. The requeued pass runs with those requests paid for.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::carerix::RateLimiter;

/// Requests of a usual pass: the recorded application, the application list, its webhooks.
pub const PASS_REQUESTS: u32 = 3;

/// A reservation not used this long after it was due is dropped (its moment has passed; using
/// it later could exceed the budget together with newer requests).
const STALE_AFTER: Duration = Duration::from_secs(5);

/// Whether a pass may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start now, with this many requests paid for.
    Go(u32),
    /// Come back after this long (the reservation is kept for then).
    Wait(Duration),
}

/// Reservations of passes that were requeued, by connection key.
#[derive(Default)]
pub struct Admissions {
    reserved: Mutex<HashMap<String, (RateLimiter, Instant)>>,
}

impl Admissions {
    /// Reserves a pass of connection `key` on `limiter`, or takes the reservation made earlier.
    pub fn admit(&self, key: &str, limiter: &RateLimiter) -> Admission {
        let now = Instant::now();
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((held, due)) = reserved.remove(key)
            && held.same_as(limiter)
            && now <= due + STALE_AFTER
        {
            if due > now {
                reserved.insert(key.to_string(), (held, due));
                return Admission::Wait(due - now);
            }
            return Admission::Go(PASS_REQUESTS);
        }
        let due = limiter.reserve(PASS_REQUESTS);
        // Compared with the clock after reserving: `reserve` answers "now" with its own, later
        // reading when the budget has room, which is not `<= now` (every pass on an idle tenant
        // was requeued for a few microseconds before this).
        if due <= Instant::now() {
            return Admission::Go(PASS_REQUESTS);
        }
        reserved.insert(key.to_string(), (limiter.clone(), due));
        Admission::Wait(due - now)
    }

    /// Forgets the reservation of a connection that is gone.
    pub fn forget(&self, key: &str) {
        self.reserved.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Admission, Admissions, PASS_REQUESTS};
    use crate::carerix::RateLimiter;

    #[test]
    fn a_pass_on_a_tenant_with_budget_left_starts_at_once() {
        // Real time on purpose: the clock moves between reserving and comparing.
        let admissions = Admissions::default();
        let limiter = RateLimiter::new(100);
        for i in 0..10 {
            assert_eq!(
                admissions.admit(&format!("ns/c{i}"), &limiter),
                Admission::Go(PASS_REQUESTS),
                "pass {i}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_over_budget_waits_outside_the_worker_and_then_starts_with_its_requests_paid() {
        let admissions = Admissions::default();
        let limiter = RateLimiter::new(3);
        assert_eq!(admissions.admit("ns/a", &limiter), Admission::Go(PASS_REQUESTS));
        let Admission::Wait(wait) = admissions.admit("ns/b", &limiter) else {
            panic!("the second pass must wait for the budget")
        };
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        tokio::time::advance(wait).await;
        assert_eq!(
            admissions.admit("ns/b", &limiter),
            Admission::Go(PASS_REQUESTS),
            "its reservation is kept"
        );
    }
}
