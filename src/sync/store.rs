//! The PostgreSQL sink: versioned migrations, idempotent upserts, the watermark, processed events.
//!
//! Every table is keyed by `connection` (`namespace/name`) first, so several connections share one
//! schema without mixing data. See `docs/sync.md` for the tables and example queries.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::{NoTls, Transaction};

use super::{Error, keyset::Cursor};
use crate::carerix::Entity;

/// The versioned migrations, applied in order. Never edit one that shipped: add a new one. Each
/// runs with `search_path` set to the sink schema; `{entity_tables}` expands to one table per
/// entity of [`Entity::ALL`] (a new entity arrives through a new migration that names it).
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3)];

const V1: &str = r#"
CREATE TABLE IF NOT EXISTS sync_state (
    connection text NOT NULL,
    entity text NOT NULL,
    phase text NOT NULL DEFAULT 'Initial',
    watermark_date text,
    watermark_at timestamptz,
    watermark_id text,
    records bigint NOT NULL DEFAULT 0,
    initial_done boolean NOT NULL DEFAULT false,
    last_run_finished timestamptz,
    last_full_compare timestamptz,
    PRIMARY KEY (connection, entity)
);
CREATE TABLE IF NOT EXISTS processed_events (
    connection text NOT NULL,
    event_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection, event_id)
);
"#;

/// The entity tables (before version 2 the code created them inside version 1; `IF NOT EXISTS`
/// keeps such sinks as they are), the instant of the modification time, and who owns the rows.
const V2: &str = r#"
{entity_tables}
ALTER TABLE sync_state ADD COLUMN IF NOT EXISTS owner text;
CREATE INDEX IF NOT EXISTS processed_events_received ON processed_events (connection, received_at);
"#;

/// The rows a running full comparison found missing from Carerix, waiting to be confirmed one
/// by one (kept in the sink so the comparison holds only a page in memory).
const V3: &str = r#"
CREATE TABLE IF NOT EXISTS compare_candidates (
    connection text NOT NULL,
    entity text NOT NULL,
    id text NOT NULL,
    tie text,
    PRIMARY KEY (connection, entity, id)
);
"#;

const ENTITY_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS {t} (
    connection text NOT NULL,
    id text NOT NULL,
    modification_date text,
    deleted boolean NOT NULL DEFAULT false,
    deleted_at timestamptz,
    record jsonb NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection, id)
);
CREATE INDEX IF NOT EXISTS {t_plain}_modification ON {t} (connection, modification_date);
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS modified_at timestamptz;
"#;

fn expand(sql: &str, schema: &Schema) -> String {
    if !sql.contains("{entity_tables}") {
        return sql.to_string();
    }
    let tables: String = Entity::ALL
        .iter()
        .map(|e| ENTITY_TABLE.replace("{t_plain}", e.name()).replace("{t}", &schema.entity(*e)))
        .collect();
    sql.replace("{entity_tables}", &tables)
}

/// A pool for a sink URL. Connections are made lazily; a down server fails within seconds.
///
/// # Errors
/// [`Error::InvalidSinkUrl`] when the URL does not parse (the message never contains the URL).
pub fn pool(url: &str) -> Result<Pool, Error> {
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(|_| Error::InvalidSinkUrl)?;
    cfg.connect_timeout(Duration::from_secs(5));
    cfg.application_name("carerix-operator");
    let mgr = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    // Waiting for a connection is back-pressure (many key ranges store pages at once), not a
    // failure: only a pool that stays exhausted for a minute fails the pass.
    Pool::builder(mgr)
        .max_size(16)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(60)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|_| Error::InvalidSinkUrl)
}

/// A schema name checked to be a plain lowercase identifier, quoted for SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    /// Checks the name (the CRD enforces the same pattern).
    ///
    /// # Errors
    /// [`Error::InvalidSchema`] when it is not `^[a-z_][a-z0-9_]{0,62}$`.
    pub fn new(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok { Ok(Schema(name.to_string())) } else { Err(Error::InvalidSchema(name.to_string())) }
    }

    /// The bare name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `"schema"."table"`.
    pub fn table(&self, table: &str) -> String {
        format!("\"{}\".\"{}\"", self.0, table)
    }

    /// The table of an entity, e.g. `"carerix"."candidates"`.
    pub fn entity(&self, entity: Entity) -> String {
        self.table(entity.name())
    }
}

/// Runs the migrations that are not applied yet, each in its own transaction under an advisory
/// lock, so several operator replicas or connections can start at once.
///
/// # Errors
/// [`Error::Sink`] when PostgreSQL fails.
pub async fn migrate(pool: &Pool, schema: &Schema) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let lock_key = format!("carerix-operator:{}", schema.name());
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key]).await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{s}\"; CREATE TABLE IF NOT EXISTS {m} (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now())",
        s = schema.name(),
        m = schema.table("schema_migrations")
    ))
    .await?;
    tx.commit().await?;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key]).await?;
        let done = tx
            .query_opt(
                &format!("SELECT 1 FROM {} WHERE version = $1", schema.table("schema_migrations")),
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(&format!("SET LOCAL search_path TO \"{}\"", schema.name())).await?;
            tx.batch_execute(&expand(sql, schema)).await?;
            tx.execute(
                &format!("INSERT INTO {} (version) VALUES ($1)", schema.table("schema_migrations")),
                &[version],
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The stored sync state of one entity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityState {
    /// Where the next page starts.
    pub cursor: Option<Cursor>,
    /// The watermark as Carerix writes it.
    pub watermark_date: Option<String>,
    /// Records written during the current initial pass (or live count later).
    pub records: i64,
    /// The first full pass finished.
    pub initial_done: bool,
    /// When the last pass finished.
    pub last_run_finished: Option<DateTime<Utc>>,
    /// When the last full comparison of ids started.
    pub last_full_compare: Option<DateTime<Utc>>,
}

/// Reads the state of an entity (default when none is stored).
///
/// # Errors
/// [`Error::Sink`].
pub async fn load_state(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
) -> Result<EntityState, Error> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT watermark_date, watermark_at, watermark_id, records, initial_done, last_run_finished, \
                 last_full_compare FROM {} WHERE connection = $1 AND entity = $2",
                schema.table("sync_state")
            ),
            &[&connection, &entity.name()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(EntityState::default());
    };
    let at: Option<DateTime<Utc>> = row.get(1);
    Ok(EntityState {
        // the tie value is stored as `property=value` (see `Engine`): a resumed pass uses it only
        // while the same tie breaker is in use
        cursor: at.map(|at| Cursor {
            at,
            after: row
                .get::<_, Option<String>>(2)
                .map_or(super::keyset::After::Inclusive, super::keyset::After::Tie),
        }),
        watermark_date: row.get(0),
        records: row.get(3),
        initial_done: row.get(4),
        last_run_finished: row.get(5),
        last_full_compare: row.get(6),
    })
}

/// A record to upsert with the instant of its `modificationDate` (`None` when Carerix has none).
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    /// The record as Carerix returned it.
    pub record: Value,
    /// The instant of its `modificationDate`.
    pub at: Option<DateTime<Utc>>,
}

impl Versioned {
    /// A record whose instant is the earliest reading of its `modificationDate` (outside a pass,
    /// where no order tells the two readings of the repeated autumn hour apart).
    pub fn earliest(record: Value) -> Self {
        let at = record
            .get("modificationDate")
            .and_then(Value::as_str)
            .and_then(|d| crate::carerix::time::parse_ns_calendar_date(d).ok())
            .map(|t| t.earliest());
        Versioned { record, at }
    }
}

/// Upserts records. A row changes only when the record differs (re-reads are idempotent and do
/// not touch `synced_at`). The last read wins, whatever its `modificationDate`: a late commit
/// carries an older date than the version it replaces, so "newer date wins" would lose it; a
/// stale write (a webhook fetch racing a pass) is corrected by the next pass, whose overlap
/// window reads the record again.
async fn upsert(
    tx: &Transaction<'_>,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    items: &[Versioned],
    hidden: &[String],
) -> Result<u64, Error> {
    if items.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO {t} AS t (connection, id, modification_date, modified_at, deleted, deleted_at, record, synced_at) \
         SELECT $1, x->'r'->>'_id', x->'r'->>'modificationDate', (x->>'at')::timestamptz, \
                (COALESCE(x->'r'->>'deleted', '0') NOT IN ('0', 'false') OR x->'r'->>'_id' = ANY($3)), \
                CASE WHEN COALESCE(x->'r'->>'deleted', '0') NOT IN ('0', 'false') OR x->'r'->>'_id' = ANY($3) \
                     THEN now() END, jsonb_strip_nulls(x->'r'), now() \
         FROM jsonb_array_elements($2::jsonb) AS x WHERE x->'r'->>'_id' IS NOT NULL \
         ON CONFLICT (connection, id) DO UPDATE SET modification_date = excluded.modification_date, \
             modified_at = excluded.modified_at, deleted = excluded.deleted, \
             deleted_at = CASE WHEN excluded.deleted THEN COALESCE(t.deleted_at, now()) END, \
             record = excluded.record, synced_at = now() \
         WHERE t.record IS DISTINCT FROM excluded.record OR t.deleted IS DISTINCT FROM excluded.deleted",
        t = schema.entity(entity)
    );
    let array = Value::Array(
        items
            .iter()
            .map(|v| serde_json::json!({ "r": v.record, "at": v.at.map(|t| t.to_rfc3339()) }))
            .collect(),
    );
    Ok(tx.execute(&sql, &[&connection, &array, &hidden]).await?)
}

/// Upserts records outside a pass (the null sweep, the repair of the comparison).
///
/// # Errors
/// [`Error::Sink`].
pub async fn upsert_records(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    items: &[Versioned],
) -> Result<u64, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = upsert(&tx, schema, connection, entity, items, &[]).await?;
    tx.commit().await?;
    Ok(n)
}

/// Stores one page of a pass and the new watermark in one transaction. `hidden`: ids of the
/// page that restricted queries no longer return (soft-deleted records of an entity without a
/// `deleted` field), stored as deleted.
///
/// # Errors
/// [`Error::Sink`].
#[allow(clippy::too_many_arguments)]
pub async fn store_page(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    items: &[Versioned],
    hidden: &[String],
    cursor: &Cursor,
    watermark_date: &str,
    records: i64,
) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    upsert(&tx, schema, connection, entity, items, hidden).await?;
    tx.execute(
        &format!(
            "INSERT INTO {} AS s (connection, entity, watermark_date, watermark_at, watermark_id, records) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (connection, entity) DO UPDATE SET \
             watermark_date = excluded.watermark_date, watermark_at = excluded.watermark_at, \
             watermark_id = excluded.watermark_id, records = excluded.records",
            schema.table("sync_state")
        ),
        &[&connection, &entity.name(), &watermark_date, &cursor.at, &tie_value(cursor), &records],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Marks a pass finished: the entity is in its incremental phase, with its live record count.
///
/// # Errors
/// [`Error::Sink`].
pub async fn finish_pass(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
) -> Result<(i64, DateTime<Utc>), Error> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {s} (connection, entity, phase, initial_done, records, last_run_finished) \
                 VALUES ($1, $2, 'Incremental', true, (SELECT count(*) FROM {t} WHERE connection = $1 AND NOT deleted), now()) \
                 ON CONFLICT (connection, entity) DO UPDATE SET phase = 'Incremental', initial_done = true, \
                 records = excluded.records, last_run_finished = excluded.last_run_finished \
                 RETURNING records, last_run_finished",
                s = schema.table("sync_state"),
                t = schema.entity(entity)
            ),
            &[&connection, &entity.name()],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The database's clock, used to fence the full comparison.
///
/// # Errors
/// [`Error::Sink`].
pub async fn db_now(pool: &Pool) -> Result<DateTime<Utc>, Error> {
    let client = pool.get().await?;
    Ok(client.query_one("SELECT now()", &[]).await?.get(0))
}

/// Whether an event was already applied.
///
/// # Errors
/// [`Error::Sink`].
pub async fn event_seen(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    event_id: &str,
) -> Result<bool, Error> {
    let client = pool.get().await?;
    Ok(client
        .query_opt(
            &format!(
                "SELECT 1 FROM {} WHERE connection = $1 AND event_id = $2",
                schema.table("processed_events")
            ),
            &[&connection, &event_id],
        )
        .await?
        .is_some())
}

/// What a delivery changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The record as Carerix has it now.
    Upsert(Entity, Value),
    /// The record is gone from Carerix.
    Gone(Entity, String),
    /// Nothing (an entity this connection does not sync).
    Nothing,
}

/// Applies a delivery and records its event id in one transaction. Returns false when the event
/// had been applied already (concurrently).
///
/// # Errors
/// [`Error::Sink`].
pub async fn apply_event(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    event_id: &str,
    change: &Change,
) -> Result<bool, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let fresh = tx
        .execute(
            &format!(
                "INSERT INTO {} (connection, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                schema.table("processed_events")
            ),
            &[&connection, &event_id],
        )
        .await?
        == 1;
    if fresh {
        match change {
            Change::Upsert(entity, record) => {
                upsert(&tx, schema, connection, *entity, &[Versioned::earliest(record.clone())], &[]).await?;
            }
            Change::Gone(entity, id) => {
                tx.execute(
                    &format!(
                        "UPDATE {} SET deleted = true, deleted_at = now(), synced_at = now() \
                         WHERE connection = $1 AND id = $2 AND NOT deleted",
                        schema.entity(*entity)
                    ),
                    &[&connection, id],
                )
                .await?;
            }
            Change::Nothing => {}
        }
    }
    tx.commit().await?;
    Ok(fresh)
}

fn tie_value(cursor: &Cursor) -> Option<String> {
    match &cursor.after {
        super::keyset::After::Tie(v) => Some(v.clone()),
        _ => None,
    }
}

/// Caps the stored watermark of a finished pass at `cap` (a record dated in the future must not
/// move the start of the next pass past records changed now).
///
/// # Errors
/// [`Error::Sink`].
pub async fn cap_watermark(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    cap: DateTime<Utc>,
) -> Result<(), Error> {
    let client = pool.get().await?;
    client
        .execute(
            &format!(
                "UPDATE {} SET watermark_at = $3, watermark_id = NULL WHERE connection = $1 AND entity = $2 \
                 AND watermark_at > $3",
                schema.table("sync_state")
            ),
            &[&connection, &entity.name(), &cap],
        )
        .await?;
    Ok(())
}

/// Makes the rows of `connection` belong to `owner` (the connection's uid and tenant): when the
/// stored owner differs (a re-created connection, another tenant under the same name), every row
/// and watermark of the connection is dropped first, so the sync starts clean. Returns whether it
/// dropped anything.
///
/// # Errors
/// [`Error::Sink`].
pub async fn claim(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    owner: &str,
    entities: &[Entity],
) -> Result<bool, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("carerix-operator:{connection}")])
        .await?;
    let stored: Vec<Option<String>> = tx
        .query(
            &format!("SELECT DISTINCT owner FROM {} WHERE connection = $1", schema.table("sync_state")),
            &[&connection],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let foreign = stored.iter().any(|o| o.as_deref().is_some_and(|o| o != owner));
    if foreign {
        drop_rows(&tx, schema, connection).await?;
    }
    tx.execute(
        &format!("UPDATE {} SET owner = $2 WHERE connection = $1", schema.table("sync_state")),
        &[&connection, &owner],
    )
    .await?;
    for e in entities {
        tx.execute(
            &format!(
                "INSERT INTO {} (connection, entity, owner) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                schema.table("sync_state")
            ),
            &[&connection, &e.name(), &owner],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(foreign)
}

async fn drop_rows(tx: &Transaction<'_>, schema: &Schema, connection: &str) -> Result<(), Error> {
    for e in Entity::ALL {
        tx.execute(&format!("DELETE FROM {} WHERE connection = $1", schema.entity(e)), &[&connection])
            .await?;
    }
    for t in ["sync_state", "processed_events", "compare_candidates"] {
        tx.execute(&format!("DELETE FROM {} WHERE connection = $1", schema.table(t)), &[&connection]).await?;
    }
    Ok(())
}

/// Deletes every row, watermark and processed event of `connection` (`onDelete: Drop`).
///
/// # Errors
/// [`Error::Sink`].
pub async fn drop_connection(pool: &Pool, schema: &Schema, connection: &str) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    drop_rows(&tx, schema, connection).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes processed webhook events older than `keep`. Returns how many.
///
/// # Errors
/// [`Error::Sink`].
pub async fn prune_events(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    keep: Duration,
) -> Result<u64, Error> {
    let client = pool.get().await?;
    let secs = keep.as_secs_f64();
    Ok(client
        .execute(
            &format!(
                "DELETE FROM {} WHERE connection = $1 AND received_at < now() - make_interval(secs => $2)",
                schema.table("processed_events")
            ),
            &[&connection, &secs],
        )
        .await?)
}

/// The value a full comparison orders an entity's ids by, and how it compares; the same order
/// in Rust (the listing) and in SQL (the sink), so that both walk in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// A numeric field of the record (the entity's own id field, `Int!`).
    Number(&'static str),
    /// `_id`, compared as numbers (non-numeric ids have no place).
    IdNumber,
    /// `_id`, compared as text in byte order.
    IdText,
    /// A text field of the record in byte order (`creationDate`, for listings by offset).
    Text(&'static str),
}

fn is_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn cmp_numbers(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    if !is_number(a) || !is_number(b) {
        return None;
    }
    if let (Ok(x), Ok(y)) = (a.parse::<i128>(), b.parse::<i128>()) {
        return Some(x.cmp(&y));
    }
    // Longer than i128 and not negative (ids): by length without leading zeros, then by digits.
    let (x, y) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    Some(x.len().cmp(&y.len()).then_with(|| x.cmp(y)))
}

impl SortKey {
    /// Whether the values are unique per record (ids), so the listing must strictly ascend.
    pub fn unique(self) -> bool {
        !matches!(self, SortKey::Text(_))
    }

    /// Compares two values the way [`SortKey::sql`] does; `None` when one has no place in the
    /// order (a non-number in a numeric order).
    pub fn cmp(self, a: &str, b: &str) -> Option<std::cmp::Ordering> {
        match self {
            SortKey::Number(_) | SortKey::IdNumber => cmp_numbers(a, b),
            SortKey::IdText | SortKey::Text(_) => Some(a.as_bytes().cmp(b.as_bytes())),
        }
    }

    /// The SQL expression of a row's value, and of a bound given as text parameter `$n`.
    fn sql(self, n: usize) -> (String, String) {
        let field = |f: &str| format!("(record->>'{}')", f.replace('\'', "''"));
        match self {
            SortKey::Number(f) => {
                let x = field(f);
                (
                    format!("(CASE WHEN {x} ~ '^-?[0-9]+$' THEN {x}::numeric END)"),
                    format!("(${n}::text)::numeric"),
                )
            }
            SortKey::IdNumber => {
                ("(CASE WHEN id ~ '^[0-9]+$' THEN id::numeric END)".into(), format!("(${n}::text)::numeric"))
            }
            SortKey::IdText => ("(id COLLATE \"C\")".into(), format!("(${n}::text COLLATE \"C\")")),
            SortKey::Text(f) => {
                (format!("({} COLLATE \"C\")", field(f)), format!("(${n}::text COLLATE \"C\")"))
            }
        }
    }
}

/// Of `ids`, those the sink has no row for (deleted or not).
///
/// # Errors
/// [`Error::Sink`].
pub async fn not_in_sink(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    ids: &[String],
) -> Result<std::collections::HashSet<String>, Error> {
    if ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT x FROM unnest($2::text[]) AS x WHERE NOT EXISTS \
                 (SELECT 1 FROM {} t WHERE t.connection = $1 AND t.id = x)",
                schema.entity(entity)
            ),
            &[&connection, &ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Forgets the candidates of an earlier comparison of `entity`.
///
/// # Errors
/// [`Error::Sink`].
pub async fn clear_candidates(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
) -> Result<(), Error> {
    let client = pool.get().await?;
    client
        .execute(
            &format!(
                "DELETE FROM {} WHERE connection = $1 AND entity = $2",
                schema.table("compare_candidates")
            ),
            &[&connection, &entity.name()],
        )
        .await?;
    Ok(())
}

/// One closed range of a full comparison: the live rows synced before `before` whose `key` lies
/// in `(lo, hi]` (no bound: open on that side) and that Carerix did not list there become
/// candidates for deletion, with their value of `tie_field`. Rows whose key has no place in the
/// order are never candidates. Returns how many rows were added.
///
/// # Errors
/// [`Error::Sink`].
#[allow(clippy::too_many_arguments)]
pub async fn stage_unlisted(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    key: SortKey,
    (lo, hi): (Option<&str>, Option<&str>),
    listed: &[String],
    tie_field: Option<&str>,
    before: DateTime<Utc>,
) -> Result<u64, Error> {
    let client = pool.get().await?;
    let name = entity.name();
    let tie = tie_field.unwrap_or("_id");
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&connection, &name, &tie, &before, &listed];
    let (value, _) = key.sql(0);
    let mut sql = format!(
        "INSERT INTO {c} (connection, entity, id, tie) SELECT connection, $2, id, record->>$3 FROM {t} \
         WHERE connection = $1 AND NOT deleted AND synced_at < $4 AND NOT (id = ANY($5)) AND {value} IS NOT NULL",
        c = schema.table("compare_candidates"),
        t = schema.entity(entity),
    );
    if let Some(lo) = &lo {
        params.push(lo);
        sql.push_str(&format!(" AND {value} > {}", key.sql(params.len()).1));
    }
    if let Some(hi) = &hi {
        params.push(hi);
        sql.push_str(&format!(" AND {value} <= {}", key.sql(params.len()).1));
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    Ok(client.execute(&sql, &params).await?)
}

/// Up to `limit` candidates of `entity` after id `after` (in id order), with their tie values.
///
/// # Errors
/// [`Error::Sink`].
pub async fn candidates(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<(String, Option<String>)>, Error> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT id, tie FROM {} WHERE connection = $1 AND entity = $2 AND ($3::text IS NULL OR id > $3) \
                 ORDER BY id LIMIT $4",
                schema.table("compare_candidates")
            ),
            &[&connection, &entity.name(), &after, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Live rows of an entity synced before `before` (what a comparison may mark deleted).
///
/// # Errors
/// [`Error::Sink`].
pub async fn count_live(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    before: DateTime<Utc>,
) -> Result<u64, Error> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE connection = $1 AND NOT deleted AND synced_at < $2",
                schema.entity(entity)
            ),
            &[&connection, &before],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Marks the given rows deleted (only those still live and synced before `before`), and records
/// when the comparison started. Returns how many.
///
/// # Errors
/// [`Error::Sink`].
pub async fn mark_deleted(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entity: Entity,
    ids: &[String],
    before: DateTime<Utc>,
) -> Result<u64, Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            &format!(
                "UPDATE {} SET deleted = true, deleted_at = now() WHERE connection = $1 AND NOT deleted \
                 AND synced_at < $2 AND id = ANY($3)",
                schema.entity(entity)
            ),
            &[&connection, &before, &ids],
        )
        .await?;
    tx.execute(
        &format!(
            "INSERT INTO {} (connection, entity, last_full_compare) VALUES ($1, $2, $3) \
             ON CONFLICT (connection, entity) DO UPDATE SET last_full_compare = excluded.last_full_compare",
            schema.table("sync_state")
        ),
        &[&connection, &entity.name(), &before],
    )
    .await?;
    tx.commit().await?;
    Ok(n)
}

/// When the oldest full comparison of the connection's entities started (`None` when one never
/// ran): the comparison is scheduled from this, not from the process start.
///
/// # Errors
/// [`Error::Sink`].
pub async fn oldest_full_compare(
    pool: &Pool,
    schema: &Schema,
    connection: &str,
    entities: &[Entity],
) -> Result<Option<DateTime<Utc>>, Error> {
    let client = pool.get().await?;
    let names: Vec<&str> = entities.iter().map(|e| e.name()).collect();
    let rows = client
        .query(
            &format!(
                "SELECT last_full_compare FROM {} WHERE connection = $1 AND entity = ANY($2)",
                schema.table("sync_state")
            ),
            &[&connection, &names],
        )
        .await?;
    if rows.len() < entities.len() {
        return Ok(None);
    }
    let mut oldest: Option<DateTime<Utc>> = None;
    for r in rows {
        let Some(at) = r.get::<_, Option<DateTime<Utc>>>(0) else { return Ok(None) };
        oldest = Some(oldest.map_or(at, |o| o.min(at)));
    }
    Ok(oldest)
}
