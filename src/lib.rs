//! carerix-operator: a Kubernetes operator that connects recruitment platforms to Carerix.
//!
//! The library holds everything; `src/main.rs` only wires the command line to it.
//! - [`api`]: the `CarerixConnection` resource (spec, status, CRD generation).
//! - [`carerix`]: the Carerix API client (OAuth, GraphQL data, webhooks management).
//! - [`controller`]: the reconciler (credentials, webhooks, status, finalizer).
//! - [`sync`]: the data sync into PostgreSQL; [`receiver`]: inbound webhook deliveries.
//! - [`cache`]: the one in-memory copy of the connections that the controllers, the receiver and
//!   the shards read.
//! - [`run`], [`server`], [`leader`], [`lease`], [`metrics`]: the running process.
//! - [`shard`]: active-active sharding of the connections over the replicas (Lease membership,
//!   a consistent hash ring, a safe hand-over, forwarding of deliveries to the owner).
//! - [`crdgen`]: the CRD YAML as shipped in `crds/`.
//! - [`signature`]: `Cx-Signature` verification; [`conditions`], [`connection`]: the condition
//!   vocabulary and the connection/credential helpers that the controller, sync and receiver share.
//! - [`backoff`]: the exponential backoff the reconciler, the client and the sync share.
//! - [`preflight`]: `carerix-operator preflight`, the checks of a tenant before anything is applied.

pub mod api;
pub mod cache;
pub mod carerix;
pub mod conditions;
pub mod connection;
pub mod controller;
pub mod crdgen;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod preflight;
pub mod receiver;
pub mod run;
pub mod secret_keys;
pub mod server;
pub mod shard;
pub mod signature;
pub mod sync;

pub mod backoff;
