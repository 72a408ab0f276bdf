//! Errors of the Carerix client.
//!
//! Every error keeps what is needed to act on it (HTTP status, Carerix's own message, the operation
//! that failed) and classifies itself: [`Error::is_retryable`], [`Error::retry_after`],
//! [`Error::is_not_found`], [`Error::is_forbidden`], [`Error::missing_scope`] and a stable
//! [`Error::reason`] for metrics and status conditions.
//!
//! No error ever carries a secret, an access token or a request/response body beyond Carerix's
//! short error message.

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};

use super::time::TimeError;

/// Result alias of the Carerix client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a transport-level failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connect or request timeout elapsed.
    Timeout,
    /// The TCP/TLS connection could not be established.
    Connect,
    /// Anything else (broken connection, protocol error, ...).
    Other,
}

/// What kind of failure an error is, which decides what the reconciler does about it: retry
/// with backoff, or stall until a person acts. One table, [`Error::kind`], with a test per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request could not be sent or its answer not received (reset, refused, timeout).
    Transport,
    /// Carerix answered 5xx.
    Unavailable,
    /// Carerix answered 429.
    RateLimited,
    /// A 404 on something that existed a moment ago (a race with another writer).
    NotFound,
    /// A 409 (a race with another writer).
    Conflict,
    /// An answer that could not be decoded (an HTML error page from a proxy, a cut body).
    Undecodable,
    /// Any other refusal of a request (400, 401 after a fresh token, GraphQL errors).
    Rejected,
    /// The identity service refused the client credentials.
    InvalidClient,
    /// The identity service knows no such tenant (realm).
    TenantNotFound,
    /// The client lacks a scope (Carerix names it).
    MissingScope,
    /// A 403 on a Webhooks operation that names no scope: a permission of the client's matrix.
    MissingPermission,
    /// Carerix says webhooks are not activated for the tenant.
    WebhooksNotActivated,
    /// The client was configured wrongly (URL, tenant, argument): a bug or a bad spec.
    Config,
}

impl ErrorKind {
    /// Retrying cannot help until a person acts.
    pub fn stalls(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidClient
                | ErrorKind::TenantNotFound
                | ErrorKind::MissingScope
                | ErrorKind::MissingPermission
                | ErrorKind::WebhooksNotActivated
                | ErrorKind::Config
        )
    }

    /// A stable CamelCase label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transport => "Transport",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::RateLimited => "RateLimited",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Undecodable => "Undecodable",
            ErrorKind::Rejected => "Rejected",
            ErrorKind::InvalidClient => "InvalidClient",
            ErrorKind::TenantNotFound => "TenantNotFound",
            ErrorKind::MissingScope => "MissingScope",
            ErrorKind::MissingPermission => "MissingPermission",
            ErrorKind::WebhooksNotActivated => "WebhooksNotActivated",
            ErrorKind::Config => "Config",
        }
    }
}

/// A permission of the Webhooks row in a Carerix client's permission matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhooksPermission {
    /// `create: on` (create applications and webhooks).
    Create,
    /// `read: all` (list and read applications and webhooks).
    Read,
    /// `update: owner` (enable, disable, change).
    Update,
    /// `delete: owner`.
    Delete,
}

impl WebhooksPermission {
    /// The permission an operation of [`super::WebhooksHandler`] needs (`webhooks.create_webhook`).
    pub fn of_operation(operation: &str) -> Option<Self> {
        let op = operation.strip_prefix("webhooks.")?;
        Some(if op.starts_with("create_") {
            WebhooksPermission::Create
        } else if op.starts_with("delete_") {
            WebhooksPermission::Delete
        } else if op.starts_with("enable_") || op.starts_with("disable_") || op.starts_with("update_") {
            WebhooksPermission::Update
        } else {
            WebhooksPermission::Read
        })
    }

    /// How the grant reads in Carerix's permission matrix (`Webhooks: delete owner`).
    pub fn grant(self) -> &'static str {
        match self {
            WebhooksPermission::Create => "Webhooks: create on",
            WebhooksPermission::Read => "Webhooks: read all",
            WebhooksPermission::Update => "Webhooks: update owner",
            WebhooksPermission::Delete => "Webhooks: delete owner",
        }
    }
}

impl fmt::Display for WebhooksPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.grant())
    }
}

/// An error of the Carerix client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client was configured wrongly (bad URL, missing tenant or credentials, ...).
    #[error("invalid Carerix client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// A call was made with an argument Carerix would reject (e.g. a page size above 100).
    #[error("invalid argument for {operation}: {reason}")]
    InvalidArgument {
        /// The operation that was called.
        operation: String,
        /// What is wrong.
        reason: String,
    },

    /// The identity provider rejected the client credentials (`invalid_client` or
    /// `unauthorized_client`).
    #[error("Carerix rejected the client credentials (HTTP {status}){}", fmt_msg(message))]
    InvalidClient {
        /// HTTP status of the token response.
        status: u16,
        /// `error_description` of the token response.
        message: Option<String>,
    },

    /// The identity provider rejected the requested scopes (`invalid_scope`).
    #[error("Carerix rejected the requested scopes (HTTP {status}){}", fmt_msg(message))]
    InvalidScope {
        /// HTTP status of the token response.
        status: u16,
        /// `error_description` of the token response.
        message: Option<String>,
    },

    /// The tenant's realm does not exist at the identity provider (HTTP 404).
    #[error("Carerix identity realm for tenant {tenant:?} not found")]
    RealmNotFound {
        /// The tenant (realm) that was asked for.
        tenant: String,
    },

    /// Any other failed token request.
    #[error("Carerix token request failed (HTTP {status}){}", fmt_msg(message))]
    Token {
        /// HTTP status of the token response.
        status: u16,
        /// `error_description` (or `error`) of the token response.
        message: Option<String>,
        /// `Retry-After` of the response, if any.
        retry_after: Option<Duration>,
    },

    /// The API answered a request with a non-success HTTP status.
    #[error("Carerix {operation} failed with HTTP {status}{}", fmt_msg(message))]
    Api {
        /// The operation that failed (e.g. `webhooks.create_webhook`, `graphql.crEmployeePage`).
        operation: String,
        /// HTTP status.
        status: u16,
        /// Carerix's message (`errors[].message` or `error_description`).
        message: Option<String>,
        /// `Retry-After` of the response, if any.
        retry_after: Option<Duration>,
    },

    /// A GraphQL request returned `errors` and no usable data.
    #[error("Carerix GraphQL {operation} returned errors: {}", messages.join("; "))]
    GraphQl {
        /// The operation that failed.
        operation: String,
        /// The `errors[].message` values.
        messages: Vec<String>,
        /// The first `errors[].extensions.classification` (or `code`), if any.
        classification: Option<String>,
    },

    /// The request could not be sent or its response not received.
    #[error("Carerix {operation} request failed ({kind:?})")]
    Transport {
        /// The operation that failed (`token` for token requests).
        operation: String,
        /// What went wrong.
        kind: TransportKind,
        /// The underlying error (it names the URL, never the body or headers).
        #[source]
        source: reqwest::Error,
    },

    /// The response body could not be decoded.
    #[error("could not decode the Carerix {operation} response: {reason}")]
    Decode {
        /// The operation whose response was bad.
        operation: String,
        /// What is wrong (never contains the body).
        reason: String,
    },

    /// A Carerix timestamp could not be converted.
    #[error(transparent)]
    Timestamp(#[from] TimeError),
}

fn fmt_msg(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

impl Error {
    /// The HTTP status of the failed response, if the failure had one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::InvalidClient { status, .. }
            | Error::InvalidScope { status, .. }
            | Error::Token { status, .. }
            | Error::Api { status, .. } => Some(*status),
            Error::RealmNotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Carerix's own message, if there was one.
    pub fn carerix_message(&self) -> Option<&str> {
        match self {
            Error::InvalidClient { message, .. }
            | Error::InvalidScope { message, .. }
            | Error::Token { message, .. }
            | Error::Api { message, .. } => message.as_deref(),
            Error::GraphQl { messages, .. } => messages.first().map(String::as_str),
            _ => None,
        }
    }

    /// Whether trying again later may help: 5xx, 429, timeouts and connection failures.
    ///
    /// 4xx answers, configuration, decoding and GraphQL errors are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { status, .. } | Error::Token { status, .. } => *status == 429 || *status >= 500,
            Error::Transport { kind, .. } => matches!(kind, TransportKind::Timeout | TransportKind::Connect),
            _ => false,
        }
    }

    /// How long Carerix asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } | Error::Token { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the thing asked for does not exist (HTTP 404 or a GraphQL `NOT_FOUND`).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status == 404,
            Error::RealmNotFound { .. } => true,
            Error::GraphQl { classification, .. } => {
                classification.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("NOT_FOUND"))
            }
            _ => false,
        }
    }

    /// Whether Carerix refused the operation: HTTP 403 (missing scope or not the owner), or a
    /// GraphQL `FORBIDDEN`/`UNAUTHORIZED`/"access denied" error.
    pub fn is_forbidden(&self) -> bool {
        match self {
            Error::Api { status, .. } => *status == 403,
            Error::GraphQl { classification, messages, .. } => {
                classification.as_deref().is_some_and(|c| {
                    c.eq_ignore_ascii_case("FORBIDDEN") || c.eq_ignore_ascii_case("UNAUTHORIZED")
                }) || messages.iter().any(|m| m.to_ascii_lowercase().contains("access denied"))
            }
            _ => false,
        }
    }

    /// The scope(s) Carerix says are required, when a refusal names them (e.g. "Required scopes:
    /// urn:cx/webhooks:data:manage"). Several scopes are returned space-separated, like an OAuth
    /// `scope` value.
    pub fn missing_scope(&self) -> Option<String> {
        if !self.is_forbidden() {
            return None;
        }
        let text = match self {
            Error::GraphQl { messages, .. } => messages.join(" "),
            other => other.carerix_message()?.to_owned(),
        };
        // A refused permission is written like a narrow scope (`urn:cx/webhooks:data/webhooks:create`):
        // only the wording tells them apart, and a person fixes them in different places.
        let lower = text.to_ascii_lowercase();
        if lower.contains("permission") && !lower.contains("scope") {
            return None;
        }
        let scopes = scopes_in(&text);
        if scopes.is_empty() { None } else { Some(scopes.join(" ")) }
    }

    /// What kind of failure this is: the reconciler's one classification table.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } | Error::InvalidArgument { .. } | Error::Timestamp(_) => ErrorKind::Config,
            Error::InvalidClient { .. } => ErrorKind::InvalidClient,
            Error::InvalidScope { .. } => ErrorKind::MissingScope,
            Error::RealmNotFound { .. } => ErrorKind::TenantNotFound,
            Error::Transport { .. } => ErrorKind::Transport,
            Error::Decode { .. } => ErrorKind::Undecodable,
            Error::Token { status, .. } | Error::Api { status, .. } if *status == 429 => {
                ErrorKind::RateLimited
            }
            Error::Token { status, .. } | Error::Api { status, .. } if *status >= 500 => {
                ErrorKind::Unavailable
            }
            Error::Token { .. } => ErrorKind::Rejected,
            _ if self.missing_scope().is_some() => ErrorKind::MissingScope,
            _ if self.says_webhooks_not_activated() => ErrorKind::WebhooksNotActivated,
            Error::Api { status: 403, .. } if self.missing_permission().is_some() => {
                ErrorKind::MissingPermission
            }
            Error::Api { status: 404, .. } => ErrorKind::NotFound,
            Error::Api { status: 409, .. } => ErrorKind::Conflict,
            Error::Api { .. } | Error::GraphQl { .. } => ErrorKind::Rejected,
        }
    }

    /// The Webhooks permission a 403 on a Webhooks operation asks for, when Carerix named no scope.
    pub fn missing_permission(&self) -> Option<WebhooksPermission> {
        match self {
            Error::Api { status: 403, operation, .. } if self.missing_scope().is_none() => {
                WebhooksPermission::of_operation(operation)
            }
            _ => None,
        }
    }

    fn says_webhooks_not_activated(&self) -> bool {
        matches!(self, Error::Api { status: 403 | 404, operation, .. } if operation.starts_with("webhooks."))
            && self.carerix_message().is_some_and(|m| {
                let m = m.to_ascii_lowercase();
                m.contains("not activated")
                    || m.contains("not enabled for")
                    || m.contains("feature is disabled")
            })
    }

    /// A short, stable CamelCase reason for metrics labels and status conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Config { .. } => "InvalidConfig",
            Error::InvalidArgument { .. } => "InvalidArgument",
            Error::InvalidClient { .. } => "InvalidClient",
            Error::InvalidScope { .. } => "InvalidScope",
            Error::RealmNotFound { .. } => "RealmNotFound",
            Error::Token { status, .. } if *status == 429 => "RateLimited",
            Error::Token { status, .. } if *status >= 500 => "CarerixUnavailable",
            Error::Token { .. } => "TokenError",
            Error::Api { .. } | Error::GraphQl { .. } if self.missing_scope().is_some() => "MissingScope",
            Error::Api { status, .. } => match *status {
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                429 => "RateLimited",
                s if s >= 500 => "CarerixUnavailable",
                _ => "BadRequest",
            },
            Error::GraphQl { .. } if self.is_forbidden() => "Forbidden",
            Error::GraphQl { .. } if self.is_not_found() => "NotFound",
            Error::GraphQl { .. } => "GraphQLError",
            Error::Transport { kind: TransportKind::Timeout, .. } => "Timeout",
            Error::Transport { kind: TransportKind::Connect, .. } => "ConnectionFailed",
            Error::Transport { .. } => "TransportError",
            Error::Decode { .. } => "Decode",
            Error::Timestamp(_) => "InvalidTimestamp",
        }
    }

    pub(crate) fn transport(operation: &str, source: reqwest::Error) -> Self {
        let kind = if source.is_timeout() {
            TransportKind::Timeout
        } else if source.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        };
        Error::Transport { operation: operation.to_owned(), kind, source: source.without_url_secrets() }
    }

    pub(crate) fn decode(operation: &str, reason: impl std::fmt::Display) -> Self {
        Error::Decode { operation: operation.to_owned(), reason: reason.to_string() }
    }

    /// Builds an [`Error::Api`] from a failed response's status, headers and body.
    pub(crate) fn from_response(
        operation: &str,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Self {
        Error::Api {
            operation: operation.to_owned(),
            status,
            message: message_from_body(body),
            retry_after: retry_after_from_headers(headers, Utc::now()),
        }
    }
}

/// Extension to strip anything sensitive from a reqwest error (it only ever holds the URL, and our
/// URLs carry no credentials; this keeps it that way should a URL ever contain userinfo).
trait WithoutUrlSecrets {
    fn without_url_secrets(self) -> Self;
}

impl WithoutUrlSecrets for reqwest::Error {
    fn without_url_secrets(self) -> Self {
        match self.url() {
            Some(url) if !url.username().is_empty() || url.password().is_some() => self.without_url(),
            _ => self,
        }
    }
}

/// Collects `urn:...` scope names from a message.
fn scopes_in(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in
        text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '"' | '\'' | '[' | ']' | '(' | ')'))
    {
        let word = word.trim_end_matches(['.', ':']);
        if word.starts_with("urn:") && word.len() > 4 && !out.iter().any(|s| s == word) {
            out.push(word.to_owned());
        }
    }
    out
}

/// Carerix's short message from an error body: `{"errors":[{"message"}]}`, `error_description`,
/// `error`, or `message`. Never returns the raw body.
pub(crate) fn message_from_body(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
        let messages: Vec<&str> =
            errors.iter().filter_map(|e| e.get("message").and_then(|m| m.as_str())).collect();
        if !messages.is_empty() {
            return Some(truncate(&messages.join("; ")));
        }
    }
    for key in ["error_description", "message", "error"] {
        if let Some(m) = value.get(key).and_then(|m| m.as_str()) {
            return Some(truncate(m));
        }
    }
    None
}

fn truncate(message: &str) -> String {
    const MAX: usize = 500;
    if message.len() <= MAX {
        return message.to_owned();
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Parses a `Retry-After` header value: delay-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((date - now).to_std().unwrap_or(Duration::ZERO))
}

pub(crate) fn retry_after_from_headers(
    headers: &reqwest::header::HeaderMap,
    now: DateTime<Utc>,
) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn api(status: u16, body: &str) -> Error {
        Error::from_response("webhooks.list_applications", status, &Default::default(), body.as_bytes())
    }

    #[test]
    fn classifies_statuses() {
        assert!(api(500, "").is_retryable());
        assert!(api(503, "").is_retryable());
        assert!(api(429, "").is_retryable());
        assert!(!api(400, "").is_retryable());
        assert!(!api(404, "").is_retryable());
        assert!(!api(403, "").is_retryable());
        assert!(api(404, "").is_not_found());
        assert!(api(403, "").is_forbidden());
        assert_eq!(api(404, "").reason(), "NotFound");
        assert_eq!(api(403, "").reason(), "Forbidden");
        assert_eq!(api(429, "").reason(), "RateLimited");
        assert_eq!(api(502, "").reason(), "CarerixUnavailable");
        assert_eq!(api(400, "").reason(), "BadRequest");
        assert_eq!(api(401, "").reason(), "Unauthorized");
    }

    #[test]
    fn keeps_carerix_message() {
        let e = api(404, r#"{"errors":[{"message":"Application not found"}]}"#);
        assert_eq!(e.carerix_message(), Some("Application not found"));
        assert_eq!(e.status(), Some(404));
        assert!(e.to_string().contains("Application not found"));
        assert!(e.to_string().contains("webhooks.list_applications"));
        let e = api(400, r#"{"error":"invalid_request","error_description":"Bad thing"}"#);
        assert_eq!(e.carerix_message(), Some("Bad thing"));
        assert_eq!(api(500, "<html>oops</html>").carerix_message(), None);
    }

    #[test]
    fn missing_scope_from_403() {
        let e = api(
            403,
            r#"{"errors":[{"message":"Required scopes: urn:cx/webhooks:data:manage, urn:cx/webhooks:data/applications:read"}]}"#,
        );
        assert_eq!(
            e.missing_scope().as_deref(),
            Some("urn:cx/webhooks:data:manage urn:cx/webhooks:data/applications:read")
        );
        assert_eq!(e.reason(), "MissingScope");
        let owner = api(403, r#"{"errors":[{"message":"Not the owner of this webhook"}]}"#);
        assert_eq!(owner.missing_scope(), None);
        assert_eq!(owner.reason(), "Forbidden");
        // A 400 mentioning a scope is not a missing scope.
        assert_eq!(api(400, r#"{"errors":[{"message":"urn:cx/x:data:manage"}]}"#).missing_scope(), None);
    }

    #[test]
    fn graphql_classification() {
        let e = Error::GraphQl {
            operation: "graphql.crEmployeePage".into(),
            messages: vec!["Access denied. Required scope urn:cx/graphql:data:manage".into()],
            classification: Some("FORBIDDEN".into()),
        };
        assert!(e.is_forbidden());
        assert_eq!(e.missing_scope().as_deref(), Some("urn:cx/graphql:data:manage"));
        assert_eq!(e.reason(), "MissingScope");
        let e = Error::GraphQl {
            operation: "graphql.crEmployee".into(),
            messages: vec!["boom".into()],
            classification: None,
        };
        assert_eq!(e.reason(), "GraphQLError");
        assert!(!e.is_retryable());
    }

    #[test]
    fn token_errors() {
        let e = Error::InvalidClient { status: 401, message: Some("Invalid client credentials".into()) };
        assert_eq!(e.reason(), "InvalidClient");
        assert!(!e.is_retryable());
        assert_eq!(Error::RealmNotFound { tenant: "t".into() }.reason(), "RealmNotFound");
        let e = Error::Token { status: 503, message: None, retry_after: None };
        assert!(e.is_retryable());
        assert_eq!(e.reason(), "CarerixUnavailable");
    }

    #[test]
    fn retry_after_parsing() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 0).single().unwrap_or_default();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);

        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_static("3"));
        let e = Error::from_response(
            "graphql.crJobPage",
            429,
            &headers,
            br#"{"errors":[{"message":"Too Many Requests"}]}"#,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
    }
    // ---- the classification table, one test per row ----

    async fn transport_error(kind: &str) -> Error {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = kind.to_string();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                if behaviour == "reset" {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 1024];
                    let _ = socket.read(&mut buf).await;
                    drop(socket);
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(socket);
                }
            }
        });
        let http = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
        let err = http.get(format!("http://{addr}/x")).send().await.unwrap_err();
        Error::transport("webhooks.list_applications", err)
    }

    #[tokio::test]
    async fn a_connection_reset_retries() {
        let e = transport_error("reset").await;
        assert_eq!(e.kind(), ErrorKind::Transport);
        assert!(!e.kind().stalls());
    }

    #[tokio::test]
    async fn a_timeout_retries() {
        let e = transport_error("hang").await;
        assert_eq!(e.kind(), ErrorKind::Transport);
        assert!(!e.kind().stalls());
    }

    #[test]
    fn a_5xx_retries() {
        assert_eq!(api(502, "").kind(), ErrorKind::Unavailable);
        assert_eq!(
            Error::Token { status: 503, message: None, retry_after: None }.kind(),
            ErrorKind::Unavailable
        );
        assert!(!ErrorKind::Unavailable.stalls());
    }

    #[test]
    fn a_429_retries() {
        assert_eq!(api(429, "").kind(), ErrorKind::RateLimited);
        assert!(!ErrorKind::RateLimited.stalls());
    }

    #[test]
    fn a_404_or_409_race_retries() {
        assert_eq!(api(404, r#"{"errors":[{"message":"Webhook not found"}]}"#).kind(), ErrorKind::NotFound);
        assert_eq!(api(409, "").kind(), ErrorKind::Conflict);
        assert!(!ErrorKind::NotFound.stalls() && !ErrorKind::Conflict.stalls());
    }

    #[test]
    fn an_html_error_page_retries() {
        let e = Error::decode("webhooks.list_applications", "expected value at line 1 column 1");
        assert_eq!(e.kind(), ErrorKind::Undecodable);
        assert!(!e.kind().stalls());
        // An HTML page with an error status keeps its status kind, and no message is made of it.
        let page = api(502, "<html><body>Bad Gateway</body></html>");
        assert_eq!(page.kind(), ErrorKind::Unavailable);
        assert_eq!(page.carerix_message(), None);
    }

    #[test]
    fn another_refusal_retries_with_backoff() {
        assert_eq!(api(400, r#"{"errors":[{"message":"bad url"}]}"#).kind(), ErrorKind::Rejected);
        assert!(!ErrorKind::Rejected.stalls());
    }

    #[test]
    fn refused_credentials_stall() {
        let e = Error::InvalidClient { status: 401, message: None };
        assert_eq!(e.kind(), ErrorKind::InvalidClient);
        assert!(e.kind().stalls());
    }

    #[test]
    fn an_unknown_tenant_stalls() {
        let e = Error::RealmNotFound { tenant: "nope".into() };
        assert_eq!(e.kind(), ErrorKind::TenantNotFound);
        assert!(e.kind().stalls());
    }

    #[test]
    fn a_refused_permission_written_like_a_scope_is_a_missing_permission_not_a_missing_scope() {
        let e = Error::Api {
            status: 403,
            operation: "webhooks.create_application".into(),
            message: Some(
                "Access denied: permission urn:cx/webhooks:data/webhooks:create is not granted".into(),
            ),
            retry_after: None,
        };
        assert_eq!(e.missing_scope(), None);
        assert_eq!(e.kind(), ErrorKind::MissingPermission);
    }

    #[test]
    fn a_missing_scope_stalls() {
        let e = api(403, r#"{"errors":[{"message":"Required scopes: urn:cx/webhooks:data:manage"}]}"#);
        assert_eq!(e.kind(), ErrorKind::MissingScope);
        assert!(e.kind().stalls());
        assert_eq!(Error::InvalidScope { status: 400, message: None }.kind(), ErrorKind::MissingScope);
    }

    #[test]
    fn a_403_on_a_webhooks_operation_names_the_permission_to_grant() {
        let forbidden = |op: &str| {
            Error::from_response(op, 403, &Default::default(), br#"{"errors":[{"message":"Forbidden"}]}"#)
        };
        let cases = [
            ("webhooks.create_application", WebhooksPermission::Create, "Webhooks: create on"),
            ("webhooks.create_webhook", WebhooksPermission::Create, "Webhooks: create on"),
            ("webhooks.list_applications", WebhooksPermission::Read, "Webhooks: read all"),
            ("webhooks.list_webhooks", WebhooksPermission::Read, "Webhooks: read all"),
            ("webhooks.enable_webhook", WebhooksPermission::Update, "Webhooks: update owner"),
            ("webhooks.delete_webhook", WebhooksPermission::Delete, "Webhooks: delete owner"),
            ("webhooks.delete_application", WebhooksPermission::Delete, "Webhooks: delete owner"),
        ];
        for (op, permission, grant) in cases {
            let e = forbidden(op);
            assert_eq!(e.kind(), ErrorKind::MissingPermission, "{op}");
            assert!(e.kind().stalls());
            assert_eq!(e.missing_permission(), Some(permission), "{op}");
            assert_eq!(permission.grant(), grant);
        }
        // A 403 outside the Webhooks API is no Webhooks permission.
        assert_eq!(forbidden("graphql.crEmployeePage").kind(), ErrorKind::Rejected);
    }

    #[test]
    fn webhooks_not_activated_stalls() {
        let e = Error::from_response(
            "webhooks.list_applications",
            403,
            &Default::default(),
            br#"{"errors":[{"message":"Webhooks are not activated for this tenant"}]}"#,
        );
        assert_eq!(e.kind(), ErrorKind::WebhooksNotActivated);
        assert!(e.kind().stalls());
    }

    #[test]
    fn a_bad_configuration_stalls() {
        let e = Error::Config { reason: "bad url".into() };
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.kind().stalls());
    }
}
