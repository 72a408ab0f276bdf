//! The part of Carerix the reconciler uses, behind a small trait: the token's scopes and the
//! webhooks management API. [`CarerixClient`] implements it for real; the tests use an in-memory
//! fake (`fake.rs`) so the reconciler's decisions run as table tests without services.

use async_trait::async_trait;

use crate::carerix::{Application, ApplicationId, CarerixClient, Error, NewWebhook, Webhook, WebhookId};

/// The Carerix operations the reconciler needs.
#[async_trait]
pub trait CarerixApi: Send + Sync {
    /// The OAuth client id (the creator id Carerix records on what we create, normally).
    fn client_id(&self) -> &str;
    /// Gets a token (proving the credentials) and returns its scopes.
    async fn scopes(&self) -> Result<Vec<String>, Error>;
    /// Every application the client may read.
    async fn list_applications(&self) -> Result<Vec<Application>, Error>;
    /// One application by id, `None` when it does not exist.
    async fn get_application(&self, id: &ApplicationId) -> Result<Option<Application>, Error>;
    /// Creates an application.
    async fn create_application(&self, name: &str) -> Result<Application, Error>;
    /// Deletes an application.
    async fn delete_application(&self, id: &ApplicationId) -> Result<(), Error>;
    /// The webhooks of an application.
    async fn list_webhooks(&self, application: &ApplicationId) -> Result<Vec<Webhook>, Error>;
    /// Creates a webhook.
    async fn create_webhook(
        &self,
        application: &ApplicationId,
        webhook: &NewWebhook,
    ) -> Result<Webhook, Error>;
    /// Deletes a webhook.
    async fn delete_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<(), Error>;
    /// Enables a webhook.
    async fn enable_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<Webhook, Error>;
}

#[async_trait]
impl CarerixApi for CarerixClient {
    fn client_id(&self) -> &str {
        CarerixClient::client_id(self)
    }

    async fn scopes(&self) -> Result<Vec<String>, Error> {
        Ok(self.token_info().await?.scopes)
    }

    async fn list_applications(&self) -> Result<Vec<Application>, Error> {
        self.webhooks().list_applications().await
    }

    async fn get_application(&self, id: &ApplicationId) -> Result<Option<Application>, Error> {
        self.webhooks().get_application(id).await
    }

    async fn create_application(&self, name: &str) -> Result<Application, Error> {
        self.webhooks().create_application(name).await
    }

    async fn delete_application(&self, id: &ApplicationId) -> Result<(), Error> {
        self.webhooks().delete_application(id).await
    }

    async fn list_webhooks(&self, application: &ApplicationId) -> Result<Vec<Webhook>, Error> {
        self.webhooks().list_webhooks(application).await
    }

    async fn create_webhook(
        &self,
        application: &ApplicationId,
        webhook: &NewWebhook,
    ) -> Result<Webhook, Error> {
        self.webhooks().create_webhook(application, webhook).await
    }

    async fn delete_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<(), Error> {
        self.webhooks().delete_webhook(application, id).await
    }

    async fn enable_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<Webhook, Error> {
        self.webhooks().enable_webhook(application, id).await
    }
}
