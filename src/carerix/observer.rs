//! A hook for metrics: the client reports every HTTP exchange, every rate-limiter wait and every
//! retry to an [`Observer`]. All methods default to doing nothing.

use std::time::Duration;

/// Receives measurements from the client. Implementations must be cheap and must not block.
pub trait Observer: Send + Sync + 'static {
    /// One HTTP request finished. `operation` is stable (`token`, `graphql.crEmployeePage`,
    /// `webhooks.create_webhook`, ...); `status` is `None` when no response arrived.
    fn on_request(&self, operation: &str, status: Option<u16>, duration: Duration) {
        let _ = (operation, status, duration);
    }

    /// The client waited `waited` for the tenant's rate limiter before sending a request
    /// (called for every API request; `waited` is zero when the budget was available).
    fn on_rate_limit_wait(&self, tenant: &str, waited: Duration) {
        let _ = (tenant, waited);
    }

    /// The client will retry `operation` after `delay` because of a retryable error with the
    /// given `reason` (see [`Error::reason`](super::Error::reason)). `attempt` starts at 1.
    fn on_retry(&self, operation: &str, attempt: u32, reason: &str, delay: Duration) {
        let _ = (operation, attempt, reason, delay);
    }
}

/// The default observer: ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
