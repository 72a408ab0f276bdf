//! The `CarerixConnection` resource: spec, status and the names that tools rely on.
//!
//! Everything a user writes is validated by the API server from the schema generated here
//! (OpenAPI patterns and CEL rules with human messages), so a bad manifest is refused by
//! `kubectl apply` instead of being accepted and failing later. The doc comments become
//! `kubectl explain` output. What the operator does with the resource lives in `controller`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema, core::Duration};
use serde::{Deserialize, Serialize};

use crate::carerix::Entity;

/// API group of the resource.
pub const GROUP: &str = "hiredata.io";
/// Finalizer that guards cleanup of the Carerix webhooks.
pub const FINALIZER: &str = "hiredata.io/carerix-cleanup";
/// Annotation that requests an immediate reconcile; its value is echoed in
/// `status.lastHandledReconcileAt` once handled.
pub const RECONCILE_REQUESTED_AT: &str = "hiredata.io/reconcile-requested-at";
/// Field manager used for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "carerix-operator";
/// Default identity host, used when `spec.identityUrl` is omitted.
pub const DEFAULT_IDENTITY_URL: &str = "https://id.carerix.io";
/// Default API host, used when `spec.apiUrl` is omitted.
pub const DEFAULT_API_URL: &str = "https://api.carerix.io";

const DURATION_RULE: &str =
    "self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$') && duration(self) >= duration('1s')";

/// A connection between this cluster and one Carerix tenant: the credentials to use, the webhook
/// subscriptions to keep in place, and the data to sync into PostgreSQL.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hiredata.io",
    version = "v1alpha1",
    kind = "CarerixConnection",
    plural = "carerixconnections",
    namespaced,
    status = "CarerixConnectionStatus",
    shortname = "cxc",
    category = "hiredata",
    category = "carerix",
    doc = "CarerixConnection connects one Carerix tenant: credentials, webhook subscriptions and data sync.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message"
    ),
    printcolumn(name = "Webhooks", type_ = "string", json_path = ".status.webhooks.summary"),
    printcolumn(name = "Records", type_ = "integer", json_path = ".status.sync.records"),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.sync.lastSyncTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("the name of a CarerixConnection must be at most 63 characters")
)]
#[serde(rename_all = "camelCase")]
pub struct CarerixConnectionSpec {
    /// The Carerix application name: `acme` for `acme.carerix.net`. It is also the identity realm.
    /// Lowercase letters, digits and dashes only. It cannot be changed: create a new connection
    /// for another tenant.
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]*[a-z0-9])?$')").message("tenant must be the lowercase Carerix application name (acme for acme.carerix.net): lowercase letters, digits and dashes"),
        validation = Rule::new("self == oldSelf").message("tenant is immutable: create a new CarerixConnection for another tenant")
    )]
    #[schemars(length(max = 63))]
    pub tenant: String,

    /// The Secret in this namespace that holds the OAuth client credentials: keys `clientId` and
    /// `clientSecret` (a confidential client with the scopes `urn:cx/cx5Acl:data:manage`,
    /// `urn:cx/cx5Wrapper:data:manage` and `urn:cx/webhooks:data:manage`); an `apiKey` key is refused (see docs/carerix-setup.md).
    pub credentials_secret_ref: SecretReference,

    /// Base URL of the Carerix identity service that issues tokens for this tenant, for example
    /// `https://id-s4.carerix.io`. Shown in the tenant's OpenID configuration URL. Default
    /// `https://id.carerix.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s/]+(/.*)?$')").message("identityUrl must be an http(s) URL such as https://id-s4.carerix.io"))]
    #[schemars(length(max = 2048))]
    pub identity_url: Option<String>,

    /// Base URL of the Carerix API. Default `https://api.carerix.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s/]+(/.*)?$')").message("apiUrl must be an http(s) URL such as https://api.carerix.io"))]
    #[schemars(length(max = 2048))]
    pub api_url: Option<String>,

    /// How often the credentials and webhooks are re-checked and drift repaired (jittered by up
    /// to 10%). A Go duration such as `30s`, `10m` or `1h`. Default `10m`.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("interval must be a duration of at least 1s, such as 30s, 10m or 1h"))]
    #[schemars(length(max = 32))]
    pub interval: Duration,

    /// Stop acting on Carerix: no request is sent while true. Deletion still works.
    #[serde(default)]
    pub suspend: bool,

    /// What happens in Carerix when this resource is deleted: `Delete` removes the operator's
    /// webhook application and webhooks; `Orphan` leaves them in place.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The webhook subscriptions to keep in Carerix. Names must be unique.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self.all(w, self.exists_one(o, o.name == w.name))").message("webhook names must be unique within a CarerixConnection")
    )]
    #[schemars(length(max = 50))]
    pub webhooks: Vec<WebhookSpec>,

    /// Data sync into PostgreSQL. Omit to only manage webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSpec>,
}

fn default_interval() -> Duration {
    std::time::Duration::from_secs(600).into()
}

fn default_sync_interval() -> Duration {
    std::time::Duration::from_secs(300).into()
}

fn default_full_compare_interval() -> Duration {
    std::time::Duration::from_secs(6 * 3600).into()
}

fn default_schema() -> String {
    "carerix".to_string()
}

/// A reference to a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a Secret name is required"))]
    #[schemars(length(max = 253))]
    pub name: String,
}

/// A key in a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a Secret name is required"))]
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a Secret key is required"))]
    #[schemars(length(max = 253))]
    pub key: String,
}

/// What happens in Carerix when the connection is deleted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Remove the operator's webhook application and its webhooks from Carerix.
    #[default]
    Delete,
    /// Leave the application and webhooks in Carerix.
    Orphan,
}

/// One webhook subscription in Carerix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// A name for this subscription, unique within the connection (lowercase, digits, dashes).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$')").message("webhook name must be lowercase letters, digits and dashes (at most 63)"))]
    #[schemars(length(max = 63))]
    pub name: String,

    /// The events to subscribe to, as `<entity>:<action>`, for example `cremployee:created` or
    /// `crmatch:updated`. At least 1 and at most 10 (Carerix's limit per webhook).
    #[x_kube(
        validation = Rule::new("self.size() >= 1").message("a webhook needs at least one event"),
        validation = Rule::new("self.size() <= 10").message("at most 10 events per webhook: Carerix accepts no more filters on one webhook"),
        validation = Rule::new("self.all(e, e.matches('^[a-z][a-z0-9]*:[a-z]+$'))").message("events look like <entity>:<action> in lowercase, for example cremployee:created or crmatch:updated"),
        validation = Rule::new("self.all(e, self.exists_one(o, o == e))").message("events within a webhook must be unique")
    )]
    #[schemars(length(max = 20), inner(length(max = 64)))]
    pub events: Vec<String>,

    /// Where Carerix delivers the events. Omitted: the operator's own receiver, which keeps the
    /// synced data fresh (`<receiver base URL>/webhooks/<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s/]+(/.*)?$')").message("url must be an http(s) URL"))]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,

    /// Extra headers Carerix sends with each delivery, with values taken from Secrets (for
    /// example an `x-api-key` your endpoint checks). `Cx-Signature`, `Cx-Payload-Schema-Version`
    /// and `Content-Type` are reserved by Carerix.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self.all(h, !(h.name.lowerAscii() in ['cx-signature', 'cx-payload-schema-version', 'content-type']))").message("Cx-Signature, Cx-Payload-Schema-Version and Content-Type are reserved by Carerix")
    )]
    #[schemars(length(max = 20))]
    pub custom_headers: Vec<CustomHeader>,
}

/// A header Carerix adds to each delivery.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomHeader {
    /// Header name.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9-]{1,100}$')").message("a header name is letters, digits and dashes"))]
    #[schemars(length(max = 100))]
    pub name: String,
    /// Where the header's value comes from.
    pub value_from: HeaderValueSource,
}

/// The source of a header value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// A key of a Secret in the same namespace.
    pub secret_key_ref: SecretKeySelector,
}

/// Data sync settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// Which entities to sync: candidates, vacancies, companies, contacts, placements, matches,
    /// publications. Default: all of them.
    #[serde(default = "all_entities")]
    #[x_kube(validation = Rule::new("self.all(e, self.exists_one(o, o == e))").message("entities must be unique"))]
    #[schemars(length(max = 7))]
    pub entities: Vec<Entity>,

    /// Period of the incremental sync. Default `5m`.
    #[serde(default = "default_sync_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("sync.interval must be a duration of at least 1s, such as 30s, 5m or 1h"))]
    #[schemars(length(max = 32))]
    pub interval: Duration,

    /// Period of the full comparison of ids that finds records deleted outright in Carerix.
    /// Default `6h`.
    #[serde(default = "default_full_compare_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("sync.fullCompareInterval must be a duration of at least 1s, such as 1h or 6h"))]
    #[schemars(length(max = 32))]
    pub full_compare_interval: Duration,

    /// Where the data goes.
    pub sink: SinkSpec,

    /// The fields to copy, per entity (`candidates: [firstName, lastName, toStatusNode]`): scalar
    /// fields of the Carerix type, and to-one relations (stored as `{"_id": ...}`). `_id`,
    /// `_kind`, `modificationDate`, `creationDate`, `deleted` and the entity's own id field are always copied.
    /// An entity not listed here copies every scalar field and the `_id` of every to-one relation.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k in ['candidates', 'vacancies', 'companies', 'contacts', 'placements', 'matches', 'publications'])").message("sync.fields keys must be entity names: candidates, vacancies, companies, contacts, placements, matches, publications"))]
    #[schemars(extend("maxProperties" = 7))]
    pub fields: std::collections::BTreeMap<String, Vec<FieldName>>,
}

/// A field name of a Carerix type.
pub type FieldName = String;

fn all_entities() -> Vec<Entity> {
    Entity::ALL.to_vec()
}

/// The sync destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// A PostgreSQL database.
    pub postgres: PostgresSink,
    /// What happens to the synced rows when the CarerixConnection is deleted: `Keep` (default)
    /// leaves them, `Drop` deletes the connection's rows, watermarks and processed events.
    #[serde(default)]
    pub on_delete: OnDelete,
}

/// What happens to the synced rows when the connection is deleted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnDelete {
    /// Leave the rows.
    #[default]
    Keep,
    /// Delete the rows.
    Drop,
}

/// A PostgreSQL sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSink {
    /// The Secret key that holds the connection URL, for example
    /// `postgres://user:password@host:5432/db`.
    pub connection_secret_ref: SecretKeySelector,
    /// The PostgreSQL schema for the tables. Several connections may share one schema: rows are
    /// keyed by connection. Default `carerix`.
    #[serde(default = "default_schema")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z_][a-z0-9_]{0,62}$')").message("schema must be a lowercase PostgreSQL identifier"))]
    #[schemars(length(max = 63))]
    pub schema: String,
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CarerixConnectionStatus {
    /// The generation of the spec the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The last value of the `hiredata.io/reconcile-requested-at` annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// Conditions: `Ready`, `Reconciling`, `Stalled`, `CredentialsValid`, `WebhooksReady`,
    /// `DataSynced`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The credentials last validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,

    /// The webhooks as they are in Carerix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksStatus>,

    /// The data sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
}

/// The credentials last validated.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// `resourceVersion` of the Secret that was validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// The scopes Carerix granted to the client.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// The webhooks as they are in Carerix.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebhooksStatus {
    /// The Carerix id of the operator's webhook application for this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    /// Ready webhooks over desired webhooks, for example `2/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// One entry per desired webhook.
    #[serde(default)]
    pub items: Vec<WebhookState>,
    /// The PEM public key of the webhook application (public, not a secret): every replica's
    /// receiver verifies deliveries with it, without asking Carerix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// One desired webhook and its state in Carerix.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebhookState {
    /// The name from the spec.
    pub name: String,
    /// The Carerix webhook id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The delivery URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The subscribed events.
    #[serde(default)]
    pub events: Vec<String>,
    /// `enabled`, `disabled`, `error` or `missing`.
    pub state: String,
    /// A hash of the custom header values this webhook was created with, so that a Carerix that
    /// masks header values in its answers does not make the operator replace it on every pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_hash: Option<String>,
}

/// The data sync.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Records in the sink over all entities (not counting deleted ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<i64>,
    /// When the last sync run over all entities finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Per entity.
    #[serde(default)]
    pub entities: Vec<EntitySyncStatus>,
}

/// The sync of one entity.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntitySyncStatus {
    /// The entity, for example `candidates`.
    pub entity: String,
    /// `Initial` during the first full pass, then `Incremental`.
    pub phase: String,
    /// The `modificationDate` up to which the sink is complete (Carerix time,
    /// `yyyy-MM-dd HH:mm:ss` Amsterdam).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Records of this entity in the sink (not counting deleted ones).
    #[serde(default)]
    pub records: i64,
    /// When the last run for this entity finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_finished: Option<String>,
    /// During the initial pass: the number of records Carerix reports for the entity
    /// (`totalElements` of the first page), so progress can be shown as `records` of `total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// When the initial pass of this entity started (RFC 3339); with `records` it gives the
    /// rate and an ETA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_sync_started: Option<String>,
}

impl CarerixConnectionSpec {
    /// The identity base URL, with the default applied.
    pub fn identity_url(&self) -> &str {
        self.identity_url.as_deref().unwrap_or(DEFAULT_IDENTITY_URL)
    }

    /// The API base URL, with the default applied.
    pub fn api_url(&self) -> &str {
        self.api_url.as_deref().unwrap_or(DEFAULT_API_URL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: CarerixConnectionSpec = serde_json::from_value(serde_json::json!({
            "tenant": "acme",
            "credentialsSecretRef": {"name": "acme-carerix"}
        }))
        .unwrap();
        assert_eq!(spec.identity_url(), "https://id.carerix.io");
        assert_eq!(spec.api_url(), "https://api.carerix.io");
        assert_eq!(std::time::Duration::from(spec.interval), std::time::Duration::from_secs(600));
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        assert!(!spec.suspend);
        assert!(spec.webhooks.is_empty());
    }

    #[test]
    fn a_sync_without_entities_syncs_all_seven() {
        let sync: SyncSpec = serde_json::from_value(serde_json::json!({
            "sink": {"postgres": {"connectionSecretRef": {"name": "db", "key": "url"}}}
        }))
        .unwrap();
        assert_eq!(sync.entities.len(), 7);
        assert_eq!(sync.sink.postgres.schema, "carerix");
        assert_eq!(std::time::Duration::from(sync.interval), std::time::Duration::from_secs(300));
    }
}
