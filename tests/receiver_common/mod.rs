//! The receiver served in-process on two ports (receiver, probes), with a stand-in for the
//! Kubernetes API server that counts every request it gets, and an informer cache the test fills.

#![allow(dead_code)]

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use axum::Router;
use base64::Engine as _;
use carerix_operator::{
    api::CarerixConnection,
    carerix::RateLimiters,
    metrics::Metrics,
    receiver::{Connections, Limits, Parts, Receiver},
    server::{ProbeState, probe_router, receiver_router, serve},
    sync::SyncManager,
};
use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::{
    reflector::{self, ObjectRef, store::Writer},
    watcher,
};
use rsa::{
    RsaPrivateKey,
    pkcs1v15::SigningKey,
    pkcs8::{EncodePublicKey, LineEnding},
    signature::{SignatureEncoding, Signer},
};
use sha2::Sha256;
use tokio::sync::watch;

/// A running receiver.
pub struct Rx {
    /// `http://127.0.0.1:port` of the receiver.
    pub base: String,
    /// `http://127.0.0.1:port` of the probe server.
    pub probes: String,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// The data sync it applies deliveries with.
    pub sync: Arc<SyncManager>,
    /// Requests the Kubernetes API server stand-in got.
    pub kube_requests: Arc<AtomicUsize>,
    rechecks: Mutex<UnboundedReceiver<ObjectRef<CarerixConnection>>>,
    writer: Mutex<Writer<CarerixConnection>>,
    _stop: watch::Sender<bool>,
}

impl Rx {
    /// Puts a connection into the informer cache, as a watch event would.
    pub fn put(&self, obj: CarerixConnection) {
        self.writer.lock().expect("lock").apply_watcher_event(&watcher::Event::Apply(obj));
    }

    /// Re-checks asked of the controller since the last call.
    pub fn rechecks(&self) -> Vec<ObjectRef<CarerixConnection>> {
        let mut rx = self.rechecks.lock().expect("lock");
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            got.push(r);
        }
        got
    }

    /// The URL of a connection's deliveries.
    pub fn url(&self, ns: &str, name: &str) -> String {
        format!("{}/webhooks/{ns}/{name}", self.base)
    }

    /// The host:port of the receiver, for raw TCP.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    /// The value of a counter line of the metrics, 0 when absent.
    pub fn deliveries(&self, result: &str) -> u64 {
        let needle = format!("carerix_operator_receiver_deliveries_total{{result=\"{result}\"}} ");
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&needle).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }
}

/// An HTTP server that counts every request and answers 403 Forbidden: where the receiver's
/// Kubernetes client points, so any request the receiver makes to Kubernetes is seen.
async fn counting_api_server() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let app = Router::new().fallback(move || {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "stand-in", "reason": "Forbidden", "code": 403});
            (axum::http::StatusCode::FORBIDDEN, axum::Json(status))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, count)
}

/// A Kubernetes client whose every request is counted.
pub async fn counted_kube() -> (kube::Client, Arc<AtomicUsize>) {
    let (url, count) = counting_api_server().await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().expect("uri"))).expect("client");
    (client, count)
}

/// Serves a receiver with `limits`, its sync manager `sync` (built on `kube`).
pub async fn serve_receiver(
    kube: kube::Client,
    kube_requests: Arc<AtomicUsize>,
    sync: Arc<SyncManager>,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> Rx {
    let (store, writer) = reflector::store::<CarerixConnection>();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let leading = Arc::new(AtomicBool::new(true));
    let header_timeout = limits.header_read_timeout;
    let receiver = Receiver::new(Parts {
        client: kube,
        metrics: metrics.clone(),
        sync: sync.clone(),
        connections: Connections::from_stores(vec![store]),
        carerix: Default::default(),
        rate_limiters: RateLimiters::new(10),
        reconcile: tx,
        leading: leading.clone(),
        shards: carerix_operator::shard::Shards::unsharded(),
        identity: "receiver-test".into(),
        limits,
    });
    let probes = ProbeState {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        alive: Arc::new(AtomicBool::new(true)),
        leader_election: false,
        leading,
        receiver: receiver.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener, receiver_router(receiver), header_timeout, stopped.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let probes_base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener, probe_router(probes), header_timeout, stopped));
    Rx {
        base,
        probes: probes_base,
        metrics,
        sync,
        kube_requests,
        rechecks: Mutex::new(rx),
        writer: Mutex::new(writer),
        _stop: stop,
    }
}

/// A receiver with no sync running and default limits but `tweak`.
pub async fn plain_receiver(tweak: impl FnOnce(&mut Limits)) -> Rx {
    let (kube, count) = counted_kube().await;
    let metrics = Arc::new(Metrics::new());
    let sync = Arc::new(SyncManager::new(kube.clone(), metrics.clone()));
    let mut limits = Limits::default();
    tweak(&mut limits);
    serve_receiver(kube, count, sync, metrics, limits).await
}

/// A CarerixConnection as the informer cache holds it: with a sync when `sync`, and the
/// application key in `status.webhooks.publicKey` when known.
pub fn connection(ns: &str, name: &str, public_key: Option<&str>, sync: bool) -> CarerixConnection {
    let mut obj = serde_json::json!({
        "apiVersion": "hiredata.io/v1alpha1", "kind": "CarerixConnection",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {"tenant": "acme", "credentialsSecretRef": {"name": "creds"}},
    });
    if sync {
        obj["spec"]["sync"] = serde_json::json!({"entities": ["candidates"], "sink": {"postgres":
            {"connectionSecretRef": {"name": "sink", "key": "url"}, "schema": "carerix"}}});
    }
    if let Some(pem) = public_key {
        obj["status"] = serde_json::json!({"webhooks": {"publicKey": pem}});
    }
    serde_json::from_value(obj).expect("a valid CarerixConnection")
}

/// An application key pair, as Carerix holds it.
pub struct AppKey {
    signer: SigningKey<Sha256>,
    /// The public key, PEM.
    pub pem: String,
}

impl AppKey {
    /// A fresh key pair.
    pub fn new() -> AppKey {
        let mut rng = rsa::rand_core::OsRng;
        let private = RsaPrivateKey::new(&mut rng, 1024).expect("key");
        let pem = private.to_public_key().to_public_key_pem(LineEnding::LF).expect("pem");
        AppKey { signer: SigningKey::new(private), pem }
    }

    /// The `Cx-Signature` of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.signer.sign(body).to_bytes())
    }
}

/// A delivery payload.
pub fn payload(event_id: &str, entity_id: &str) -> String {
    serde_json::json!({"id": event_id, "time": "2025-01-01T00:00:00Z", "type": "cremployee:updated",
        "applicationId": "app", "webhookId": "hook", "tenant": "acme",
        "data": {"entityId": entity_id, "changedFields": ["firstname"]}})
    .to_string()
}
