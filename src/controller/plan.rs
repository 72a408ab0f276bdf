//! Desired versus actual webhooks: what to keep, re-enable, create and delete.
//!
//! Carerix has no update for webhooks and no name on them, so a webhook is identified by what it
//! does: its URL, its events and its custom headers. A desired webhook with an exact match is
//! kept (and re-enabled when disabled or errored); one without is created; a webhook in our
//! application that matches nothing desired, or duplicates a kept one, is deleted. Webhooks
//! created by another client are never touched. This module is pure: it decides, `controller`
//! acts.

use std::collections::BTreeSet;

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
    /// `enabled`, `disabled`, `error`, ...
    pub status: String,
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
    pub enable: Vec<(String, String, String)>,
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

fn matches(desired: &DesiredWebhook, actual: &ActualWebhook) -> bool {
    desired.url == actual.url
        && desired.events == normalize_events(&actual.events)
        && desired.headers.len() == actual.headers.len()
        && normalize_headers(actual.headers.clone())
            .iter()
            .zip(&desired.headers)
            .all(|(a, d)| a.0.eq_ignore_ascii_case(&d.0) && a.1 == d.1)
}

/// Plans the changes that make `actual` (the webhooks in our application) equal to `desired`.
pub fn plan(desired: &[DesiredWebhook], actual: &[ActualWebhook]) -> Plan {
    let mut plan = Plan::default();
    let mut used = vec![false; actual.len()];
    for want in desired {
        // Prefer an enabled match, so a disabled duplicate is the one deleted.
        let candidate = actual
            .iter()
            .enumerate()
            .filter(|(i, a)| !used[*i] && a.owned && matches(want, a))
            .min_by_key(|(_, a)| if a.status == "enabled" { 0 } else { 1 });
        match candidate {
            Some((i, a)) => {
                used[i] = true;
                if a.status == "enabled" {
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
            status: status.into(),
            owned: true,
        }
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
    fn debug_output_never_shows_header_values() {
        let mut want = desired("a", "https://x", &["crmatch:created"]);
        want.headers = vec![("x-api-key".into(), "s3cr3t-value".into())];
        assert!(!format!("{want:?}").contains("s3cr3t-value"));
    }
}
