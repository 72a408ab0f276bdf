//! Progress without a reconcile storm: during an initial sync of tens of seconds the operator
//! writes progress into the status every few seconds, but does not answer its own status writes
//! with a pass (each pass calls Carerix). Counted on the operator's `/metrics` and in the
//! emulator's request log, with the real API server, the operator as its own process and
//! PostgreSQL.

mod support;
mod sync_common;

use std::time::{Duration, Instant};

use carerix_operator::controller::status::PROGRESS_INTERVAL;
use carerix_sim::{ClientConfig, Config, Readings, TenantConfig};
use support::{
    control_plane,
    e2e::{Operator, apply_connection, condition, get_connection, put_secret, synced_spec, wait_condition},
    eventually,
};

/// `carerix_operator_reconciles_total` on the operator's /metrics.
async fn reconciles(op: &Operator) -> u64 {
    let (_, text) = op.get("/metrics").await.expect("/metrics answers");
    text.lines()
        .find_map(|l| l.strip_prefix("carerix_operator_reconciles_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn count(sim: &carerix_sim::SimHandle, operation: &str) -> usize {
    sim.sim().request_log().iter().filter(|r| r.operation == operation).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and PostgreSQL: hack/test.sh"]
async fn an_initial_sync_reports_progress_without_a_reconcile_storm_and_only_a_request_reconciles() {
    let cp = control_plane();
    let client = cp.client().await;
    let mut config = Config::for_tests();
    config.records_per_entity = 400;
    config.same_second_burst = 0;
    // Small pages from a slow tenant: the initial pass takes tens of seconds.
    config.readings = Readings { page_cap: Some(25), ..Readings::default() };
    config.rate_limit_per_sec = 4;
    config.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: true });
    config.clients.push(ClientConfig { tenant: "acme".into(), client_id: "c".into(), secret: "s".into() });
    let sim = carerix_sim::spawn(config).await.expect("emulator");
    let url = sim.base_url().as_str().trim_end_matches('/').to_string();

    let ns = cp.namespace("storm");
    let schema = format!("storm_{}", &ns[ns.len() - 8..]);
    put_secret(&client, &ns, "creds", &[("clientId", "c"), ("clientSecret", "s")]).await;
    put_secret(&client, &ns, "db", &[("url", &sync_common::postgres_url())]).await;
    let op = Operator::start(cp, &[&ns], &["--carerix-rate-limit", "4"]);
    eventually("the operator is ready", Duration::from_secs(30), || async {
        (op.get("/readyz").await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    let started = Instant::now();
    apply_connection(
        &client,
        &ns,
        "acme",
        synced_spec("acme", "creds", &url, &schema, &["cremployee:updated"]),
    )
    .await;

    // The progress moves in the status while the initial sync runs.
    let first = wait_condition(
        &client,
        &ns,
        "acme",
        "DataSynced",
        "False",
        Some("InitialSyncInProgress"),
        Duration::from_secs(60),
    )
    .await;
    let done_at = |obj: &carerix_operator::api::CarerixConnection| {
        obj.status.as_ref().and_then(|s| s.sync.as_ref()).map_or(0, |s| s.records.unwrap_or(0))
    };
    let mut seen_progress = vec![done_at(&first)];
    let ready = loop {
        let obj = get_connection(&client, &ns, "acme").await.expect("the connection");
        if condition(&obj, "Ready").map(|c| c.0).as_deref() == Some("True") {
            break obj;
        }
        seen_progress.push(done_at(&obj));
        assert!(started.elapsed() < Duration::from_secs(300), "not Ready within 5 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    let passes = reconciles(&op).await;
    seen_progress.dedup();
    assert!(
        elapsed > 3 * PROGRESS_INTERVAL,
        "the initial sync took {elapsed:?}: too short to tell a storm from progress"
    );
    assert!(seen_progress.len() >= 3, "the status showed progress: {seen_progress:?}");
    // A pass at the progress interval, plus the first one, the finalizer's, the end of the
    // initial pass and one or two around it.
    let bound = elapsed.as_secs() / PROGRESS_INTERVAL.as_secs() + 5;
    let listings = count(&sim, "webhooks:list");
    eprintln!("initial sync: {passes} reconciles and {listings} webhook listings in {elapsed:?}");
    assert!(
        passes <= bound,
        "{passes} reconciles in {elapsed:?} of initial sync (at most {bound}): the operator answers its own status writes"
    );
    assert_eq!(count(&sim, "applications:create"), 1, "{:?}", sim.sim().request_log().len());
    assert_eq!(count(&sim, "webhooks:create"), 1);
    assert!(listings as u64 <= passes, "{listings} webhook listings for {passes} reconciles");
    assert_eq!(condition(&ready, "DataSynced").map(|c| c.0).as_deref(), Some("True"));

    // Once synced, a status write (here by a person) starts no pass...
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = reconciles(&op).await;
    let patched = cp.kubectl(&[
        "patch",
        "carerixconnection",
        "acme",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"lastHandledReconcileAt":"written by hand"}}"#,
    ]);
    assert!(patched.status.success(), "{}", String::from_utf8_lossy(&patched.stderr));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reconciles(&op).await, before, "a status write started a reconcile");
    let obj = get_connection(&client, &ns, "acme").await.expect("the connection");
    assert_eq!(
        obj.status.as_ref().and_then(|s| s.last_handled_reconcile_at.as_deref()),
        Some("written by hand")
    );

    // ... and `kubectl carerix reconcile` (the requested-at annotation) starts one at once.
    let annotated = cp.kubectl(&[
        "annotate",
        "--overwrite",
        "carerixconnection",
        "acme",
        "-n",
        &ns,
        &format!("{}=now-1", carerix_operator::api::RECONCILE_REQUESTED_AT),
    ]);
    assert!(annotated.status.success(), "{}", String::from_utf8_lossy(&annotated.stderr));
    eventually("the requested reconcile is handled", Duration::from_secs(20), || async {
        let obj = get_connection(&client, &ns, "acme").await?;
        (obj.status?.last_handled_reconcile_at.as_deref() == Some("now-1")).then_some(())
    })
    .await;
    assert!(reconciles(&op).await > before);
}
