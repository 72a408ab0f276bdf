//! An in-memory Carerix for the reconciler's table tests: applications and webhooks, a call log,
//! injected failures, and the switches of real tenants (a creator id unlike the client id, no
//! public key in answers, masked header values, a missing permission).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
};

use async_trait::async_trait;

use super::carerix_api::CarerixApi;
use crate::carerix::{Application, ApplicationId, Error, NewWebhook, Webhook, WebhookId, WebhookStatus};

/// The fake's state.
#[derive(Default)]
pub struct State {
    pub apps: BTreeMap<String, Application>,
    pub hooks: BTreeMap<String, Webhook>,
    /// Every call, e.g. `create_webhook`, in order.
    pub calls: Vec<String>,
    /// Errors returned by the next calls of an operation (`list_applications`, ...).
    pub failures: BTreeMap<String, VecDeque<Error>>,
    next_id: u32,
}

/// The fake Carerix.
pub struct FakeCarerix {
    pub client_id: String,
    /// The creator id Carerix records (default: the client id).
    pub creator_id: String,
    pub scopes: Vec<String>,
    /// Answers leave out the public key.
    pub hide_public_key: bool,
    /// Answers show header values as `********`.
    pub mask_headers: bool,
    /// Operations answered with a 403 that names no scope (a missing Webhooks permission).
    pub forbidden: Vec<&'static str>,
    /// Enabling a webhook leaves it as it was (a webhook Carerix keeps failing).
    pub refuse_enable: bool,
    pub state: Mutex<State>,
}

impl FakeCarerix {
    pub fn new() -> Self {
        FakeCarerix {
            client_id: "me.apps.carerix.io".into(),
            creator_id: "me.apps.carerix.io".into(),
            scopes: vec!["urn:cx/webhooks:data:manage".into(), "urn:cx/cx5Wrapper:data:manage".into()],
            hide_public_key: false,
            mask_headers: false,
            forbidden: vec![],
            refuse_enable: false,
            state: Mutex::new(State::default()),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next call of `operation` fail with `err`.
    pub fn fail_next(&self, operation: &str, err: Error) {
        self.lock().failures.entry(operation.to_string()).or_default().push_back(err);
    }

    /// An application made by someone else (or by us, with `creator` = our creator id).
    pub fn seed_application(&self, name: &str, creator: &str) -> ApplicationId {
        let mut s = self.lock();
        s.next_id += 1;
        let id = ApplicationId(format!("app-{}", s.next_id));
        s.apps.insert(
            id.0.clone(),
            Application {
                id: id.clone(),
                name: Some(name.into()),
                public_key: Some(format!("PEM-{}", id.0)),
                created_by: Some(creator.into()),
            },
        );
        id
    }

    /// Sets the state of a webhook, as Carerix would after failing deliveries.
    pub fn set_status(&self, id: &str, status: WebhookStatus) {
        if let Some(h) = self.lock().hooks.get_mut(id) {
            h.status = status;
        }
    }

    pub fn webhooks(&self) -> Vec<Webhook> {
        self.lock().hooks.values().cloned().collect()
    }

    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    fn enter(&self, operation: &str) -> Result<(), Error> {
        let mut s = self.lock();
        s.calls.push(operation.to_string());
        if let Some(err) = s.failures.get_mut(operation).and_then(VecDeque::pop_front) {
            return Err(err);
        }
        if self.forbidden.contains(&operation) {
            return Err(Error::Api {
                operation: format!("webhooks.{operation}"),
                status: 403,
                message: Some("Forbidden".into()),
                retry_after: None,
            });
        }
        Ok(())
    }

    fn show_app(&self, app: &Application) -> Application {
        let mut a = app.clone();
        if self.hide_public_key {
            a.public_key = None;
        }
        a
    }

    fn show_hook(&self, hook: &Webhook) -> Webhook {
        let mut h = hook.clone();
        if self.mask_headers {
            for (_, v) in &mut h.custom_headers {
                *v = "********".into();
            }
        }
        h
    }

    fn not_found(operation: &str) -> Error {
        Error::Api {
            operation: format!("webhooks.{operation}"),
            status: 404,
            message: None,
            retry_after: None,
        }
    }
}

#[async_trait]
impl CarerixApi for FakeCarerix {
    fn client_id(&self) -> &str {
        &self.client_id
    }

    async fn scopes(&self) -> Result<Vec<String>, Error> {
        self.enter("token")?;
        Ok(self.scopes.clone())
    }

    async fn list_applications(&self) -> Result<Vec<Application>, Error> {
        self.enter("list_applications")?;
        Ok(self.lock().apps.values().map(|a| self.show_app(a)).collect())
    }

    async fn get_application(&self, id: &ApplicationId) -> Result<Option<Application>, Error> {
        self.enter("get_application")?;
        Ok(self.lock().apps.get(id.as_str()).map(|a| self.show_app(a)))
    }

    async fn create_application(&self, name: &str) -> Result<Application, Error> {
        self.enter("create_application")?;
        let id = self.seed_application(name, &self.creator_id);
        let app = self
            .lock()
            .apps
            .get(id.as_str())
            .cloned()
            .ok_or_else(|| Self::not_found("create_application"))?;
        Ok(self.show_app(&app))
    }

    async fn delete_application(&self, id: &ApplicationId) -> Result<(), Error> {
        self.enter("delete_application")?;
        let mut s = self.lock();
        s.apps.remove(id.as_str()).ok_or_else(|| Self::not_found("delete_application"))?;
        s.hooks.retain(|_, h| h.application_id != *id);
        Ok(())
    }

    async fn list_webhooks(&self, application: &ApplicationId) -> Result<Vec<Webhook>, Error> {
        self.enter("list_webhooks")?;
        let s = self.lock();
        if !s.apps.contains_key(application.as_str()) {
            return Err(Self::not_found("list_webhooks"));
        }
        Ok(s.hooks.values().filter(|h| h.application_id == *application).map(|h| self.show_hook(h)).collect())
    }

    async fn create_webhook(
        &self,
        application: &ApplicationId,
        webhook: &NewWebhook,
    ) -> Result<Webhook, Error> {
        self.enter("create_webhook")?;
        let mut s = self.lock();
        if !s.apps.contains_key(application.as_str()) {
            return Err(Self::not_found("create_webhook"));
        }
        s.next_id += 1;
        let hook = Webhook {
            id: WebhookId(format!("hook-{}", s.next_id)),
            application_id: application.clone(),
            url: webhook.url.clone(),
            event_types: webhook.event_types.clone(),
            custom_headers: webhook.custom_headers.clone(),
            status: WebhookStatus::Disabled,
            created_by: Some(self.creator_id.clone()),
        };
        s.hooks.insert(hook.id.0.clone(), hook.clone());
        Ok(self.show_hook(&hook))
    }

    async fn delete_webhook(&self, _application: &ApplicationId, id: &WebhookId) -> Result<(), Error> {
        self.enter("delete_webhook")?;
        self.lock().hooks.remove(id.as_str()).map(drop).ok_or_else(|| Self::not_found("delete_webhook"))
    }

    async fn enable_webhook(&self, _application: &ApplicationId, id: &WebhookId) -> Result<Webhook, Error> {
        self.enter("enable_webhook")?;
        let mut s = self.lock();
        let hook = s.hooks.get_mut(id.as_str()).ok_or_else(|| Self::not_found("enable_webhook"))?;
        if !self.refuse_enable {
            hook.status = WebhookStatus::Enabled;
        }
        let hook = hook.clone();
        drop(s);
        Ok(self.show_hook(&hook))
    }
}
