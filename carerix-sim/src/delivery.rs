//! Webhook deliveries: a background worker that signs each event body with the application's private
//! key and POSTs it, retrying non-2xx answers and timeouts on a configurable backoff schedule.
//! Every attempt lands in the delivery log.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::DeliveryConfig;
use serde::{Deserialize, Serialize};

/// Every delivery attempt, shared with the emulator's admin API.
pub type DeliveryLog = Arc<Mutex<Vec<DeliveryLogEntry>>>;

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryLogEntry {
    /// Delivery job id (one per event and webhook).
    pub job_id: String,
    /// Webhook id.
    pub webhook_id: String,
    /// Target URL.
    pub url: String,
    /// Attempt number from 1.
    pub attempt: u32,
    /// Receiver status; `None` on timeout or connection error.
    pub status_code: Option<u16>,
    /// Transport error, if any.
    pub error: Option<String>,
    /// The exact body sent.
    pub payload: String,
    /// Attempt time.
    pub time: DateTime<Utc>,
}

/// One delivery job (one event for one webhook).
pub struct Job {
    /// Job id.
    pub job_id: String,
    /// Webhook id.
    pub webhook_id: String,
    /// Target.
    pub url: String,
    /// Exact body.
    pub body: String,
    /// Custom headers.
    pub headers: Vec<(String, String)>,
    /// The application's private key.
    pub key: Arc<RsaPrivateKey>,
}

/// `base64(RSASSA-PKCS1-v1_5 SHA-256(body))`, the `Cx-Signature` value.
pub fn sign(key: &RsaPrivateKey, body: &[u8]) -> String {
    let signer = SigningKey::<Sha256>::new(key.clone());
    STANDARD.encode(signer.sign(body).to_bytes())
}

/// Runs until the sender side is dropped; each job gets its own task.
pub(crate) async fn worker(mut rx: mpsc::UnboundedReceiver<Job>, log: DeliveryLog, config: DeliveryConfig) {
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot build the delivery HTTP client: {e}");
            return;
        }
    };
    while let Some(job) = rx.recv().await {
        tokio::spawn(deliver(job, client.clone(), log.clone(), config.clone()));
    }
}

async fn deliver(job: Job, client: reqwest::Client, log: DeliveryLog, config: DeliveryConfig) {
    let key = job.key.clone();
    let body = job.body.clone();
    let signature = match tokio::task::spawn_blocking(move || sign(&key, body.as_bytes())).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("signing failed: {e}");
            return;
        }
    };
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let mut req = client
            .post(&job.url)
            .header("Content-Type", "application/json")
            .header("Cx-Signature", &signature)
            .header("Cx-Payload-Schema-Version", "1");
        for (n, v) in &job.headers {
            req = req.header(n.as_str(), v.as_str());
        }
        let (status_code, error) = match req.body(job.body.clone()).send().await {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let ok = status_code.is_some_and(|s| (200..300).contains(&s));
        {
            let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            log.push(DeliveryLogEntry {
                job_id: job.job_id.clone(),
                webhook_id: job.webhook_id.clone(),
                url: job.url.clone(),
                attempt,
                status_code,
                error,
                payload: job.body.clone(),
                time: Utc::now(),
            });
        }
        if ok || attempt > config.max_retries {
            return;
        }
        let idx = (attempt as usize - 1).min(config.backoff.len().saturating_sub(1));
        let wait = config.backoff.get(idx).copied().unwrap_or_default();
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier;

    #[test]
    fn a_signature_verifies_with_the_public_key_and_fails_for_another_body() {
        let key = crate::auth::generate_key(1024).expect("key");
        let sig = sign(&key, b"{\"a\":1}");
        let raw = STANDARD.decode(sig).expect("base64");
        let sig = Signature::try_from(raw.as_slice()).expect("sig");
        let vk = VerifyingKey::<Sha256>::new(key.to_public_key());
        assert!(vk.verify(b"{\"a\":1}", &sig).is_ok());
        assert!(vk.verify(b"{\"a\":2}", &sig).is_err());
    }
}
