//! Errors that end a reconcile pass early and go to `error_policy`.

use std::time::Duration;

use crate::carerix;

/// Errors that end a reconcile pass early and go to [`super::error_policy`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("failed to {action} {key}")]
    Kube {
        action: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
    /// Deleting our webhooks from Carerix cannot proceed; the status says why and what to do.
    #[error("cleanup of {key} is blocked: {reason}")]
    CleanupBlocked { key: String, reason: String },
    /// Carerix failed during cleanup (retried with backoff).
    #[error("failed to remove the webhooks of {key} from Carerix")]
    Cleanup {
        key: String,
        #[source]
        source: carerix::Error,
    },
    /// Building the Carerix client failed.
    #[error("failed to set up the Carerix client for {key}")]
    Client {
        key: String,
        #[source]
        source: carerix::Error,
    },
    /// The finalizer helper failed.
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short label for metrics: the kind of the Carerix error when there is one.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApi",
            Error::CleanupBlocked { .. } => "CleanupBlocked",
            Error::Cleanup { source, .. } | Error::Client { source, .. } => source.kind().as_str(),
            Error::Finalizer(boxed) => match boxed.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "Finalizer",
            },
        }
    }

    /// How long Carerix asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Cleanup { source, .. } => source.retry_after(),
            Error::Finalizer(boxed) => match boxed.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }
}
