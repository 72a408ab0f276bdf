//! The data sync into PostgreSQL (DESIGN §4), and the per-connection state the webhook receiver
//! uses.
//!
//! [`SyncManager`] runs one background task per connection that has `spec.sync` (key
//! `namespace/name`). The task is an [`engine::Engine`]: migrations, an initial pass over every
//! entity, a full comparison of ids, then incremental passes on `spec.sync.interval` and
//! comparisons on `fullCompareInterval`. The reconciler reads its progress through
//! [`SyncReport`]. How the sync stays correct (keyset pagination, daylight saving, deletes) is in
//! [`keyset`] and `docs/sync.md`.
//!
//! The Kubernetes part is thin: [`SyncManager::ensure`] reads the sink URL from the Secret and
//! hands everything else to [`SyncManager::start`], which tests call directly.

pub mod batcher;
pub mod engine;
pub mod keyset;
pub mod store;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt, runtime::reflector::ObjectRef};
use rsa::pkcs1v15::VerifyingKey;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tracing::{info, instrument};

use crate::{
    api::{CarerixConnection, EntitySyncStatus, SyncStatus},
    carerix::{CarerixClient, Entity},
    conditions::{Part, reasons},
    metrics::Metrics,
};

pub use engine::{Engine, Target};
pub use store::Schema;

/// Errors of the sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sink could not be reached.
    #[error("failed to connect to PostgreSQL")]
    Connect(#[source] std::io::Error),
    /// A PostgreSQL statement failed.
    #[error("PostgreSQL failed: {0}")]
    Sink(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// Carerix failed.
    #[error("Carerix request failed: {0}")]
    Carerix(#[from] crate::carerix::Error),
    /// The sink URL in the Secret does not parse (the URL itself is never shown: it holds a password).
    #[error("the PostgreSQL connection URL in the Secret is not valid")]
    InvalidSinkUrl,
    /// The schema is not a plain lowercase identifier.
    #[error("schema {0:?} is not a lowercase PostgreSQL identifier")]
    InvalidSchema(String),
    /// Carerix returned a record without `_id` or with an unreadable `modificationDate`.
    #[error("Carerix returned a {0} record without a readable _id or modificationDate")]
    InvalidRecord(&'static str),
    /// The Secret with the sink URL is missing or incomplete.
    #[error("{0}")]
    Secret(String),
    /// `spec.sync.fields` names a field the Carerix type does not have.
    #[error("spec.sync.fields: {0}")]
    InvalidFields(String),
    /// Carerix kept answering without moving a pass or listing forward (the progress guard).
    #[error("Carerix answers for {0} did not advance the sync; stopped the pass to avoid a loop")]
    NoProgress(&'static str),
    /// A task reading one key range panicked or was cancelled.
    #[error("a sync task ended unexpectedly: {0}")]
    Task(String),
    /// A comparison would have marked a suspicious share of rows deleted at once.
    #[error(
        "the comparison of {entity} found {count} of {live} live rows missing from Carerix, more than 5 % at once; \
         no row was marked deleted. Check Carerix (a partial answer or a permission change looks like this); \
         if the records really were deleted, mark them in the sink yourself"
    )]
    DeletesHeld {
        /// The entity.
        entity: &'static str,
        /// Rows that would have been marked.
        count: usize,
        /// Live rows.
        live: usize,
    },
}

impl Error {
    /// The `DataSynced` reason this failure reports.
    pub fn condition_reason(&self) -> &'static str {
        match self {
            Error::Connect(_) | Error::Sink(_) | Error::Pool(_) => reasons::SINK_UNAVAILABLE,
            Error::Carerix(c) if c.is_retryable() => reasons::CARERIX_UNAVAILABLE,
            Error::InvalidFields(_) => reasons::INVALID_SPEC,
            _ => reasons::SYNC_FAILED,
        }
    }

    /// How long Carerix asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Carerix(c) => c.retry_after(),
            _ => None,
        }
    }
}

/// What the reconciler needs from the sync.
#[async_trait::async_trait]
pub trait SyncReport: Send + Sync {
    /// Starts, updates or stops the sync of `obj` to match its spec. Never blocks on the sync itself.
    async fn ensure(&self, obj: &CarerixConnection, cx: &CarerixClient, public_key: Option<String>);
    /// Stops the sync of `obj` (it is being deleted).
    async fn stop(&self, obj: &CarerixConnection);
    /// The `DataSynced` condition (only asked when `spec.sync` is set).
    fn condition(&self, obj: &CarerixConnection) -> Part;
    /// `status.sync`.
    fn status(&self, obj: &CarerixConnection) -> Option<SyncStatus>;
    /// True while the initial pass runs (the reconciler then refreshes status more often).
    fn in_progress(&self, obj: &CarerixConnection) -> bool;
}

/// What the receiver needs of a connection.
pub struct Registration {
    /// Client, sink, schema and connection key.
    pub target: Target,
    /// The entities this connection syncs.
    pub entities: Vec<Entity>,
    /// The webhook application's public key; `None` until the reconciler knows it.
    pub verifying_key: Option<VerifyingKey<Sha256>>,
    /// Coalesces the fetches of deliveries.
    pub batcher: batcher::Batcher,
}

/// The settings of one connection's sync.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Entities to sync.
    pub entities: Vec<Entity>,
    /// Incremental period.
    pub interval: Duration,
    /// Full comparison period.
    pub full_compare_interval: Duration,
}

struct Running {
    fingerprint: String,
    task: JoinHandle<()>,
    progress: Arc<engine::Progress>,
    public_key: Option<String>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Running>,
    registered: HashMap<String, Arc<Registration>>,
    setup_errors: HashMap<String, (&'static str, String)>,
    pools: HashMap<String, deadpool_postgres::Pool>,
}

/// Runs one background sync per connection that has `spec.sync`.
pub struct SyncManager {
    client: Client,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    trigger: Arc<Mutex<Option<UnboundedSender<ObjectRef<CarerixConnection>>>>>,
}

fn key_of(obj: &CarerixConnection) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

impl SyncManager {
    /// A manager with no syncs running.
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        SyncManager {
            client,
            metrics,
            inner: Mutex::new(Inner::default()),
            trigger: Arc::new(Mutex::new(None)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the sync asks for a reconcile of a connection: when its initial pass finishes and
    /// when it fails or recovers, so `Ready` flips promptly.
    pub fn set_reconcile_trigger(&self, tx: UnboundedSender<ObjectRef<CarerixConnection>>) {
        *self.trigger.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Stops every sync. Stopping is safe at any point: a page and its watermark commit together
    /// or not at all.
    pub async fn shutdown(&self) {
        let mut inner = self.lock();
        for (_, r) in inner.running.drain() {
            r.task.abort();
        }
        inner.registered.clear();
    }

    /// The receiver's view of a connection (`namespace/name`), if it syncs.
    pub fn registration(&self, key: &str) -> Option<Arc<Registration>> {
        self.lock().registered.get(key).cloned()
    }

    /// A receiver's view of a connection whose sync this process does not run (after a restart,
    /// before the first reconcile, or on a standby replica): the same sink, no sync task.
    ///
    /// # Errors
    /// When the sink Secret or schema is unusable.
    pub async fn receiver_registration(
        &self,
        obj: &CarerixConnection,
        cx: &CarerixClient,
        public_key: Option<&str>,
    ) -> Result<Registration, Error> {
        let Some(sync) = &obj.spec.sync else {
            return Err(Error::Secret("no sync configured".into()));
        };
        let url = self.sink_url(obj).await?;
        let schema = Schema::new(&sync.sink.postgres.schema)?;
        let target = Target::new(cx.clone(), self.pool_for(&url)?, schema, key_of(obj))
            .with_selections(selections(&sync.fields)?);
        Ok(Registration {
            target: target.clone(),
            entities: sync.entities.clone(),
            verifying_key: public_key.and_then(crate::signature::parse_public_key),
            batcher: batcher::Batcher::spawn(target),
        })
    }

    /// A pool for a sink URL, shared by the connections that use the same URL.
    ///
    /// # Errors
    /// [`Error::InvalidSinkUrl`].
    pub fn pool_for(&self, url: &str) -> Result<deadpool_postgres::Pool, Error> {
        let mut inner = self.lock();
        if let Some(p) = inner.pools.get(url) {
            return Ok(p.clone());
        }
        let p = store::pool(url)?;
        inner.pools.insert(url.to_string(), p.clone());
        Ok(p)
    }

    /// Starts (or restarts, when `fingerprint` changed) the sync of connection `key`; when it runs
    /// already with the same fingerprint, only the client and the public key are updated.
    pub fn start(&self, target: Target, settings: Settings, fingerprint: &str, public_key: Option<String>) {
        let key = target.connection.clone();
        let mut inner = self.lock();
        inner.setup_errors.remove(&key);
        if let Some(r) = inner.running.get_mut(&key)
            && r.fingerprint == fingerprint
            && !r.task.is_finished()
        {
            if let Some(reg) = inner.registered.get(&key) {
                let mut w = reg.target.client.write().unwrap_or_else(|p| p.into_inner());
                *w = target.client();
            }
            let same_key = inner.running.get(&key).is_some_and(|r| r.public_key == public_key);
            if !same_key && let Some(old) = inner.registered.get(&key).cloned() {
                let reg = Registration {
                    target: old.target.clone(),
                    entities: old.entities.clone(),
                    verifying_key: public_key.as_deref().and_then(crate::signature::parse_public_key),
                    batcher: old.batcher.clone(),
                };
                inner.registered.insert(key.clone(), Arc::new(reg));
                if let Some(r) = inner.running.get_mut(&key) {
                    r.public_key = public_key;
                }
            }
            return;
        }
        if let Some(old) = inner.running.remove(&key) {
            old.task.abort();
        }
        info!(connection = %key, "starting the data sync");
        let engine =
            Engine::new(target.clone(), settings.entities.clone()).with_metrics(self.metrics.clone());
        let progress = engine.progress();
        let trigger = self.trigger.clone();
        let obj_ref =
            key.split_once('/').map(|(ns, name)| ObjectRef::<CarerixConnection>::new(name).within(ns));
        let changed = move || {
            if let (Some(tx), Some(r)) =
                (trigger.lock().unwrap_or_else(|p| p.into_inner()).as_ref(), obj_ref.as_ref())
            {
                let _ = tx.unbounded_send(r.clone());
            }
        };
        let task = tokio::spawn(engine.run(settings.interval, settings.full_compare_interval, changed));
        let reg = Registration {
            target: target.clone(),
            entities: settings.entities,
            verifying_key: public_key.as_deref().and_then(crate::signature::parse_public_key),
            batcher: batcher::Batcher::spawn(target),
        };
        inner.registered.insert(key.clone(), Arc::new(reg));
        inner
            .running
            .insert(key, Running { fingerprint: fingerprint.to_string(), task, progress, public_key });
    }

    /// Stops the sync of connection `key`.
    pub fn stop_key(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(r) = inner.running.remove(key) {
            r.task.abort();
        }
        inner.registered.remove(key);
        inner.setup_errors.remove(key);
    }

    /// The connections (`namespace/name`) whose sync runs here.
    pub fn running_keys(&self) -> Vec<String> {
        self.lock().running.keys().cloned().collect()
    }

    /// The progress of connection `key`, if its sync runs.
    pub fn progress(&self, key: &str) -> Option<Arc<engine::Progress>> {
        self.lock().running.get(key).map(|r| r.progress.clone())
    }

    #[instrument(skip_all)]
    async fn sink_url(&self, obj: &CarerixConnection) -> Result<String, Error> {
        let Some(sync) = &obj.spec.sync else {
            return Err(Error::Secret("no sync configured".into()));
        };
        let sel = &sync.sink.postgres.connection_secret_ref;
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let secret = api.get_opt(&sel.name).await.map_err(|e| {
            Error::Secret(format!("could not read the Secret {:?} with the PostgreSQL URL: {e}", sel.name))
        })?;
        let Some(secret) = secret else {
            return Err(Error::Secret(format!(
                "the Secret {:?} with the PostgreSQL URL does not exist: create it with the key {:?}",
                sel.name, sel.key
            )));
        };
        let Some(url) = crate::connection::secret_value(&secret, &sel.key) else {
            return Err(Error::Secret(format!(
                "the Secret {:?} has no key {:?} with the PostgreSQL URL",
                sel.name, sel.key
            )));
        };
        Ok(url.trim().to_string())
    }

    fn set_setup_error(&self, key: &str, e: &Error) {
        let mut inner = self.lock();
        if let Some(r) = inner.running.remove(key) {
            r.task.abort();
        }
        inner.registered.remove(key);
        inner.setup_errors.insert(key.to_string(), (e.condition_reason(), e.to_string()));
    }
}

/// The selections of `spec.sync.fields`.
///
/// # Errors
/// [`Error::InvalidFields`] for an unknown entity or field.
pub fn selections(
    fields: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<HashMap<Entity, String>, Error> {
    let mut out = HashMap::new();
    for (name, names) in fields {
        let entity: Entity =
            name.parse().map_err(|e: crate::carerix::UnknownEntity| Error::InvalidFields(e.to_string()))?;
        let sel = entity.selection(names).map_err(|e| Error::InvalidFields(e.to_string()))?;
        out.insert(entity, sel);
    }
    Ok(out)
}

#[async_trait::async_trait]
impl SyncReport for SyncManager {
    async fn ensure(&self, obj: &CarerixConnection, cx: &CarerixClient, public_key: Option<String>) {
        let key = key_of(obj);
        let Some(sync) = obj.spec.sync.clone() else {
            self.stop_key(&key);
            return;
        };
        let url = match self.sink_url(obj).await {
            Ok(u) => u,
            Err(e) => return self.set_setup_error(&key, &e),
        };
        let (schema, pool) =
            match Schema::new(&sync.sink.postgres.schema).and_then(|s| Ok((s, self.pool_for(&url)?))) {
                Ok(v) => v,
                Err(e) => return self.set_setup_error(&key, &e),
            };
        let settings = Settings {
            entities: sync.entities.clone(),
            interval: sync.interval.into(),
            full_compare_interval: sync.full_compare_interval.into(),
        };
        let selections = match selections(&sync.fields) {
            Ok(s) => s,
            Err(e) => return self.set_setup_error(&key, &e),
        };
        let fingerprint = format!(
            "{settings:?}|{:?}|{}|{:x}",
            sync.fields,
            schema.name(),
            Sha256::digest(format!("{url}|{}|{}", obj.spec.tenant, obj.spec.api_url()).as_bytes())
        );
        let owner = format!("{}/{}", obj.metadata.uid.clone().unwrap_or_default(), obj.spec.tenant);
        let target = Target::new(cx.clone(), pool, schema, key).with_owner(owner).with_selections(selections);
        self.start(target, settings, &fingerprint, public_key);
    }

    async fn stop(&self, obj: &CarerixConnection) {
        let key = key_of(obj);
        self.stop_key(&key);
        let Some(sync) = &obj.spec.sync else { return };
        // only when the connection is being deleted (suspending stops the sync too)
        if sync.sink.on_delete != crate::api::OnDelete::Drop || obj.metadata.deletion_timestamp.is_none() {
            return;
        }
        let dropped = async {
            let url = self.sink_url(obj).await?;
            let schema = Schema::new(&sync.sink.postgres.schema)?;
            store::drop_connection(&self.pool_for(&url)?, &schema, &key).await
        }
        .await;
        match dropped {
            Ok(()) => info!(connection = %key, "dropped the synced rows (sink.onDelete: Drop)"),
            Err(e) => {
                tracing::warn!(connection = %key, error = %e, "could not drop the synced rows (sink.onDelete: Drop)")
            }
        }
    }

    fn condition(&self, obj: &CarerixConnection) -> Part {
        let key = key_of(obj);
        let inner = self.lock();
        if let Some((reason, message)) = inner.setup_errors.get(&key) {
            return Part::failed(reason, message.clone());
        }
        let Some(r) = inner.running.get(&key) else {
            return Part::unknown(reasons::INITIAL_SYNC_IN_PROGRESS, "the data sync has not started");
        };
        let p = r.progress.snapshot();
        if let Some(f) = &p.failure {
            return Part::failed(f.reason, f.message.clone());
        }
        if !r.progress.initial_done() {
            let counts = p
                .entities
                .iter()
                .map(|(e, s)| {
                    format!(
                        "{} {}{}",
                        e.name(),
                        s.records,
                        if s.phase == engine::Phase::Initial { "" } else { " (done)" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Part::failed(
                reasons::INITIAL_SYNC_IN_PROGRESS,
                format!("the initial data sync is in progress: {counts}"),
            );
        }
        Part::ok(reasons::SYNCED, format!("{} entities are synced to PostgreSQL", p.entities.len()))
    }

    fn status(&self, obj: &CarerixConnection) -> Option<SyncStatus> {
        let progress = self.progress(&key_of(obj))?;
        let p = progress.snapshot();
        let entities: Vec<EntitySyncStatus> = p
            .entities
            .iter()
            .map(|(e, s)| EntitySyncStatus {
                entity: e.name().to_string(),
                phase: match s.phase {
                    engine::Phase::Initial => "Initial".into(),
                    engine::Phase::Incremental => "Incremental".into(),
                },
                watermark: s.watermark.clone(),
                records: s.records,
                last_run_finished: s
                    .last_run_finished
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                total: s.total,
                initial_sync_started: s
                    .initial_sync_started
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            })
            .collect();
        Some(SyncStatus {
            records: Some(entities.iter().map(|e| e.records).sum()),
            last_sync_time: p.last_sync_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            entities,
        })
    }

    fn in_progress(&self, obj: &CarerixConnection) -> bool {
        self.progress(&key_of(obj)).is_some_and(|p| !p.initial_done())
    }
}
