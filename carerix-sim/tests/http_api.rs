//! End-to-end tests over real HTTP against `carerix_sim::spawn`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use carerix_sim::{ClientConfig, Config, Entity, Fault, FaultKind, SimHandle, TenantConfig};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde_json::{Value, json};
use sha2::Sha256;

async fn start(activated: bool, tweak: impl FnOnce(&mut Config)) -> SimHandle {
    let mut c = Config::for_tests();
    c.records_per_entity = 60;
    c.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: activated });
    c.clients.push(ClientConfig {
        tenant: "acme".into(),
        client_id: "demo-client".into(),
        secret: "demo-secret".into(),
    });
    tweak(&mut c);
    carerix_sim::spawn(c).await.expect("spawn")
}

fn url(h: &SimHandle, path: &str) -> String {
    h.base_url().join(path).expect("url").to_string()
}

async fn token_for(h: &SimHandle, id: &str, secret: &str) -> String {
    let r = reqwest::Client::new()
        .post(url(h, "auth/realms/acme/protocol/openid-connect/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", id), ("client_secret", secret)])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.expect("json")["access_token"].as_str().expect("token").to_string()
}

async fn token(h: &SimHandle) -> String {
    token_for(h, "demo-client", "demo-secret").await
}

async fn gql(h: &SimHandle, token: &str, query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(h, "graphql/v1/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query}))
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn a_token_is_issued_for_both_client_auth_methods() {
    let h = start(true, |_| {}).await;
    let c = reqwest::Client::new();
    let r = c
        .post(url(&h, "auth/realms/acme/protocol/openid-connect/token"))
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 300);
    assert_eq!(v["refresh_expires_in"], 0);
    assert_eq!(v["not-before-policy"], 0);
    assert!(v["scope"].as_str().expect("scope").contains("urn:cx/webhooks:data:manage"));
    let t = token(&h).await;
    assert!(t.starts_with("eyJ"));
    let jwks: Value = c
        .get(url(&h, "auth/realms/acme/protocol/openid-connect/certs"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    let disco: Value = c
        .get(url(&h, "auth/realms/acme/.well-known/openid-configuration"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(
        disco["token_endpoint"]
            .as_str()
            .expect("te")
            .ends_with("/auth/realms/acme/protocol/openid-connect/token")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_token_is_refused_for_a_wrong_secret_a_bad_scope_or_grant_and_a_revoked_client() {
    let h = start(true, |_| {}).await;
    let c = reqwest::Client::new();
    let u = url(&h, "auth/realms/acme/protocol/openid-connect/token");
    let send = |form: Vec<(&'static str, &'static str)>| c.post(&u).form(&form).send();
    let r = send(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "demo-client"),
        ("client_secret", "nope"),
    ])
    .await
    .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.expect("json")["error"], "invalid_client");
    let r = send(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "demo-client"),
        ("client_secret", "demo-secret"),
        ("scope", "urn:cx/bogus:data:manage"),
    ])
    .await
    .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.expect("json")["error"], "invalid_scope");
    let r = send(vec![
        ("grant_type", "password"),
        ("client_id", "demo-client"),
        ("client_secret", "demo-secret"),
    ])
    .await
    .expect("send");
    assert_eq!(r.json::<Value>().await.expect("json")["error"], "unsupported_grant_type");
    let old = token(&h).await;
    h.sim().revoke_client("demo-client").expect("revoke");
    let r = send(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "demo-client"),
        ("client_secret", "demo-secret"),
    ])
    .await
    .expect("send");
    assert_eq!(r.status(), 401);
    // issued tokens stay valid after revocation
    assert_eq!(gql(&h, &old, "{ crCompanyPage { totalElements } }").await.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn graphql_needs_a_valid_token_and_expired_tokens_get_401() {
    let h = start(true, |_| {}).await;
    let r = gql(&h, "garbage", "{ crEmployeePage { totalElements } }").await;
    assert_eq!(r.status(), 401);
    let r = reqwest::Client::new()
        .post(url(&h, "graphql/v1/graphql"))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    let t = token(&h).await;
    assert_eq!(gql(&h, &t, "{ crEmployeePage { totalElements } }").await.status(), 200);
    h.sim().expire_tokens();
    assert_eq!(gql(&h, &t, "{ crEmployeePage { totalElements } }").await.status(), 401);
    let t2 = token(&h).await;
    assert_eq!(gql(&h, &t2, "{ crEmployeePage { totalElements } }").await.status(), 200);
    h.shutdown().await;
}

#[tokio::test]
async fn a_page_query_returns_records_and_page_metadata() {
    let h = start(true, |_| {}).await;
    let t = token(&h).await;
    let q = r#"{ crEmployeePage(norestrict: true, qualifier: "modificationDate >= (NSCalendarDate) '2000-01-01 00:00:00'",
        pageable: {page: 0, size: 25, sort: [{property: "modificationDate", direction: ASC}]}) {
        first last numberOfElements page size sort totalElements totalPages
        items { _id _kind employeeID firstName lastName emailAddress visitCity creationDate modificationDate deleted } } }"#;
    let v: Value = gql(&h, &t, q).await.json().await.expect("json");
    let p = &v["data"]["crEmployeePage"];
    assert_eq!(p["totalElements"], 60);
    assert_eq!(p["size"], 25);
    assert_eq!(p["totalPages"], 3);
    assert_eq!(p["items"].as_array().expect("items").len(), 25);
    assert_eq!(p["items"][0]["_kind"], "CREmployee");
    let all = h.sim().list_records("acme", Entity::Employee).expect("records");
    assert_eq!(all.len(), 60);
    let q = r#"{ crContact(_id: "1") { _id } crContactPage(pageable: {size: 1}) { items { _id toCompany { _id } } } }"#;
    let v: Value = gql(&h, &t, q).await.json().await.expect("json");
    assert!(v["data"]["crContact"].is_null());
    assert!(v["data"]["crContactPage"]["items"][0]["toCompany"]["_id"].is_string());
    h.shutdown().await;
}

#[tokio::test]
async fn an_invalid_graphql_document_gets_a_validation_error_with_status_200() {
    let h = start(true, |_| {}).await;
    let t = token(&h).await;
    let r = gql(&h, &t, "{ crMatchPage { items { deleted } } }").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["extensions"]["classification"], "ValidationError");
    let v: Value = gql(&h, &t, r#"{ crMatchPage(qualifier: "title ~ 'x'") { totalElements } }"#)
        .await
        .json()
        .await
        .expect("json");
    assert!(v["errors"][0]["message"].as_str().expect("m").contains("qualifier"));
    h.shutdown().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let h = start(true, |c| c.rate_limit_per_sec = 3).await;
    let t = token(&h).await;
    let mut statuses = Vec::new();
    // Three a second with a burst of three: twenty in a row meet a 429 however slow each one is
    // (unless each takes a third of a second).
    for _ in 0..20 {
        let r = gql(&h, &t, "{ crCompanyPage { totalElements } }").await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
            assert_eq!(r.json::<Value>().await.expect("json")["errors"][0]["message"], "Too Many Requests");
            break;
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let log = h.sim().request_log();
    assert!(log.iter().any(|e| e.operation == "graphql:crCompanyPage" && e.status == 429));
    assert!(log.iter().any(|e| e.operation == "token" && e.status == 200));
    h.shutdown().await;
}

#[tokio::test]
async fn injected_faults_answer_before_normal_handling() {
    let h = start(true, |_| {}).await;
    let t = token(&h).await;
    h.sim().inject_fault(Fault {
        kind: FaultKind::Status { status: 503 },
        count: Some(1),
        path_prefix: Some("/graphql".into()),
    });
    assert_eq!(gql(&h, &t, "{ crCompanyPage { totalElements } }").await.status(), 503);
    assert_eq!(gql(&h, &t, "{ crCompanyPage { totalElements } }").await.status(), 200);
    h.shutdown().await;
}

async fn create_app(h: &SimHandle, t: &str, name: &str) -> Value {
    let r = reqwest::Client::new()
        .post(url(h, "webhooks/v1/applications"))
        .bearer_auth(t)
        .json(&json!({"_kind": "Application", "name": name}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

#[tokio::test]
async fn webhooks_need_the_scope_and_an_activated_tenant() {
    let h = start(true, |_| {}).await;
    let creds = h
        .sim()
        .register_client("acme", None, None, Some(vec!["urn:cx/cx5Wrapper:data:manage".into()]))
        .expect("client");
    let t = token_for(&h, &creds.client_id, &creds.secret).await;
    let r = reqwest::Client::new()
        .get(url(&h, "webhooks/v1/applications"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .expect("m")
            .contains("Required scopes: urn:cx/webhooks:data:manage")
    );

    h.sim().set_webhooks_activated("acme", false).expect("switch");
    let t = token(&h).await;
    let r = reqwest::Client::new()
        .get(url(&h, "webhooks/v1/applications"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert!(v["errors"][0]["message"].as_str().expect("m").contains("not activated"));
    h.shutdown().await;
}

#[tokio::test]
async fn another_clients_application_cannot_be_deleted_and_limits_are_enforced() {
    let h = start(true, |_| {}).await;
    let other = h.sim().create_application("acme", "someone-else", "theirs").await.expect("app");
    let t = token(&h).await;
    let c = reqwest::Client::new();
    let mine = create_app(&h, &t, "mine").await;
    assert_eq!(mine["signatureVerification"]["algorithm"], "SHA256withRSA");
    assert!(
        mine["signatureVerification"]["publicKey"]
            .as_str()
            .expect("pem")
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    assert_eq!(mine["_createdBy"]["_id"], "demo-client");
    let list: Value = c
        .get(url(&h, "webhooks/v1/applications"))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list["totalElements"], 2);
    assert!(list["items"][0].get("name").is_none());
    let r = c
        .delete(url(&h, &format!("webhooks/v1/applications/{}", other.id)))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = c.delete(url(&h, "webhooks/v1/applications/nope")).bearer_auth(&t).send().await.expect("send");
    assert_eq!(r.status(), 404);
    let app_id = mine["_id"].as_str().expect("id");
    let filters: Vec<Value> = (0..11).map(|_| json!({"eventType": "cremployee:created"})).collect();
    let r = c
        .post(url(&h, &format!("webhooks/v1/applications/{app_id}/webhooks")))
        .bearer_auth(&t)
        .json(&json!({"_kind": "Webhook", "url": "http://127.0.0.1:1/x", "filters": filters}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let theirs = h
        .sim()
        .create_webhook(
            "acme",
            "someone-else",
            &other.id,
            &json!({"url": "http://127.0.0.1:1/y", "filters": []}),
        )
        .expect("wh");
    let r = c
        .post(url(&h, &format!("webhooks/v1/applications/{}/webhooks/{}/disable", other.id, theirs.id)))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    let r = c
        .delete(url(&h, &format!("webhooks/v1/applications/{app_id}")))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 204);
    h.shutdown().await;
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

/// A receiver that answers the first `fail_first` requests with 500.
async fn receiver(fail_first: usize) -> (String, Received) {
    let rec = Received::default();
    let r2 = rec.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let r = r2.clone();
            async move {
                let mut v = r.0.lock().expect("lock");
                v.push((headers, body));
                if v.len() <= fail_first { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}/hook"), rec)
}

/// Polls `done` for up to 5 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_signed_delivery_verifies_with_the_application_public_key_after_a_retry() {
    let h = start(true, |_| {}).await;
    let (hook, rec) = receiver(1).await;
    let t = token(&h).await;
    let app = create_app(&h, &t, "mine").await;
    let app_id = app["_id"].as_str().expect("id");
    let r = reqwest::Client::new()
        .post(url(&h, &format!("webhooks/v1/applications/{app_id}/webhooks")))
        .bearer_auth(&t)
        .json(&json!({"_kind": "Webhook", "url": hook, "filters": [{"eventType": "CREmployee:updated"}],
            "customHeaders": [{"name": "x-api-key", "value": "k1"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    let wh: Value = r.json().await.expect("json");
    assert_eq!(wh["status"], "enabled");
    let id: u64 = h.sim().list_records("acme", Entity::Employee).expect("records")[0]["_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("num");
    let before = h.sim().get_record("acme", Entity::Employee, id).expect("rec")["modificationDate"].clone();
    let mut fields = serde_json::Map::new();
    fields.insert("firstName".into(), json!("Gerrit"));
    let after = h.sim().update_record("acme", Entity::Employee, id, fields).expect("update");
    assert_ne!(after["modificationDate"], before);
    until("two deliveries", || rec.0.lock().expect("lock").len() >= 2).await;
    let (headers, body) = rec.0.lock().expect("lock")[1].clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cx-payload-schema-version"], "1");
    assert_eq!(headers["x-api-key"], "k1");
    let pem = app["signatureVerification"]["publicKey"].as_str().expect("pem");
    let key = VerifyingKey::<Sha256>::new(rsa::RsaPublicKey::from_public_key_pem(pem).expect("pem"));
    let sig = STANDARD.decode(headers["cx-signature"].to_str().expect("ascii")).expect("b64");
    key.verify(&body, &Signature::try_from(sig.as_slice()).expect("sig")).expect("signature verifies");
    let payload: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(payload["type"], "cremployee:updated");
    assert_eq!(payload["tenant"], "acme");
    assert_eq!(payload["applicationId"], app_id);
    assert_eq!(payload["data"]["entityId"], id.to_string());
    assert!(payload["data"]["changedFields"].as_array().expect("cf").contains(&json!("firstname")));
    // The receiver has the body before the emulator has its answer: wait for the log to catch up.
    until("the emulator to log both attempts", || h.sim().delivery_log().len() >= 2).await;
    let log = h.sim().delivery_log();
    assert_eq!(log.len(), 2, "the emulator logs both attempts: {log:?}");
    assert_eq!(log[0].status_code, Some(500));
    assert_eq!(log[1].status_code, Some(204));
    assert_eq!(log[1].attempt, 2);
    h.shutdown().await;
}

#[tokio::test]
async fn writes_are_counted_per_application_name_so_a_second_writer_shows() {
    let h = start(true, |_| {}).await;
    let t = token(&h).await;
    let first = create_app(&h, &t, "carerix-operator.ns.one").await;
    let _again = create_app(&h, &t, "carerix-operator.ns.one").await;
    let other = create_app(&h, &t, "carerix-operator.ns.two").await;
    let id = first["_id"].as_str().or_else(|| first["id"].as_str()).expect("an id").to_string();
    let hook = h
        .sim()
        .create_webhook(
            "acme",
            "demo-client",
            &id,
            &json!({"url": "https://x.example.com/h", "filters": [{"eventType": "crmatch:created"}]}),
        )
        .expect("webhook");
    h.sim().delete_webhook("acme", None, &hook.id).expect("deleted");
    let writes = h.sim().application_writes("acme").expect("tenant");
    let one = &writes["carerix-operator.ns.one"];
    assert_eq!(one.applications_created, 2, "the duplicate shows: {one:?}");
    assert_eq!((one.webhooks_created, one.webhooks_deleted), (1, 1));
    assert_eq!(one.total(), 4);
    assert_eq!(writes["carerix-operator.ns.two"].total(), 1);

    // A test can sign a delivery as the application would.
    let other_id = other["_id"].as_str().or_else(|| other["id"].as_str()).expect("an id");
    let body = br#"{"id":"e1","type":"crmatch:created","data":{"entityId":"1"}}"#;
    let signature = h.sim().sign_as_application("acme", other_id, body).expect("signed");
    let pem = h
        .sim()
        .applications("acme")
        .expect("apps")
        .into_iter()
        .find(|a| a.id == other_id)
        .expect("app")
        .public_key;
    let key = VerifyingKey::<Sha256>::new(rsa::RsaPublicKey::from_public_key_pem(&pem).expect("pem"));
    let raw = STANDARD.decode(signature).expect("base64");
    key.verify(body, &Signature::try_from(raw.as_slice()).expect("signature")).expect("verifies");
    assert!(h.sim().sign_as_application("acme", "no-such-app", body).is_err());
    h.shutdown().await;
}
