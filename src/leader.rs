//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! With more than one replica only the holder of the Lease runs the controllers, so only one
//! process writes to Carerix. The holder renews every third of the lease duration; another
//! replica takes over once `renewTime + leaseDuration` has passed. Every write carries the
//! Lease's `resourceVersion`, so two replicas racing for it cannot both win. On shutdown the
//! holder clears `holderIdentity`, and a standby takes over at its next try instead of waiting
//! for the lease to expire.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

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
        LeaderElection { api: Api::namespaced(client, &settings.namespace), settings }
    }

    fn retry_period(&self) -> Duration {
        (self.settings.duration / 3).max(Duration::from_millis(500))
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

    async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        match self.api.get_opt(&self.settings.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec { lease_transitions: Some(0), ..self.spec(None, now) }),
                };
                self.api.create(&PostParams::default(), &lease).await?;
                Ok(Attempt::Acquired)
            }
            Some(mut lease) => {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
                if holder != self.settings.identity && !expired(&lease, now) {
                    return Ok(Attempt::HeldByOther(holder));
                }
                lease.spec = Some(self.spec(lease.spec.as_ref(), now));
                // The resourceVersion in `lease` makes this a compare-and-swap.
                self.api.replace(&self.settings.name, &PostParams::default(), &lease).await?;
                Ok(Attempt::Acquired)
            }
        }
    }

    /// Waits until this replica holds the lease. Returns false when shutdown came first.
    pub async fn acquire(&self, mut shutdown: watch::Receiver<bool>) -> bool {
        loop {
            match self.try_acquire().await {
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
        let mut last_renewal = tokio::time::Instant::now();
        let mut stop = shutdown.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.retry_period()) => {}
                _ = stop.wait_for(|s| *s) => {
                    // Keep holding until the controllers have finished.
                    std::future::pending::<()>().await;
                }
            }
            match self.try_acquire().await {
                Ok(Attempt::Acquired) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    warn!(%holder, "another replica took the lease");
                    let _ = shutdown.send(true);
                    return;
                }
                Err(err) => {
                    warn!(error = %err, "could not renew the lease");
                    if last_renewal.elapsed() >= self.settings.duration {
                        let _ = shutdown.send(true);
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(&self) {
        match self.api.get_opt(&self.settings.name).await {
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
                match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
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

    #[test]
    fn a_released_lease_can_be_taken_at_once() {
        let now: Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        assert!(expired(&lease(None, None, 15), now));
        assert!(expired(&lease(Some(""), Some("2026-01-01T00:00:00Z"), 15), now));
    }
}
