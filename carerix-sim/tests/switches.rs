//! The behaviour switches (`carerix_sim::Switches`), each one both ways, set from `Config`, from
//! the admin API and from the binary's flags.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;
use carerix_sim::{ClientConfig, Config, Entity, Permission, SimHandle, Switches, TenantConfig};
use serde_json::{Value, json};

async fn start(switches: Switches) -> SimHandle {
    let mut c = Config::for_tests();
    c.records_per_entity = 5;
    c.key_bits = 512; // key generation dominates in debug builds; 512 bits is plenty for a test
    c.rate_limit_per_sec = 1000; // these tests check permissions, not the rate limit
    c.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: true });
    c.clients.push(ClientConfig {
        tenant: "acme".into(),
        client_id: "demo-client".into(),
        secret: "demo-secret".into(),
    });
    c.switches = switches;
    carerix_sim::spawn(c).await.expect("spawn")
}

/// A small REST client for one emulator.
struct Api {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn new(base: url::Url) -> Api {
        let http = reqwest::Client::new();
        let r = http
            .post(base.join("auth/realms/acme/protocol/openid-connect/token").expect("url"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "demo-client"),
                ("client_secret", "demo-secret"),
            ])
            .send()
            .await
            .expect("token");
        assert_eq!(r.status(), 200);
        let token = r.json::<Value>().await.expect("json")["access_token"].as_str().expect("t").to_string();
        Api { base, token, http }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.base.join(path).expect("url")).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create_app(&self) -> Value {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "webhooks/v1/applications",
                Some(json!({"_kind": "Application", "name": "t"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v
    }

    async fn admin_put_switches(&self, switches: &Value) {
        let r = self
            .http
            .put(self.base.join("admin/v1/switches").expect("url"))
            .json(switches)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
}

async fn switched_application(api: &Api) -> (Value, Value) {
    let app = api.create_app().await;
    let id = app["_id"].as_str().expect("id").to_string();
    let (s, listed) = api
        .call(
            reqwest::Method::GET,
            "webhooks/v1/applications?fields=name,signatureVerification,_createdBy",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let listed = listed["items"].as_array().expect("items").iter().find(|a| a["_id"] == id.as_str()).cloned();
    (app, listed.expect("listed"))
}

#[tokio::test]
async fn the_creator_is_the_client_id_unless_service_account_ids_are_switched_on() {
    let h = start(Switches::default()).await;
    let api = Api::new(h.base_url()).await;
    let (created, listed) = switched_application(&api).await;
    assert_eq!(created["_createdBy"]["_id"], "demo-client");
    assert_eq!(listed["_createdBy"]["_id"], "demo-client");
    h.shutdown().await;

    let h = start(Switches { creator_service_account_ids: true, ..Switches::default() }).await;
    let api = Api::new(h.base_url()).await;
    let (created, listed) = switched_application(&api).await;
    let sa = carerix_sim::switches::service_account_id("demo-client");
    assert_eq!(created["_createdBy"]["_id"], sa.as_str());
    assert_eq!(listed["_createdBy"]["_id"], sa.as_str());
    // ownership is unchanged: the creator may still delete it
    let id = created["_id"].as_str().expect("id");
    let (s, _) = api.call(reqwest::Method::DELETE, &format!("webhooks/v1/applications/{id}"), None).await;
    assert_eq!(s, 204);
    h.shutdown().await;
}

#[tokio::test]
async fn the_public_key_is_returned_unless_hidden_and_the_switch_changes_at_run_time() {
    let h = start(Switches::default()).await;
    let api = Api::new(h.base_url()).await;
    let (created, listed) = switched_application(&api).await;
    assert!(created["signatureVerification"]["publicKey"].as_str().is_some_and(|k| k.contains("PUBLIC KEY")));
    assert!(listed["signatureVerification"]["publicKey"].as_str().is_some());

    api.admin_put_switches(&json!({"hide_public_key": true})).await;
    assert!(h.sim().switches().hide_public_key);
    let (created, listed) = switched_application(&api).await;
    assert!(created["signatureVerification"].get("publicKey").is_none(), "{created}");
    assert!(listed["signatureVerification"].get("publicKey").is_none(), "{listed}");
    let id = created["_id"].as_str().expect("id");
    let (_, one) = api.call(reqwest::Method::GET, &format!("webhooks/v1/applications/{id}"), None).await;
    assert!(one["signatureVerification"].get("publicKey").is_none(), "{one}");
    // still there in the emulator itself: deliveries are signed as before
    assert!(h.sim().applications("acme").expect("apps").iter().all(|a| !a.public_key.is_empty()));
    h.shutdown().await;
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let g = g.clone();
            async move {
                g.lock().expect("lock").push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn header_values_are_masked_in_answers_only_when_switched_on_and_still_delivered() {
    let (hook, got) = receiver().await;
    for masked in [false, true] {
        let h = start(Switches { mask_header_values: masked, ..Switches::default() }).await;
        let api = Api::new(h.base_url()).await;
        let app = api.create_app().await;
        let id = app["_id"].as_str().expect("id");
        let (s, w) = api
            .call(
                reqwest::Method::POST,
                &format!("webhooks/v1/applications/{id}/webhooks"),
                Some(
                    json!({"_kind": "Webhook", "url": hook, "filters": [{"eventType": "cremployee:updated"}],
                    "customHeaders": [{"name": "x-api-key", "value": "hunter2"}]}),
                ),
            )
            .await;
        assert_eq!(s, 201);
        let expected = if masked { carerix_sim::switches::MASK } else { "hunter2" };
        assert_eq!(w["customHeaders"][0]["value"], expected);
        let (_, list) = api
            .call(
                reqwest::Method::GET,
                &format!("webhooks/v1/applications/{id}/webhooks?fields=customHeaders"),
                None,
            )
            .await;
        assert_eq!(list["items"][0]["customHeaders"][0]["value"], expected);
        // the delivery carries the real value either way
        let rec = h.sim().list_records("acme", Entity::Employee).expect("records");
        let rid = rec[0]["_id"].as_str().expect("id").parse::<u64>().expect("numeric");
        let before = got.lock().expect("lock").len();
        h.sim()
            .update_record(
                "acme",
                Entity::Employee,
                rid,
                json!({"firstName": "Switch"}).as_object().cloned().expect("obj"),
            )
            .expect("update");
        for _ in 0..100 {
            if got.lock().expect("lock").len() > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let delivered = got.lock().expect("lock").last().map(|(headers, _)| headers.clone());
        let headers = delivered.expect("a delivery");
        assert_eq!(headers.get("x-api-key").and_then(|v| v.to_str().ok()), Some("hunter2"));
        h.shutdown().await;
    }
}

#[tokio::test]
async fn a_missing_permission_answers_403_for_its_operations_only() {
    let h = start(Switches::default()).await;
    let api = Api::new(h.base_url()).await;
    let (hook, _) = receiver().await;
    for missing in [
        None,
        Some(Permission::Create),
        Some(Permission::Read),
        Some(Permission::Update),
        Some(Permission::Delete),
    ] {
        h.sim().set_switches(Switches::default());
        let app = api.create_app().await;
        let id = app["_id"].as_str().expect("id").to_string();
        let (_, w) = api
            .call(
                reqwest::Method::POST,
                &format!("webhooks/v1/applications/{id}/webhooks"),
                Some(json!({"_kind": "Webhook", "url": hook, "filters": [{"eventType": "cremployee:updated"}]})),
            )
            .await;
        let wid = w["_id"].as_str().expect("wid").to_string();
        h.sim().set_switches(Switches { missing_permission: missing, ..Switches::default() });
        let expect = |p: Permission| if missing == Some(p) { 403 } else { 0 };
        let (s, body) = api.call(reqwest::Method::GET, &format!("webhooks/v1/applications/{id}"), None).await;
        if missing == Some(Permission::Read) {
            assert_eq!(s, 403);
            assert!(body.to_string().contains("webhooks:read"), "{body}");
        } else {
            assert_eq!(s, 200);
        }
        let (s, _) = api
            .call(
                reqwest::Method::POST,
                &format!("webhooks/v1/applications/{id}/webhooks/{wid}/disable"),
                None,
            )
            .await;
        assert_eq!(s == 403, expect(Permission::Update) == 403, "disable with {missing:?}: {s}");
        let (s, _) = api
            .call(
                reqwest::Method::POST,
                "webhooks/v1/applications",
                Some(json!({"_kind": "Application", "name": "x"})),
            )
            .await;
        assert_eq!(s == 403, expect(Permission::Create) == 403, "create with {missing:?}: {s}");
        let (s, _) = api.call(reqwest::Method::DELETE, &format!("webhooks/v1/applications/{id}"), None).await;
        assert_eq!(s == 403, expect(Permission::Delete) == 403, "delete with {missing:?}: {s}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn contact_events_use_the_switched_prefix() {
    let (hook, got) = receiver().await;
    let h = start(Switches { contact_event_prefix: Some("cruser".into()), ..Switches::default() }).await;
    let api = Api::new(h.base_url()).await;
    let app = api.create_app().await;
    let id = app["_id"].as_str().expect("id");
    for event in ["crcontact:updated", "cruser:updated"] {
        let (s, _) = api
            .call(
                reqwest::Method::POST,
                &format!("webhooks/v1/applications/{id}/webhooks"),
                Some(json!({"_kind": "Webhook", "url": format!("{hook}?{event}"), "filters": [{"eventType": event}]})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let rec = h.sim().list_records("acme", Entity::Contact).expect("records");
    let rid = rec[0]["_id"].as_str().expect("id").parse::<u64>().expect("numeric");
    h.sim()
        .update_record(
            "acme",
            Entity::Contact,
            rid,
            json!({"firstName": "Switch"}).as_object().cloned().expect("obj"),
        )
        .expect("update");
    for _ in 0..100 {
        if !got.lock().expect("lock").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let got = got.lock().expect("lock");
    assert_eq!(got.len(), 1, "only the cruser webhook gets the event");
    let payload: Value = serde_json::from_slice(&got[0].1).expect("json");
    assert_eq!(payload["type"], "cruser:updated");
}

struct Bin(Child);

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary(flags: &[&str]) -> (Bin, url::Url) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_carerix-sim"))
        .args(["--listen", "127.0.0.1:0", "--records", "3", "--key-bits", "512"])
        .args(["--client", "acme:demo-client:demo-secret", "--webhooks-activated"])
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start carerix-sim");
    let stdout = child.stdout.take().expect("stdout");
    let bin = Bin(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr = line.trim().strip_prefix("carerix-sim listening on ").expect("banner").to_string();
    (bin, url::Url::parse(&format!("{addr}/")).expect("url"))
}

#[tokio::test]
async fn the_binary_sets_every_switch_from_its_flags() {
    let (_plain, base) = start_binary(&[]);
    let v: Value = reqwest::get(base.join("admin/v1/switches").expect("url"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(v, serde_json::to_value(Switches::default()).expect("json"));

    let (_bin, base) = start_binary(&[
        "--creator-service-account-ids",
        "--hide-public-key",
        "--mask-header-values",
        "--missing-permission",
        "update",
        "--contact-event-prefix",
        "cruser",
    ]);
    let v: Value = reqwest::get(base.join("admin/v1/switches").expect("url"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        v,
        json!({"creator_service_account_ids": true, "hide_public_key": true, "mask_header_values": true,
            "missing_permission": "update", "contact_event_prefix": "cruser"})
    );
    let api = Api::new(base).await;
    let app = api.create_app().await;
    assert_eq!(app["_createdBy"]["_id"], carerix_sim::switches::service_account_id("demo-client").as_str());
    assert!(app["signatureVerification"].get("publicKey").is_none());
}
