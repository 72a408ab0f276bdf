//! The data sync end to end, the way a user meets it: a CarerixConnection with `spec.sync`, the
//! operator as its own process, the emulator and a real PostgreSQL. The engine's correctness
//! under the hard cases is proven in `sync_engine` and `receiver`; this proves the wiring.

mod support;
mod sync_common;

use std::time::Duration;

use carerix_sim::{ClientConfig, Config, TenantConfig};
use serde_json::{Map, json};
use support::{
    control_plane,
    e2e::{Operator, apply_connection, condition, get_connection, put_secret, synced_spec, wait_condition},
};

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL reachable");
    tokio::spawn(conn);
    client
}

/// Changes a candidate's first name in Carerix (which emits a `cremployee:updated` event).
fn set_first_name(sim: &carerix_sim::SimHandle, id: &str, value: &str) {
    let mut change = Map::new();
    change.insert("firstName".into(), json!(value));
    let candidates = carerix_sim::Entity::parse("candidates").expect("entity");
    sim.sim().update_record("acme", candidates, id.parse().expect("numeric"), change).expect("update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and PostgreSQL: hack/test.sh"]
async fn a_connection_with_sync_fills_postgresql_reports_progress_and_deliveries_keep_it_fresh() {
    let cp = control_plane();
    let client = cp.client().await;
    let mut config = Config::for_tests();
    config.records_per_entity = 150;
    config.same_second_burst = 120;
    // A slow tenant, so the initial pass lasts long enough to be seen in the status.
    config.rate_limit_per_sec = 4;
    config.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: true });
    config.clients.push(ClientConfig { tenant: "acme".into(), client_id: "c".into(), secret: "s".into() });
    let sim = carerix_sim::spawn(config).await.expect("emulator");
    let url = sim.base_url().as_str().trim_end_matches('/').to_string();
    let db_url = sync_common::postgres_url();

    let ns = cp.namespace("sync");
    let schema = format!("e2e_{}", &ns[ns.len() - 8..]);
    put_secret(&client, &ns, "creds", &[("clientId", "c"), ("clientSecret", "s")]).await;
    put_secret(&client, &ns, "db", &[("url", &db_url)]).await;
    let _op = Operator::start(cp, &[&ns], &["--carerix-rate-limit", "4"]);
    let mut spec = synced_spec("acme", "creds", &url, &schema, &["cremployee:updated"]);
    spec["interval"] = json!("1m");
    spec["sync"]["interval"] = json!("1m");
    apply_connection(&client, &ns, "acme", spec).await;

    // First pass: progress in the status, Reconciling, not Ready yet.
    let obj = wait_condition(
        &client,
        &ns,
        "acme",
        "DataSynced",
        "False",
        Some("InitialSyncInProgress"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(condition(&obj, "Ready").map(|c| c.0).as_deref(), Some("False"));
    assert_eq!(condition(&obj, "Reconciling").map(|c| c.1).as_deref(), Some("InitialSyncInProgress"));

    let obj = wait_condition(&client, &ns, "acme", "Ready", "True", None, Duration::from_secs(240)).await;
    assert_eq!(condition(&obj, "DataSynced").map(|c| c.0).as_deref(), Some("True"));
    let sync = obj.status.and_then(|s| s.sync).expect("status.sync");
    assert_eq!(sync.entities.len(), 7);
    assert!(sync.entities.iter().all(|e| e.phase == "Incremental" && e.watermark.is_some()), "{sync:?}");

    // The sink holds what Carerix holds, under this connection's key.
    let db = pg(&db_url).await;
    let connection = format!("{ns}/acme");
    let mut expected_total = 0;
    for (table, kind) in
        [("candidates", "candidates"), ("matches", "matches"), ("publications", "publications")]
    {
        let records = sim
            .sim()
            .list_records("acme", carerix_sim::Entity::parse(kind).expect("entity"))
            .expect("records");
        let rows = db
            .query_one(
                &format!("select count(*) from {schema}.{table} where connection = $1"),
                &[&connection],
            )
            .await
            .expect("count");
        assert_eq!(rows.get::<_, i64>(0) as usize, records.len(), "{table}");
        expected_total += records.len();
    }
    assert!(expected_total > 0);
    assert!(sync.records.unwrap_or(0) > 0);

    // A change in Carerix arrives through a signed delivery to the operator's receiver.
    let candidates = sim
        .sim()
        .list_records("acme", carerix_sim::Entity::parse("candidates").expect("entity"))
        .expect("records");
    let id = candidates[0]["_id"].as_str().expect("id").to_string();
    set_first_name(&sim, &id, "Delivered");
    let sql =
        format!("select record->>'firstName' from {schema}.candidates where connection = $1 and id = $2");
    let mut fresh = false;
    for _ in 0..40 {
        let row = db.query_one(&sql, &[&connection, &id]).await.expect("row");
        if row.get::<_, Option<String>>(0).as_deref() == Some("Delivered") {
            fresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fresh, "the delivery did not update the row within 10 s (the sync interval is 1 m)");
    // The row is written before the answer reaches the emulator's log: wait for the log.
    support::eventually("the receiver's 200 in the emulator's delivery log", Duration::from_secs(10), || {
        let accepted = sim
            .sim()
            .delivery_log()
            .iter()
            .any(|d| d.status_code == Some(200) && d.url.contains("/webhooks/"));
        std::future::ready(accepted.then_some(()))
    })
    .await;
    assert!(get_connection(&client, &ns, "acme").await.is_some());

    // Suspended: the sync stops and deliveries wait; nothing reaches Carerix.
    let api: kube::Api<carerix_operator::api::CarerixConnection> = kube::Api::namespaced(client.clone(), &ns);
    api.patch(
        "acme",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspend");
    wait_condition(&client, &ns, "acme", "Ready", "False", Some("Suspended"), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sim.sim().clear_logs();
    set_first_name(&sim, &id, "While suspended");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answered: Vec<Option<u16>> = sim.sim().delivery_log().iter().map(|d| d.status_code).collect();
    assert!(
        !answered.is_empty() && answered.iter().all(|s| *s == Some(503)),
        "deliveries wait: {answered:?}"
    );
    let requests = sim.sim().request_log();
    assert!(requests.is_empty(), "a suspended connection reached Carerix: {requests:?}");
}
