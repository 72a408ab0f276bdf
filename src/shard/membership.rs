//! Shard membership: this replica's own Lease, the view of the live members, and the hand-over.
//!
//! Two loops run side by side:
//! - the keeper renews this replica's Lease (`{group}-shard-{identity}`, labelled with the
//!   group) every third of the lease duration and whenever the acknowledged view changes, with
//!   a timeout per call; when it could not renew within the renew deadline (two thirds of the
//!   duration) it stops the process, before anyone else may count the Lease as expired;
//! - the coordinator watches the group's Leases, computes the live members (Leases renewed
//!   within their duration) and their ring, and runs the hand-over of [`crate::shard`]: stop
//!   what is lost, wait for its running passes, acknowledge the view, and once every live
//!   member acknowledged the same view, start what was gained (a reconcile each).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, channel::mpsc::UnboundedSender};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{ADDRESS_ANNOTATION, GROUP_LABEL, Shards, VIEW_ANNOTATION, ring::Ring};
use crate::{
    api::CarerixConnection,
    lease::{LeaseError, Timing, Validity, bounded, expired},
    metrics::Metrics,
    receiver::Connections,
    sync::SyncManager,
};

/// Field manager of the shard Leases.
const FIELD_MANAGER: &str = "carerix-operator-shard";

/// Settings of this replica's membership.
#[derive(Clone, Debug)]
pub struct MemberSettings {
    /// Shard group: replicas with the same group share the connections.
    pub group: String,
    /// Namespace of the Leases.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub duration: Duration,
    /// `host:port` of this replica's receiver, as the other replicas reach it (pod IP).
    pub address: String,
    /// UID of this replica's Pod: the Lease is then owned by the Pod and goes with it.
    pub pod_uid: Option<String>,
}

/// The parts a [`Membership`] is built from.
pub struct Parts {
    /// Kubernetes client.
    pub client: Client,
    /// Settings.
    pub settings: MemberSettings,
    /// This replica's validity, shared with the reconciler.
    pub validity: Validity,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The data sync: syncs of connections handed over are stopped.
    pub sync: Arc<SyncManager>,
    /// The informer cache of connections (to list what was gained or lost).
    pub connections: Connections,
    /// Asks the controller to reconcile a connection (those gained).
    pub reconcile: UnboundedSender<ObjectRef<CarerixConnection>>,
}

/// This replica's membership in its shard group.
pub struct Membership {
    api: Api<Lease>,
    settings: MemberSettings,
    shards: Shards,
    validity: Validity,
    metrics: Arc<Metrics>,
    sync: Arc<SyncManager>,
    connections: Connections,
    reconcile: UnboundedSender<ObjectRef<CarerixConnection>>,
    acquired: Timestamp,
}

/// The name of a replica's shard Lease: `{group}-shard-{identity}`, made a valid object name.
pub fn lease_name(group: &str, identity: &str) -> String {
    let raw = format!("{group}-shard-{identity}").to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
        .collect();
    name.truncate(253);
    name.trim_matches(|c: char| c == '-' || c == '.').to_string()
}

fn key_of(r: &ObjectRef<CarerixConnection>) -> String {
    format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name)
}

/// What the coordinator read from the group's Leases.
struct Members {
    ring: Ring,
    acks: HashMap<String, String>,
    addresses: HashMap<String, String>,
}

/// The live members (this replica included) from the group's Leases, at `now`.
fn live_members(me: &str, leases: &[Arc<Lease>], now: Timestamp) -> Members {
    let mut members = vec![me.to_string()];
    let mut acks = HashMap::new();
    let mut addresses = HashMap::new();
    for lease in leases {
        let spec = lease.spec.as_ref();
        let Some(holder) = spec.and_then(|s| s.holder_identity.clone()) else { continue };
        if holder == me || expired(spec, now) {
            continue;
        }
        let annotations = lease.metadata.annotations.as_ref();
        if let Some(view) = annotations.and_then(|a| a.get(VIEW_ANNOTATION)) {
            acks.insert(holder.clone(), view.clone());
        }
        if let Some(address) = annotations.and_then(|a| a.get(ADDRESS_ANNOTATION)).filter(|a| !a.is_empty()) {
            addresses.insert(holder.clone(), address.clone());
        }
        members.push(holder);
    }
    Members { ring: Ring::new(members), acks, addresses }
}

/// Whether every other member of `ring` has acknowledged its view.
fn all_acknowledged(me: &str, ring: &Ring, acks: &HashMap<String, String>) -> bool {
    let view = ring.view();
    ring.members().iter().filter(|m| *m != me).all(|m| acks.get(m) == Some(&view))
}

impl Membership {
    /// A membership; it does nothing until [`Membership::run`].
    pub fn new(parts: Parts) -> Self {
        let shards = Shards::member(&parts.settings.identity, parts.validity.clone());
        Membership {
            api: Api::namespaced(parts.client, &parts.settings.namespace),
            settings: parts.settings,
            shards,
            validity: parts.validity,
            metrics: parts.metrics,
            sync: parts.sync,
            connections: parts.connections,
            reconcile: parts.reconcile,
            acquired: Timestamp::now(),
        }
    }

    /// This replica's share, for the reconciler and the receiver.
    pub fn shards(&self) -> Shards {
        self.shards.clone()
    }

    fn timing(&self) -> Timing {
        Timing { duration: self.settings.duration }
    }

    /// How often a member renews, and the timeout of one renewal: twice as often as a leader,
    /// so that one slow answer of the API server leaves time for more tries before the renew
    /// deadline (a leader gives up after one; a member that gives up drops its whole share).
    fn renew_period(&self) -> Duration {
        (self.timing().retry_period() / 2).max(Duration::from_millis(250))
    }

    fn name(&self) -> String {
        lease_name(&self.settings.group, &self.settings.identity)
    }

    /// Renews until the Lease could not be renewed within the renew deadline: then it asks the
    /// process to stop (`shutdown`) and returns. On shutdown it stops starting work and goes on
    /// renewing (so the connections stay put) until dropped, then call [`Membership::leave`].
    pub async fn run(&self, shutdown: watch::Sender<bool>) {
        let (ack_tx, ack_rx) = watch::channel(String::new());
        let (reader, writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let selector = format!("{GROUP_LABEL}={}", self.settings.group);
        let watch_leases = {
            let changed = changed.clone();
            reflector::reflector(
                writer,
                watcher(self.api.clone(), watcher::Config::default().labels(&selector)),
            )
            .default_backoff()
            .for_each(move |_| {
                changed.notify_one();
                async {}
            })
        };
        let mut stop = shutdown.subscribe();
        let stopping = async {
            let _ = stop.wait_for(|s| *s).await;
            info!("shutting down: this replica starts no more work and leaves the shard group when done");
            self.shards.stop();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = self.keep(ack_rx, &shutdown) => {}
            () = self.coordinate(reader, &changed, &ack_tx) => {}
            () = watch_leases => {}
            () = stopping => {}
        }
    }

    /// Leaves the group: starts nothing more, waits for the running passes, stops the syncs and
    /// deletes the Lease, so the others take over at once instead of after the lease duration.
    pub async fn leave(&self) {
        self.shards.stop();
        self.shards.drained().await;
        self.sync.shutdown().await;
        self.metrics.set_leader(false);
        self.metrics.set_shard(&self.settings.group, false, 0, 0, 0);
        let name = self.name();
        match bounded(self.timing().call_timeout(), self.api.delete(&name, &DeleteParams::default())).await {
            Ok(_) => info!(lease = %name, "left the shard group"),
            Err(LeaseError::Kube(kube::Error::Api(e))) if e.code == 404 => {}
            Err(err) => {
                warn!(lease = %name, error = %err, "could not delete the shard Lease; the others take over once it expires")
            }
        }
        self.validity.set(Instant::now());
    }

    /// Writes this replica's Lease: renewed now, with the acknowledged view and the address.
    async fn renew(&self, view: &str, limit: Duration) -> Result<(), LeaseError> {
        let name = self.name();
        let owner = self.settings.pod_uid.as_ref().map(|uid| OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.settings.identity.clone(),
            uid: uid.clone(),
            ..OwnerReference::default()
        });
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(BTreeMap::from([(GROUP_LABEL.to_string(), self.settings.group.clone())])),
                annotations: Some(BTreeMap::from([
                    (VIEW_ANNOTATION.to_string(), view.to_string()),
                    (ADDRESS_ANNOTATION.to_string(), self.settings.address.clone()),
                ])),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(self.timing().duration_seconds()),
                acquire_time: Some(MicroTime(self.acquired)),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        bounded(limit, self.api.patch(&name, &params, &Patch::Apply(&lease))).await?;
        Ok(())
    }

    /// The keeper: renews the Lease; returns (after asking the process to stop) once it could
    /// not renew within the renew deadline.
    async fn keep(&self, mut ack: watch::Receiver<String>, shutdown: &watch::Sender<bool>) {
        let timing = self.timing();
        let mut last_renewal: Option<Instant> = None;
        loop {
            let limit = match last_renewal {
                None => self.renew_period(),
                Some(at) => match timing.renew_deadline().checked_sub(at.elapsed()) {
                    Some(left) => self.renew_period().min(left),
                    None => {
                        warn!("the shard Lease was not renewed within its renew deadline; stopping all work");
                        self.validity.set(Instant::now());
                        self.metrics.set_leader(false);
                        self.metrics.set_shard(&self.settings.group, false, 0, 0, 0);
                        let _ = shutdown.send(true);
                        return;
                    }
                },
            };
            let view = ack.borrow_and_update().clone();
            let started = Instant::now();
            let mut wait = self.renew_period();
            match self.renew(&view, limit).await {
                Ok(()) => {
                    if last_renewal.is_none() {
                        info!(identity = %self.settings.identity, lease = %self.name(), "joined the shard group");
                    }
                    // Measured from before the call: the Lease was valid from at most then.
                    last_renewal = Some(started);
                    self.validity.set(started + timing.renew_deadline());
                }
                Err(err) => {
                    warn!(error = %err, "could not renew the shard Lease; trying again");
                    wait = Duration::from_millis(100);
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = ack.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    /// The coordinator: re-evaluates the members at every Lease change and every retry period
    /// (Leases expire without an event).
    async fn coordinate(&self, reader: Store<Lease>, changed: &Notify, ack: &watch::Sender<String>) {
        let mut tick = tokio::time::interval(self.timing().retry_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = changed.notified() => {}
            }
            if !self.validity.is_valid() || !self.connections.is_ready() {
                // Not joined yet (or lapsed: the keeper stops the process), or the connections
                // are not all known yet (what is gained is read from them).
                continue;
            }
            self.evaluate(&reader, ack).await;
        }
    }

    async fn evaluate(&self, reader: &Store<Lease>, ack: &watch::Sender<String>) {
        let me = self.settings.identity.as_str();
        let members = live_members(me, &reader.state(), Timestamp::now());
        self.shards.set_addresses(members.addresses);
        let view = members.ring.view();
        if self.shards.view().as_deref() != Some(view.as_str()) {
            self.hand_over(members.ring.clone(), ack).await;
        } else if !self.shards.settled()
            && *ack.borrow() == view
            && all_acknowledged(me, &members.ring, &members.acks)
        {
            self.start_gained(&view);
        }
        let refs = self.connections.refs();
        let working = refs.iter().filter(|r| self.shards.may_work(&key_of(r))).count();
        let pending =
            refs.iter().filter(|r| self.shards.owns(&key_of(r)) && !self.shards.may_work(&key_of(r))).count();
        self.metrics.set_leader(true);
        self.metrics.set_shard(&self.settings.group, true, members.ring.members().len(), working, pending);
    }

    /// A new view: stop what is lost, wait for its running passes, then acknowledge.
    async fn hand_over(&self, ring: Ring, ack: &watch::Sender<String>) {
        let view = ring.view();
        let refs = self.connections.refs();
        let before: Vec<&ObjectRef<CarerixConnection>> =
            refs.iter().filter(|r| self.shards.may_work(&key_of(r))).collect();
        info!(view = %view, members = ?ring.members(), "the shard members changed; handing over");
        self.shards.enter(ring);
        self.stop_lost_syncs();
        self.shards.drained().await;
        // A pass that was running may have (re)started a sync before it ended.
        self.stop_lost_syncs();
        let mut lost = 0;
        for r in before.into_iter().filter(|r| !self.shards.may_work(&key_of(r))) {
            // Its series are the new owner's to export now.
            self.metrics.forget_connection(r.namespace.as_deref().unwrap_or_default(), &r.name);
            // A pass that finds it gone from this replica's share drops its Carerix client.
            let _ = self.reconcile.unbounded_send(r.clone());
            lost += 1;
        }
        ack.send_replace(view.clone());
        info!(view = %view, lost, "stopped what this replica no longer owns; acknowledged the view");
    }

    fn stop_lost_syncs(&self) {
        for key in self.sync.running_keys() {
            if !self.shards.may_work(&key) {
                debug!(connection = %key, "stopping the sync of a connection handed over");
                self.sync.stop_key(&key);
            }
        }
    }

    /// Every member acknowledged the view: start the gained connections.
    fn start_gained(&self, view: &str) {
        let refs = self.connections.refs();
        let before: HashSet<String> = refs.iter().map(key_of).filter(|k| self.shards.may_work(k)).collect();
        self.shards.settle();
        let mut gained = 0;
        for r in refs {
            let key = key_of(&r);
            if !before.contains(&key) && self.shards.may_work(&key) {
                let _ = self.reconcile.unbounded_send(r);
                gained += 1;
            }
        }
        info!(view = %view, gained, kept = before.len(), "every member acknowledged the view; starting the gained connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp, view: Option<&str>, address: Option<&str>) -> Arc<Lease> {
        let mut annotations = BTreeMap::new();
        if let Some(v) = view {
            annotations.insert(VIEW_ANNOTATION.to_string(), v.to_string());
        }
        if let Some(a) = address {
            annotations.insert(ADDRESS_ANNOTATION.to_string(), a.to_string());
        }
        Arc::new(Lease {
            metadata: ObjectMeta { annotations: Some(annotations), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(4),
                ..LeaseSpec::default()
            }),
        })
    }

    #[test]
    fn live_members_are_this_replica_and_the_leases_renewed_within_their_duration() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let fresh: Timestamp = "2026-01-01T00:00:58Z".parse().expect("time");
        let stale: Timestamp = "2026-01-01T00:00:50Z".parse().expect("time");
        let leases = vec![
            lease("b", fresh, Some("v1"), Some("10.0.0.2:8080")),
            lease("c", stale, Some("v1"), Some("10.0.0.3:8080")),
            lease("a", stale, None, None),
        ];
        let m = live_members("a", &leases, now);
        assert_eq!(m.ring.members(), ["a", "b"]);
        assert_eq!(m.addresses, HashMap::from([("b".to_string(), "10.0.0.2:8080".to_string())]));
        assert_eq!(m.acks.get("c"), None, "an expired member's acknowledgement does not count");
    }

    #[test]
    fn a_view_is_settled_only_when_every_other_live_member_acknowledged_it() {
        let ring = Ring::new(["a", "b", "c"]);
        let v = ring.view();
        let mut acks = HashMap::from([("b".to_string(), v.clone())]);
        assert!(!all_acknowledged("a", &ring, &acks), "c has not");
        acks.insert("c".into(), "an-older-view".into());
        assert!(!all_acknowledged("a", &ring, &acks), "c acknowledged another view");
        acks.insert("c".into(), v);
        assert!(all_acknowledged("a", &ring, &acks));
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name("carerix-operator", "carerix-operator-5d8f-x2"),
            "carerix-operator-shard-carerix-operator-5d8f-x2"
        );
        assert_eq!(lease_name("g", "Host_Name:42"), "g-shard-host-name-42");
        assert!(lease_name("g", &"x".repeat(400)).len() <= 253);
    }
}
