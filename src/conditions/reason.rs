//! The stable reasons of the conditions, whether a person must act on them, and what to tell them.
//!
//! Reasons are part of the contract: alerts, scripts, the Argo CD health check
//! (`examples/argocd/health.lua`) and the README's table match on them. A test holds this enum
//! against both.

use std::fmt;

/// A condition reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Everything works.
    Ready,
    /// The credentials Secret does not exist.
    SecretNotFound,
    /// The credentials Secret lacks a key.
    InvalidSecret,
    /// Carerix refused the client credentials.
    InvalidClient,
    /// The identity service knows no such tenant (realm).
    TenantNotFound,
    /// The client lacks a scope.
    MissingScope,
    /// The client lacks a Webhooks permission (create/read/update/delete) in its permission matrix.
    MissingPermission,
    /// Webhooks are not activated for the tenant.
    WebhooksNotActivated,
    /// Carerix answered 429; retrying with backoff.
    RateLimited,
    /// Carerix could not be reached or answered badly; retrying with backoff.
    CarerixUnavailable,
    /// Carerix refused a request for another reason; retrying with backoff.
    CarerixRejected,
    /// `spec.suspend` is true.
    Suspended,
    /// The credentials work.
    CredentialsAccepted,
    /// A part waits for valid credentials.
    CredentialsNotValid,
    /// Every desired webhook exists and is enabled.
    WebhooksReady,
    /// No webhooks are configured.
    NoWebhooks,
    /// Deletion cannot remove the webhooks from Carerix.
    CleanupBlocked,
    /// The data sync runs its first pass.
    InitialSyncInProgress,
    /// The data sync is up to date.
    Synced,
    /// The PostgreSQL sink cannot be reached.
    SinkUnavailable,
    /// The last sync run failed.
    SyncFailed,
    /// The spec cannot work as written.
    InvalidSpec,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 22] = [
        Reason::Ready,
        Reason::SecretNotFound,
        Reason::InvalidSecret,
        Reason::InvalidClient,
        Reason::TenantNotFound,
        Reason::MissingScope,
        Reason::MissingPermission,
        Reason::WebhooksNotActivated,
        Reason::RateLimited,
        Reason::CarerixUnavailable,
        Reason::CarerixRejected,
        Reason::Suspended,
        Reason::CredentialsAccepted,
        Reason::CredentialsNotValid,
        Reason::WebhooksReady,
        Reason::NoWebhooks,
        Reason::CleanupBlocked,
        Reason::InitialSyncInProgress,
        Reason::Synced,
        Reason::SinkUnavailable,
        Reason::SyncFailed,
        Reason::InvalidSpec,
    ];

    /// The CamelCase name written to conditions.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
            Reason::InvalidClient => "InvalidClient",
            Reason::TenantNotFound => "TenantNotFound",
            Reason::MissingScope => "MissingScope",
            Reason::MissingPermission => "MissingPermission",
            Reason::WebhooksNotActivated => "WebhooksNotActivated",
            Reason::RateLimited => "RateLimited",
            Reason::CarerixUnavailable => "CarerixUnavailable",
            Reason::CarerixRejected => "CarerixRejected",
            Reason::Suspended => "Suspended",
            Reason::CredentialsAccepted => "CredentialsAccepted",
            Reason::CredentialsNotValid => "CredentialsNotValid",
            Reason::WebhooksReady => "WebhooksReady",
            Reason::NoWebhooks => "NoWebhooks",
            Reason::CleanupBlocked => "CleanupBlocked",
            Reason::InitialSyncInProgress => "InitialSyncInProgress",
            Reason::Synced => "Synced",
            Reason::SinkUnavailable => "SinkUnavailable",
            Reason::SyncFailed => "SyncFailed",
            Reason::InvalidSpec => "InvalidSpec",
        }
    }

    /// The reason of that name, if any.
    pub fn parse(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Retrying does not help until a person acts (Argo CD shows Degraded, `Stalled` is True).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Reason::SecretNotFound
                | Reason::InvalidSecret
                | Reason::InvalidClient
                | Reason::TenantNotFound
                | Reason::MissingScope
                | Reason::MissingPermission
                | Reason::WebhooksNotActivated
                | Reason::CleanupBlocked
                | Reason::InvalidSpec
        )
    }

    /// Whether a user can meet this reason on `Ready` and so needs it explained in the README.
    /// The others only appear on a part that is True, or on one that waits for another part.
    pub const fn is_user_facing(self) -> bool {
        !matches!(
            self,
            Reason::Ready
                | Reason::CredentialsAccepted
                | Reason::CredentialsNotValid
                | Reason::WebhooksReady
                | Reason::NoWebhooks
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// The message of each reason, next to it: what happened and what to do.
pub mod message {
    use crate::api::RECONCILE_REQUESTED_AT;

    /// The scope needed to manage webhooks.
    pub const WEBHOOKS_SCOPE: &str = "urn:cx/webhooks:data:manage";
    /// The scope needed to read the `CR*` data.
    pub const DATA_SCOPE: &str = "urn:cx/cx5Wrapper:data:manage";

    /// [`super::Reason::SecretNotFound`].
    pub fn secret_not_found(ns: &str, name: &str) -> String {
        format!(
            "Secret {ns}/{name} not found: create it with the keys clientId and clientSecret of a confidential \
             Carerix client"
        )
    }

    /// [`super::Reason::InvalidSecret`].
    pub fn invalid_secret(ns: &str, name: &str, key: &str) -> String {
        format!("Secret {ns}/{name} has no {key}: it needs the keys clientId and clientSecret")
    }

    /// [`super::Reason::InvalidClient`].
    pub fn invalid_client(tenant: &str) -> String {
        format!(
            "Carerix rejected the client credentials for tenant {tenant}: check clientId and clientSecret in the \
             Secret, or create a new secret for the client in Carerix (Identity Access → Clients) and update the \
             Secret"
        )
    }

    /// [`super::Reason::TenantNotFound`].
    pub fn tenant_not_found(tenant: &str) -> String {
        format!(
            "the identity service knows no tenant {tenant}: check spec.tenant (the application name of \
             {tenant}.carerix.net) and spec.identityUrl (the id-*.carerix.io host in your tenant's OpenID \
             configuration URL)"
        )
    }

    /// [`super::Reason::MissingScope`].
    pub fn missing_scope(what: &str, scope: &str) -> String {
        format!(
            "Carerix refused to {what}: the client lacks the scope {scope}; add it to the client's default scopes \
             in Carerix (Identity Access → Clients)"
        )
    }

    /// [`super::Reason::MissingScope`] for the data sync.
    pub fn missing_data_scope() -> String {
        format!(
            "the client lacks {DATA_SCOPE}, which the data sync needs: add it to the client's default scopes in \
             Carerix (Identity Access → Clients)"
        )
    }

    /// [`super::Reason::MissingPermission`].
    pub fn missing_permission(what: &str, permission: &str) -> String {
        format!(
            "Carerix refused to {what}: the client lacks the Webhooks permission {permission}; grant it in \
             Carerix (Identity Access → Clients → the client's permission matrix: Webhooks create on, read all, \
             update owner, delete owner)"
        )
    }

    /// [`super::Reason::WebhooksNotActivated`].
    pub fn webhooks_not_activated(tenant: &str) -> String {
        format!(
            "webhooks are not activated for tenant {tenant}, or the client lacks {WEBHOOKS_SCOPE}: ask Carerix \
             support to activate webhooks, then add {WEBHOOKS_SCOPE} to the client's default scopes and request a \
             reconcile (annotate the resource with {RECONCILE_REQUESTED_AT})"
        )
    }

    /// [`super::Reason::RateLimited`].
    pub fn rate_limited(tenant: &str) -> String {
        format!("Carerix is rate limiting requests for tenant {tenant}; retrying with backoff")
    }

    /// [`super::Reason::CarerixUnavailable`].
    pub fn carerix_unavailable(what: &str, detail: &str) -> String {
        format!("Carerix did not answer well while trying to {what} ({detail}); retrying with backoff")
    }

    /// [`super::Reason::CarerixRejected`].
    pub fn carerix_rejected(what: &str, detail: &str) -> String {
        format!("Carerix refused to {what} ({detail}); retrying with backoff")
    }

    /// [`super::Reason::Suspended`] on `Ready`.
    pub fn suspended() -> String {
        "suspended: nothing is sent to Carerix until spec.suspend is false".to_string()
    }

    /// [`super::Reason::CleanupBlocked`].
    pub fn cleanup_blocked(why: &str, ns: &str, name: &str) -> String {
        format!(
            "cannot remove the webhooks from Carerix: {why}. Fix it, or finish the deletion and leave the webhooks \
             in Carerix with: kubectl patch carerixconnection {name} -n {ns} --type merge -p \
             '{{\"spec\":{{\"deletionPolicy\":\"Orphan\"}}}}'"
        )
    }

    /// [`super::Reason::InvalidSpec`] for a webhook without a URL.
    pub fn webhook_without_url(webhook: &str) -> String {
        format!(
            "webhook {webhook} has no url and the operator has no receiver URL: set spec.webhooks[].url, or start \
             the operator with --receiver-base-url"
        )
    }

    /// [`super::Reason::SecretNotFound`] for a header value.
    pub fn header_secret_not_found(header: &str, webhook: &str, key: &str, ns: &str, secret: &str) -> String {
        format!(
            "header {header} of webhook {webhook} needs key {key} of Secret {ns}/{secret}, which does not exist"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn repo_file(path: &str) -> String {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
    }

    /// The keys of `local terminal = { ... }` in the Argo CD health check.
    fn lua_terminal_reasons(lua: &str) -> BTreeSet<String> {
        let start = lua.find("local terminal = {").expect("health.lua has a `local terminal = {` table");
        let body = &lua[start..];
        let end = body.find('}').expect("the terminal table is closed");
        body[..end]
            .lines()
            .filter_map(|l| l.trim().strip_suffix("= true,").or_else(|| l.trim().strip_suffix("= true")))
            .map(|k| k.trim().to_string())
            .collect()
    }

    /// The backticked names in the first column of the README's `| reason | what to do |` table.
    fn readme_reasons(readme: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut in_table = false;
        for line in readme.lines() {
            if line.trim_start().starts_with("| reason |") {
                in_table = true;
                continue;
            }
            if !in_table {
                continue;
            }
            if !line.trim_start().starts_with('|') {
                break;
            }
            let first = line.trim().trim_start_matches('|').split('|').next().unwrap_or_default();
            out.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
        }
        assert!(!out.is_empty(), "README.md has no `| reason | what to do |` table");
        out
    }

    #[test]
    fn every_name_round_trips() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        let names: BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len(), "two reasons share a name");
    }

    #[test]
    fn the_argocd_health_check_treats_exactly_the_terminal_reasons_as_degraded() {
        let lua = lua_terminal_reasons(&repo_file("examples/argocd/health.lua"));
        let ours: BTreeSet<String> =
            Reason::ALL.into_iter().filter(|r| r.is_terminal()).map(|r| r.as_str().to_string()).collect();
        assert_eq!(lua, ours, "examples/argocd/health.lua's terminal table and Reason::is_terminal disagree");
    }

    #[test]
    fn the_readme_explains_every_reason_a_user_can_meet_and_no_other() {
        let documented = readme_reasons(&repo_file("README.md"));
        for name in &documented {
            assert!(
                Reason::parse(name).is_some(),
                "README.md documents {name}, which the operator never writes"
            );
        }
        for r in Reason::ALL.into_iter().filter(|r| r.is_user_facing()) {
            assert!(documented.contains(r.as_str()), "README.md's reasons table lacks {r}");
        }
    }
}
