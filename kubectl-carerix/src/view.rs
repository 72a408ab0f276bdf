//! What `kubectl carerix status` shows: a view of each connection built from its status, and
//! the two ways to print it (text, with colour and bars on a terminal, or JSON).

use std::fmt::Write as _;

use carerix_operator::api::{CarerixConnection, EntitySyncStatus};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::Serialize;

/// One connection as shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub namespace: String,
    pub name: String,
    pub tenant: String,
    pub suspended: bool,
    /// One sentence on the whole connection.
    pub summary: String,
    pub conditions: Vec<ConditionView>,
    pub webhooks: Option<WebhooksView>,
    pub sync: Option<SyncView>,
}

/// One condition, with its meaning in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    /// The condition in words, e.g. `credentials are valid`.
    pub words: String,
    /// Whether this condition is as it should be.
    pub good: bool,
    pub last_transition_time: String,
}

/// The webhooks in Carerix.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhooksView {
    pub summary: Option<String>,
    pub items: Vec<WebhookView>,
}

/// One webhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub name: String,
    pub state: String,
    pub events: Vec<String>,
    pub url: Option<String>,
}

/// The data sync.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    pub records: Option<i64>,
    pub last_sync_time: Option<String>,
    pub entities: Vec<EntityView>,
}

/// The sync of one entity, with the progress of its initial pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityView {
    pub entity: String,
    pub phase: String,
    pub records: i64,
    /// During the initial pass: the records Carerix reports.
    pub total: Option<i64>,
    /// `records / total` (0 to 1) during the initial pass.
    pub fraction: Option<f64>,
    /// Records per second since the initial pass started.
    pub rate_per_second: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<u64>,
    pub last_run_finished: Option<String>,
}

const ORDER: [&str; 6] =
    ["Ready", "Stalled", "Reconciling", "CredentialsValid", "WebhooksReady", "DataSynced"];

fn words(c: &Condition) -> (String, bool) {
    let t = c.status == "True";
    let f = c.status == "False";
    let (w, good) = match c.type_.as_str() {
        "Ready" if t => ("ready", true),
        "Ready" if f => ("not ready", false),
        "Stalled" if t => ("stalled: retrying will not help until someone acts", false),
        "Stalled" => ("not stalled", true),
        "Reconciling" if t => ("reconciling: work in progress", true),
        "Reconciling" => ("not reconciling", true),
        "CredentialsValid" if t => ("credentials are valid", true),
        "CredentialsValid" if f => ("credentials are not valid", false),
        "WebhooksReady" if t => ("webhooks are in place", true),
        "WebhooksReady" if f => ("webhooks are not in place", false),
        "DataSynced" if t => ("data is synced", true),
        "DataSynced" if f && c.reason == "InitialSyncInProgress" => ("initial sync in progress", true),
        "DataSynced" if f => ("data is not synced", false),
        _ if t => ("true", true),
        _ if f => ("false", false),
        _ => ("not known yet", false),
    };
    let w = if c.status == "Unknown" && !matches!(c.type_.as_str(), "Reconciling" | "Stalled") {
        format!("{}: not known yet", c.type_)
    } else {
        w.to_string()
    };
    (w, good || (c.reason == "Suspended"))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

fn entity_view(e: &EntitySyncStatus, now: DateTime<Utc>) -> EntityView {
    let initial = e.phase == "Initial";
    let total = e.total.filter(|t| initial && *t > 0);
    let fraction = total.map(|t| (e.records as f64 / t as f64).clamp(0.0, 1.0));
    let elapsed = e
        .initial_sync_started
        .as_deref()
        .filter(|_| initial)
        .and_then(parse_time)
        .map(|start| (now - start).num_milliseconds() as f64 / 1000.0)
        .filter(|s| *s > 0.0);
    let rate = elapsed.map(|s| e.records.max(0) as f64 / s);
    let eta = match (total, rate) {
        (Some(t), Some(r)) if r > 0.0 => Some(((t - e.records).max(0) as f64 / r).round() as u64),
        _ => None,
    };
    EntityView {
        entity: e.entity.clone(),
        phase: e.phase.clone(),
        records: e.records,
        total,
        fraction,
        rate_per_second: rate,
        eta_seconds: eta,
        last_run_finished: e.last_run_finished.clone(),
    }
}

/// Builds the view of a connection at time `now` (for rates and ETAs).
pub fn connection_view(obj: &CarerixConnection, now: DateTime<Utc>) -> ConnectionView {
    let status = obj.status.clone().unwrap_or_default();
    let mut conditions: Vec<ConditionView> = status
        .conditions
        .iter()
        .map(|c| {
            let (words, good) = words(c);
            ConditionView {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                words,
                good,
                last_transition_time: c.last_transition_time.0.to_string(),
            }
        })
        .collect();
    conditions.sort_by_key(|c| ORDER.iter().position(|o| *o == c.type_).unwrap_or(ORDER.len()));
    let summary = summary(obj, &conditions);
    ConnectionView {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        tenant: obj.spec.tenant.clone(),
        suspended: obj.spec.suspend,
        summary,
        conditions,
        webhooks: status.webhooks.map(|w| WebhooksView {
            summary: w.summary,
            items: w
                .items
                .into_iter()
                .map(|i| WebhookView { name: i.name, state: i.state, events: i.events, url: i.url })
                .collect(),
        }),
        sync: status.sync.map(|s| SyncView {
            records: s.records,
            last_sync_time: s.last_sync_time,
            entities: s.entities.iter().map(|e| entity_view(e, now)).collect(),
        }),
    }
}

fn summary(obj: &CarerixConnection, conditions: &[ConditionView]) -> String {
    let find = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    if let Some(s) = find("Stalled") {
        return format!("Stalled ({}): {}", s.reason, s.message);
    }
    if obj.spec.suspend {
        return "Suspended: no request is sent to Carerix".into();
    }
    match conditions.iter().find(|c| c.type_ == "Ready") {
        Some(r) if r.status == "True" => "Ready".into(),
        Some(r) if r.reason == "InitialSyncInProgress" => format!("Initial sync in progress: {}", r.message),
        Some(r) => format!("Not ready ({}): {}", r.reason, r.message),
        None => "Waiting for the operator: no status yet".into(),
    }
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours and progress bars (a terminal).
    pub terminal: bool,
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";
const BAR_WIDTH: usize = 30;

fn paint(style: Style, colour: &str, text: &str) -> String {
    if style.terminal { format!("{colour}{text}{RESET}") } else { text.to_string() }
}

/// `1h 02m`, `3m 05s`, `42s`.
pub fn duration_words(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn bar(fraction: f64) -> String {
    let filled = ((fraction * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("{GREEN}{}{DIM}{}{RESET}", "█".repeat(filled), "░".repeat(BAR_WIDTH - filled))
}

fn entity_line(e: &EntityView, style: Style, width: usize) -> String {
    let mut line = format!("    {:<width$}  ", e.entity);
    if e.phase == "Initial" {
        match (e.total, e.fraction) {
            (Some(total), Some(fraction)) => {
                if style.terminal {
                    let _ = write!(line, "{} ", bar(fraction));
                } else {
                    line.push_str("initial sync  ");
                }
                let _ = write!(line, "{}/{} ({:.0}%)", e.records, total, fraction * 100.0);
            }
            _ => {
                let _ = write!(line, "initial sync  {} records (total not known yet)", e.records);
            }
        }
        if let Some(rate) = e.rate_per_second {
            let _ = write!(line, "  {rate:.1} records/s");
        }
        if let Some(eta) = e.eta_seconds {
            let _ = write!(line, "  ETA {}", duration_words(eta));
        }
    } else {
        let _ = write!(line, "{} records, incremental", e.records);
        if let Some(t) = &e.last_run_finished {
            let _ = write!(line, ", last run {t}");
        }
    }
    line
}

/// The text of one connection.
pub fn render_text(v: &ConnectionView, style: Style) -> String {
    let mut out = String::new();
    let headline_colour = if v.conditions.iter().any(|c| c.type_ == "Stalled" && c.status == "True") {
        RED
    } else if v.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
        GREEN
    } else {
        YELLOW
    };
    let _ = writeln!(
        out,
        "{}  tenant {}  {}",
        paint(style, BOLD, &format!("{}/{}", v.namespace, v.name)),
        v.tenant,
        paint(style, headline_colour, &v.summary)
    );
    if !v.conditions.is_empty() {
        out.push_str("  Conditions:\n");
        let width = v.conditions.iter().map(|c| c.type_.len()).max().unwrap_or(0);
        for c in &v.conditions {
            let mark = if c.good { paint(style, GREEN, "ok") } else { paint(style, RED, "!!") };
            let mut line = format!("    {mark} {:<width$}  {}", c.type_, c.words);
            if !c.message.is_empty() && c.type_ != "Ready" {
                let _ = write!(line, " ({}: {})", c.reason, c.message);
            } else if !c.reason.is_empty() && c.type_ != "Ready" {
                let _ = write!(line, " ({})", c.reason);
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    if let Some(w) = &v.webhooks {
        let _ = writeln!(out, "  Webhooks {}:", w.summary.as_deref().unwrap_or("-"));
        let width = w.items.iter().map(|i| i.name.len()).max().unwrap_or(0);
        for i in &w.items {
            let state = if i.state == "enabled" {
                paint(style, GREEN, &i.state)
            } else {
                paint(style, RED, &i.state)
            };
            let _ = writeln!(
                out,
                "    {:<width$}  {}  {}  -> {}",
                i.name,
                state,
                i.events.join(","),
                i.url.as_deref().unwrap_or("-")
            );
        }
    }
    if let Some(s) = &v.sync {
        let _ = write!(out, "  Sync: {} records", s.records.unwrap_or(0));
        if let Some(t) = &s.last_sync_time {
            let _ = write!(out, ", last sync {t}");
        }
        out.push('\n');
        let width = s.entities.iter().map(|e| e.entity.len()).max().unwrap_or(0);
        for e in &s.entities {
            out.push_str(&entity_line(e, style, width));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use carerix_operator::api::{CarerixConnectionStatus, SyncStatus};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn connection(status: CarerixConnectionStatus) -> CarerixConnection {
        let mut obj = CarerixConnection::new(
            "acme",
            serde_json::from_value(
                serde_json::json!({"tenant": "acme", "credentialsSecretRef": {"name": "c"}}),
            )
            .expect("a valid spec"),
        );
        obj.metadata.namespace = Some("shop".into());
        obj.status = Some(status);
        obj
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn now() -> DateTime<Utc> {
        parse_time("2026-01-01T10:01:40Z").expect("a time")
    }

    fn syncing(records: i64) -> CarerixConnection {
        connection(CarerixConnectionStatus {
            conditions: vec![
                condition("DataSynced", "False", "InitialSyncInProgress", "candidates: 250 of 1000"),
                condition("Ready", "False", "InitialSyncInProgress", "candidates: 250 of 1000"),
            ],
            sync: Some(SyncStatus {
                records: Some(records),
                last_sync_time: None,
                entities: vec![EntitySyncStatus {
                    entity: "candidates".into(),
                    phase: "Initial".into(),
                    records,
                    total: Some(1000),
                    initial_sync_started: Some("2026-01-01T10:00:00Z".into()),
                    ..EntitySyncStatus::default()
                }],
            }),
            ..CarerixConnectionStatus::default()
        })
    }

    #[test]
    fn an_initial_sync_shows_records_of_total_rate_and_eta() {
        let v = connection_view(&syncing(250), now());
        let e = &v.sync.as_ref().expect("sync").entities[0];
        assert_eq!(e.fraction, Some(0.25));
        assert_eq!(e.rate_per_second, Some(2.5));
        assert_eq!(e.eta_seconds, Some(300));
        let text = render_text(&v, Style { terminal: false });
        assert!(
            text.contains("candidates  initial sync  250/1000 (25%)  2.5 records/s  ETA 5m 00s"),
            "{text}"
        );
        assert!(text.contains("Initial sync in progress"), "{text}");
        assert!(!text.contains('\x1b'), "plain output has no escape codes: {text:?}");
    }

    #[test]
    fn on_a_terminal_the_bar_fills_with_the_records() {
        let quarter = render_text(&connection_view(&syncing(250), now()), Style { terminal: true });
        let half = render_text(&connection_view(&syncing(500), now()), Style { terminal: true });
        assert_eq!(quarter.matches('█').count(), 8, "{quarter}");
        assert_eq!(half.matches('█').count(), 15, "{half}");
        assert!(half.contains(GREEN));
    }

    #[test]
    fn a_stalled_connection_says_why_in_its_headline() {
        let obj = connection(CarerixConnectionStatus {
            conditions: vec![
                condition("Ready", "False", "MissingScope", "the client lacks urn:cx/webhooks:data:manage"),
                condition("Stalled", "True", "MissingScope", "the client lacks urn:cx/webhooks:data:manage"),
                condition(
                    "CredentialsValid",
                    "False",
                    "MissingScope",
                    "the client lacks urn:cx/webhooks:data:manage",
                ),
            ],
            ..CarerixConnectionStatus::default()
        });
        let v = connection_view(&obj, now());
        assert_eq!(v.summary, "Stalled (MissingScope): the client lacks urn:cx/webhooks:data:manage");
        assert_eq!(
            v.conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Ready", "Stalled", "CredentialsValid"]
        );
        let text = render_text(&v, Style { terminal: false });
        assert!(
            text.contains("!! Stalled           stalled: retrying will not help until someone acts"),
            "{text}"
        );
        assert!(
            text.contains("!! CredentialsValid  credentials are not valid (MissingScope: the client lacks"),
            "{text}"
        );
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(duration_words(42), "42s");
        assert_eq!(duration_words(185), "3m 05s");
        assert_eq!(duration_words(3720), "1h 02m");
    }
}
