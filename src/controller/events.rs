//! Kubernetes Events on the connections (`events.k8s.io/v1`), with repeats folded into a series.
//!
//! kube's `Recorder` does the same, but keeps every Event it published as a whole object for six
//! minutes, and only forgets them when it publishes the next one: after 1000 connections became
//! Ready at once, 1000 full Events (and the table that held them) stayed in memory for good, the
//! largest single item of a replica's heap (docs/benchmarks.md). Here a repeat is recognised by a
//! hash of what makes it the same Event, and only the Event's name, count and time are kept, for
//! [`SERIES_WINDOW`]; entries past it are dropped at every publish and when the map is large.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event, events::v1::EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{EventType, Reporter},
};

/// How long a repeat of an Event is counted in its series instead of making a new Event (as
/// kube's and client-go's recorders do).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What an Event says, about what.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    /// Normal or Warning.
    pub type_: EventType,
    /// A CamelCase reason (`WebhookRepaired`, a condition's reason).
    pub reason: &'a str,
    /// What the operator did (`Reconcile`, `RepairWebhook`).
    pub action: &'a str,
    /// The message shown by `kubectl describe` (at most 1 KiB; longer ones are cut).
    pub note: &'a str,
}

/// The last Event of one kind: what a repeat needs to extend its series.
#[derive(Debug, Clone)]
struct Recent {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Whether to create an Event or extend the series of an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Create,
    Repeat { name: String, count: i32 },
}

/// Publishes Events for one reporter (the operator and its replica identity).
pub struct Events {
    client: Client,
    reporter: Reporter,
    recent: Mutex<HashMap<u64, Recent>>,
}

impl Events {
    /// A publisher writing through `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Events { client, reporter, recent: Mutex::new(HashMap::new()) }
    }

    /// Publishes `what` about `regarding` in its namespace.
    ///
    /// # Errors
    /// When the API server refuses the Event (the caller only logs it).
    pub async fn publish(&self, regarding: &ObjectReference, what: Note<'_>) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key_of(regarding, &what);
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match self.step(key, now) {
            Step::Repeat { name, count } => {
                let series = EventSeries { count, last_observed_time: MicroTime(now) };
                let patch = serde_json::json!({ "series": series });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                self.remember(key, Recent { name, count, last: now });
            }
            Step::Create => {
                let event = self.event(regarding, &what, &namespace, now);
                let name = event.metadata.name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &event).await?;
                self.remember(key, Recent { name, count: 1, last: now });
            }
        }
        Ok(())
    }

    /// Create a new Event, or extend the series of the same one published within the window.
    fn step(&self, key: u64, now: Timestamp) -> Step {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|_, r| within_window(r.last, now));
        if recent.capacity() > 64 && recent.len() < recent.capacity() / 4 {
            recent.shrink_to_fit();
        }
        match recent.get(&key) {
            // An Event with a series counts all its occurrences, the first included.
            Some(r) => Step::Repeat { name: r.name.clone(), count: r.count.max(1) + 1 },
            None => Step::Create,
        }
    }

    fn remember(&self, key: u64, entry: Recent) {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).insert(key, entry);
    }

    fn event(&self, regarding: &ObjectReference, what: &Note<'_>, namespace: &str, now: Timestamp) -> Event {
        let about = regarding.name.as_deref().unwrap_or(&self.reporter.controller);
        Event {
            action: Some(what.action.to_string()),
            reason: Some(what.reason.to_string()),
            note: Some(what.note.chars().take(1000).collect()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            metadata: ObjectMeta {
                namespace: Some(namespace.to_string()),
                name: Some(format!("{about}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(match what.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Event::default()
        }
    }
}

fn within_window(last: Timestamp, now: Timestamp) -> bool {
    now.duration_since(last).unsigned_abs() < SERIES_WINDOW
}

/// What makes two Events the same: the object, and type, reason, action and note.
fn key_of(regarding: &ObjectReference, what: &Note<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    (&regarding.kind, &regarding.namespace, &regarding.name, &regarding.uid).hash(&mut h);
    (matches!(what.type_, EventType::Warning), what.reason, what.action, what.note).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::ObjectReference, jiff::SignedDuration};
    use kube::runtime::events::{EventType, Reporter};

    use super::{Events, Note, Recent, SERIES_WINDOW, Step, key_of};

    fn events() -> Events {
        // Never used to send: these tests drive the series bookkeeping only.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("a client");
        Events::new(client, Reporter { controller: "carerix-operator".into(), instance: None })
    }

    fn about(name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("CarerixConnection".into()),
            namespace: Some("recruiting".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    const READY: Note<'static> = Note {
        type_: EventType::Normal,
        reason: "WebhooksReady",
        action: "Reconcile",
        note: "1/1 webhooks ready",
    };

    #[tokio::test]
    async fn the_same_event_within_six_minutes_extends_one_series_and_later_starts_a_new_event() {
        let e = events();
        let now = k8s_openapi::jiff::Timestamp::now();
        let key = key_of(&about("acme"), &READY);
        assert_eq!(e.step(key, now), Step::Create);
        e.remember(key, Recent { name: "acme.1".into(), count: 1, last: now });
        assert_eq!(e.step(key, now), Step::Repeat { name: "acme.1".into(), count: 2 });
        e.remember(key, Recent { name: "acme.1".into(), count: 2, last: now });
        assert_eq!(e.step(key, now), Step::Repeat { name: "acme.1".into(), count: 3 });

        let later = now + SignedDuration::try_from(SERIES_WINDOW).expect("fits");
        assert_eq!(e.step(key, later), Step::Create, "past the window it is a new Event");
    }

    #[test]
    fn another_object_reason_or_note_is_another_event() {
        let base = key_of(&about("acme"), &READY);
        assert_ne!(base, key_of(&about("globex"), &READY));
        assert_ne!(base, key_of(&about("acme"), &Note { reason: "InvalidClient", ..READY }));
        assert_ne!(base, key_of(&about("acme"), &Note { note: "0/1 webhooks ready", ..READY }));
        assert_ne!(base, key_of(&about("acme"), &Note { type_: EventType::Warning, ..READY }));
    }

    #[tokio::test]
    async fn a_burst_of_events_is_forgotten_after_the_window_and_its_table_given_back() {
        let e = events();
        let now = k8s_openapi::jiff::Timestamp::now();
        for i in 0..1000 {
            let key = key_of(&about(&format!("c{i}")), &READY);
            e.remember(key, Recent { name: format!("c{i}.1"), count: 1, last: now });
        }
        let later = now + SignedDuration::try_from(SERIES_WINDOW).expect("fits");
        let other = key_of(&about("late"), &READY);
        assert_eq!(e.step(other, later), Step::Create);
        let recent = e.recent.lock().expect("not poisoned");
        assert!(recent.is_empty());
        assert!(recent.capacity() < 64, "the table of 1000 entries was kept: {}", recent.capacity());
    }
}
