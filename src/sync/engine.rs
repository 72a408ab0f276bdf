//! The sync of one connection: passes per entity, the full comparison of ids, and the loop that
//! runs them on the interval with backoff. Needs no Kubernetes: a [`Target`] is enough.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tracing::{debug, info, instrument, warn};

use super::{
    Error,
    keyset::{self, Cursor, PAGE_SIZE},
    store::{self, Schema},
};
use crate::backoff::BackoffPolicy;
use crate::{
    carerix::{CarerixClient, Direction, Entity, PageRequest},
    metrics::Metrics,
};

/// Everything one connection's sync needs.
#[derive(Clone)]
pub struct Target {
    /// The Carerix client (it waits on the tenant's rate limiter before each request). Replaced
    /// when the reconciler builds a new client (rotated credentials).
    pub client: Arc<RwLock<CarerixClient>>,
    /// The sink.
    pub pool: Pool,
    /// The PostgreSQL schema.
    pub schema: Schema,
    /// `namespace/name`.
    pub connection: String,
}

impl Target {
    /// A target from its parts.
    pub fn new(client: CarerixClient, pool: Pool, schema: Schema, connection: impl Into<String>) -> Self {
        Target { client: Arc::new(RwLock::new(client)), pool, schema, connection: connection.into() }
    }

    /// The current client.
    pub fn client(&self) -> CarerixClient {
        self.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The phase of an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// The first full pass has not finished.
    #[default]
    Initial,
    /// Caught up; passes read what changed since the watermark.
    Incremental,
}

/// What the status shows of one entity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityProgress {
    /// Phase.
    pub phase: Phase,
    /// Watermark as Carerix writes it.
    pub watermark: Option<String>,
    /// Records (during the initial pass: written so far).
    pub records: i64,
    /// When the last pass finished.
    pub last_run_finished: Option<DateTime<Utc>>,
}

/// The failure the status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Stable reason (`SinkUnavailable`, `CarerixUnavailable`, `SyncFailed`).
    pub reason: &'static str,
    /// What happened and what happens next.
    pub message: String,
}

/// Shared, observable progress of one connection's sync.
#[derive(Debug, Default)]
pub struct Progress {
    inner: Mutex<ProgressInner>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct ProgressInner {
    pub(crate) entities: BTreeMap<Entity, EntityProgress>,
    pub(crate) failure: Option<Failure>,
    pub(crate) started: bool,
    pub(crate) last_sync_time: Option<DateTime<Utc>>,
}

impl Progress {
    fn update<T>(&self, f: impl FnOnce(&mut ProgressInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn snapshot(&self) -> ProgressInner {
        self.update(|p| p.clone())
    }

    /// The progress of each entity.
    pub fn entities(&self) -> BTreeMap<Entity, EntityProgress> {
        self.update(|p| p.entities.clone())
    }

    /// The current failure, if the last attempt failed.
    pub fn failure(&self) -> Option<Failure> {
        self.update(|p| p.failure.clone())
    }

    /// Whether every entity finished its initial pass.
    pub fn initial_done(&self) -> bool {
        self.update(|p| {
            p.started && !p.entities.is_empty() && p.entities.values().all(|e| e.phase == Phase::Incremental)
        })
    }
}

/// Runs passes and comparisons for one connection.
#[derive(Clone)]
pub struct Engine {
    target: Target,
    entities: Vec<Entity>,
    progress: Arc<Progress>,
    metrics: Option<Arc<Metrics>>,
}

fn is_pg_down(e: &Error) -> bool {
    matches!(e, Error::Sink(_) | Error::Pool(_))
}

impl Engine {
    /// An engine for `entities` of `target`.
    pub fn new(target: Target, entities: Vec<Entity>) -> Self {
        let progress = Arc::new(Progress::default());
        progress.update(|p| {
            for e in &entities {
                p.entities.insert(*e, EntityProgress::default());
            }
        });
        Engine { target, entities, progress, metrics: None }
    }

    /// Counts records and lag in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The progress this engine reports into.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn labels(&self) -> (&str, &str) {
        self.target.connection.split_once('/').unwrap_or(("", &self.target.connection))
    }

    /// Runs the migrations and loads the stored state into the progress.
    ///
    /// # Errors
    /// [`Error::Sink`] when PostgreSQL fails.
    pub async fn prepare(&self) -> Result<(), Error> {
        store::migrate(&self.target.pool, &self.target.schema).await?;
        for e in &self.entities {
            let st = store::load_state(&self.target.pool, &self.target.schema, &self.target.connection, *e)
                .await?;
            self.progress.update(|p| {
                p.started = true;
                p.entities.insert(
                    *e,
                    EntityProgress {
                        phase: if st.initial_done { Phase::Incremental } else { Phase::Initial },
                        watermark: st.watermark_date.clone(),
                        records: st.records,
                        last_run_finished: st.last_run_finished,
                    },
                );
            });
        }
        Ok(())
    }

    /// One pass over every entity, concurrently (the tenant's rate limiter is the bottleneck).
    /// Returns the records read.
    ///
    /// # Errors
    /// The first failure of any entity (the others finish their current page).
    pub async fn pass(&self) -> Result<u64, Error> {
        let results = futures::future::join_all(self.entities.iter().map(|e| self.sync_entity(*e))).await;
        let mut total = 0;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(n) => total += n,
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                self.progress.update(|p| p.last_sync_time = Some(Utc::now()));
                Ok(total)
            }
        }
    }

    /// Reads one entity from its stored watermark until caught up, storing each page together with
    /// the new watermark. Returns the records read.
    ///
    /// # Errors
    /// [`Error::Carerix`] or [`Error::Sink`]; the stored watermark lets the next call resume.
    #[instrument(skip_all, fields(connection = %self.target.connection, entity = entity.name()))]
    pub async fn sync_entity(&self, entity: Entity) -> Result<u64, Error> {
        let t = &self.target;
        let state = store::load_state(&t.pool, &t.schema, &t.connection, entity).await?;
        let mut records = state.records;
        let mut cursor = match (&state.cursor, state.initial_done) {
            (Some(c), true) => Some(keyset::lookback_start(c, Utc::now())),
            (c, _) => c.clone(),
        };
        let mut read = 0u64;
        let client = t.client();
        loop {
            let req = PageRequest {
                qualifier: keyset::modified_after(cursor.as_ref()),
                page: 0,
                size: PAGE_SIZE,
                sort: vec![
                    ("modificationDate".to_string(), Direction::Asc),
                    ("_id".to_string(), Direction::Asc),
                ],
                norestrict: true,
            };
            let page = client.graphql().page(entity, &req).await?;
            let n = page.items.len();
            if n > 0 {
                let mut prev: Option<(DateTime<Utc>, Option<String>)> =
                    cursor.as_ref().map(|c| (c.at, c.id.clone()));
                let mut last_date = String::new();
                for item in &page.items {
                    let (Some(id), Some(date)) = (
                        item.get("_id").and_then(Value::as_str),
                        item.get("modificationDate").and_then(Value::as_str),
                    ) else {
                        return Err(Error::InvalidRecord(entity.name()));
                    };
                    let at = keyset::resolve_instant(date, id, prev.as_ref().map(|(a, i)| (a, i.as_deref())))
                        .ok_or(Error::InvalidRecord(entity.name()))?;
                    prev = Some((at, Some(id.to_string())));
                    last_date = date.to_string();
                }
                let Some((at, id)) = prev else { break };
                let next = Cursor { at, id };
                if !state.initial_done {
                    records += n as i64;
                }
                store::store_page(
                    &t.pool,
                    &t.schema,
                    &t.connection,
                    entity,
                    &page.items,
                    &next,
                    &last_date,
                    records,
                )
                .await?;
                read += n as u64;
                cursor = Some(next);
                if let Some(m) = &self.metrics {
                    let (ns, name) = self.labels();
                    m.sync_records(ns, name, entity.name(), n as u64);
                }
                self.progress.update(|p| {
                    let e = p.entities.entry(entity).or_default();
                    e.watermark = Some(last_date.clone());
                    if e.phase == Phase::Initial {
                        e.records = records;
                    }
                });
                debug!(records = n, "stored a page");
            }
            if n < PAGE_SIZE as usize {
                break;
            }
        }
        let (live, finished) = store::finish_pass(&t.pool, &t.schema, &t.connection, entity).await?;
        self.progress.update(|p| {
            let e = p.entities.entry(entity).or_default();
            e.phase = Phase::Incremental;
            e.records = live;
            e.last_run_finished = Some(finished);
        });
        if let Some(m) = &self.metrics {
            let (ns, name) = self.labels();
            m.sync_lag(ns, name, entity.name(), Duration::ZERO);
        }
        Ok(read)
    }

    /// Lists every id Carerix has for `entity` (by keyset over `_id`, soft-deleted ones included)
    /// and marks deleted the sink rows it no longer has, among rows synced before the listing
    /// started. Returns how many rows were marked.
    ///
    /// # Errors
    /// [`Error::Carerix`] or [`Error::Sink`].
    #[instrument(skip_all, fields(connection = %self.target.connection, entity = entity.name()))]
    pub async fn full_compare(&self, entity: Entity) -> Result<u64, Error> {
        let t = &self.target;
        let started = store::db_now(&t.pool).await?;
        let client = t.client();
        let mut ids: Vec<String> = Vec::new();
        loop {
            let req = PageRequest {
                qualifier: keyset::id_after(ids.last().map(String::as_str)),
                page: 0,
                size: PAGE_SIZE,
                sort: vec![("_id".to_string(), Direction::Asc)],
                norestrict: true,
            };
            let page = client.graphql().page_ids(entity, &req).await?;
            let n = page.items.len();
            ids.extend(
                page.items.iter().filter_map(|i| i.get("_id").and_then(Value::as_str)).map(str::to_string),
            );
            if n < PAGE_SIZE as usize {
                break;
            }
        }
        let marked = store::mark_missing(&t.pool, &t.schema, &t.connection, entity, &ids, started).await?;
        if marked > 0 {
            info!(marked, "marked records deleted that Carerix no longer has");
        }
        Ok(marked)
    }

    /// Full comparison of every entity, concurrently.
    ///
    /// # Errors
    /// The first failure.
    pub async fn compare_all(&self) -> Result<u64, Error> {
        let results = futures::future::join_all(self.entities.iter().map(|e| self.full_compare(*e))).await;
        let mut total = 0;
        for r in results {
            total += r?;
        }
        Ok(total)
    }

    fn fail(&self, e: &Error) {
        let reason = e.condition_reason();
        let message = match e {
            _ if is_pg_down(e) => format!(
                "PostgreSQL is unavailable ({e}); the sync retries with backoff and resumes from the stored watermark"
            ),
            Error::Carerix(c) if c.is_retryable() => {
                format!("Carerix is unavailable ({}); the sync retries with backoff", c.reason())
            }
            _ => format!("the data sync failed: {e}"),
        };
        self.progress.update(|p| p.failure = Some(Failure { reason, message }));
    }

    /// Runs forever: prepare, an initial pass, a full comparison, then incremental passes every
    /// `interval` and comparisons every `compare_interval`; failures back off (1 s doubling to
    /// 30 s) and resume from the stored watermark. `changed` is called when the initial pass
    /// finishes and when the sync fails or recovers.
    pub async fn run(self, interval: Duration, compare_interval: Duration, changed: impl Fn() + Send + Sync) {
        let backoff = BackoffPolicy { base: Duration::from_secs(1), max: Duration::from_secs(30) };
        let mut failures = 0;
        let mut prepared = false;
        let mut compare_due = true;
        let mut last_compare: Option<tokio::time::Instant> = None;
        loop {
            let was_failing = self.progress.failure().is_some();
            let was_done = self.progress.initial_done();
            let result = async {
                if !prepared {
                    self.prepare().await?;
                    prepared = true;
                }
                self.pass().await?;
                if compare_due || last_compare.is_some_and(|t| t.elapsed() >= compare_interval) {
                    self.compare_all().await?;
                    compare_due = false;
                    last_compare = Some(tokio::time::Instant::now());
                }
                Ok::<_, Error>(())
            }
            .await;
            match result {
                Ok(()) => {
                    self.progress.update(|p| p.failure = None);
                    failures = 0;
                    if was_failing || !was_done {
                        changed();
                    }
                    tokio::time::sleep(interval).await;
                }
                Err(e) => {
                    warn!(connection = %self.target.connection, error = %e, "data sync failed; retrying");
                    self.fail(&e);
                    if !was_failing {
                        changed();
                    }
                    failures += 1;
                    tokio::time::sleep(backoff.wait(failures, e.retry_after())).await;
                }
            }
        }
    }
}
