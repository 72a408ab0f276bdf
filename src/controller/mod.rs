//! The reconciler: credentials, webhooks and status for each `CarerixConnection`.
//!
//! One pass is a pipeline; each step returns its result or a [`Halt`] that says why the pass
//! stops (a status part and whether to stall or retry), and exactly one place writes status:
//!
//! ```text
//! check spec → read credentials → authenticate → ensure application + webhooks → sync → status
//! ```
//!
//! Stalled connections (a person must act) are still re-checked at their interval; the others
//! back off per connection. Deletion ([`cleanup`]) runs behind a finalizer. The data sync
//! (`crate::sync`) reports into the same status through [`SyncReport`].

pub mod allowed_hosts;
pub mod application;
pub mod backoff;
pub mod carerix_api;
pub mod cleanup;
pub mod context;
pub mod credentials;
mod error;
pub mod events;
pub mod failure;
pub mod plan;
pub mod status;
pub mod throttle;
pub mod watch;
pub mod webhooks;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod fake_kube;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use tracing::{debug, info, instrument, warn};

use self::{
    backoff::jitter,
    failure::{Failure, Next, Stage, classify},
    status::Report,
};
pub use self::{
    context::{Context, Settings},
    error::Error,
    failure::Halt,
};
use crate::{
    api::{CarerixConnection, FINALIZER},
    carerix::{self, CarerixClient, RateLimiters},
    conditions::{Outcome, Part, Reason},
    connection::key_of,
    metrics::Metrics,
};
pub use crate::{
    conditions,
    conditions::reason::message::{DATA_SCOPE, WEBHOOKS_SCOPE},
    connection::{SecretCredentials, SecretProblem, application_name, read_credentials, secret_value},
    sync::SyncReport,
};

/// Entry point for the controller runtime.
#[instrument(skip_all, fields(connection = %key_of(&obj)))]
pub async fn reconcile(obj: Arc<CarerixConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Sharded: another replica owns it, or it is being handed over. Nothing at all happens here,
    // not even finalizer work; the membership asks for a pass once this replica may start it.
    let key = key_of(&obj);
    let Some(_work) = ctx.shards.begin(&key) else {
        // Owned but waiting for the hand-over: look again soon, in case the membership's request
        // came before this connection reached its cache.
        if ctx.shards.owns(&key) {
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        // Another replica's now (the membership asks for this pass when it hands one over, and
        // has already dropped its metrics): its Carerix client, token, admission and backoff
        // are of no use here any more.
        ctx.forget_work(&key).await;
        return Ok(Action::await_change());
    };
    if !ctx.leadership.is_valid() {
        // The lease lapsed (paused, or cut off from the API): a standby may lead by now.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    // The tenant's rate limiter is paid before the pass, so a busy tenant does not keep this
    // worker waiting (see `throttle`).
    let limiter = ctx.rate_limiters.for_tenant(&obj.spec.tenant);
    let paid = match ctx.admissions.admit(&key, &limiter) {
        throttle::Admission::Go(paid) => paid,
        throttle::Admission::Wait(wait) => {
            debug!(retry_in = ?wait, "the tenant's rate limit is used up, requeued instead of waiting");
            return Ok(Action::requeue(wait));
        }
    };
    let _timer = ctx.metrics.reconcile_timer();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<CarerixConnection> = Api::namespaced(ctx.client.clone(), &ns);
    let ctx2 = ctx.clone();
    let (name, deleting) = (obj.name_any(), obj.metadata.deletion_timestamp.is_some());
    let pass = finalizer(&api, FINALIZER, obj, |event| async move {
        match event {
            Finalizer::Apply(obj) => apply(obj, ctx2).await,
            Finalizer::Cleanup(obj) => cleanup::cleanup(obj, ctx2).await,
        }
    });
    let result = limiter.with_prepaid(paid, pass).await.map_err(|e| Error::Finalizer(Box::new(e)));
    if let Err(err) = &result {
        ctx.metrics.reconcile_failed(err.metric_label());
    } else if !deleting {
        ctx.metrics.reconcile_succeeded(&ns, &name);
    }
    result
}

/// Decides when to retry after an error.
pub fn error_policy(obj: Arc<CarerixConnection>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&obj);
    let delay = ctx.backoffs.failed(&key, err.retry_after());
    warn!(connection = %key, error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// One pass over a connection that is not being deleted.
#[instrument(skip_all)]
async fn apply(obj: Arc<CarerixConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    if obj.spec.suspend {
        // Nothing may reach Carerix: the sync stops too (it resumes from its watermark).
        ctx.sync.stop(&obj).await;
        status::write(&ctx, &obj, &status::suspended(&obj)).await?;
        ctx.backoffs.succeeded(&key_of(&obj));
        return Ok(Action::await_change());
    }
    let (report, next) = match pipeline(&ctx, &obj).await {
        Ok(done) => done,
        Err(Halt::Error(e)) => return Err(e),
        Err(Halt::Failed { stage, failure, credentials }) => {
            let next = after_failure(&ctx, &obj, stage, &failure).await;
            (status::failed(&ctx, &obj, stage, &failure, credentials.map(|c| *c)), next)
        }
    };
    status::write(&ctx, &obj, &report).await?;
    Ok(next)
}

/// The steps of a pass, each returning its typed result or why the pass stops.
async fn pipeline(ctx: &Context, obj: &CarerixConnection) -> Result<(Report, Action), Halt> {
    credentials::check_spec(ctx, &obj.spec)?;
    let creds = credentials::read(ctx, obj).await?;
    let auth = credentials::authenticate(ctx, obj, &creds).await?;
    let at_webhooks = |failure| Halt::Failed {
        stage: Stage::Webhooks,
        failure,
        credentials: Some(Box::new(auth.status.clone())),
    };
    let desired = match webhooks::desired(ctx, obj).await {
        Err(Halt::Failed { failure, .. }) => return Err(at_webhooks(failure)),
        other => other?,
    };
    let report = webhooks::ensure(auth.carerix.api.as_ref(), obj, &desired)
        .await
        .map_err(|e| at_webhooks(classify(&e, &obj.spec.tenant, "manage webhooks")))?;
    for repair in &report.repaired {
        status::publish(ctx, obj, EventType::Normal, repair.reason, "RepairWebhook", repair.note.clone())
            .await;
    }
    ctx.sync.ensure(obj, &auth.carerix.client, report.public_key.clone()).await;
    Ok(finish(ctx, obj, auth.status, desired.len(), &report))
}

/// The report and next look of a pass that went through.
fn finish(
    ctx: &Context,
    obj: &CarerixConnection,
    credentials: crate::api::CredentialsStatus,
    desired: usize,
    report: &webhooks::WebhooksReport,
) -> (Report, Action) {
    let key = key_of(obj);
    let (webhooks_part, webhooks_status) = status::webhooks_part(desired, report);
    let data = status::data_part(ctx, obj);
    let mut reconciling = data
        .as_ref()
        .filter(|p| p.reason == Reason::InitialSyncInProgress.as_str())
        .map(|p| (p.reason.clone(), p.message.clone()));
    let next = if webhooks_part.status != conditions::Status::True {
        reconciling = Some((webhooks_part.reason.clone(), webhooks_part.message.clone()));
        Action::requeue(ctx.backoffs.failed(&key, None))
    } else {
        ctx.backoffs.succeeded(&key);
        let interval: Duration = obj.spec.interval.into();
        if ctx.sync.in_progress(obj) {
            Action::requeue(interval.min(status::PROGRESS_INTERVAL))
        } else {
            Action::requeue(jitter(interval, 0.1))
        }
    };
    let outcome = Outcome {
        credentials: Part::ok(Reason::CredentialsAccepted, credentials::accepted_message(&obj.spec)),
        webhooks: webhooks_part,
        data,
        reconciling,
        stalled: None,
        ready_override: None,
    };
    let report = Report {
        outcome,
        credentials: Some(credentials),
        webhooks: Some(webhooks_status),
        sync: ctx.sync.status(obj),
    };
    (report, next)
}

/// What a failed step leads to: the sync stops when the credentials are gone or refused, a stall
/// is re-checked at the interval, anything else backs off.
async fn after_failure(ctx: &Context, obj: &CarerixConnection, stage: Stage, failure: &Failure) -> Action {
    let key = key_of(obj);
    if let Some(kind) = failure.kind {
        ctx.metrics.reconcile_failed(kind.as_str());
    }
    match failure.next {
        Next::Stall => {
            if stage == Stage::Credentials {
                // Deleted or revoked credentials: nothing of this connection may go on running.
                ctx.sync.stop(obj).await;
            }
            ctx.backoffs.succeeded(&key);
            Action::requeue(jitter(obj.spec.interval.into(), 0.1))
        }
        Next::Retry { retry_after } => {
            let delay = ctx.backoffs.failed(&key, retry_after);
            info!(connection = %key, reason = %failure.part.reason, retry_in = ?delay, "Carerix unavailable, backing off");
            Action::requeue(delay)
        }
    }
}

/// Does `granted` include `scope`?
pub fn has_scope(granted: &[String], scope: &str) -> bool {
    granted.iter().any(|g| g == scope)
}

/// A Carerix client for a connection's tenant and credentials, sharing the tenant's rate limit.
///
/// # Errors
/// When the URLs, tenant or credentials cannot make a client.
pub fn new_client(
    spec: &crate::api::CarerixConnectionSpec,
    creds: &SecretCredentials,
    settings: &Settings,
    rate_limiters: &RateLimiters,
    metrics: &Arc<Metrics>,
) -> Result<CarerixClient, carerix::Error> {
    crate::connection::build_client(spec, creds, &settings.client_settings(), rate_limiters, metrics)
}

/// Our webhook applications for `obj` in Carerix, the one recorded in status first.
///
/// # Errors
/// When Carerix fails.
pub async fn our_applications(
    cx: &CarerixClient,
    obj: &CarerixConnection,
) -> Result<Vec<carerix::Application>, carerix::Error> {
    application::find(cx, obj).await
}
