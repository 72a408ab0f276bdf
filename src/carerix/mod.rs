//! The typed Carerix API client.
//!
//! [`CarerixClient`] (octocrab-shaped: a builder, cheap clones, one handler per API) talks to
//! one tenant:
//!
//! - authentication: OAuth2 client credentials against the tenant's Keycloak realm, with a
//!   cached, single-flight refreshed token ([`auth`]);
//! - [`CarerixClient::graphql`]: paged and single reads of the synced [`Entity`] kinds
//!   ([`graphql`], [`entity`]);
//! - [`CarerixClient::webhooks`]: the webhooks management REST API ([`webhooks`]);
//! - per-tenant client-side rate limiting ([`rate_limit`]), retries with backoff, and an
//!   [`Observer`] hook for metrics;
//! - `NSCalendarDate` conversion ([`time`]).
//!
//! The wire contract is `docs/carerix-surface.md`, shared with the `carerix-sim` emulator.
//! Left out: mutations of Carerix data, receiving and verifying webhook deliveries, and the
//! legacy XML REST API.
//!
//! Secrets (client secret, access tokens, webhook header values) are held in [`SecretString`]
//! and never appear in errors, `Debug` output or logs.

pub mod auth;
pub mod client;
pub mod entity;
pub mod error;
pub mod fields;
pub mod graphql;
pub mod observer;
pub mod rate_limit;
pub mod time;
pub mod webhooks;

#[cfg(test)]
mod tests;

pub use auth::{Credentials, SecretString, TokenInfo};
pub use client::{CarerixClient, CarerixClientBuilder, ProbeAnswer, RetryPolicy};
pub use entity::{Entity, UnknownEntity, UnknownField};
pub use error::{Error, ErrorKind, Result, TransportKind, WebhooksPermission};
pub use graphql::{Direction, GraphQlHandler, Page, PageRequest, all_documents};
pub use observer::{NoopObserver, Observer};
pub use rate_limit::{RateLimiter, RateLimiters};
pub use webhooks::{
    Application, ApplicationId, NewWebhook, Webhook, WebhookId, WebhookStatus, WebhooksHandler,
};
