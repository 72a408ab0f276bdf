//! The HTTP surface: the Carerix API paths (token, discovery/JWKS, GraphQL, webhooks REST) and the
//! emulator admin API under `/admin/v1`. Routing is done by hand in one fallback handler so faults,
//! rate limiting and the request log apply uniformly.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde_json::{Map, Value, json};

use crate::auth::{self, Claims};
use crate::graphql;
use crate::model::Entity;
use crate::sim::{
    ApplicationInfo, Fault, FaultAction, RequestLogEntry, Sim, SimError, WebhookInfo, WebhookStatus,
};

/// Builds the router.
pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new().fallback(handle).with_state(sim)
}

fn json_resp(status: u16, v: &Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (code, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn err_resp(status: u16, message: &str) -> Response {
    json_resp(status, &json!({"errors": [{"message": message}]}))
}

fn too_many() -> Response {
    let mut r = err_resp(429, "Too Many Requests");
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn sim_err(e: &SimError) -> Response {
    err_resp(e.status(), &e.to_string())
}

#[derive(Default)]
struct Ctx {
    tenant: Option<String>,
    client_id: Option<String>,
    operation: String,
}

async fn handle(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path.starts_with("/admin/") {
        return admin(&sim, &method, &uri, &body).await;
    }
    let time = Utc::now();
    let mut ctx = Ctx { operation: operation_name(&method, &path, &body), ..Ctx::default() };
    let resp = api(&sim, &method, &uri, &headers, &body, &mut ctx).await;
    sim.log_request(RequestLogEntry {
        seq: 0,
        time,
        method: method.to_string(),
        path,
        tenant: ctx.tenant,
        client_id: ctx.client_id,
        operation: ctx.operation,
        status: resp.status().as_u16(),
    });
    resp
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect()
}

/// The operation name for the request log.
fn operation_name(method: &Method, path: &str, body: &[u8]) -> String {
    let s = segments(path);
    match s.as_slice() {
        ["auth", "realms", _, "protocol", "openid-connect", "token"] => "token".into(),
        ["auth", "realms", _, "protocol", "openid-connect", "certs"] => "jwks".into(),
        ["auth", "realms", _, ".well-known", "openid-configuration"] => "discovery".into(),
        ["graphql", "v1", "graphql"] => {
            let roots = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|b| graphql::prepare(&b).ok())
                .map(|p| p.root_fields().join(","))
                .unwrap_or_default();
            if roots.is_empty() { "graphql".into() } else { format!("graphql:{roots}") }
        }
        ["webhooks", "v1", "applications", rest @ ..] => {
            let verb = |list: &str, one: &str| match *method {
                Method::GET => list.to_string(),
                Method::POST => "create".into(),
                Method::DELETE => "delete".into(),
                _ => one.to_string(),
            };
            match rest {
                [] => format!("applications:{}", verb("list", "other")),
                [_] => format!("applications:{}", verb("get", "other")),
                [_, "webhooks"] => format!("webhooks:{}", verb("list", "other")),
                [_, "webhooks", _] => format!("webhooks:{}", verb("get", "other")),
                [_, "webhooks", _, action] => format!("webhooks:{action}"),
                _ => "webhooks:unknown".into(),
            }
        }
        _ => "unknown".into(),
    }
}

async fn api(
    sim: &Sim,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    ctx: &mut Ctx,
) -> Response {
    let path = uri.path();
    let segs = segments(path);
    if let ["auth", "realms", t, ..] = segs.as_slice() {
        ctx.tenant = Some((*t).to_string());
    }
    // faults first
    if let Some(action) = sim.take_fault(path) {
        match action {
            FaultAction::Respond(status) => {
                return err_resp(status, &format!("Injected fault: HTTP {status}"));
            }
            FaultAction::TooMany => return too_many(),
            FaultAction::Delay(d) => tokio::time::sleep(d).await,
        }
    }
    match segs.as_slice() {
        ["auth", "realms", tenant, "protocol", "openid-connect", "token"] => {
            if *method != Method::POST {
                return err_resp(405, "Method not allowed");
            }
            token(sim, tenant, headers, body, ctx)
        }
        ["auth", "realms", tenant, "protocol", "openid-connect", "certs"] if sim.tenant_exists(tenant) => {
            json_resp(200, sim.signer.jwks())
        }
        ["auth", "realms", tenant, ".well-known", "openid-configuration"] if sim.tenant_exists(tenant) => {
            let iss = sim.issuer(tenant);
            json_resp(
                200,
                &json!({
                    "issuer": iss,
                    "token_endpoint": format!("{iss}/protocol/openid-connect/token"),
                    "jwks_uri": format!("{iss}/protocol/openid-connect/certs"),
                    "authorization_endpoint": format!("{iss}/protocol/openid-connect/auth"),
                    "userinfo_endpoint": format!("{iss}/protocol/openid-connect/userinfo"),
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                }),
            )
        }
        ["auth", "realms", ..] => json_resp(404, &json!({"error": "Realm does not exist"})),
        ["graphql", "v1", "graphql"] => {
            if *method != Method::POST {
                return err_resp(405, "Method not allowed: use POST");
            }
            let claims = match bearer(sim, headers, ctx) {
                Ok(c) => c,
                Err(r) => return *r,
            };
            let latency = sim.readings().latency_ms;
            if latency > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
            }
            graphql_call(sim, &claims, body, ctx)
        }
        ["webhooks", "v1", "applications", rest @ ..] => {
            let claims = match bearer(sim, headers, ctx) {
                Ok(c) => c,
                Err(r) => return *r,
            };
            webhooks(sim, &claims, method, uri, rest, body).await
        }
        _ => err_resp(404, &format!("No such path: {path}")),
    }
}

fn oauth_err(status: u16, error: &str, description: &str) -> Response {
    json_resp(status, &json!({"error": error, "error_description": description}))
}

fn token(sim: &Sim, tenant: &str, headers: &HeaderMap, body: &[u8], ctx: &mut Ctx) -> Response {
    if !sim.tenant_exists(tenant) {
        return json_resp(404, &json!({"error": "Realm does not exist"}));
    }
    let form: Map<String, Value> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let field = |k: &str| form.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut creds = None;
    if let Some(h) = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok())
        && let Some(b64) = h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic "))
    {
        {
            let decoded = STANDARD.decode(b64.trim()).ok().and_then(|b| String::from_utf8(b).ok());
            if let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                let unescape = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map_or_else(|| s.to_string(), |(_, v)| v.into_owned())
                };
                creds = Some((unescape(id), unescape(secret)));
            }
        }
    }
    if creds.is_none()
        && let (Some(id), Some(secret)) = (field("client_id"), field("client_secret"))
    {
        creds = Some((id, secret));
    }
    if let Some((id, _)) = &creds {
        ctx.client_id = Some(id.clone());
    }
    match field("grant_type").as_deref() {
        Some("client_credentials") => {}
        Some(_) => return oauth_err(400, "unsupported_grant_type", "Unsupported grant_type"),
        None => return oauth_err(400, "invalid_request", "Missing form parameter: grant_type"),
    }
    let Some((client_id, secret)) = creds else {
        return oauth_err(401, "invalid_client", "Invalid client or Invalid client credentials");
    };
    let Some((defaults, activated)) = sim.authenticate(tenant, &client_id, &secret) else {
        return oauth_err(401, "invalid_client", "Invalid client or Invalid client credentials");
    };
    let granted = match auth::grant(&defaults, field("scope").as_deref(), activated) {
        Ok(g) => g,
        Err(bad) => return oauth_err(400, "invalid_scope", &format!("Invalid scopes: {bad}")),
    };
    let scope = granted.join(" ");
    let ttl = sim.config.token_ttl;
    match sim.signer.issue(&sim.issuer(tenant), tenant, &client_id, &scope, ttl, sim.token_epoch()) {
        Ok(t) => json_resp(
            200,
            &json!({"access_token": t, "expires_in": ttl.as_secs(), "refresh_expires_in": 0,
                "token_type": "Bearer", "not-before-policy": 0, "scope": scope}),
        ),
        Err(e) => oauth_err(500, "server_error", &e.to_string()),
    }
}

/// Validates the bearer token and applies the per-client rate limit.
fn bearer(sim: &Sim, headers: &HeaderMap, ctx: &mut Ctx) -> Result<Claims, Box<Response>> {
    let unauthorized = |msg: &str| {
        let mut r = err_resp(401, msg);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
    else {
        return Err(Box::new(unauthorized("Unauthorized: missing bearer token")));
    };
    let Some(claims) = sim.signer.verify(token.trim()) else {
        return Err(Box::new(unauthorized("Unauthorized: invalid or expired token")));
    };
    if claims.sim_epoch != sim.token_epoch()
        || !sim.tenant_exists(&claims.tenant)
        || claims.iss != sim.issuer(&claims.tenant)
    {
        return Err(Box::new(unauthorized("Unauthorized: invalid or expired token")));
    }
    ctx.tenant = Some(claims.tenant.clone());
    ctx.client_id = Some(claims.azp.clone());
    if !sim.rate_ok(&claims.azp) {
        return Err(Box::new(too_many()));
    }
    Ok(claims)
}

fn scopes(c: &Claims) -> Vec<String> {
    c.scope.split_whitespace().map(str::to_owned).collect()
}

fn graphql_call(sim: &Sim, claims: &Claims, body: &[u8], ctx: &mut Ctx) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return json_resp(400, &graphql::error_body("Request body is not JSON", "BAD_REQUEST"));
    };
    let prepared = match graphql::prepare(&body) {
        Ok(p) => p,
        Err(e) => return json_resp(200, &e),
    };
    let roots = prepared.root_fields();
    if roots.iter().any(|r| r.starts_with("cr"))
        && !auth::has_any(&scopes(claims), &[auth::CX5_WRAPPER, auth::GRAPHQL])
    {
        return err_resp(403, &format!("Access denied. Required scopes: {}", auth::CX5_WRAPPER));
    }
    ctx.operation = format!("graphql:{}", roots.join(","));
    let readings = sim.readings();
    match sim.with_store(&claims.tenant, |s| prepared.execute_with(s, sim.config.page_cap, &readings)) {
        Ok(v) => json_resp(200, &v),
        Err(e) => sim_err(&e),
    }
}

fn query_params(uri: &Uri) -> Map<String, Value> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn select(full: Value, fields: Option<&str>, default_full: bool) -> Value {
    let Value::Object(m) = full else { return full };
    let wanted: Option<Vec<&str>> =
        fields.map(|f| f.split(',').map(str::trim).filter(|s| !s.is_empty()).collect());
    if wanted.is_none() && default_full {
        return Value::Object(m);
    }
    let wanted = wanted.unwrap_or_default();
    Value::Object(
        m.into_iter().filter(|(k, _)| k == "_kind" || k == "_id" || wanted.contains(&k.as_str())).collect(),
    )
}

/// The REST JSON of an application.
pub fn application_json(a: &ApplicationInfo) -> Value {
    json!({
        "_kind": "Application",
        "_id": a.id,
        "name": a.name,
        "signatureVerification": {"_kind": "AsymmetricSignatureVerification", "algorithm": "SHA256withRSA", "publicKey": a.public_key},
        "_createdBy": {"_id": a.owner, "_kind": "ServiceAccount"},
        "_createdDateTime": a.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// The REST JSON of a webhook.
pub fn webhook_json(w: &WebhookInfo) -> Value {
    json!({
        "_kind": "Webhook",
        "_id": w.id,
        "application": {"_id": w.application_id, "_kind": "WebhookApplication"},
        "url": w.url,
        "filters": w.filters,
        "customHeaders": w.custom_headers,
        "status": w.status,
        "_createdBy": {"_id": w.owner, "_kind": "ServiceAccount"},
        "_createdDateTime": w.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

fn page_json(items: Vec<Value>, params: &Map<String, Value>) -> Value {
    let total = items.len();
    let num = |k: &str| params.get(k).and_then(Value::as_str).and_then(|s| s.parse::<usize>().ok());
    let size = num("size").unwrap_or(total).max(1);
    let page = num("page").unwrap_or(0);
    let items: Vec<Value> = items.into_iter().skip(page * size).take(size).collect();
    let pages = total.div_ceil(size);
    json!({"items": items, "page": page, "size": size, "totalElements": total, "totalPages": pages,
        "numberOfElements": items.len(), "first": page == 0, "last": page + 1 >= pages})
}

async fn webhooks(
    sim: &Sim,
    claims: &Claims,
    method: &Method,
    uri: &Uri,
    rest: &[&str],
    body: &[u8],
) -> Response {
    let tenant = claims.tenant.as_str();
    let caller = claims.azp.as_str();
    match sim.tenant(tenant) {
        Ok(t) if !t.webhooks_activated => {
            return err_resp(403, &format!("Webhooks are not activated for tenant '{tenant}'"));
        }
        Err(e) => return sim_err(&e),
        Ok(_) => {}
    }
    let granted = scopes(claims);
    let read = *method == Method::GET;
    let ok = if read {
        auth::has_any(&granted, &["urn:cx/webhooks:data:read", "urn:cx/webhooks:data/applications:read"])
    } else {
        auth::has_any(&granted, &[auth::WEBHOOKS_MANAGE])
            || (rest.len() >= 3 && auth::has_any(&granted, &["urn:cx/webhooks:data/webhooks:manage"]))
            || (rest.len() <= 1 && auth::has_any(&granted, &["urn:cx/webhooks:data/applications:manage"]))
    };
    if !ok {
        return err_resp(403, &format!("Access denied. Required scopes: {}", auth::WEBHOOKS_MANAGE));
    }
    let sw = sim.switches();
    let needed = crate::switches::Permission::of_request(method, rest);
    if sw.denies(needed) {
        return err_resp(
            403,
            &format!(
                "Access denied: permission urn:cx/webhooks:data/webhooks:{} is not granted",
                needed.as_str()
            ),
        );
    }
    let params = query_params(uri);
    let fields = params.get("fields").and_then(Value::as_str);
    let parse_body = || serde_json::from_slice::<Value>(body).ok();
    let result: Result<Response, SimError> = match (method.clone(), rest) {
        (Method::GET, []) => sim.api_applications(tenant).map(|apps| {
            let items =
                apps.iter().map(|a| select(sw.application(application_json(a)), fields, false)).collect();
            json_resp(200, &page_json(items, &params))
        }),
        (Method::POST, []) => {
            let Some(b) = parse_body() else {
                return err_resp(400, "Request body must be JSON");
            };
            let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
            sim.create_application(tenant, caller, name)
                .await
                .map(|a| json_resp(201, &sw.application(application_json(&a))))
        }
        (Method::GET, [app]) => sim
            .api_application(tenant, app)
            .map(|a| json_resp(200, &select(sw.application(application_json(&a)), fields, true))),
        (Method::DELETE, [app]) => {
            sim.delete_application(tenant, Some(caller), app).map(|()| StatusCode::NO_CONTENT.into_response())
        }
        (Method::GET, [app, "webhooks"]) => sim.api_webhooks(tenant, app).map(|ws| {
            let items = ws.iter().map(|w| select(sw.webhook(webhook_json(w)), fields, false)).collect();
            json_resp(200, &page_json(items, &params))
        }),
        (Method::POST, [app, "webhooks"]) => {
            let Some(b) = parse_body() else {
                return err_resp(400, "Request body must be JSON");
            };
            sim.create_webhook(tenant, caller, app, &b).map(|w| json_resp(201, &sw.webhook(webhook_json(&w))))
        }
        (Method::GET, [app, "webhooks", id]) => sim
            .api_webhook(tenant, app, id)
            .map(|w| json_resp(200, &select(sw.webhook(webhook_json(&w)), fields, true))),
        (Method::DELETE, [app, "webhooks", id]) => sim
            .api_webhook(tenant, app, id)
            .and_then(|_| sim.delete_webhook(tenant, Some(caller), id))
            .map(|()| StatusCode::NO_CONTENT.into_response()),
        (Method::POST, [app, "webhooks", id, action @ ("enable" | "disable")]) => {
            let status = if *action == "enable" { WebhookStatus::Enabled } else { WebhookStatus::Disabled };
            sim.api_webhook(tenant, app, id)
                .and_then(|_| sim.set_webhook_status(tenant, Some(caller), id, status))
                .map(|w| json_resp(200, &sw.webhook(webhook_json(&w))))
        }
        (_, [] | [_] | [_, "webhooks"] | [_, "webhooks", _] | [_, "webhooks", _, "enable" | "disable"]) => {
            Ok(err_resp(405, "Method not allowed"))
        }
        _ => Ok(err_resp(404, "No such path")),
    };
    result.unwrap_or_else(|e| sim_err(&e))
}

// -------------------------------------------------------------------- admin API

fn admin_result<T: serde::Serialize>(r: Result<T, SimError>, status: u16) -> Response {
    match r {
        Ok(v) => json_resp(status, &serde_json::to_value(v).unwrap_or(Value::Null)),
        Err(e) => sim_err(&e),
    }
}

fn entity_of(s: &str) -> Result<Entity, SimError> {
    Entity::parse(s).ok_or_else(|| SimError::NotFound(format!("unknown entity '{s}'")))
}

fn id_of(s: &str) -> Result<u64, SimError> {
    s.parse().map_err(|_| SimError::BadRequest(format!("'{s}' is not a numeric id")))
}

async fn admin(sim: &Sim, method: &Method, uri: &Uri, body: &[u8]) -> Response {
    let segs = segments(uri.path());
    let Some(["admin", "v1", rest @ ..]) = Some(segs.as_slice()) else {
        return err_resp(404, "No such admin path");
    };
    let b: Value = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return err_resp(400, &format!("body is not JSON: {e}")),
        }
    };
    let s = |k: &str| b.get(k).and_then(Value::as_str);
    let params = query_params(uri);
    match (method.clone(), rest) {
        (Method::GET, ["tenants"]) => {
            json_resp(200, &serde_json::to_value(sim.tenants()).unwrap_or(Value::Null))
        }
        (Method::POST, ["tenants"]) => admin_result(
            sim.create_tenant(
                s("name").unwrap_or_default(),
                b.get("webhooks_activated").and_then(Value::as_bool).unwrap_or(false),
                b.get("records").and_then(Value::as_u64).map(|n| n as usize),
            ),
            201,
        ),
        (Method::GET, ["tenants", t]) => admin_result(sim.tenant(t), 200),
        (Method::PUT, ["tenants", t, "webhooks-activated"]) => admin_result(
            sim.set_webhooks_activated(t, b.get("activated").and_then(Value::as_bool).unwrap_or(false))
                .and_then(|()| sim.tenant(t)),
            200,
        ),
        (Method::GET, ["clients"]) => {
            json_resp(200, &serde_json::to_value(sim.clients()).unwrap_or(Value::Null))
        }
        (Method::POST, ["clients"]) => {
            let scopes = b
                .get("scopes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect());
            admin_result(
                sim.register_client(s("tenant").unwrap_or_default(), s("client_id"), s("secret"), scopes),
                201,
            )
        }
        (Method::POST, ["clients", id, "rotate-secret"]) => {
            admin_result(sim.rotate_secret(id, s("secret")), 200)
        }
        (Method::POST, ["clients", id, "revoke"]) => {
            admin_result(sim.revoke_client(id).map(|()| json!({"revoked": id})), 200)
        }
        (Method::GET, ["tenants", t, "records", e]) => {
            admin_result(entity_of(e).and_then(|e| sim.list_records(t, e)), 200)
        }
        (Method::POST, ["tenants", t, "records", e]) => {
            let fields = b.as_object().cloned().unwrap_or_default();
            admin_result(entity_of(e).and_then(|e| sim.create_record(t, e, fields)), 201)
        }
        (Method::GET, ["tenants", t, "records", e, id]) => {
            admin_result(entity_of(e).and_then(|e| sim.get_record(t, e, id_of(id)?)), 200)
        }
        (Method::PATCH | Method::PUT, ["tenants", t, "records", e, id]) => {
            let fields = b.as_object().cloned().unwrap_or_default();
            admin_result(entity_of(e).and_then(|e| sim.update_record(t, e, id_of(id)?, fields)), 200)
        }
        (Method::DELETE, ["tenants", t, "records", e, id]) => {
            let hard = params.get("hard").and_then(Value::as_str) == Some("true");
            let r = entity_of(e).and_then(|e| {
                let id = id_of(id)?;
                if hard { sim.hard_delete_record(t, e, id) } else { sim.soft_delete_record(t, e, id) }
            });
            admin_result(r.map(|()| json!({"deleted": true, "hard": hard})), 200)
        }
        (Method::GET, ["tenants", t, "applications"]) => admin_result(sim.applications(t), 200),
        (Method::POST, ["tenants", t, "applications"]) => admin_result(
            sim.create_application(t, s("owner").unwrap_or("admin"), s("name").unwrap_or_default()).await,
            201,
        ),
        (Method::DELETE, ["tenants", t, "applications", app]) => {
            admin_result(sim.delete_application(t, None, app).map(|()| json!({"deleted": app})), 200)
        }
        (Method::POST, ["tenants", t, "applications", app, "webhooks"]) => {
            admin_result(sim.create_webhook(t, s("owner").unwrap_or("admin"), app, &b), 201)
        }
        (Method::GET, ["tenants", t, "webhooks"]) => admin_result(sim.webhooks(t, None), 200),
        (Method::PUT, ["tenants", t, "webhooks", id, "status"]) => {
            let status: Result<WebhookStatus, SimError> =
                serde_json::from_value(b.get("status").cloned().unwrap_or(Value::Null))
                    .map_err(|_| SimError::BadRequest("status must be enabled, disabled or error".into()));
            admin_result(status.and_then(|st| sim.set_webhook_status(t, None, id, st)), 200)
        }
        (Method::DELETE, ["tenants", t, "webhooks", id]) => {
            admin_result(sim.delete_webhook(t, None, id).map(|()| json!({"deleted": id})), 200)
        }
        (Method::GET, ["faults"]) => {
            json_resp(200, &serde_json::to_value(sim.faults()).unwrap_or(Value::Null))
        }
        (Method::POST, ["faults"]) => {
            if s("kind") == Some("expire_tokens") {
                sim.expire_tokens();
                return json_resp(200, &json!({"expired": true}));
            }
            match serde_json::from_value::<Fault>(b.clone()) {
                Ok(f) => {
                    sim.inject_fault(f);
                    json_resp(201, &serde_json::to_value(sim.faults()).unwrap_or(Value::Null))
                }
                Err(e) => err_resp(400, &format!("bad fault: {e}")),
            }
        }
        (Method::DELETE, ["faults"]) => {
            sim.clear_faults();
            json_resp(200, &json!({"cleared": true}))
        }
        (Method::GET, ["requests"]) => {
            json_resp(200, &serde_json::to_value(sim.request_log()).unwrap_or(Value::Null))
        }
        (Method::GET, ["deliveries"]) => {
            json_resp(200, &serde_json::to_value(sim.delivery_log()).unwrap_or(Value::Null))
        }
        (Method::GET, ["switches"]) => {
            json_resp(200, &serde_json::to_value(sim.switches()).unwrap_or(Value::Null))
        }
        (Method::PUT, ["switches"]) => match serde_json::from_value::<crate::switches::Switches>(b.clone()) {
            Ok(sw) => {
                sim.set_switches(sw);
                json_resp(200, &serde_json::to_value(sim.switches()).unwrap_or(Value::Null))
            }
            Err(e) => err_resp(400, &format!("bad switches: {e}")),
        },
        (Method::DELETE, ["logs"]) => {
            sim.clear_logs();
            json_resp(200, &json!({"cleared": true}))
        }
        (Method::GET, ["readings"]) => {
            json_resp(200, &serde_json::to_value(sim.readings()).unwrap_or(Value::Null))
        }
        (Method::PUT | Method::PATCH, ["readings"]) => {
            if s("preset") == Some("hostile") {
                sim.set_readings(crate::Readings::hostile());
                return json_resp(200, &serde_json::to_value(sim.readings()).unwrap_or(Value::Null));
            }
            if s("preset") == Some("default") {
                sim.set_readings(crate::Readings::default());
                return json_resp(200, &serde_json::to_value(sim.readings()).unwrap_or(Value::Null));
            }
            admin_result(sim.patch_readings(&b), 200)
        }
        (Method::PUT, ["tenants", t, "records", e, id, "modification-date"]) => {
            let at = match b.get("value") {
                None | Some(Value::Null) => None,
                Some(Value::String(v)) => match crate::dates::parse(v) {
                    Some(at) => Some(at),
                    None => return err_resp(400, "value must be 'yyyy-MM-dd HH:mm:ss[ +zzzz]' or null"),
                },
                Some(_) => return err_resp(400, "value must be 'yyyy-MM-dd HH:mm:ss[ +zzzz]' or null"),
            };
            admin_result(entity_of(e).and_then(|e| sim.set_modification_date(t, e, id_of(id)?, at)), 200)
        }
        _ => err_resp(404, "No such admin route (see carerix-sim --help)"),
    }
}
