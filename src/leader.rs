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

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Until when this replica may act as the leader; shared with the reconciler.
#[derive(Clone, Debug, Default)]
pub struct Validity {
    /// `None`: no election, always valid.
    until: Arc<Mutex<Option<Instant>>>,
    elected: bool,
}

impl Validity {
    /// Validity under an election: invalid until the lease is acquired.
    pub fn elected() -> Self {
        Validity { until: Arc::new(Mutex::new(Some(Instant::now()))), elected: true }
    }

    fn set(&self, until: Instant) {
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

fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
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

    fn retry_period(&self) -> Duration {
        (self.settings.duration / 3).max(Duration::from_millis(500))
    }

    /// How long a holder may go without renewing before it stops: shorter than the lease duration
    /// a standby waits, by at least one call timeout.
    pub fn renew_deadline(&self) -> Duration {
        self.settings.duration.mul_f64(2.0 / 3.0)
    }

    /// The timeout of one Lease call.
    pub fn call_timeout(&self) -> Duration {
        self.retry_period()
    }

    async fn bounded<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        match tokio::time::timeout(limit, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(LeaseError::Timeout(limit)),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let same_holder =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.settings.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.settings.duration.as_secs()).unwrap_or(15)),
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
        match self.bounded(limit, self.api.get_opt(&self.settings.name)).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec { lease_transitions: Some(0), ..self.spec(None, now) }),
                };
                self.bounded(limit, self.api.create(&PostParams::default(), &lease)).await?;
                Ok(Attempt::Acquired)
            }
            Some(mut lease) => {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
                if holder != self.settings.identity && !expired(&lease, now) {
                    return Ok(Attempt::HeldByOther(holder));
                }
                lease.spec = Some(self.spec(lease.spec.as_ref(), now));
                // The resourceVersion in `lease` makes this a compare-and-swap.
                self.bounded(limit, self.api.replace(&self.settings.name, &PostParams::default(), &lease))
                    .await?;
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
        match self.bounded(limit, self.api.get_opt(&self.settings.name)).await {
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
                match self
                    .bounded(limit, self.api.replace(&self.settings.name, &PostParams::default(), &lease))
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

    fn lease(holder: Option<&str>, renewed: Option<&str>, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(|r| MicroTime(r.parse().unwrap())),
                lease_duration_seconds: Some(secs),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_renewed_within_its_duration_is_held() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        assert!(!expired(&lease(Some("a"), Some("2026-01-01T00:00:00Z"), 15), now));
    }

    #[test]
    fn a_lease_not_renewed_for_its_duration_can_be_taken_over() {
        let now: Timestamp = "2026-01-01T00:00:16Z".parse().unwrap();
        assert!(expired(&lease(Some("a"), Some("2026-01-01T00:00:00Z"), 15), now));
    }

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

    #[test]
    fn without_an_election_this_replica_always_may_act() {
        assert!(Validity::default().is_valid());
        assert!(!Validity::elected().is_valid());
    }

    #[test]
    fn a_released_lease_can_be_taken_at_once() {
        let now: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        assert!(expired(&lease(None, None, 15), now));
        assert!(expired(&lease(Some(""), Some("2026-01-01T00:00:00Z"), 15), now));
    }
}
