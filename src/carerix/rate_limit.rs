//! Client-side rate limiting, one token bucket per tenant.
//!
//! Carerix is said to allow about 10 requests per second (API.md §3.7, unverified). Every API
//! request (GraphQL and webhooks REST, not token requests) first awaits the tenant's
//! [`RateLimiter`]; the client reports each wait to its [`Observer`](super::Observer) so metrics
//! can count rate-limited waits.
//!
//! The bucket is a GCRA (the algorithm of `governor`) that hands out reservations: a caller learns
//! at once when its request may go ([`RateLimiter::reserve`]) and callers are served in the order
//! they asked, so a steady sync cannot starve a reconcile that asked later. The reconciler
//! reserves a pass's requests before it starts the pass and, when they are not due yet, requeues
//! the pass for that moment instead of waiting inside one of the controller's workers; the pass
//! then runs with those requests paid for ([`RateLimiter::with_prepaid`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// The default budget: 10 requests per second.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 10;

/// A shared rate limiter handle (cheap to clone; clones share one budget).
#[derive(Clone)]
pub struct RateLimiter {
    bucket: Arc<Bucket>,
    per_sec: NonZeroU32,
}

/// The GCRA state: the theoretical arrival time of the next request.
struct Bucket {
    /// Time between two requests at the steady rate.
    interval: Duration,
    /// How many requests may go at once after a quiet spell.
    burst: u32,
    tat: Mutex<Option<Instant>>,
}

tokio::task_local! {
    /// Requests of one limiter already paid for by the task that runs under it.
    static PREPAID: Prepaid;
}

struct Prepaid {
    bucket: Weak<Bucket>,
    left: AtomicU32,
}

impl Prepaid {
    /// Takes one paid request of `bucket`, if any is left.
    fn take(&self, bucket: &Arc<Bucket>) -> bool {
        std::ptr::eq(self.bucket.as_ptr(), Arc::as_ptr(bucket))
            && self.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter").field("per_sec", &self.per_sec).finish()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(DEFAULT_REQUESTS_PER_SECOND)
    }
}

fn non_zero(per_sec: u32) -> NonZeroU32 {
    NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN)
}

impl RateLimiter {
    /// A limiter allowing `per_sec` requests per second (0 is treated as 1), with a burst of the
    /// same size.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = non_zero(per_sec);
        let bucket = Bucket {
            interval: Duration::from_secs(1) / per_sec.get(),
            burst: per_sec.get(),
            tat: Mutex::new(None),
        };
        RateLimiter { bucket: Arc::new(bucket), per_sec }
    }

    /// The configured requests per second.
    pub fn per_second(&self) -> u32 {
        self.per_sec.get()
    }

    /// Whether `other` shares this limiter's budget.
    pub fn same_as(&self, other: &RateLimiter) -> bool {
        Arc::ptr_eq(&self.bucket, &other.bucket)
    }

    /// Reserves `n` requests and returns when the last of them may be sent (now when the budget
    /// has room). The reservation counts at once: later callers queue behind it.
    pub fn reserve(&self, n: u32) -> Instant {
        let b = &self.bucket;
        let now = Instant::now();
        let mut tat = b.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let next = tat.map_or(now, |t| t.max(now)) + b.interval * n;
        *tat = Some(next);
        next.checked_sub(b.interval * b.burst).map_or(now, |at| at.max(now))
    }

    /// Waits until a request may be sent and returns how long that took (zero when not limited,
    /// or when the calling task runs [`with_prepaid`](Self::with_prepaid) requests of this limiter).
    pub async fn until_ready(&self) -> Duration {
        if PREPAID.try_with(|p| p.take(&self.bucket)).unwrap_or(false) {
            return Duration::ZERO;
        }
        let start = Instant::now();
        tokio::time::sleep_until(self.reserve(1)).await;
        start.elapsed()
    }

    /// Runs `f` with its first `n` requests through this limiter already paid for (by a
    /// [`reserve`](Self::reserve) whose moment has come): they do not wait again.
    pub async fn with_prepaid<F: Future>(&self, n: u32, f: F) -> F::Output {
        let prepaid = Prepaid { bucket: Arc::downgrade(&self.bucket), left: AtomicU32::new(n) };
        PREPAID.scope(prepaid, f).await
    }
}

/// A registry of per-tenant rate limiters sharing one budget per tenant (cheap to clone).
#[derive(Clone)]
pub struct RateLimiters {
    per_sec: u32,
    by_tenant: Arc<Mutex<HashMap<String, RateLimiter>>>,
}

impl fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiters").field("per_sec", &self.per_sec).finish_non_exhaustive()
    }
}

impl Default for RateLimiters {
    fn default() -> Self {
        RateLimiters::new(DEFAULT_REQUESTS_PER_SECOND)
    }
}

impl RateLimiters {
    /// A registry whose limiters allow `per_sec` requests per second each (0 is treated as 1).
    pub fn new(per_sec: u32) -> Self {
        RateLimiters { per_sec: non_zero(per_sec).get(), by_tenant: Arc::default() }
    }

    /// The limiter of `tenant`, created on first use. Every call for the same tenant returns a
    /// handle to the same budget.
    pub fn for_tenant(&self, tenant: &str) -> RateLimiter {
        let mut map = self.by_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(tenant.to_owned()).or_insert_with(|| RateLimiter::new(self.per_sec)).clone()
    }

    /// Forgets a tenant's limiter (e.g. when its connection is deleted).
    pub fn remove(&self, tenant: &str) {
        self.by_tenant.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shares_budget_per_tenant() {
        let registry = RateLimiters::new(2);
        let a1 = registry.for_tenant("a");
        let a2 = registry.for_tenant("a");
        let b = registry.for_tenant("b");
        assert!(a1.same_as(&a2));
        assert!(!a1.same_as(&b));
        // Burst of 2 passes at once, the third waits about half a second.
        assert!(a1.until_ready().await < Duration::from_millis(50));
        assert!(a2.until_ready().await < Duration::from_millis(50));
        let waited = a1.until_ready().await;
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        // Tenant b is unaffected.
        assert!(b.until_ready().await < Duration::from_millis(50));
        assert_eq!(RateLimiter::new(0).per_second(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_are_served_in_order_and_keep_the_rate() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        // The burst of ten goes at once, then one every 100 ms, in the order asked.
        let times: Vec<Duration> = (0..13).map(|_| limiter.reserve(1) - start).collect();
        assert!(times[..10].iter().all(|t| t.is_zero()), "{times:?}");
        assert_eq!(times[10..], [100, 200, 300].map(Duration::from_millis));
        // Three at once are due when the last of them is.
        assert_eq!(limiter.reserve(3) - start, Duration::from_millis(600));
        // A quiet spell refills the burst, no more.
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        assert!((0..10).all(|_| limiter.reserve(1) == now));
        assert!(limiter.reserve(1) > now);
    }

    #[tokio::test(start_paused = true)]
    async fn prepaid_requests_do_not_wait_again_and_only_for_their_limiter() {
        let limiter = RateLimiter::new(1);
        let other = RateLimiter::new(1);
        let due = limiter.reserve(3);
        tokio::time::sleep_until(due).await;
        let waits = limiter
            .with_prepaid(2, async {
                let mut waits = Vec::new();
                for _ in 0..3 {
                    waits.push(limiter.until_ready().await);
                }
                waits.push(other.until_ready().await);
                waits
            })
            .await;
        assert_eq!(waits[..2], [Duration::ZERO, Duration::ZERO], "paid for");
        assert!(waits[2] >= Duration::from_millis(900), "the third was not paid for: {waits:?}");
        assert_eq!(waits[3], Duration::ZERO, "another tenant's budget is untouched");
    }
}
