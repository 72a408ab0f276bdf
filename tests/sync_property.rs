//! A property test of "no lost update" (issue 9, point 1): random sequences of changes to one
//! entity in the emulator — updates several times within one second (second-precision dates),
//! in descending id order so a later change has a lower id, late commits dated back, soft and
//! hard deletes, creations — each batch applied while an incremental pass runs, over many
//! passes. Afterwards the sink equals the source field by field. Against the emulator and a
//! real PostgreSQL; few cases, so it runs in seconds (`PROPTEST_CASES` raises it).

mod sync_common;

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use carerix_operator::{
    carerix::{CarerixClient, Entity},
    sync::{Engine, Target, store},
};
use carerix_sim::{Readings, SimHandle};
use chrono::Utc;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sync_common::*;

/// One change, to the record at `slot` (modulo the records there are).
#[derive(Clone, Debug)]
enum Change {
    /// A field changes.
    Update { slot: usize },
    /// Several records change within one second, the later ones with lower ids.
    Burst { slot: usize, n: usize },
    /// A change committed late: dated `back` seconds ago.
    Late { slot: usize, back: i64 },
    /// `deleted: 1` (for matches: gone from restricted lists only).
    SoftDelete { slot: usize },
    /// Gone from Carerix.
    HardDelete { slot: usize },
    /// A new record.
    Create,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => any::<usize>().prop_map(|slot| Change::Update { slot }),
        3 => (any::<usize>(), 2..6usize).prop_map(|(slot, n)| Change::Burst { slot, n }),
        2 => (any::<usize>(), 1..100i64).prop_map(|(slot, back)| Change::Late { slot, back }),
        1 => any::<usize>().prop_map(|slot| Change::SoftDelete { slot }),
        1 => any::<usize>().prop_map(|slot| Change::HardDelete { slot }),
        1 => Just(Change::Create),
    ]
}

/// Batches of changes; each batch is applied while one incremental pass runs.
fn history() -> impl Strategy<Value = Vec<Vec<Change>>> {
    prop::collection::vec(prop::collection::vec(change(), 0..6), 4..12)
}

fn entity() -> impl Strategy<Value = Entity> {
    prop_oneof![Just(Entity::Candidates), Just(Entity::Matches)]
}

fn fields(k: &str, v: String) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(k.into(), json!(v));
    m
}

/// A client without the operator's 10 requests/s, so many passes fit in seconds.
fn fast_client(sim: &SimHandle) -> CarerixClient {
    sync_common::client_at_rate(sim, 1000)
}

/// Applies `changes`. Deletes only the comparison finds (hard ones; soft ones of matches when
/// `_id` is refused) stop at `deletes_left`, fewer than the 5 % guard ever holds back; further
/// ones become updates.
async fn apply(sim: &SimHandle, e: Entity, changes: Vec<Change>, round: usize, deletes_left: &mut usize) {
    let s = sim.sim_arc();
    let se = sim_entity(e);
    let field = if e == Entity::Candidates { "firstName" } else { "notes" };
    for (i, c) in changes.into_iter().enumerate() {
        let mut live: Vec<u64> = s
            .list_records(TENANT, se)
            .expect("records")
            .iter()
            .filter_map(|r| r["_id"].as_str().and_then(|x| x.parse().ok()))
            .collect();
        live.sort_unstable();
        if live.is_empty() {
            return;
        }
        let at = |slot: usize| live[slot % live.len()];
        let value = format!("r{round}c{i}");
        match c {
            Change::Update { slot } => {
                let _ = s.update_record(TENANT, se, at(slot), fields(field, value));
            }
            Change::Burst { slot, n } => {
                let first = slot % live.len();
                for k in (0..n).rev() {
                    let id = live[(first + k) % live.len()];
                    let _ = s.update_record(TENANT, se, id, fields(field, format!("{value}b{k}")));
                }
            }
            Change::Late { slot, back } => {
                let id = at(slot);
                let _ = s.update_record(TENANT, se, id, fields(field, value));
                let _ = s.set_modification_date(
                    TENANT,
                    se,
                    id,
                    Some(Utc::now() - chrono::Duration::seconds(back)),
                );
            }
            Change::SoftDelete { slot } if e.has_deleted_field() => {
                let _ = s.soft_delete_record(TENANT, se, at(slot));
            }
            Change::SoftDelete { slot } if *deletes_left > 0 => {
                *deletes_left -= 1;
                let _ = s.soft_delete_record(TENANT, se, at(slot));
            }
            Change::HardDelete { slot } if *deletes_left > 0 => {
                *deletes_left -= 1;
                let _ = s.hard_delete_record(TENANT, se, at(slot));
            }
            Change::SoftDelete { slot } | Change::HardDelete { slot } => {
                let _ = s.update_record(TENANT, se, at(slot), fields(field, value));
            }
            Change::Create => {
                let _ = s.create_record(TENANT, se, fields(field, value));
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

static CASE: AtomicU32 = AtomicU32::new(0);

async fn run_case(e: Entity, hostile_ids: bool, history: Vec<Vec<Change>>) {
    let sim = sim(60, |c| {
        c.same_second_burst = 0;
        c.rate_limit_per_sec = 10_000;
        c.readings = Readings {
            second_precision: true,
            page_cap: Some(7),
            id_in_qualifier: !hostile_ids,
            id_in_sort: !hostile_ids,
            hidden_soft_deletes: true,
            ..Readings::default()
        };
    })
    .await;
    let name = format!("prop{}", CASE.fetch_add(1, Ordering::Relaxed));
    let pool = store::pool(&postgres_url()).expect("pool");
    let t = Target::new(fast_client(&sim), pool, schema(&name), format!("test/{name}"));
    let engine = Engine::new(t.clone(), vec![e]);
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    let mut deletes_left = 4;
    for (round, batch) in history.into_iter().enumerate() {
        let (pass, ()) = tokio::join!(engine.pass(), apply(&sim, e, batch, round, &mut deletes_left));
        pass.expect("pass during changes");
    }
    engine.pass().await.expect("pass after the changes");
    engine.compare_all().await.expect("full comparison");
    assert_equal(&sim, &t, e).await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    #[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
    fn concurrent_changes_to_one_entity_across_many_passes_leave_the_sink_equal_to_the_source(
        e in entity(),
        hostile_ids in any::<bool>(),
        history in history(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(run_case(e, hostile_ids, history));
    }
}
