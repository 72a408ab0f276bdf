//! Step "ensure webhooks": resolve the desired webhooks from the spec, then make our
//! application's webhooks equal to them (re-enable, create, and only then delete, so deliveries
//! never gap), and report what was repaired.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tracing::debug;

use super::{
    Context, Error,
    application::{self, owns},
    carerix_api::CarerixApi,
    failure::{Failure, Halt, Stage},
    plan::{
        self, ActualWebhook, DesiredWebhook, WebhookStatus, headers_hash, normalize_events, normalize_headers,
    },
};
use crate::{
    api::{CarerixConnection, WebhookState},
    carerix::{self, NewWebhook, WebhookId},
    conditions::{Reason, reason::message},
    connection::{key_of, secret_value},
};

/// A change made to Carerix that the spec did not ask for: Event reason and note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub reason: &'static str,
    pub note: String,
}

/// What the webhooks step found and did.
#[derive(Clone, Debug, Default)]
pub struct WebhooksReport {
    pub application_id: Option<String>,
    /// The application's public key; `None` when Carerix never returned it.
    pub public_key: Option<String>,
    pub states: Vec<WebhookState>,
    pub repaired: Vec<Repair>,
}

impl WebhooksReport {
    /// Desired webhooks that are enabled in Carerix.
    pub fn ready(&self) -> usize {
        self.states.iter().filter(|s| s.state == WebhookStatus::Enabled.as_str()).count()
    }
}

/// Resolves the desired webhooks: URL defaults and header values from Secrets.
///
/// # Errors
/// [`Halt::Failed`] when the spec cannot work as written or a header Secret is missing.
pub async fn desired(ctx: &Context, obj: &CarerixConnection) -> Result<Vec<DesiredWebhook>, Halt> {
    let ns = obj.namespace().unwrap_or_default();
    let key = key_of(obj);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::new();
    let mut cache: HashMap<String, Option<Secret>> = HashMap::new();
    let stop = |failure| Halt::Failed { stage: Stage::Webhooks, failure, credentials: None };
    for w in &obj.spec.webhooks {
        let url = match (&w.url, &ctx.settings.receiver_base_url) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => format!("{}/webhooks/{ns}/{}", base.trim_end_matches('/'), obj.name_any()),
            (None, None) => {
                return Err(stop(Failure::stall(Reason::InvalidSpec, message::webhook_without_url(&w.name))));
            }
        };
        let mut headers = Vec::new();
        for h in &w.custom_headers {
            let sref = &h.value_from.secret_key_ref;
            if !cache.contains_key(&sref.name) {
                let s = secrets.get_opt(&sref.name).await.map_err(|source| Error::Kube {
                    action: "read a custom header Secret of",
                    key: key.clone(),
                    source,
                })?;
                cache.insert(sref.name.clone(), s);
            }
            let value =
                cache.get(&sref.name).and_then(|s| s.as_ref()).and_then(|s| secret_value(s, &sref.key));
            let Some(v) = value else {
                let text = message::header_secret_not_found(&h.name, &w.name, &sref.key, &ns, &sref.name);
                return Err(stop(Failure::stall(Reason::SecretNotFound, text)));
            };
            headers.push((h.name.clone(), v));
        }
        out.push(DesiredWebhook {
            name: w.name.clone(),
            url,
            events: normalize_events(&w.events),
            headers: normalize_headers(headers),
        });
    }
    Ok(out)
}

/// Finds (or creates) our application and makes its webhooks equal to `desired`.
///
/// # Errors
/// When Carerix fails.
pub async fn ensure(
    api: &dyn CarerixApi,
    obj: &CarerixConnection,
    desired: &[DesiredWebhook],
) -> Result<WebhooksReport, carerix::Error> {
    let Some(app) = application::ensure(api, obj, !desired.is_empty()).await? else {
        return Ok(WebhooksReport::default());
    };
    let me = api.client_id().to_string();
    let actual = api.list_webhooks(&app.id).await?;
    let actual_plain: Vec<ActualWebhook> = actual
        .iter()
        .map(|w| ActualWebhook {
            id: w.id.as_str().to_string(),
            url: w.url.clone(),
            events: w.event_types.clone(),
            headers: w.custom_headers.clone(),
            status: w.status.clone(),
            owned: owns(&app, &me, w.created_by.as_deref()),
        })
        .collect();
    let known = known_items(obj);
    let known_hashes: HashMap<String, String> =
        known.iter().filter_map(|i| Some((i.id.clone()?, i.headers_hash.clone()?))).collect();
    let plan = plan::plan(desired, &actual_plain, &known_hashes);
    debug!(?plan, "webhook plan");
    let first_time = actual.is_empty();
    let mut repaired = Vec::new();
    // (id, state, headers hash) per spec name.
    let mut ids: HashMap<String, (String, WebhookStatus, Option<String>)> = HashMap::new();
    let hash_of = |name: &str| known.iter().find(|k| k.name == name).and_then(|k| k.headers_hash.clone());
    for (name, id) in &plan.keep {
        ids.insert(name.clone(), (id.clone(), WebhookStatus::Enabled, hash_of(name)));
    }
    for (name, id, was) in &plan.enable {
        let enabled = api.enable_webhook(&app.id, &WebhookId::from(id.clone())).await?;
        repaired.push(Repair {
            reason: "WebhookReenabled",
            note: format!("re-enabled webhook {name} ({id}), which was {was} in Carerix"),
        });
        ids.insert(name.clone(), (id.clone(), enabled.status, hash_of(name)));
    }
    // Create the new ones first, so a changed webhook never leaves a gap in deliveries.
    for want in &plan.create {
        let new = NewWebhook {
            url: want.url.clone(),
            event_types: want.events.clone(),
            custom_headers: want.headers.clone(),
        };
        let created = api.create_webhook(&app.id, &new).await?;
        if let Some(repair) = classify_creation(&known, want, first_time) {
            repaired.push(repair);
        }
        let mut status = created.status.clone();
        if status != WebhookStatus::Enabled {
            status = api.enable_webhook(&app.id, &created.id).await?.status;
        }
        let hash = (!want.headers.is_empty()).then(|| headers_hash(&want.headers));
        ids.insert(want.name.clone(), (created.id.as_str().to_string(), status, hash));
    }
    for id in &plan.delete {
        match api.delete_webhook(&app.id, &WebhookId::from(id.clone())).await {
            Ok(()) => {}
            Err(e) if e.kind() == carerix::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let states = desired
        .iter()
        .map(|d| {
            let (id, state, headers_hash) = match ids.get(&d.name) {
                Some((id, status, hash)) => (Some(id.clone()), status.as_str().to_string(), hash.clone()),
                None => (None, "missing".to_string(), None),
            };
            WebhookState {
                name: d.name.clone(),
                id,
                url: Some(d.url.clone()),
                events: d.events.clone(),
                state,
                headers_hash,
            }
        })
        .collect();
    Ok(WebhooksReport {
        application_id: Some(app.id.as_str().to_string()),
        public_key: app.public_key.clone(),
        states,
        repaired,
    })
}

fn known_items(obj: &CarerixConnection) -> Vec<WebhookState> {
    obj.status.as_ref().and_then(|s| s.webhooks.as_ref()).map(|w| w.items.clone()).unwrap_or_default()
}

/// A creation is a repair when status knew the webhook with the same url and events (it vanished
/// or changed in Carerix), a replacement when the spec changed, and nothing when it is new.
fn classify_creation(known: &[WebhookState], want: &DesiredWebhook, first_time: bool) -> Option<Repair> {
    let k = known.iter().find(|i| i.name == want.name && i.id.is_some())?;
    if !first_time && k.url.as_deref() == Some(want.url.as_str()) && k.events == want.events {
        Some(Repair {
            reason: "WebhookRecreated",
            note: format!("re-created webhook {}, which was missing or different in Carerix", want.name),
        })
    } else {
        Some(Repair {
            reason: "WebhookReplaced",
            note: format!("replaced webhook {} to match the spec", want.name),
        })
    }
}
