//! The sync engine against the emulator and a real PostgreSQL (no Kubernetes needed).

mod sync_common;

use std::{collections::BTreeSet, time::Duration};

use carerix_operator::{carerix::Entity, sync::Engine};
use serde_json::{Map, json};
use sync_common::*;

fn fields(k: &str, v: &str) -> Map<String, serde_json::Value> {
    let mut m = Map::new();
    m.insert(k.into(), json!(v));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_full_sync_of_every_entity_ends_with_the_sink_equal_to_carerix() {
    let sim = sim(250, |_| {}).await;
    let t = target(&sim, &postgres_url(), "full").await;
    let engine = Engine::new(t.clone(), Entity::ALL.to_vec());
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    engine.compare_all().await.expect("full comparison");
    for e in Entity::ALL {
        assert_equal(&sim, &t, e).await;
    }
    assert!(engine.progress().initial_done());
    // a second engine on the same schema migrates again without harm and reads nothing new twice
    let again = Engine::new(t.clone(), Entity::ALL.to_vec());
    again.prepare().await.expect("migrations are idempotent");
    assert!(again.progress().initial_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn records_changed_created_and_deleted_during_the_sync_are_neither_skipped_nor_stale() {
    let sim = sim(600, |_| {}).await;
    let t = target(&sim, &postgres_url(), "churn").await;
    let entities = vec![Entity::Candidates, Entity::Vacancies, Entity::Matches];
    let engine = Engine::new(t.clone(), entities.clone());
    engine.prepare().await.expect("migrations");
    let before: BTreeSet<String> = sim
        .sim()
        .list_records(TENANT, sim_entity(Entity::Candidates))
        .expect("records")
        .iter()
        .map(|r| r["_id"].as_str().expect("id").to_string())
        .collect();
    let s = sim.sim_arc();
    let ids: Vec<u64> = before.iter().map(|i| i.parse().expect("numeric")).collect();
    let mutator = tokio::spawn(async move {
        let mut touched = BTreeSet::new();
        for round in 0..30u64 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let id = ids[(round as usize * 37) % ids.len()];
            touched.insert(id.to_string());
            match round % 4 {
                0 | 1 => {
                    s.update_record(
                        TENANT,
                        sim_entity(Entity::Candidates),
                        id,
                        fields("firstName", &format!("R{round}")),
                    )
                    .expect("update");
                }
                2 => {
                    s.soft_delete_record(TENANT, sim_entity(Entity::Candidates), id).expect("soft delete");
                }
                _ => {
                    s.hard_delete_record(TENANT, sim_entity(Entity::Candidates), id).expect("hard delete");
                }
            }
            s.create_record(TENANT, sim_entity(Entity::Candidates), fields("firstName", "New"))
                .expect("create");
        }
        touched
    });
    engine.pass().await.expect("pass during changes");
    let touched = mutator.await.expect("mutator");
    // nothing that stayed put was skipped by the pass that ran during the changes
    let rows = rows(&t, Entity::Candidates).await;
    for id in before.difference(&touched) {
        assert!(rows.contains_key(id), "candidate {id} was skipped");
    }
    engine.pass().await.expect("incremental pass");
    engine.compare_all().await.expect("full comparison");
    for e in entities {
        assert_equal(&sim, &t, e).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn more_records_in_one_second_than_a_page_and_the_repeated_autumn_hour_are_all_synced() {
    let sim = sim(300, |c| c.same_second_burst = 250).await;
    let records = sim.sim().list_records(TENANT, sim_entity(Entity::Candidates)).expect("records");
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for r in &records {
        *per_second.entry(r["modificationDate"].as_str().expect("date").to_string()).or_default() += 1;
    }
    assert!(
        per_second.values().any(|n| *n > 100),
        "the emulator seeds a same-second burst larger than a page"
    );
    let t = target(&sim, &postgres_url(), "dst").await;
    let engine = Engine::new(t.clone(), vec![Entity::Candidates, Entity::Vacancies]);
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("pass");
    assert_equal(&sim, &t, Entity::Candidates).await;
    assert_equal(&sim, &t, Entity::Vacancies).await;
    // the records in both passes of the repeated hour are there (same wall-clock strings)
    let repeated: Vec<_> = sim
        .sim()
        .list_records(TENANT, sim_entity(Entity::Vacancies))
        .expect("records")
        .into_iter()
        .filter(|r| {
            carerix_operator::sync::keyset::is_ambiguous(r["modificationDate"].as_str().unwrap_or(""))
        })
        .collect();
    assert!(repeated.len() >= 6, "the emulator seeds records in both passes of the repeated hour");
    let rows = rows(&t, Entity::Vacancies).await;
    for r in repeated {
        assert!(rows.contains_key(r["_id"].as_str().expect("id")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn soft_and_hard_deletes_end_up_marked_deleted() {
    let sim = sim(120, |_| {}).await;
    let t = target(&sim, &postgres_url(), "deletes").await;
    let entities = vec![Entity::Candidates, Entity::Vacancies, Entity::Matches];
    let engine = Engine::new(t.clone(), entities.clone());
    engine.prepare().await.expect("migrations");
    engine.pass().await.expect("initial pass");
    let first = |e: Entity| -> u64 {
        sim.sim().list_records(TENANT, sim_entity(e)).expect("records")[5]["_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id")
    };
    let (soft, hard, matched) = (first(Entity::Candidates), first(Entity::Vacancies), first(Entity::Matches));
    sim.sim().soft_delete_record(TENANT, sim_entity(Entity::Candidates), soft).expect("soft delete");
    sim.sim().hard_delete_record(TENANT, sim_entity(Entity::Vacancies), hard).expect("hard delete");
    // CRMatch has no deleted field: removing a match is a hard delete
    sim.sim().soft_delete_record(TENANT, sim_entity(Entity::Matches), matched).expect("match removed");
    engine.pass().await.expect("incremental pass");
    assert!(rows(&t, Entity::Candidates).await[&soft.to_string()].0, "soft delete arrives with norestrict");
    engine.compare_all().await.expect("full comparison");
    assert!(rows(&t, Entity::Vacancies).await[&hard.to_string()].0, "hard delete found by the comparison");
    assert!(rows(&t, Entity::Matches).await[&matched.to_string()].0, "removed match found by the comparison");
    for e in entities {
        assert_equal(&sim, &t, e).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_sync_killed_mid_way_resumes_where_it_was_reading_at_most_one_page_twice() {
    let sim = sim(1000, |_| {}).await;
    let t = target(&sim, &postgres_url(), "resume").await;
    let engine = Engine::new(t.clone(), vec![Entity::Candidates]);
    engine.prepare().await.expect("migrations");
    sim.sim().clear_logs();
    let pages = || {
        sim.sim()
            .request_log()
            .iter()
            .filter(|r| r.operation.contains("crEmployeePage") && r.status == 200)
            .count()
    };
    let running = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.sync_entity(Entity::Candidates).await })
    };
    assert!(eventually(Duration::from_secs(30), || async { pages() >= 4 }).await, "the sync reads pages");
    running.abort();
    let _ = running.await;
    let resumed = Engine::new(t.clone(), vec![Entity::Candidates]);
    resumed.prepare().await.expect("state loads");
    resumed.sync_entity(Entity::Candidates).await.expect("resumed pass");
    assert_equal(&sim, &t, Entity::Candidates).await;
    let n = sim.sim().list_records(TENANT, sim_entity(Entity::Candidates)).expect("records").len();
    let uninterrupted = n / 100 + 1;
    assert!(
        pages() <= uninterrupted + 1,
        "read {} pages, an uninterrupted sync reads {uninterrupted}",
        pages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn postgresql_stopped_mid_sync_reports_sink_unavailable_and_the_sync_resumes_when_it_is_back() {
    let pg = OwnPostgres::start("sync-pg-stop");
    let sim = sim(1500, |_| {}).await;
    let t = target(&sim, &pg.url, "pgstop").await;
    let engine = Engine::new(t.clone(), vec![Entity::Candidates, Entity::Vacancies]);
    let progress = engine.progress();
    let task = tokio::spawn(engine.run(Duration::from_secs(1), Duration::from_secs(3600), || {}));
    assert!(
        eventually(Duration::from_secs(60), || async {
            progress.entities().values().map(|e| e.records).sum::<i64>() >= 300
        })
        .await,
        "the sync makes progress"
    );
    pg.stop();
    assert!(
        eventually(Duration::from_secs(60), || async {
            progress
                .failure()
                .is_some_and(|f| f.reason == "SinkUnavailable" && f.message.contains("PostgreSQL"))
        })
        .await,
        "the sync reports SinkUnavailable: {:?}",
        progress.failure()
    );
    pg.restart();
    assert!(
        eventually(Duration::from_secs(90), || async {
            progress.failure().is_none() && progress.initial_done()
        })
        .await,
        "the sync resumes and finishes: {:?}",
        progress.failure()
    );
    task.abort();
    assert_equal(&sim, &t, Entity::Candidates).await;
    assert_equal(&sim, &t, Entity::Vacancies).await;
}
