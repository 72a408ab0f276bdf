//! The one in-memory copy of the CarerixConnections that a replica keeps.
//!
//! Every replica, leader, standby or shard member, runs one watch per scope (a namespace, or all)
//! and keeps its objects in a reflector store, with `managedFields` dropped (nothing reads them,
//! and one entry per field manager is most of a cached object). The receiver looks a delivery's
//! connection up there, the shard membership lists what it gains or loses there, and the
//! controllers read from the same store and take their triggers from the same watch
//! ([`Connections::subscribe`]): there is no second watch and no second copy of each object,
//! which was a third of a replica's memory per connection.
//!
//! A standby does not subscribe, so nothing is queued for a controller that is not running; a
//! controller that starts later receives every cached connection first, then the changes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{
    Future, Stream, StreamExt,
    channel::mpsc::{UnboundedSender, unbounded},
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::api::CarerixConnection;

/// One watched scope: its namespace (`None`: all namespaces), its store and the subscribers of
/// its changes.
#[derive(Clone)]
struct Scope {
    namespace: Option<String>,
    store: Store<CarerixConnection>,
    subscribers: Subscribers,
}

/// Who is told of each applied connection (the running controller of the scope, if any).
type Subscribers = Arc<Mutex<Vec<UnboundedSender<CarerixConnection>>>>;

/// The CarerixConnections this replica keeps in memory, one reflector store per watched scope.
#[derive(Clone, Default)]
pub struct Connections {
    scopes: Vec<Scope>,
    ready: Arc<AtomicBool>,
}

impl Connections {
    /// Reads from given stores (filled by their writers, for all namespaces); ready at once.
    pub fn from_stores(stores: Vec<Store<CarerixConnection>>) -> Self {
        let scopes = stores
            .into_iter()
            .map(|store| Scope { namespace: None, store, subscribers: Subscribers::default() })
            .collect();
        Connections { scopes, ready: Arc::new(AtomicBool::new(true)) }
    }

    /// Stores for `namespaces` (all when empty), and the future that fills them: run it for as
    /// long as the process serves (it retries with backoff when the API server is away).
    pub fn watch(
        client: &Client,
        namespaces: &[String],
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let scopes: Vec<Option<String>> =
            if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
        let ready = Arc::new(AtomicBool::new(false));
        let mut kept = Vec::new();
        let mut runs = Vec::new();
        for namespace in scopes {
            let api: Api<CarerixConnection> = match &namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            let (store, writer) = reflector::store();
            let subscribers = Subscribers::default();
            let tell = subscribers.clone();
            let events = watcher(api, watcher::Config::default().any_semantic())
                .default_backoff()
                .modify(|c: &mut CarerixConnection| c.managed_fields_mut().clear());
            runs.push(reflector::reflector(writer, events).for_each(move |event| {
                if let Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = event {
                    publish(&tell, obj);
                }
                futures::future::ready(())
            }));
            kept.push(Scope { namespace, store, subscribers });
        }
        let readiness = {
            let stores: Vec<_> = kept.iter().map(|s| s.store.clone()).collect();
            let ready = ready.clone();
            async move {
                for store in stores {
                    // NB: a store's readiness wakes only its most recent waiter, so poll it
                    // again now and then instead of awaiting once.
                    while tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
                        .await
                        .is_err()
                    {}
                }
                ready.store(true, Ordering::SeqCst);
            }
        };
        let run = async move {
            futures::join!(futures::future::join_all(runs), readiness);
        };
        (Connections { scopes: kept, ready }, run)
    }

    /// The connection `namespace/name`, if it exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CarerixConnection>> {
        let key = ObjectRef::new(name).within(namespace);
        self.scopes.iter().find_map(|s| s.store.get(&key))
    }

    /// Every connection in the cache.
    pub fn refs(&self) -> Vec<ObjectRef<CarerixConnection>> {
        self.scopes.iter().flat_map(|s| s.store.state()).map(|c| ObjectRef::from_obj(c.as_ref())).collect()
    }

    /// Whether every store has its first full list.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The watched scopes: each one's namespace (`None`: all) and store.
    pub fn scopes(&self) -> impl Iterator<Item = (Option<&str>, &Store<CarerixConnection>)> {
        self.scopes.iter().map(|s| (s.namespace.as_deref(), &s.store))
    }

    /// Every connection of scope `index` as cached now, then each one applied from now on
    /// (created or updated, status writes included), for as long as the stream is kept.
    /// Empty for a scope that does not exist.
    pub fn subscribe(
        &self,
        index: usize,
    ) -> impl Stream<Item = Result<CarerixConnection, watcher::Error>> + Send + use<> {
        let (tx, rx) = unbounded();
        let now: Vec<CarerixConnection> = match self.scopes.get(index) {
            Some(scope) => {
                // Subscribe first, then take the snapshot: a change in between comes twice,
                // never not at all (the controller's queue folds the two into one pass).
                lock(&scope.subscribers).push(tx);
                scope.store.state().iter().map(|c| c.as_ref().clone()).collect()
            }
            None => Vec::new(),
        };
        futures::stream::iter(now).chain(rx).map(Ok)
    }
}

fn lock(subscribers: &Subscribers) -> std::sync::MutexGuard<'_, Vec<UnboundedSender<CarerixConnection>>> {
    subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands `obj` to every live subscriber and forgets those that went away.
fn publish(subscribers: &Subscribers, obj: CarerixConnection) {
    let mut subscribers = lock(subscribers);
    subscribers.retain(|tx| !tx.is_closed());
    if let Some((last, rest)) = subscribers.split_last() {
        for tx in rest {
            let _ = tx.unbounded_send(obj.clone());
        }
        let _ = last.unbounded_send(obj);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher};

    use super::{Connections, publish};
    use crate::api::CarerixConnection;

    fn connection(name: &str, generation: i64) -> CarerixConnection {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hiredata.io/v1alpha1",
            "kind": "CarerixConnection",
            "metadata": {"name": name, "namespace": "recruiting", "generation": generation},
            "spec": {"tenant": "acme", "credentialsSecretRef": {"name": "creds"}}
        }))
        .expect("a connection")
    }

    #[tokio::test]
    async fn a_controller_that_subscribes_late_gets_every_cached_connection_then_the_changes() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Apply(connection("acme", 1)));
        writer.apply_watcher_event(&watcher::Event::Apply(connection("globex", 1)));
        let connections = Connections::from_stores(vec![store]);
        let mut changes = connections.subscribe(0);
        let mut first: Vec<String> = Vec::new();
        for _ in 0..2 {
            let obj = changes.next().await.expect("an item").expect("no error");
            first.push(obj.metadata.name.expect("a name"));
        }
        first.sort();
        assert_eq!(first, ["acme", "globex"]);

        publish(&connections.scopes[0].subscribers, connection("acme", 2));
        let changed = changes.next().await.expect("an item").expect("no error");
        assert_eq!(changed.metadata.generation, Some(2));
    }

    #[tokio::test]
    async fn without_a_subscriber_nothing_is_queued_and_a_dropped_one_is_forgotten() {
        let (store, _writer) = reflector::store::<CarerixConnection>();
        let connections = Connections::from_stores(vec![store]);
        let subscribers = connections.scopes[0].subscribers.clone();
        publish(&subscribers, connection("acme", 1));
        assert!(super::lock(&subscribers).is_empty());
        drop(connections.subscribe(0));
        publish(&subscribers, connection("acme", 2));
        assert!(super::lock(&subscribers).is_empty(), "a stopped controller is not kept");
    }
}
