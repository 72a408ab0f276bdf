//! The reconciler's decisions as table tests: an in-memory Carerix ([`FakeCarerix`]) and an
//! in-process Kubernetes API ([`FakeKube`]), no services, a few milliseconds each.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::runtime::{controller::Action, events::Reporter};
use serde_json::json;

use super::{
    Context, Settings,
    carerix_api::CarerixApi,
    cleanup,
    context::{Connected, Connector},
    failure::{Next, classify},
    fake::FakeCarerix,
    fake_kube::FakeKube,
    plan::{DesiredWebhook, WebhookStatus, normalize_events},
    webhooks,
};
use crate::{
    api::{CarerixConnection, CarerixConnectionStatus, CredentialsStatus, SyncStatus, WebhooksStatus},
    carerix::{CarerixClient, Error as CxError, RateLimiters},
    conditions::Part,
    connection::SecretCredentials,
    metrics::Metrics,
    sync::SyncReport,
};

const NS: &str = "team";
const CONN: &str = "/apis/hiredata.io/v1alpha1/namespaces/team/carerixconnections/acme";
const SECRET: &str = "/api/v1/namespaces/team/secrets/acme-carerix";

fn connection(extra: serde_json::Value) -> CarerixConnection {
    let mut spec = json!({
        "tenant": "acme",
        "credentialsSecretRef": {"name": "acme-carerix"},
        "identityUrl": "https://id.carerix.io",
        "apiUrl": "https://api.carerix.io",
        "interval": "10m",
        "webhooks": [{"name": "matches", "url": "https://hooks.example.org/a", "events": ["crmatch:created"]}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let mut obj = CarerixConnection::new("acme", serde_json::from_value(spec).expect("spec"));
    obj.metadata.namespace = Some(NS.into());
    obj.metadata.generation = Some(1);
    obj
}

fn desired(name: &str, url: &str, events: &[&str], headers: &[(&str, &str)]) -> DesiredWebhook {
    DesiredWebhook {
        name: name.into(),
        url: url.into(),
        events: normalize_events(events),
        headers: headers.iter().map(|(n, v)| ((*n).to_string(), (*v).to_string())).collect(),
    }
}

/// `obj` with the status a pass over `report` would have written.
fn with_status(mut obj: CarerixConnection, report: &webhooks::WebhooksReport) -> CarerixConnection {
    obj.status = Some(CarerixConnectionStatus {
        credentials: Some(CredentialsStatus { secret_resource_version: Some("1".into()), scopes: vec![] }),
        webhooks: Some(WebhooksStatus {
            application_id: report.application_id.clone(),
            summary: None,
            items: report.states.clone(),
            public_key: report.public_key.clone(),
        }),
        ..CarerixConnectionStatus::default()
    });
    obj
}

fn count(calls: &[String], op: &str) -> usize {
    calls.iter().filter(|c| *c == op).count()
}

// ---- drift classification and repair ----

#[tokio::test]
async fn a_first_pass_creates_the_application_and_enabled_webhooks_without_calling_it_a_repair() {
    let cx = FakeCarerix::new();
    let want = [desired("a", "https://x", &["crmatch:created"], &[])];
    let report = webhooks::ensure(&cx, &connection(json!({})), &want).await.unwrap();
    assert!(report.application_id.is_some());
    assert_eq!(report.ready(), 1);
    assert!(report.repaired.is_empty(), "{:?}", report.repaired);
    assert_eq!(cx.webhooks()[0].status, WebhookStatus::Enabled);
}

#[tokio::test]
async fn drift_in_carerix_is_repaired_and_named() {
    struct Case {
        name: &'static str,
        drift: fn(&FakeCarerix),
        repair: &'static str,
    }
    let cases = [
        Case {
            name: "disabled",
            drift: |cx| {
                let id = cx.webhooks()[0].id.0.clone();
                cx.set_status(&id, WebhookStatus::Disabled);
            },
            repair: "WebhookReenabled",
        },
        Case {
            name: "failing",
            drift: |cx| {
                let id = cx.webhooks()[0].id.0.clone();
                cx.set_status(&id, WebhookStatus::Error);
            },
            repair: "WebhookReenabled",
        },
        Case {
            name: "deleted",
            drift: |cx| {
                let id = cx.webhooks()[0].id.0.clone();
                cx.lock().hooks.remove(&id);
            },
            repair: "WebhookRecreated",
        },
    ];
    for case in cases {
        let cx = FakeCarerix::new();
        // Another webhook stays, so the application is not empty after the drift.
        let want = [
            desired("a", "https://x", &["crmatch:created"], &[]),
            desired("b", "https://y", &["crjob:created"], &[]),
        ];
        let obj = connection(json!({}));
        let first = webhooks::ensure(&cx, &obj, &want).await.unwrap();
        (case.drift)(&cx);
        let second = webhooks::ensure(&cx, &with_status(obj, &first), &want).await.unwrap();
        assert_eq!(second.ready(), 2, "{}", case.name);
        let reasons: Vec<_> = second.repaired.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, vec![case.repair], "{}", case.name);
    }
}

#[tokio::test]
async fn a_changed_webhook_is_created_before_the_old_one_is_deleted() {
    let cx = FakeCarerix::new();
    let obj = connection(json!({}));
    let first =
        webhooks::ensure(&cx, &obj, &[desired("a", "https://x", &["crmatch:created"], &[])]).await.unwrap();
    cx.lock().calls.clear();
    let changed = [desired("a", "https://x", &["crmatch:created", "crmatch:updated"], &[])];
    let second = webhooks::ensure(&cx, &with_status(obj, &first), &changed).await.unwrap();
    let calls = cx.calls();
    let created = calls.iter().position(|c| c == "create_webhook").expect("created");
    let deleted = calls.iter().position(|c| c == "delete_webhook").expect("deleted");
    assert!(created < deleted, "deliveries would gap: {calls:?}");
    assert_eq!(second.repaired[0].reason, "WebhookReplaced");
    assert_eq!(cx.webhooks().len(), 1);
}

#[tokio::test]
async fn masked_header_values_do_not_replace_the_webhook_on_every_pass() {
    let mut cx = FakeCarerix::new();
    cx.mask_headers = true;
    let obj = connection(json!({}));
    let want = [desired("a", "https://x", &["crmatch:created"], &[("X-Api-Key", "s3cr3t")])];
    let first = webhooks::ensure(&cx, &obj, &want).await.unwrap();
    assert!(first.states[0].headers_hash.is_some());
    assert!(!format!("{:?}", first.states).contains("s3cr3t"), "the hash must not be the value");
    cx.lock().calls.clear();
    let second = webhooks::ensure(&cx, &with_status(obj.clone(), &first), &want).await.unwrap();
    let calls = cx.calls();
    assert_eq!((count(&calls, "create_webhook"), count(&calls, "delete_webhook")), (0, 0), "{calls:?}");
    // A rotated value is still replaced.
    let rotated = [desired("a", "https://x", &["crmatch:created"], &[("X-Api-Key", "rotated")])];
    webhooks::ensure(&cx, &with_status(obj, &second), &rotated).await.unwrap();
    assert_eq!(count(&cx.calls(), "create_webhook"), 1);
}

#[tokio::test]
async fn a_webhook_carerix_will_not_enable_makes_webhooks_ready_false_with_the_reason() {
    let mut cx = FakeCarerix::new();
    cx.refuse_enable = true;
    let want = [desired("a", "https://x", &["crmatch:created"], &[])];
    let report = webhooks::ensure(&cx, &connection(json!({})), &want).await.unwrap();
    let (part, status) = super::status::webhooks_part(1, &report);
    assert_eq!(part.status, crate::conditions::Status::False);
    assert!(part.message.contains("a is disabled"), "{}", part.message);
    assert_eq!(status.summary.as_deref(), Some("0/1"));
}

// ---- finding our own application (issue 12) ----

#[tokio::test]
async fn a_carerix_that_records_another_creator_id_still_finds_our_application() {
    let mut cx = FakeCarerix::new();
    cx.creator_id = "service-account-42".into();
    let obj = connection(json!({}));
    let want = [desired("a", "https://x", &["crmatch:created"], &[])];
    let first = webhooks::ensure(&cx, &obj, &want).await.unwrap();
    let second = webhooks::ensure(&cx, &with_status(obj.clone(), &first), &want).await.unwrap();
    assert_eq!(first.application_id, second.application_id);
    assert_eq!(cx.lock().apps.len(), 1, "a second application was created");
    assert_eq!(cx.webhooks().len(), 1, "a duplicate webhook was created");
    assert!(second.repaired.is_empty());
    // Cleanup removes the application and its webhooks although Carerix names another creator.
    cleanup::remove(&cx, &with_status(obj, &second)).await.unwrap();
    assert!(cx.lock().apps.is_empty() && cx.webhooks().is_empty());
}

#[tokio::test]
async fn another_clients_application_with_our_name_is_never_adopted_nor_deleted() {
    let cx = FakeCarerix::new();
    let obj = connection(json!({}));
    let foreign = cx.seed_application(&crate::connection::application_name(&obj), "someone-else");
    let want = [desired("a", "https://x", &["crmatch:created"], &[])];
    let report = webhooks::ensure(&cx, &obj, &want).await.unwrap();
    assert_ne!(report.application_id.as_deref(), Some(foreign.as_str()));
    cleanup::remove(&cx, &obj).await.unwrap();
    assert!(cx.lock().apps.contains_key(foreign.as_str()));
}

#[tokio::test]
async fn a_public_key_carerix_never_returns_is_said_in_status() {
    let mut cx = FakeCarerix::new();
    cx.hide_public_key = true;
    let want = [desired("a", "https://x", &["crmatch:created"], &[])];
    let report = webhooks::ensure(&cx, &connection(json!({})), &want).await.unwrap();
    assert_eq!(report.public_key, None);
    let (part, _) = super::status::webhooks_part(1, &report);
    assert_eq!(
        part.status,
        crate::conditions::Status::True,
        "polling still works, so WebhooksReady stays True"
    );
    assert!(part.message.contains("deliveries cannot be verified"), "{}", part.message);
}

// ---- failure classification ----

#[tokio::test]
async fn failures_from_carerix_are_classified_as_stall_or_retry() {
    let cases: Vec<(&str, CxError, &str, bool)> = vec![
        (
            "html page",
            CxError::Decode { operation: "webhooks.list_applications".into(), reason: "<html>".into() },
            "CarerixUnavailable",
            false,
        ),
        (
            "503",
            CxError::Api {
                operation: "webhooks.list_applications".into(),
                status: 503,
                message: None,
                retry_after: None,
            },
            "CarerixUnavailable",
            false,
        ),
        (
            "429",
            CxError::Api {
                operation: "webhooks.list_applications".into(),
                status: 429,
                message: None,
                retry_after: Some(Duration::from_secs(7)),
            },
            "RateLimited",
            false,
        ),
        (
            "409",
            CxError::Api {
                operation: "webhooks.create_webhook".into(),
                status: 409,
                message: None,
                retry_after: None,
            },
            "CarerixUnavailable",
            false,
        ),
        (
            "400",
            CxError::Api {
                operation: "webhooks.create_webhook".into(),
                status: 400,
                message: Some("bad".into()),
                retry_after: None,
            },
            "CarerixRejected",
            false,
        ),
        (
            "403 permission",
            CxError::Api {
                operation: "webhooks.delete_webhook".into(),
                status: 403,
                message: None,
                retry_after: None,
            },
            "MissingPermission",
            true,
        ),
        (
            "403 scope",
            CxError::Api {
                operation: "webhooks.list_applications".into(),
                status: 403,
                message: Some("Required scopes: urn:cx/webhooks:data:manage".into()),
                retry_after: None,
            },
            "MissingScope",
            true,
        ),
        ("invalid client", CxError::InvalidClient { status: 401, message: None }, "InvalidClient", true),
        ("realm", CxError::RealmNotFound { tenant: "acme".into() }, "TenantNotFound", true),
    ];
    for (name, err, reason, stalls) in cases {
        let cx = FakeCarerix::new();
        cx.fail_next(err_op(&err), err);
        let want = [desired("a", "https://x", &["crmatch:created"], &[])];
        let got = webhooks::ensure(&cx, &connection(json!({})), &want).await.expect_err(name);
        let failure = classify(&got, "acme", "manage webhooks");
        assert_eq!(failure.part.reason, reason, "{name}");
        assert_eq!(failure.next == Next::Stall, stalls, "{name}");
    }
}

fn err_op(err: &CxError) -> &'static str {
    match err {
        CxError::Api { operation, .. } | CxError::Decode { operation, .. } => match operation.as_str() {
            "webhooks.create_webhook" => "create_webhook",
            "webhooks.delete_webhook" => "create_webhook",
            _ => "list_applications",
        },
        _ => "list_applications",
    }
}

#[tokio::test]
async fn a_missing_permission_names_the_grant() {
    let mut cx = FakeCarerix::new();
    cx.forbidden = vec!["create_webhook"];
    let want = [desired("a", "https://x", &["crmatch:created"], &[])];
    let err = webhooks::ensure(&cx, &connection(json!({})), &want).await.unwrap_err();
    let failure = classify(&err, "acme", "manage webhooks");
    assert_eq!(failure.part.reason, "MissingPermission");
    assert!(failure.part.message.contains("Webhooks: create on"), "{}", failure.part.message);
}

// ---- whole passes against a fake Kubernetes ----

#[derive(Default)]
struct FakeSync {
    stopped: Mutex<Vec<String>>,
    ensured: Mutex<Vec<Option<String>>>,
}

#[async_trait::async_trait]
impl SyncReport for FakeSync {
    async fn ensure(&self, _obj: &CarerixConnection, _cx: &CarerixClient, public_key: Option<String>) {
        self.ensured.lock().unwrap().push(public_key);
    }
    async fn stop(&self, obj: &CarerixConnection) {
        self.stopped.lock().unwrap().push(crate::connection::key_of(obj));
    }
    fn condition(&self, _obj: &CarerixConnection) -> Part {
        Part::ok("Synced", "synced")
    }
    fn status(&self, _obj: &CarerixConnection) -> Option<SyncStatus> {
        None
    }
    fn in_progress(&self, _obj: &CarerixConnection) -> bool {
        false
    }
}

struct FakeConnector(Arc<FakeCarerix>);

impl Connector for FakeConnector {
    fn connect(
        &self,
        spec: &crate::api::CarerixConnectionSpec,
        creds: &SecretCredentials,
        _settings: &Settings,
        _rate_limiters: &RateLimiters,
        _metrics: &Arc<Metrics>,
    ) -> Result<Connected, CxError> {
        // A real client that is never used: the sync fake ignores it.
        let client = CarerixClient::builder()
            .identity_url("http://127.0.0.1:9")
            .api_url("http://127.0.0.1:9")
            .tenant(&spec.tenant)
            .credentials(creds.credentials.clone())
            .build()?;
        Ok(Connected { client, api: self.0.clone() as Arc<dyn CarerixApi> })
    }
}

/// The fake Carerix behind the tenant's rate limiter, like the real client.
struct MeteredConnector(Arc<FakeCarerix>);

impl Connector for MeteredConnector {
    fn connect(
        &self,
        spec: &crate::api::CarerixConnectionSpec,
        creds: &SecretCredentials,
        settings: &Settings,
        rate_limiters: &RateLimiters,
        metrics: &Arc<Metrics>,
    ) -> Result<Connected, CxError> {
        let connected =
            FakeConnector(self.0.clone()).connect(spec, creds, settings, rate_limiters, metrics)?;
        let api = Arc::new(Metered { limiter: rate_limiters.for_tenant(&spec.tenant), cx: self.0.clone() });
        Ok(Connected { api, ..connected })
    }
}

struct Metered {
    limiter: crate::carerix::RateLimiter,
    cx: Arc<FakeCarerix>,
}

#[async_trait::async_trait]
impl CarerixApi for Metered {
    fn client_id(&self) -> &str {
        self.cx.client_id()
    }
    async fn scopes(&self) -> Result<Vec<String>, CxError> {
        // token requests are not rate limited
        self.cx.scopes().await
    }
    async fn list_applications(&self) -> Result<Vec<crate::carerix::Application>, CxError> {
        self.limiter.until_ready().await;
        self.cx.list_applications().await
    }
    async fn get_application(
        &self,
        id: &crate::carerix::ApplicationId,
    ) -> Result<Option<crate::carerix::Application>, CxError> {
        self.limiter.until_ready().await;
        self.cx.get_application(id).await
    }
    async fn create_application(&self, name: &str) -> Result<crate::carerix::Application, CxError> {
        self.limiter.until_ready().await;
        self.cx.create_application(name).await
    }
    async fn delete_application(&self, id: &crate::carerix::ApplicationId) -> Result<(), CxError> {
        self.limiter.until_ready().await;
        self.cx.delete_application(id).await
    }
    async fn list_webhooks(
        &self,
        application: &crate::carerix::ApplicationId,
    ) -> Result<Vec<crate::carerix::Webhook>, CxError> {
        self.limiter.until_ready().await;
        self.cx.list_webhooks(application).await
    }
    async fn create_webhook(
        &self,
        application: &crate::carerix::ApplicationId,
        webhook: &crate::carerix::NewWebhook,
    ) -> Result<crate::carerix::Webhook, CxError> {
        self.limiter.until_ready().await;
        self.cx.create_webhook(application, webhook).await
    }
    async fn delete_webhook(
        &self,
        application: &crate::carerix::ApplicationId,
        id: &crate::carerix::WebhookId,
    ) -> Result<(), CxError> {
        self.limiter.until_ready().await;
        self.cx.delete_webhook(application, id).await
    }
    async fn enable_webhook(
        &self,
        application: &crate::carerix::ApplicationId,
        id: &crate::carerix::WebhookId,
    ) -> Result<crate::carerix::Webhook, CxError> {
        self.limiter.until_ready().await;
        self.cx.enable_webhook(application, id).await
    }
}

struct World {
    kube: FakeKube,
    cx: Arc<FakeCarerix>,
    sync: Arc<FakeSync>,
    ctx: Arc<Context>,
}

fn world_with(cx: FakeCarerix, obj: &CarerixConnection, secret: bool) -> World {
    world_of(cx, obj, secret, false)
}

/// Like [`world_with`]; with `metered`, every Carerix call first waits for the tenant's rate
/// limiter, as the real client's requests do.
fn world_of(cx: FakeCarerix, obj: &CarerixConnection, secret: bool, metered: bool) -> World {
    world_in(cx, obj, secret, metered, crate::shard::Shards::unsharded())
}

/// Like [`world_of`], for a replica that works on `shards` only.
fn world_in(
    cx: FakeCarerix,
    obj: &CarerixConnection,
    secret: bool,
    metered: bool,
    shards: crate::shard::Shards,
) -> World {
    let kube = FakeKube::default();
    kube.put(CONN, obj);
    if secret {
        let data: BTreeMap<String, ByteString> = [("clientId", "me.apps.carerix.io"), ("clientSecret", "x")]
            .iter()
            .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        let mut s = Secret { data: Some(data), ..Secret::default() };
        s.metadata.name = Some("acme-carerix".into());
        s.metadata.resource_version = Some("7".into());
        kube.put(SECRET, &s);
    }
    let cx = Arc::new(cx);
    let sync = Arc::new(FakeSync::default());
    let client = kube.client();
    let events =
        super::events::Events::new(client.clone(), Reporter { controller: "test".into(), instance: None });
    let ctx = Arc::new(
        Context::with_connector(
            client,
            Settings::default(),
            RateLimiters::new(10),
            events,
            Arc::new(Metrics::new()),
            sync.clone(),
            if metered {
                Box::new(MeteredConnector(cx.clone()))
            } else {
                Box::new(FakeConnector(cx.clone()))
            },
        )
        .with_shards(shards),
    );
    World { kube, cx, sync, ctx }
}

impl World {
    fn status(&self) -> serde_json::Value {
        self.kube.get(CONN).and_then(|o| o.get("status").cloned()).unwrap_or_default()
    }
    fn condition(&self, type_: &str) -> (String, String, String) {
        let status = self.status();
        let c = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_default();
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
        (s("status"), s("reason"), s("message"))
    }
    fn stored(&self) -> CarerixConnection {
        serde_json::from_value(self.kube.get(CONN).unwrap_or_default()).expect("stored connection")
    }
}

fn is_interval_requeue(action: &Action) -> bool {
    *action != Action::await_change()
}

#[tokio::test]
async fn a_healthy_pass_writes_ready_and_hands_the_public_key_to_the_sync() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    let action = super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    assert!(is_interval_requeue(&action));
    assert_eq!(w.condition("Ready").0, "True", "{:?}", w.condition("Ready"));
    assert_eq!(w.status()["webhooks"]["summary"], "1/1");
    assert!(w.sync.ensured.lock().unwrap()[0].is_some());
}

#[tokio::test]
async fn a_missing_secret_stalls_and_is_still_rechecked_at_the_interval() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, false);
    let action = super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    assert_eq!(w.condition("Ready").1, "SecretNotFound");
    assert_eq!(w.condition("Stalled").0, "True");
    assert!(is_interval_requeue(&action), "a stalled connection must be looked at again at its interval");
}

#[tokio::test]
async fn a_deleted_secret_stops_the_sync() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, false);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    assert_eq!(w.sync.stopped.lock().unwrap().as_slice(), ["team/acme".to_string()]);
}

#[tokio::test]
async fn revoked_credentials_stop_the_sync() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    w.cx.fail_next("token", CxError::InvalidClient { status: 401, message: None });
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    assert_eq!(w.condition("Ready").1, "InvalidClient");
    assert_eq!(w.sync.stopped.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_html_error_page_retries_instead_of_stalling() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    w.cx.fail_next(
        "list_applications",
        CxError::Decode { operation: "webhooks.list_applications".into(), reason: "expected value".into() },
    );
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    assert_eq!(w.condition("Ready").1, "CarerixUnavailable");
    assert_eq!(w.condition("Reconciling").0, "True");
    assert_eq!(w.condition("Stalled").0, "", "not stalled");
    assert!(w.sync.stopped.lock().unwrap().is_empty(), "a Carerix outage does not stop the sync");
}

#[tokio::test]
async fn a_url_outside_the_allowed_hosts_is_invalid_spec_before_any_secret_is_read() {
    let obj = connection(json!({"identityUrl": "https://attacker.example.com"}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    let (_, reason, message) = w.condition("Ready");
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("attacker.example.com") && message.contains("--allowed-carerix-hosts"),
        "{message}"
    );
    assert!(!w.kube.requests().iter().any(|r| r.contains("/secrets/")), "{:?}", w.kube.requests());
    assert!(w.cx.calls().is_empty(), "nothing may be sent to Carerix");
}

#[tokio::test]
async fn a_pass_that_changes_nothing_writes_nothing() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    let patches = |w: &World| {
        w.kube.requests().iter().filter(|r| r.starts_with("PATCH") && r.ends_with("/status")).count()
    };
    assert_eq!(patches(&w), 1);
    super::apply(Arc::new(w.stored()), w.ctx.clone()).await.unwrap();
    assert_eq!(patches(&w), 1, "an unchanged status was written again");
    assert_eq!(w.cx.lock().apps.len(), 1);
}

// ---- deletion ----

#[tokio::test]
async fn a_connection_whose_secret_never_existed_is_released_at_once() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, false);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    let action = cleanup::cleanup(Arc::new(w.stored()), w.ctx.clone()).await.expect("released");
    assert_eq!(action, Action::await_change());
    assert!(w.cx.calls().is_empty());
}

#[tokio::test]
async fn cleanup_removes_what_we_made() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    cleanup::cleanup(Arc::new(w.stored()), w.ctx.clone()).await.expect("cleaned up");
    assert!(w.cx.lock().apps.is_empty() && w.cx.webhooks().is_empty());
}

#[tokio::test]
async fn an_unknown_tenant_during_cleanup_is_cleanup_blocked_with_the_orphan_way_out() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    w.cx.fail_next("get_application", CxError::RealmNotFound { tenant: "acme".into() });
    let err = cleanup::cleanup(Arc::new(w.stored()), w.ctx.clone()).await.unwrap_err();
    assert!(matches!(err, super::Error::CleanupBlocked { .. }), "{err}");
    let (_, reason, message) = w.condition("Ready");
    assert_eq!(reason, "CleanupBlocked");
    assert!(message.contains("deletionPolicy") && message.contains("Orphan"), "{message}");
}

#[tokio::test]
async fn repeated_carerix_failures_during_cleanup_end_in_cleanup_blocked() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    let stored = Arc::new(w.stored());
    let mut blocked = false;
    for attempt in 1..=cleanup::MAX_ATTEMPTS {
        w.cx.fail_next(
            "get_application",
            CxError::Api {
                operation: "webhooks.get_application".into(),
                status: 503,
                message: None,
                retry_after: None,
            },
        );
        match cleanup::cleanup(stored.clone(), w.ctx.clone()).await {
            Err(super::Error::CleanupBlocked { .. }) => {
                blocked = true;
                assert_eq!(attempt, cleanup::MAX_ATTEMPTS);
                break;
            }
            Err(e) => {
                // What error_policy does between attempts.
                super::error_policy(stored.clone(), &e, w.ctx.clone());
            }
            Ok(_) => panic!("cleanup cannot succeed while Carerix fails"),
        }
    }
    assert!(blocked, "cleanup looped without saying it is blocked");
    assert_eq!(w.condition("Ready").1, "CleanupBlocked");
}

// ---- throttling does not hold a worker ----

#[test]
fn the_reconcilers_client_never_sleeps_on_retry_after() {
    let policy = super::context::reconciler_retry_policy(2);
    assert_eq!(
        policy.delay(0, Some(Duration::from_secs(1))),
        None,
        "a Retry-After must come back as an error"
    );
    assert!(policy.delay(0, None).is_some(), "a plain 5xx is still retried briefly");
}

#[tokio::test]
async fn a_throttled_tenant_is_requeued_after_retry_after_instead_of_waiting_in_the_pass() {
    let obj = connection(json!({}));
    let w = world_with(FakeCarerix::new(), &obj, true);
    w.cx.fail_next(
        "list_applications",
        CxError::Api {
            operation: "webhooks.list_applications".into(),
            status: 429,
            message: None,
            retry_after: Some(Duration::from_secs(120)),
        },
    );
    let action = super::apply(Arc::new(obj), w.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(120)));
    assert_eq!(w.condition("Ready").1, "RateLimited");
}

/// `obj` under another name and tenant, with the finalizer already in place (so a pass goes
/// straight to work), stored in the fake Kubernetes.
fn another_connection(w: &World, name: &str, tenant: &str) -> CarerixConnection {
    let mut obj = connection(json!({ "tenant": tenant }));
    obj.metadata.name = Some(name.into());
    obj.metadata.finalizers = Some(vec![crate::api::FINALIZER.into()]);
    w.kube.put(&CONN.replace("/acme", &format!("/{name}")), &obj);
    obj
}

#[tokio::test(start_paused = true)]
async fn a_tenant_out_of_rate_limit_does_not_keep_another_tenants_pass_waiting_for_a_worker() {
    let seed = connection(json!({}));
    let w = world_of(FakeCarerix::new(), &seed, true, true);
    let busy = Arc::new(another_connection(&w, "busy", "busy"));
    let calm = Arc::new(another_connection(&w, "calm", "calm"));
    // The busy tenant's sync has taken its budget for the next ten seconds.
    let busy_limiter = w.ctx.rate_limiters.for_tenant("busy");
    let _ = busy_limiter.reserve(100);

    // One worker, as if the controller's concurrency were 1: busy's pass gets it first.
    let worker = Arc::new(tokio::sync::Semaphore::new(1));
    let start = tokio::time::Instant::now();
    let run = |obj: Arc<CarerixConnection>| {
        let (worker, ctx, cx) = (worker.clone(), w.ctx.clone(), w.cx.clone());
        async move {
            let _slot = worker.acquire().await.expect("open");
            let action = super::reconcile(obj, ctx).await.expect("a pass");
            (action, start.elapsed(), cx.calls().len())
        }
    };
    let busy_pass = tokio::spawn(run(busy.clone()));
    tokio::task::yield_now().await;
    let calm_pass = tokio::spawn(run(calm.clone()));
    let (busy_action, busy_done, busy_calls) = busy_pass.await.expect("joined");
    let (_, calm_done, calm_calls) = calm_pass.await.expect("joined");

    assert_eq!(busy_calls, 0, "the busy tenant's pass waited for Carerix instead of stepping aside");
    assert!(busy_done < Duration::from_secs(1), "busy's pass held the worker for {busy_done:?}");
    assert!(calm_done < Duration::from_secs(1), "calm's pass waited {calm_done:?} for the worker");
    assert!(calm_calls > 0);
    let calm_status = w.kube.get(&CONN.replace("/acme", "/calm")).expect("stored")["status"].clone();
    assert_eq!(calm_status["conditions"][0]["status"], "True", "{calm_status}");
    let wait = requeue_of(&busy_action);
    assert!(wait >= Duration::from_secs(9) && wait <= Duration::from_secs(11), "{wait:?}");

    // When its budget comes, busy's pass runs with the requests it reserved, and goes through.
    tokio::time::sleep(wait).await;
    let action = super::reconcile(busy, w.ctx.clone()).await.expect("a pass");
    assert!(requeue_of(&action) > Duration::from_secs(60), "a healthy pass waits for its interval");
    let busy_status = w.kube.get(&CONN.replace("/acme", "/busy")).expect("stored")["status"].clone();
    assert_eq!(busy_status["conditions"][0]["status"], "True", "{busy_status}");
}

fn requeue_of(action: &Action) -> Duration {
    // `Action` keeps its delay private: read it from its Debug form (`Some(9.7s)`, `Some(300ms)`).
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1).and_then(|r| r.split(')').next()).unwrap_or_default();
    let (number, unit) = inner.split_at(inner.find(|c: char| c.is_alphabetic() || c == 'µ').unwrap_or(0));
    let n: f64 = number.parse().unwrap_or_default();
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        _ => n / 1e9,
    };
    Duration::from_secs_f64(secs)
}

#[tokio::test]
async fn a_connection_handed_to_another_replica_leaves_no_carerix_client_behind() {
    use crate::shard::{Shards, ring::Ring};
    let validity = crate::leader::Validity::elected();
    validity.set(tokio::time::Instant::now() + Duration::from_secs(3600));
    let shards = Shards::member("a", validity);
    shards.enter(Ring::new(["a"]));
    shards.settle();
    let mut obj = connection(json!({}));
    obj.metadata.finalizers = Some(vec![crate::api::FINALIZER.into()]);
    let obj = Arc::new(obj);
    let w = world_in(FakeCarerix::new(), &obj, true, false, shards.clone());
    let action = super::reconcile(obj.clone(), w.ctx.clone()).await.expect("a pass");
    assert_eq!(w.condition("Ready").0, "True", "{action:?} {:?}", w.condition("Ready"));
    assert_eq!(w.ctx.cached_clients().await, 1, "its owner keeps the client (and its token)");

    // Replica b joined and owns it now: the pass the membership asks for drops the client.
    shards.enter(Ring::new(["b"]));
    shards.settle();
    let action = super::reconcile(obj.clone(), w.ctx.clone()).await.expect("a pass");
    assert_eq!(action, Action::await_change(), "nothing to do for another replica's connection");
    assert_eq!(w.ctx.cached_clients().await, 0, "the client was dropped on the hand-over");
}
