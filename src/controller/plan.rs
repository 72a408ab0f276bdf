//! Desired versus actual webhooks: what to keep, re-enable, create and delete.
//!
//! Carerix has no update for webhooks and no name on them, so a webhook is identified by what it
//! does: its URL, its events and its custom headers. A desired webhook with an exact match is
//! kept (and re-enabled when disabled or errored); one without is created; a webhook in our
//! application that matches nothing desired, or duplicates a kept one, is deleted. Webhooks
//! created by another client are never touched. This module is pure: it decides, `controller`
//! acts (creating before deleting, so deliveries never gap).
//!
//! Header values are secrets that Carerix may mask in its answers. A webhook whose header names
//! match but whose values do not is still a match when status recorded, for that webhook id, the
//! hash of exactly the desired values ([`headers_hash`]); so a rotated value is replaced, but a
//! masked one is not replaced on every pass.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};

pub use crate::carerix::WebhookStatus;

/// A webhook as the spec asks for it, with header values resolved from Secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredWebhook {
    /// The spec name (not sent to Carerix, which has no webhook names).
    pub name: String,
    pub url: String,
    /// Lowercase, sorted, unique.
    pub events: Vec<String>,
    /// Sorted by name; values are secrets.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for DesiredWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("DesiredWebhook")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("headers", &names)
            .finish()
    }
}

/// A webhook as Carerix reports it.
#[derive(Clone, PartialEq, Eq)]
pub struct ActualWebhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub headers: Vec<(String, String)>,
    /// Its state in Carerix.
    pub status: WebhookStatus,
    /// Created by our client: only these may be changed.
    pub owned: bool,
}

impl std::fmt::Debug for ActualWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActualWebhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("status", &self.status)
            .field("owned", &self.owned)
            .finish()
    }
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Desired webhooks that exist and are enabled: (spec name, Carerix id).
    pub keep: Vec<(String, String)>,
    /// Desired webhooks that exist but must be re-enabled: (spec name, Carerix id, current status).
    pub enable: Vec<(String, String, WebhookStatus)>,
    /// Desired webhooks to create.
    pub create: Vec<DesiredWebhook>,
    /// Our webhooks to delete (extras, duplicates and ones that no longer match the spec).
    pub delete: Vec<String>,
}

impl Plan {
    /// True when nothing needs to change in Carerix.
    pub fn is_noop(&self) -> bool {
        self.enable.is_empty() && self.create.is_empty() && self.delete.is_empty()
    }
}

/// Normalizes a list of events: lowercase, sorted, without duplicates.
pub fn normalize_events<S: AsRef<str>>(events: &[S]) -> Vec<String> {
    events.iter().map(|e| e.as_ref().to_ascii_lowercase()).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Normalizes headers: sorted by lowercase name.
pub fn normalize_headers(mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers.sort_by_key(|h| h.0.to_ascii_lowercase());
    headers
}

/// A hash of header names and values, kept in status to recognise headers Carerix masks.
pub fn headers_hash(headers: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in normalize_headers(headers.to_vec()) {
        hasher.update(name.to_ascii_lowercase().as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn matches(desired: &DesiredWebhook, actual: &ActualWebhook, known_hash: Option<&str>) -> bool {
    let actual_headers = normalize_headers(actual.headers.clone());
    let names_match = desired.headers.len() == actual_headers.len()
        && actual_headers.iter().zip(&desired.headers).all(|(a, d)| a.0.eq_ignore_ascii_case(&d.0));
    let values_match = actual_headers.iter().zip(&desired.headers).all(|(a, d)| a.1 == d.1)
        || known_hash.is_some_and(|h| h == headers_hash(&desired.headers));
    desired.url == actual.url
        && desired.events == normalize_events(&actual.events)
        && names_match
        && values_match
}

/// Plans the changes that make `actual` (the webhooks in our application) equal to `desired`.
/// `known_hashes` maps a webhook id to the [`headers_hash`] status recorded when it was made.
pub fn plan(
    desired: &[DesiredWebhook],
    actual: &[ActualWebhook],
    known_hashes: &HashMap<String, String>,
) -> Plan {
    let mut plan = Plan::default();
    let mut used = vec![false; actual.len()];
    for want in desired {
        // Prefer an enabled match, so a disabled duplicate is the one deleted.
        let candidate = actual
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                !used[*i] && a.owned && matches(want, a, known_hashes.get(&a.id).map(String::as_str))
            })
            .min_by_key(|(_, a)| if a.status == WebhookStatus::Enabled { 0 } else { 1 });
        match candidate {
            Some((i, a)) => {
                used[i] = true;
                if a.status == WebhookStatus::Enabled {
                    plan.keep.push((want.name.clone(), a.id.clone()));
                } else {
                    plan.enable.push((want.name.clone(), a.id.clone(), a.status.clone()));
                }
            }
            None => plan.create.push(want.clone()),
        }
    }
    for (i, a) in actual.iter().enumerate() {
        if !used[i] && a.owned {
            plan.delete.push(a.id.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(name: &str, url: &str, events: &[&str]) -> DesiredWebhook {
        DesiredWebhook {
            name: name.into(),
            url: url.into(),
            events: normalize_events(events),
            headers: vec![],
        }
    }

    fn actual(id: &str, url: &str, events: &[&str], status: &str) -> ActualWebhook {
        ActualWebhook {
            id: id.into(),
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            headers: vec![],
            status: match status {
                "enabled" => WebhookStatus::Enabled,
                "disabled" => WebhookStatus::Disabled,
                "error" => WebhookStatus::Error,
                other => WebhookStatus::Unknown(other.into()),
            },
            owned: true,
        }
    }

    fn plan(desired: &[DesiredWebhook], actual: &[ActualWebhook]) -> Plan {
        super::plan(desired, actual, &HashMap::new())
    }

    #[test]
    fn nothing_exists_yet_so_every_desired_webhook_is_created() {
        let p = plan(&[desired("a", "https://x", &["cremployee:created"])], &[]);
        assert_eq!(p.create.len(), 1);
        assert!(p.delete.is_empty() && p.keep.is_empty());
    }

    #[test]
    fn an_identical_enabled_webhook_is_kept_and_nothing_changes() {
        let p = plan(
            &[desired("a", "https://x", &["cremployee:updated", "cremployee:created"])],
            &[actual("1", "https://x", &["CREmployee:created", "cremployee:updated"], "enabled")],
        );
        assert!(p.is_noop(), "{p:?}");
        assert_eq!(p.keep, vec![("a".to_string(), "1".to_string())]);
    }

    #[test]
    fn a_disabled_or_errored_webhook_is_re_enabled() {
        let p = plan(
            &[desired("a", "https://x", &["crmatch:created"]), desired("b", "https://y", &["crjob:created"])],
            &[
                actual("1", "https://x", &["crmatch:created"], "disabled"),
                actual("2", "https://y", &["crjob:created"], "error"),
            ],
        );
        assert_eq!(p.enable.len(), 2);
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn a_changed_spec_replaces_the_webhook() {
        let p = plan(
            &[desired("a", "https://x", &["crmatch:created", "crmatch:updated"])],
            &[actual("1", "https://x", &["crmatch:created"], "enabled")],
        );
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.delete, vec!["1".to_string()]);
    }

    #[test]
    fn extras_and_duplicates_in_our_application_are_deleted() {
        let p = plan(
            &[desired("a", "https://x", &["crmatch:created"])],
            &[
                actual("1", "https://x", &["crmatch:created"], "disabled"),
                actual("2", "https://x", &["crmatch:created"], "enabled"),
                actual("3", "https://z", &["crjob:created"], "enabled"),
            ],
        );
        assert_eq!(p.keep, vec![("a".to_string(), "2".to_string())]);
        let mut deleted = p.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["1".to_string(), "3".to_string()]);
    }

    #[test]
    fn webhooks_of_another_client_are_never_touched() {
        let mut foreign = actual("9", "https://x", &["crmatch:created"], "disabled");
        foreign.owned = false;
        let p = plan(&[desired("a", "https://x", &["crmatch:created"])], &[foreign]);
        assert!(p.delete.is_empty() && p.enable.is_empty());
        assert_eq!(p.create.len(), 1, "we create our own instead of adopting another client's");
    }

    #[test]
    fn a_rotated_header_value_replaces_the_webhook() {
        let mut want = desired("a", "https://x", &["crmatch:created"]);
        want.headers = vec![("x-api-key".into(), "new".into())];
        let mut have = actual("1", "https://x", &["crmatch:created"], "enabled");
        have.headers = vec![("X-Api-Key".into(), "old".into())];
        let p = plan(&[want.clone()], &[have.clone()]);
        assert_eq!((p.create.len(), p.delete.len()), (1, 1));
        have.headers = vec![("X-Api-Key".into(), "new".into())];
        assert!(plan(&[want], &[have]).is_noop());
    }

    #[test]
    fn masked_header_values_are_no_change_when_status_knows_their_hash() {
        let mut want = desired("a", "https://x", &["crmatch:created"]);
        want.headers = vec![("x-api-key".into(), "s3cr3t".into())];
        let mut have = actual("1", "https://x", &["crmatch:created"], "enabled");
        have.headers = vec![("X-Api-Key".into(), "********".into())];
        let known: HashMap<String, String> = [("1".to_string(), headers_hash(&want.headers))].into();
        assert!(super::plan(&[want.clone()], &[have.clone()], &known).is_noop());
        // Without the hash (or after the value rotated) it is replaced.
        assert!(!plan(&[want.clone()], &[have.clone()]).is_noop());
        want.headers = vec![("x-api-key".into(), "rotated".into())];
        assert!(!super::plan(&[want], &[have], &known).is_noop());
    }

    #[test]
    fn debug_output_never_shows_header_values() {
        let mut want = desired("a", "https://x", &["crmatch:created"]);
        want.headers = vec![("x-api-key".into(), "s3cr3t-value".into())];
        assert!(!format!("{want:?}").contains("s3cr3t-value"));
    }
}
