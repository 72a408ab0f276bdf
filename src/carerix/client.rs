//! [`CarerixClient`]: configuration, token handling and the request pipeline shared by the
//! GraphQL and webhooks handlers.
//!
//! Every API request goes through one pipeline: get a bearer token (cached, see
//! [`auth`](super::auth)) → await the tenant's [`RateLimiter`] → send → on 401 drop the token and
//! try once more → on a retryable failure back off (exponential with jitter, honouring
//! `Retry-After`) and retry up to [`RetryPolicy::max_retries`] times.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use tracing::{debug, instrument};
use url::Url;

use super::auth::{Credentials, TokenInfo, TokenSource};
use super::error::{Error, Result};
use super::observer::{NoopObserver, Observer};
use super::rate_limit::RateLimiter;
use crate::backoff::BackoffPolicy;

/// Default identity provider (the tenant's `id-*` shard must often be configured instead).
pub const DEFAULT_IDENTITY_URL: &str = "https://id.carerix.io";
/// Default API host, shared by all tenants.
pub const DEFAULT_API_URL: &str = "https://api.carerix.io";
/// Default `User-Agent`.
pub const DEFAULT_USER_AGENT: &str = concat!("carerix-operator/", env!("CARGO_PKG_VERSION"));

/// How the client retries retryable failures (429, 5xx, timeouts, connection failures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// The delay before each retry: the operator's one backoff (doubling, ±20% jitter).
    pub backoff: BackoffPolicy,
    /// A `Retry-After` longer than this is not waited for in the client: the error is returned
    /// at once so the caller can requeue.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            backoff: BackoffPolicy { base: Duration::from_millis(200), max: Duration::from_secs(5) },
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy { max_retries: 0, ..RetryPolicy::default() }
    }

    /// The delay before retry number `retry` (0-based), or `None` if Carerix asked for a wait
    /// longer than [`RetryPolicy::max_retry_after`]; a shorter `Retry-After` raises the delay to
    /// at least that.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry_after.is_some_and(|r| r > self.max_retry_after) {
            return None;
        }
        Some(self.backoff.wait(retry.saturating_add(1), retry_after))
    }
}

/// Builds a [`CarerixClient`]; start with [`CarerixClient::builder`].
#[must_use]
pub struct CarerixClientBuilder {
    identity_url: String,
    api_url: String,
    tenant: Option<String>,
    credentials: Option<Credentials>,
    scopes: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: String,
    rate_limiter: Option<RateLimiter>,
    retry: RetryPolicy,
    observer: Arc<dyn Observer>,
}

impl fmt::Debug for CarerixClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarerixClientBuilder")
            .field("identity_url", &self.identity_url)
            .field("api_url", &self.api_url)
            .field("tenant", &self.tenant)
            .field("credentials", &self.credentials)
            .field("scopes", &self.scopes)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl CarerixClientBuilder {
    fn new() -> Self {
        CarerixClientBuilder {
            identity_url: DEFAULT_IDENTITY_URL.to_owned(),
            api_url: DEFAULT_API_URL.to_owned(),
            tenant: None,
            credentials: None,
            scopes: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            rate_limiter: None,
            retry: RetryPolicy::default(),
            observer: Arc::new(NoopObserver),
        }
    }

    /// The identity provider base URL (default [`DEFAULT_IDENTITY_URL`]), e.g.
    /// `https://id-s4.carerix.io`.
    pub fn identity_url(mut self, url: impl Into<String>) -> Self {
        self.identity_url = url.into();
        self
    }

    /// The API base URL (default [`DEFAULT_API_URL`]).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = url.into();
        self
    }

    /// The tenant, i.e. the Keycloak realm (`{tenant}.carerix.net`). Required.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The OAuth2 client credentials. Required.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Scopes to request (space-joined into `scope`); none means the client's default scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Whole-request timeout (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Alias of [`CarerixClientBuilder::request_timeout`].
    pub fn timeout(self, timeout: Duration) -> Self {
        self.request_timeout(timeout)
    }

    /// A shared rate limiter, usually [`RateLimiters::for_tenant`](super::RateLimiters::for_tenant).
    /// Without one the client gets its own limiter at the default 10 requests per second.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Maximum retries of retryable failures (default 3; 0 disables retries).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.retry.max_retries = max_retries;
        self
    }

    /// The whole retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The metrics hook (default: none).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the tenant or credentials are missing or empty, the tenant is not a
    /// plain realm name, a URL is not an absolute `http(s)` URL, or the HTTP client cannot be built.
    pub fn build(self) -> Result<CarerixClient> {
        let tenant =
            self.tenant.filter(|t| !t.trim().is_empty()).ok_or_else(|| config("tenant is required"))?;
        if tenant.chars().any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '%' | '\\')) {
            return Err(config(format!("tenant {tenant:?} is not a valid realm name")));
        }
        let credentials = self.credentials.ok_or_else(|| config("credentials are required"))?;
        if credentials.client_id.is_empty() || credentials.client_secret.is_empty() {
            return Err(config("client id and client secret must not be empty"));
        }
        let identity_url = base_url("identity_url", &self.identity_url)?;
        let api_url = base_url("api_url", &self.api_url)?;
        let token_url =
            join(&identity_url, &["auth", "realms", &tenant, "protocol", "openid-connect", "token"])?;
        let http = shared_http_client(self.connect_timeout, self.request_timeout, &self.user_agent)?;
        let limiter = self.rate_limiter.unwrap_or_default();
        let tokens = Arc::new(TokenSource::new(token_url, tenant.clone(), credentials, self.scopes));
        Ok(CarerixClient {
            inner: Arc::new(Inner {
                http,
                api_url,
                tenant,
                tokens,
                limiter,
                retry: self.retry,
                observer: self.observer,
            }),
        })
    }
}

/// The HTTP client for these settings, shared by every [`CarerixClient`] built with them.
///
/// One `reqwest::Client` holds a connection pool and a TLS configuration (root store included),
/// which cost tens of KiB each; with one per connection, a thousand connections paid for a
/// thousand of them. Clients differ per connection only in token, limiter and base URLs, so they
/// all share one HTTP client (in practice there is one settings tuple per process).
fn shared_http_client(
    connect_timeout: Duration,
    request_timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client> {
    type Key = (Duration, Duration, String);
    static SHARED: OnceLock<Mutex<HashMap<Key, reqwest::Client>>> = OnceLock::new();
    let key = (connect_timeout, request_timeout, user_agent.to_string());
    let mut shared = SHARED.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(http) = shared.get(&key) {
        return Ok(http.clone());
    }
    let http = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(user_agent)
        .build()
        .map_err(|e| config(format!("cannot build the HTTP client: {e}")))?;
    shared.insert(key, http.clone());
    Ok(http)
}

fn config(reason: impl Into<String>) -> Error {
    Error::Config { reason: reason.into() }
}

fn base_url(name: &str, value: &str) -> Result<Url> {
    let url = Url::parse(value).map_err(|e| config(format!("{name} {value:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(config(format!("{name} {value:?} must be an http(s) URL")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config(format!("{name} must not contain credentials")));
    }
    Ok(url)
}

/// `base` with `segments` appended as (percent-encoded) path segments.
pub(crate) fn join(base: &Url, segments: &[&str]) -> Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| config(format!("{base} cannot be a base URL")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A Carerix API client for one tenant. Cheap to clone: clones share the token cache, HTTP
/// connection pool and rate limiter.
#[derive(Clone)]
pub struct CarerixClient {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Clone)]
pub(crate) struct Inner {
    http: reqwest::Client,
    pub(crate) api_url: Url,
    tenant: String,
    tokens: Arc<TokenSource>,
    limiter: RateLimiter,
    retry: RetryPolicy,
    observer: Arc<dyn Observer>,
}

impl fmt::Debug for CarerixClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarerixClient")
            .field("tenant", &self.inner.tenant)
            .field("api_url", &self.inner.api_url.as_str())
            .field("token_url", &self.inner.tokens.token_url.as_str())
            .field("client_id", &self.inner.tokens.credentials.client_id)
            .finish_non_exhaustive()
    }
}

/// One API request to send through the pipeline.
pub(crate) struct ApiRequest<'a> {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) body: Option<&'a serde_json::Value>,
    /// Whether sending it twice is harmless. Non-idempotent requests are retried only when the
    /// server cannot have acted on them (429, 503, connection failures).
    pub(crate) idempotent: bool,
}

/// A successful response.
pub(crate) struct ApiResponse {
    pub(crate) body: Bytes,
}

enum AttemptError {
    Unauthorized { generation: u64, error: Error },
    Other(Error),
}

impl CarerixClient {
    /// A builder with the defaults described on its methods.
    pub fn builder() -> CarerixClientBuilder {
        CarerixClientBuilder::new()
    }

    /// The same client (HTTP pool, token and its cache, rate limit) retrying by `retry` instead:
    /// the reconciler's and the sync's clients of one connection share one token this way.
    pub fn with_retry_policy(&self, retry: RetryPolicy) -> CarerixClient {
        CarerixClient { inner: Arc::new(Inner { retry, ..Inner::clone(&self.inner) }) }
    }

    /// The tenant this client works for.
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    /// The OAuth2 client id (Carerix records it as `_createdBy` of what the client creates).
    pub fn client_id(&self) -> &str {
        &self.inner.tokens.credentials.client_id
    }

    /// The scopes and lifetime of the current access token, fetching a token if none is cached.
    ///
    /// # Errors
    ///
    /// The token errors: [`Error::InvalidClient`], [`Error::InvalidScope`],
    /// [`Error::RealmNotFound`], [`Error::Token`], [`Error::Transport`], [`Error::Decode`].
    pub async fn token_info(&self) -> Result<TokenInfo> {
        self.inner.tokens.info(&self.inner.http, self.inner.observer.as_ref()).await
    }

    /// Sends `request` through the pipeline (token, rate limit, 401 retry, retries).
    #[instrument(skip_all, fields(tenant = %self.inner.tenant, operation = %operation))]
    pub(crate) async fn execute(&self, operation: &str, request: ApiRequest<'_>) -> Result<ApiResponse> {
        let policy = &self.inner.retry;
        let mut retries = 0u32;
        let mut reauthenticated = false;
        loop {
            let error = match self.attempt(operation, &request).await {
                Ok(response) => return Ok(response),
                Err(AttemptError::Unauthorized { generation, error }) => {
                    if !reauthenticated {
                        debug!("Carerix answered 401, fetching a new token and retrying once");
                        reauthenticated = true;
                        self.inner.tokens.invalidate(generation).await;
                        continue;
                    }
                    error
                }
                Err(AttemptError::Other(error)) => error,
            };
            let may_resend = request.idempotent || safe_to_resend(&error);
            if retries >= policy.max_retries || !error.is_retryable() || !may_resend {
                return Err(error);
            }
            let Some(delay) = policy.delay(retries, error.retry_after()) else {
                return Err(error);
            };
            retries += 1;
            debug!(retry = retries, reason = error.reason(), status = ?error.status(), ?delay, "retrying Carerix request");
            self.inner.observer.on_retry(operation, retries, error.reason(), delay);
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, operation: &str, request: &ApiRequest<'_>) -> Result<ApiResponse, AttemptError> {
        let inner = &self.inner;
        let (token, generation) =
            inner.tokens.bearer(&inner.http, inner.observer.as_ref()).await.map_err(AttemptError::Other)?;
        let waited = inner.limiter.until_ready().await;
        inner.observer.on_rate_limit_wait(&inner.tenant, waited);

        let mut builder = inner
            .http
            .request(request.method.clone(), request.url.clone())
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = request.body {
            builder = builder.json(body);
        }
        let start = Instant::now();
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => {
                inner.observer.on_request(operation, None, start.elapsed());
                return Err(AttemptError::Other(Error::transport(operation, e)));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await;
        inner.observer.on_request(operation, Some(status), start.elapsed());
        let body = body.map_err(|e| AttemptError::Other(Error::transport(operation, e)))?;
        if (200..300).contains(&status) {
            return Ok(ApiResponse { body });
        }
        let error = Error::from_response(operation, status, &headers, &body);
        if status == 401 {
            Err(AttemptError::Unauthorized { generation, error })
        } else {
            Err(AttemptError::Other(error))
        }
    }
}

/// The status, headers and timing of one request sent by [`CarerixClient::probe`]; the body is
/// not kept.
#[derive(Debug, Clone)]
pub struct ProbeAnswer {
    /// HTTP status.
    pub status: u16,
    /// The response headers (Carerix sends no secret in them).
    pub headers: reqwest::header::HeaderMap,
    /// Time from sending to the end of the body.
    pub elapsed: Duration,
}

impl CarerixClient {
    /// Sends one `GET {api_url}/{segments}?{query}` with the current token, once (no retries, no
    /// re-authentication), and returns its status and headers: for diagnostics such as reading
    /// `X-RateLimit-*` headers. It waits for the rate limiter like every request.
    ///
    /// # Errors
    ///
    /// The token errors, [`Error::Config`] for a bad path, [`Error::Transport`].
    pub async fn probe(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<ProbeAnswer> {
        let inner = &self.inner;
        let (token, _) = inner.tokens.bearer(&inner.http, inner.observer.as_ref()).await?;
        let mut url = join(&inner.api_url, segments)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let waited = inner.limiter.until_ready().await;
        inner.observer.on_rate_limit_wait(&inner.tenant, waited);
        let start = Instant::now();
        let response = inner
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| Error::transport("probe", e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        response.bytes().await.map_err(|e| Error::transport("probe", e))?;
        let elapsed = start.elapsed();
        inner.observer.on_request("probe", Some(status), elapsed);
        Ok(ProbeAnswer { status, headers, elapsed })
    }
}

/// Whether a failed request cannot have had an effect at Carerix, so even a non-idempotent
/// request may be sent again.
fn safe_to_resend(error: &Error) -> bool {
    match error {
        // Token failures happen before the API request is sent.
        Error::Token { .. } => true,
        Error::Transport { operation, kind, .. } => {
            operation == "token" || *kind == super::TransportKind::Connect
        }
        Error::Api { status, .. } => matches!(status, 429 | 503),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carerix::Credentials;

    #[test]
    fn retries_back_off_and_honour_a_short_retry_after_but_not_a_long_one() {
        let policy = RetryPolicy::default();
        for retry in 0..6 {
            let delay = policy.backoff.delay(retry + 1);
            let d = policy.delay(retry, None).unwrap_or_default();
            assert!(d >= delay.mul_f64(0.8) && d <= delay.mul_f64(1.2), "{retry}: {d:?} vs {delay:?}");
        }
        assert!(policy.delay(0, Some(Duration::from_secs(2))) >= Some(Duration::from_secs(2)));
        assert_eq!(policy.delay(0, Some(Duration::from_secs(31))), None);
        assert_eq!(RetryPolicy::none().max_retries, 0);
    }

    #[test]
    fn builder_validates() {
        let creds = || Credentials::new("id", "secret");
        assert!(CarerixClient::builder().credentials(creds()).build().is_err());
        assert!(CarerixClient::builder().tenant("t").build().is_err());
        assert!(CarerixClient::builder().tenant("a/b").credentials(creds()).build().is_err());
        assert!(
            CarerixClient::builder().tenant("t").credentials(creds()).api_url("ftp://x").build().is_err()
        );
        assert!(
            CarerixClient::builder().tenant("t").credentials(Credentials::new("id", "")).build().is_err()
        );
        let client = CarerixClient::builder()
            .tenant("confair")
            .identity_url("https://id-s4.carerix.io/")
            .credentials(creds())
            .build();
        let client = match client {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            client.inner.tokens.token_url.as_str(),
            "https://id-s4.carerix.io/auth/realms/confair/protocol/openid-connect/token"
        );
        assert_eq!(client.inner.api_url.as_str(), "https://api.carerix.io/");
        let debug = format!("{client:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn join_appends_segments() {
        let base = Url::parse("http://127.0.0.1:8080/prefix/").unwrap_or_else(|e| panic!("{e}"));
        let url = join(&base, &["webhooks", "v1", "applications", "a b"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/prefix/webhooks/v1/applications/a%20b");
    }
}
