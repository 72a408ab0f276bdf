//! The full comparison of ids, streamed: Carerix's id listing and the sink's rows are walked in
//! the same order, one closed key range at a time, so memory stays at one page per entity
//! whatever the entity's size (a merge join; the sink's side of each range is one SQL statement).
//!
//! For each page of the listing (sorted by the tie breaker: the entity's own numeric id field,
//! `_id`, or `creationDate` for offset pages), the records the sink lacks are fetched and stored,
//! and the range of keys up to the page's last one is closed: the sink's live rows in that range
//! that Carerix did not list become *candidates* (in `compare_candidates`). Only after the
//! listing ended complete (no null items; for offset pages the same `totalElements` throughout
//! and every id seen) are the candidates counted against the live rows (the 5 % guard needs
//! counts, not sets), then fetched again page by page and marked deleted when still not found.
//! A listing that comes back in another order than the one assumed (`_id` as numbers or as text)
//! is walked again in the other order; one that fits no order marks nothing.

use std::cmp::Ordering;

use serde_json::Value;
use tracing::{info, warn};

use super::{Engine, Error, MAX_DELETE_SHARE, MAX_OFFSET_PAGES, MIN_HELD, ends, is_refusal};
use crate::{
    carerix::{CarerixClient, Direction, Entity, PageRequest},
    sync::{
        keyset::{self, PAGE_SIZE, Tie},
        store::{self, SortKey},
    },
};

/// What one walk over the listing found.
#[derive(Debug, Default)]
struct Walk {
    /// No null items; for offset pages every id seen, the total steady.
    complete: bool,
    /// Rows staged as candidates for deletion.
    candidates: u64,
    /// Records stored that the sink lacked.
    stored: u64,
}

enum Outcome {
    Walked(Walk),
    /// The listing is not in the order `SortKey` assumes.
    Misordered,
}

/// The orders to try for a tie breaker, the one that worked last time first.
fn orders(tie: Tie, last: Option<SortKey>) -> Vec<SortKey> {
    match tie {
        Tie::Field(f) => vec![SortKey::Number(f)],
        Tie::Id => match last {
            Some(SortKey::IdText) => vec![SortKey::IdText, SortKey::IdNumber],
            _ => vec![SortKey::IdNumber, SortKey::IdText],
        },
        Tie::Offset => vec![SortKey::Text("creationDate")],
    }
}

/// A listed item's value in `key`'s order.
fn key_of(item: &Value, key: SortKey) -> Option<String> {
    let v = match key {
        SortKey::Number(f) | SortKey::Text(f) => item.get(f)?,
        SortKey::IdNumber | SortKey::IdText => item.get("_id")?,
    };
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Engine {
    /// Compares the ids Carerix lists for `entity` with the sink: stores records the sink lacks,
    /// reads the records without a `modificationDate`, and marks deleted the rows Carerix no
    /// longer has, among rows synced before the listing started, each confirmed by fetching it
    /// again. A partial listing marks nothing; a drop of more than [`MAX_DELETE_SHARE`] of the
    /// live rows at once stops with [`Error::DeletesHeld`]. Memory: one page (see the module
    /// documentation). Returns how many rows were marked.
    ///
    /// # Errors
    /// [`Error::Carerix`], [`Error::Sink`], [`Error::DeletesHeld`], [`Error::NoProgress`].
    #[tracing::instrument(skip_all, fields(connection = %self.target.connection, entity = entity.name()))]
    pub async fn full_compare(&self, entity: Entity) -> Result<u64, Error> {
        let t = &self.target;
        let started = store::db_now(&t.pool).await?;
        let client = t.client();
        let walk = self.walk(&client, entity, started).await?;
        if walk.stored > 0 {
            info!(stored = walk.stored, "stored records the passes had not seen");
        }
        self.null_sweep(&client, entity).await?;
        let result = self.confirm(&client, entity, &walk, started).await;
        store::clear_candidates(&t.pool, &t.schema, &t.connection, entity).await?;
        result
    }

    /// The walk, falling back to another order or tie breaker when Carerix refuses or
    /// misorders the one in use.
    async fn walk(&self, client: &CarerixClient, entity: Entity, started: Started) -> Result<Walk, Error> {
        let t = &self.target;
        loop {
            let tie = self.tie(entity);
            let last = self.compare_orders.lock().unwrap_or_else(|p| p.into_inner()).get(&entity).copied();
            let mut refused = None;
            for key in orders(tie, last) {
                store::clear_candidates(&t.pool, &t.schema, &t.connection, entity).await?;
                match self.walk_with(client, entity, tie, key, started).await {
                    Ok(Outcome::Walked(walk)) => {
                        self.compare_orders.lock().unwrap_or_else(|p| p.into_inner()).insert(entity, key);
                        return Ok(walk);
                    }
                    Ok(Outcome::Misordered) => {
                        warn!(order = ?key, "the id listing is not in this order; trying another");
                    }
                    Err(Error::Carerix(e)) if tie != Tie::Offset && is_refusal(&e) => {
                        refused = Some(e.to_string());
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if tie == Tie::Offset {
                // no order fits (creation dates in the repeated autumn hour, say): mark nothing
                store::clear_candidates(&t.pool, &t.schema, &t.connection, entity).await?;
                return Ok(Walk::default());
            }
            let why = refused.unwrap_or_else(|| "the id listing is not in the order asked for".into());
            self.demote(entity, tie, &why);
        }
    }

    /// One walk over the listing in `key`'s order.
    async fn walk_with(
        &self,
        client: &CarerixClient,
        entity: Entity,
        tie: Tie,
        key: SortKey,
        started: Started,
    ) -> Result<Outcome, Error> {
        let t = &self.target;
        let selection = match tie {
            Tie::Field(f) => format!("_id {f}"),
            Tie::Id => "_id".to_string(),
            Tie::Offset => "_id creationDate".to_string(),
        };
        let tie_field = tie.property().filter(|p| *p != "_id");
        // Marks the rows of a closed key range that Carerix did not list as candidates.
        let stage = |range: (Option<&str>, Option<&str>), ids: Vec<String>| {
            let range = (range.0.map(str::to_string), range.1.map(str::to_string));
            async move {
                let range = (range.0.as_deref(), range.1.as_deref());
                store::stage_unlisted(
                    &t.pool,
                    &t.schema,
                    &t.connection,
                    entity,
                    key,
                    range,
                    &ids,
                    tie_field,
                    started,
                )
                .await
            }
        };
        let mut walk = Walk { complete: true, ..Walk::default() };
        // The open range: keys above `lo` (exclusive), and what was listed in it so far, in order.
        let mut lo: Option<String> = None;
        let mut pending: Vec<(String, String)> = Vec::new();
        let mut last_key: Option<String> = None;
        let mut last_tie: Option<String> = None;
        let mut first_total: Option<u64> = None;
        let mut seen = 0u64;
        for page_no in 0..MAX_OFFSET_PAGES {
            let req = match tie.property() {
                Some(p) => PageRequest {
                    qualifier: keyset::tie_after(tie, last_tie.as_deref()),
                    page: 0,
                    size: PAGE_SIZE,
                    sort: vec![(p.to_string(), Direction::Asc)],
                    norestrict: entity.has_deleted_field(),
                },
                None => PageRequest {
                    qualifier: None,
                    page: page_no,
                    size: PAGE_SIZE,
                    sort: vec![("creationDate".to_string(), Direction::Asc)],
                    norestrict: entity.has_deleted_field(),
                },
            };
            let page = client.graphql().page_select(entity, &req, &selection).await?;
            if page.null_items > 0 {
                walk.complete = false;
            }
            // offset pages shift when records go meanwhile: the total must hold still
            if tie == Tie::Offset && *first_total.get_or_insert(page.total_elements) != page.total_elements {
                walk.complete = false;
            }
            let before = last_tie.clone();
            let mut listed: Vec<(String, Option<String>)> = Vec::with_capacity(page.items.len());
            for item in &page.items {
                let Some(id) = item.get("_id").and_then(Value::as_str) else {
                    walk.complete = false;
                    continue;
                };
                seen += 1;
                let tie_value = tie.value_of(item);
                if tie_value.is_some() {
                    last_tie.clone_from(&tie_value);
                }
                listed.push((id.to_string(), tie_value));
                let Some(k) = key_of(item, key) else {
                    // an id with no place in the order: the ranges cannot account for it
                    walk.complete = false;
                    continue;
                };
                if let Some(prev) = &last_key {
                    match key.cmp(prev, &k) {
                        Some(Ordering::Less) => {}
                        Some(Ordering::Equal) if !key.unique() => {}
                        _ => return Ok(Outcome::Misordered),
                    }
                }
                last_key = Some(k.clone());
                pending.push((k, id.to_string()));
            }
            walk.stored += self.store_unseen(client, entity, &listed).await?;
            if ends(&page) {
                if tie == Tie::Offset && first_total != Some(seen) {
                    walk.complete = false;
                }
                let ids: Vec<String> = pending.drain(..).map(|(_, id)| id).collect();
                walk.candidates += stage((lo.as_deref(), None), ids).await?;
                return Ok(Outcome::Walked(walk));
            }
            // Close the range up to the last key below the page's last one: later pages list
            // only keys from the last one on.
            if let Some(last) = &last_key {
                let split = pending.iter().position(|(k, _)| k == last).unwrap_or(pending.len());
                if split > 0 {
                    let hi = pending[split - 1].0.clone();
                    let ids: Vec<String> = pending.drain(..split).map(|(_, id)| id).collect();
                    walk.candidates += stage((lo.as_deref(), Some(&hi)), ids).await?;
                    lo = Some(hi);
                }
            }
            if tie != Tie::Offset && last_tie == before {
                return Err(Error::NoProgress(entity.name()));
            }
        }
        Err(Error::NoProgress(entity.name()))
    }

    /// Fetches and stores the listed records the sink has no row for. Returns how many were stored.
    async fn store_unseen(
        &self,
        client: &CarerixClient,
        entity: Entity,
        listed: &[(String, Option<String>)],
    ) -> Result<u64, Error> {
        let t = &self.target;
        let ids: Vec<String> = listed.iter().map(|(id, _)| id.clone()).collect();
        let unseen = store::not_in_sink(&t.pool, &t.schema, &t.connection, entity, &ids).await?;
        if unseen.is_empty() {
            return Ok(0);
        }
        let wanted: Vec<(String, Option<String>)> =
            listed.iter().filter(|(id, _)| unseen.contains(id)).cloned().collect();
        Ok(self.refetch(client, entity, &wanted).await?.len() as u64)
    }

    /// Marks deleted the candidates Carerix still does not have when asked for them by id,
    /// unless the listing was partial or the drop is suspicious. Records when the comparison ran.
    async fn confirm(
        &self,
        client: &CarerixClient,
        entity: Entity,
        walk: &Walk,
        started: Started,
    ) -> Result<u64, Error> {
        let t = &self.target;
        if !walk.complete {
            if walk.candidates > 0 {
                warn!(
                    candidates = walk.candidates,
                    "the id listing was partial; no row is marked deleted this time"
                );
            }
            return Ok(0);
        }
        let live = store::count_live(&t.pool, &t.schema, &t.connection, entity, started).await?;
        let count = usize::try_from(walk.candidates).unwrap_or(usize::MAX);
        let live = usize::try_from(live).unwrap_or(usize::MAX);
        if count >= MIN_HELD && count as f64 > MAX_DELETE_SHARE * live as f64 {
            warn!(count, live, "held back a suspicious number of deletions");
            return Err(Error::DeletesHeld { entity: entity.name(), count, live });
        }
        let mut marked = 0;
        let mut after: Option<String> = None;
        loop {
            let chunk = store::candidates(
                &t.pool,
                &t.schema,
                &t.connection,
                entity,
                after.as_deref(),
                i64::from(PAGE_SIZE),
            )
            .await?;
            let Some((last, _)) = chunk.last() else { break };
            after = Some(last.clone());
            let gone: Vec<String> = if entity.has_deleted_field() {
                let still_there = self.refetch(client, entity, &chunk).await?;
                chunk.into_iter().map(|(id, _)| id).filter(|id| !still_there.contains(id)).collect()
            } else {
                self.restricted_away(client, entity, chunk).await?
            };
            marked += store::mark_deleted(&t.pool, &t.schema, &t.connection, entity, &gone, started).await?;
        }
        // records when this comparison ran (also when nothing was marked)
        store::mark_deleted(&t.pool, &t.schema, &t.connection, entity, &[], started).await?;
        if marked > 0 {
            info!(marked, "marked records deleted that Carerix no longer has");
        }
        Ok(marked)
    }

    /// Of the candidates of an entity without a `deleted` field (`CRMatch`), those Carerix no
    /// longer has in restricted queries: soft-deleted (a `norestrict` query still lists them)
    /// or gone. Asked by `_id` in both forms; the single-record query is not restricted, so it
    /// cannot tell a soft-deleted record from a live one, and when Carerix refuses `_id` in
    /// qualifiers the complete restricted listing that did not have them is the verdict.
    async fn restricted_away(
        &self,
        client: &CarerixClient,
        entity: Entity,
        chunk: Vec<(String, Option<String>)>,
    ) -> Result<Vec<String>, Error> {
        let ids: Vec<String> = chunk.into_iter().map(|(id, _)| id).collect();
        if self.ids_refused.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(ids);
        }
        let Some(live) = self.ids_where(client, entity, &ids, false).await? else {
            self.ids_refused.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(ids);
        };
        let gone: Vec<String> = ids.into_iter().filter(|id| !live.contains(id)).collect();
        if !gone.is_empty()
            && let Some(listed) = self.ids_where(client, entity, &gone, true).await?
        {
            let soft = gone.iter().filter(|id| listed.contains(*id)).count();
            info!(soft_deleted = soft, gone = gone.len() - soft, "records no longer in restricted queries");
        }
        Ok(gone)
    }

    /// The ids among `ids` that a page query by `_id` returns, restricted or with `norestrict`;
    /// `None` when Carerix refuses `_id` in qualifiers.
    pub(super) async fn ids_where(
        &self,
        client: &CarerixClient,
        entity: Entity,
        ids: &[String],
        norestrict: bool,
    ) -> Result<Option<std::collections::HashSet<String>>, Error> {
        let mut found = std::collections::HashSet::new();
        let qualifier = keyset::ids_qualifier(ids.iter().map(String::as_str));
        for page_no in 0..MAX_OFFSET_PAGES {
            let req = PageRequest {
                qualifier: Some(qualifier.clone()),
                page: page_no,
                size: PAGE_SIZE,
                sort: vec![("creationDate".to_string(), Direction::Asc)],
                norestrict,
            };
            let page = match client.graphql().page_select(entity, &req, "_id").await {
                Ok(page) => page,
                Err(e) if is_refusal(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            found.extend(
                page.items.iter().filter_map(|i| i.get("_id").and_then(Value::as_str)).map(str::to_string),
            );
            if ends(&page) {
                return Ok(Some(found));
            }
        }
        Err(Error::NoProgress(entity.name()))
    }

    /// Runs a full comparison of every entity while incremental passes go on every `interval`
    /// beside it (a comparison of a large entity takes as many requests as its initial pass had
    /// pages; the passes must not wait for it). Ends when the comparison ends.
    ///
    /// # Errors
    /// The first failure of the comparison or of a pass.
    pub async fn compare_beside_passes(&self, interval: std::time::Duration) -> Result<u64, Error> {
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
        let compare = async {
            let result = self.compare_all().await;
            let _ = done_tx.send(true);
            result
        };
        let passes = async {
            loop {
                tokio::select! {
                    _ = done_rx.wait_for(|done| *done) => return Ok::<(), Error>(()),
                    () = tokio::time::sleep(interval) => {}
                }
                self.pass().await?;
            }
        };
        let (marked, ()) = futures::future::try_join(compare, passes).await?;
        Ok(marked)
    }
}

type Started = chrono::DateTime<chrono::Utc>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{SortKey, Tie, key_of, orders};

    #[test]
    fn a_comparison_tries_the_order_that_worked_last_time_first() {
        assert_eq!(orders(Tie::Id, None), vec![SortKey::IdNumber, SortKey::IdText]);
        assert_eq!(orders(Tie::Id, Some(SortKey::IdText)), vec![SortKey::IdText, SortKey::IdNumber]);
        assert_eq!(orders(Tie::Field("employeeID"), None), vec![SortKey::Number("employeeID")]);
        assert_eq!(orders(Tie::Offset, None), vec![SortKey::Text("creationDate")]);
    }

    #[test]
    fn keys_are_read_from_numbers_and_strings() {
        let item = json!({"_id": "12", "employeeID": 7, "creationDate": "2025-10-26 02:10:00"});
        assert_eq!(key_of(&item, SortKey::Number("employeeID")).as_deref(), Some("7"));
        assert_eq!(key_of(&item, SortKey::IdText).as_deref(), Some("12"));
        assert_eq!(key_of(&item, SortKey::Text("creationDate")).as_deref(), Some("2025-10-26 02:10:00"));
        assert_eq!(key_of(&json!({"_id": null}), SortKey::IdNumber), None);
    }

    #[test]
    fn ids_compare_as_numbers_or_as_bytes_as_the_sql_does() {
        use std::cmp::Ordering::*;
        assert_eq!(SortKey::IdNumber.cmp("9", "10"), Some(Less));
        assert_eq!(SortKey::IdText.cmp("9", "10"), Some(Greater));
        assert_eq!(SortKey::IdNumber.cmp("9", "x9"), None);
        assert_eq!(SortKey::Number("employeeID").cmp("-3", "2"), Some(Less));
        let big = "123456789012345678901234567890123456789012";
        assert_eq!(SortKey::IdNumber.cmp(big, &format!("{big}0")), Some(Less));
    }
}
