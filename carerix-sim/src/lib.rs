//! `carerix-sim`: an in-process emulator of the public Carerix API (see `README.md` and
//! `docs/carerix-surface.md`).
//!
//! It serves, on one port: the Keycloak-style token endpoint per tenant realm (plus discovery and
//! JWKS), the GraphQL data API (`/graphql/v1/graphql`, the seven `crX`/`crXPage` queries), the
//! webhooks management REST API (`/webhooks/v1/applications...`), signed webhook deliveries, and an
//! admin API under `/admin/v1` to drive it from tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), carerix_sim::Error> {
//! let mut config = carerix_sim::Config::for_tests();
//! config.tenants.push(carerix_sim::TenantConfig { name: "acme".into(), webhooks_activated: true });
//! config.clients.push(carerix_sim::ClientConfig {
//!     tenant: "acme".into(), client_id: "demo-client".into(), secret: "demo-secret".into(),
//! });
//! let handle = carerix_sim::spawn(config).await?;
//! let token_url = handle.base_url().join("auth/realms/acme/protocol/openid-connect/token");
//! handle.sim().expire_tokens();
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod dates;
pub mod delivery;
pub mod graphql;
mod http;
pub mod model;
pub mod qualifier;
pub mod readings;
pub mod sim;
pub mod switches;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use url::Url;

pub use model::Entity;
pub use readings::{IdOrder, Readings};
pub use sim::{
    ApplicationInfo, ApplicationWrites, ClientCredentials, ClientInfo, DeliveryLogEntry, Fault, FaultKind,
    RequestLogEntry, Sim, SimError, TenantInfo, WebhookInfo, WebhookStatus,
};
pub use switches::{Permission, Switches};

/// Errors of starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Key generation, PEM or JWT failure.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// A configured tenant or client could not be created.
    #[error("setup error: {0}")]
    Setup(#[from] SimError),
    /// A background task failed.
    #[error("task error: {0}")]
    Task(String),
    /// The bound address does not make a URL.
    #[error("bad URL: {0}")]
    Url(#[from] url::ParseError),
}

/// Webhook delivery behaviour.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Per-attempt timeout (default 10 s).
    pub timeout: Duration,
    /// Wait before retry n (1-based) is `backoff[min(n-1, len-1)]` (default 1 min, 5 min, 30 min,
    /// 2 h, 6 h).
    pub backoff: Vec<Duration>,
    /// Retries after the first attempt (default 5).
    pub max_retries: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(10),
            backoff: [60, 300, 1800, 7200, 21600].into_iter().map(Duration::from_secs).collect(),
            max_retries: 5,
        }
    }
}

/// A tenant created at start.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Realm name (e.g. `acme`).
    pub name: String,
    /// Whether the webhooks feature is activated.
    pub webhooks_activated: bool,
}

/// A client registered at start (default scopes).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Tenant (realm).
    pub tenant: String,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub secret: String,
}

/// Emulator configuration. `Config::default()` matches the binary's defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (default `127.0.0.1:0`, an ephemeral port).
    pub listen: SocketAddr,
    /// Seed for the generated records (default 42).
    pub seed: u64,
    /// Records per entity per tenant (default 200).
    pub records_per_entity: usize,
    /// Token bucket per client id: requests per second and burst (default 10). The token endpoint is
    /// not limited.
    pub rate_limit_per_sec: u32,
    /// Access token lifetime, `expires_in` (default 300 s).
    pub token_ttl: Duration,
    /// Maximum page size (default 100).
    pub page_cap: usize,
    /// Candidates sharing one `modificationDate` second (default 150, more than a page).
    pub same_second_burst: usize,
    /// Webhook delivery settings.
    pub delivery: DeliveryConfig,
    /// RSA key size for the token signing key and each webhook application (default 2048; tests use
    /// 1024 because key generation is slow in debug builds; real Carerix keys are at least 2048).
    pub key_bits: usize,
    /// Also emit `<entity>:deleted` events (not documented by Carerix; default false).
    pub emit_deleted_events: bool,
    /// Tenants to create at start.
    pub tenants: Vec<TenantConfig>,
    /// Clients to register at start.
    pub clients: Vec<ClientConfig>,
    /// Behaviour switches of the webhooks REST API (see [`Switches`]); changeable at run time.
    pub switches: Switches,
    /// Readings of the INFERRED data-API points (default: the reading the sources lean to).
    pub readings: Readings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 42,
            records_per_entity: 200,
            rate_limit_per_sec: 10,
            token_ttl: Duration::from_secs(300),
            page_cap: 100,
            same_second_burst: 150,
            delivery: DeliveryConfig::default(),
            key_bits: 2048,
            emit_deleted_events: false,
            tenants: Vec::new(),
            clients: Vec::new(),
            switches: Switches::default(),
            readings: Readings::default(),
        }
    }
}

impl Config {
    /// Defaults tuned for tests: 1024-bit keys, delivery timeout 2 s, backoff 50/100/200 ms, 3 retries.
    pub fn for_tests() -> Config {
        Config {
            key_bits: 1024,
            delivery: DeliveryConfig {
                timeout: Duration::from_secs(2),
                backoff: vec![
                    Duration::from_millis(50),
                    Duration::from_millis(100),
                    Duration::from_millis(200),
                ],
                max_retries: 3,
            },
            ..Config::default()
        }
    }
}

/// A running emulator.
pub struct SimHandle {
    sim: Arc<Sim>,
    base_url: Url,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// `http://ADDR/`; every surface lives under it.
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// The emulator state with its admin methods.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// A shareable reference to the state.
    pub fn sim_arc(&self) -> Arc<Sim> {
        self.sim.clone()
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.server).await;
    }
}

/// Binds `config.listen`, creates the configured tenants and clients, and serves in a tokio task.
pub async fn spawn(config: Config) -> Result<SimHandle, Error> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let base_url = Url::parse(&format!("http://{addr}/"))?;
    let bits = config.key_bits;
    let key = tokio::task::spawn_blocking(move || auth::generate_key(bits))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    let signer = auth::Signer::new(&key)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let sim = Arc::new(Sim::new(config.clone(), signer, base_url.clone(), tx));
    sim.set_switches(config.switches.clone());
    for t in &config.tenants {
        sim.create_tenant(&t.name, t.webhooks_activated, None)?;
    }
    for c in &config.clients {
        sim.register_client(&c.tenant, Some(&c.client_id), Some(&c.secret), None)?;
    }
    let deliveries = sim.lock().delivery_log.clone();
    tokio::spawn(delivery::worker(rx, deliveries, config.delivery.clone()));
    let app = http::router(sim.clone());
    let (stx, srx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = srx.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!("carerix-sim server error: {e}");
        }
    });
    Ok(SimHandle { sim, base_url, shutdown: Some(stx), server })
}
