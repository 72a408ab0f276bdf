//! Coalesces the fetches that webhook deliveries need: ids that arrive within a short window are
//! fetched with one page query per entity (`_id = 1 OR _id = 2 ...`, up to 100), through the same
//! client and therefore the same per-tenant rate limit as the sync.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{engine::Target, keyset};
use crate::carerix::{Entity, PageRequest};

/// How long the batcher waits for more ids after the first one.
pub const WINDOW: Duration = Duration::from_millis(150);
const MAX_IDS: usize = 100;

/// The answer of a fetch: the record, `None` when Carerix no longer has it, or the failure.
pub type Fetched = Result<Option<Value>, Arc<crate::carerix::Error>>;

struct Request {
    entity: Entity,
    id: String,
    reply: oneshot::Sender<Fetched>,
}

/// A handle to a connection's batcher task; the task ends when every handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

impl Batcher {
    /// Starts the batcher task for `target`.
    pub fn spawn(target: Target) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(target, rx));
        Batcher { tx }
    }

    /// Fetches one record, batched with others that arrive within [`WINDOW`]. `None` from the
    /// outer option means the batcher is gone.
    pub async fn fetch(&self, entity: Entity, id: &str) -> Option<Fetched> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { entity, id: id.to_string(), reply }).await.ok()?;
        rx.await.ok()
    }
}

async fn run(target: Target, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + WINDOW;
        while batch.len() < MAX_IDS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_entity: BTreeMap<Entity, Vec<Request>> = BTreeMap::new();
        for r in batch {
            by_entity.entry(r.entity).or_default().push(r);
        }
        let client = target.client();
        for (entity, reqs) in by_entity {
            let mut ids: Vec<&str> = reqs.iter().map(|r| r.id.as_str()).collect();
            ids.sort_by(|a, b| keyset::cmp_ids(a, b));
            ids.dedup();
            let req = PageRequest {
                qualifier: Some(keyset::ids_qualifier(ids.iter().copied())),
                page: 0,
                size: keyset::PAGE_SIZE,
                sort: Vec::new(),
                // a type without `deleted` (CRMatch): a soft-deleted record is one that only
                // `norestrict` still lists, so it must read as gone
                norestrict: entity.has_deleted_field(),
            };
            let selection = target.selection(entity);
            let answer = match client.graphql().page_select(entity, &req, &selection).await {
                // Carerix refuses `_id` in qualifiers (or serves fewer than asked): one by one
                Ok(page) if page.null_items == 0 && page.items.len() as u64 >= page.total_elements => {
                    Ok(page.items)
                }
                Ok(_) | Err(crate::carerix::Error::GraphQl { .. }) => {
                    one_by_one(&client, entity, &ids, &selection).await
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(items) => {
                    let mut found: BTreeMap<String, Value> = BTreeMap::new();
                    for item in items {
                        if let Some(id) = item.get("_id").and_then(Value::as_str) {
                            found.insert(id.to_string(), item);
                        }
                    }
                    for r in reqs {
                        let _ = r.reply.send(Ok(found.get(&r.id).cloned()));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for r in reqs {
                        let _ = r.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

async fn one_by_one(
    client: &crate::carerix::CarerixClient,
    entity: Entity,
    ids: &[&str],
    selection: &str,
) -> Result<Vec<Value>, crate::carerix::Error> {
    let mut out = Vec::new();
    for id in ids {
        if let Some(r) = client.graphql().get_select(entity, id, selection).await? {
            out.push(r);
        }
    }
    Ok(out)
}
