//! The full comparison of ids, streamed range by range (`src/sync/engine/compare.rs`), against
//! the emulator and a real PostgreSQL: deletes are found in every range and in every order the
//! listing can come in, records the passes missed are stored, the 5 % guard holds, incremental
//! passes go on while a long comparison runs, and a comparison is due from the stored
//! `last_full_compare`, not from the process start.

mod sync_common;

use std::time::Duration;

use carerix_operator::{
    carerix::Entity,
    sync::{Engine, Error, Target, keyset::Tie},
};
use carerix_sim::{IdOrder, Readings, SimHandle};
use serde_json::{Map, Value, json};
use sync_common::*;

fn ids(sim: &SimHandle, e: Entity) -> Vec<u64> {
    let mut ids: Vec<u64> = sim
        .sim()
        .list_records(TENANT, sim_entity(e))
        .expect("records")
        .iter()
        .map(|r| r["_id"].as_str().and_then(|s| s.parse().ok()).expect("numeric id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// Deletes rows from the sink behind the sync's back (records a pass missed).
async fn forget(t: &Target, e: Entity, ids: &[u64]) {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    let client = t.pool.get().await.expect("connection");
    let sql = format!("DELETE FROM {} WHERE connection = $1 AND id = ANY($2)", t.schema.entity(e));
    let n = client.execute(&sql, &[&t.connection, &ids]).await.expect("delete");
    assert_eq!(n as usize, ids.len());
}

async fn candidates_left(t: &Target) -> i64 {
    let client = t.pool.get().await.expect("connection");
    let sql = format!("SELECT count(*) FROM {} WHERE connection = $1", t.schema.table("compare_candidates"));
    client.query_one(&sql, &[&t.connection]).await.expect("count").get(0)
}

/// Hard-deletes every `step`-th record of `e` in Carerix (spread over the whole key range, so
/// over many ranges of the comparison), and forgets every `step`-th other one in the sink.
/// Returns how many of the deleted ones were live in the sink, and how many were forgotten.
async fn delete_and_forget(sim: &SimHandle, t: &Target, e: Entity, step: usize) -> (usize, usize) {
    let all = ids(sim, e);
    let gone: Vec<u64> = all.iter().copied().step_by(step).collect();
    let forgotten: Vec<u64> = all.iter().copied().skip(step / 2).step_by(step).collect();
    let live = rows(t, e).await;
    let live_gone = gone.iter().filter(|id| live.get(&id.to_string()).is_some_and(|(d, _)| !d)).count();
    for id in &gone {
        sim.sim().hard_delete_record(TENANT, sim_entity(e), *id).expect("delete");
    }
    forget(t, e, &forgotten).await;
    (live_gone, forgotten.len())
}

async fn compare_finds_everything(
    readings: Readings,
    name: &str,
    seed: impl FnOnce(&SimHandle),
) -> (SimHandle, Engine) {
    let sim = sim(300, |c| {
        c.readings = readings;
        c.rate_limit_per_sec = 1000;
    })
    .await;
    seed(&sim);
    let t = target(&sim, &postgres_url(), name).await;
    let entities = vec![Entity::Candidates, Entity::Matches];
    let engine = Engine::new(t.clone(), entities.clone());
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    engine.compare_all().await.expect("first comparison");
    let mut expected = 0;
    for e in &entities {
        let (gone, _) = delete_and_forget(&sim, &t, *e, 37).await;
        assert!(gone >= 5, "deletes in several ranges");
        expected += gone as u64;
    }
    assert_eq!(engine.compare_all().await.expect("comparison"), expected, "every delete is marked");
    for e in entities {
        assert_equal(&sim, &t, e).await;
    }
    assert_eq!(candidates_left(&t).await, 0, "the comparison leaves no candidates behind");
    (sim, engine)
}

#[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_comparison_over_many_small_pages_finds_every_delete_and_every_record_the_passes_missed() {
    // pages of 7: the listing of each entity spans dozens of ranges
    compare_finds_everything(Readings { page_cap: Some(7), ..Readings::default() }, "cmp_pages", |_| {})
        .await;
}

#[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_comparison_of_ids_that_carerix_orders_as_text_finds_every_delete() {
    // matches are listed by `_id`; "10" sorts before "9"
    let readings = Readings { page_cap: Some(9), id_order: IdOrder::Text, ..Readings::default() };
    // ids of four and of five digits: "10000" < "9999" as text
    let (sim, engine) = compare_finds_everything(readings, "cmp_text", |sim| {
        let publications = sim_entity(Entity::Publications);
        while sim.sim().create_record(TENANT, publications, Map::new()).expect("create")["_id"]
            != json!("9990")
        {}
        for i in 0..40 {
            let m = sim.sim().create_record(TENANT, sim_entity(Entity::Matches), Map::new()).expect("create");
            assert!(i < 10 || m["_id"].as_str().is_some_and(|id| id.len() == 5), "{m}");
        }
    })
    .await;
    let ids = ids(&sim, Entity::Matches);
    let as_text = {
        let mut t: Vec<String> = ids.iter().map(u64::to_string).collect();
        t.sort();
        t
    };
    assert_ne!(as_text, ids.iter().map(u64::to_string).collect::<Vec<_>>(), "text and number orders differ");
    assert_eq!(engine.tie(Entity::Matches), Tie::Id, "matches are listed by `_id`");
}

#[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_comparison_without_any_id_carerix_sorts_by_walks_creation_dates_and_finds_every_delete() {
    // matches have no own id field: with `_id` refused, the listing pages by offset over creationDate
    let readings =
        Readings { page_cap: Some(11), id_in_qualifier: false, id_in_sort: false, ..Readings::default() };
    let (_sim, engine) = compare_finds_everything(readings, "cmp_offset", |_| {}).await;
    assert_eq!(engine.tie(Entity::Matches), Tie::Offset, "matches are listed by offset pages");
}

#[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspicious_drop_spread_over_many_ranges_is_still_held_back_whole() {
    let sim = sim(200, |c| {
        c.readings.page_cap = Some(10);
        c.rate_limit_per_sec = 1000;
    })
    .await;
    let t = target(&sim, &postgres_url(), "cmp_held").await;
    let engine = Engine::new(t.clone(), vec![Entity::Vacancies]);
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    for id in ids(&sim, Entity::Vacancies).into_iter().step_by(9) {
        sim.sim().hard_delete_record(TENANT, sim_entity(Entity::Vacancies), id).expect("delete");
    }
    let live = rows(&t, Entity::Vacancies).await.values().filter(|(d, _)| !d).count();
    let err = engine.full_compare(Entity::Vacancies).await.expect_err("held back");
    assert!(matches!(err, Error::DeletesHeld { count, .. } if count >= 15), "{err}");
    assert_eq!(
        rows(&t, Entity::Vacancies).await.values().filter(|(d, _)| !d).count(),
        live,
        "nothing marked"
    );
    assert_eq!(candidates_left(&t).await, 0);
}

#[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_passes_go_on_while_a_long_comparison_runs() {
    let sim = sim(400, |c| {
        c.readings.page_cap = Some(10);
        c.rate_limit_per_sec = 1000;
    })
    .await;
    let t = target(&sim, &postgres_url(), "cmp_beside").await;
    let engine = Engine::new(t.clone(), vec![Entity::Candidates]);
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    // each answer takes 100 ms now: the comparison needs 40 pages, about 4 s
    sim.sim().set_readings(Readings { latency_ms: 100, ..sim.sim().readings() });
    let compare = tokio::spawn({
        let engine = engine.clone();
        async move { engine.compare_beside_passes(Duration::from_millis(200)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = ids(&sim, Entity::Candidates)[0];
    let mut change = Map::new();
    change.insert("firstName".into(), json!("Changed during the comparison"));
    sim.sim().update_record(TENANT, sim_entity(Entity::Candidates), id, change).expect("update");
    let arrived = eventually(Duration::from_secs(30), || async {
        rows(&t, Entity::Candidates).await[&id.to_string()].1.get("firstName").and_then(Value::as_str)
            == Some("Changed during the comparison")
    })
    .await;
    assert!(arrived, "the change never arrived");
    assert!(!compare.is_finished(), "the change arrived only after the comparison (it did not wait for it)");
    compare.await.expect("task").expect("comparison");
    assert_equal(&sim, &t, Entity::Candidates).await;
}

async fn last_full_compare(t: &Target, e: Entity) -> Option<chrono::DateTime<chrono::Utc>> {
    let client = t.pool.get().await.expect("connection");
    let sql = format!(
        "SELECT last_full_compare FROM {} WHERE connection = $1 AND entity = $2",
        t.schema.table("sync_state")
    );
    client.query_one(&sql, &[&t.connection, &e.name()]).await.expect("state").get(0)
}

/// Starts a fresh engine (as after a restart) and returns once its first pass has finished; the
/// caller aborts it.
async fn run_once_more(t: &Target, compare_interval: Duration) -> tokio::task::JoinHandle<()> {
    let engine = Engine::new(t.clone(), vec![Entity::Vacancies]);
    let progress = engine.progress();
    let task = tokio::spawn(engine.run(Duration::from_secs(3600), compare_interval, || {}));
    let ran = eventually(Duration::from_secs(30), || async {
        progress.entities().values().all(|e| e.last_run_finished.is_some())
    })
    .await;
    assert!(ran, "the first pass finished");
    task
}

#[ignore = "needs PostgreSQL (hack/postgres.sh): hack/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_does_not_start_a_comparison_before_full_compare_interval_has_passed_since_the_last() {
    let sim = sim(50, |c| c.rate_limit_per_sec = 1000).await;
    let t = target(&sim, &postgres_url(), "cmp_schedule").await;
    let engine = Engine::new(t.clone(), vec![Entity::Vacancies]);
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    engine.compare_all().await.expect("comparison");
    let first = last_full_compare(&t, Entity::Vacancies).await.expect("recorded");
    let task = run_once_more(&t, Duration::from_secs(3600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    task.abort();
    assert_eq!(last_full_compare(&t, Entity::Vacancies).await, Some(first), "not due: no comparison");
    let task = run_once_more(&t, Duration::from_secs(1)).await;
    let compared = eventually(Duration::from_secs(20), || async {
        last_full_compare(&t, Entity::Vacancies).await.is_some_and(|later| later > first)
    })
    .await;
    task.abort();
    assert!(compared, "due: compared again");
}
