//! The Carerix client against the emulator, over real HTTP: authentication and refresh,
//! the 401 retry, 429 with backoff, paging, owner rules, signed deliveries, faults.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use carerix_operator::{
    carerix::{CarerixClient, Credentials, Entity, NewWebhook, PageRequest, RateLimiter},
    receiver::{parse_public_key, verify_signature},
};
use carerix_sim::{ClientConfig, Config, Fault, FaultKind, SimHandle, TenantConfig};
use serde_json::{Map, json};
use tokio::sync::Mutex;

async fn sim(tweak: impl FnOnce(&mut Config)) -> SimHandle {
    let mut config = Config::for_tests();
    config.records_per_entity = 20;
    config.same_second_burst = 0;
    config.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: true });
    for (id, secret) in [("alice", "alice-secret"), ("bob", "bob-secret")] {
        config.clients.push(ClientConfig {
            tenant: "acme".into(),
            client_id: id.into(),
            secret: secret.into(),
        });
    }
    tweak(&mut config);
    carerix_sim::spawn(config).await.expect("the emulator starts")
}

fn client(sim: &SimHandle, id: &str, secret: &str, per_sec: u32) -> CarerixClient {
    let base = sim.base_url().as_str().trim_end_matches('/').to_string();
    CarerixClient::builder()
        .identity_url(base.clone())
        .api_url(base)
        .tenant("acme")
        .credentials(Credentials::new(id, secret))
        .rate_limiter(RateLimiter::new(per_sec))
        .build()
        .expect("a client")
}

fn first_page() -> PageRequest {
    PageRequest { qualifier: None, page: 0, size: 10, sort: vec![], norestrict: false }
}

fn operations(sim: &SimHandle) -> Vec<(String, u16)> {
    sim.sim().request_log().into_iter().map(|r| (r.operation, r.status)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_fetched_once_reused_and_refreshed_before_it_expires() {
    let sim = sim(|c| c.token_ttl = Duration::from_secs(3)).await;
    let cx = client(&sim, "alice", "alice-secret", 10);
    let info = cx.token_info().await.expect("a token");
    assert!(info.scopes.iter().any(|s| s == "urn:cx/webhooks:data:manage"), "{:?}", info.scopes);
    cx.graphql().page(Entity::Candidates, &first_page()).await.expect("a page");
    cx.graphql().page(Entity::Vacancies, &first_page()).await.expect("a page");
    let tokens = |sim: &SimHandle| operations(sim).iter().filter(|(op, _)| op == "token").count();
    assert_eq!(tokens(&sim), 1, "the token is cached");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cx.graphql().page(Entity::Candidates, &first_page()).await.expect("a page after expiry");
    assert_eq!(tokens(&sim), 2, "refreshed once");
    assert!(
        operations(&sim).iter().all(|(_, status)| *status != 401),
        "refreshed before a 401: {:?}",
        operations(&sim)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcilers_and_the_syncs_clients_of_a_connection_share_one_token() {
    let sim = sim(|_| {}).await;
    let sync = client(&sim, "alice", "alice-secret", 10);
    let reconciler =
        sync.with_retry_policy(carerix_operator::controller::context::reconciler_retry_policy(1));
    sync.graphql().page(Entity::Candidates, &first_page()).await.expect("a page");
    reconciler.graphql().page(Entity::Vacancies, &first_page()).await.expect("a page");
    let tokens = operations(&sim).iter().filter(|(op, _)| op == "token").count();
    assert_eq!(tokens, 1, "one token for both: {:?}", operations(&sim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_drops_the_token_and_retries_once() {
    let sim = sim(|_| {}).await;
    let cx = client(&sim, "alice", "alice-secret", 10);
    cx.graphql().page(Entity::Candidates, &first_page()).await.expect("a page");
    sim.sim().expire_tokens();
    cx.graphql().page(Entity::Candidates, &first_page()).await.expect("a page after the token was revoked");
    let ops = operations(&sim);
    let tail: Vec<_> = ops[ops.len() - 3..].to_vec();
    assert_eq!(
        tail,
        vec![
            ("graphql:crEmployeePage".to_string(), 401),
            ("token".to_string(), 200),
            ("graphql:crEmployeePage".to_string(), 200)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_an_invalid_client_error_that_names_no_secret() {
    let sim = sim(|_| {}).await;
    let cx = client(&sim, "alice", "not-the-secret", 10);
    let err = cx.token_info().await.expect_err("refused");
    assert_eq!(err.reason(), "InvalidClient");
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_retry_after_and_a_5xx_burst_is_survived() {
    let sim = sim(|_| {}).await;
    let cx = client(&sim, "alice", "alice-secret", 10);
    cx.token_info().await.expect("a token");
    sim.sim().inject_fault(Fault {
        kind: FaultKind::RateLimit,
        count: Some(1),
        path_prefix: Some("/graphql".into()),
    });
    cx.graphql().page(Entity::Candidates, &first_page()).await.expect("succeeds after the 429");
    let log = sim.sim().request_log();
    let limited = log.iter().find(|r| r.status == 429).expect("a 429");
    let next =
        log.iter().find(|r| r.seq > limited.seq && r.operation.starts_with("graphql")).expect("a retry");
    assert!(next.status == 200);
    assert!(
        (next.time - limited.time).num_milliseconds() >= 900,
        "Retry-After: 1 was not honoured ({} ms)",
        (next.time - limited.time).num_milliseconds()
    );

    sim.sim().inject_fault(Fault {
        kind: FaultKind::Status { status: 503 },
        count: Some(2),
        path_prefix: Some("/webhooks".into()),
    });
    cx.webhooks().list_applications().await.expect("survives two 503s");
    sim.sim().inject_fault(Fault { kind: FaultKind::Status { status: 503 }, count: None, path_prefix: None });
    let err = cx.webhooks().list_applications().await.expect_err("a lasting outage surfaces");
    assert!(err.is_retryable());
    assert_eq!(err.status(), Some(503));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_thousands_of_records_misses_none() {
    let sim = sim(|c| {
        c.records_per_entity = 2500;
        c.rate_limit_per_sec = 1000;
    })
    .await;
    let cx = client(&sim, "alice", "alice-secret", 1000);
    let mut seen = BTreeSet::new();
    let mut page = 0;
    loop {
        let req = PageRequest {
            qualifier: None,
            page,
            size: 100,
            sort: vec![("_id".into(), carerix_operator::carerix::Direction::Asc)],
            norestrict: true,
        };
        let p = cx.graphql().page(Entity::Candidates, &req).await.expect("a page");
        for item in &p.items {
            assert!(seen.insert(item["_id"].as_str().expect("_id").to_string()), "a record came twice");
        }
        if p.last || p.items.is_empty() {
            break;
        }
        page += 1;
    }
    let all: BTreeSet<String> = sim
        .sim()
        .list_records("acme", carerix_sim::Entity::parse("candidates").expect("entity"))
        .expect("records")
        .iter()
        .map(|r| r["_id"].as_str().expect("_id").to_string())
        .collect();
    assert_eq!(all.len(), 2500);
    assert_eq!(seen, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_application_can_be_read_but_not_deleted() {
    let sim = sim(|_| {}).await;
    let alice = client(&sim, "alice", "alice-secret", 10);
    let bob = client(&sim, "bob", "bob-secret", 10);
    let app = alice.webhooks().create_application("alice-app").await.expect("created");
    assert_eq!(app.created_by.as_deref(), Some("alice"));
    let listed = bob.webhooks().list_applications().await.expect("read: all");
    assert!(listed.iter().any(|a| a.id == app.id && a.created_by.as_deref() == Some("alice")));
    let err = bob.webhooks().delete_application(&app.id).await.expect_err("delete: owner");
    assert!(err.is_forbidden(), "{err}");
    assert!(!err.is_retryable());
    alice.webhooks().delete_application(&app.id).await.expect("the owner may");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_with_the_applications_published_key() {
    let sim = sim(|_| {}).await;
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().await.push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cx = client(&sim, "alice", "alice-secret", 10);
    let application = cx.webhooks().create_application("signed").await.expect("app");
    let hook = NewWebhook {
        url: format!("http://{addr}/hook"),
        event_types: vec!["cremployee:updated".into()],
        custom_headers: vec![("x-api-key".into(), "k".into())],
    };
    cx.webhooks().create_webhook(&application.id, &hook).await.expect("webhook");
    let listed = cx.webhooks().list_applications().await.expect("apps");
    let pem = listed
        .iter()
        .find(|a| a.id == application.id)
        .and_then(|a| a.public_key.clone())
        .expect("published key");
    let key = parse_public_key(&pem).expect("a PEM public key");

    let id = sim.sim().list_records("acme", carerix_sim::Entity::parse("candidates").expect("e")).expect("r")
        [0]["_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("numeric");
    let mut change = Map::new();
    change.insert("lastName".into(), json!("Signed"));
    sim.sim()
        .update_record("acme", carerix_sim::Entity::parse("candidates").expect("e"), id, change)
        .expect("update");
    let mut delivery = None;
    for _ in 0..50 {
        if let Some(d) = received.lock().await.first().cloned() {
            delivery = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (headers, body) = delivery.expect("a delivery arrived");
    let signature = headers.get("cx-signature").and_then(|v| v.to_str().ok()).expect("Cx-Signature");
    assert!(verify_signature(&key, &body, signature), "the signature verifies with the published key");
    let mut tampered = body.to_vec();
    tampered[0] ^= 1;
    assert!(!verify_signature(&key, &tampered, signature), "and nothing else verifies");
    assert_eq!(headers.get("cx-payload-schema-version").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(headers.get("x-api-key").and_then(|v| v.to_str().ok()), Some("k"));
    let payload: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(payload["type"], "cremployee:updated");
    assert_eq!(payload["data"]["entityId"], id.to_string());
}
