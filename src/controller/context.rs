//! Shared state of the reconciler: settings, the Kubernetes client, cached Carerix clients.

use std::{collections::HashMap, sync::Arc, time::Duration};

use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

use super::{
    Error,
    allowed_hosts::AllowedHosts,
    backoff::{BackoffPolicy, Backoffs},
    carerix_api::CarerixApi,
    events::Events,
};
use crate::{
    api::{CarerixConnection, CarerixConnectionSpec},
    carerix::{CarerixClient, RateLimiters, RetryPolicy},
    connection::{ClientSettings, SecretCredentials, build_client, key_of},
    metrics::Metrics,
    sync::SyncReport,
};

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Public base URL of the operator's receiver; webhooks without a `url` point at
    /// `{base}/webhooks/{namespace}/{name}`.
    pub receiver_base_url: Option<String>,
    /// Per-connection backoff.
    pub backoff: BackoffPolicy,
    /// Timeout of one Carerix request.
    pub carerix_timeout: Duration,
    /// Retries of one Carerix request inside the client.
    pub carerix_retries: u32,
    /// Which hosts `identityUrl` and `apiUrl` may name.
    pub allowed_hosts: AllowedHosts,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            receiver_base_url: None,
            backoff: BackoffPolicy::default(),
            carerix_timeout: Duration::from_secs(30),
            carerix_retries: 2,
            allowed_hosts: AllowedHosts::default(),
        }
    }
}

impl Settings {
    /// How Carerix clients are built.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings { timeout: self.carerix_timeout, retries: self.carerix_retries }
    }
}

/// A connected Carerix: the client the sync uses, and the same behind [`CarerixApi`].
#[derive(Clone)]
pub struct Connected {
    pub client: CarerixClient,
    pub api: Arc<dyn CarerixApi>,
}

/// Builds Carerix clients (tests put a fake Carerix behind it).
pub trait Connector: Send + Sync {
    /// A client for a connection's spec and credentials.
    ///
    /// # Errors
    /// When the URLs, tenant or credentials cannot make a client.
    fn connect(
        &self,
        spec: &CarerixConnectionSpec,
        creds: &SecretCredentials,
        settings: &Settings,
        rate_limiters: &RateLimiters,
        metrics: &Arc<Metrics>,
    ) -> Result<Connected, crate::carerix::Error>;
}

/// The real Carerix.
pub struct RealCarerix;

/// The reconciler's own client: it never sleeps on a `Retry-After` inside a pass (the error
/// comes back at once and the pass is requeued after that delay), so a throttled tenant does not
/// hold one of the controller's workers while others, deletions included, wait. It shares the
/// sync's client's token.
fn reconciler_client(client: &CarerixClient, settings: &Settings) -> CarerixClient {
    client.with_retry_policy(reconciler_retry_policy(settings.carerix_retries))
}

/// Short retries of transport errors and 5xx inside a pass; no waiting on `Retry-After`.
pub fn reconciler_retry_policy(retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries: retries,
        backoff: crate::backoff::BackoffPolicy {
            base: Duration::from_millis(200),
            max: Duration::from_secs(1),
        },
        max_retry_after: Duration::ZERO,
    }
}

impl Connector for RealCarerix {
    fn connect(
        &self,
        spec: &CarerixConnectionSpec,
        creds: &SecretCredentials,
        settings: &Settings,
        rate_limiters: &RateLimiters,
        metrics: &Arc<Metrics>,
    ) -> Result<Connected, crate::carerix::Error> {
        let client = build_client(spec, creds, &settings.client_settings(), rate_limiters, metrics)?;
        let reconciler = reconciler_client(&client, settings);
        Ok(Connected { api: Arc::new(reconciler), client })
    }
}

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Per-tenant rate limiters, shared with the sync and the receiver.
    pub rate_limiters: RateLimiters,
    /// Per-connection failure counts.
    pub backoffs: Backoffs,
    /// Events.
    pub events: Events,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Data sync state, read into status.
    pub sync: Arc<dyn SyncReport>,
    /// Whether this replica may act (leader election); always when there is no election.
    pub leadership: crate::leader::Validity,
    /// This replica's share of the connections (sharded mode); all of them otherwise.
    pub shards: crate::shard::Shards,
    /// Rate-limiter reservations of passes waiting for their tenant's budget.
    pub admissions: super::throttle::Admissions,
    connector: Box<dyn Connector>,
    clients: Mutex<HashMap<String, (ClientKey, Connected)>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientKey {
    tenant: String,
    identity_url: String,
    api_url: String,
    secret_version: String,
}

impl Context {
    /// A context for the given clients and settings, talking to the real Carerix.
    pub fn new(
        client: Client,
        settings: Settings,
        rate_limiters: RateLimiters,
        events: Events,
        metrics: Arc<Metrics>,
        sync: Arc<dyn SyncReport>,
    ) -> Self {
        Context::with_connector(client, settings, rate_limiters, events, metrics, sync, Box::new(RealCarerix))
    }

    /// A context whose Carerix clients come from `connector`.
    pub fn with_connector(
        client: Client,
        settings: Settings,
        rate_limiters: RateLimiters,
        events: Events,
        metrics: Arc<Metrics>,
        sync: Arc<dyn SyncReport>,
        connector: Box<dyn Connector>,
    ) -> Self {
        Context {
            client,
            backoffs: Backoffs::new(settings.backoff),
            settings,
            rate_limiters,
            events,
            metrics,
            sync,
            leadership: crate::leader::Validity::default(),
            shards: crate::shard::Shards::unsharded(),
            admissions: super::throttle::Admissions::default(),
            connector,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The same context, acting only while `leadership` is valid.
    pub fn with_leadership(mut self, leadership: crate::leader::Validity) -> Self {
        self.leadership = leadership;
        self
    }

    /// The same context, working only on the connections of this replica's share.
    pub fn with_shards(mut self, shards: crate::shard::Shards) -> Self {
        self.shards = shards;
        self
    }

    /// The Carerix client of a connection, reused while the tenant, URLs and Secret version stay
    /// the same (so its token cache survives across passes), rebuilt when any of them changes.
    ///
    /// # Errors
    /// When no client can be built from the spec and credentials.
    pub async fn carerix(
        &self,
        key: &str,
        spec: &CarerixConnectionSpec,
        creds: &SecretCredentials,
    ) -> Result<Connected, Error> {
        let ck = ClientKey {
            tenant: spec.tenant.clone(),
            identity_url: spec.identity_url().to_string(),
            api_url: spec.api_url().to_string(),
            secret_version: creds.resource_version.clone(),
        };
        let mut clients = self.clients.lock().await;
        if let Some((existing, connected)) = clients.get(key)
            && *existing == ck
        {
            return Ok(connected.clone());
        }
        let connected = self
            .connector
            .connect(spec, creds, &self.settings, &self.rate_limiters, &self.metrics)
            .map_err(|source| Error::Client { key: key.to_string(), source })?;
        clients.insert(key.to_string(), (ck, connected.clone()));
        Ok(connected)
    }

    /// The Carerix client of a connection (the sync's form of [`Context::carerix`]).
    ///
    /// # Errors
    /// When no client can be built from the spec and credentials.
    pub async fn carerix_client(
        &self,
        key: &str,
        spec: &CarerixConnectionSpec,
        creds: &SecretCredentials,
    ) -> Result<CarerixClient, Error> {
        Ok(self.carerix(key, spec, creds).await?.client)
    }

    /// Drops the cached client of a connection (its token goes with it).
    pub async fn forget_client(&self, key: &str) {
        self.clients.lock().await.remove(key);
    }

    /// How many Carerix clients are cached.
    #[cfg(test)]
    pub(crate) async fn cached_clients(&self) -> usize {
        self.clients.lock().await.len()
    }

    /// Drops the work state of connection `key`: its client (and token), admission and backoff.
    pub async fn forget_work(&self, key: &str) {
        self.forget_client(key).await;
        self.admissions.forget(key);
        self.backoffs.succeeded(key);
    }

    /// Drops everything kept for a connection that is gone: its work state and metrics.
    pub async fn forget(&self, obj: &CarerixConnection) {
        self.forget_work(&key_of(obj)).await;
        self.metrics.forget_connection(&obj.namespace().unwrap_or_default(), &obj.name_any());
    }
}
