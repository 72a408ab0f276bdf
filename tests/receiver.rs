//! The webhook receiver: the emulator delivers signed events to the operator's HTTP server, which
//! writes them to a real PostgreSQL; and how it resolves connections and keys without asking
//! Kubernetes or Carerix.

mod receiver_common;
mod sync_common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use carerix_operator::{
    carerix::Entity,
    metrics::Metrics,
    receiver::Limits,
    sync::{Settings, SyncManager, Target},
};
use carerix_sim::SimHandle;
use receiver_common::*;
use serde_json::{Map, json};
use sync_common::*;

struct Harness {
    sim: SimHandle,
    target: Target,
    rx: Rx,
    metrics: Arc<Metrics>,
    app_id: String,
}

async fn harness(pg_url: &str, name: &str, tweak: impl FnOnce(&mut carerix_sim::Config)) -> Harness {
    let sim = sim(150, tweak).await;
    let (kube, kube_requests) = counted_kube().await;
    let metrics = Arc::new(Metrics::new());
    let manager = Arc::new(SyncManager::new(kube.clone(), metrics.clone()));
    let rx = serve_receiver(kube, kube_requests, manager.clone(), metrics.clone(), Limits::default()).await;
    let app = sim.sim().create_application(TENANT, CLIENT_ID, "carerix-operator").await.expect("application");
    let mut target = target(&sim, pg_url, name).await;
    // Connection names are DNS names: the test's name with dashes.
    let name = name.replace('_', "-");
    target.connection = format!("test/{name}");
    rx.put(connection("test", &name, Some(&app.public_key), true));
    let settings = Settings {
        entities: vec![Entity::Candidates, Entity::Vacancies],
        interval: Duration::from_secs(3600),
        full_compare_interval: Duration::from_secs(3600),
    };
    manager.start(target.clone(), settings, "test", Some(app.public_key.clone()));
    let progress = manager.progress(&target.connection).expect("running");
    assert!(eventually(Duration::from_secs(60), || async { progress.initial_done() }).await, "initial sync");
    Harness { sim, target, rx, metrics, app_id: app.id }
}

impl Harness {
    fn webhook(&self, url: &str) {
        let body = json!({"_kind": "Webhook", "url": url,
            "filters": [{"eventType": "cremployee:updated"}, {"eventType": "cremployee:created"}]});
        self.sim.sim().create_webhook(TENANT, CLIENT_ID, &self.app_id, &body).expect("webhook");
    }

    fn receiver_url(&self) -> String {
        format!("{}/webhooks/{}", self.rx.base, self.target.connection)
    }

    fn candidate(&self, i: usize) -> u64 {
        self.sim.sim().list_records(TENANT, sim_entity(Entity::Candidates)).expect("records")[i]["_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id")
    }

    fn rename(&self, id: u64, name: &str) {
        let mut m = Map::new();
        m.insert("firstName".into(), json!(name));
        self.sim.sim().update_record(TENANT, sim_entity(Entity::Candidates), id, m).expect("update");
    }

    async fn first_name(&self, id: u64) -> Option<String> {
        rows(&self.target, Entity::Candidates)
            .await
            .get(&id.to_string())
            .and_then(|(_, r)| r["firstName"].as_str().map(String::from))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_signed_delivery_updates_the_row_within_seconds() {
    let h = harness(&postgres_url(), "rx_update", |_| {}).await;
    h.webhook(&h.receiver_url());
    let id = h.candidate(3);
    h.rename(id, "Webhooked");
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.first_name(id).await.as_deref() == Some("Webhooked")
        })
        .await,
        "the delivery reached the sink"
    );
    // The row is committed before the answer is counted.
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metrics.render().contains("receiver_deliveries_total{result=\"accepted\"}")
        })
        .await,
        "the delivery is counted as accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_bad_signature_is_refused_with_401_and_changes_nothing() {
    let h = harness(&postgres_url(), "rx_badsig", |_| {}).await;
    let id = h.candidate(4);
    let before = h.first_name(id).await;
    h.rename(id, "Forged");
    let body = json!({"id": "forged-1", "time": "2025-01-01T00:00:00Z", "type": "cremployee:updated",
        "applicationId": h.app_id, "webhookId": "x", "tenant": TENANT,
        "data": {"entityId": id.to_string(), "changedFields": ["firstname"]}})
    .to_string();
    let http = reqwest::Client::new();
    for sig in [Some("bm90IGEgc2lnbmF0dXJl"), None] {
        let mut req =
            http.post(h.receiver_url()).header("content-type", "application/json").body(body.clone());
        if let Some(s) = sig {
            req = req.header("Cx-Signature", s);
        }
        assert_eq!(req.send().await.expect("answer").status().as_u16(), 401);
    }
    assert_eq!(h.first_name(id).await, before);
    // A connection that does not exist gets the same answer, from the informer cache alone.
    let unknown = http
        .post(format!("{}/webhooks/test/nobody", h.rx.base))
        .header("Cx-Signature", "bm90IGEgc2lnbmF0dXJl")
        .body(body)
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status().as_u16(), 401);
    assert_eq!(h.rx.kube_requests.load(std::sync::atomic::Ordering::SeqCst), 0, "no Kubernetes request");
}

type Captured = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn capture_server() -> (String, Captured) {
    let got: Captured = Arc::default();
    let sink = got.clone();
    let app = Router::new().route(
        "/capture",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/capture", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_replayed_event_id_is_applied_once() {
    let h = harness(&postgres_url(), "rx_replay", |_| {}).await;
    let (url, got) = capture_server().await;
    h.webhook(&url);
    let id = h.candidate(5);
    h.rename(id, "Once");
    assert!(eventually(Duration::from_secs(10), || async { !got.lock().expect("lock").is_empty() }).await);
    let (headers, body) = got.lock().expect("lock")[0].clone();
    let sig = headers.get("cx-signature").and_then(|v| v.to_str().ok()).expect("signed").to_string();
    let http = reqwest::Client::new();
    let post = || {
        http.post(h.receiver_url())
            .header("content-type", "application/json")
            .header("Cx-Signature", sig.clone())
            .body(body.clone())
            .send()
    };
    assert_eq!(post().await.expect("answer").status().as_u16(), 200);
    assert_eq!(h.first_name(id).await.as_deref(), Some("Once"));
    // tamper with the row: a replay must not do the work again
    let client = h.target.pool.get().await.expect("connection");
    client
        .execute(
            &format!("UPDATE {} SET record = record || '{{\"firstName\":\"Tampered\"}}' WHERE connection = $1 AND id = $2", h.target.schema.entity(Entity::Candidates)),
            &[&h.target.connection, &id.to_string()],
        )
        .await
        .expect("tamper");
    assert_eq!(post().await.expect("answer").status().as_u16(), 200);
    assert_eq!(h.first_name(id).await.as_deref(), Some("Tampered"));
    let n: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE connection = $1",
                h.target.schema.table("processed_events")
            ),
            &[&h.target.connection],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    assert!(h.metrics.render().contains("result=\"duplicate\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn with_the_sink_down_a_delivery_gets_503_and_carerix_retry_lands_it_later() {
    let pg = OwnPostgres::start("rx-pg-stop");
    let h = harness(&pg.url, "rx_down", |c| {
        c.delivery.backoff = vec![Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3)];
        c.delivery.max_retries = 8;
    })
    .await;
    h.webhook(&h.receiver_url());
    let id = h.candidate(6);
    pg.stop();
    h.rename(id, "Retried");
    let log = || h.sim.sim().delivery_log();
    assert!(
        eventually(Duration::from_secs(20), || async {
            log().iter().any(|d| d.status_code.is_some_and(|s| s >= 500))
        })
        .await,
        "the receiver answers 5xx while the sink is down"
    );
    pg.restart();
    assert!(
        eventually(Duration::from_secs(40), || async {
            h.first_name(id).await.as_deref() == Some("Retried")
        })
        .await,
        "a retry lands the event once PostgreSQL is back"
    );
    // the row may also come back through the sync's own retry; the delivery's retry must land too
    assert!(
        eventually(Duration::from_secs(30), || async {
            log().iter().any(|d| d.status_code == Some(200) && d.attempt > 1)
        })
        .await,
        "Carerix's retry of the refused delivery is accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: hack/test.sh"]
async fn a_burst_of_events_is_coalesced_and_stays_within_the_tenant_rate_limit() {
    let h = harness(&postgres_url(), "rx_burst", |_| {}).await;
    h.webhook(&h.receiver_url());
    h.sim.sim().clear_logs();
    let ids: Vec<u64> = (10..70).map(|i| h.candidate(i)).collect();
    for (n, id) in ids.iter().enumerate() {
        h.rename(*id, &format!("Burst{n}"));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            let rows = rows(&h.target, Entity::Candidates).await;
            ids.iter().enumerate().all(|(n, id)| {
                rows.get(&id.to_string()).and_then(|(_, r)| r["firstName"].as_str())
                    == Some(&format!("Burst{n}"))
            })
        })
        .await,
        "every event of the burst reached the sink"
    );
    let log: Vec<_> =
        h.sim.sim().request_log().into_iter().filter(|r| r.operation.starts_with("graphql")).collect();
    assert!(log.iter().all(|r| r.status != 429), "no request was rate limited by Carerix");
    assert!(log.len() < ids.len() / 2, "{} fetches for {} events: bursts coalesce", log.len(), ids.len());
    for (i, r) in log.iter().enumerate() {
        let in_window =
            log[i..].iter().take_while(|o| o.time - r.time < chrono::Duration::seconds(1)).count();
        assert!(in_window <= 10, "{in_window} requests within one second");
    }
}

async fn post_signed(rx: &Rx, ns: &str, name: &str, body: &str, signature: &str) -> u16 {
    reqwest::Client::new()
        .post(rx.url(ns, name))
        .header("content-type", "application/json")
        .header("Cx-Signature", signature)
        .body(body.to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the receiver answers")
        .status()
        .as_u16()
}

fn kube_requests(rx: &Rx) -> usize {
    rx.kube_requests.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn a_connection_is_found_in_the_informer_cache_and_verified_with_the_key_in_its_status() {
    let rx = plain_receiver(|_| {}).await;
    let key = AppKey::new();
    rx.put(connection("team-a", "acme", Some(&key.pem), false));
    let body = payload("e1", "42");
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &key.sign(body.as_bytes())).await, 200);
    assert_eq!(rx.deliveries("ignored"), 1, "verified; this connection syncs nothing");
    assert_eq!(kube_requests(&rx), 0, "no Kubernetes request for a delivery");
    assert!(rx.rechecks().is_empty(), "a delivery that verifies asks for nothing");
}

#[tokio::test]
async fn a_connection_without_a_known_key_is_refused_and_rechecked_at_most_once_a_minute() {
    let rx = plain_receiver(|_| {}).await;
    let key = AppKey::new();
    rx.put(connection("team-a", "acme", None, false));
    let body = payload("e1", "42");
    for _ in 0..5 {
        assert_eq!(post_signed(&rx, "team-a", "acme", &body, &key.sign(body.as_bytes())).await, 401);
    }
    let rechecks = rx.rechecks();
    assert_eq!(rechecks.len(), 1, "one re-check for five refused deliveries: {rechecks:?}");
    assert_eq!((rechecks[0].name.as_str(), rechecks[0].namespace.as_deref()), ("acme", Some("team-a")));
    assert_eq!(rx.deliveries("no_known_key"), 5);
    // The reconciler publishes the key: the next delivery verifies.
    rx.put(connection("team-a", "acme", Some(&key.pem), false));
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &key.sign(body.as_bytes())).await, 200);
    assert_eq!(kube_requests(&rx), 0);
}

#[tokio::test]
async fn a_new_application_key_in_status_replaces_the_old_one() {
    let rx = plain_receiver(|_| {}).await;
    let (old, new) = (AppKey::new(), AppKey::new());
    rx.put(connection("team-a", "acme", Some(&old.pem), false));
    let body = payload("e1", "42");
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &new.sign(body.as_bytes())).await, 401);
    assert_eq!(rx.rechecks().len(), 1, "a signature the known key refuses asks for a re-check");
    rx.put(connection("team-a", "acme", Some(&new.pem), false));
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &new.sign(body.as_bytes())).await, 200);
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &old.sign(body.as_bytes())).await, 401);
}

#[tokio::test]
async fn an_unknown_connection_and_a_bad_signature_get_the_same_answer() {
    let rx = plain_receiver(|_| {}).await;
    let key = AppKey::new();
    rx.put(connection("team-a", "acme", Some(&key.pem), false));
    let body = payload("e1", "42");
    let forged = AppKey::new().sign(body.as_bytes());
    let known = post_signed(&rx, "team-a", "acme", &body, &forged).await;
    let unknown = post_signed(&rx, "team-a", "nobody", &body, &forged).await;
    let unsigned = reqwest::Client::new()
        .post(rx.url("team-a", "acme"))
        .body(body.clone())
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16();
    assert_eq!((known, unknown, unsigned), (401, 401, 401));
    assert_eq!(kube_requests(&rx), 0);
    assert_eq!(rx.rechecks().len(), 1, "only the existing connection is re-checked");
}

#[tokio::test]
async fn a_verified_delivery_for_a_synced_connection_this_replica_does_not_run_reads_its_secrets_only_then() {
    let rx = plain_receiver(|_| {}).await;
    let key = AppKey::new();
    rx.put(connection("team-a", "acme", Some(&key.pem), true));
    let body = payload("e1", "42");
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &AppKey::new().sign(body.as_bytes())).await, 401);
    assert_eq!(kube_requests(&rx), 0, "nothing is read for a forged delivery");
    // Signed: the receiver reads the credentials Secret (the stand-in API server refuses, so 503:
    // Carerix retries).
    assert_eq!(post_signed(&rx, "team-a", "acme", &body, &key.sign(body.as_bytes())).await, 503);
    assert!(kube_requests(&rx) > 0);
    assert_eq!(rx.deliveries("setup_failed"), 1);
}

#[tokio::test]
async fn probes_and_metrics_are_served_on_their_own_port_only() {
    let rx = plain_receiver(|_| {}).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let on_probes = reqwest::get(format!("{}{path}", rx.probes)).await.expect("answer");
        assert_eq!(on_probes.status().as_u16(), 200, "{path} on the probe port");
        let on_receiver = reqwest::get(format!("{}{path}", rx.base)).await.expect("answer");
        assert_eq!(on_receiver.status().as_u16(), 404, "{path} on the receiver port");
    }
}
