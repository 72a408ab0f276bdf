//! Step "ensure application": find our webhook application in Carerix, or create it.
//!
//! Ours is, first, the one whose id is recorded in status (read by id, whoever Carerix says
//! created it), then one with our name ([`application_name`]). The creator relation
//! (`_createdBy._id`) is only a cross-check when adopting by name: an application with our name
//! is adopted when Carerix records no creator, or the client id, or the same creator as the
//! recorded application; so a Carerix that records another id than the client id still works,
//! and another client's application of the same name is never taken over.

use super::carerix_api::CarerixApi;
use crate::{
    api::CarerixConnection,
    carerix::{self, Application, ApplicationId},
    connection::application_name,
};

/// The application id recorded in status.
pub fn recorded_id(obj: &CarerixConnection) -> Option<ApplicationId> {
    obj.status
        .as_ref()
        .and_then(|s| s.webhooks.as_ref())
        .and_then(|w| w.application_id.clone())
        .map(ApplicationId)
}

/// Our applications for `obj`, the recorded one first.
///
/// # Errors
/// When Carerix fails.
pub async fn find(api: &dyn CarerixApi, obj: &CarerixConnection) -> Result<Vec<Application>, carerix::Error> {
    let name = application_name(obj);
    let mut ours = Vec::new();
    if let Some(id) = recorded_id(obj) {
        match api.get_application(&id).await {
            Ok(Some(app)) => ours.push(app),
            Ok(None) => {}
            Err(e) if e.kind() == carerix::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let known_creator = ours.first().and_then(|a| a.created_by.clone());
    let me = api.client_id().to_string();
    for app in api.list_applications().await? {
        if ours.iter().any(|o| o.id == app.id) || app.name.as_deref() != Some(name.as_str()) {
            continue;
        }
        let creator_ok = match app.created_by.as_deref() {
            None => true,
            Some(c) => c == me || known_creator.as_deref() == Some(c),
        };
        if creator_ok {
            ours.push(app);
        }
    }
    Ok(ours)
}

/// Our application, created when missing and `wanted`; `None` when none exists and none is wanted.
///
/// # Errors
/// When Carerix fails.
pub async fn ensure(
    api: &dyn CarerixApi,
    obj: &CarerixConnection,
    wanted: bool,
) -> Result<Option<Application>, carerix::Error> {
    let found = find(api, obj).await?.into_iter().next();
    let app = match found {
        Some(app) => app,
        None if wanted => {
            let created = api.create_application(&application_name(obj)).await?;
            tracing::info!(application = %created.id, "created the webhook application");
            created
        }
        None => return Ok(None),
    };
    if app.public_key.is_some() {
        return Ok(Some(app));
    }
    // Lists may leave the key out; ask for the application itself with its fields.
    let key = match api.get_application(&app.id).await {
        Ok(Some(full)) => full.public_key,
        Ok(None) => None,
        Err(e) if e.kind() == carerix::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(Some(Application { public_key: key, ..app }))
}

/// Whether a webhook in our application is ours to change: created by our client, by the same
/// creator as the application, or with no creator recorded.
pub fn owns(app: &Application, client_id: &str, created_by: Option<&str>) -> bool {
    match created_by {
        None => true,
        Some(c) => c == client_id || app.created_by.as_deref() == Some(c),
    }
}
