//! Client-side rate limiting, one token bucket per tenant.
//!
//! Carerix is said to allow about 10 requests per second (API.md §3.7, unverified). Every API
//! request (GraphQL and webhooks REST, not token requests) first awaits the tenant's
//! [`RateLimiter`]; the client reports each wait to its [`Observer`](super::Observer) so metrics
//! can count rate-limited waits.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota};

/// The default budget: 10 requests per second.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 10;

/// A shared rate limiter handle (cheap to clone; clones share one budget).
#[derive(Clone)]
pub struct RateLimiter {
    limiter: Arc<DefaultDirectRateLimiter>,
    per_sec: NonZeroU32,
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
        RateLimiter { limiter: Arc::new(governor::RateLimiter::direct(Quota::per_second(per_sec))), per_sec }
    }

    /// The configured requests per second.
    pub fn per_second(&self) -> u32 {
        self.per_sec.get()
    }

    /// Waits until a request may be sent and returns how long that took (zero when not limited).
    pub async fn until_ready(&self) -> Duration {
        let start = Instant::now();
        self.limiter.until_ready().await;
        start.elapsed()
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

    #[tokio::test]
    async fn shares_budget_per_tenant() {
        let registry = RateLimiters::new(2);
        let a1 = registry.for_tenant("a");
        let a2 = registry.for_tenant("a");
        let b = registry.for_tenant("b");
        assert!(Arc::ptr_eq(&a1.limiter, &a2.limiter));
        assert!(!Arc::ptr_eq(&a1.limiter, &b.limiter));
        // Burst of 2 passes at once, the third waits about half a second.
        assert!(a1.until_ready().await < Duration::from_millis(50));
        assert!(a2.until_ready().await < Duration::from_millis(50));
        let waited = a1.until_ready().await;
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        // Tenant b is unaffected.
        assert!(b.until_ready().await < Duration::from_millis(50));
        assert_eq!(RateLimiter::new(0).per_second(), 1);
    }
}
