//! The webhooks management REST API (`{api_url}/webhooks/v1/applications[...]`).
//!
//! Applications hold webhooks; each application has its own key pair, whose public key verifies
//! the `Cx-Signature` of deliveries. Reading is tolerant: ids may come as `_id` or `id` (strings
//! or numbers), lists as a bare array or a page object `{items: [...]}` (further pages are
//! followed), filters as `{eventType}` or `{type}`. There is no update endpoint: a change is
//! delete and create. Delivery verification is not part of this module.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::{ApiRequest, ApiResponse, CarerixClient, join};
use super::error::{Error, Result};

/// Fields asked for when listing or reading applications.
const APPLICATION_FIELDS: &str = "name,signatureVerification,_createdBy";
/// Fields asked for when listing or reading webhooks.
const WEBHOOK_FIELDS: &str = "filters,url,status,customHeaders,_createdBy";
/// Upper bound of pages followed in one list call (guards against a server that never ends).
const MAX_PAGES: u32 = 1000;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name(value)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name(value.to_owned())
            }
        }
    };
}

id_type!(
    /// The id of a webhook application (a UUID).
    ApplicationId
);
id_type!(
    /// The id of a webhook (a UUID).
    WebhookId
);

/// A webhook application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Its id.
    pub id: ApplicationId,
    /// Its name (`None` when Carerix did not return it).
    pub name: Option<String>,
    /// The PEM public key that verifies delivery signatures (`signatureVerification.publicKey`).
    pub public_key: Option<String>,
    /// The id of the client that created it (`_createdBy._id`), when returned.
    pub created_by: Option<String>,
}

/// The state of a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WebhookStatus {
    /// Deliveries are sent.
    Enabled,
    /// Deliveries are not sent.
    Disabled,
    /// Carerix reports an internal failure.
    Error,
    /// A status this client does not know.
    Unknown(String),
}

impl WebhookStatus {
    fn parse(value: &str) -> Self {
        match value.to_ascii_lowercase().as_str() {
            "enabled" => WebhookStatus::Enabled,
            "disabled" => WebhookStatus::Disabled,
            "error" => WebhookStatus::Error,
            _ => WebhookStatus::Unknown(value.to_owned()),
        }
    }

    /// The wire value (`enabled`, `disabled`, `error`, or the unknown value).
    pub fn as_str(&self) -> &str {
        match self {
            WebhookStatus::Enabled => "enabled",
            WebhookStatus::Disabled => "disabled",
            WebhookStatus::Error => "error",
            WebhookStatus::Unknown(s) => s,
        }
    }
}

impl fmt::Display for WebhookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook. Its `Debug` output does not show custom header values (they are secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: WebhookId,
    /// The application it belongs to.
    pub application_id: ApplicationId,
    /// Where deliveries go.
    pub url: String,
    /// The event types it subscribes to (`cremployee:updated`, ...), from its filters.
    pub event_types: Vec<String>,
    /// Custom headers sent with every delivery (name, value).
    pub custom_headers: Vec<(String, String)>,
    /// Its state.
    pub status: WebhookStatus,
    /// The id of the client that created it (`_createdBy._id`), when returned.
    pub created_by: Option<String>,
}

/// A webhook to create. Its `Debug` output does not show custom header values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct NewWebhook {
    /// Where deliveries go.
    pub url: String,
    /// The event types to subscribe to, each becoming a filter `{"eventType": ...}`.
    pub event_types: Vec<String>,
    /// Custom headers sent with every delivery (name, value).
    pub custom_headers: Vec<(String, String)>,
}

/// Header names with their values replaced, for `Debug`.
struct RedactedHeaders<'a>(&'a [(String, String)]);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| (name, "[redacted]"))).finish()
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("application_id", &self.application_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("custom_headers", &RedactedHeaders(&self.custom_headers))
            .field("status", &self.status)
            .field("created_by", &self.created_by)
            .finish()
    }
}

impl fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("custom_headers", &RedactedHeaders(&self.custom_headers))
            .finish()
    }
}

impl NewWebhook {
    /// The request body (`{"_kind":"Webhook","url",...}`).
    fn body(&self) -> Value {
        json!({
            "_kind": "Webhook",
            "url": self.url,
            "filters": self.event_types.iter().map(|t| json!({ "eventType": t })).collect::<Vec<_>>(),
            "customHeaders": self
                .custom_headers
                .iter()
                .map(|(name, value)| json!({ "name": name, "value": value }))
                .collect::<Vec<_>>(),
        })
    }
}

// ---- tolerant wire forms ----

/// An id given as a string or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawId {
    Str(String),
    Num(serde_json::Number),
}

impl RawId {
    fn into_string(self) -> String {
        match self {
            RawId::Str(s) => s,
            RawId::Num(n) => n.to_string(),
        }
    }
}

/// A reference: `{"_id": ...}` / `{"id": ...}` or a bare id.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRef {
    Object(RawIds),
    Bare(RawId),
}

impl RawRef {
    fn into_id(self) -> Option<String> {
        match self {
            RawRef::Object(ids) => ids.id(),
            RawRef::Bare(id) => Some(id.into_string()),
        }
    }
}

#[derive(Deserialize)]
struct RawIds {
    #[serde(rename = "_id", default)]
    underscore_id: Option<RawId>,
    #[serde(default)]
    id: Option<RawId>,
}

impl RawIds {
    fn id(self) -> Option<String> {
        self.underscore_id.or(self.id).map(RawId::into_string)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawApplication {
    #[serde(flatten)]
    ids: RawIds,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    signature_verification: Option<RawSignatureVerification>,
    #[serde(rename = "_createdBy", default)]
    created_by: Option<RawRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSignatureVerification {
    #[serde(default)]
    public_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawWebhook {
    #[serde(flatten)]
    ids: RawIds,
    #[serde(default)]
    application: Option<RawRef>,
    #[serde(default)]
    application_id: Option<RawId>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    filters: Option<Vec<RawFilter>>,
    #[serde(default)]
    custom_headers: Option<Vec<RawHeader>>,
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "_createdBy", default)]
    created_by: Option<RawRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    #[serde(default)]
    event_type: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

/// A list answer: a bare array or a page object.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawList {
    Array(Vec<Value>),
    #[serde(rename_all = "camelCase")]
    Page {
        #[serde(default)]
        items: Option<Vec<Value>>,
        #[serde(default)]
        total_pages: Option<u32>,
    },
}

fn parse_application(operation: &str, value: Value) -> Result<Application> {
    let raw: RawApplication = serde_json::from_value(value).map_err(|e| Error::decode(operation, e))?;
    let id = raw.ids.id().ok_or_else(|| Error::decode(operation, "application without _id"))?;
    Ok(Application {
        id: ApplicationId(id),
        name: raw.name,
        public_key: raw.signature_verification.and_then(|s| s.public_key),
        created_by: raw.created_by.and_then(RawRef::into_id),
    })
}

fn parse_webhook(operation: &str, value: Value, application: &ApplicationId) -> Result<Webhook> {
    let raw: RawWebhook = serde_json::from_value(value).map_err(|e| Error::decode(operation, e))?;
    let id = raw.ids.id().ok_or_else(|| Error::decode(operation, "webhook without _id"))?;
    let application_id = raw
        .application
        .and_then(RawRef::into_id)
        .or_else(|| raw.application_id.map(RawId::into_string))
        .map_or_else(|| application.clone(), ApplicationId);
    Ok(Webhook {
        id: WebhookId(id),
        application_id,
        url: raw.url.unwrap_or_default(),
        event_types: raw
            .filters
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.event_type.or(f.kind))
            .collect(),
        custom_headers: raw
            .custom_headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.name, h.value.unwrap_or_default()))
            .collect(),
        status: raw.status.as_deref().map_or(WebhookStatus::Unknown(String::new()), WebhookStatus::parse),
        created_by: raw.created_by.and_then(RawRef::into_id),
    })
}

/// Items and total pages of a list answer.
fn parse_list(operation: &str, body: &[u8]) -> Result<(Vec<Value>, u32)> {
    match serde_json::from_slice::<RawList>(body).map_err(|e| Error::decode(operation, e))? {
        RawList::Array(items) => Ok((items, 1)),
        RawList::Page { items, total_pages } => Ok((items.unwrap_or_default(), total_pages.unwrap_or(1))),
    }
}

fn parse_json(operation: &str, response: &ApiResponse) -> Result<Value> {
    serde_json::from_slice(&response.body).map_err(|e| Error::decode(operation, e))
}

/// The webhooks management API; get one with [`CarerixClient::webhooks`].
#[derive(Debug)]
pub struct WebhooksHandler<'c> {
    client: &'c CarerixClient,
}

impl<'c> WebhooksHandler<'c> {
    pub(crate) fn new(client: &'c CarerixClient) -> Self {
        WebhooksHandler { client }
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<url::Url> {
        let mut all = vec!["webhooks", "v1", "applications"];
        all.extend_from_slice(segments);
        let mut url = join(&self.client.inner.api_url, &all)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn send(
        &self,
        operation: &str,
        method: reqwest::Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<ApiResponse> {
        let idempotent = method != reqwest::Method::POST;
        self.client.execute(operation, ApiRequest { method, url, body, idempotent }).await
    }

    /// Reads every page of a list.
    async fn list_all(&self, operation: &str, segments: &[&str], fields: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut page = 0u32;
        loop {
            let page_string = page.to_string();
            let mut query = vec![("fields", fields)];
            if page > 0 {
                query.push(("page", page_string.as_str()));
            }
            let url = self.url(segments, &query)?;
            let response = self.send(operation, reqwest::Method::GET, url, None).await?;
            let (mut batch, total_pages) = parse_list(operation, &response.body)?;
            let empty = batch.is_empty();
            items.append(&mut batch);
            page += 1;
            if page >= total_pages || empty || page >= MAX_PAGES {
                return Ok(items);
            }
        }
    }

    /// Lists every application visible to the client (with name and public key).
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] (403 without the webhooks scope); [`Error::Decode`].
    pub async fn list_applications(&self) -> Result<Vec<Application>> {
        let operation = "webhooks.list_applications";
        self.list_all(operation, &[], APPLICATION_FIELDS)
            .await?
            .into_iter()
            .map(|v| parse_application(operation, v))
            .collect()
    }

    /// Creates an application named `name`; Carerix generates its key pair.
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`]; [`Error::Decode`]. Not retried after a timeout (it may
    /// have been created).
    pub async fn create_application(&self, name: &str) -> Result<Application> {
        let operation = "webhooks.create_application";
        let body = json!({ "_kind": "Application", "name": name });
        let response = self.send(operation, reqwest::Method::POST, self.url(&[], &[])?, Some(&body)).await?;
        parse_application(operation, parse_json(operation, &response)?)
    }

    /// Reads one application; `None` when it does not exist (404).
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] other than 404; [`Error::Decode`].
    pub async fn get_application(&self, id: &ApplicationId) -> Result<Option<Application>> {
        let operation = "webhooks.get_application";
        let url = self.url(&[id.as_str()], &[("fields", APPLICATION_FIELDS)])?;
        match self.send(operation, reqwest::Method::GET, url, None).await {
            Ok(response) => parse_application(operation, parse_json(operation, &response)?).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes an application and its webhooks (owner only).
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`]: 404 when it is already gone (see
    /// [`Error::is_not_found`]), 403 when the client is not the owner.
    pub async fn delete_application(&self, id: &ApplicationId) -> Result<()> {
        let url = self.url(&[id.as_str()], &[])?;
        self.send("webhooks.delete_application", reqwest::Method::DELETE, url, None).await.map(drop)
    }

    /// Lists the webhooks of an application.
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] (404 for an unknown application); [`Error::Decode`].
    pub async fn list_webhooks(&self, application: &ApplicationId) -> Result<Vec<Webhook>> {
        let operation = "webhooks.list_webhooks";
        self.list_all(operation, &[application.as_str(), "webhooks"], WEBHOOK_FIELDS)
            .await?
            .into_iter()
            .map(|v| parse_webhook(operation, v, application))
            .collect()
    }

    /// Reads one webhook; `None` when it does not exist (404).
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] other than 404; [`Error::Decode`].
    pub async fn get_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<Option<Webhook>> {
        let operation = "webhooks.get_webhook";
        let url =
            self.url(&[application.as_str(), "webhooks", id.as_str()], &[("fields", WEBHOOK_FIELDS)])?;
        match self.send(operation, reqwest::Method::GET, url, None).await {
            Ok(response) => {
                parse_webhook(operation, parse_json(operation, &response)?, application).map(Some)
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a webhook in an application.
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] (400 for a rejected URL or filter, 404 for an unknown
    /// application); [`Error::Decode`]. Not retried after a timeout (it may have been created).
    pub async fn create_webhook(&self, application: &ApplicationId, webhook: &NewWebhook) -> Result<Webhook> {
        let operation = "webhooks.create_webhook";
        let url = self.url(&[application.as_str(), "webhooks"], &[])?;
        let body = webhook.body();
        let response = self.send(operation, reqwest::Method::POST, url, Some(&body)).await?;
        parse_webhook(operation, parse_json(operation, &response)?, application)
    }

    /// Deletes a webhook (owner only).
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`]: 404 when it is already gone, 403 when the client is not
    /// the owner.
    pub async fn delete_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<()> {
        let url = self.url(&[application.as_str(), "webhooks", id.as_str()], &[])?;
        self.send("webhooks.delete_webhook", reqwest::Method::DELETE, url, None).await.map(drop)
    }

    /// Enables a webhook and returns it.
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] (403 not the owner, 404); [`Error::Decode`].
    pub async fn enable_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<Webhook> {
        self.switch(application, id, "enable", "webhooks.enable_webhook").await
    }

    /// Disables a webhook and returns it.
    ///
    /// # Errors
    ///
    /// The token errors; [`Error::Api`] (403 not the owner, 404); [`Error::Decode`].
    pub async fn disable_webhook(&self, application: &ApplicationId, id: &WebhookId) -> Result<Webhook> {
        self.switch(application, id, "disable", "webhooks.disable_webhook").await
    }

    async fn switch(
        &self,
        application: &ApplicationId,
        id: &WebhookId,
        action: &str,
        operation: &str,
    ) -> Result<Webhook> {
        let url = self.url(&[application.as_str(), "webhooks", id.as_str(), action], &[])?;
        // Enabling or disabling twice is harmless: retry like an idempotent request.
        let response = self
            .client
            .execute(
                operation,
                ApiRequest { method: reqwest::Method::POST, url, body: None, idempotent: true },
            )
            .await?;
        if response.body.iter().all(u8::is_ascii_whitespace) {
            // Tolerate an empty answer: read the webhook back.
            return self
                .get_webhook(application, id)
                .await?
                .ok_or_else(|| Error::decode(operation, "webhook vanished after the switch"));
        }
        parse_webhook(operation, parse_json(operation, &response)?, application)
    }
}

impl CarerixClient {
    /// The webhooks management REST API.
    pub fn webhooks(&self) -> WebhooksHandler<'_> {
        WebhooksHandler::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_id() -> ApplicationId {
        ApplicationId::from("app-1")
    }

    #[test]
    fn application_with_underscore_id_and_key() {
        let app = parse_application(
            "t",
            json!({ "_kind": "Application", "_id": "6fc0", "name": "operator",
                    "signatureVerification": { "algorithm": "SHA256withRSA", "publicKey": "-----BEGIN PUBLIC KEY-----x" },
                    "_createdBy": { "_id": "abc.apps.carerix.io", "_kind": "ServiceAccount" } }),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(app.id, ApplicationId::from("6fc0"));
        assert_eq!(app.name.as_deref(), Some("operator"));
        assert_eq!(app.public_key.as_deref(), Some("-----BEGIN PUBLIC KEY-----x"));
        assert_eq!(app.created_by.as_deref(), Some("abc.apps.carerix.io"));
    }

    #[test]
    fn application_with_plain_id() {
        let app = parse_application("t", json!({ "id": 42, "_kind": "Application" }))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(app.id.as_str(), "42");
        assert_eq!(app.public_key, None);
        assert!(parse_application("t", json!({ "name": "x" })).is_err());
    }

    #[test]
    fn webhook_full_and_tolerant() {
        let hook = parse_webhook(
            "t",
            json!({ "_kind": "Webhook", "_id": "w1", "application": { "_id": "app-2", "_kind": "WebhookApplication" },
                    "url": "https://example.test/hook", "filters": [ { "eventType": "cremployee:created" }, { "type": "crmatch:updated" } ],
                    "customHeaders": [ { "name": "x-api-key", "value": "hunter2" } ], "status": "ENABLED",
                    "_createdBy": { "_id": "client-1", "_kind": "ServiceAccount" } }),
            &app_id(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hook.id.as_str(), "w1");
        assert_eq!(hook.application_id.as_str(), "app-2");
        assert_eq!(hook.event_types, vec!["cremployee:created", "crmatch:updated"]);
        assert_eq!(hook.status, WebhookStatus::Enabled);
        assert_eq!(hook.created_by.as_deref(), Some("client-1"));
        assert_eq!(hook.custom_headers[0].1, "hunter2");
        let debug = format!("{hook:?}");
        assert!(!debug.contains("hunter2") && debug.contains("x-api-key"), "{debug}");

        let minimal = parse_webhook("t", json!({ "id": "w2", "status": "paused" }), &app_id())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(minimal.application_id, app_id());
        assert_eq!(minimal.status, WebhookStatus::Unknown("paused".into()));
        assert!(minimal.event_types.is_empty() && minimal.custom_headers.is_empty());
    }

    #[test]
    fn lists_as_array_or_page() {
        let (items, pages) =
            parse_list("t", br#"[{"_id":"a"},{"id":"b"}]"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((items.len(), pages), (2, 1));
        let (items, pages) =
            parse_list("t", br#"{"items":[{"_id":"a"}],"page":0,"size":1,"totalElements":3,"totalPages":3}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((items.len(), pages), (1, 3));
        let (items, pages) = parse_list("t", br#"{"items":null}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((items.len(), pages), (0, 1));
        assert!(parse_list("t", b"\"nope\"").is_err());
    }

    #[test]
    fn new_webhook_body_and_debug() {
        let new = NewWebhook {
            url: "https://example.test/hook".into(),
            event_types: vec!["cremployee:updated".into()],
            custom_headers: vec![("x-api-key".into(), "hunter2".into())],
        };
        assert_eq!(
            new.body(),
            json!({ "_kind": "Webhook", "url": "https://example.test/hook",
                    "filters": [ { "eventType": "cremployee:updated" } ],
                    "customHeaders": [ { "name": "x-api-key", "value": "hunter2" } ] })
        );
        assert!(!format!("{new:?}").contains("hunter2"));
    }
}
