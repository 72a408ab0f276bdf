//! The sync of one connection: passes per entity, the full comparison of ids, and the loop that
//! runs them on the interval with backoff. Needs no Kubernetes: a [`Target`] is enough.
//!
//! Nothing here rests on an INFERRED point of the Carerix API without a fallback (see
//! `docs/sync.md`): page ends come from each page's metadata; ties within one second are broken by
//! the entity's own numeric id field, then `_id`, then offset pages of that second, each tried
//! only while Carerix accepts and honours it; every incremental pass starts an overlap window
//! before the watermark, and the watermark never moves past the pass's own start (dates in the
//! future); records without a `modificationDate` are read by a separate sweep; deletes are
//! confirmed record by record, never taken from a partial listing, and a suspicious drop stops.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use tracing::{debug, info, instrument, warn};

mod compare;

use super::{
    Error,
    keyset::{self, After, Cursor, PAGE_SIZE, Tie},
    store::{self, Schema, Versioned},
};
use crate::backoff::BackoffPolicy;
use crate::{
    carerix::{CarerixClient, Direction, Entity, Page, PageRequest},
    metrics::Metrics,
};

/// How far before the watermark an incremental pass starts by default: records committed late
/// (a `modificationDate` older than records already read), and records changed again within a
/// second the last pass had read, are read by the next pass.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(120);

/// Key ranges of a large entity's initial pass, read concurrently (see `Engine::with_split`).
pub const DEFAULT_SPLIT: u32 = 4;

/// The most key ranges one entity's initial pass is split into.
const MAX_SPLIT: u32 = 8;

/// A comparison that would mark more than this share of an entity's live rows deleted at once
/// stops and reports instead.
pub const MAX_DELETE_SHARE: f64 = 0.05;

/// Fewer deletions than this are never held back (small tables).
const MIN_HELD: usize = 5;

/// How long processed webhook event ids are kept (Carerix retries for hours, not days).
const EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most pages of one offset-paged second or listing before the progress guard gives up.
const MAX_OFFSET_PAGES: u32 = 100_000;

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
    /// Who the rows belong to (the connection's uid and tenant); `None`: not checked.
    pub owner: Option<String>,
    /// The selection of each entity that has one of its own (`spec.sync.fields`); the others
    /// copy the full default ([`Entity::fields`]).
    pub selections: Arc<HashMap<Entity, String>>,
}

impl Target {
    /// A target from its parts.
    pub fn new(client: CarerixClient, pool: Pool, schema: Schema, connection: impl Into<String>) -> Self {
        Target {
            client: Arc::new(RwLock::new(client)),
            pool,
            schema,
            connection: connection.into(),
            owner: None,
            selections: Arc::new(HashMap::new()),
        }
    }

    /// The same target copying only the named fields of some entities.
    pub fn with_selections(mut self, selections: HashMap<Entity, String>) -> Self {
        self.selections = Arc::new(selections);
        self
    }

    /// The selection of `entity`.
    pub fn selection(&self, entity: Entity) -> String {
        self.selections.get(&entity).cloned().unwrap_or_else(|| entity.fields())
    }

    /// The same target, its rows owned by `owner` (a different stored owner starts clean).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
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
    /// Records in Carerix during the initial pass (`totalElements`).
    pub total: Option<i64>,
    /// When the initial pass started.
    pub initial_sync_started: Option<DateTime<Utc>>,
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
    ties: Arc<Mutex<HashMap<Entity, Tie>>>,
    /// The order the last full comparison of each entity found its listing in.
    compare_orders: Arc<Mutex<HashMap<Entity, store::SortKey>>>,
    ids_refused: Arc<std::sync::atomic::AtomicBool>,
    overlap: Duration,
    split: u32,
}

/// How many key ranges an initial pass of `total` records is split into: at least `split`, and
/// more for a large entity (one range per 25 pages, at most 8), so that its ranges keep the
/// limiter busy alone once the smaller entities are done.
fn range_count(split: u32, total: u64) -> u32 {
    if split <= 1 {
        return 1;
    }
    let pages = total.div_ceil(u64::from(PAGE_SIZE));
    let wanted = u32::try_from(pages / 25).unwrap_or(u32::MAX).min(MAX_SPLIT);
    split.max(wanted)
}

fn is_pg_down(e: &Error) -> bool {
    matches!(e, Error::Sink(_) | Error::Pool(_))
}

/// Whether Carerix refused the form of a query (a GraphQL error, not an outage).
fn is_refusal(e: &crate::carerix::Error) -> bool {
    matches!(e, crate::carerix::Error::GraphQl { .. }) && !e.is_forbidden()
}

fn sort_for(tie: Tie) -> Vec<(String, Direction)> {
    let mut sort = vec![("modificationDate".to_string(), Direction::Asc)];
    if let Some(p) = tie.property() {
        sort.push((p.to_string(), Direction::Asc));
    }
    sort
}

/// Whether the page ends the listing: by its own metadata when it has any, else when empty.
fn ends(page: &Page) -> bool {
    page.items.is_empty() || (page.has_metadata && page.last)
}

/// Whether items sharing a `modificationDate` come in strictly ascending numeric order of the
/// tie field (`Int!`); anything else means Carerix does not honour the sort.
fn misordered(items: &[Value], tie: Tie) -> bool {
    let Tie::Field(_) = tie else { return false };
    items.windows(2).any(|w| {
        let date = |v: &Value| v.get("modificationDate").and_then(Value::as_str).map(str::to_string);
        let num = |v: &Value| tie.value_of(v).and_then(|s| s.parse::<i64>().ok());
        date(&w[0]).is_some()
            && date(&w[0]) == date(&w[1])
            && !matches!((num(&w[0]), num(&w[1])), (Some(a), Some(b)) if a < b)
    })
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
        Engine {
            target,
            entities,
            progress,
            metrics: None,
            ties: Arc::new(Mutex::new(HashMap::new())),
            compare_orders: Arc::new(Mutex::new(HashMap::new())),
            ids_refused: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            overlap: DEFAULT_OVERLAP,
            split: DEFAULT_SPLIT,
        }
    }

    /// Sets how many independent key ranges a large entity's initial pass is split into
    /// (1: no split).
    pub fn with_split(mut self, ranges: u32) -> Self {
        self.split = ranges.max(1);
        self
    }

    /// Sets the overlap window of incremental passes.
    pub fn with_overlap(mut self, overlap: Duration) -> Self {
        self.overlap = overlap;
        self
    }

    /// The tie breaker currently used for `entity`.
    pub fn tie(&self, entity: Entity) -> Tie {
        *self
            .ties
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(entity)
            .or_insert_with(|| Tie::preferred(entity.id_field()))
    }

    /// Drops `from` for `entity` (when it is still the one in use) for the next fallback.
    fn demote(&self, entity: Entity, from: Tie, why: &str) {
        let mut ties = self.ties.lock().unwrap_or_else(|p| p.into_inner());
        let current = ties.entry(entity).or_insert_with(|| Tie::preferred(entity.id_field()));
        if *current == from {
            *current = from.fallback();
            if from == Tie::Id {
                self.ids_refused.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            warn!(connection = %self.target.connection, entity = entity.name(), from = ?from, to = ?*current,
                reason = why, "Carerix does not support this tie breaker; falling back");
        }
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
        if let Some(owner) = &self.target.owner {
            let t = &self.target;
            if store::claim(&t.pool, &t.schema, &t.connection, owner, &self.entities).await? {
                info!(connection = %t.connection, "the stored rows belonged to another connection or tenant; starting clean");
            }
        }
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
                        total: None,
                        initial_sync_started: None,
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
    /// the new watermark. An incremental pass starts [`DEFAULT_OVERLAP`] (see [`Engine::with_overlap`])
    /// before the watermark. Returns the records read.
    ///
    /// # Errors
    /// [`Error::Carerix`] or [`Error::Sink`]; the stored watermark lets the next call resume.
    /// [`Error::NoProgress`] when Carerix keeps answering without moving the pass forward.
    #[instrument(skip_all, fields(connection = %self.target.connection, entity = entity.name()))]
    pub async fn sync_entity(&self, entity: Entity) -> Result<u64, Error> {
        let t = &self.target;
        let state = store::load_state(&t.pool, &t.schema, &t.connection, entity).await?;
        let pass_started = store::db_now(&t.pool).await?;
        let mut records = state.records;
        let overlap = chrono::Duration::from_std(self.overlap).unwrap_or_default();
        let mut cursor = match (&state.cursor, state.initial_done) {
            (Some(c), true) => {
                keyset::lookback_start(&Cursor::from(c.at.min(pass_started) - overlap), pass_started)
            }
            (Some(c), false) => match &c.after {
                // resume inside the second only with the tie breaker the value belongs to
                After::Tie(stored) => match stored.split_once('=') {
                    Some((p, v)) if Some(p) == self.tie(entity).property() => {
                        Cursor { at: c.at, after: After::Tie(v.to_string()) }
                    }
                    _ => Cursor::from(c.at),
                },
                _ => Cursor::from(c.at),
            },
            (None, _) => Cursor::from(keyset::epoch()),
        };
        if !state.initial_done {
            self.progress.update(|p| {
                let e = p.entities.entry(entity).or_default();
                e.initial_sync_started.get_or_insert(pass_started);
            });
        }
        let client = t.client();
        let mut read = 0u64;
        let mut first = true;
        let mut seen: HashSet<(DateTime<Utc>, String)> = HashSet::new();
        let selection = t.selection(entity);
        loop {
            let tie = self.tie(entity);
            // An incremental pass over an entity without a `deleted` field (CRMatch) reads with
            // `norestrict` and asks which of the page's records restricted queries no longer
            // return: those are soft-deleted (a soft delete moves the modificationDate, so the
            // pass after it sees the record).
            let restriction_check = state.initial_done
                && !entity.has_deleted_field()
                && tie != Tie::Offset
                && !self.ids_refused.load(std::sync::atomic::Ordering::Relaxed);
            let req = PageRequest {
                qualifier: Some(keyset::modified_after(&cursor, tie)),
                page: 0,
                size: PAGE_SIZE,
                sort: sort_for(tie),
                norestrict: entity.has_deleted_field() || restriction_check,
            };
            let page = match client.graphql().page_select(entity, &req, &selection).await {
                Ok(p) => p,
                Err(e) if tie != Tie::Offset && is_refusal(&e) => {
                    self.demote(entity, tie, &e.to_string());
                    if matches!(cursor.after, After::Tie(_)) {
                        cursor.after = After::Inclusive;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if tie != Tie::Offset && misordered(&page.items, tie) {
                self.demote(entity, tie, "items of one second are not in the order asked for");
                if matches!(cursor.after, After::Tie(_)) {
                    cursor.after = After::Inclusive;
                }
                continue;
            }
            if first && !state.initial_done {
                let total = records + i64::try_from(page.total_elements).unwrap_or(i64::MAX);
                self.progress.update(|p| p.entities.entry(entity).or_default().total = Some(total));
                let large = page.total_elements >= u64::from(self.split) * u64::from(PAGE_SIZE) * 10;
                if state.cursor.is_none()
                    && self.split > 1
                    && large
                    && matches!(tie, Tie::Field(_))
                    && let Some(read) = self.initial_in_ranges(&client, entity, pass_started).await?
                {
                    return self.finish(entity, pass_started, read).await;
                }
            }
            first = false;
            let n = page.items.len();
            let (versioned, last_date, next) = resolve_page(entity, &cursor, tie, &page.items)?;
            let mut next = next.unwrap_or_else(|| cursor.clone());
            let done = ends(&page);
            let stuck = !done && !keyset::advanced(&cursor, &next);
            if stuck && tie != Tie::Offset {
                // Carerix answered with nothing after the cursor: it does not honour this form
                self.demote(entity, tie, "the page did not move past the cursor");
                cursor.after = After::Inclusive;
                continue;
            }
            let hidden: Vec<String> = if restriction_check && !page.items.is_empty() {
                let ids: Vec<String> = page
                    .items
                    .iter()
                    .filter_map(|i| i.get("_id").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                match self.ids_where(&client, entity, &ids, false).await? {
                    Some(live) => ids.into_iter().filter(|id| !live.contains(id)).collect(),
                    None => {
                        // `_id` refused in qualifiers: read this page again restricted
                        self.ids_refused.store(true, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            if !state.initial_done {
                records += n as i64;
            }
            let watermark_date = last_date.unwrap_or_else(|| {
                self.progress
                    .update(|p| p.entities.get(&entity).and_then(|e| e.watermark.clone()))
                    .unwrap_or_default()
            });
            if stuck {
                // a second holding more than a page, and no tie breaker: read it by offsets
                store::upsert_records(&t.pool, &t.schema, &t.connection, entity, &versioned).await?;
                let more = self.drain_second(&client, entity, cursor.at).await?;
                if !state.initial_done {
                    records += more as i64;
                }
                read += more;
                next = Cursor { at: cursor.at, after: After::Exclusive };
            }
            if !seen.insert((next.at, format!("{:?}", next.after))) && !done {
                return Err(Error::NoProgress(entity.name()));
            }
            let page_items: &[Versioned] = if stuck { &[] } else { &versioned };
            let stored = match (&next.after, tie.property()) {
                (After::Tie(v), Some(p)) => Cursor { at: next.at, after: After::Tie(format!("{p}={v}")) },
                _ => Cursor::from(next.at),
            };
            store::store_page(
                &t.pool,
                &t.schema,
                &t.connection,
                entity,
                page_items,
                &hidden,
                &stored,
                &watermark_date,
                records,
            )
            .await?;
            read += n as u64;
            cursor = next;
            if let Some(m) = &self.metrics {
                let (ns, name) = self.labels();
                m.sync_records(ns, name, entity.name(), n as u64);
            }
            self.progress.update(|p| {
                let e = p.entities.entry(entity).or_default();
                e.watermark = Some(watermark_date.clone());
                if e.phase == Phase::Initial {
                    e.records = records;
                }
            });
            debug!(records = n, "stored a page");
            if done {
                break;
            }
        }
        self.finish(entity, pass_started, read).await
    }

    /// Ends a pass: caps the watermark at the pass's start, marks the entity incremental.
    async fn finish(&self, entity: Entity, pass_started: DateTime<Utc>, read: u64) -> Result<u64, Error> {
        let t = &self.target;
        store::cap_watermark(&t.pool, &t.schema, &t.connection, entity, pass_started).await?;
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

    /// The initial pass of a large entity as [`Engine::with_split`] independent ranges of its own
    /// numeric id field, read concurrently so the rate limiter stays busy however slow each
    /// answer is. Each range is its own keyset pass; a record changed meanwhile stays in its
    /// range and is read again there. The watermark afterwards is the pass's start (the first
    /// incremental pass re-reads what changed during it). `None` when the entity is small, has no
    /// numeric id field, or Carerix refuses the range form (the plain pass runs then; what was
    /// stored is kept, upserts are idempotent).
    async fn initial_in_ranges(
        &self,
        client: &CarerixClient,
        entity: Entity,
        pass_started: DateTime<Utc>,
    ) -> Result<Option<u64>, Error> {
        let Tie::Field(field) = self.tie(entity) else { return Ok(None) };
        let bound = |direction| PageRequest {
            qualifier: None,
            page: 0,
            size: 1,
            sort: vec![(field.to_string(), direction)],
            norestrict: entity.has_deleted_field(),
        };
        let selection = format!("_id {field}");
        let (low, high) = match futures::future::try_join(
            client.graphql().page_select(entity, &bound(Direction::Asc), &selection),
            client.graphql().page_select(entity, &bound(Direction::Desc), &selection),
        )
        .await
        {
            Ok(pages) => pages,
            Err(e) if is_refusal(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let num = |p: &Page| {
            p.items.first().and_then(|i| Tie::Field(field).value_of(i)).and_then(|v| v.parse::<i64>().ok())
        };
        let (Some(min), Some(max)) = (num(&low), num(&high)) else { return Ok(None) };
        let total = low.total_elements;
        if max <= min {
            return Ok(None);
        }
        self.progress.update(|p| {
            p.entities.entry(entity).or_default().total = Some(i64::try_from(total).unwrap_or(i64::MAX))
        });
        let split = range_count(self.split, total);
        let width = (max - min) / i64::from(split) + 1;
        let ranges: Vec<(i64, i64)> =
            (0..i64::from(split)).map(|i| (min + i * width, min + (i + 1) * width)).collect();
        let done = Arc::new(std::sync::atomic::AtomicI64::new(0));
        // Each range is its own task: parsing and storing pages of one range runs on any worker
        // thread while the others wait on Carerix. Dropping the set (the sync stopped) aborts them.
        let mut tasks = tokio::task::JoinSet::new();
        for range in ranges {
            let (engine, client, done) = (self.clone(), client.clone(), done.clone());
            tasks.spawn(async move { engine.read_range(&client, entity, field, range, done).await });
        }
        let mut read = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(n)) => read += n,
                Ok(Err(Error::Carerix(e))) if is_refusal(&e) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(Error::Task(e.to_string())),
            }
        }
        let t = &self.target;
        let records = done.load(std::sync::atomic::Ordering::Relaxed);
        store::store_page(
            &t.pool,
            &t.schema,
            &t.connection,
            entity,
            &[],
            &[],
            &Cursor::from(pass_started),
            "",
            records,
        )
        .await?;
        Ok(Some(read))
    }

    async fn read_range(
        &self,
        client: &CarerixClient,
        entity: Entity,
        field: &'static str,
        (lo, hi): (i64, i64),
        done: Arc<std::sync::atomic::AtomicI64>,
    ) -> Result<u64, Error> {
        let t = &self.target;
        let tie = Tie::Field(field);
        let selection = t.selection(entity);
        let mut cursor = Cursor::from(keyset::epoch());
        let mut read = 0;
        let mut seen: HashSet<(DateTime<Utc>, String)> = HashSet::new();
        let mut storing: Option<futures::future::BoxFuture<'_, Result<(), Error>>> = None;
        let graphql = client.graphql();
        loop {
            let req = PageRequest {
                qualifier: Some(format!(
                    "({}) AND {field} >= {lo} AND {field} < {hi}",
                    keyset::modified_after(&cursor, tie)
                )),
                page: 0,
                size: PAGE_SIZE,
                sort: sort_for(tie),
                norestrict: entity.has_deleted_field(),
            };
            let fetch = graphql.page_select(entity, &req, &selection);
            let page = match storing.take() {
                Some(store) => {
                    let (page, stored) = futures::future::join(fetch, store).await;
                    stored?;
                    page?
                }
                None => fetch.await?,
            };
            if misordered(&page.items, tie) {
                self.demote(entity, tie, "items of one second are not in the order asked for");
                return Err(Error::NoProgress(entity.name()));
            }
            let (versioned, _, next) = resolve_page(entity, &cursor, tie, &page.items)?;
            read += versioned.len() as u64;
            // The next page is asked for while this one is stored: a range then waits on Carerix
            // or on PostgreSQL, not on both in turn.
            let store = self.store_range_page(entity, versioned, done.clone());
            if ends(&page) {
                store.await?;
                return Ok(read);
            }
            storing = Some(Box::pin(store));
            let next = next.unwrap_or_else(|| cursor.clone());
            if !keyset::advanced(&cursor, &next) || !seen.insert((next.at, format!("{:?}", next.after))) {
                if let Some(store) = storing.take() {
                    store.await?;
                }
                return Err(Error::NoProgress(entity.name()));
            }
            cursor = next;
        }
    }

    /// Stores one page of a key range and counts it in the entity's progress.
    async fn store_range_page(
        &self,
        entity: Entity,
        versioned: Vec<Versioned>,
        done: Arc<std::sync::atomic::AtomicI64>,
    ) -> Result<(), Error> {
        let t = &self.target;
        store::upsert_records(&t.pool, &t.schema, &t.connection, entity, &versioned).await?;
        let n = versioned.len();
        let total = done.fetch_add(n as i64, std::sync::atomic::Ordering::Relaxed) + n as i64;
        self.progress.update(|p| p.entities.entry(entity).or_default().records = total);
        if let Some(m) = &self.metrics {
            let (ns, name) = self.labels();
            m.sync_records(ns, name, entity.name(), n as u64);
        }
        Ok(())
    }

    /// Reads every record of one second by offset pages and stores them. Returns how many.
    async fn drain_second(
        &self,
        client: &CarerixClient,
        entity: Entity,
        at: DateTime<Utc>,
    ) -> Result<u64, Error> {
        let t = &self.target;
        let mut read = 0;
        for page_no in 0..MAX_OFFSET_PAGES {
            let req = PageRequest {
                qualifier: Some(keyset::within_second(at)),
                page: page_no,
                size: PAGE_SIZE,
                sort: vec![("creationDate".to_string(), Direction::Asc)],
                norestrict: entity.has_deleted_field(),
            };
            let page = client.graphql().page_select(entity, &req, &t.selection(entity)).await?;
            let items: Vec<Versioned> =
                page.items.iter().map(|r| Versioned { record: r.clone(), at: Some(at) }).collect();
            store::upsert_records(&t.pool, &t.schema, &t.connection, entity, &items).await?;
            read += items.len() as u64;
            if ends(&page) {
                return Ok(read);
            }
        }
        Err(Error::NoProgress(entity.name()))
    }

    /// Reads the records whose `modificationDate` is null (no date qualifier finds them) and
    /// stores them. Returns how many.
    async fn null_sweep(&self, client: &CarerixClient, entity: Entity) -> Result<u64, Error> {
        let t = &self.target;
        let mut read = 0;
        for page_no in 0..MAX_OFFSET_PAGES {
            let req = PageRequest {
                qualifier: Some(keyset::NULL_DATE.to_string()),
                page: page_no,
                size: PAGE_SIZE,
                sort: vec![("creationDate".to_string(), Direction::Asc)],
                norestrict: entity.has_deleted_field(),
            };
            let page = match client.graphql().page_select(entity, &req, &t.selection(entity)).await {
                Ok(p) => p,
                Err(e) if is_refusal(&e) => {
                    warn!(entity = entity.name(), error = %e, "Carerix refuses `modificationDate = nil`; records without a date are found by the comparison");
                    return Ok(read);
                }
                Err(e) => return Err(e.into()),
            };
            let items: Vec<Versioned> =
                page.items.iter().map(|r| Versioned { record: r.clone(), at: None }).collect();
            store::upsert_records(&t.pool, &t.schema, &t.connection, entity, &items).await?;
            read += items.len() as u64;
            if ends(&page) {
                return Ok(read);
            }
        }
        Err(Error::NoProgress(entity.name()))
    }

    /// Fetches records by id (one query per 100 by tie value or `_id`, or one by one when Carerix
    /// refuses both) and stores those found. Returns the ids found.
    async fn refetch(
        &self,
        client: &CarerixClient,
        entity: Entity,
        wanted: &[(String, Option<String>)],
    ) -> Result<HashSet<String>, Error> {
        let t = &self.target;
        let mut found = HashSet::new();
        for chunk in wanted.chunks(PAGE_SIZE as usize) {
            let tie = self.tie(entity);
            let by_tie = match tie {
                Tie::Field(_) if chunk.iter().all(|(_, v)| v.is_some()) => {
                    keyset::tie_qualifier(tie, chunk.iter().filter_map(|(_, v)| v.as_deref()))
                }
                _ if !self.ids_refused.load(std::sync::atomic::Ordering::Relaxed) => {
                    Some(keyset::ids_qualifier(chunk.iter().map(|(id, _)| id.as_str())))
                }
                _ => None,
            };
            let mut records: Vec<Value> = Vec::new();
            let mut one_by_one = by_tie.is_none();
            if let Some(q) = by_tie {
                let mut page_no = 0;
                loop {
                    let req = PageRequest {
                        qualifier: Some(q.clone()),
                        page: page_no,
                        size: PAGE_SIZE,
                        sort: vec![("creationDate".to_string(), Direction::Asc)],
                        norestrict: entity.has_deleted_field(),
                    };
                    match client.graphql().page_select(entity, &req, &t.selection(entity)).await {
                        Ok(page) => {
                            let end = ends(&page);
                            records.extend(page.items);
                            if end || page_no >= MAX_OFFSET_PAGES {
                                break;
                            }
                            page_no += 1;
                        }
                        Err(e) if is_refusal(&e) => {
                            if tie == Tie::Id || !matches!(tie, Tie::Field(_)) {
                                self.ids_refused.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            one_by_one = true;
                            records.clear();
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if one_by_one {
                for (id, _) in chunk {
                    if let Some(r) = client.graphql().get_select(entity, id, &t.selection(entity)).await? {
                        records.push(r);
                    }
                }
            }
            let items: Vec<Versioned> = records.into_iter().map(Versioned::earliest).collect();
            for v in &items {
                if let Some(id) = v.record.get("_id").and_then(Value::as_str) {
                    found.insert(id.to_string());
                }
            }
            store::upsert_records(&t.pool, &t.schema, &t.connection, entity, &items).await?;
        }
        Ok(found)
    }

    /// Full comparison of every entity, concurrently, then the pruning of old processed events.
    ///
    /// # Errors
    /// The first failure.
    pub async fn compare_all(&self) -> Result<u64, Error> {
        let results = futures::future::join_all(self.entities.iter().map(|e| self.full_compare(*e))).await;
        let mut total = 0;
        for r in results {
            total += r?;
        }
        let t = &self.target;
        let pruned = store::prune_events(&t.pool, &t.schema, &t.connection, EVENT_RETENTION).await?;
        if pruned > 0 {
            debug!(pruned, "pruned processed webhook events");
        }
        Ok(total)
    }

    /// Whether a full comparison is due, from the stored `last_full_compare`.
    async fn compare_due(&self, interval: Duration) -> Result<bool, Error> {
        let t = &self.target;
        let oldest = store::oldest_full_compare(&t.pool, &t.schema, &t.connection, &self.entities).await?;
        let now = store::db_now(&t.pool).await?;
        Ok(oldest.is_none_or(|at| (now - at).to_std().unwrap_or_default() >= interval))
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
        loop {
            let was_failing = self.progress.failure().is_some();
            let was_done = self.progress.initial_done();
            let result = async {
                if !prepared {
                    self.prepare().await?;
                    prepared = true;
                }
                self.pass().await?;
                if self.compare_due(compare_interval).await? {
                    self.compare_beside_passes(interval).await?;
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

type Resolved = (Vec<Versioned>, Option<String>, Option<Cursor>);

/// The instants of a page's records, the `modificationDate` text of the last dated one, and the
/// cursor after it (records without a date are stored but do not move the cursor).
fn resolve_page(entity: Entity, cursor: &Cursor, tie: Tie, items: &[Value]) -> Result<Resolved, Error> {
    let mut prev: Option<(DateTime<Utc>, Option<String>)> = Some((cursor.at, None));
    let mut out = Vec::with_capacity(items.len());
    let mut last_date = None;
    let mut next = None;
    for item in items {
        let Some(id) = item.get("_id").and_then(Value::as_str) else {
            return Err(Error::InvalidRecord(entity.name()));
        };
        let Some(date) = item.get("modificationDate").and_then(Value::as_str) else {
            out.push(Versioned { record: item.clone(), at: None });
            continue;
        };
        let tv = tie.value_of(item);
        let key = tv.clone().unwrap_or_else(|| id.to_string());
        let at = keyset::resolve_instant(date, &key, prev.as_ref().map(|(a, i)| (a, i.as_deref())))
            .ok_or(Error::InvalidRecord(entity.name()))?;
        prev = Some((at, Some(key)));
        last_date = Some(date.to_string());
        next = Some(Cursor { at, after: tv.map_or(After::Inclusive, After::Tie) });
        out.push(Versioned { record: item.clone(), at: Some(at) });
    }
    Ok((out, last_date, next))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_large_entity_is_read_in_more_key_ranges_up_to_eight() {
        assert_eq!(super::range_count(4, 5_000), 4);
        assert_eq!(super::range_count(4, 20_000), 8);
        assert_eq!(super::range_count(4, 10_000_000), 8);
        assert_eq!(super::range_count(1, 40_000), 1, "no split stays no split");
    }
}
