//! The webhook receiver: `POST /webhooks/{namespace}/{name}`.
//!
//! Order of work, each step answering with its own status code:
//! 1. the connection must sync (registered in the [`SyncManager`](crate::sync::SyncManager)): else 404;
//! 2. the body must fit [`MAX_BODY_BYTES`]: else 413;
//! 3. `Cx-Signature` (base64 RSASSA-PKCS1-v1_5 SHA-256 over the raw body) must verify against the
//!    connection's webhook application key, before anything is parsed: else 401;
//! 4. the payload must be JSON with `id`, `type` and `data.entityId`: else 400;
//! 5. an event id already processed answers 200 without work;
//! 6. the record is fetched (coalesced with other deliveries, through the tenant's rate limit), and
//!    the row and the event id are written in one transaction; only then 200.
//!
//! A down sink or a failing Carerix answers 503 so that Carerix retries; processing is time-boxed
//! to 8 s, inside Carerix's 10 s window. Nothing of the payload, the key or the sink URL is logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};
use base64::Engine as _;
use rsa::{
    RsaPublicKey,
    pkcs1::DecodeRsaPublicKey,
    pkcs1v15::{Signature, VerifyingKey},
    pkcs8::DecodePublicKey,
    signature::Verifier,
};
use serde::Deserialize;
use sha2::Sha256;
use tracing::{debug, instrument, warn};

use crate::{
    api::CarerixConnection,
    carerix::Entity,
    controller,
    server::ServerState,
    sync::{
        Registration,
        store::{self, Change},
    },
};

/// Largest delivery body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "cx-signature";

/// How long a delivery may take before it is answered 503 (Carerix waits 10 s).
pub const PROCESSING_BUDGET: Duration = Duration::from_secs(8);

/// Parses a PEM public key (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`) into a verifier.
pub fn parse_public_key(pem: &str) -> Option<VerifyingKey<Sha256>> {
    let key = RsaPublicKey::from_public_key_pem(pem.trim())
        .ok()
        .or_else(|| RsaPublicKey::from_pkcs1_pem(pem.trim()).ok())?;
    Some(VerifyingKey::<Sha256>::new(key))
}

/// Whether `signature` (base64) is a valid RSASSA-PKCS1-v1_5 SHA-256 signature of `body`.
pub fn verify_signature(key: &VerifyingKey<Sha256>, body: &[u8], signature: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    key.verify(body, &sig).is_ok()
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

/// Handles one delivery.
#[instrument(skip_all, fields(connection = %format!("{namespace}/{name}")))]
pub async fn receive(
    State(state): State<ServerState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let key = format!("{namespace}/{name}");
    let found = match state.sync.registration(&key) {
        Some(reg) => Found::Sync(reg),
        None => match state.lookups.find(&state, &namespace, &name).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                state.metrics.delivery("unknown_connection");
                return StatusCode::NOT_FOUND;
            }
            Err(()) => {
                state.metrics.delivery("lookup_failed");
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        },
    };
    if body.len() > MAX_BODY_BYTES {
        state.metrics.delivery("too_large");
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let verified = match (found.verifying_key(), signature) {
        (Some(k), Some(sig)) => verify_signature(k, &body, sig),
        _ => false,
    };
    if !verified {
        state.metrics.delivery("bad_signature");
        return StatusCode::UNAUTHORIZED;
    }
    let Some(delivery) = parse_delivery(&body) else {
        state.metrics.delivery("malformed");
        return StatusCode::BAD_REQUEST;
    };
    let reg = match found {
        Found::Sync(reg) => reg,
        Found::KeyOnly(_) => {
            // Verified, but this connection syncs nothing: there is no row to keep fresh.
            state.metrics.delivery("ignored");
            return StatusCode::OK;
        }
    };
    match tokio::time::timeout(PROCESSING_BUDGET, process(&reg, &delivery)).await {
        Ok(Ok(result)) => {
            state.metrics.delivery(result);
            StatusCode::OK
        }
        Ok(Err(result)) => {
            state.metrics.delivery(result);
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(_) => {
            warn!("a delivery took longer than its time box; answering 503 so that Carerix retries");
            state.metrics.delivery("timeout");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// Applies a verified delivery. `Ok(result)` answers 200, `Err(result)` 503; `result` is the
/// metrics label.
pub async fn process(reg: &Registration, delivery: &Delivery) -> Result<&'static str, &'static str> {
    let t = &reg.target;
    match store::event_seen(&t.pool, &t.schema, &t.connection, &delivery.id).await {
        Ok(true) => return Ok("duplicate"),
        Ok(false) => {}
        Err(_) => return Err("sink_unavailable"),
    }
    let change = match entity_for(&delivery.event_type, &reg.entities) {
        None => Change::Nothing,
        Some(entity) => match reg.batcher.fetch(entity, &delivery.data.entity_id).await {
            Some(Ok(Some(record))) => Change::Upsert(entity, record),
            Some(Ok(None)) => Change::Gone(entity, delivery.data.entity_id.clone()),
            Some(Err(e)) => {
                debug!(reason = e.reason(), "fetching the record of a delivery failed");
                return Err("carerix_unavailable");
            }
            None => return Err("carerix_unavailable"),
        },
    };
    match store::apply_event(&t.pool, &t.schema, &t.connection, &delivery.id, &change).await {
        Ok(true) if change == Change::Nothing => Ok("ignored"),
        Ok(true) => Ok("accepted"),
        Ok(false) => Ok("duplicate"),
        Err(_) => Err("sink_unavailable"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::{
        RsaPrivateKey,
        pkcs1v15::SigningKey,
        pkcs8::{EncodePublicKey, LineEnding},
        signature::{SignatureEncoding, Signer},
    };

    fn keypair() -> (SigningKey<Sha256>, String) {
        let mut rng = rand_core_rng();
        let private = RsaPrivateKey::new(&mut rng, 1024).expect("key");
        let pem = private.to_public_key().to_public_key_pem(LineEnding::LF).expect("pem");
        (SigningKey::<Sha256>::new(private), pem)
    }

    fn rand_core_rng() -> rsa::rand_core::OsRng {
        rsa::rand_core::OsRng
    }

    #[test]
    fn a_signature_made_with_the_application_key_verifies_and_any_change_breaks_it() {
        let (signer, pem) = keypair();
        let key = parse_public_key(&pem).expect("parses");
        let body = br#"{"id":"e1","type":"cremployee:updated","data":{"entityId":"1"}}"#;
        let sig = base64::engine::general_purpose::STANDARD.encode(signer.sign(body).to_bytes());
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
}

/// How long a connection looked up by the receiver is trusted before it is looked up again.
const LOOKUP_TTL: Duration = Duration::from_secs(120);

/// What the receiver knows of a connection.
#[derive(Clone)]
pub enum Found {
    /// It syncs: verify with its key, then apply to its sink.
    Sync(Arc<Registration>),
    /// It syncs nothing: verify with its key (if its application has one), then acknowledge.
    KeyOnly(Option<Arc<VerifyingKey<Sha256>>>),
}

impl Found {
    fn verifying_key(&self) -> Option<&VerifyingKey<Sha256>> {
        match self {
            Found::Sync(reg) => reg.verifying_key.as_ref(),
            Found::KeyOnly(key) => key.as_deref(),
        }
    }
}

/// Connections this process receives deliveries for but does not reconcile itself: after a
/// restart before their first reconcile, or on a standby replica (which only reads from Carerix
/// and writes to the sink; it never writes to Carerix). Resolved from Kubernetes and Carerix,
/// kept for [`LOOKUP_TTL`], so a rotated key or Secret is picked up.
#[derive(Clone, Default)]
pub struct Lookups {
    cache: Arc<Mutex<HashMap<String, (Instant, Found)>>>,
}

impl Lookups {
    /// `Ok(None)` when no such connection exists; `Err` when it could not be resolved now.
    async fn find(&self, state: &ServerState, ns: &str, name: &str) -> Result<Option<Found>, ()> {
        let key = format!("{ns}/{name}");
        if let Some((at, found)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < LOOKUP_TTL
        {
            return Ok(Some(found.clone()));
        }
        let api: kube::Api<CarerixConnection> = kube::Api::namespaced(state.client.clone(), ns);
        let obj = match api.get_opt(name).await {
            Ok(Some(obj)) => obj,
            Ok(None) => return Ok(None),
            Err(e) => {
                warn!(error = %e, "could not read the connection of a delivery");
                return Err(());
            }
        };
        if obj.spec.suspend {
            // Suspended: nothing may reach Carerix. Carerix retries the delivery later.
            return Err(());
        }
        let creds = match controller::read_credentials(
            &state.client,
            ns,
            &obj.spec.credentials_secret_ref.name,
        )
        .await
        {
            Ok(Ok(c)) => c,
            _ => return Err(()),
        };
        let cx =
            controller::new_client(&obj.spec, &creds, &state.carerix, &state.rate_limiters, &state.metrics)
                .map_err(|_| ())?;
        let apps = controller::our_applications(&cx, &obj).await.map_err(|e| {
            debug!(reason = e.reason(), "could not find the webhook application of a delivery");
        })?;
        let public_key = apps.into_iter().next().and_then(|a| a.public_key);
        let found = if obj.spec.sync.is_some() {
            let reg =
                state.sync.receiver_registration(&obj, &cx, public_key.as_deref()).await.map_err(|e| {
                    debug!(error = %e, "could not reach the sink of a delivery");
                })?;
            Found::Sync(Arc::new(reg))
        } else {
            Found::KeyOnly(public_key.as_deref().and_then(parse_public_key).map(Arc::new))
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (Instant::now(), found.clone()));
        Ok(Some(found))
    }
}
