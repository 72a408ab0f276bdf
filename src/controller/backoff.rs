//! The reconciler backs off per connection with the operator's one backoff type,
//! [`crate::backoff`], shared with the Carerix client and the data sync.

pub use crate::backoff::{BackoffPolicy, Backoffs, jitter};
