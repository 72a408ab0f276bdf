//! OAuth2 client-credentials authentication against the tenant's Keycloak realm.
//!
//! The token endpoint is `{identity_url}/auth/realms/{tenant}/protocol/openid-connect/token`.
//! Credentials go in `Authorization: Basic` first (`client_secret_basic`); on HTTP 400/401 the
//! request is repeated with the credentials in the form body (`client_secret_post`), as public
//! Carerix clients do (API.md §2.3). The method that worked is remembered.
//!
//! The token is cached in the client and refreshed at `expires_in - min(60 s, expires_in / 5)`.
//! Refreshes are single-flight: the cache lock is held while fetching, so concurrent callers wait
//! for and share one refresh.
//!
//! Secrets and tokens live in [`SecretString`], whose `Debug` prints `[redacted]` and which has no
//! `Display`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::error::{Error, Result, message_from_body, retry_after_from_headers};
use super::observer::Observer;

/// Lifetime assumed when the token response has no `expires_in` (API.md §2.3).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(300);

/// A string that must never be printed: client secrets, access tokens, webhook header values.
///
/// `Debug` prints `[redacted]`; there is no `Display`. Read it with [`SecretString::expose_secret`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        SecretString(secret.into())
    }

    /// The secret itself. Use only to put it on the wire.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        SecretString(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        SecretString(value.to_owned())
    }
}

/// The OAuth2 client credentials of a confidential Carerix client.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The client id (`<32 hex>.apps.carerix.io`).
    pub client_id: String,
    /// The client secret (Carerix's "API key").
    pub client_secret: SecretString,
}

impl Credentials {
    /// Credentials from an id and a secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<SecretString>) -> Self {
        Credentials { client_id: client_id.into(), client_secret: client_secret.into() }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

/// What the current access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The granted scopes (the response's `scope`, else the JWT's `scope` claim).
    pub scopes: Vec<String>,
    /// The lifetime the identity provider gave the token (`expires_in`).
    pub expires_in: Duration,
    /// How long the token is still valid for.
    pub remaining: Duration,
}

impl TokenInfo {
    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A cached access token.
pub(crate) struct CachedToken {
    pub(crate) access_token: SecretString,
    scopes: Vec<String>,
    expires_in: Duration,
    obtained: Instant,
    refresh_at: Instant,
    pub(crate) generation: u64,
}

impl CachedToken {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            scopes: self.scopes.clone(),
            expires_in: self.expires_in,
            remaining: self.expires_in.saturating_sub(self.obtained.elapsed()),
        }
    }
}

/// When to refresh a token with this lifetime: `expires_in - min(60 s, expires_in / 5)`.
pub(crate) fn refresh_after(expires_in: Duration) -> Duration {
    expires_in - (expires_in / 5).min(Duration::from_secs(60))
}

/// The token cache and its settings, owned by the client.
pub(crate) struct TokenSource {
    pub(crate) token_url: url::Url,
    pub(crate) tenant: String,
    pub(crate) credentials: Credentials,
    pub(crate) scopes: Vec<String>,
    cache: Mutex<Option<CachedToken>>,
    generation: AtomicU64,
    /// Set once `client_secret_basic` was rejected and `client_secret_post` worked.
    use_post: AtomicBool,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum AuthMethod {
    Basic,
    Post,
}

impl TokenSource {
    pub(crate) fn new(
        token_url: url::Url,
        tenant: String,
        credentials: Credentials,
        scopes: Vec<String>,
    ) -> Self {
        TokenSource {
            token_url,
            tenant,
            credentials,
            scopes,
            cache: Mutex::new(None),
            generation: AtomicU64::new(0),
            use_post: AtomicBool::new(false),
        }
    }

    /// A valid access token and its generation, fetching one if needed (single-flight).
    pub(crate) async fn bearer(
        &self,
        http: &reqwest::Client,
        observer: &dyn Observer,
    ) -> Result<(SecretString, u64)> {
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok((token.access_token.clone(), token.generation));
        }
        let token = self.fetch(http, observer).await?;
        let out = (token.access_token.clone(), token.generation);
        *cache = Some(token);
        Ok(out)
    }

    /// Information on the current token, fetching one if needed.
    pub(crate) async fn info(&self, http: &reqwest::Client, observer: &dyn Observer) -> Result<TokenInfo> {
        self.bearer(http, observer).await?;
        let cache = self.cache.lock().await;
        cache.as_ref().map(CachedToken::info).ok_or_else(|| Error::decode("token", "no token cached"))
    }

    /// Drops the cached token if it is still the one of `generation` (the API rejected it).
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|t| t.generation == generation) {
            debug!(tenant = %self.tenant, "dropping rejected Carerix access token");
            *cache = None;
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %self.tenant, operation = "token"))]
    async fn fetch(&self, http: &reqwest::Client, observer: &dyn Observer) -> Result<CachedToken> {
        let first = if self.use_post.load(Ordering::Relaxed) { AuthMethod::Post } else { AuthMethod::Basic };
        match self.request(http, observer, first).await {
            Ok(token) => Ok(token),
            Err(Fallback(status, code)) if first == AuthMethod::Basic && fallback_applies(status, &code) => {
                debug!(status, "client_secret_basic rejected, retrying with client_secret_post");
                let token = self.request(http, observer, AuthMethod::Post).await.map_err(|f| f.1)?;
                self.use_post.store(true, Ordering::Relaxed);
                Ok(token)
            }
            Err(Fallback(_, err)) => Err(err),
        }
    }

    async fn request(
        &self,
        http: &reqwest::Client,
        observer: &dyn Observer,
        method: AuthMethod,
    ) -> std::result::Result<CachedToken, Fallback> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let scope = self.scopes.join(" ");
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let id = self.credentials.client_id.as_str();
        let secret = self.credentials.client_secret.expose_secret();
        let mut builder =
            http.post(self.token_url.clone()).header(reqwest::header::ACCEPT, "application/json");
        match method {
            AuthMethod::Basic => builder = builder.basic_auth(id, Some(secret)),
            AuthMethod::Post => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
            }
        }
        let start = Instant::now();
        let response = match builder.form(&form).send().await {
            Ok(r) => r,
            Err(e) => {
                observer.on_request("token", None, start.elapsed());
                return Err(Fallback(0, Error::transport("token", e)));
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await;
        observer.on_request("token", Some(status), start.elapsed());
        let body = body.map_err(|e| Fallback(0, Error::transport("token", e)))?;
        if !(200..300).contains(&status) {
            let code = serde_json::from_slice::<TokenErrorBody>(&body).unwrap_or_default().error;
            let message = message_from_body(&body);
            let err = classify_token_error(&self.tenant, status, code.as_deref(), message, &headers);
            return Err(Fallback(status, err));
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Fallback(0, Error::decode("token", e)))?;
        let expires_in = parsed
            .expires_in
            .as_ref()
            .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .map_or(DEFAULT_EXPIRES_IN, Duration::from_secs);
        let scopes = match parsed.scope.as_deref() {
            Some(s) => s.split_whitespace().map(str::to_owned).collect(),
            None => jwt_scopes(&parsed.access_token).unwrap_or_default(),
        };
        if scopes.is_empty() {
            warn!("Carerix token carries no scopes");
        }
        let obtained = Instant::now();
        Ok(CachedToken {
            access_token: SecretString(parsed.access_token),
            scopes,
            expires_in,
            obtained,
            refresh_at: obtained + refresh_after(expires_in),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }
}

/// A failed token request: its HTTP status (0 when there was none) and the classified error.
struct Fallback(u16, Error);

fn fallback_applies(status: u16, err: &Error) -> bool {
    matches!(status, 400 | 401) && !matches!(err, Error::InvalidScope { .. })
}

fn classify_token_error(
    tenant: &str,
    status: u16,
    code: Option<&str>,
    message: Option<String>,
    headers: &reqwest::header::HeaderMap,
) -> Error {
    match code {
        Some("invalid_client" | "unauthorized_client") => Error::InvalidClient { status, message },
        Some("invalid_scope") => Error::InvalidScope { status, message },
        _ if status == 404 => Error::RealmNotFound { tenant: tenant.to_owned() },
        _ if status == 401 => Error::InvalidClient { status, message },
        _ => Error::Token {
            status,
            message,
            retry_after: retry_after_from_headers(headers, chrono::Utc::now()),
        },
    }
}

/// The `scope` claim of a JWT, read without verifying the signature.
pub(crate) fn jwt_scopes(token: &str) -> Option<Vec<String>> {
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("scope").or_else(|| claims.get("scp"))? {
        serde_json::Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        serde_json::Value::Array(items) => {
            Some(items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_schedule() {
        assert_eq!(refresh_after(Duration::from_secs(300)), Duration::from_secs(240));
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_after(Duration::from_secs(10)), Duration::from_secs(8));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn secrets_are_redacted() {
        let creds = Credentials::new("abc.apps.carerix.io", "s3cr3t-value");
        let debug = format!("{creds:?} {:?}", creds.client_secret);
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(debug.contains("abc.apps.carerix.io"));
        assert_eq!(creds.client_secret.expose_secret(), "s3cr3t-value");
    }

    #[test]
    fn scopes_from_jwt_payload() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload =
            engine.encode(br#"{"azp":"x","scope":"urn:cx/graphql:data:manage urn:cx/webhooks:data:manage"}"#);
        let token = format!("{header}.{payload}.c2ln");
        assert_eq!(
            jwt_scopes(&token),
            Some(vec!["urn:cx/graphql:data:manage".to_owned(), "urn:cx/webhooks:data:manage".to_owned()])
        );
        assert_eq!(jwt_scopes("opaque-token"), None);
    }

    #[test]
    fn token_error_classification() {
        let h = reqwest::header::HeaderMap::new();
        assert_eq!(
            classify_token_error("t", 401, Some("invalid_client"), None, &h).reason(),
            "InvalidClient"
        );
        assert_eq!(
            classify_token_error("t", 400, Some("unauthorized_client"), None, &h).reason(),
            "InvalidClient"
        );
        assert_eq!(classify_token_error("t", 400, Some("invalid_scope"), None, &h).reason(), "InvalidScope");
        assert_eq!(classify_token_error("t", 404, None, None, &h).reason(), "RealmNotFound");
        assert_eq!(classify_token_error("t", 500, None, None, &h).reason(), "CarerixUnavailable");
        assert_eq!(classify_token_error("t", 400, Some("invalid_request"), None, &h).reason(), "TokenError");
    }
}
