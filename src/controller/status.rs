//! Step "status": what a pass learned becomes conditions and `status.*`, merged with what is
//! there, written only when something changed, with an Event when `Ready` flips.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::{debug, warn};

use super::{
    Context, Error,
    failure::{Failure, Next, Stage, sanitize},
    webhooks::WebhooksReport,
};
use crate::{
    api::{
        CarerixConnection, CarerixConnectionStatus, CredentialsStatus, FIELD_MANAGER, RECONCILE_REQUESTED_AT,
        SyncStatus, WebhooksStatus,
    },
    conditions::{self, Outcome, Part, Reason, reason::message},
    connection::key_of,
};

/// How often the status shows the progress of an initial sync: while it runs, a pass that went
/// through asks to run again after this long (or after `spec.interval` when shorter), and only
/// such a pass writes `status.sync`. The controller does not react to its own status writes
/// (`watch`), so this is the rate of status writes, reconciles and their Carerix calls (one
/// listing of the webhooks) during an initial sync: at most one per connection per 10 s.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What a pass writes.
#[derive(Clone, Debug)]
pub struct Report {
    pub outcome: Outcome,
    /// `None` keeps what status had.
    pub credentials: Option<CredentialsStatus>,
    /// `None` keeps what status had.
    pub webhooks: Option<WebhooksStatus>,
    /// `None` keeps what status had.
    pub sync: Option<SyncStatus>,
}

fn waiting(what: &str) -> Part {
    Part::unknown(Reason::CredentialsNotValid, format!("{what} waits for valid credentials"))
}

/// The data part while the sync runs (`None` without `spec.sync`).
pub fn data_part(ctx: &Context, obj: &CarerixConnection) -> Option<Part> {
    obj.spec.sync.as_ref().map(|_| ctx.sync.condition(obj))
}

/// The report of a pass that stopped at `stage`.
pub fn failed(
    ctx: &Context,
    obj: &CarerixConnection,
    stage: Stage,
    failure: &Failure,
    credentials: Option<CredentialsStatus>,
) -> Report {
    let part = failure.part.clone();
    let (credentials_part, webhooks_part, data) = match stage {
        Stage::Credentials => {
            (part.clone(), waiting("webhooks"), obj.spec.sync.as_ref().map(|_| waiting("data sync")))
        }
        // The credentials work, so a running sync goes on: report it as it is.
        Stage::Webhooks => {
            (Part::ok(Reason::CredentialsAccepted, "credentials accepted"), part.clone(), data_part(ctx, obj))
        }
    };
    let flag = Some((part.reason.clone(), part.message.clone()));
    let (stalled, reconciling) = match failure.next {
        Next::Stall => (flag, None),
        Next::Retry { .. } => (None, flag),
    };
    Report {
        outcome: Outcome {
            credentials: credentials_part,
            webhooks: webhooks_part,
            data,
            reconciling,
            stalled,
            ready_override: None,
        },
        credentials,
        webhooks: None,
        sync: None,
    }
}

/// The report of a suspended connection.
pub fn suspended(obj: &CarerixConnection) -> Report {
    let part = |what: &str| Part::unknown(Reason::Suspended, format!("{what} not checked while suspended"));
    Report {
        outcome: Outcome {
            credentials: part("credentials"),
            webhooks: part("webhooks"),
            data: obj.spec.sync.as_ref().map(|_| part("data sync")),
            reconciling: None,
            stalled: None,
            ready_override: Some(Part::failed(Reason::Suspended, message::suspended())),
        },
        credentials: None,
        webhooks: None,
        sync: None,
    }
}

/// The report of a deletion that cannot remove the webhooks.
pub fn cleanup_blocked(obj: &CarerixConnection, why: &str) -> Report {
    let text = message::cleanup_blocked(why, &obj.namespace().unwrap_or_default(), &obj.name_any());
    let part = Part::failed(Reason::CleanupBlocked, text);
    Report {
        outcome: Outcome {
            credentials: part.clone(),
            webhooks: waiting("webhooks"),
            data: obj.spec.sync.as_ref().map(|_| waiting("data sync")),
            reconciling: None,
            stalled: Some((part.reason.clone(), part.message.clone())),
            ready_override: Some(part),
        },
        credentials: None,
        webhooks: None,
        sync: None,
    }
}

/// The `WebhooksReady` part and `status.webhooks` of a pass that reached Carerix.
pub fn webhooks_part(desired: usize, report: &WebhooksReport) -> (Part, WebhooksStatus) {
    let ready = report.ready();
    let status = WebhooksStatus {
        application_id: report.application_id.clone(),
        summary: Some(format!("{ready}/{desired}")),
        items: report.states.clone(),
        public_key: report.public_key.clone(),
    };
    if desired == 0 {
        return (Part::ok(Reason::NoWebhooks, "no webhooks configured"), status);
    }
    if ready < desired {
        let off: Vec<String> = report
            .states
            .iter()
            .filter(|s| s.state != "enabled")
            .map(|s| format!("{} is {}", s.name, sanitize(&s.state)))
            .collect();
        let text = format!(
            "{ready}/{desired} webhooks ready: {} in Carerix after re-enabling; retrying with backoff",
            off.join(", ")
        );
        return (Part::failed(Reason::CarerixUnavailable, text), status);
    }
    let mut text = format!("{ready}/{desired} webhooks ready");
    if report.application_id.is_some() && report.public_key.is_none() {
        text.push_str(
            "; Carerix did not return the application's public key, so deliveries cannot be verified: the receiver \
             refuses them and the data sync carries on by polling",
        );
    }
    (Part::ok(Reason::WebhooksReady, text), status)
}

/// Publishes an Event on the connection (failures only logged).
pub async fn publish(
    ctx: &Context,
    obj: &CarerixConnection,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let note = sanitize_event(&note);
    let what = super::events::Note { type_, reason, action, note: &note };
    if let Err(err) = ctx.events.publish(&obj.object_ref(&()), what).await {
        warn!(error = %err, "could not publish an event");
    }
}

fn sanitize_event(note: &str) -> String {
    // Event notes are limited to 1 KiB by the API; keep well below it.
    let clean: String = note.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    clean.chars().take(1000).collect()
}

/// The status `report` makes of `old`.
pub fn merge(obj: &CarerixConnection, report: &Report, now: Timestamp) -> CarerixConnectionStatus {
    let old = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation;
    let conditions: Vec<Condition> =
        conditions::merge(&old.conditions, &report.outcome.conditions(), generation, now);
    CarerixConnectionStatus {
        observed_generation: generation,
        last_handled_reconcile_at: obj
            .annotations()
            .get(RECONCILE_REQUESTED_AT)
            .cloned()
            .or(old.last_handled_reconcile_at.clone()),
        conditions,
        // Keep what we knew when this pass could not look.
        credentials: report.credentials.clone().or(old.credentials.clone()),
        webhooks: report.webhooks.clone().or(old.webhooks.clone()),
        // Without spec.sync there is no sync status; leaving it out removes what we wrote before.
        sync: if obj.spec.sync.is_some() { report.sync.clone().or(old.sync.clone()) } else { None },
    }
}

/// Whether writing `new` would change nothing a reader sees.
pub fn unchanged(old: &CarerixConnectionStatus, new: &CarerixConnectionStatus) -> bool {
    conditions::same_ignoring_time(&old.conditions, &new.conditions)
        && old.observed_generation == new.observed_generation
        && old.last_handled_reconcile_at == new.last_handled_reconcile_at
        && old.credentials == new.credentials
        && old.webhooks == new.webhooks
        && old.sync == new.sync
}

/// Writes the status when it differs from what is there, and publishes an Event when `Ready`
/// changes.
///
/// # Errors
/// When the Kubernetes API fails.
pub async fn write(ctx: &Context, obj: &CarerixConnection, report: &Report) -> Result<(), Error> {
    let key = key_of(obj);
    let old = obj.status.clone().unwrap_or_default();
    let status = merge(obj, report, Timestamp::now());
    ctx.metrics.set_conditions(obj, &status.conditions);
    ctx.metrics.set_sync_status(&obj.namespace().unwrap_or_default(), &obj.name_any(), status.sync.as_ref());
    if unchanged(&old, &status) {
        return Ok(());
    }
    let api: Api<CarerixConnection> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "hiredata.io/v1alpha1",
        "kind": "CarerixConnection",
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Kube { action: "write the status of", key: key.clone(), source })?;
    debug!(connection = %key, "status written");

    let old_ready = conditions::find(&old.conditions, conditions::types::READY);
    let new_ready = report.outcome.ready();
    let changed =
        old_ready.is_none_or(|c| c.status != new_ready.status.as_str() || c.reason != new_ready.reason);
    if changed {
        let type_ =
            if new_ready.status == conditions::Status::True { EventType::Normal } else { EventType::Warning };
        publish(ctx, obj, type_, &new_ready.reason, "Reconcile", new_ready.message.clone()).await;
    }
    Ok(())
}
