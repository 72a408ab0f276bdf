//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! With more than one replica only the holder of the Lease runs the controllers, so only one
//! process writes to Carerix. The holder renews every third of the lease duration; another
//! replica takes over once `renewTime + leaseDuration` has passed. Every write carries the
//! Lease's `resourceVersion`, so two replicas racing for it cannot both win. On shutdown the
//! holder clears `holderIdentity`, and a standby takes over at its next try instead of waiting
//! for the lease to expire.
//!
//! A renewal that fails is tried again after a twelfth of the duration, not a third, so that one
//! refused or dropped call (an API server restarting, a busy node) does not use up the renew
//! deadline by itself. Every Lease call has a timeout (a third of the lease duration), and the holder gives up once
//! it has not renewed for the renew deadline (two thirds of the duration), which is shorter than
//! the time a standby waits: so a holder that was paused or cut off from the API stops before
//! another replica can start. [`Validity`] carries that deadline to the reconciler, which does
//! nothing once it has passed, even before the renewal loop gets to run again.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use crate::lease::{LeaseError, Validity};
use crate::lease::{Timing, bounded, expired};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// How long the lease is valid without renewal.
    pub duration: Duration,
}

/// One replica's side of the election.
pub struct LeaderElection {
    api: Api<Lease>,
    settings: LeaseSettings,
    validity: Validity,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Acquired,
    HeldByOther(String),
}

impl LeaderElection {
    /// An election for the given Lease.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElection {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            validity: Validity::elected(),
        }
    }

    /// The same election, reporting its validity to `validity` (shared with the reconciler).
    pub fn with_validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }

    fn timing(&self) -> Timing {
        Timing { duration: self.settings.duration }
    }

    fn retry_period(&self) -> Duration {
        self.timing().retry_period()
    }

    /// How long a holder may go without renewing before it stops: shorter than the lease duration
    /// a standby waits, by at least one call timeout.
    pub fn renew_deadline(&self) -> Duration {
        self.timing().renew_deadline()
    }

    /// The timeout of one Lease call.
    pub fn call_timeout(&self) -> Duration {
        self.timing().call_timeout()
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let same_holder =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.settings.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.timing().duration_seconds()),
            acquire_time: if same_holder {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if same_holder { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }

    async fn try_acquire(&self, limit: Duration) -> Result<Attempt, LeaseError> {
        let started = Instant::now();
        let attempt = self.try_acquire_once(limit).await?;
        if attempt == Attempt::Acquired {
            // Measured from before the call: the lease was valid from at most then.
            self.validity.set(started + self.renew_deadline());
        }
        Ok(attempt)
    }

    async fn try_acquire_once(&self, limit: Duration) -> Result<Attempt, LeaseError> {
        let now = Timestamp::now();
        match bounded(limit, self.api.get_opt(&self.settings.name)).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec { lease_transitions: Some(0), ..self.spec(None, now) }),
                };
                bounded(limit, self.api.create(&PostParams::default(), &lease)).await?;
                Ok(Attempt::Acquired)
            }
            Some(mut lease) => {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
                if holder != self.settings.identity && !expired(lease.spec.as_ref(), now) {
                    return Ok(Attempt::HeldByOther(holder));
                }
                lease.spec = Some(self.spec(lease.spec.as_ref(), now));
                // The resourceVersion in `lease` makes this a compare-and-swap.
                bounded(limit, self.api.replace(&self.settings.name, &PostParams::default(), &lease)).await?;
                Ok(Attempt::Acquired)
            }
        }
    }

    /// Waits until this replica holds the lease. Returns false when shutdown came first.
    pub async fn acquire(&self, mut shutdown: watch::Receiver<bool>) -> bool {
        loop {
            match self.try_acquire(self.call_timeout()).await {
                Ok(Attempt::Acquired) => return true,
                Ok(Attempt::HeldByOther(holder)) => debug!(%holder, "the lease is held by another replica"),
                Err(err) => debug!(error = %err, "could not take the lease (someone else may have)"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry_period()) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Renews the lease until it is lost or shutdown is requested; returns when it is lost.
    pub async fn keep_renewing(&self, shutdown: watch::Sender<bool>) {
        let mut last_renewal = Instant::now();
        let mut stop = shutdown.subscribe();
        let mut pause = self.retry_period();
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => {
                    // Keep holding until the controllers have finished.
                    std::future::pending::<()>().await;
                }
            }
            // Paused or cut off past the deadline: a standby may already lead.
            let Some(left) = self.renew_deadline().checked_sub(last_renewal.elapsed()) else {
                warn!("the lease was not renewed within its renew deadline; stopping");
                let _ = shutdown.send(true);
                return;
            };
            let started = Instant::now();
            match self.try_acquire(self.call_timeout().min(left)).await {
                Ok(Attempt::Acquired) => {
                    last_renewal = started;
                    pause = self.retry_period();
                }
                Ok(Attempt::HeldByOther(holder)) => {
                    warn!(%holder, "another replica took the lease");
                    let _ = shutdown.send(true);
                    return;
                }
                Err(err) => {
                    warn!(error = %err, "could not renew the lease");
                    pause = self.retry_period() / 4;
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(&self) {
        self.validity.set(Instant::now());
        let limit = self.call_timeout();
        match bounded(limit, self.api.get_opt(&self.settings.name)).await {
            Ok(Some(mut lease)) => {
                let ours = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                    == Some(self.settings.identity.as_str());
                if !ours {
                    return;
                }
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                match bounded(limit, self.api.replace(&self.settings.name, &PostParams::default(), &lease))
                    .await
                {
                    Ok(_) => info!("released the lease"),
                    Err(err) => warn!(error = %err, "could not release the lease"),
                }
            }
            Ok(None) => {}
            Err(err) => warn!(error = %err, "could not read the lease to release it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_renew_deadline_ends_before_a_standby_may_take_over() {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        for secs in [2, 15, 60] {
            let le = LeaderElection::new(
                client.clone(),
                LeaseSettings {
                    name: "l".into(),
                    namespace: "n".into(),
                    identity: "a".into(),
                    duration: Duration::from_secs(secs),
                },
            );
            assert!(le.renew_deadline() + le.call_timeout() <= le.settings.duration, "{secs}s");
        }
    }

    #[tokio::test]
    async fn a_lease_call_to_an_api_that_does_not_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let le = LeaderElection::new(
            client,
            LeaseSettings {
                name: "l".into(),
                namespace: "n".into(),
                identity: "a".into(),
                duration: Duration::from_secs(3),
            },
        );
        let got = le.try_acquire(le.call_timeout()).await;
        assert!(matches!(got, Err(LeaseError::Timeout(_))), "{got:?}");
        assert!(!le.validity.is_valid(), "no lease, no leadership");
    }

    /// A Kubernetes API holding one Lease whose first update is refused with a 500.
    fn api_refusing_one_renewal() -> kube::Client {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let updates = Arc::new(AtomicUsize::new(0));
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let updates = updates.clone();
            async move {
                let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "l", "namespace": "n", "resourceVersion": "1"},
                    "spec": {"holderIdentity": "a", "leaseDurationSeconds": 3,
                             "renewTime": Timestamp::now().to_string()}});
                let refused =
                    req.method() == http::Method::PUT && updates.fetch_add(1, Ordering::SeqCst) == 0;
                let (status, body) = if refused {
                    (
                        500,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500}),
                    )
                } else {
                    (200, lease)
                };
                let mut resp =
                    http::Response::new(kube::client::Body::from(serde_json::to_vec(&body).unwrap()));
                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        kube::Client::new(service, "n")
    }

    #[tokio::test(start_paused = true)]
    async fn one_refused_renewal_does_not_cost_the_lease_when_the_next_try_succeeds() {
        let le = LeaderElection::new(
            api_refusing_one_renewal(),
            LeaseSettings {
                name: "l".into(),
                namespace: "n".into(),
                identity: "a".into(),
                duration: Duration::from_secs(3),
            },
        );
        let (shutdown, stopped) = watch::channel(false);
        let renewing = tokio::time::timeout(Duration::from_secs(20), le.keep_renewing(shutdown)).await;
        assert!(renewing.is_err(), "the leader gave the lease up after one refused renewal");
        assert!(!*stopped.borrow(), "the controllers were told to stop");
    }
}
