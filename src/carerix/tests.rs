//! Behaviour tests against a tiny local axum server (not the emulator): token fallback, caching,
//! refresh and single-flight, the 401 retry, retries with backoff, pagination, and redaction.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

const CLIENT_ID: &str = "0123abcd.apps.carerix.io";
const SECRET: &str = "super-secret-client-value";

#[derive(Default)]
struct Sim {
    reject_basic: bool,
    expires_in: u64,
    token_delay: Duration,
    omit_scope: bool,
    token_calls: AtomicUsize,
    basic_calls: AtomicUsize,
    post_calls: AtomicUsize,
    api_calls: AtomicUsize,
    /// Tokens (by number) the API answers 401 for; `usize::MAX` = all.
    rejected_tokens: Mutex<Vec<usize>>,
    /// Statuses (with optional Retry-After) answered before succeeding.
    script: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    last_body: Mutex<Option<Value>>,
    queries: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn jwt(n: usize) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({ "n": n, "scope": "urn:cx/graphql:data:manage urn:cx/webhooks:data:manage" });
    format!("{}.{}.sig", e.encode(br#"{"alg":"RS256"}"#), e.encode(claims.to_string()))
}

fn token_number(headers: &HeaderMap) -> Option<usize> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("n")?.as_u64().map(|n| n as usize)
}

async fn token(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let n = sim.token_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if tenant != "acme" {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": "Realm does not exist" }))).into_response();
    }
    tokio::time::sleep(sim.token_delay).await;
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let get = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let invalid = || {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid_client", "error_description": "Invalid client or Invalid client credentials" })),
        )
            .into_response()
    };
    let (id, secret) = if let Some(auth) = headers.get(header::AUTHORIZATION) {
        sim.basic_calls.fetch_add(1, Ordering::SeqCst);
        if sim.reject_basic {
            return invalid();
        }
        let encoded = auth.to_str().unwrap_or_default().trim_start_matches("Basic ");
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap_or_default();
        let decoded = String::from_utf8(decoded).unwrap_or_default();
        let (id, secret) = decoded.split_once(':').unwrap_or_default();
        (Some(id.to_owned()), Some(secret.to_owned()))
    } else {
        sim.post_calls.fetch_add(1, Ordering::SeqCst);
        (get("client_id"), get("client_secret"))
    };
    if get("grant_type").as_deref() != Some("client_credentials") {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "unsupported_grant_type" }))).into_response();
    }
    if id.as_deref() != Some(CLIENT_ID) || secret.as_deref() != Some(SECRET) {
        return invalid();
    }
    if get("scope").is_some_and(|s| s.contains("bogus")) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_scope", "error_description": "Invalid scopes: bogus" })),
        )
            .into_response();
    }
    let mut body = json!({ "access_token": jwt(n), "expires_in": sim.expires_in, "token_type": "Bearer" });
    if !sim.omit_scope {
        body["scope"] = json!("urn:cx/webhooks:data:manage profile");
    }
    Json(body).into_response()
}

use axum::Json;

async fn api(
    State(sim): State<Arc<Sim>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Response {
    sim.api_calls.fetch_add(1, Ordering::SeqCst);
    lock(&sim.queries).push(query.clone().unwrap_or_default());
    let Some(n) = token_number(&headers) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "errors": [{ "message": "no token" }] })))
            .into_response();
    };
    let rejected = lock(&sim.rejected_tokens).clone();
    if rejected.contains(&n) || rejected.contains(&usize::MAX) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "errors": [{ "message": "token expired" }] })))
            .into_response();
    }
    if let Some((status, retry_after)) = lock(&sim.script).pop_front() {
        let mut response = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({ "errors": [{ "message": format!("scripted {status}") }] })),
        )
            .into_response();
        if let Some(ra) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static(ra));
        }
        return response;
    }
    *lock(&sim.last_body) = serde_json::from_str(&body).ok();
    if body.contains("crCandidate") || body.contains("crEmployeePage") {
        return Json(json!({ "data": { "crEmployeePage": {
            "first": true, "last": true, "numberOfElements": 1, "page": 0, "size": 100, "sort": null,
            "totalElements": 1, "totalPages": 1, "items": [ { "_id": "5", "_kind": "CREmployee" } ] } } }))
        .into_response();
    }
    if body.contains("crEmployee(") {
        return Json(json!({ "data": { "crEmployee": null } })).into_response();
    }
    // Webhook applications: two pages.
    let page = query.as_deref().unwrap_or_default().contains("page=1");
    let id = if page { "app-2" } else { "app-1" };
    Json(json!({ "items": [ { "_id": id, "_kind": "Application", "name": id } ], "page": u32::from(page),
                 "size": 1, "totalElements": 2, "totalPages": 2 }))
    .into_response()
}

async fn serve(sim: Sim) -> (Arc<Sim>, String) {
    let sim = Arc::new(sim);
    let app = Router::new()
        .route("/auth/realms/{tenant}/protocol/openid-connect/token", post(token))
        .route("/graphql/v1/graphql", post(api))
        .route("/webhooks/v1/{*rest}", any(api))
        .with_state(sim.clone());
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (sim, format!("http://{addr}"))
}

fn sim() -> Sim {
    Sim { expires_in: 300, ..Sim::default() }
}

fn client(base: &str, tenant: &str, secret: &str) -> CarerixClient {
    CarerixClient::builder()
        .identity_url(base)
        .api_url(base)
        .tenant(tenant)
        .credentials(Credentials::new(CLIENT_ID, secret))
        .retry_policy(RetryPolicy {
            backoff: crate::backoff::BackoffPolicy {
                base: Duration::from_millis(5),
                max: Duration::from_millis(20),
            },
            ..RetryPolicy::default()
        })
        .rate_limiter(RateLimiter::new(1000))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn count(a: &AtomicUsize) -> usize {
    a.load(Ordering::SeqCst)
}

#[tokio::test]
async fn basic_then_post_fallback_is_remembered() {
    let (sim, base) = serve(Sim { reject_basic: true, expires_in: 1, ..sim() }).await;
    let c = client(&base, "acme", SECRET);
    let info = c.token_info().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.scopes, vec!["urn:cx/webhooks:data:manage", "profile"]);
    assert_eq!(info.expires_in, Duration::from_secs(1));
    assert_eq!((count(&sim.basic_calls), count(&sim.post_calls)), (1, 1));
    // Refresh (expires_in 1 s → refresh after 0.8 s) goes straight to client_secret_post.
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.token_info().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((count(&sim.basic_calls), count(&sim.post_calls)), (1, 2));
}

#[tokio::test]
async fn basic_works_first_and_token_is_cached() {
    let (sim, base) = serve(Sim { omit_scope: true, ..sim() }).await;
    let c = client(&base, "acme", SECRET);
    let info = c.token_info().await.unwrap_or_else(|e| panic!("{e}"));
    // No `scope` in the response: read from the JWT payload.
    assert!(info.has_scope("urn:cx/graphql:data:manage"), "{info:?}");
    let apps = c.webhooks().list_applications().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(apps.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), vec!["app-1", "app-2"]);
    assert_eq!(count(&sim.token_calls), 1);
    assert_eq!((count(&sim.basic_calls), count(&sim.post_calls)), (1, 0));
    let queries = lock(&sim.queries).clone();
    assert_eq!(
        queries,
        vec![
            "fields=name%2CsignatureVerification%2C_createdBy",
            "fields=name%2CsignatureVerification%2C_createdBy&page=1"
        ]
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let (sim, base) = serve(Sim { token_delay: Duration::from_millis(150), ..sim() }).await;
    let c = client(&base, "acme", SECRET);
    let calls = (0..8).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.token_info().await.map(|i| i.scopes.len()) })
    });
    for call in futures::future::join_all(calls).await {
        assert!(matches!(call, Ok(Ok(2))), "{call:?}");
    }
    assert_eq!(count(&sim.token_calls), 1);
}

#[tokio::test]
async fn api_401_drops_the_token_and_retries_once() {
    let (sim, base) = serve(sim()).await;
    lock(&sim.rejected_tokens).push(1);
    let c = client(&base, "acme", SECRET);
    let page = c.graphql().page(Entity::Candidates, &PageRequest::default()).await;
    let page = page.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.items.len(), 1);
    assert_eq!((count(&sim.token_calls), count(&sim.api_calls)), (2, 2));

    // A second 401 is surfaced, after exactly one retry.
    lock(&sim.rejected_tokens).push(usize::MAX);
    let err = c.graphql().page(Entity::Candidates, &PageRequest::default()).await.err();
    assert_eq!(err.as_ref().map(Error::reason), Some("Unauthorized"));
    assert_eq!((count(&sim.token_calls), count(&sim.api_calls)), (3, 4));
}

#[tokio::test]
async fn graphql_sends_variables() {
    let (sim, base) = serve(sim()).await;
    let c = client(&base, "acme", SECRET);
    let request = PageRequest {
        qualifier: Some("modificationDate >= (NSCalendarDate) '2025-01-01 00:00:00'".into()),
        sort: vec![("modificationDate".into(), Direction::Asc)],
        norestrict: true,
        ..PageRequest::default()
    };
    c.graphql().page(Entity::Candidates, &request).await.unwrap_or_else(|e| panic!("{e}"));
    let body = lock(&sim.last_body).clone().unwrap_or_default();
    assert_eq!(body["variables"], request.variables());
    assert!(body["query"].as_str().is_some_and(|q| !q.contains("2025-01-01")));
    assert_eq!(c.graphql().get(Entity::Candidates, "404").await.ok(), Some(None));
    let too_big = PageRequest { size: 101, ..PageRequest::default() };
    assert!(matches!(
        c.graphql().page(Entity::Candidates, &too_big).await,
        Err(Error::InvalidArgument { .. })
    ));
}

#[tokio::test]
async fn retries_retryable_failures() {
    let (sim, base) = serve(sim()).await;
    lock(&sim.script).extend([(503, None), (429, Some("0"))]);
    let c = client(&base, "acme", SECRET);
    c.webhooks().list_applications().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&sim.api_calls), 4); // 503, 429, then two pages

    // 4xx is not retried.
    lock(&sim.script).push_back((404, None));
    let err = c.webhooks().delete_application(&ApplicationId::from("x")).await.err();
    assert!(err.as_ref().is_some_and(Error::is_not_found), "{err:?}");
    assert_eq!(count(&sim.api_calls), 5);

    // A POST create is not retried after a 500 (it may have been applied) ...
    lock(&sim.script).push_back((500, None));
    let err = c.webhooks().create_application("x").await.err();
    assert_eq!(err.as_ref().map(Error::reason), Some("CarerixUnavailable"));
    assert_eq!(count(&sim.api_calls), 6);

    // ... and max_retries 0 surfaces the first failure.
    let none = CarerixClient::builder()
        .identity_url(&base)
        .api_url(&base)
        .tenant("acme")
        .credentials(Credentials::new(CLIENT_ID, SECRET))
        .max_retries(0)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    lock(&sim.script).push_back((429, Some("7")));
    let err = none.webhooks().list_applications().await.err();
    assert_eq!(err.as_ref().and_then(Error::retry_after), Some(Duration::from_secs(7)));
    assert_eq!(count(&sim.api_calls), 7);
}

#[tokio::test]
async fn token_errors_are_typed_and_secret_free() {
    let (_sim, base) = serve(sim()).await;
    let wrong = client(&base, "acme", "wrong-secret-value");
    let err = wrong.token_info().await.err();
    assert_eq!(err.as_ref().map(Error::reason), Some("InvalidClient"));
    let unknown = client(&base, "nobody", SECRET);
    let realm = unknown.token_info().await.err();
    assert_eq!(realm.as_ref().map(Error::reason), Some("RealmNotFound"));
    let scoped = CarerixClient::builder()
        .identity_url(&base)
        .api_url(&base)
        .tenant("acme")
        .credentials(Credentials::new(CLIENT_ID, SECRET))
        .scopes(["bogus"])
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let scope = scoped.token_info().await.err();
    assert_eq!(scope.as_ref().map(Error::reason), Some("InvalidScope"));

    // Nothing the client prints shows the secret or a token.
    let ok = client(&base, "acme", SECRET);
    ok.token_info().await.unwrap_or_else(|e| panic!("{e}"));
    let token = jwt(4);
    let printed =
        format!("{err:?} {realm:?} {scope:?} {ok:?} {scoped:?} {:?}", Credentials::new(CLIENT_ID, SECRET));
    let displayed: Vec<String> = [err, realm, scope].into_iter().flatten().map(|e| e.to_string()).collect();
    for text in [printed, displayed.join(" ")] {
        assert!(!text.contains(SECRET) && !text.contains("wrong-secret-value"), "{text}");
        assert!(!text.contains(&token[..20]), "{text}");
    }
}

/// Many connections, one connection pool: two tenants' clients reach Carerix over one kept-alive
/// TCP connection instead of one pool (and TLS configuration) each.
#[tokio::test]
async fn clients_of_different_tenants_share_one_connection_pool() {
    use std::collections::HashSet;
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;

    let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    let app = Router::new().route(
        "/auth/realms/{tenant}/protocol/openid-connect/token",
        post(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let seen = seen.clone();
            async move {
                lock(&seen).insert(peer);
                Json(json!({ "access_token": jwt(1), "expires_in": 300, "token_type": "Bearer", "scope": "profile" }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    for tenant in ["acme", "globex", "initech"] {
        let client = CarerixClient::builder()
            .identity_url(&base)
            .api_url(&base)
            .tenant(tenant)
            .credentials(Credentials::new(CLIENT_ID, SECRET))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        client.token_info().await.unwrap_or_else(|e| panic!("{tenant}: {e}"));
    }
    assert_eq!(lock(&peers).len(), 1, "every tenant's client should reuse the one pooled connection");
}
