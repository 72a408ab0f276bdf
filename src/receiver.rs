//! The webhook receiver: `POST /webhooks/{namespace}/{name}`.
//!
//! The receiver does no work for strangers. Order of work, each step answering with its own
//! status code (see [`Outcome::status`]):
//! 1. `namespace` must be a DNS label and `name` a CarerixConnection name (a DNS subdomain of at
//!    most 63 characters): else 404, with nothing looked up;
//! 2. at most [`Limits::rate_per_second`] requests per second per connection name: else 429;
//! 3. a `Cx-Signature` header must be present: else 401;
//! 4. the body must arrive within [`Limits::body_read_timeout`] (else 408) and fit
//!    [`MAX_BODY_BYTES`] (else 413);
//! 5. the connection must be in the replica's cache ([`Connections`], which every replica
//!    keeps) and the signature (base64 RSASSA-PKCS1-v1_5 SHA-256 over the raw body) must verify
//!    against the application key already known for it (`status.webhooks.publicKey`, or the
//!    running sync's key): else 401, the same answer for an unknown connection, a connection
//!    without a known key and a bad signature. A failure on a known connection asks the
//!    controller to re-check it, at most once per [`RECHECK_INTERVAL`]; Carerix is never asked
//!    for a key on behalf of a delivery;
//! 6. sharded: a connection this replica does not work on is forwarded, verified, to its owner's
//!    receiver (see [`crate::shard`]), or answered 503 while it is being handed over;
//! 7. the payload must be JSON with `id`, `type` and `data.entityId`: else 400;
//! 8. an event id already processed answers 200 without work;
//! 9. the record is fetched (coalesced with other deliveries, through the tenant's rate limit), and
//!    the row and the event id are written in one transaction; only then 200.
//!
//! A down sink or a failing Carerix answers 503 so that Carerix retries; processing is time-boxed
//! to 8 s, inside Carerix's 10 s window. Nothing of the payload, the key or the sink URL is logged.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::{StreamExt, channel::mpsc::UnboundedSender};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kube::{Client, ResourceExt, runtime::reflector::ObjectRef};
use rsa::pkcs1v15::VerifyingKey;
use serde::Deserialize;
use sha2::Sha256;
use tracing::{debug, instrument, warn};

use crate::{
    api::CarerixConnection,
    carerix::{Entity, RateLimiters},
    controller,
    metrics::Metrics,
    shard::{FORWARDED_HEADER, Route, Shards},
    sync::{
        Registration, SyncManager,
        store::{self, Change},
    },
};
pub use crate::{
    cache::Connections,
    signature::{parse_public_key, verify_signature},
};

/// Largest delivery body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "cx-signature";

/// How long a delivery may take before it is answered 503 (Carerix waits 10 s).
pub const PROCESSING_BUDGET: Duration = Duration::from_secs(8);

/// At most one re-check of a connection's key per this period, whatever the deliveries say.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How long a receiver-built view of a connection (on a standby) is kept before it is rebuilt.
const REGISTRATION_TTL: Duration = Duration::from_secs(120);

/// `Retry-After` of a delivery this replica cannot serve during a hand-over, in seconds.
pub const HAND_OVER_RETRY_AFTER_SECONDS: u64 = 5;

/// The `result` label of a delivery forwarded to its owner (which counts its own result).
pub const FORWARDED: &str = "forwarded";

/// Headers of a delivery that are not passed on when it is forwarded (hop-by-hop, or set anew).
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// Rate-limiter entries kept before idle ones are dropped.
const LIMITER_ENTRIES: usize = 10_000;

/// What became of a delivery: the answer's status code and the `result` label of
/// `carerix_operator_receiver_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Applied to the sink.
    Accepted,
    /// An event id already processed.
    Duplicate,
    /// Verified, but nothing to do (an entity this connection does not sync, or no sync).
    Ignored,
    /// The path does not name a connection (not a DNS label / subdomain).
    InvalidName,
    /// More requests for this connection than the per-connection rate allows.
    RateLimited,
    /// More requests in flight than the receiver serves at once.
    Overloaded,
    /// No `Cx-Signature` header.
    Unsigned,
    /// The body took longer than the body read timeout, or broke off.
    SlowBody,
    /// The body is larger than [`MAX_BODY_BYTES`].
    TooLarge,
    /// No such connection in the informer cache.
    UnknownConnection,
    /// The connection has no known application key yet.
    NoKnownKey,
    /// The signature does not verify against the known key.
    BadSignature,
    /// Verified, but not JSON with `id`, `type` and `data.entityId`.
    Malformed,
    /// Verified, but the connection is suspended: Carerix retries later.
    Suspended,
    /// Verified, but the sink of a connection this replica does not sync could not be set up.
    SetupFailed,
    /// The sink could not be reached.
    SinkUnavailable,
    /// Carerix could not be reached for the record.
    CarerixUnavailable,
    /// Processing took longer than [`PROCESSING_BUDGET`].
    Timeout,
    /// Verified, but sharded and no replica serves the connection right now (hand-over, or a
    /// forwarded delivery that reached a replica that does not own it): Carerix retries.
    NotOwner,
    /// Verified, but the owner's receiver could not be reached: Carerix retries.
    ForwardFailed,
}

impl Outcome {
    /// Every outcome, for tests and documentation.
    pub const ALL: [Outcome; 20] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Ignored,
        Outcome::InvalidName,
        Outcome::RateLimited,
        Outcome::Overloaded,
        Outcome::Unsigned,
        Outcome::SlowBody,
        Outcome::TooLarge,
        Outcome::UnknownConnection,
        Outcome::NoKnownKey,
        Outcome::BadSignature,
        Outcome::Malformed,
        Outcome::Suspended,
        Outcome::SetupFailed,
        Outcome::SinkUnavailable,
        Outcome::CarerixUnavailable,
        Outcome::Timeout,
        Outcome::NotOwner,
        Outcome::ForwardFailed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::InvalidName => "invalid_name",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overloaded => "overloaded",
            Outcome::Unsigned => "unsigned",
            Outcome::SlowBody => "slow_body",
            Outcome::TooLarge => "too_large",
            Outcome::UnknownConnection => "unknown_connection",
            Outcome::NoKnownKey => "no_known_key",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::Suspended => "suspended",
            Outcome::SetupFailed => "setup_failed",
            Outcome::SinkUnavailable => "sink_unavailable",
            Outcome::CarerixUnavailable => "carerix_unavailable",
            Outcome::Timeout => "timeout",
            Outcome::NotOwner => "not_owner",
            Outcome::ForwardFailed => "forward_failed",
        }
    }

    /// The answer. An unsigned caller cannot tell an unknown connection from a known one: both
    /// get 401. 5xx answers make Carerix retry.
    pub fn status(self) -> StatusCode {
        match self {
            Outcome::Accepted | Outcome::Duplicate | Outcome::Ignored => StatusCode::OK,
            Outcome::InvalidName => StatusCode::NOT_FOUND,
            Outcome::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Outcome::Unsigned | Outcome::UnknownConnection | Outcome::NoKnownKey | Outcome::BadSignature => {
                StatusCode::UNAUTHORIZED
            }
            Outcome::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Malformed => StatusCode::BAD_REQUEST,
            Outcome::Overloaded
            | Outcome::Suspended
            | Outcome::SetupFailed
            | Outcome::SinkUnavailable
            | Outcome::CarerixUnavailable
            | Outcome::Timeout
            | Outcome::NotOwner
            | Outcome::ForwardFailed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The answer to a delivery: this replica's outcome, or the owner's answer to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Served (or refused) here.
    Local(Outcome),
    /// Forwarded to the owner's receiver: its status and `Retry-After`, passed on.
    Forwarded {
        /// The owner's status.
        status: StatusCode,
        /// The owner's `Retry-After`, if any.
        retry_after: Option<HeaderValue>,
    },
}

impl From<Outcome> for Reply {
    fn from(outcome: Outcome) -> Self {
        Reply::Local(outcome)
    }
}

/// Whether `s` is an RFC 1123 DNS label: 1 to 63 lowercase letters, digits and `-`, starting and
/// ending with a letter or digit. Namespace names are DNS labels.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` can be the name of a CarerixConnection: an RFC 1123 DNS subdomain (labels joined
/// by `.`), of at most 63 characters (the CRD's own limit, below the subdomain's 253).
pub fn is_connection_name(s: &str) -> bool {
    s.len() <= 63 && s.split('.').all(is_dns_label)
}

/// A delivery's payload (the fields the receiver uses).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Event id (deduplication key).
    pub id: String,
    /// `cremployee:updated`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// What changed.
    pub data: DeliveryData,
}

/// The `data` of a delivery.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryData {
    /// The record's `_id`.
    pub entity_id: String,
}

/// Parses a payload; `None` when it is not JSON or lacks a field (or has an empty one).
pub fn parse_delivery(body: &[u8]) -> Option<Delivery> {
    let d: Delivery = serde_json::from_slice(body).ok()?;
    (!d.id.is_empty() && !d.event_type.is_empty() && !d.data.entity_id.is_empty()).then_some(d)
}

/// The entity an event type is about, if this connection syncs it.
pub fn entity_for(event_type: &str, synced: &[Entity]) -> Option<Entity> {
    Entity::from_event_type(event_type).filter(|e| synced.contains(e))
}

/// The receiver's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time allowed for a request's headers (and for an idle kept-alive connection).
    pub header_read_timeout: Duration,
    /// Time allowed for a whole body, from the end of the headers.
    pub body_read_timeout: Duration,
    /// Time allowed for a whole request, a backstop behind the others.
    pub request_timeout: Duration,
    /// Requests served at once; more are answered 503 at once.
    pub max_concurrency: usize,
    /// Requests per second per connection name (bursts of twice that pass).
    pub rate_per_second: NonZeroU32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(25),
            max_concurrency: 256,
            rate_per_second: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// A parsed application key and the PEM it came from.
struct KnownKey {
    pem: String,
    key: Arc<VerifyingKey<Sha256>>,
}

/// Mutable receiver state, kept per existing connection only (never per requested name).
#[derive(Default)]
struct Caches {
    keys: HashMap<String, KnownKey>,
    rechecks: HashMap<String, Instant>,
    registrations: HashMap<String, (Instant, Arc<Registration>)>,
}

/// What the receiver needs to answer deliveries.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    metrics: Arc<Metrics>,
    sync: Arc<SyncManager>,
    connections: Connections,
    carerix: controller::Settings,
    rate_limiters: RateLimiters,
    reconcile: UnboundedSender<ObjectRef<CarerixConnection>>,
    leading: Arc<AtomicBool>,
    shards: Shards,
    identity: String,
    forwarder: reqwest::Client,
    limits: Limits,
    limiter: DefaultKeyedRateLimiter<String>,
    caches: Mutex<Caches>,
}

/// The parts a [`Receiver`] is built from.
pub struct Parts {
    /// Kubernetes client: reads credentials and sink Secrets, only for verified deliveries of
    /// connections whose sync this replica does not run.
    pub client: Client,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The data sync, which applies deliveries.
    pub sync: Arc<SyncManager>,
    /// The informer cache of connections.
    pub connections: Connections,
    /// Timeout and retries of the Carerix clients built for verified deliveries.
    pub carerix: controller::Settings,
    /// Per-tenant rate limiters.
    pub rate_limiters: RateLimiters,
    /// Asks the controller to reconcile a connection.
    pub reconcile: UnboundedSender<ObjectRef<CarerixConnection>>,
    /// This replica runs the controllers (re-check requests are only sent then).
    pub leading: Arc<AtomicBool>,
    /// This replica's share of the connections ([`Shards::unsharded`] without sharding).
    pub shards: Shards,
    /// This replica's identity, sent along with forwarded deliveries.
    pub identity: String,
    /// Limits.
    pub limits: Limits,
}

impl Receiver {
    /// A receiver.
    pub fn new(parts: Parts) -> Self {
        let rate = parts.limits.rate_per_second;
        let burst = rate.checked_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)).unwrap_or(rate);
        let limiter = RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst));
        // Plain HTTP to another replica's pod address: never through a proxy from the environment.
        let forwarder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(PROCESSING_BUDGET)
            .build()
            .unwrap_or_default();
        Receiver {
            inner: Arc::new(Inner {
                client: parts.client,
                metrics: parts.metrics,
                sync: parts.sync,
                connections: parts.connections,
                carerix: parts.carerix,
                rate_limiters: parts.rate_limiters,
                reconcile: parts.reconcile,
                leading: parts.leading,
                shards: parts.shards,
                identity: parts.identity,
                forwarder,
                limits: parts.limits,
                limiter,
                caches: Mutex::new(Caches::default()),
            }),
        }
    }

    /// The informer cache.
    pub fn connections(&self) -> &Connections {
        &self.inner.connections
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Counts an outcome and answers with its status code.
    pub fn answer(&self, outcome: Outcome) -> StatusCode {
        self.inner.metrics.delivery(outcome.as_str());
        outcome.status()
    }

    /// Counts a reply and makes the response: a hand-over asks Carerix to retry a little later.
    pub fn respond(&self, reply: Reply) -> Response {
        match reply {
            Reply::Local(outcome) => {
                let status = self.answer(outcome);
                if matches!(outcome, Outcome::NotOwner | Outcome::ForwardFailed) {
                    (status, [(header::RETRY_AFTER, HAND_OVER_RETRY_AFTER_SECONDS.to_string())])
                        .into_response()
                } else {
                    status.into_response()
                }
            }
            Reply::Forwarded { status, retry_after } => {
                self.inner.metrics.delivery(FORWARDED);
                let mut response = status.into_response();
                if let Some(value) = retry_after {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
        }
    }

    /// Passes a verified delivery on to the owner's receiver at `address`, as it came (same
    /// path, headers and body), marked so that it is not forwarded again.
    async fn forward(
        &self,
        address: &str,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Reply {
        let url = format!("http://{address}/webhooks/{namespace}/{name}");
        let mut request = self.inner.forwarder.post(url).body(body);
        for (header_name, value) in headers {
            if !NOT_FORWARDED.contains(&header_name.as_str()) && header_name.as_str() != FORWARDED_HEADER {
                request = request.header(header_name, value);
            }
        }
        request = request.header(FORWARDED_HEADER, self.inner.identity.as_str());
        match request.send().await {
            Ok(answer) => Reply::Forwarded {
                status: answer.status(),
                retry_after: answer.headers().get(header::RETRY_AFTER).cloned(),
            },
            Err(e) => {
                debug!(error = %e, owner = %address, "could not forward a delivery to its owner");
                Reply::Local(Outcome::ForwardFailed)
            }
        }
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.inner.caches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request for `key` fits the per-connection rate.
    fn admit(&self, key: &str) -> bool {
        let limiter = &self.inner.limiter;
        if limiter.len() > LIMITER_ENTRIES {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key.to_string()).is_ok()
    }

    /// The key published in the connection's status, parsed once per PEM.
    fn status_key(&self, key: &str, obj: &CarerixConnection) -> Option<Arc<VerifyingKey<Sha256>>> {
        let pem = obj.status.as_ref()?.webhooks.as_ref()?.public_key.as_deref()?;
        let mut caches = self.caches();
        if let Some(known) = caches.keys.get(key)
            && known.pem == pem
        {
            return Some(known.key.clone());
        }
        let parsed = Arc::new(parse_public_key(pem)?);
        caches.keys.insert(key.to_string(), KnownKey { pem: pem.to_string(), key: parsed.clone() });
        Some(parsed)
    }

    /// Checks the signature against every key known for the connection.
    fn verify(
        &self,
        key: &str,
        obj: &CarerixConnection,
        reg: Option<&Registration>,
        body: &[u8],
        signature: &str,
    ) -> Result<(), Outcome> {
        let from_status = self.status_key(key, obj);
        let from_sync = reg.and_then(|r| r.verifying_key.as_ref());
        if from_status.is_none() && from_sync.is_none() {
            return Err(Outcome::NoKnownKey);
        }
        let ok = from_status.is_some_and(|k| verify_signature(&k, body, signature))
            || from_sync.is_some_and(|k| verify_signature(k, body, signature));
        if ok { Ok(()) } else { Err(Outcome::BadSignature) }
    }

    /// Asks the controller to re-read the connection's application (and so its key), at most
    /// once per [`RECHECK_INTERVAL`] per connection, and only where the controller runs.
    fn request_recheck(&self, key: &str, obj: &CarerixConnection) {
        if !self.inner.leading.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut caches = self.caches();
            if caches.rechecks.get(key).is_some_and(|at| at.elapsed() < RECHECK_INTERVAL) {
                return;
            }
            caches.rechecks.insert(key.to_string(), Instant::now());
        }
        debug!("a delivery did not verify; asking for a re-check of the connection's key");
        let _ = self.inner.reconcile.unbounded_send(ObjectRef::from_obj(obj));
    }

    /// The registration of a connection with a sync, for a verified delivery: the running
    /// sync's, or one this receiver builds (reading Secrets, never Carerix) and keeps for a while.
    async fn registration(&self, key: &str, obj: &CarerixConnection) -> Result<Arc<Registration>, Outcome> {
        if let Some(reg) = self.inner.sync.registration(key) {
            return Ok(reg);
        }
        if let Some((at, reg)) = self.caches().registrations.get(key)
            && at.elapsed() < REGISTRATION_TTL
        {
            return Ok(reg.clone());
        }
        let ns = obj.namespace().unwrap_or_default();
        let creds = match controller::read_credentials(
            &self.inner.client,
            &ns,
            &obj.spec.credentials_secret_ref.name,
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => return Err(Outcome::SetupFailed),
        };
        let i = &self.inner;
        let cx = controller::new_client(&obj.spec, &creds, &i.carerix, &i.rate_limiters, &i.metrics)
            .map_err(|_| Outcome::SetupFailed)?;
        let pem = obj.status.as_ref().and_then(|s| s.webhooks.as_ref()).and_then(|w| w.public_key.as_deref());
        let reg = i.sync.receiver_registration(obj, &cx, pem).await.map_err(|e| {
            debug!(error = %e, "could not reach the sink of a delivery");
            Outcome::SetupFailed
        })?;
        let reg = Arc::new(reg);
        self.caches().registrations.insert(key.to_string(), (Instant::now(), reg.clone()));
        Ok(reg)
    }

    /// The whole delivery, from a valid name on.
    async fn deliver(&self, namespace: &str, name: &str, headers: &HeaderMap, body: Body) -> Reply {
        let key = format!("{namespace}/{name}");
        if !self.admit(&key) {
            return Outcome::RateLimited.into();
        }
        let Some(signature) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
            return Outcome::Unsigned.into();
        };
        let body = match tokio::time::timeout(self.inner.limits.body_read_timeout, read_body(body)).await {
            Ok(Ok(body)) => body,
            Ok(Err(outcome)) => return outcome.into(),
            Err(_) => return Outcome::SlowBody.into(),
        };
        let Some(obj) = self.inner.connections.get(namespace, name) else {
            return Outcome::UnknownConnection.into();
        };
        let running = self.inner.sync.registration(&key);
        if let Err(outcome) = self.verify(&key, &obj, running.as_deref(), &body, signature) {
            self.request_recheck(&key, &obj);
            return outcome.into();
        }
        // Verified: only now may it cost another replica anything.
        match self.inner.shards.route(&key) {
            Route::Local => {}
            Route::Forward(owner) if !headers.contains_key(FORWARDED_HEADER) => {
                return self.forward(&owner, namespace, name, headers, body).await;
            }
            Route::Forward(_) | Route::Unavailable => return Outcome::NotOwner.into(),
        }
        self.apply(&key, &obj, running, &body).await.into()
    }

    /// Applies a verified delivery of a connection this replica serves.
    async fn apply(
        &self,
        key: &str,
        obj: &CarerixConnection,
        running: Option<Arc<Registration>>,
        body: &[u8],
    ) -> Outcome {
        let Some(delivery) = parse_delivery(body) else {
            return Outcome::Malformed;
        };
        let apply = async {
            let reg = match running {
                Some(reg) => reg,
                // Verified, but this connection syncs nothing: there is no row to keep fresh.
                None if obj.spec.sync.is_none() => return Outcome::Ignored,
                // Suspended: nothing may reach Carerix. Carerix retries later.
                None if obj.spec.suspend => return Outcome::Suspended,
                None => match self.registration(key, obj).await {
                    Ok(reg) => reg,
                    Err(outcome) => return outcome,
                },
            };
            process(&reg, &delivery).await
        };
        match tokio::time::timeout(PROCESSING_BUDGET, apply).await {
            Ok(outcome) => outcome,
            Err(_) => {
                warn!("a delivery took longer than its time box; answering 503 so that Carerix retries");
                Outcome::Timeout
            }
        }
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, Outcome> {
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Outcome::SlowBody)?;
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Outcome::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Handles one delivery.
#[instrument(skip_all)]
pub async fn receive(
    State(receiver): State<Receiver>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let reply = match path {
        Ok(Path((namespace, name))) if is_dns_label(&namespace) && is_connection_name(&name) => {
            let declared = headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
                Outcome::TooLarge.into()
            } else {
                let reply = receiver.deliver(&namespace, &name, &headers, body).await;
                debug!(connection = %format!("{namespace}/{name}"), reply = ?reply, "delivery");
                reply
            }
        }
        _ => Outcome::InvalidName.into(),
    };
    receiver.respond(reply)
}

/// Applies a verified delivery.
pub async fn process(reg: &Registration, delivery: &Delivery) -> Outcome {
    let t = &reg.target;
    match store::event_seen(&t.pool, &t.schema, &t.connection, &delivery.id).await {
        Ok(true) => return Outcome::Duplicate,
        Ok(false) => {}
        Err(_) => return Outcome::SinkUnavailable,
    }
    let change = match entity_for(&delivery.event_type, &reg.entities) {
        None => Change::Nothing,
        Some(entity) => match reg.batcher.fetch(entity, &delivery.data.entity_id).await {
            Some(Ok(Some(record))) => Change::Upsert(entity, record),
            Some(Ok(None)) => Change::Gone(entity, delivery.data.entity_id.clone()),
            Some(Err(e)) => {
                debug!(reason = e.reason(), "fetching the record of a delivery failed");
                return Outcome::CarerixUnavailable;
            }
            None => return Outcome::CarerixUnavailable,
        },
    };
    match store::apply_event(&t.pool, &t.schema, &t.connection, &delivery.id, &change).await {
        Ok(true) if change == Change::Nothing => Outcome::Ignored,
        Ok(true) => Outcome::Accepted,
        Ok(false) => Outcome::Duplicate,
        Err(_) => Outcome::SinkUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;
    use rsa::{
        RsaPrivateKey,
        pkcs1v15::SigningKey,
        pkcs8::{EncodePublicKey, LineEnding},
        signature::{SignatureEncoding, Signer},
    };

    fn keypair() -> (SigningKey<Sha256>, String) {
        let mut rng = rsa::rand_core::OsRng;
        let private = RsaPrivateKey::new(&mut rng, 1024).expect("key");
        let pem = private.to_public_key().to_public_key_pem(LineEnding::LF).expect("pem");
        (SigningKey::<Sha256>::new(private), pem)
    }

    fn shared_keypair() -> &'static (SigningKey<Sha256>, String) {
        static KEY: std::sync::OnceLock<(SigningKey<Sha256>, String)> = std::sync::OnceLock::new();
        KEY.get_or_init(keypair)
    }

    fn sign(signer: &SigningKey<Sha256>, body: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(signer.sign(body).to_bytes())
    }

    #[test]
    fn a_signature_made_with_the_application_key_verifies_and_any_change_breaks_it() {
        let (signer, pem) = keypair();
        let key = parse_public_key(&pem).expect("parses");
        let body = br#"{"id":"e1","type":"cremployee:updated","data":{"entityId":"1"}}"#;
        let sig = sign(&signer, body);
        assert!(verify_signature(&key, body, &sig));
        assert!(!verify_signature(&key, b"{\"id\":\"e2\"}", &sig));
        assert!(!verify_signature(&key, body, "not base64!"));
        assert!(!verify_signature(&key, body, ""));
        let (_, other_pem) = keypair();
        assert!(!verify_signature(&parse_public_key(&other_pem).expect("parses"), body, &sig));
        assert!(parse_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----").is_none());
    }

    #[test]
    fn payloads_without_an_id_type_or_entity_id_are_malformed() {
        assert!(
            parse_delivery(
                br#"{"id":"e","type":"cremployee:updated","data":{"entityId":"1","changedFields":[]}}"#
            )
            .is_some()
        );
        for bad in [
            &b"not json"[..],
            br#"{"type":"x:y","data":{"entityId":"1"}}"#,
            br#"{"id":"e","type":"x:y","data":{}}"#,
            br#"{"id":"","type":"x:y","data":{"entityId":"1"}}"#,
        ] {
            assert!(parse_delivery(bad).is_none());
        }
    }

    #[test]
    fn event_types_map_to_the_synced_entities_only() {
        let synced = [Entity::Candidates, Entity::Matches];
        assert_eq!(entity_for("cremployee:updated", &synced), Some(Entity::Candidates));
        assert_eq!(entity_for("crmatch:created", &synced), Some(Entity::Matches));
        assert_eq!(entity_for("crvacancy:updated", &synced), None);
        assert_eq!(entity_for("crsomethingelse:updated", &synced), None);
    }

    #[test]
    fn namespaces_are_dns_labels_and_names_dns_subdomains_of_at_most_63_characters() {
        for good in ["a", "acme", "team-1", "0x", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
            assert!(is_connection_name(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "a b",
            "..",
            ".",
            "%2e%2e",
            "x/carerixconnections?watch=true&z=",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad:?}");
            assert!(!is_connection_name(bad), "{bad:?}");
        }
        assert!(is_connection_name("acme.prod"));
        assert!(!is_dns_label("acme.prod"), "a namespace has no dots");
        for bad in ["a..b", ".a", "a.", "a.-b"] {
            assert!(!is_connection_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_outcome_has_its_own_label_and_unknown_and_forged_look_the_same() {
        let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
        let table = [
            (Outcome::Accepted, 200),
            (Outcome::Duplicate, 200),
            (Outcome::Ignored, 200),
            (Outcome::InvalidName, 404),
            (Outcome::RateLimited, 429),
            (Outcome::Overloaded, 503),
            (Outcome::Unsigned, 401),
            (Outcome::SlowBody, 408),
            (Outcome::TooLarge, 413),
            (Outcome::UnknownConnection, 401),
            (Outcome::NoKnownKey, 401),
            (Outcome::BadSignature, 401),
            (Outcome::Malformed, 400),
            (Outcome::Suspended, 503),
            (Outcome::SetupFailed, 503),
            (Outcome::SinkUnavailable, 503),
            (Outcome::CarerixUnavailable, 503),
            (Outcome::Timeout, 503),
            (Outcome::NotOwner, 503),
            (Outcome::ForwardFailed, 503),
        ];
        assert_eq!(table.len(), Outcome::ALL.len());
        for (outcome, code) in table {
            assert_eq!(outcome.status().as_u16(), code, "{outcome:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn the_signature_check_never_panics_and_never_accepts_a_stranger(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            signature in ".{0,400}",
        ) {
            let (_, pem) = shared_keypair();
            let key = parse_public_key(pem).expect("parses");
            prop_assert!(!verify_signature(&key, &body, &signature));
        }

        #[test]
        fn a_base64_signature_of_the_right_size_but_random_bytes_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            raw in proptest::collection::vec(any::<u8>(), 128..=128),
        ) {
            let (_, pem) = shared_keypair();
            let key = parse_public_key(pem).expect("parses");
            let sig = base64::engine::general_purpose::STANDARD.encode(raw);
            prop_assert!(!verify_signature(&key, &body, &sig));
        }

        #[test]
        fn no_mutation_of_a_signed_body_verifies(
            body in proptest::collection::vec(any::<u8>(), 1..256),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            extra in proptest::collection::vec(any::<u8>(), 1..8),
            kind in 0u8..3,
        ) {
            let (signer, pem) = shared_keypair();
            let key = parse_public_key(pem).expect("parses");
            let sig = sign(signer, &body);
            prop_assert!(verify_signature(&key, &body, &sig));
            let mut mutated = body.clone();
            let i = at.index(body.len());
            match kind {
                0 => mutated[i] ^= flip,
                1 => mutated.truncate(i),
                _ => {
                    for (n, b) in extra.iter().enumerate() {
                        mutated.insert(i + n, *b);
                    }
                }
            }
            prop_assert!(!verify_signature(&key, &mutated, &sig));
        }

        #[test]
        fn no_mutation_of_a_signature_verifies(
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (signer, pem) = shared_keypair();
            let key = parse_public_key(pem).expect("parses");
            let body = br#"{"id":"e1","type":"cremployee:updated","data":{"entityId":"1"}}"#;
            let mut raw = signer.sign(body).to_bytes().to_vec();
            let i = at.index(raw.len());
            raw[i] ^= flip;
            let sig = base64::engine::general_purpose::STANDARD.encode(raw);
            prop_assert!(!verify_signature(&key, body, &sig));
        }

        #[test]
        fn the_delivery_parser_never_panics_and_accepts_only_complete_payloads(
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Some(d) = parse_delivery(&body) {
                prop_assert!(!d.id.is_empty() && !d.event_type.is_empty() && !d.data.entity_id.is_empty());
            }
        }

        #[test]
        fn the_delivery_parser_keeps_the_fields_of_any_complete_payload(
            id in ".{1,40}",
            event_type in ".{1,40}",
            entity_id in ".{1,40}",
            noise in proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..4),
        ) {
            let mut v = serde_json::json!({"id": id, "type": event_type, "data": {"entityId": entity_id}});
            for (k, n) in &noise {
                if !["id", "type", "data"].contains(&k.as_str()) {
                    v[k] = serde_json::json!(n);
                }
            }
            let d = parse_delivery(v.to_string().as_bytes()).expect("complete");
            prop_assert_eq!(d.id, id);
            prop_assert_eq!(d.event_type, event_type);
            prop_assert_eq!(d.data.entity_id, entity_id);
        }

        #[test]
        fn names_are_accepted_only_in_dns_form(name in "\\PC{0,80}") {
            if is_connection_name(&name) {
                prop_assert!(name.len() <= 63);
                prop_assert!(name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'));
                prop_assert!(!name.contains(".."));
            }
            if is_dns_label(&name) {
                prop_assert!(!name.contains('.') && !name.contains('/'));
            }
        }
    }
}
