//! How a pass ends early: a Carerix error or a problem in the cluster becomes a status part and
//! what to do next (stall until a person acts, or retry with backoff).

use std::time::Duration;

use super::Error;
use crate::{
    api::CredentialsStatus,
    carerix::{self, ErrorKind},
    conditions::{Part, Reason, reason::message},
};

/// What to do after a failed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Retrying cannot help until a person acts: `Stalled`, re-checked at the connection's interval.
    Stall,
    /// Retry with the connection's backoff, at least `Retry-After`.
    Retry { retry_after: Option<Duration> },
}

/// Which part of the connection a failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading the Secret or getting a token: nothing after it can run.
    Credentials,
    /// The credentials work; the webhooks cannot be made right.
    Webhooks,
}

/// A failed step: the status part to show and what to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub part: Part,
    pub next: Next,
    /// The Carerix error kind, for metrics.
    pub kind: Option<ErrorKind>,
}

impl Failure {
    /// A failure that waits for a person.
    pub fn stall(reason: Reason, message: String) -> Self {
        Failure { part: Part::failed(reason, message), next: Next::Stall, kind: None }
    }
}

/// Why a pass stopped before the end.
#[derive(Debug)]
pub enum Halt {
    /// A step failed in a way the status explains; `credentials` is what the pass learned of them.
    Failed { stage: Stage, failure: Failure, credentials: Option<Box<CredentialsStatus>> },
    /// The Kubernetes API (or the controller itself) failed: retried by `error_policy`.
    Error(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Error(e)
    }
}

/// Classifies a Carerix error met while trying to `what` for `tenant` (the one table is
/// [`carerix::Error::kind`]; this adds the words).
pub fn classify(err: &carerix::Error, tenant: &str, what: &str) -> Failure {
    let kind = err.kind();
    let detail = sanitize(&err.to_string());
    let (reason, text) = match kind {
        ErrorKind::InvalidClient => (Reason::InvalidClient, message::invalid_client(tenant)),
        ErrorKind::TenantNotFound => (Reason::TenantNotFound, message::tenant_not_found(tenant)),
        ErrorKind::WebhooksNotActivated => {
            (Reason::WebhooksNotActivated, message::webhooks_not_activated(tenant))
        }
        ErrorKind::MissingScope => {
            let scope = err.missing_scope().unwrap_or_else(|| "needed".to_string());
            (Reason::MissingScope, message::missing_scope(what, &sanitize(&scope)))
        }
        ErrorKind::MissingPermission => {
            let grant = err.missing_permission().map_or("needed", |p| p.grant());
            (Reason::MissingPermission, message::missing_permission(what, grant))
        }
        ErrorKind::Config => (Reason::InvalidSpec, format!("cannot {what}: {detail}")),
        ErrorKind::RateLimited => (Reason::RateLimited, message::rate_limited(tenant)),
        ErrorKind::Transport
        | ErrorKind::Unavailable
        | ErrorKind::NotFound
        | ErrorKind::Conflict
        | ErrorKind::Undecodable => (Reason::CarerixUnavailable, message::carerix_unavailable(what, &detail)),
        ErrorKind::Rejected => (Reason::CarerixRejected, message::carerix_rejected(what, &detail)),
    };
    let next = if kind.stalls() { Next::Stall } else { Next::Retry { retry_after: err.retry_after() } };
    Failure { part: Part::failed(reason, text), next, kind: Some(kind) }
}

/// The longest text from Carerix kept in a status message or an Event.
pub const MAX_DETAIL: usize = 300;

/// Makes text that came from Carerix safe to show: no HTML tags, no control characters, nothing
/// that looks like a credential, whitespace collapsed, at most [`MAX_DETAIL`] characters.
pub fn sanitize(text: &str) -> String {
    let mut plain = String::with_capacity(text.len().min(MAX_DETAIL * 2));
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                plain.push(' ');
            }
            _ if in_tag => {}
            c if c.is_control() => plain.push(' '),
            c => plain.push(c),
        }
    }
    let words: Vec<String> = plain
        .split_whitespace()
        .map(|w| if looks_secret(w) { "[redacted]".to_string() } else { w.to_string() })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() <= MAX_DETAIL {
        return joined;
    }
    let cut: String = joined.chars().take(MAX_DETAIL).collect();
    format!("{cut}…")
}

/// A bearer token, a JWT or a `secret=`/`token=` pair.
fn looks_secret(word: &str) -> bool {
    let lower = word.to_ascii_lowercase();
    let jwt = word.len() > 40 && word.starts_with("eyJ") && word.matches('.').count() >= 2;
    let pair =
        ["secret=", "token=", "password=", "client_secret", "access_token"].iter().any(|k| lower.contains(k));
    jwt || pair
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(operation: &str, status: u16, body: &str) -> carerix::Error {
        carerix::Error::Api {
            operation: operation.into(),
            status,
            message: Some(body.to_string()),
            retry_after: None,
        }
    }

    #[test]
    fn an_html_error_page_retries_and_shows_no_markup() {
        let e = carerix::Error::Decode {
            operation: "webhooks.list_applications".into(),
            reason: "<html><head><title>502</title></head><body>\u{1b}[31mBad gateway</body></html>".into(),
        };
        let f = classify(&e, "acme", "manage webhooks");
        assert_eq!(f.part.reason, "CarerixUnavailable");
        assert!(matches!(f.next, Next::Retry { .. }));
        assert!(!f.part.message.contains('<') && !f.part.message.contains('\u{1b}'), "{}", f.part.message);
    }

    #[test]
    fn a_403_on_webhook_creation_asks_for_the_create_permission() {
        let f = classify(&api("webhooks.create_webhook", 403, "Forbidden"), "acme", "manage webhooks");
        assert_eq!(f.part.reason, "MissingPermission");
        assert!(f.part.message.contains("Webhooks: create on"), "{}", f.part.message);
        assert_eq!(f.next, Next::Stall);
    }

    #[test]
    fn a_rejected_request_retries_instead_of_stalling() {
        let f = classify(&api("webhooks.create_webhook", 400, "invalid url"), "acme", "manage webhooks");
        assert_eq!(f.part.reason, "CarerixRejected");
        assert!(matches!(f.next, Next::Retry { .. }));
    }

    #[test]
    fn carerix_text_is_bounded_and_never_shows_a_token() {
        let long = format!("{} access_token=abc {}", "x".repeat(200), "y ".repeat(400));
        let clean = sanitize(&long);
        assert!(clean.chars().count() <= MAX_DETAIL + 1, "{}", clean.len());
        assert!(!clean.contains("abc"));
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhYmMiLCJuYW1lIjoieCJ9.c2lnbmF0dXJlc2lnbmF0dXJl";
        assert!(!sanitize(&format!("token {jwt} refused")).contains("eyJ"));
    }
}
