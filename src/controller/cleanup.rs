//! Deletion: stop the sync, then remove our application and webhooks from Carerix (under
//! `deletionPolicy: Delete`).
//!
//! A connection that never had its credentials validated and never recorded an application has
//! nothing in Carerix and is released at once. When the removal cannot proceed (credentials gone or
//! refused, an unknown tenant, a missing permission, or Carerix failing [`MAX_ATTEMPTS`] times in a
//! row) the status says `CleanupBlocked` with the way out (`deletionPolicy: Orphan`).

use std::sync::Arc;

use kube::{ResourceExt, runtime::controller::Action};
use tracing::info;

use super::{
    Context, Error,
    application::{self, owns, recorded_id},
    carerix_api::CarerixApi,
    credentials::{check_spec, secret_failure},
    failure::{Halt, sanitize},
    status,
};
use crate::{
    api::{CarerixConnection, DeletionPolicy},
    carerix,
    connection::{CredentialsError, key_of, load_credentials},
};

/// Consecutive failed removals after which the deletion is reported as blocked.
pub const MAX_ATTEMPTS: u32 = 5;

/// Whether the operator can have created anything in Carerix for `obj`.
pub fn may_have_created_anything(obj: &CarerixConnection) -> bool {
    let validated = obj
        .status
        .as_ref()
        .and_then(|s| s.credentials.as_ref())
        .is_some_and(|c| c.secret_resource_version.is_some() || !c.scopes.is_empty());
    validated || recorded_id(obj).is_some()
}

/// The finalizer's cleanup.
///
/// # Errors
/// [`Error::CleanupBlocked`] (after writing why) or [`Error::Cleanup`] to retry with backoff.
pub async fn cleanup(obj: Arc<CarerixConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&obj);
    ctx.sync.stop(&obj).await;
    if obj.spec.deletion_policy == DeletionPolicy::Orphan {
        info!(connection = %key, "deletionPolicy Orphan: leaving the webhooks in Carerix");
        ctx.forget(&obj).await;
        return Ok(Action::await_change());
    }
    if !may_have_created_anything(&obj) {
        info!(connection = %key, "credentials never validated and no application recorded: nothing to remove");
        ctx.forget(&obj).await;
        return Ok(Action::await_change());
    }
    let blocked = |why: String| async {
        status::write(&ctx, &obj, &status::cleanup_blocked(&obj, &why)).await?;
        Err::<Action, Error>(Error::CleanupBlocked { key: key.clone(), reason: why })
    };
    if let Err(Halt::Failed { failure, .. }) = check_spec(&ctx, &obj.spec) {
        return blocked(failure.part.message).await;
    }
    let ns = obj.namespace().unwrap_or_default();
    let creds = match load_credentials(&ctx.client, &ns, &obj.spec.credentials_secret_ref.name).await {
        Ok(c) => c,
        Err(CredentialsError::Unusable(problem)) => {
            return blocked(secret_failure(&ns, &problem).part.message).await;
        }
        Err(CredentialsError::Kube(source)) => {
            return Err(Error::Kube { action: "read the credentials Secret of", key, source });
        }
    };
    let carerix = ctx.carerix(&key, &obj.spec, &creds).await?;
    match remove(carerix.api.as_ref(), &obj).await {
        Ok(()) => {
            ctx.forget(&obj).await;
            Ok(Action::await_change())
        }
        Err(err) if err.kind().stalls() => {
            ctx.forget_client(&key).await;
            blocked(format!("Carerix refuses it ({})", sanitize(&err.to_string()))).await
        }
        Err(err) if ctx.backoffs.attempts(&key) + 1 >= MAX_ATTEMPTS => {
            blocked(format!(
                "Carerix failed {MAX_ATTEMPTS} times in a row ({}); the operator keeps trying with backoff",
                sanitize(&err.to_string())
            ))
            .await
        }
        Err(source) => Err(Error::Cleanup { key, source }),
    }
}

/// Removes our applications and their webhooks.
///
/// # Errors
/// When Carerix fails.
pub async fn remove(api: &dyn CarerixApi, obj: &CarerixConnection) -> Result<(), carerix::Error> {
    let me = api.client_id().to_string();
    for app in &application::find(api, obj).await? {
        let webhooks = match api.list_webhooks(&app.id).await {
            Ok(w) => w,
            Err(e) if e.kind() == carerix::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for w in webhooks.iter().filter(|w| owns(app, &me, w.created_by.as_deref())) {
            match api.delete_webhook(&app.id, &w.id).await {
                Ok(()) => {}
                Err(e) if e.kind() == carerix::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        match api.delete_application(&app.id).await {
            Ok(()) => info!(application = %app.id, "deleted the webhook application"),
            Err(e) if e.kind() == carerix::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
