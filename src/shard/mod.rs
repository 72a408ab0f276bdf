//! Active-active sharding: the replicas share the connections instead of one leader doing all.
//!
//! - Membership ([`membership`]): every replica holds a Lease of its own, labelled with the shard
//!   group and renewed like the leader's (bounded calls, a renew deadline shorter than the
//!   duration). Live members are the Leases renewed within their duration.
//! - Assignment ([`ring`]): a consistent hash ring with virtual nodes over the live members; a
//!   connection (`namespace/name`) belongs to one member. A join or a loss moves about `1/N`.
//! - Hand-over: when the members change, each replica first stops working on what it no longer
//!   owns (its syncs stop, its running reconciles finish, new ones return at once), then
//!   publishes the view it has acknowledged (a fingerprint of the member list) on its Lease.
//!   It starts on what it gained only once every live member has acknowledged the same view;
//!   a member whose Lease expired has stopped by then on its own (it stops at its renew
//!   deadline). What a replica keeps goes on without a pause.
//! - The reconciler asks [`Shards::begin`] before a pass; the receiver asks [`Shards::route`]
//!   and forwards a verified delivery to the owner's receiver (the address on its Lease).
//!
//! The details and the costs are in docs/sharding.md.

pub mod membership;
pub mod ring;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use self::ring::{Ring, key_hash};
use crate::lease::Validity;

/// Label of the shard Leases: its value is the shard group (`--shard-group`).
pub const GROUP_LABEL: &str = "carerix.hiredata.io/shard-group";

/// Annotation of a shard Lease: the view (member list fingerprint) its holder has acknowledged.
pub const VIEW_ANNOTATION: &str = "carerix.hiredata.io/shard-view";

/// Annotation of a shard Lease: `host:port` of its holder's receiver, where other replicas
/// forward deliveries for the connections it owns.
pub const ADDRESS_ANNOTATION: &str = "carerix.hiredata.io/receiver-address";

/// Header a replica adds when it forwards a delivery: the receiving replica serves it or
/// answers 503, and never forwards it again.
pub const FORWARDED_HEADER: &str = "x-carerix-operator-forwarded-by";

/// Rings kept since the last view all members acknowledged; past this (members changing faster
/// than they acknowledge) the replica stops everything it works on and waits for a settled view.
const MAX_UNSETTLED_VIEWS: usize = 16;

/// Where a delivery for a connection is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Here: this replica works on the connection (or sharding is off).
    Local,
    /// At the owner's receiver, `host:port`.
    Forward(String),
    /// Nowhere right now: the connection is being handed over, or this replica is not a member.
    Unavailable,
}

/// This replica's share of the connections, as the reconciler and the receiver see it.
/// Cloning shares it. [`Shards::unsharded`] owns everything.
#[derive(Clone, Default)]
pub struct Shards {
    state: Option<Arc<State>>,
}

struct State {
    identity: String,
    validity: Validity,
    assignment: Mutex<Assignment>,
    idle: tokio::sync::Notify,
}

struct Assignment {
    /// The ring of the last view every member acknowledged, then the views seen since, the
    /// current one last. A connection may be worked on only if every ring gives it to this
    /// replica: what it owned and still owns carries on, what it gained waits for the
    /// acknowledgements (the chain then shrinks to the current ring).
    chain: Vec<Ring>,
    /// Receiver addresses of the other live members.
    addresses: HashMap<String, String>,
    /// Reconcile passes running, per connection.
    in_flight: HashMap<String, usize>,
    /// Leaving: nothing starts any more.
    stopping: bool,
}

impl Assignment {
    fn current(&self) -> Option<&Ring> {
        self.chain.last()
    }

    fn may_work(&self, me: &str, key: &str) -> bool {
        if self.stopping {
            return false;
        }
        let hash = key_hash(key);
        !self.chain.is_empty() && self.chain.iter().all(|r| r.owner_of_hash(hash) == Some(me))
    }
}

/// A running reconcile pass of a connection this replica works on; a hand-over waits for it.
#[must_use = "the pass counts as running only while the guard lives"]
pub struct Work {
    state: Option<Arc<State>>,
    key: String,
}

impl Drop for Work {
    fn drop(&mut self) {
        let Some(state) = &self.state else { return };
        {
            let mut a = state.lock();
            if let Some(n) = a.in_flight.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    a.in_flight.remove(&self.key);
                }
            }
        }
        state.idle.notify_waiters();
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shards {
    /// No sharding: this replica owns every connection.
    pub fn unsharded() -> Self {
        Shards { state: None }
    }

    /// A member `identity` that works only while `validity` holds (its own Lease is renewed),
    /// owning nothing until its first view is acknowledged by every member.
    pub fn member(identity: &str, validity: Validity) -> Self {
        Shards {
            state: Some(Arc::new(State {
                identity: identity.to_string(),
                validity,
                assignment: Mutex::new(Assignment {
                    chain: vec![Ring::new(Vec::<String>::new())],
                    addresses: HashMap::new(),
                    in_flight: HashMap::new(),
                    stopping: false,
                }),
                idle: tokio::sync::Notify::new(),
            })),
        }
    }

    /// Whether sharding is on.
    pub fn is_sharded(&self) -> bool {
        self.state.is_some()
    }

    /// Whether this replica may work on connection `key` (`namespace/name`) now.
    pub fn may_work(&self, key: &str) -> bool {
        match &self.state {
            None => true,
            Some(s) => s.validity.is_valid() && s.lock().may_work(&s.identity, key),
        }
    }

    /// Starts a reconcile pass of `key`; `None` when this replica does not work on it (another
    /// replica owns it, or it is being handed over): the pass must then do nothing at all.
    pub fn begin(&self, key: &str) -> Option<Work> {
        let Some(state) = &self.state else {
            return Some(Work { state: None, key: String::new() });
        };
        if !state.validity.is_valid() {
            return None;
        }
        let mut a = state.lock();
        if !a.may_work(&state.identity, key) {
            return None;
        }
        *a.in_flight.entry(key.to_string()).or_insert(0) += 1;
        Some(Work { state: Some(state.clone()), key: key.to_string() })
    }

    /// Where a delivery for `key` is served.
    pub fn route(&self, key: &str) -> Route {
        let Some(state) = &self.state else { return Route::Local };
        if !state.validity.is_valid() {
            return Route::Unavailable;
        }
        let a = state.lock();
        if a.may_work(&state.identity, key) {
            return Route::Local;
        }
        if a.stopping {
            return Route::Unavailable;
        }
        match a.current().and_then(|r| r.owner(key)) {
            Some(owner) if owner != state.identity => {
                a.addresses.get(owner).map_or(Route::Unavailable, |addr| Route::Forward(addr.clone()))
            }
            _ => Route::Unavailable,
        }
    }

    /// The view being worked towards (fingerprint of the current member list).
    pub fn view(&self) -> Option<String> {
        let state = self.state.as_ref()?;
        state.lock().current().map(Ring::view)
    }

    /// Whether every member has acknowledged the current view (nothing is waiting to start).
    pub fn settled(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.lock().chain.len() == 1)
    }

    /// Whether connection `key` belongs to this replica in the current view (worked on or about
    /// to be).
    pub fn owns(&self, key: &str) -> bool {
        match &self.state {
            None => true,
            Some(s) => s.lock().current().and_then(|r| r.owner(key)) == Some(s.identity.as_str()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&State, &mut Assignment) -> T) -> Option<T> {
        let state = self.state.as_ref()?;
        let mut a = state.lock();
        Some(f(state, &mut a))
    }

    /// Moves to a new view: what the new ring does not give to this replica stops at once
    /// (new passes return; call [`Shards::drained`] for the running ones), what it gains waits
    /// for [`Shards::settle`].
    pub(crate) fn enter(&self, ring: Ring) {
        self.with(|_, a| {
            if a.current() == Some(&ring) {
                return;
            }
            if a.chain.len() >= MAX_UNSETTLED_VIEWS {
                tracing::warn!(
                    "the shard members keep changing before they all acknowledge; pausing all work"
                );
                a.chain = vec![Ring::new(Vec::<String>::new())];
            }
            a.chain.push(ring);
        });
    }

    /// Every member acknowledged the current view: this replica works on all it owns in it.
    pub(crate) fn settle(&self) {
        self.with(|_, a| {
            if let Some(current) = a.chain.pop() {
                a.chain = vec![current];
            }
        });
    }

    /// Stops everything (leaving): nothing starts any more.
    pub(crate) fn stop(&self) {
        self.with(|_, a| a.stopping = true);
    }

    /// Sets the receiver addresses of the other members.
    pub(crate) fn set_addresses(&self, addresses: HashMap<String, String>) {
        self.with(|_, a| a.addresses = addresses);
    }

    /// Connections with a reconcile pass running that this replica may no longer work on.
    fn busy_elsewhere(&self) -> Vec<String> {
        self.with(|s, a| {
            a.in_flight.keys().filter(|k| !a.may_work(&s.identity, k)).cloned().collect::<Vec<_>>()
        })
        .unwrap_or_default()
    }

    /// Waits until no reconcile pass runs for a connection this replica may no longer work on.
    pub async fn drained(&self) {
        let Some(state) = &self.state else { return };
        loop {
            let notified = state.idle.notified();
            let busy = self.busy_elsewhere();
            if busy.is_empty() {
                return;
            }
            tracing::debug!(
                passes = busy.len(),
                "waiting for the reconciles of handed-over connections to end"
            );
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Validity {
        let v = Validity::elected();
        v.set(tokio::time::Instant::now() + Duration::from_secs(3600));
        v
    }

    fn keys() -> Vec<String> {
        (0..300).map(|i| format!("ns-{}/c-{i}", i % 5)).collect()
    }

    #[test]
    fn without_sharding_this_replica_works_on_everything() {
        let s = Shards::unsharded();
        assert!(s.begin("a/b").is_some());
        assert_eq!(s.route("a/b"), Route::Local);
        assert!(s.settled() && s.owns("a/b"));
    }

    #[test]
    fn a_new_member_works_on_nothing_until_every_member_acknowledged_its_first_view() {
        let s = Shards::member("a", valid());
        assert!(keys().iter().all(|k| s.begin(k).is_none()));
        s.enter(Ring::new(["a", "b"]));
        assert!(keys().iter().all(|k| s.begin(k).is_none()), "gained connections wait for the barrier");
        assert!(keys().iter().any(|k| s.owns(k)));
        s.settle();
        let mine = keys().iter().filter(|k| s.begin(k).is_some()).count();
        assert!((100..200).contains(&mine), "{mine} of 300");
    }

    #[test]
    fn kept_connections_go_on_lost_ones_stop_at_once_and_gained_ones_wait() {
        let s = Shards::member("a", valid());
        s.enter(Ring::new(["a", "b", "c"]));
        s.settle();
        let before: Vec<String> = keys().into_iter().filter(|k| s.may_work(k)).collect();
        // c leaves (a gains some of c's), d joins (a loses some to d).
        let next = Ring::new(["a", "b", "d"]);
        s.enter(next.clone());
        for k in keys() {
            let now = s.may_work(&k);
            let kept = before.contains(&k) && next.owner(&k) == Some("a");
            assert_eq!(now, kept, "{k}: only kept connections may run before the barrier");
        }
        assert!(keys().iter().any(|k| !before.contains(k) && next.owner(k) == Some("a")), "a gains some");
        s.settle();
        for k in keys() {
            assert_eq!(s.may_work(&k), next.owner(&k) == Some("a"), "{k}");
        }
    }

    #[test]
    fn a_connection_given_away_and_back_before_the_barrier_does_not_restart_without_it() {
        let s = Shards::member("a", valid());
        s.enter(Ring::new(["a"]));
        s.settle();
        let all = keys();
        assert!(all.iter().all(|k| s.may_work(k)));
        // b joins and takes some; before everyone acknowledged, b is gone again.
        let with_b = Ring::new(["a", "b"]);
        s.enter(with_b.clone());
        s.enter(Ring::new(["a"]));
        let given: Vec<&String> = all.iter().filter(|k| with_b.owner(k) == Some("b")).collect();
        assert!(!given.is_empty());
        assert!(given.iter().all(|k| !s.may_work(k)), "b may have started them: wait for the barrier");
        s.settle();
        assert!(all.iter().all(|k| s.may_work(k)));
    }

    #[test]
    fn the_receiver_forwards_to_the_owner_serves_its_own_and_refuses_during_hand_over() {
        let s = Shards::member("a", valid());
        let ring = Ring::new(["a", "b"]);
        s.enter(ring.clone());
        s.set_addresses(HashMap::from([("b".to_string(), "10.0.0.2:8080".to_string())]));
        let all = keys();
        let ours = all.iter().find(|k| ring.owner(k) == Some("a")).expect("a owns one");
        let theirs = all.iter().find(|k| ring.owner(k) == Some("b")).expect("b owns one");
        assert_eq!(s.route(ours), Route::Unavailable, "gained but not yet started");
        assert_eq!(s.route(theirs), Route::Forward("10.0.0.2:8080".into()));
        s.settle();
        assert_eq!(s.route(ours), Route::Local);
        s.set_addresses(HashMap::new());
        assert_eq!(s.route(theirs), Route::Unavailable, "no address published: 503, Carerix retries");
    }

    #[test]
    fn a_member_whose_lease_lapsed_works_on_nothing_and_serves_nothing() {
        let v = valid();
        let s = Shards::member("a", v.clone());
        s.enter(Ring::new(["a"]));
        s.settle();
        assert!(s.begin("x/y").is_some());
        v.set(tokio::time::Instant::now());
        assert!(s.begin("x/y").is_none());
        assert_eq!(s.route("x/y"), Route::Unavailable);
    }

    #[tokio::test]
    async fn a_hand_over_waits_for_the_running_pass_of_a_lost_connection() {
        let s = Shards::member("a", valid());
        s.enter(Ring::new(["a"]));
        s.settle();
        let next = Ring::new(["a", "b"]);
        let lost = keys().into_iter().find(|k| next.owner(k) == Some("b")).expect("b takes one");
        let kept = keys().into_iter().find(|k| next.owner(k) == Some("a")).expect("a keeps one");
        let running = s.begin(&lost).expect("a works on it");
        let _other = s.begin(&kept).expect("a works on it");
        s.enter(next);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the lost connection's pass still runs");
        drop(running);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("drained once the pass ended, whatever the kept ones do")
            .expect("no panic");
    }

    #[test]
    fn a_leaving_member_starts_nothing() {
        let s = Shards::member("a", valid());
        s.enter(Ring::new(["a"]));
        s.settle();
        s.stop();
        assert!(s.begin("x/y").is_none());
        assert_eq!(s.route("x/y"), Route::Unavailable);
    }
}
