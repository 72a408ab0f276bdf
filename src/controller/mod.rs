//! The reconciler: credentials, webhooks and status for each `CarerixConnection`.
//!
//! One pass runs fetch → validate → build the desired state → act on Carerix → write status:
//! read the Secret, get a token (which proves the credentials and tells the granted scopes),
//! find or create our webhook application, make its webhooks equal to the spec, and write the
//! conditions. Errors that retrying cannot fix (bad credentials, webhooks not activated) set
//! `Stalled` and wait for a change to the resource or its Secrets; the others back off per
//! connection. Deletion runs behind a finalizer. The data sync (`crate::sync`) reports into the
//! same status through [`SyncReport`].

pub mod backoff;
pub mod conditions;
pub mod plan;

pub use crate::sync::SyncReport;

use std::{collections::HashMap, sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{debug, info, instrument, warn};

use self::{
    backoff::{Backoffs, jitter},
    conditions::{Outcome, Part, reasons},
    plan::{ActualWebhook, DesiredWebhook, normalize_events, normalize_headers},
};
use crate::{
    api::{
        CarerixConnection, CarerixConnectionSpec, CarerixConnectionStatus, CredentialsStatus, DeletionPolicy,
        FIELD_MANAGER, FINALIZER, RECONCILE_REQUESTED_AT, WebhookState, WebhooksStatus,
    },
    carerix::{self, CarerixClient, Credentials, RateLimiters},
    metrics::Metrics,
};

/// The scope needed to manage webhooks.
pub const WEBHOOKS_SCOPE: &str = "urn:cx/webhooks:data:manage";
/// The scope needed to read the `CR*` data.
pub const DATA_SCOPE: &str = "urn:cx/cx5Wrapper:data:manage";

/// Errors that end a reconcile pass early and go to [`error_policy`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("failed to {action} {key}")]
    Kube {
        action: &'static str,
        key: String,
        #[source]
        source: kube::Error,
    },
    /// Deleting our webhooks from Carerix cannot proceed; the status says why and what to do.
    #[error("cleanup of {key} is blocked: {reason}")]
    CleanupBlocked { key: String, reason: String },
    /// Carerix failed during cleanup (retried with backoff).
    #[error("failed to remove the webhooks of {key} from Carerix")]
    Cleanup {
        key: String,
        #[source]
        source: carerix::Error,
    },
    /// Building the Carerix client failed.
    #[error("failed to set up the Carerix client for {key}")]
    Client {
        key: String,
        #[source]
        source: carerix::Error,
    },
    /// The finalizer helper failed.
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApi",
            Error::CleanupBlocked { .. } => "CleanupBlocked",
            Error::Cleanup { .. } => "CleanupFailed",
            Error::Client { .. } => "CarerixClient",
            Error::Finalizer(_) => "Finalizer",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Cleanup { source, .. } => source.retry_after(),
            _ => None,
        }
    }
}

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Public base URL of the operator's receiver; webhooks without a `url` point at
    /// `{base}/webhooks/{namespace}/{name}`.
    pub receiver_base_url: Option<String>,
    /// Per-connection backoff.
    pub backoff: backoff::BackoffPolicy,
    /// Timeout of one Carerix request.
    pub carerix_timeout: Duration,
    /// Retries of one Carerix request inside the client.
    pub carerix_retries: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            receiver_base_url: None,
            backoff: backoff::BackoffPolicy::default(),
            carerix_timeout: Duration::from_secs(30),
            carerix_retries: 2,
        }
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
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Data sync state, read into status.
    pub sync: Arc<dyn SyncReport>,
    clients: Mutex<HashMap<String, (ClientKey, CarerixClient)>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientKey {
    tenant: String,
    identity_url: String,
    api_url: String,
    secret_version: String,
}

impl Context {
    /// A context for the given clients and settings.
    pub fn new(
        client: Client,
        settings: Settings,
        rate_limiters: RateLimiters,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        sync: Arc<dyn SyncReport>,
    ) -> Self {
        Context {
            client,
            backoffs: Backoffs::new(settings.backoff),
            settings,
            rate_limiters,
            recorder,
            metrics,
            sync,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The Carerix client of a connection, reused while the tenant, URLs and Secret version stay
    /// the same (so its token cache survives across passes), rebuilt when any of them changes.
    pub async fn carerix_client(
        &self,
        key: &str,
        spec: &CarerixConnectionSpec,
        creds: &SecretCredentials,
    ) -> Result<CarerixClient, Error> {
        let ck = ClientKey {
            tenant: spec.tenant.clone(),
            identity_url: spec.identity_url().to_string(),
            api_url: spec.api_url().to_string(),
            secret_version: creds.resource_version.clone(),
        };
        let mut clients = self.clients.lock().await;
        if let Some((existing, client)) = clients.get(key)
            && *existing == ck
        {
            return Ok(client.clone());
        }
        let client = new_client(spec, creds, &self.settings, &self.rate_limiters, &self.metrics)
            .map_err(|source| Error::Client { key: key.to_string(), source })?;
        clients.insert(key.to_string(), (ck, client.clone()));
        Ok(client)
    }

    async fn forget_client(&self, key: &str) {
        self.clients.lock().await.remove(key);
    }

    /// Drops everything kept for a connection that is gone: its client, backoff and metrics.
    async fn forget(&self, obj: &CarerixConnection) {
        let key = key_of(obj);
        self.forget_client(&key).await;
        self.backoffs.succeeded(&key);
        self.metrics.forget_connection(&obj.namespace().unwrap_or_default(), &obj.name_any());
    }
}

/// A Carerix client for a connection's tenant and credentials, sharing the tenant's rate limit.
///
/// # Errors
/// When the URLs, tenant or credentials cannot make a client.
pub fn new_client(
    spec: &CarerixConnectionSpec,
    creds: &SecretCredentials,
    settings: &Settings,
    rate_limiters: &RateLimiters,
    metrics: &Arc<Metrics>,
) -> Result<CarerixClient, carerix::Error> {
    CarerixClient::builder()
        .identity_url(spec.identity_url())
        .api_url(spec.api_url())
        .tenant(&spec.tenant)
        .credentials(creds.credentials.clone())
        .timeout(settings.carerix_timeout)
        .max_retries(settings.carerix_retries)
        .rate_limiter(rate_limiters.for_tenant(&spec.tenant))
        .observer(metrics.carerix_observer())
        .build()
}

/// Credentials read from the connection's Secret.
#[derive(Clone, Debug)]
pub struct SecretCredentials {
    /// Client id and secret.
    pub credentials: Credentials,
    /// The Secret's `resourceVersion`.
    pub resource_version: String,
}

/// Why the credentials Secret could not be used.
#[derive(Debug)]
pub enum SecretProblem {
    /// The Secret does not exist.
    NotFound(String),
    /// A key is missing or empty.
    MissingKey { secret: String, key: &'static str },
}

impl SecretProblem {
    fn part(&self, ns: &str) -> Part {
        match self {
            SecretProblem::NotFound(name) => Part::failed(
                reasons::SECRET_NOT_FOUND,
                format!(
                    "Secret {ns}/{name} not found: create it with the keys clientId and clientSecret of a \
                     confidential Carerix client"
                ),
            ),
            SecretProblem::MissingKey { secret, key } => Part::failed(
                reasons::INVALID_SECRET,
                format!("Secret {ns}/{secret} has no {key}: it needs the keys clientId and clientSecret"),
            ),
        }
    }
}

fn key_of(obj: &CarerixConnection) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Reads a key of a Secret as UTF-8, or `None` when the key is absent or empty.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(v.0.clone()).ok().filter(|s| !s.is_empty());
    }
    secret.string_data.as_ref().and_then(|d| d.get(key)).cloned().filter(|s| !s.is_empty())
}

/// Reads the credentials Secret of a connection.
///
/// # Errors
/// `Ok(Err(problem))` when the Secret is missing or incomplete; `Err` when the API call fails.
pub async fn read_credentials(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Result<SecretCredentials, SecretProblem>, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(Err(SecretProblem::NotFound(name.to_string())));
    };
    let Some(client_id) = secret_value(&secret, "clientId") else {
        return Ok(Err(SecretProblem::MissingKey { secret: name.to_string(), key: "clientId" }));
    };
    let Some(client_secret) = secret_value(&secret, "clientSecret") else {
        return Ok(Err(SecretProblem::MissingKey { secret: name.to_string(), key: "clientSecret" }));
    };
    Ok(Ok(SecretCredentials {
        credentials: Credentials::new(client_id, client_secret),
        resource_version: secret.resource_version().unwrap_or_default(),
    }))
}

/// The name of our webhook application in Carerix: stable, so it is found again after a restart
/// or when the resource is re-created.
pub fn application_name(obj: &CarerixConnection) -> String {
    format!("carerix-operator.{}.{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Entry point for the controller runtime.
#[instrument(skip_all, fields(connection = %key_of(&obj)))]
pub async fn reconcile(obj: Arc<CarerixConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<CarerixConnection> = Api::namespaced(ctx.client.clone(), &ns);
    let ctx2 = ctx.clone();
    let (name, deleting) = (obj.name_any(), obj.metadata.deletion_timestamp.is_some());
    let result = finalizer(&api, FINALIZER, obj, |event| async move {
        match event {
            Finalizer::Apply(obj) => apply(obj, ctx2).await,
            Finalizer::Cleanup(obj) => cleanup(obj, ctx2).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if let Err(err) = &result {
        ctx.metrics.reconcile_failed(err.metric_label());
    } else if !deleting {
        ctx.metrics.reconcile_succeeded(&ns, &name);
    }
    result
}

/// Decides when to retry after an error.
pub fn error_policy(obj: Arc<CarerixConnection>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&obj);
    let inner_retry_after = match err {
        Error::Finalizer(boxed) => match boxed.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e.retry_after(),
            _ => None,
        },
        other => other.retry_after(),
    };
    let delay = ctx.backoffs.failed(&key, inner_retry_after);
    warn!(connection = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// What the webhooks step found and did.
struct WebhooksReport {
    application_id: Option<String>,
    public_key: Option<String>,
    states: Vec<WebhookState>,
    /// (Event reason, note) for each change made to Carerix that the spec did not ask for.
    repaired: Vec<(&'static str, String)>,
}

/// What went wrong talking to Carerix, as a status part and how to go on.
struct Failure {
    part: Part,
    /// Retrying will not help until someone acts.
    stalled: bool,
    retry_after: Option<Duration>,
}

fn classify(err: &carerix::Error, tenant: &str, what: &str) -> Failure {
    let message = err.to_string();
    match err.reason() {
        "InvalidClient" => Failure {
            part: Part::failed(
                reasons::INVALID_CLIENT,
                format!(
                    "Carerix rejected the client credentials for tenant {tenant}: check clientId and \
                     clientSecret in the Secret, or create a new secret for the client in Carerix (Identity \
                     Access → Clients) and update the Secret"
                ),
            ),
            stalled: true,
            retry_after: None,
        },
        "TenantNotFound" | "RealmNotFound" => Failure {
            part: Part::failed(
                reasons::TENANT_NOT_FOUND,
                format!(
                    "the identity service knows no tenant {tenant}: check spec.tenant (the application \
                     name of {tenant}.carerix.net) and spec.identityUrl (the id-*.carerix.io host in your \
                     tenant's OpenID configuration URL)"
                ),
            ),
            stalled: true,
            retry_after: None,
        },
        "WebhooksNotActivated" => {
            Failure { part: webhooks_not_activated(tenant), stalled: true, retry_after: None }
        }
        "MissingScope" => Failure {
            part: Part::failed(
                reasons::MISSING_SCOPE,
                format!(
                    "Carerix refused to {what}: the client lacks the scope {}; add it to the client's default \
                     scopes in Carerix (Identity Access → Clients)",
                    err.missing_scope().unwrap_or_else(|| "needed".to_string())
                ),
            ),
            stalled: true,
            retry_after: None,
        },
        "RateLimited" => Failure {
            part: Part::failed(
                reasons::RATE_LIMITED,
                format!("Carerix is rate limiting requests for tenant {tenant}; retrying with backoff"),
            ),
            stalled: false,
            retry_after: err.retry_after(),
        },
        _ if err.is_retryable() => Failure {
            part: Part::failed(
                reasons::CARERIX_UNAVAILABLE,
                format!(
                    "Carerix did not answer well while trying to {what} ({message}); retrying with backoff"
                ),
            ),
            stalled: false,
            retry_after: err.retry_after(),
        },
        _ => Failure {
            part: Part::failed(reasons::CARERIX_REJECTED, format!("Carerix refused to {what}: {message}")),
            stalled: true,
            retry_after: None,
        },
    }
}

fn webhooks_not_activated(tenant: &str) -> Part {
    Part::failed(
        reasons::WEBHOOKS_NOT_ACTIVATED,
        format!(
            "webhooks are not activated for tenant {tenant}, or the client lacks {WEBHOOKS_SCOPE}: ask Carerix \
             support to activate webhooks, then add {WEBHOOKS_SCOPE} to the client's default scopes and \
             request a reconcile (annotate the resource with {RECONCILE_REQUESTED_AT})"
        ),
    )
}

/// Does `granted` include `scope` (a broader `X:data:manage` covers `X:data/...`)?
pub fn has_scope(granted: &[String], scope: &str) -> bool {
    granted.iter().any(|g| g == scope)
}

#[instrument(skip_all)]
async fn apply(obj: Arc<CarerixConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&obj);
    let ns = obj.namespace().unwrap_or_default();
    let spec = &obj.spec;
    let interval: Duration = spec.interval.into();

    if spec.suspend {
        // Nothing may reach Carerix: the sync stops too (it resumes from its watermark).
        ctx.sync.stop(&obj).await;
        let suspended =
            |what: &str| Part::unknown(reasons::SUSPENDED, format!("{what} not checked while suspended"));
        let outcome = Outcome {
            credentials: suspended("credentials"),
            webhooks: suspended("webhooks"),
            data: spec.sync.as_ref().map(|_| suspended("data sync")),
            reconciling: None,
            stalled: None,
            ready_override: Some(Part::failed(
                reasons::SUSPENDED,
                "suspended: nothing is sent to Carerix until spec.suspend is false",
            )),
        };
        write_status(&ctx, &obj, outcome, None, None, None).await?;
        ctx.backoffs.succeeded(&key);
        return Ok(Action::await_change());
    }

    // Credentials.
    let creds =
        read_credentials(&ctx.client, &ns, &spec.credentials_secret_ref.name).await.map_err(|source| {
            Error::Kube { action: "read the credentials Secret of", key: key.clone(), source }
        })?;
    let creds = match creds {
        Ok(c) => c,
        Err(problem) => {
            let part = problem.part(&ns);
            let outcome = blocked_outcome(part, spec.sync.is_some(), true);
            write_status(&ctx, &obj, outcome, None, None, None).await?;
            return Ok(Action::await_change());
        }
    };
    let cx = ctx.carerix_client(&key, spec, &creds).await?;
    let token = match cx.token_info().await {
        Ok(t) => t,
        Err(err) => {
            let failure = classify(&err, &spec.tenant, "issue a token");
            if failure.stalled {
                ctx.forget_client(&key).await;
            }
            return finish_with_failure(&ctx, &obj, failure, true, None).await;
        }
    };
    let credentials_status = CredentialsStatus {
        secret_resource_version: Some(creds.resource_version.clone()),
        scopes: token.scopes.clone(),
    };
    if !spec.webhooks.is_empty() && !has_scope(&token.scopes, WEBHOOKS_SCOPE) {
        // Drop the token: the next pass must ask again, since activation changes the scopes.
        ctx.forget_client(&key).await;
        let failure =
            Failure { part: webhooks_not_activated(&spec.tenant), stalled: true, retry_after: None };
        // The credentials work; it is the webhooks that cannot.
        return finish_with_failure(&ctx, &obj, failure, false, Some(credentials_status)).await;
    }
    if spec.sync.is_some()
        && !has_scope(&token.scopes, DATA_SCOPE)
        && !has_scope(&token.scopes, "urn:cx/graphql:data:manage")
    {
        ctx.forget_client(&key).await;
        let failure = Failure {
            part: Part::failed(
                reasons::MISSING_SCOPE,
                format!(
                    "the client lacks {DATA_SCOPE}, which the data sync needs: add it to the client's default \
                     scopes in Carerix (Identity Access → Clients)"
                ),
            ),
            stalled: true,
            retry_after: None,
        };
        return finish_with_failure(&ctx, &obj, failure, true, Some(credentials_status)).await;
    }
    let credentials_part = Part::ok(
        "CredentialsAccepted",
        format!("Carerix accepted the credentials of tenant {}", spec.tenant),
    );

    // Webhooks.
    let desired = match desired_webhooks(&ctx, &obj).await? {
        Ok(d) => d,
        Err(part) => {
            let outcome = Outcome {
                credentials: credentials_part,
                webhooks: part,
                data: data_part(&ctx, &obj),
                reconciling: None,
                stalled: None,
                ready_override: None,
            }
            .stalled_from_webhooks();
            write_status(&ctx, &obj, outcome, Some(credentials_status), None, None).await?;
            return Ok(Action::await_change());
        }
    };
    let report = match ensure_webhooks(&cx, &obj, &desired).await {
        Ok(r) => r,
        Err(err) => {
            let failure = classify(&err, &spec.tenant, "manage webhooks");
            return finish_with_failure(&ctx, &obj, failure, false, Some(credentials_status)).await;
        }
    };
    for (reason, note) in &report.repaired {
        publish(&ctx, &obj, EventType::Normal, reason, "RepairWebhook", note.clone()).await;
    }
    let ready_count = report.states.iter().filter(|s| s.state == "enabled").count();
    let webhooks_part = if desired.is_empty() {
        Part::ok(reasons::NO_WEBHOOKS, "no webhooks configured")
    } else {
        Part::ok(reasons::WEBHOOKS_CREATED, format!("{ready_count}/{} webhooks ready", desired.len()))
    };
    let webhooks_status = WebhooksStatus {
        application_id: report.application_id.clone(),
        summary: Some(format!("{ready_count}/{}", desired.len())),
        items: report.states,
    };

    // Data sync: started or updated here, reported by the sync itself.
    ctx.sync.ensure(&obj, &cx, report.public_key.clone()).await;
    let data = data_part(&ctx, &obj);
    let reconciling = data
        .as_ref()
        .filter(|p| p.reason == reasons::INITIAL_SYNC_IN_PROGRESS)
        .map(|p| (p.reason.clone(), p.message.clone()));
    let outcome = Outcome {
        credentials: credentials_part,
        webhooks: webhooks_part,
        data,
        reconciling,
        stalled: None,
        ready_override: None,
    };
    write_status(&ctx, &obj, outcome, Some(credentials_status), Some(webhooks_status), ctx.sync.status(&obj))
        .await?;
    ctx.backoffs.succeeded(&key);
    let next = if ctx.sync.in_progress(&obj) {
        interval.min(Duration::from_secs(10))
    } else {
        jitter(interval, 0.1)
    };
    Ok(Action::requeue(next))
}

impl Outcome {
    fn stalled_from_webhooks(mut self) -> Self {
        self.stalled = Some((self.webhooks.reason.clone(), self.webhooks.message.clone()));
        self
    }
}

fn blocked_outcome(part: Part, has_sync: bool, credentials: bool) -> Outcome {
    let waiting = |what: &str| {
        Part::unknown(reasons::CREDENTIALS_NOT_VALID, format!("{what} waits for valid credentials"))
    };
    let (credentials_part, webhooks_part) = if credentials {
        (part.clone(), waiting("webhooks"))
    } else {
        (Part::ok("CredentialsAccepted", "credentials accepted"), part.clone())
    };
    Outcome {
        credentials: credentials_part,
        webhooks: webhooks_part,
        data: has_sync.then(|| waiting("data sync")),
        reconciling: None,
        stalled: Some((part.reason.clone(), part.message.clone())),
        ready_override: None,
    }
}

async fn finish_with_failure(
    ctx: &Context,
    obj: &CarerixConnection,
    failure: Failure,
    credentials: bool,
    credentials_status: Option<CredentialsStatus>,
) -> Result<Action, Error> {
    let key = key_of(obj);
    let mut outcome = blocked_outcome(failure.part.clone(), obj.spec.sync.is_some(), credentials);
    if !credentials {
        // The credentials work, so a running sync goes on: report it as it is.
        outcome.data = data_part(ctx, obj);
    }
    if !failure.stalled {
        outcome.stalled = None;
        outcome.reconciling = Some((failure.part.reason.clone(), failure.part.message.clone()));
    }
    write_status(ctx, obj, outcome, credentials_status, None, None).await?;
    if failure.stalled {
        ctx.backoffs.succeeded(&key);
        Ok(Action::await_change())
    } else {
        let delay = ctx.backoffs.failed(&key, failure.retry_after);
        info!(connection = %key, reason = %failure.part.reason, retry_in = ?delay, "Carerix unavailable, backing off");
        Ok(Action::requeue(delay))
    }
}

fn data_part(ctx: &Context, obj: &CarerixConnection) -> Option<Part> {
    obj.spec.sync.as_ref().map(|_| ctx.sync.condition(obj))
}

/// Resolves the desired webhooks: URL defaults and header values from Secrets.
async fn desired_webhooks(
    ctx: &Context,
    obj: &CarerixConnection,
) -> Result<Result<Vec<DesiredWebhook>, Part>, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let key = key_of(obj);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::new();
    let mut cache: HashMap<String, Option<Secret>> = HashMap::new();
    for w in &obj.spec.webhooks {
        let url = match (&w.url, &ctx.settings.receiver_base_url) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => format!("{}/webhooks/{ns}/{}", base.trim_end_matches('/'), obj.name_any()),
            (None, None) => {
                return Ok(Err(Part::failed(
                    reasons::INVALID_SPEC,
                    format!(
                        "webhook {} has no url and the operator has no receiver URL: set spec.webhooks[].url, or \
                         start the operator with --receiver-base-url",
                        w.name
                    ),
                )));
            }
        };
        let mut headers = Vec::new();
        for h in &w.custom_headers {
            let sref = &h.value_from.secret_key_ref;
            if !cache.contains_key(&sref.name) {
                let s = secrets.get_opt(&sref.name).await.map_err(|source| Error::Kube {
                    action: "read a custom header Secret of",
                    key: key.clone(),
                    source,
                })?;
                cache.insert(sref.name.clone(), s);
            }
            let value =
                cache.get(&sref.name).and_then(|s| s.as_ref()).and_then(|s| secret_value(s, &sref.key));
            match value {
                Some(v) => headers.push((h.name.clone(), v)),
                None => {
                    return Ok(Err(Part::failed(
                        reasons::SECRET_NOT_FOUND,
                        format!(
                            "header {} of webhook {} needs key {} of Secret {ns}/{}, which does not exist",
                            h.name, w.name, sref.key, sref.name
                        ),
                    )));
                }
            }
        }
        out.push(DesiredWebhook {
            name: w.name.clone(),
            url,
            events: normalize_events(&w.events),
            headers: normalize_headers(headers),
        });
    }
    Ok(Ok(out))
}

/// Finds (or creates) our application and makes its webhooks equal to `desired`.
async fn ensure_webhooks(
    cx: &CarerixClient,
    obj: &CarerixConnection,
    desired: &[DesiredWebhook],
) -> Result<WebhooksReport, carerix::Error> {
    let hooks = cx.webhooks();
    let me = cx.client_id().to_string();
    let name = application_name(obj);
    // The one in status first, then one adopted by its name.
    let mut app = our_applications(cx, obj).await?.into_iter().next();
    let mut repaired = Vec::new();
    if app.is_none() {
        if desired.is_empty() {
            return Ok(WebhooksReport { application_id: None, public_key: None, states: vec![], repaired });
        }
        let created = hooks.create_application(&name).await?;
        info!(application = %created.id.as_str(), "created the webhook application");
        app = Some(created);
    }
    let Some(app) = app else {
        return Ok(WebhooksReport { application_id: None, public_key: None, states: vec![], repaired });
    };
    let actual: Vec<carerix::Webhook> = hooks.list_webhooks(&app.id).await?;
    let actual_plain: Vec<ActualWebhook> = actual
        .iter()
        .map(|w| ActualWebhook {
            id: w.id.as_str().to_string(),
            url: w.url.clone(),
            events: w.event_types.clone(),
            headers: w.custom_headers.clone(),
            status: w.status.as_str().to_string(),
            owned: w.created_by.as_deref().is_none_or(|c| c == me),
        })
        .collect();
    let plan = plan::plan(desired, &actual_plain);
    debug!(?plan, "webhook plan");
    let first_time = actual.is_empty();
    let mut ids: HashMap<String, (String, String)> = HashMap::new();
    for (name, id) in &plan.keep {
        ids.insert(name.clone(), (id.clone(), "enabled".into()));
    }
    for (name, id, was) in &plan.enable {
        let enabled = hooks.enable_webhook(&app.id, &carerix::WebhookId::from(id.clone())).await?;
        repaired.push((
            "WebhookReenabled",
            format!("re-enabled webhook {name} ({id}), which was {was} in Carerix"),
        ));
        ids.insert(name.clone(), (id.clone(), enabled.status.as_str().to_string()));
    }
    for id in &plan.delete {
        match hooks.delete_webhook(&app.id, &carerix::WebhookId::from(id.clone())).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    for want in &plan.create {
        let created = hooks
            .create_webhook(
                &app.id,
                &carerix::NewWebhook {
                    url: want.url.clone(),
                    event_types: want.events.clone(),
                    custom_headers: want.headers.clone(),
                },
            )
            .await?;
        // Known before with the same url and events: it vanished or changed in Carerix (drift).
        // Otherwise the spec changed, which is no repair.
        let known = obj
            .status
            .as_ref()
            .and_then(|s| s.webhooks.as_ref())
            .and_then(|w| w.items.iter().find(|i| i.name == want.name && i.id.is_some()));
        match known {
            Some(k)
                if !first_time && k.url.as_deref() == Some(want.url.as_str()) && k.events == want.events =>
            {
                repaired.push((
                    "WebhookRecreated",
                    format!("re-created webhook {}, which was missing or different in Carerix", want.name),
                ));
            }
            Some(_) => {
                repaired
                    .push(("WebhookReplaced", format!("replaced webhook {} to match the spec", want.name)));
            }
            None => {}
        }
        let mut status = created.status.as_str().to_string();
        if status != "enabled" {
            status = hooks.enable_webhook(&app.id, &created.id).await?.status.as_str().to_string();
        }
        ids.insert(want.name.clone(), (created.id.as_str().to_string(), status));
    }
    let states = desired
        .iter()
        .map(|d| {
            let (id, state) =
                ids.get(&d.name).cloned().map_or((None, "missing".to_string()), |(i, s)| (Some(i), s));
            WebhookState {
                name: d.name.clone(),
                id,
                url: Some(d.url.clone()),
                events: d.events.clone(),
                state,
            }
        })
        .collect();
    Ok(WebhooksReport {
        application_id: Some(app.id.as_str().to_string()),
        public_key: app.public_key.clone(),
        states,
        repaired,
    })
}

/// Removes our application and webhooks from Carerix (under `deletionPolicy: Delete`).
#[instrument(skip_all)]
async fn cleanup(obj: Arc<CarerixConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&obj);
    let ns = obj.namespace().unwrap_or_default();
    ctx.sync.stop(&obj).await;
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        info!(connection = %key, "deletionPolicy Orphan: leaving the webhooks in Carerix");
        ctx.forget(&obj).await;
        return Ok(Action::await_change());
    }
    let blocked = |reason: String| async {
        let part = Part::failed(
            reasons::CLEANUP_BLOCKED,
            format!(
                "cannot remove the webhooks from Carerix: {reason}. Fix the credentials, or finish the deletion \
                 and leave the webhooks in Carerix with: kubectl patch carerixconnection {} -n {ns} --type merge \
                 -p '{{\"spec\":{{\"deletionPolicy\":\"Orphan\"}}}}'",
                obj.name_any()
            ),
        );
        let mut outcome = blocked_outcome(part.clone(), obj.spec.sync.is_some(), true);
        outcome.ready_override = Some(part);
        write_status(&ctx, &obj, outcome, None, None, None).await?;
        Err::<Action, Error>(Error::CleanupBlocked { key: key.clone(), reason })
    };
    let creds = read_credentials(&ctx.client, &ns, &obj.spec.credentials_secret_ref.name).await.map_err(
        |source| Error::Kube { action: "read the credentials Secret of", key: key.clone(), source },
    )?;
    let creds = match creds {
        Ok(c) => c,
        Err(SecretProblem::NotFound(name)) => {
            return blocked(format!("the Secret {ns}/{name} is gone")).await;
        }
        Err(SecretProblem::MissingKey { secret, key: k }) => {
            return blocked(format!("the Secret {ns}/{secret} has no {k}")).await;
        }
    };
    let cx = ctx.carerix_client(&key, &obj.spec, &creds).await?;
    let result = remove_application(&cx, &obj).await;
    match result {
        Ok(()) => {
            ctx.forget(&obj).await;
            Ok(Action::await_change())
        }
        Err(err) if err.reason() == "InvalidClient" => {
            ctx.forget_client(&key).await;
            blocked("Carerix rejects the credentials in the Secret".to_string()).await
        }
        Err(err) if !err.is_retryable() && (err.is_forbidden() || err.reason() == "MissingScope") => {
            blocked(format!("Carerix refuses to delete the webhooks ({err})")).await
        }
        Err(source) => Err(Error::Cleanup { key, source }),
    }
}

/// Our webhook applications for `obj` in Carerix: created by our client, and either the one
/// recorded in status or one with our name (found again after a restart or a re-created
/// resource). The recorded one comes first.
pub async fn our_applications(
    cx: &CarerixClient,
    obj: &CarerixConnection,
) -> Result<Vec<carerix::Application>, carerix::Error> {
    let me = cx.client_id();
    let name = application_name(obj);
    let known_id =
        obj.status.as_ref().and_then(|s| s.webhooks.as_ref()).and_then(|w| w.application_id.clone());
    let mut apps: Vec<carerix::Application> = cx
        .webhooks()
        .list_applications()
        .await?
        .into_iter()
        .filter(|a| a.created_by.as_deref().is_none_or(|c| c == me))
        .filter(|a| a.name.as_deref() == Some(name.as_str()) || known_id.as_deref() == Some(a.id.as_str()))
        .collect();
    apps.sort_by_key(|a| known_id.as_deref() != Some(a.id.as_str()));
    Ok(apps)
}

async fn remove_application(cx: &CarerixClient, obj: &CarerixConnection) -> Result<(), carerix::Error> {
    let hooks = cx.webhooks();
    let me = cx.client_id().to_string();
    for app in &our_applications(cx, obj).await? {
        let webhooks = match hooks.list_webhooks(&app.id).await {
            Ok(w) => w,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        for w in webhooks.iter().filter(|w| w.created_by.as_deref().is_none_or(|c| c == me)) {
            match hooks.delete_webhook(&app.id, &w.id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        match hooks.delete_application(&app.id).await {
            Ok(()) => info!(application = %app.id.as_str(), "deleted the webhook application"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn publish(
    ctx: &Context,
    obj: &CarerixConnection,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %err, "could not publish an event");
    }
}

/// Writes the status when it differs from what is there, and publishes an Event when `Ready`
/// changes.
async fn write_status(
    ctx: &Context,
    obj: &CarerixConnection,
    outcome: Outcome,
    credentials: Option<CredentialsStatus>,
    webhooks: Option<WebhooksStatus>,
    sync: Option<crate::api::SyncStatus>,
) -> Result<(), Error> {
    let key = key_of(obj);
    let old = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let new_conditions = outcome.conditions();
    let conditions: Vec<Condition> =
        conditions::merge(&old.conditions, &new_conditions, generation, Timestamp::now());
    let status = CarerixConnectionStatus {
        observed_generation: generation,
        last_handled_reconcile_at: obj
            .annotations()
            .get(RECONCILE_REQUESTED_AT)
            .cloned()
            .or(old.last_handled_reconcile_at.clone()),
        conditions,
        // Keep what we knew when this pass could not look.
        credentials: credentials.or(old.credentials.clone()),
        webhooks: webhooks.or(old.webhooks.clone()),
        // Without spec.sync there is no sync status; leaving it out removes what we wrote before.
        sync: if obj.spec.sync.is_some() { sync.or(old.sync.clone()) } else { None },
    };
    ctx.metrics.set_conditions(obj, &status.conditions);
    ctx.metrics.set_sync_status(&obj.namespace().unwrap_or_default(), &obj.name_any(), status.sync.as_ref());
    let unchanged = conditions::same_ignoring_time(&old.conditions, &status.conditions)
        && old.observed_generation == status.observed_generation
        && old.last_handled_reconcile_at == status.last_handled_reconcile_at
        && old.credentials == status.credentials
        && old.webhooks == status.webhooks
        && old.sync == status.sync;
    if unchanged {
        return Ok(());
    }
    let api: Api<CarerixConnection> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "hiredata.io/v1alpha1",
        "kind": "CarerixConnection",
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Kube { action: "write the status of", key: key.clone(), source })?;
    debug!(connection = %key, "status written");

    let old_ready = conditions::find(&old.conditions, conditions::types::READY);
    let new_ready = outcome.ready();
    let changed = old_ready
        .is_none_or(|c| c.status != format!("{:?}", new_ready.status) || c.reason != new_ready.reason);
    if changed {
        let type_ =
            if new_ready.status == conditions::Status::True { EventType::Normal } else { EventType::Warning };
        publish(ctx, obj, type_, &new_ready.reason, "Reconcile", new_ready.message.clone()).await;
    }
    Ok(())
}
