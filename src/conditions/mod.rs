//! Status conditions: the kstatus shape, stable reasons, and writes only when something changed.
//!
//! `Ready` sums up the parts (`CredentialsValid`, `WebhooksReady`, `DataSynced`); `Reconciling`
//! and `Stalled` are present only while True. `lastTransitionTime` moves only when a condition's
//! status flips, and two condition lists are compared without their times, so a pass that
//! changes nothing writes nothing.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Condition types.
pub mod types {
    /// Everything works.
    pub const READY: &str = "Ready";
    /// Work in progress (present only while True).
    pub const RECONCILING: &str = "Reconciling";
    /// Retrying will not help until someone acts (present only while True).
    pub const STALLED: &str = "Stalled";
    /// The Secret's credentials obtain a token with the scopes needed.
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    /// Every desired webhook exists in Carerix and is enabled.
    pub const WEBHOOKS_READY: &str = "WebhooksReady";
    /// The data sync finished its initial pass and its last run succeeded.
    pub const DATA_SYNCED: &str = "DataSynced";
}

pub mod reason;

pub use reason::Reason;

/// The reasons as strings, for code that matches on `&str` (see [`Reason`]).
pub mod reasons {
    use super::Reason;

    pub const READY: &str = Reason::Ready.as_str();
    pub const SECRET_NOT_FOUND: &str = Reason::SecretNotFound.as_str();
    pub const INVALID_SECRET: &str = Reason::InvalidSecret.as_str();
    pub const INVALID_CLIENT: &str = Reason::InvalidClient.as_str();
    pub const TENANT_NOT_FOUND: &str = Reason::TenantNotFound.as_str();
    pub const MISSING_SCOPE: &str = Reason::MissingScope.as_str();
    pub const MISSING_PERMISSION: &str = Reason::MissingPermission.as_str();
    pub const WEBHOOKS_NOT_ACTIVATED: &str = Reason::WebhooksNotActivated.as_str();
    pub const RATE_LIMITED: &str = Reason::RateLimited.as_str();
    pub const CARERIX_UNAVAILABLE: &str = Reason::CarerixUnavailable.as_str();
    pub const CARERIX_REJECTED: &str = Reason::CarerixRejected.as_str();
    pub const SUSPENDED: &str = Reason::Suspended.as_str();
    pub const CREDENTIALS_NOT_VALID: &str = Reason::CredentialsNotValid.as_str();
    pub const WEBHOOKS_CREATED: &str = Reason::WebhooksReady.as_str();
    pub const NO_WEBHOOKS: &str = Reason::NoWebhooks.as_str();
    pub const CLEANUP_BLOCKED: &str = Reason::CleanupBlocked.as_str();
    pub const INITIAL_SYNC_IN_PROGRESS: &str = Reason::InitialSyncInProgress.as_str();
    pub const SYNCED: &str = Reason::Synced.as_str();
    pub const SINK_UNAVAILABLE: &str = Reason::SinkUnavailable.as_str();
    pub const SYNC_FAILED: &str = Reason::SyncFailed.as_str();
    pub const INVALID_SPEC: &str = Reason::InvalidSpec.as_str();
}

/// The state of one part of the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// `True`, `False` or `Unknown`.
    pub status: Status,
    /// Stable CamelCase reason.
    pub reason: String,
    /// What a person should know or do.
    pub message: String,
}

/// A condition status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl Part {
    /// A part that works.
    pub fn ok(reason: impl AsRef<str>, message: impl Into<String>) -> Self {
        Part { status: Status::True, reason: reason.as_ref().to_string(), message: message.into() }
    }
    /// A part that does not work.
    pub fn failed(reason: impl AsRef<str>, message: impl Into<String>) -> Self {
        Part { status: Status::False, reason: reason.as_ref().to_string(), message: message.into() }
    }
    /// A part not known yet (for example because an earlier part failed).
    pub fn unknown(reason: impl AsRef<str>, message: impl Into<String>) -> Self {
        Part { status: Status::Unknown, reason: reason.as_ref().to_string(), message: message.into() }
    }
}

/// Everything one reconcile pass learned, from which the conditions follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub credentials: Part,
    pub webhooks: Part,
    /// `None` when no sync is configured.
    pub data: Option<Part>,
    /// Set when work is still in progress (reason, message).
    pub reconciling: Option<(String, String)>,
    /// Set when retrying will not help until someone acts (reason, message).
    pub stalled: Option<(String, String)>,
    /// Overrides `Ready` (suspension, blocked cleanup).
    pub ready_override: Option<Part>,
}

impl Outcome {
    /// The `Ready` condition implied by the parts: True when every part is True, otherwise the
    /// first part that is not, with its reason and message.
    pub fn ready(&self) -> Part {
        if let Some(part) = &self.ready_override {
            return part.clone();
        }
        let parts = [Some(&self.credentials), Some(&self.webhooks), self.data.as_ref()];
        match parts.into_iter().flatten().find(|p| p.status != Status::True) {
            Some(p) => Part { status: Status::False, reason: p.reason.clone(), message: p.message.clone() },
            None => Part::ok(reasons::READY, ready_message(self)),
        }
    }

    /// The conditions this outcome stands for, in a stable order, without times.
    pub fn conditions(&self) -> Vec<(&'static str, Part)> {
        let mut out = vec![(types::READY, self.ready())];
        if let Some((reason, message)) = &self.reconciling {
            out.push((types::RECONCILING, Part::ok(reason, message.clone())));
        }
        if let Some((reason, message)) = &self.stalled {
            out.push((types::STALLED, Part::ok(reason, message.clone())));
        }
        out.push((types::CREDENTIALS_VALID, self.credentials.clone()));
        out.push((types::WEBHOOKS_READY, self.webhooks.clone()));
        if let Some(data) = &self.data {
            out.push((types::DATA_SYNCED, data.clone()));
        }
        out
    }
}

fn ready_message(outcome: &Outcome) -> String {
    let mut parts = vec![outcome.webhooks.message.clone()];
    if let Some(data) = &outcome.data {
        parts.push(data.message.clone());
    }
    parts.join("; ")
}

/// Builds the condition list to write: carries `lastTransitionTime` over from `old` for every
/// condition whose status did not flip, and stamps `now` on the others.
pub fn merge(
    old: &[Condition],
    new: &[(&str, Part)],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    new.iter()
        .map(|(type_, part)| {
            let previous = old.iter().find(|c| c.type_ == *type_);
            let last_transition_time = match previous {
                Some(p) if p.status == part.status.as_str() => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: (*type_).to_string(),
                status: part.status.as_str().to_string(),
                reason: part.reason.clone(),
                message: part.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Whether two condition lists say the same, ignoring times and order.
pub fn same_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone(), c.observed_generation)
    };
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Outcome {
        Outcome {
            credentials: Part::ok("Valid", "credentials accepted"),
            webhooks: Part::ok(reasons::WEBHOOKS_CREATED, "2/2 webhooks ready"),
            data: None,
            reconciling: None,
            stalled: None,
            ready_override: None,
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn ready_is_true_only_when_every_part_is_true() {
        assert_eq!(healthy().ready().status, Status::True);
        let mut o = healthy();
        o.data = Some(Part::failed(reasons::INITIAL_SYNC_IN_PROGRESS, "candidates: 300 records"));
        let ready = o.ready();
        assert_eq!(ready.status, Status::False);
        assert_eq!(ready.reason, reasons::INITIAL_SYNC_IN_PROGRESS);
    }

    #[test]
    fn ready_takes_the_reason_and_message_of_the_first_failing_part() {
        let mut o = healthy();
        o.credentials = Part::failed(reasons::INVALID_CLIENT, "ask for a new secret");
        o.webhooks = Part::unknown(reasons::CREDENTIALS_NOT_VALID, "waiting for credentials");
        let ready = o.ready();
        assert_eq!(ready.reason, reasons::INVALID_CLIENT);
        assert_eq!(ready.message, "ask for a new secret");
    }

    #[test]
    fn reconciling_and_stalled_appear_only_while_true() {
        let types: Vec<_> = healthy().conditions().into_iter().map(|(t, _)| t).collect();
        assert!(!types.contains(&types::RECONCILING) && !types.contains(&types::STALLED));
        let mut o = healthy();
        o.stalled = Some((reasons::INVALID_CLIENT.into(), "fix the secret".into()));
        let conditions = o.conditions();
        let stalled = conditions.iter().find(|(t, _)| *t == types::STALLED).unwrap();
        assert_eq!(stalled.1.status, Status::True);
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let first = merge(&[], &healthy().conditions(), Some(1), ts("2026-01-01T00:00:00Z"));
        let again = merge(&first, &healthy().conditions(), Some(2), ts("2026-01-02T00:00:00Z"));
        let ready = find(&again, types::READY).unwrap();
        assert_eq!(ready.last_transition_time.0, ts("2026-01-01T00:00:00Z"));
        assert_eq!(ready.observed_generation, Some(2));

        let mut broken = healthy();
        broken.credentials = Part::failed(reasons::INVALID_CLIENT, "bad");
        let flipped = merge(&again, &broken.conditions(), Some(2), ts("2026-01-03T00:00:00Z"));
        assert_eq!(find(&flipped, types::READY).unwrap().last_transition_time.0, ts("2026-01-03T00:00:00Z"));
        assert_eq!(
            find(&flipped, types::WEBHOOKS_READY).unwrap().last_transition_time.0,
            ts("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn an_unchanged_outcome_compares_equal_so_nothing_is_written() {
        let first = merge(&[], &healthy().conditions(), Some(1), ts("2026-01-01T00:00:00Z"));
        let second = merge(&first, &healthy().conditions(), Some(1), ts("2026-05-01T00:00:00Z"));
        assert!(same_ignoring_time(&first, &second));
        let third = merge(&first, &healthy().conditions(), Some(2), ts("2026-05-01T00:00:00Z"));
        assert!(!same_ignoring_time(&first, &third), "a new generation must be written");
    }
}
