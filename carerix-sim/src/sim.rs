//! The emulator state and its admin operations (the same ones the `/admin/v1` HTTP API calls), plus the
//! webhook-management operations behind the Carerix REST API.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use url::Url;

use crate::auth::{self, Signer};
pub use crate::delivery::DeliveryLogEntry;
use crate::delivery::{DeliveryLog, Job};
use crate::model::{self, Entity, FieldKind, Record, SeedSpec, Store};
use crate::{Config, Error};

/// An error of an admin or API operation, mapped to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 403
    #[error("{0}")]
    Forbidden(String),
    /// 400
    #[error("{0}")]
    BadRequest(String),
    /// 409
    #[error("{0}")]
    Conflict(String),
    /// 500
    #[error("{0}")]
    Internal(String),
}

impl SimError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            SimError::NotFound(_) => 404,
            SimError::Forbidden(_) => 403,
            SimError::BadRequest(_) => 400,
            SimError::Conflict(_) => 409,
            SimError::Internal(_) => 500,
        }
    }
}

impl From<Error> for SimError {
    fn from(e: Error) -> Self {
        SimError::Internal(e.to_string())
    }
}

/// A webhook's status (`WebhookStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    /// Deliveries happen.
    Enabled,
    /// No deliveries.
    Disabled,
    /// "has some internal failure"; no deliveries.
    Error,
}

/// Client credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredentials {
    /// `client_id`
    pub client_id: String,
    /// `client_secret`
    pub secret: String,
}

/// A registered OAuth client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    /// `client_id`
    pub client_id: String,
    /// Realm / tenant.
    pub tenant: String,
    /// Default scopes (always granted).
    pub default_scopes: Vec<String>,
    /// Revoked clients cannot get tokens.
    pub revoked: bool,
    #[serde(skip)]
    secret: String,
}

/// A tenant summary.
#[derive(Debug, Clone, Serialize)]
pub struct TenantInfo {
    /// Realm name.
    pub name: String,
    /// Webhooks feature activated.
    pub webhooks_activated: bool,
    /// Record counts per Carerix type (including soft-deleted).
    pub records: BTreeMap<String, usize>,
}

/// A webhook application with its owner.
#[derive(Debug, Clone, Serialize)]
pub struct ApplicationInfo {
    /// UUID.
    pub id: String,
    /// Name.
    pub name: String,
    /// The client id that created it.
    pub owner: String,
    /// PEM SPKI public key.
    pub public_key: String,
    /// Creation time.
    pub created: DateTime<Utc>,
}

/// A webhook with its owner.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookInfo {
    /// UUID.
    pub id: String,
    /// Application UUID.
    pub application_id: String,
    /// Subscriber URL.
    pub url: String,
    /// Filters as sent (`{"eventType"}` or `{"type","condition"}`).
    pub filters: Vec<Value>,
    /// Custom headers `{name, value}`.
    pub custom_headers: Vec<Value>,
    /// Status.
    pub status: WebhookStatus,
    /// The client id that created it.
    pub owner: String,
    /// Creation time.
    pub created: DateTime<Utc>,
}

/// The writes made to one application (by name) and its webhooks since the emulator started, so
/// that a test can tell whether two writers created or changed the same thing twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplicationWrites {
    /// Applications created with this name.
    pub applications_created: u32,
    /// Applications with this name deleted.
    pub applications_deleted: u32,
    /// Webhooks created in them.
    pub webhooks_created: u32,
    /// Webhooks deleted from them.
    pub webhooks_deleted: u32,
    /// Webhooks enabled or disabled.
    pub webhook_status_changes: u32,
}

impl ApplicationWrites {
    /// All writes.
    pub fn total(&self) -> u32 {
        self.applications_created
            + self.applications_deleted
            + self.webhooks_created
            + self.webhooks_deleted
            + self.webhook_status_changes
    }
}

struct Application {
    info: ApplicationInfo,
    key: Arc<RsaPrivateKey>,
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Respond with this status (e.g. 500, 502, 503) and `{"errors":[{"message"}]}`.
    Status {
        /// HTTP status.
        status: u16,
    },
    /// Respond 429 with `Retry-After: 1`.
    RateLimit,
    /// Add latency, then handle normally.
    Latency {
        /// Milliseconds.
        millis: u64,
    },
}

/// An injected fault. Applies to API requests (not `/admin`) whose path starts with `path_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// What happens.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it affects; `None` = until cleared.
    #[serde(default)]
    pub count: Option<usize>,
    /// Only paths with this prefix (e.g. `/graphql`, `/webhooks`, `/auth`).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// One API request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLogEntry {
    /// Sequence number from 1.
    pub seq: u64,
    /// Arrival time.
    pub time: DateTime<Utc>,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Tenant (realm of the token or of the token endpoint).
    pub tenant: Option<String>,
    /// Client id.
    pub client_id: Option<String>,
    /// `token`, `graphql:crEmployeePage`, `applications:create`, `webhooks:create`, ...
    pub operation: String,
    /// Response status.
    pub status: u16,
}

struct Tenant {
    webhooks_activated: bool,
    store: Store,
    next_id: u64,
    applications: BTreeMap<String, Application>,
    webhooks: BTreeMap<String, WebhookInfo>,
    /// Writes per application name.
    writes: BTreeMap<String, ApplicationWrites>,
}

impl Tenant {
    /// The write counter of the application `app` (by id).
    fn writes_of(&mut self, app: &str) -> &mut ApplicationWrites {
        let name = self
            .applications
            .get(app)
            .map_or_else(|| format!("(unknown application {app})"), |a| a.info.name.clone());
        self.writes.entry(name).or_default()
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub(crate) struct State {
    tenants: BTreeMap<String, Tenant>,
    clients: BTreeMap<String, ClientInfo>,
    faults: Vec<Fault>,
    token_epoch: u64,
    pub(crate) request_log: Vec<RequestLogEntry>,
    pub(crate) delivery_log: DeliveryLog,
    buckets: HashMap<String, Bucket>,
    switches: crate::switches::Switches,
}

/// The emulator: shared state plus admin methods. Obtain it from [`crate::SimHandle::sim`].
pub struct Sim {
    pub(crate) config: Config,
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) signer: Signer,
    pub(crate) base_url: Url,
    jobs: mpsc::UnboundedSender<Job>,
    readings: std::sync::RwLock<crate::Readings>,
}

/// What a fault check decided for a request.
pub(crate) enum FaultAction {
    Respond(u16),
    TooMany,
    Delay(Duration),
}

impl Sim {
    pub(crate) fn new(
        config: Config,
        signer: Signer,
        base_url: Url,
        jobs: mpsc::UnboundedSender<Job>,
    ) -> Sim {
        let readings = std::sync::RwLock::new(config.readings.clone());
        Sim { config, state: Arc::new(Mutex::new(State::default())), signer, base_url, jobs, readings }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration the emulator runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The base URL (`http://ADDR/`).
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    /// The issuer of a tenant's tokens: `{base}/auth/realms/{tenant}`.
    pub fn issuer(&self, tenant: &str) -> String {
        format!("{}auth/realms/{tenant}", self.base_url())
    }

    // ---------------------------------------------------------------- tenants and clients

    /// Creates a tenant seeded with `records` records per entity (`None` = `config.records_per_entity`).
    pub fn create_tenant(
        &self,
        name: &str,
        webhooks_activated: bool,
        records: Option<usize>,
    ) -> Result<TenantInfo, SimError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(SimError::BadRequest(format!("invalid tenant name '{name}'")));
        }
        let mut next_id = 1000;
        let spec = SeedSpec {
            seed: self.config.seed,
            records: records.unwrap_or(self.config.records_per_entity),
            same_second_burst: self.config.same_second_burst,
            now: Utc::now(),
        };
        let store = model::seed(name, &spec, &mut next_id);
        let mut st = self.lock();
        if st.tenants.contains_key(name) {
            return Err(SimError::Conflict(format!("tenant '{name}' exists")));
        }
        st.tenants.insert(
            name.to_string(),
            Tenant {
                webhooks_activated,
                store,
                next_id,
                applications: BTreeMap::new(),
                webhooks: BTreeMap::new(),
                writes: BTreeMap::new(),
            },
        );
        drop(st);
        self.tenant(name)
    }

    /// A tenant summary.
    pub fn tenant(&self, name: &str) -> Result<TenantInfo, SimError> {
        let st = self.lock();
        let t = st.tenants.get(name).ok_or_else(|| not_found("tenant", name))?;
        Ok(TenantInfo {
            name: name.to_string(),
            webhooks_activated: t.webhooks_activated,
            records: t.store.iter().map(|(e, m)| (e.type_name().to_string(), m.len())).collect(),
        })
    }

    /// All tenants.
    pub fn tenants(&self) -> Vec<TenantInfo> {
        let names: Vec<String> = self.lock().tenants.keys().cloned().collect();
        names.iter().filter_map(|n| self.tenant(n).ok()).collect()
    }

    /// Switches the webhooks feature of a tenant.
    pub fn set_webhooks_activated(&self, tenant: &str, activated: bool) -> Result<(), SimError> {
        let mut st = self.lock();
        st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?.webhooks_activated = activated;
        Ok(())
    }

    /// Registers a confidential client. Missing id/secret are generated (`<32 hex>.apps.carerix.io`);
    /// missing scopes default to [`auth::DEFAULT_SCOPES`].
    pub fn register_client(
        &self,
        tenant: &str,
        client_id: Option<&str>,
        secret: Option<&str>,
        default_scopes: Option<Vec<String>>,
    ) -> Result<ClientCredentials, SimError> {
        let client_id = client_id
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}.apps.carerix.io", uuid::Uuid::new_v4().simple()));
        let secret = secret.map(str::to_owned).unwrap_or_else(new_secret);
        let mut st = self.lock();
        if !st.tenants.contains_key(tenant) {
            return Err(not_found("tenant", tenant));
        }
        if st.clients.contains_key(&client_id) {
            return Err(SimError::Conflict(format!("client '{client_id}' exists")));
        }
        let default_scopes =
            default_scopes.unwrap_or_else(|| auth::DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
        st.clients.insert(
            client_id.clone(),
            ClientInfo {
                client_id: client_id.clone(),
                tenant: tenant.into(),
                default_scopes,
                revoked: false,
                secret: secret.clone(),
            },
        );
        Ok(ClientCredentials { client_id, secret })
    }

    /// All clients (secrets are not shown).
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.lock().clients.values().cloned().collect()
    }

    /// Gives a client a new secret (`None` = generated). Issued tokens stay valid.
    pub fn rotate_secret(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<ClientCredentials, SimError> {
        let mut st = self.lock();
        let c = st.clients.get_mut(client_id).ok_or_else(|| not_found("client", client_id))?;
        c.secret = secret.map(str::to_owned).unwrap_or_else(new_secret);
        Ok(ClientCredentials { client_id: client_id.into(), secret: c.secret.clone() })
    }

    /// Revokes a client: no new tokens (401 `invalid_client`). Issued tokens stay valid until they
    /// expire or [`Sim::expire_tokens`] is called.
    pub fn revoke_client(&self, client_id: &str) -> Result<(), SimError> {
        let mut st = self.lock();
        st.clients.get_mut(client_id).ok_or_else(|| not_found("client", client_id))?.revoked = true;
        Ok(())
    }

    /// Checks client credentials for a realm; `None` when unknown, wrong secret, other realm or revoked.
    pub(crate) fn authenticate(
        &self,
        tenant: &str,
        client_id: &str,
        secret: &str,
    ) -> Option<(Vec<String>, bool)> {
        let st = self.lock();
        let c = st.clients.get(client_id)?;
        if c.revoked || c.tenant != tenant || c.secret != secret {
            return None;
        }
        let activated = st.tenants.get(tenant).is_some_and(|t| t.webhooks_activated);
        Some((c.default_scopes.clone(), activated))
    }

    pub(crate) fn tenant_exists(&self, tenant: &str) -> bool {
        self.lock().tenants.contains_key(tenant)
    }

    pub(crate) fn token_epoch(&self) -> u64 {
        self.lock().token_epoch
    }

    // ---------------------------------------------------------------- switches

    /// The behaviour switches in force.
    pub fn switches(&self) -> crate::switches::Switches {
        self.lock().switches.clone()
    }

    /// Replaces the behaviour switches (they apply to the next request).
    pub fn set_switches(&self, switches: crate::switches::Switches) {
        self.lock().switches = switches;
    }

    // ---------------------------------------------------------------- faults and rate limit

    /// Injects a fault.
    pub fn inject_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Makes every issued token invalid now (401 on next use).
    pub fn expire_tokens(&self) {
        self.lock().token_epoch += 1;
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The active faults.
    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.clone()
    }

    pub(crate) fn take_fault(&self, path: &str) -> Option<FaultAction> {
        let mut st = self.lock();
        let idx =
            st.faults.iter().position(|f| f.path_prefix.as_deref().is_none_or(|p| path.starts_with(p)))?;
        let f = &mut st.faults[idx];
        let action = match f.kind {
            FaultKind::Status { status } => FaultAction::Respond(status),
            FaultKind::RateLimit => FaultAction::TooMany,
            FaultKind::Latency { millis } => FaultAction::Delay(Duration::from_millis(millis)),
        };
        if let Some(n) = f.count.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.faults.remove(idx);
            }
        }
        Some(action)
    }

    /// Token bucket per client id; `false` = over the limit.
    pub(crate) fn rate_ok(&self, client_id: &str) -> bool {
        let rate = f64::from(self.config.rate_limit_per_sec.max(1));
        let mut st = self.lock();
        let now = Instant::now();
        let b = st.buckets.entry(client_id.to_string()).or_insert(Bucket { tokens: rate, last: now });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    // ---------------------------------------------------------------- logs

    pub(crate) fn log_request(&self, mut e: RequestLogEntry) {
        let mut st = self.lock();
        e.seq = st.request_log.len() as u64 + 1;
        st.request_log.push(e);
    }

    /// The request log (every API request with its response status).
    pub fn request_log(&self) -> Vec<RequestLogEntry> {
        self.lock().request_log.clone()
    }

    /// The delivery log (every delivery attempt).
    pub fn delivery_log(&self) -> Vec<DeliveryLogEntry> {
        let log = self.lock().delivery_log.clone();
        log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Empties both logs.
    pub fn clear_logs(&self) {
        let mut st = self.lock();
        st.request_log.clear();
        st.delivery_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    // ---------------------------------------------------------------- records

    pub(crate) fn with_store<T>(&self, tenant: &str, f: impl FnOnce(&Store) -> T) -> Result<T, SimError> {
        let st = self.lock();
        let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        Ok(f(&t.store))
    }

    /// All records of an entity, including soft-deleted ones, in id order (full JSON form).
    pub fn list_records(&self, tenant: &str, entity: Entity) -> Result<Vec<Value>, SimError> {
        self.with_store(tenant, |s| {
            s.get(&entity).map(|m| m.values().map(Record::to_json).collect()).unwrap_or_default()
        })
    }

    /// One record (full JSON form).
    pub fn get_record(&self, tenant: &str, entity: Entity, id: u64) -> Result<Value, SimError> {
        self.with_store(tenant, |s| s.get(&entity).and_then(|m| m.get(&id)).map(Record::to_json))?
            .ok_or_else(|| not_found(entity.type_name(), &id.to_string()))
    }

    /// Creates a record from `fields` (names as in the GraphQL type; relations as `"123"` or
    /// `{"_id":"123"}`); emits `:created`. Returns the record.
    pub fn create_record(
        &self,
        tenant: &str,
        entity: Entity,
        fields: Map<String, Value>,
    ) -> Result<Value, SimError> {
        let now = Utc::now();
        let now =
            if self.readings().second_precision { model::next_modification(now, now, true) } else { now };
        let mut st = self.lock();
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        let id = t.next_id;
        let mut rec =
            Record { id, entity, deleted: false, creation: now, modification: now, fields: Map::new() };
        if let Some(f) = entity.id_field() {
            rec.fields.insert(f.into(), json!(id));
        }
        let changed = apply_fields(&mut rec, fields)?;
        t.next_id += 1;
        let out = rec.to_json();
        t.store.entry(entity).or_default().insert(id, rec);
        drop(st);
        let mut changed = changed;
        changed.push("creationdate".into());
        changed.push("modificationdate".into());
        self.emit(tenant, entity, id, "created", changed);
        Ok(out)
    }

    /// Updates fields, bumps `modificationDate` (strictly later than before) and emits `:updated`
    /// with the lower-case changed field names.
    pub fn update_record(
        &self,
        tenant: &str,
        entity: Entity,
        id: u64,
        fields: Map<String, Value>,
    ) -> Result<Value, SimError> {
        let mut st = self.lock();
        let rec = record_mut(&mut st, tenant, entity, id)?;
        let mut changed = apply_fields(rec, fields)?;
        bump(rec, self.readings().second_precision);
        changed.push("modificationdate".into());
        let out = rec.to_json();
        drop(st);
        self.emit(tenant, entity, id, "updated", changed);
        Ok(out)
    }

    /// Soft delete: sets `deleted: 1` and bumps `modificationDate` (emits `:updated` with `deleted`,
    /// and `:deleted` when `emit_deleted_events`). CRMatch has no `deleted`: this hard-deletes it.
    pub fn soft_delete_record(&self, tenant: &str, entity: Entity, id: u64) -> Result<(), SimError> {
        let readings = self.readings();
        if !entity.has_deleted() && !readings.hidden_soft_deletes {
            return self.hard_delete_record(tenant, entity, id);
        }
        let mut st = self.lock();
        let rec = record_mut(&mut st, tenant, entity, id)?;
        rec.deleted = true;
        bump(rec, readings.second_precision);
        drop(st);
        self.emit(tenant, entity, id, "updated", vec!["deleted".into(), "modificationdate".into()]);
        if self.config.emit_deleted_events {
            self.emit(tenant, entity, id, "deleted", vec![]);
        }
        Ok(())
    }

    /// Hard delete: the record is gone (`:deleted` only when `emit_deleted_events`).
    pub fn hard_delete_record(&self, tenant: &str, entity: Entity, id: u64) -> Result<(), SimError> {
        let mut st = self.lock();
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        t.store
            .get_mut(&entity)
            .and_then(|m| m.remove(&id))
            .ok_or_else(|| not_found(entity.type_name(), &id.to_string()))?;
        drop(st);
        if self.config.emit_deleted_events {
            self.emit(tenant, entity, id, "deleted", vec![]);
        }
        Ok(())
    }

    fn emit(&self, tenant: &str, entity: Entity, id: u64, action: &str, changed: Vec<String>) {
        let st = self.lock();
        let prefix = match (&st.switches.contact_event_prefix, entity) {
            (Some(p), Entity::Contact) => p.clone(),
            _ => entity.event_prefix(),
        };
        let event = format!("{prefix}:{action}");
        let Some(t) = st.tenants.get(tenant) else { return };
        if !t.webhooks_activated {
            return;
        }
        for w in t.webhooks.values() {
            if w.status != WebhookStatus::Enabled || !filters_match(&w.filters, &event) {
                continue;
            }
            let Some(app) = t.applications.get(&w.application_id) else {
                continue;
            };
            let payload = json!({
                "id": uuid::Uuid::new_v4().to_string(),
                "time": Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "type": event,
                "applicationId": w.application_id,
                "webhookId": w.id,
                "tenant": tenant,
                "data": {"entityId": id.to_string(), "changedFields": changed},
            });
            let job = Job {
                job_id: uuid::Uuid::new_v4().to_string(),
                webhook_id: w.id.clone(),
                url: w.url.clone(),
                body: payload.to_string(),
                headers: w
                    .custom_headers
                    .iter()
                    .filter_map(|h| Some((h["name"].as_str()?.to_string(), h["value"].as_str()?.to_string())))
                    .collect(),
                key: app.key.clone(),
            };
            // the worker outlives the Sim only during shutdown; a closed channel just drops the event
            let _ = self.jobs.send(job);
        }
    }

    // ---------------------------------------------------------------- webhooks

    fn activated(st: &State, tenant: &str) -> Result<(), SimError> {
        let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        if !t.webhooks_activated {
            return Err(SimError::Forbidden(format!("Webhooks are not activated for tenant '{tenant}'")));
        }
        Ok(())
    }

    /// Creates an application owned by `owner` (a client id) with a fresh RSA key pair.
    pub async fn create_application(
        &self,
        tenant: &str,
        owner: &str,
        name: &str,
    ) -> Result<ApplicationInfo, SimError> {
        Self::activated(&self.lock(), tenant)?;
        if name.trim().is_empty() {
            return Err(SimError::BadRequest("'name' is required".into()));
        }
        let bits = self.config.key_bits;
        let key = tokio::task::spawn_blocking(move || auth::generate_key(bits))
            .await
            .map_err(|e| SimError::Internal(e.to_string()))??;
        let public_key = auth::public_pem(&key.to_public_key())?;
        let info = ApplicationInfo {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            owner: owner.to_string(),
            public_key,
            created: Utc::now(),
        };
        let mut st = self.lock();
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        t.applications.insert(info.id.clone(), Application { info: info.clone(), key: Arc::new(key) });
        t.writes_of(&info.id).applications_created += 1;
        Ok(info)
    }

    /// All applications of a tenant (everyone's), oldest first.
    pub fn applications(&self, tenant: &str) -> Result<Vec<ApplicationInfo>, SimError> {
        let st = self.lock();
        let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        let mut v: Vec<ApplicationInfo> = t.applications.values().map(|a| a.info.clone()).collect();
        v.sort_by_key(|a| a.created);
        Ok(v)
    }

    pub(crate) fn api_applications(&self, tenant: &str) -> Result<Vec<ApplicationInfo>, SimError> {
        Self::activated(&self.lock(), tenant)?;
        self.applications(tenant)
    }

    pub(crate) fn api_application(&self, tenant: &str, app: &str) -> Result<ApplicationInfo, SimError> {
        let st = self.lock();
        Self::activated(&st, tenant)?;
        let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        t.applications.get(app).map(|a| a.info.clone()).ok_or_else(|| not_found("Application", app))
    }

    /// Deletes an application and its webhooks; `caller` must be the owner (`None` = admin, no check).
    pub fn delete_application(&self, tenant: &str, caller: Option<&str>, app: &str) -> Result<(), SimError> {
        let mut st = self.lock();
        if caller.is_some() {
            Self::activated(&st, tenant)?;
        }
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        let a = t.applications.get(app).ok_or_else(|| not_found("Application", app))?;
        if let Some(c) = caller
            && a.info.owner != c
        {
            return Err(not_owner("application", app));
        }
        t.writes_of(app).applications_deleted += 1;
        t.applications.remove(app);
        t.webhooks.retain(|_, w| w.application_id != app);
        Ok(())
    }

    /// Creates a webhook in `app` owned by `owner`. `body` is the REST body (`url`, `filters`,
    /// `customHeaders`). At most 10 filters; reserved header names are refused.
    pub fn create_webhook(
        &self,
        tenant: &str,
        owner: &str,
        app: &str,
        body: &Value,
    ) -> Result<WebhookInfo, SimError> {
        let mut st = self.lock();
        Self::activated(&st, tenant)?;
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        if !t.applications.contains_key(app) {
            return Err(not_found("Application", app));
        }
        let url = body
            .get("url")
            .and_then(Value::as_str)
            .filter(|u| Url::parse(u).is_ok())
            .ok_or_else(|| SimError::BadRequest("'url' must be an absolute URL".into()))?;
        let filters = body.get("filters").and_then(Value::as_array).cloned().unwrap_or_default();
        if filters.len() > 10 {
            return Err(SimError::BadRequest("A webhook can have at most 10 filters".into()));
        }
        for f in &filters {
            if filter_event(f).is_none() {
                return Err(SimError::BadRequest(
                    "Each filter needs an 'eventType' (or 'type') string".into(),
                ));
            }
        }
        let custom_headers = body.get("customHeaders").and_then(Value::as_array).cloned().unwrap_or_default();
        for h in &custom_headers {
            let Some(name) = h.get("name").and_then(Value::as_str) else {
                return Err(SimError::BadRequest("customHeaders need 'name' and 'value'".into()));
            };
            if h.get("value").and_then(Value::as_str).is_none() {
                return Err(SimError::BadRequest("customHeaders need 'name' and 'value'".into()));
            }
            if ["cx-signature", "cx-payload-schema-version", "content-type"]
                .contains(&name.to_lowercase().as_str())
            {
                return Err(SimError::BadRequest(format!("Header '{name}' is reserved")));
            }
        }
        let w = WebhookInfo {
            id: uuid::Uuid::new_v4().to_string(),
            application_id: app.to_string(),
            url: url.to_string(),
            filters,
            custom_headers,
            status: WebhookStatus::Enabled,
            owner: owner.to_string(),
            created: Utc::now(),
        };
        t.webhooks.insert(w.id.clone(), w.clone());
        t.writes_of(app).webhooks_created += 1;
        Ok(w)
    }

    /// All webhooks of a tenant, or of one application, oldest first.
    pub fn webhooks(&self, tenant: &str, app: Option<&str>) -> Result<Vec<WebhookInfo>, SimError> {
        let st = self.lock();
        let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        if let Some(a) = app
            && !t.applications.contains_key(a)
        {
            return Err(not_found("Application", a));
        }
        let mut v: Vec<WebhookInfo> =
            t.webhooks.values().filter(|w| app.is_none_or(|a| w.application_id == a)).cloned().collect();
        v.sort_by_key(|w| w.created);
        Ok(v)
    }

    pub(crate) fn api_webhooks(&self, tenant: &str, app: &str) -> Result<Vec<WebhookInfo>, SimError> {
        Self::activated(&self.lock(), tenant)?;
        self.webhooks(tenant, Some(app))
    }

    pub(crate) fn api_webhook(&self, tenant: &str, app: &str, id: &str) -> Result<WebhookInfo, SimError> {
        self.api_webhooks(tenant, app)?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| not_found("Webhook", id))
    }

    /// Sets a webhook's status; `caller` must own it (`None` = admin, e.g. to simulate drift).
    pub fn set_webhook_status(
        &self,
        tenant: &str,
        caller: Option<&str>,
        id: &str,
        status: WebhookStatus,
    ) -> Result<WebhookInfo, SimError> {
        let mut st = self.lock();
        if caller.is_some() {
            Self::activated(&st, tenant)?;
        }
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        let w = t.webhooks.get_mut(id).ok_or_else(|| not_found("Webhook", id))?;
        if let Some(c) = caller
            && w.owner != c
        {
            return Err(not_owner("webhook", id));
        }
        w.status = status;
        let w = w.clone();
        t.writes_of(&w.application_id).webhook_status_changes += 1;
        Ok(w)
    }

    /// Deletes a webhook; `caller` must own it (`None` = admin).
    pub fn delete_webhook(&self, tenant: &str, caller: Option<&str>, id: &str) -> Result<(), SimError> {
        let mut st = self.lock();
        if caller.is_some() {
            Self::activated(&st, tenant)?;
        }
        let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        let w = t.webhooks.get(id).ok_or_else(|| not_found("Webhook", id))?;
        if let Some(c) = caller
            && w.owner != c
        {
            return Err(not_owner("webhook", id));
        }
        if let Some(w) = t.webhooks.remove(id) {
            t.writes_of(&w.application_id).webhooks_deleted += 1;
        }
        Ok(())
    }

    /// The writes made to each application of a tenant (by application name, deleted ones
    /// included) and to its webhooks, through the API or the admin methods.
    pub fn application_writes(&self, tenant: &str) -> Result<BTreeMap<String, ApplicationWrites>, SimError> {
        let st = self.lock();
        let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
        Ok(t.writes.clone())
    }

    /// `Cx-Signature` of `body` signed with the private key of application `app`, as a delivery
    /// of that application would carry it (for tests that post deliveries themselves).
    pub fn sign_as_application(&self, tenant: &str, app: &str, body: &[u8]) -> Result<String, SimError> {
        let key = {
            let st = self.lock();
            let t = st.tenants.get(tenant).ok_or_else(|| not_found("tenant", tenant))?;
            t.applications.get(app).ok_or_else(|| not_found("Application", app))?.key.clone()
        };
        Ok(crate::delivery::sign(&key, body))
    }
}

fn new_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A stored record, or the error naming what is missing (the tenant or the record).
fn record_mut<'a>(
    st: &'a mut State,
    tenant: &str,
    entity: Entity,
    id: u64,
) -> Result<&'a mut Record, SimError> {
    let t = st.tenants.get_mut(tenant).ok_or_else(|| not_found("tenant", tenant))?;
    t.store
        .get_mut(&entity)
        .and_then(|m| m.get_mut(&id))
        .ok_or_else(|| not_found(entity.type_name(), &id.to_string()))
}

fn not_found(what: &str, id: &str) -> SimError {
    SimError::NotFound(format!("{what} '{id}' not found"))
}

fn not_owner(what: &str, id: &str) -> SimError {
    SimError::Forbidden(format!(
        "Access denied: the {what} '{id}' was created by another client (permission level: owner)"
    ))
}

fn bump(rec: &mut Record, second_precision: bool) {
    rec.modification = model::next_modification(rec.modification, Utc::now(), second_precision);
    rec.fields.remove("modificationDate");
}

/// The event name of a filter (`eventType` or `type`).
pub(crate) fn filter_event(f: &Value) -> Option<&str> {
    f.get("eventType").or_else(|| f.get("type")).and_then(Value::as_str)
}

fn filters_match(filters: &[Value], event: &str) -> bool {
    filters.iter().any(|f| filter_event(f).is_some_and(|e| e.eq_ignore_ascii_case(event)))
}

fn apply_fields(rec: &mut Record, fields: Map<String, Value>) -> Result<Vec<String>, SimError> {
    let mut changed = Vec::new();
    for (k, v) in fields {
        if matches!(k.as_str(), "_id" | "_kind" | "creationDate" | "modificationDate" | "deleted") {
            if k == "deleted" && rec.entity.has_deleted() {
                let d = v.as_i64().unwrap_or_default() != 0 || v.as_bool().unwrap_or(false);
                if d != rec.deleted {
                    rec.deleted = d;
                    changed.push("deleted".into());
                }
            }
            continue;
        }
        let kind = rec
            .entity
            .field_kind(&k)
            .ok_or_else(|| SimError::BadRequest(format!("{} has no field '{k}'", rec.entity.type_name())))?;
        let v = match (kind, v) {
            (FieldKind::Rel(_), Value::String(s)) => json!({"_id": s}),
            (FieldKind::Rel(_), Value::Number(n)) => json!({"_id": n.to_string()}),
            (_, v) => v,
        };
        if rec.fields.get(&k) != Some(&v) {
            changed.push(k.to_lowercase());
            rec.fields.insert(k, v);
        }
    }
    Ok(changed)
}

// ------------------------------------------------------------- data readings

impl Sim {
    /// The readings in force.
    pub fn readings(&self) -> crate::Readings {
        self.readings.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the readings.
    pub fn set_readings(&self, readings: crate::Readings) {
        *self.readings.write().unwrap_or_else(std::sync::PoisonError::into_inner) = readings;
    }

    /// Applies a partial readings object (`{"id_in_qualifier": false}`) on top of the current ones.
    pub fn patch_readings(&self, patch: &Value) -> Result<crate::Readings, SimError> {
        let mut current =
            serde_json::to_value(self.readings()).map_err(|e| SimError::BadRequest(e.to_string()))?;
        let (Some(obj), Some(p)) = (current.as_object_mut(), patch.as_object()) else {
            return Err(SimError::BadRequest("readings must be a JSON object".into()));
        };
        for (k, v) in p {
            if !obj.contains_key(k) {
                return Err(SimError::BadRequest(format!("unknown reading '{k}'")));
            }
            obj.insert(k.clone(), v.clone());
        }
        let next: crate::Readings =
            serde_json::from_value(current).map_err(|e| SimError::BadRequest(e.to_string()))?;
        self.set_readings(next.clone());
        Ok(next)
    }

    /// Sets a record's `modificationDate` as Carerix data can have it: `None` renders `null` (and
    /// no date qualifier matches it), a future instant stays in the future. No event is emitted.
    pub fn set_modification_date(
        &self,
        tenant: &str,
        entity: Entity,
        id: u64,
        at: Option<DateTime<Utc>>,
    ) -> Result<Value, SimError> {
        let mut st = self.lock();
        let rec = record_mut(&mut st, tenant, entity, id)?;
        match at {
            Some(at) => {
                rec.modification = at;
                rec.fields.remove("modificationDate");
            }
            None => {
                rec.fields.insert("modificationDate".into(), Value::Null);
            }
        }
        Ok(rec.to_json())
    }

    /// Ids of the soft-deleted records of an entity (also those whose type has no `deleted` field).
    pub fn deleted_ids(&self, tenant: &str, entity: Entity) -> Result<Vec<u64>, SimError> {
        self.with_store(tenant, |s| {
            s.get(&entity)
                .map(|m| m.values().filter(|r| r.deleted).map(|r| r.id).collect())
                .unwrap_or_default()
        })
    }
}
