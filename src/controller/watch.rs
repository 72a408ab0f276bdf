//! What makes the controller reconcile a connection: a change a person made, never the
//! operator's own status writes.
//!
//! Every status write (progress during an initial sync, a condition's message) is an update of
//! the object; a controller that reconciled on each of them would answer its own writes with a
//! pass, which writes again: a reconcile storm, each pass calling Carerix. As Flux does, a
//! connection is reconciled when its `metadata.generation` changes (the spec), when the
//! [`RECONCILE_REQUESTED_AT`] annotation changes (`kubectl carerix reconcile`), when it is marked
//! for deletion, and when its finalizers or labels change (the finalizer step waits on its own
//! patch). Requeues the reconciler asks for, Secret changes and the sync's and receiver's requests
//! (`reconcile_on`) arrive on their own paths and are not filtered.
//!
//! The connections come from the replica's one cache ([`Connections`]), which sees every update
//! (it is filled before the filter), so the Secret mapper and the reconciler always read the
//! latest object, status included.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::Stream;
use kube::{
    ResourceExt,
    runtime::{PredicateConfig, WatchStreamExt, watcher},
};

use crate::{
    api::{CarerixConnection, RECONCILE_REQUESTED_AT},
    cache::Connections,
};

/// The part of a connection whose change asks for a reconcile, hashed.
pub fn what_matters(obj: &CarerixConnection) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    obj.annotations().get(RECONCILE_REQUESTED_AT).hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.finalizers().hash(&mut h);
    obj.labels().hash(&mut h);
    Some(h.finish())
}

/// The changes of scope `index` of `connections` that ask for a reconcile ([`what_matters`]),
/// beginning with every connection cached now, for `Controller::for_stream`.
pub fn connection_changes(
    connections: &Connections,
    index: usize,
) -> impl Stream<Item = Result<CarerixConnection, watcher::Error>> + Send + use<> {
    connections.subscribe(index).predicate_filter(what_matters, PredicateConfig::default())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::what_matters;
    use crate::api::{CarerixConnection, CarerixConnectionStatus, RECONCILE_REQUESTED_AT};

    fn connection() -> CarerixConnection {
        let mut obj: CarerixConnection = serde_json::from_value(serde_json::json!({
            "apiVersion": "hiredata.io/v1alpha1",
            "kind": "CarerixConnection",
            "metadata": {"name": "acme", "namespace": "recruiting", "generation": 3, "resourceVersion": "10"},
            "spec": {"tenant": "acme", "credentialsSecretRef": {"name": "creds"}}
        }))
        .expect("a connection");
        obj.metadata.finalizers = Some(vec![crate::api::FINALIZER.into()]);
        obj
    }

    #[test]
    fn the_operators_own_status_writes_do_not_ask_for_a_reconcile() {
        let before = connection();
        let mut after = before.clone();
        after.metadata.resource_version = Some("11".into());
        after.status = Some(CarerixConnectionStatus { observed_generation: Some(3), ..Default::default() });
        assert_eq!(what_matters(&before), what_matters(&after));
    }

    #[test]
    fn a_spec_change_a_reconcile_request_a_deletion_or_a_finalizer_change_asks_for_one() {
        let before = connection();
        let mut spec = before.clone();
        spec.metadata.generation = Some(4);
        let mut requested = before.clone();
        requested.metadata.annotations =
            Some(BTreeMap::from([(RECONCILE_REQUESTED_AT.to_string(), "2026-12-01T22:00:00Z".to_string())]));
        let mut deleting = before.clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let mut finalizers = before.clone();
        finalizers.metadata.finalizers = None;
        for changed in [spec, requested, deleting, finalizers] {
            assert_ne!(what_matters(&before), what_matters(&changed), "{:?}", changed.metadata);
        }
    }

    #[test]
    fn another_annotation_does_not_ask_for_a_reconcile() {
        let before = connection();
        let mut after = before.clone();
        after.metadata.annotations =
            Some(BTreeMap::from([("kubectl.kubernetes.io/last-applied-configuration".into(), "{}".into())]));
        assert_eq!(what_matters(&before), what_matters(&after));
    }
}
