//! The checks of `carerix-operator preflight`, each against the Carerix API itself.
//!
//! Order: the token and its scopes; whether webhooks are activated; the Webhooks permission
//! matrix on a temporary application of preflight's own (create, read, list webhooks, create a
//! webhook, update it, optionally one signed test delivery, delete the webhook, delete the
//! application) and reading other clients' applications; how Carerix names the creator, whether
//! the public key and header values come back; the GraphQL forms the sync relies on; the rate
//! limit and the answer latency.
//!
//! Every check is pushed to a shared list as soon as it is known, so an interrupted run still
//! reports what it found. The temporary application is recorded in [`Temporary`] before it is
//! created, so [`cleanup`] can remove it whenever the run ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use rand::Rng as _;
use serde_json::Value;
use tokio::sync::mpsc;

use super::report::Check;
use crate::carerix::{
    ApplicationId, CarerixClient, Direction, Entity, Error, NewWebhook, Observer, PageRequest, TokenInfo,
    WebhookId,
};
use crate::sync::keyset;

/// The three default scopes the client needs (setup guide, step 2).
pub const NEEDED_SCOPES: [&str; 3] =
    ["urn:cx/cx5Acl:data:manage", "urn:cx/cx5Wrapper:data:manage", "urn:cx/webhooks:data:manage"];
const WEBHOOKS_SCOPE: &str = "urn:cx/webhooks:data:manage";
const DATA_SCOPES: [&str; 2] = ["urn:cx/cx5Wrapper:data:manage", "urn:cx/graphql:data:manage"];
/// The name prefix of the temporary application.
pub const APPLICATION_PREFIX: &str = "carerix-operator-preflight-";
/// The custom header preflight puts on its temporary webhook to see whether values come back.
const PROBE_HEADER: &str = "x-carerix-operator-preflight";
/// Where the temporary webhook points when no delivery URL is given (`.invalid` never resolves).
const NOWHERE_URL: &str = "https://carerix-operator-preflight.invalid/webhooks";
const GUIDE: &str = "docs/carerix-setup.md";

/// What to check besides the fixed checks.
#[derive(Debug, Clone)]
pub struct Options {
    /// The entities whose GraphQL reads are checked (the connection's `sync.entities`).
    pub entities: Vec<Entity>,
    /// One signed test delivery, when asked for.
    pub delivery: Option<DeliveryOptions>,
}

/// Where the test delivery goes and where preflight receives it.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// The URL Carerix delivers to; it must reach `listen`.
    pub url: String,
    /// The local address preflight listens on.
    pub listen: SocketAddr,
    /// How long to wait for a delivery.
    pub wait: Duration,
}

/// The checks found so far, shared with the caller (kept when the run is interrupted).
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Vec<Check>>>);

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Vec<Check>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a check.
    pub fn push(&self, check: Check) {
        self.lock().push(check);
    }

    /// The checks so far.
    pub fn take(&self) -> Vec<Check> {
        std::mem::take(&mut *self.lock())
    }
}

#[derive(Default)]
struct TemporaryState {
    name: Option<String>,
    application: Option<ApplicationId>,
    webhooks: Vec<WebhookId>,
}

/// The temporary application and webhooks, as far as they exist in Carerix.
#[derive(Clone, Default)]
pub struct Temporary(Arc<Mutex<TemporaryState>>);

impl Temporary {
    fn lock(&self) -> MutexGuard<'_, TemporaryState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts answers, 429s and latencies of every request the client sends.
#[derive(Debug, Default)]
pub struct Stats(Mutex<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    durations: Vec<(String, Duration)>,
    too_many: u32,
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, StatsInner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Observer for Stats {
    fn on_request(&self, operation: &str, status: Option<u16>, duration: Duration) {
        let mut s = self.lock();
        if status == Some(429) {
            s.too_many += 1;
        }
        if status.is_some() {
            s.durations.push((operation.to_string(), duration));
        }
    }
}

fn permission_remedy(operation: &str, level: &str) -> String {
    format!(
        "Set the Webhooks permission {operation} to {level} in the client's permission matrix \
         (Maintenance → Identity Management → Clients; {GUIDE} step 2)"
    )
}

fn describe(e: &Error) -> String {
    match e.status() {
        Some(status) => match e.carerix_message() {
            Some(m) => format!("HTTP {status}: {m}"),
            None => format!("HTTP {status}"),
        },
        None => e.to_string(),
    }
}

fn unexpected_remedy(e: &Error) -> String {
    if e.is_retryable() {
        "Carerix is unavailable or rate limiting: run preflight again in a few minutes".into()
    } else {
        "Carerix answered in a way the operator does not expect: keep this output and report it to \
         the operator's maintainers"
            .into()
    }
}

/// A failed Webhooks call as a check: a 403 names the permission, anything else says what
/// happened.
fn webhooks_failure(id: &str, name: &str, what: &str, e: &Error, operation: &str, level: &str) -> Check {
    if e.is_forbidden() {
        Check::fail(
            id,
            name,
            format!("Carerix refused to {what} ({})", describe(e)),
            permission_remedy(operation, level),
        )
    } else {
        Check::fail(id, name, format!("could not {what} ({})", describe(e)), unexpected_remedy(e))
    }
}

/// Runs every check, pushing each to `sink`.
pub async fn run(
    client: &CarerixClient,
    options: &Options,
    temporary: &Temporary,
    stats: &Stats,
    sink: &Sink,
) {
    let Some(info) = token(client, sink).await else {
        return;
    };
    scopes(&info, sink);
    let webhooks_ok = webhooks_activated(client, &info, sink).await;
    if webhooks_ok {
        matrix(client, options, temporary, sink).await;
    } else {
        for (id, name) in [
            ("permission.matrix", "webhooks permissions"),
            ("creator", "creator of an application"),
            ("public-key", "public key"),
            ("header-values", "header values"),
        ] {
            sink.push(Check::skipped(id, name, "needs webhooks activated and the webhooks scope"));
        }
    }
    graphql(client, &info, options, sink).await;
    rate_limit(client, webhooks_ok, stats, sink).await;
    latency(stats, sink);
}

async fn token(client: &CarerixClient, sink: &Sink) -> Option<TokenInfo> {
    let start = Instant::now();
    let result = client.token_info().await;
    let elapsed = start.elapsed();
    let tenant = client.tenant();
    match result {
        Ok(info) => {
            sink.push(
                Check::pass(
                    "token",
                    "token",
                    format!(
                        "client {} got a token from realm {tenant} (valid {} s)",
                        client.client_id(),
                        info.expires_in.as_secs()
                    ),
                )
                .timed(elapsed),
            );
            Some(info)
        }
        Err(e) => {
            let (detail, remedy) = match &e {
                Error::InvalidClient { .. } => (
                    format!("Carerix rejected the client id or secret ({})", describe(&e)),
                    format!(
                        "Copy the client id and secret of the Confidential client again; the secret is \
                         shown only once, generate a new one if it is lost ({GUIDE} step 3). A Public \
                         client cannot be used ({GUIDE} step 2)"
                    ),
                ),
                Error::RealmNotFound { .. } => (
                    format!("the identity host has no realm {tenant:?}"),
                    format!(
                        "Check the tenant (the lowercase first part of <tenant>.carerix.net) and the \
                         identity host from the OpenID Configuration URL ({GUIDE} step 4)"
                    ),
                ),
                Error::Transport { .. } => (
                    format!("the identity host did not answer ({e})"),
                    format!("Check the identity host from the OpenID Configuration URL ({GUIDE} step 4)"),
                ),
                other => {
                    (format!("the token request failed ({})", describe(other)), unexpected_remedy(other))
                }
            };
            sink.push(Check::fail("token", "token", detail, remedy).timed(elapsed));
            None
        }
    }
}

fn scopes(info: &TokenInfo, sink: &Sink) {
    let missing: Vec<&str> = NEEDED_SCOPES.into_iter().filter(|s| !info.has_scope(s)).collect();
    if missing.is_empty() {
        sink.push(Check::pass("scopes", "scopes", format!("granted: {}", NEEDED_SCOPES.join(", "))));
        return;
    }
    let mut remedy = format!(
        "Add the default scope(s) {} to the client under Maintenance → Identity Management → \
         Clients ({GUIDE} step 2)",
        missing.join(", ")
    );
    if missing.contains(&WEBHOOKS_SCOPE) {
        remedy.push_str(&format!(
            "; {WEBHOOKS_SCOPE} only exists once Carerix support has activated webhooks for the \
             tenant ({GUIDE} step 1)"
        ));
    }
    sink.push(Check::fail(
        "scopes",
        "scopes",
        format!("missing {} (granted: {})", missing.join(", "), info.scopes.join(" ")),
        remedy,
    ));
}

async fn webhooks_activated(client: &CarerixClient, info: &TokenInfo, sink: &Sink) -> bool {
    let (id, name) = ("webhooks-activated", "webhooks activated");
    if !info.has_scope(WEBHOOKS_SCOPE) {
        sink.push(Check::fail(
            id,
            name,
            format!("cannot be checked: the token has no {WEBHOOKS_SCOPE}"),
            format!(
                "Ask Carerix support to activate webhooks for the tenant ({GUIDE} step 1), then add \
                 {WEBHOOKS_SCOPE} to the client's default scopes ({GUIDE} step 2)"
            ),
        ));
        return false;
    }
    let start = Instant::now();
    let result = client.webhooks().list_applications().await;
    let elapsed = start.elapsed();
    match result {
        Ok(apps) => {
            sink.push(
                Check::pass(
                    id,
                    name,
                    format!("the Webhooks API answers ({} applications visible)", apps.len()),
                )
                .timed(elapsed),
            );
            true
        }
        Err(e)
            if e.is_forbidden()
                && e.carerix_message().is_some_and(|m| m.to_lowercase().contains("activat")) =>
        {
            sink.push(
                Check::fail(
                    id,
                    name,
                    format!("webhooks are not activated ({})", describe(&e)),
                    format!("Ask Carerix support to activate webhooks for the tenant ({GUIDE} step 1)"),
                )
                .timed(elapsed),
            );
            false
        }
        Err(e) if e.is_forbidden() => {
            // The API answered, so the feature is there; the listing is a permission question.
            sink.push(
                Check::pass(
                    id,
                    name,
                    format!("the Webhooks API answers (listing refused: {})", describe(&e)),
                )
                .timed(elapsed),
            );
            true
        }
        Err(e) => {
            sink.push(
                Check::fail(
                    id,
                    name,
                    format!("the Webhooks API failed ({})", describe(&e)),
                    unexpected_remedy(&e),
                )
                .timed(elapsed),
            );
            false
        }
    }
}

/// A random lowercase hex string of `n` bytes.
fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
}

/// Where the public key was found.
#[derive(Default)]
struct KeySightings {
    routes: Vec<&'static str>,
    pem: Option<String>,
}

impl KeySightings {
    fn saw(&mut self, route: &'static str, pem: Option<&String>) {
        if let Some(pem) = pem.filter(|p| !p.trim().is_empty()) {
            self.routes.push(route);
            self.pem.get_or_insert_with(|| pem.clone());
        }
    }
}

async fn matrix(client: &CarerixClient, options: &Options, temporary: &Temporary, sink: &Sink) {
    let api = client.webhooks();
    let name = format!("{APPLICATION_PREFIX}{}", random_hex(4));
    temporary.lock().name = Some(name.clone());

    // create application
    let start = Instant::now();
    let created = api.create_application(&name).await;
    let elapsed = start.elapsed();
    let app = match created {
        Ok(app) => {
            temporary.lock().application = Some(app.id.clone());
            sink.push(
                Check::pass("permission.create-application", "create application", format!("created {name}"))
                    .timed(elapsed),
            );
            app
        }
        Err(e) => {
            sink.push(
                webhooks_failure(
                    "permission.create-application",
                    "create application",
                    "create an application",
                    &e,
                    "create",
                    "on",
                )
                .timed(elapsed),
            );
            for (id, n) in [
                ("creator", "creator of an application"),
                ("public-key", "public key"),
                ("header-values", "header values"),
            ] {
                sink.push(Check::skipped(id, n, "needs the temporary application"));
            }
            // reading others' applications needs no application of our own
            read_all(client, None, None, sink).await;
            return;
        }
    };
    let mut keys = KeySightings::default();
    keys.saw("create", app.public_key.as_ref());
    let mut creator = app.created_by.clone();

    // read application
    let start = Instant::now();
    let read = api.get_application(&app.id).await;
    let elapsed = start.elapsed();
    match read {
        Ok(Some(again)) => {
            keys.saw("read", again.public_key.as_ref());
            creator = creator.or(again.created_by.clone());
            sink.push(
                Check::pass("permission.read-application", "read application", "read it back").timed(elapsed),
            );
        }
        Ok(None) => sink.push(
            Check::fail(
                "permission.read-application",
                "read application",
                "Carerix answered 404 for the application it just created",
                permission_remedy("read", "all"),
            )
            .timed(elapsed),
        ),
        Err(e) => sink.push(
            webhooks_failure(
                "permission.read-application",
                "read application",
                "read the application",
                &e,
                "read",
                "all",
            )
            .timed(elapsed),
        ),
    }

    // list its webhooks
    let start = Instant::now();
    let listed = api.list_webhooks(&app.id).await;
    let elapsed = start.elapsed();
    match listed {
        Ok(ws) => sink.push(
            Check::pass("permission.list-webhooks", "list webhooks", format!("{} webhooks", ws.len()))
                .timed(elapsed),
        ),
        Err(e) => sink.push(
            webhooks_failure(
                "permission.list-webhooks",
                "list webhooks",
                "list the webhooks",
                &e,
                "read",
                "all",
            )
            .timed(elapsed),
        ),
    }

    // create a webhook
    let probe_value = random_hex(12);
    let event_types: Vec<String> =
        options.entities.iter().map(|e| format!("{}:updated", e.event_prefix())).collect();
    let new = NewWebhook {
        url: options.delivery.as_ref().map_or_else(|| NOWHERE_URL.to_string(), |d| d.url.clone()),
        event_types: if event_types.is_empty() { vec!["cremployee:updated".into()] } else { event_types },
        custom_headers: vec![(PROBE_HEADER.to_string(), probe_value.clone())],
    };
    let start = Instant::now();
    let created = api.create_webhook(&app.id, &new).await;
    let elapsed = start.elapsed();
    let webhook = match created {
        Ok(w) => {
            temporary.lock().webhooks.push(w.id.clone());
            sink.push(
                Check::pass("permission.create-webhook", "create webhook", "created one webhook")
                    .timed(elapsed),
            );
            Some(w)
        }
        Err(e) => {
            sink.push(
                webhooks_failure(
                    "permission.create-webhook",
                    "create webhook",
                    "create a webhook",
                    &e,
                    "create",
                    "on",
                )
                .timed(elapsed),
            );
            None
        }
    };

    if let Some(w) = &webhook {
        // header values, as created and as listed
        let listed =
            api.list_webhooks(&app.id).await.ok().and_then(|ws| ws.into_iter().find(|x| x.id == w.id));
        let seen: Vec<String> = [Some(w), listed.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|x| x.custom_headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(PROBE_HEADER)))
            .map(|(_, v)| v.clone())
            .collect();
        if !seen.is_empty() && seen.iter().all(|v| *v == probe_value) {
            sink.push(Check::pass(
                "header-values",
                "header values",
                "custom header values come back as sent",
            ));
        } else {
            let shown = seen.first().map_or_else(|| "nothing".to_string(), |v| format!("{v:?}"));
            sink.push(Check::note(
                "header-values",
                "header values",
                format!(
                    "Carerix answers a custom header value with {shown}, not the value sent: the \
                     operator cannot see in Carerix whether a header value is current"
                ),
            ));
        }

        // update it (disable; enable again when a delivery is wanted)
        let start = Instant::now();
        let mut updated = api.disable_webhook(&app.id, &w.id).await.map(drop);
        if updated.is_ok() && options.delivery.is_some() {
            updated = api.enable_webhook(&app.id, &w.id).await.map(drop);
        }
        let elapsed = start.elapsed();
        match updated {
            Ok(()) => sink.push(
                Check::pass(
                    "permission.update-webhook",
                    "update webhook",
                    if options.delivery.is_some() { "disabled and enabled it" } else { "disabled it" },
                )
                .timed(elapsed),
            ),
            Err(e) => sink.push(
                webhooks_failure(
                    "permission.update-webhook",
                    "update webhook",
                    "update a webhook",
                    &e,
                    "update",
                    "owner",
                )
                .timed(elapsed),
            ),
        }
    } else {
        sink.push(Check::skipped("header-values", "header values", "needs the temporary webhook"));
        sink.push(Check::skipped(
            "permission.update-webhook",
            "update webhook",
            "needs the temporary webhook",
        ));
    }

    // creator
    match creator.as_deref() {
        Some(c) if c == client.client_id() => {
            sink.push(Check::pass("creator", "creator of an application", "_createdBy._id is the client id"))
        }
        Some(c) => sink.push(Check::note(
            "creator",
            "creator of an application",
            format!(
                "Carerix records the creator as {c}, not the client id; the operator finds its \
                 application by the id in its status and by its name, nothing to do"
            ),
        )),
        None => sink.push(Check::note(
            "creator",
            "creator of an application",
            "Carerix does not say who created an application; the operator finds its application \
             by the id in its status and by its name, nothing to do",
        )),
    }

    // reading other clients' applications (also a route to the public key)
    if let Some(pem) = read_all(client, Some(&app.id), creator.as_deref(), sink).await {
        keys.saw("list", pem.as_ref());
    }

    // public key
    let key = keys.pem.as_deref().and_then(crate::receiver::parse_public_key);
    match (&keys.pem, &key) {
        (Some(_), Some(_)) => sink.push(Check::pass(
            "public-key",
            "public key",
            format!("signatureVerification.publicKey returned by {}", keys.routes.join(", ")),
        )),
        (Some(_), None) => sink.push(Check::fail(
            "public-key",
            "public key",
            "signatureVerification.publicKey is not an RSA public key in PEM form",
            "Deliveries cannot be verified, so the receiver refuses them and the sync relies on \
             polling: keep this output and report it to the operator's maintainers",
        )),
        (None, _) => sink.push(Check::fail(
            "public-key",
            "public key",
            "Carerix returned no public key (signatureVerification.publicKey) when creating, reading \
             or listing the application",
            "Deliveries cannot be verified, so the receiver refuses them and the sync relies on \
             polling (sync.interval). Ask Carerix support how to read the public key of a webhook \
             application (signatureVerification.publicKey of GET /webhooks/v1/applications/{id})",
        )),
    }

    // the test delivery
    if let (Some(delivery), Some(w)) = (&options.delivery, &webhook) {
        let _ = w;
        test_delivery(client, &app.id, delivery, key.as_ref(), temporary, sink).await;
    } else if options.delivery.is_some() {
        sink.push(Check::skipped("delivery", "test delivery", "needs the temporary webhook"));
    }

    // delete the webhooks, then the application
    let webhooks: Vec<WebhookId> = temporary.lock().webhooks.clone();
    let main_webhook = webhook.as_ref().map(|w| w.id.clone());
    for wid in webhooks {
        let start = Instant::now();
        let deleted = api.delete_webhook(&app.id, &wid).await;
        let elapsed = start.elapsed();
        match deleted {
            Ok(()) => {
                temporary.lock().webhooks.retain(|x| *x != wid);
                if Some(&wid) == main_webhook.as_ref() {
                    sink.push(
                        Check::pass("permission.delete-webhook", "delete webhook", "deleted it")
                            .timed(elapsed),
                    );
                }
            }
            Err(e) if Some(&wid) == main_webhook.as_ref() => sink.push(
                webhooks_failure(
                    "permission.delete-webhook",
                    "delete webhook",
                    "delete a webhook",
                    &e,
                    "delete",
                    "owner",
                )
                .timed(elapsed),
            ),
            Err(_) => {}
        }
    }
    if webhook.is_none() {
        sink.push(Check::skipped(
            "permission.delete-webhook",
            "delete webhook",
            "needs the temporary webhook",
        ));
    }
    let start = Instant::now();
    let deleted = api.delete_application(&app.id).await;
    let elapsed = start.elapsed();
    match deleted {
        Ok(()) => {
            temporary.lock().application = None;
            sink.push(
                Check::pass("permission.delete-application", "delete application", format!("deleted {name}"))
                    .timed(elapsed),
            );
        }
        Err(e) => sink.push(
            webhooks_failure(
                "permission.delete-application",
                "delete application",
                "delete the application",
                &e,
                "delete",
                "owner",
            )
            .timed(elapsed),
        ),
    }
}

/// Lists every application and counts other clients'. Returns the public key our own
/// application had in the listing (`Some(None)`: listed without a key; `None`: not listed).
async fn read_all(
    client: &CarerixClient,
    mine: Option<&ApplicationId>,
    creator: Option<&str>,
    sink: &Sink,
) -> Option<Option<String>> {
    let (id, name) = ("permission.read-all-applications", "read all applications");
    let start = Instant::now();
    let listed = client.webhooks().list_applications().await;
    let elapsed = start.elapsed();
    match listed {
        Ok(apps) => {
            let own = mine.and_then(|m| apps.iter().find(|a| a.id == *m));
            let others = apps
                .iter()
                .filter(|a| Some(&a.id) != mine)
                .filter(|a| creator.is_none_or(|c| a.created_by.as_deref() != Some(c)))
                .count();
            let detail = if others == 0 {
                "listing works; no other client's application exists to see".to_string()
            } else {
                format!("sees {others} application(s) of other clients (read only)")
            };
            sink.push(Check::pass(id, name, detail).timed(elapsed));
            own.map(|a| a.public_key.clone())
        }
        Err(e) => {
            sink.push(webhooks_failure(id, name, "list the applications", &e, "read", "all").timed(elapsed));
            None
        }
    }
}

type Delivered = (HeaderMap, Bytes);

async fn listen(
    addr: SocketAddr,
) -> std::io::Result<(mpsc::UnboundedReceiver<Delivered>, tokio::task::JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel::<Delivered>();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((headers, body));
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((rx, server))
}

async fn test_delivery(
    client: &CarerixClient,
    app: &ApplicationId,
    options: &DeliveryOptions,
    key: Option<&rsa::pkcs1v15::VerifyingKey<sha2::Sha256>>,
    temporary: &Temporary,
    sink: &Sink,
) {
    let (id, name) = ("delivery", "test delivery");
    let (mut rx, server) = match listen(options.listen).await {
        Ok(x) => x,
        Err(e) => {
            sink.push(Check::fail(
                id,
                name,
                format!("cannot listen on {} ({e})", options.listen),
                "Choose a free local address for --delivery-listen",
            ));
            return;
        }
    };
    // Contacts' events may carry another prefix; a second webhook catches `cruser:` events so
    // the difference shows. Carerix may refuse the unknown name, which is fine.
    let extra = NewWebhook {
        url: options.url.clone(),
        event_types: vec!["cruser:updated".into(), "cruser:created".into()],
        custom_headers: vec![],
    };
    if let Ok(w) = client.webhooks().create_webhook(app, &extra).await {
        temporary.lock().webhooks.push(w.id);
    }
    eprintln!(
        "preflight: waiting up to {} s for a delivery to {}: change a record of a synced entity \
         (for example a candidate's name) in Carerix now",
        options.wait.as_secs(),
        options.url
    );
    let start = Instant::now();
    let got = tokio::time::timeout(options.wait, rx.recv()).await;
    server.abort();
    let Ok(Some((headers, body))) = got else {
        sink.push(Check::fail(
            id,
            name,
            format!("no delivery arrived within {} s", options.wait.as_secs()),
            format!(
                "Check that {} reaches {} from the internet and that a record of a synced entity \
                 changed while preflight waited; webhooks must be activated ({GUIDE} step 1)",
                options.url, options.listen
            ),
        ));
        return;
    };
    let elapsed = start.elapsed();
    let event = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let signature = headers.get("cx-signature").and_then(|v| v.to_str().ok());
    let verified = match (key, signature) {
        (Some(k), Some(sig)) => Some(crate::receiver::verify_signature(k, &body, sig)),
        _ => None,
    };
    let unverifiable =
        "Deliveries cannot be verified: keep this output and report it to the operator's maintainers";
    let check = match (signature, verified, Entity::from_event_type(&event)) {
        (None, _, _) => Check::fail(
            id,
            name,
            format!("a {event} delivery arrived without a Cx-Signature header"),
            unverifiable,
        ),
        (Some(_), Some(false), _) => Check::fail(
            id,
            name,
            format!("a {event} delivery arrived but its Cx-Signature does not verify against the public key"),
            unverifiable,
        ),
        (Some(_), None, _) => Check::fail(
            id,
            name,
            format!("a signed {event} delivery arrived, but there is no public key to check it against"),
            "See the public key check above",
        ),
        (Some(_), Some(true), None) => Check::fail(
            id,
            name,
            format!("a signed delivery arrived for the event {event:?}, which the operator does not know"),
            format!(
                "Webhooks only receive events under the names Carerix sends: use {event:?} in \
                 spec.webhooks[].events for this entity, and report the name to the operator's \
                 maintainers (the sync maps event names to entities)"
            ),
        ),
        (Some(_), Some(true), Some(_)) => {
            Check::pass(id, name, format!("a {event} delivery arrived and its signature verifies"))
        }
    };
    sink.push(check.timed(elapsed));
}

/// Removes what is left of the temporary application (after an interruption or a failed
/// delete). Returns a check when something had to be cleaned up.
pub async fn cleanup(client: &CarerixClient, temporary: &Temporary) -> Option<Check> {
    let (name, app, webhooks) = {
        let t = temporary.lock();
        (t.name.clone(), t.application.clone(), t.webhooks.clone())
    };
    let api = client.webhooks();
    let app = match app {
        Some(app) => app,
        None => {
            // The create may have been in flight: find it by its unique name.
            let name = name?;
            let apps = api.list_applications().await.ok()?;
            apps.into_iter().find(|a| a.name.as_deref() == Some(name.as_str()))?.id
        }
    };
    for w in &webhooks {
        let _ = api.delete_webhook(&app, w).await;
    }
    match api.delete_application(&app).await {
        Ok(()) => {
            temporary.lock().application = None;
            Some(Check::pass("cleanup", "cleanup", format!("deleted the temporary application {app}")))
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => Some(Check::fail(
            "cleanup",
            "cleanup",
            format!("could not delete the temporary application {app} ({})", describe(&e)),
            format!(
                "Delete the application {app} (named {APPLICATION_PREFIX}…) with DELETE \
                 /webhooks/v1/applications/{app} once the Webhooks permission delete is owner \
                 ({GUIDE} step 2), or ask Carerix support to remove it"
            ),
        )),
    }
}

async fn graphql(client: &CarerixClient, info: &TokenInfo, options: &Options, sink: &Sink) {
    if !DATA_SCOPES.iter().any(|s| info.has_scope(s)) {
        sink.push(Check::skipped("graphql", "graphql", "needs the scope urn:cx/cx5Wrapper:data:manage"));
        return;
    }
    let gql = client.graphql();
    let sort = vec![("modificationDate".to_string(), Direction::Asc), ("_id".to_string(), Direction::Asc)];
    let mut short_page: Option<(Entity, usize, u64)> = None;
    let mut full_page_seen = false;
    let mut sample: Option<(Entity, Vec<Value>)> = None;
    for &entity in &options.entities {
        let id = format!("graphql.{}", entity.name());
        let name = format!("graphql {}", entity.name());
        let request = PageRequest {
            qualifier: None,
            page: 0,
            size: keyset::PAGE_SIZE,
            sort: sort.clone(),
            norestrict: true,
        };
        let start = Instant::now();
        let result = gql.page(entity, &request).await;
        let elapsed = start.elapsed();
        match result {
            Ok(page) => {
                let n = page.items.len();
                let expected = u64::from(keyset::PAGE_SIZE).min(page.total_elements);
                if (n as u64) < expected {
                    short_page.get_or_insert((entity, n, page.total_elements));
                } else if page.total_elements > u64::from(keyset::PAGE_SIZE) {
                    full_page_seen = true;
                }
                let complete =
                    page.items.iter().all(|i| i.get("_id").is_some() && i.get("modificationDate").is_some());
                let dates: Vec<&str> = page
                    .items
                    .iter()
                    .filter_map(|i| i.get("modificationDate").and_then(Value::as_str))
                    .collect();
                let sorted = dates.windows(2).all(|w| w[0] <= w[1]);
                if !complete {
                    sink.push(
                        Check::fail(
                            &id,
                            &name,
                            "records come back without _id or modificationDate",
                            unexpected_remedy_text(),
                        )
                        .timed(elapsed),
                    );
                } else if !sorted {
                    sink.push(
                        Check::fail(
                            &id,
                            &name,
                            "the page is not sorted by modificationDate as asked",
                            unexpected_remedy_text(),
                        )
                        .timed(elapsed),
                    );
                } else {
                    sink.push(
                        Check::pass(
                            &id,
                            &name,
                            format!(
                                "{n} of {} records, sorted by modificationDate, _id; norestrict",
                                page.total_elements
                            ),
                        )
                        .timed(elapsed),
                    );
                }
                if n >= 2 && sample.is_none() {
                    sample = Some((entity, page.items));
                }
            }
            Err(e) => {
                let remedy = if e.is_forbidden() {
                    format!(
                        "Add the default scope urn:cx/cx5Wrapper:data:manage to the client ({GUIDE} step 2)"
                    )
                } else {
                    unexpected_remedy(&e)
                };
                sink.push(
                    Check::fail(&id, &name, format!("the sync's query failed ({})", describe(&e)), remedy)
                        .timed(elapsed),
                );
            }
        }
    }

    // page size
    match short_page {
        Some((entity, n, total)) => sink.push(Check::note(
            "graphql.page-size",
            "graphql page size",
            format!(
                "Carerix served {n} records for a page of {} ({} has {total}): the sync takes each page's \
                 end from its own metadata and reads on, with more requests per record",
                keyset::PAGE_SIZE,
                entity.name()
            ),
        )),
        None if full_page_seen => sink.push(Check::pass(
            "graphql.page-size",
            "graphql page size",
            format!("pages of {} are served in full", keyset::PAGE_SIZE),
        )),
        None => sink.push(Check::note(
            "graphql.page-size",
            "graphql page size",
            format!("not provable: no selected entity has more than {} records", keyset::PAGE_SIZE),
        )),
    }

    let Some((entity, items)) = sample else {
        sink.push(Check::skipped(
            "graphql.qualifiers",
            "graphql qualifiers",
            "needs an entity with 2 records",
        ));
        return;
    };
    let ids: Vec<String> =
        items.iter().filter_map(|i| i.get("_id").and_then(Value::as_str).map(str::to_owned)).collect();

    // the keyset qualifier on (modificationDate, _id)
    let first_date = items[0].get("modificationDate").and_then(Value::as_str).unwrap_or_default();
    match crate::carerix::time::to_utc_earliest(first_date) {
        Ok(at) => {
            // The tie breaker the sync itself prefers: the entity's own numeric id, else `_id`.
            let tie = keyset::Tie::preferred(entity.id_field());
            let after = tie.value_of(&items[0]).map_or(keyset::After::Exclusive, keyset::After::Tie);
            let cursor = keyset::Cursor { at, after };
            let request = PageRequest {
                qualifier: Some(keyset::modified_after(&cursor, tie)),
                page: 0,
                size: keyset::PAGE_SIZE,
                sort: sort.clone(),
                norestrict: true,
            };
            let start = Instant::now();
            let result = gql.page(entity, &request).await;
            let elapsed = start.elapsed();
            sink.push(
                match result {
                    Ok(page)
                        if page.items.iter().any(|i| {
                            i.get("_id").and_then(Value::as_str) == ids.first().map(String::as_str)
                        }) =>
                    {
                        Check::fail(
                            "graphql.keyset",
                            "graphql modificationDate qualifier",
                            "the record at the cursor came back again: the qualifier was not applied",
                            unexpected_remedy_text(),
                        )
                    }
                    Ok(page) => Check::pass(
                        "graphql.keyset",
                        "graphql modificationDate qualifier",
                        format!(
                            "`modificationDate > (NSCalendarDate) '…' OR (… AND {} > …)` answered {} records",
                            tie.property().unwrap_or("_id"),
                            page.items.len()
                        ),
                    ),
                    Err(e) => Check::fail(
                        "graphql.keyset",
                        "graphql modificationDate qualifier",
                        format!("Carerix refused the incremental sync's qualifier ({})", describe(&e)),
                        unexpected_remedy_text(),
                    ),
                }
                .timed(elapsed),
            );
        }
        Err(e) => sink.push(Check::fail(
            "graphql.keyset",
            "graphql modificationDate qualifier",
            format!("modificationDate {first_date:?} is not an NSCalendarDate ({e})"),
            unexpected_remedy_text(),
        )),
    }

    // `_id` in qualifiers: the id listing (`_id > N`, sorted by _id) and the batched read
    let wanted: Vec<&str> = ids.iter().take(2).map(String::as_str).collect();
    let listing = PageRequest {
        qualifier: keyset::tie_after(keyset::Tie::Id, wanted.first().copied()),
        page: 0,
        size: keyset::PAGE_SIZE,
        sort: vec![("_id".to_string(), Direction::Asc)],
        norestrict: true,
    };
    let batch = PageRequest {
        qualifier: Some(keyset::ids_qualifier(wanted.iter().copied())),
        page: 0,
        size: keyset::PAGE_SIZE,
        sort: Vec::new(),
        norestrict: true,
    };
    let start = Instant::now();
    let first = gql.page_ids(entity, &listing).await;
    let second = match &first {
        Ok(_) => Some(gql.page(entity, &batch).await),
        Err(_) => None,
    };
    let elapsed = start.elapsed();
    let check = match (first, second) {
        (Ok(listed), Some(Ok(batched))) => {
            let mut got: Vec<&str> =
                batched.items.iter().filter_map(|i| i.get("_id").and_then(Value::as_str)).collect();
            got.sort_unstable();
            let mut want = wanted.clone();
            want.sort_unstable();
            let listed_ok = listed
                .items
                .iter()
                .filter_map(|i| i.get("_id").and_then(Value::as_str))
                .all(|id| keyset::cmp_ids(id, wanted[0]) == std::cmp::Ordering::Greater);
            if got == want && listed_ok {
                Check::pass(
                    "graphql.id-qualifier",
                    "graphql _id qualifier",
                    "`_id > N` sorted by _id, and `_id = A OR _id = B`",
                )
            } else {
                Check::fail(
                    "graphql.id-qualifier",
                    "graphql _id qualifier",
                    "Carerix accepted `_id` in a qualifier but did not apply it",
                    unexpected_remedy_text(),
                )
            }
        }
        (Err(e), _) | (_, Some(Err(e))) => Check::note(
            "graphql.id-qualifier",
            "graphql _id qualifier",
            format!(
                "Carerix refused `_id` in a qualifier ({}): the sync falls back to the entity's own id \
                 field (employeeID, ...) or to offset pages within one second, and reads deliveries' \
                 records one by one",
                describe(&e)
            ),
        ),
        (Ok(_), None) => Check::skipped("graphql.id-qualifier", "graphql _id qualifier", "not run"),
    };
    sink.push(check.timed(elapsed));

    // norestrict
    let count =
        |norestrict: bool| PageRequest { qualifier: None, page: 0, size: 1, sort: Vec::new(), norestrict };
    let start = Instant::now();
    let without = gql.page_ids(entity, &count(false)).await;
    let with = gql.page_ids(entity, &count(true)).await;
    let elapsed = start.elapsed();
    let check = match (without, with) {
        (Ok(a), Ok(b)) if b.total_elements >= a.total_elements => Check::pass(
            "graphql.norestrict",
            "graphql norestrict",
            format!(
                "norestrict: true shows {} more (soft-deleted) {}",
                b.total_elements - a.total_elements,
                entity.name()
            ),
        ),
        (Ok(a), Ok(b)) => Check::fail(
            "graphql.norestrict",
            "graphql norestrict",
            format!(
                "norestrict: true shows fewer records ({}) than without ({})",
                b.total_elements, a.total_elements
            ),
            unexpected_remedy_text(),
        ),
        (Err(e), _) | (_, Err(e)) => Check::fail(
            "graphql.norestrict",
            "graphql norestrict",
            format!("Carerix refused norestrict ({})", describe(&e)),
            unexpected_remedy_text(),
        ),
    };
    sink.push(check.timed(elapsed));
}

fn unexpected_remedy_text() -> String {
    "Carerix answered in a way the sync does not expect: keep this output and report it to the \
     operator's maintainers"
        .into()
}

async fn rate_limit(client: &CarerixClient, webhooks_ok: bool, stats: &Stats, sink: &Sink) {
    let (id, name) = ("rate-limit", "rate limit");
    let mut headers: Vec<String> = Vec::new();
    if webhooks_ok
        && let Ok(answer) = client.probe(&["webhooks", "v1", "applications"], &[("fields", "name")]).await
    {
        for (k, v) in &answer.headers {
            let k = k.as_str();
            if k.starts_with("x-ratelimit") || k.starts_with("ratelimit") || k == "retry-after" {
                headers.push(format!("{k}: {}", v.to_str().unwrap_or("?")));
            }
        }
    }
    let too_many = stats.lock().too_many;
    let seen = if headers.is_empty() { "no X-RateLimit-* headers".to_string() } else { headers.join(", ") };
    if too_many > 0 {
        sink.push(Check::note(
            id,
            name,
            format!("{too_many} answer(s) were 429 Too Many Requests (retried); {seen}"),
        ));
    } else {
        sink.push(Check::pass(id, name, format!("no 429 answers; {seen}")));
    }
}

fn latency(stats: &Stats, sink: &Sink) {
    let s = stats.lock();
    let mut all: Vec<Duration> = s.durations.iter().map(|(_, d)| *d).collect();
    if all.is_empty() {
        sink.push(Check::skipped("latency", "latency", "no answers"));
        return;
    }
    all.sort_unstable();
    let median = all[all.len() / 2];
    let (slowest_op, slowest) =
        s.durations.iter().max_by_key(|(_, d)| *d).map(|(o, d)| (o.clone(), *d)).unwrap_or_default();
    sink.push(Check::pass(
        "latency",
        "latency",
        format!(
            "{} answers, median {} ms, slowest {} ms ({slowest_op})",
            all.len(),
            median.as_millis(),
            slowest.as_millis()
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_scope_names_the_step_and_the_activation_for_the_webhooks_scope() {
        let sink = Sink::default();
        let info = TokenInfo {
            scopes: vec!["urn:cx/cx5Acl:data:manage".into(), "urn:cx/cx5Wrapper:data:manage".into()],
            expires_in: Duration::from_secs(300),
            remaining: Duration::from_secs(300),
        };
        scopes(&info, &sink);
        let checks = sink.take();
        assert_eq!(checks.len(), 1);
        let remedy = checks[0].remedy.clone().unwrap_or_default();
        assert!(remedy.contains("urn:cx/webhooks:data:manage") && remedy.contains("step 2"), "{remedy}");
        assert!(remedy.contains("activated webhooks") && remedy.contains("step 1"), "{remedy}");
    }

    #[test]
    fn a_refused_webhooks_call_names_the_permission_to_grant() {
        let e = Error::Api {
            operation: "x".into(),
            status: 403,
            message: Some("Access denied".into()),
            retry_after: None,
        };
        let c = webhooks_failure("p", "create application", "create an application", &e, "create", "on");
        assert_eq!(c.outcome, super::super::report::Outcome::Fail);
        assert!(c.remedy.unwrap_or_default().contains("permission create to on"));
    }
}
