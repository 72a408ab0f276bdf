//! Behaviour switches for what public sources leave open about the webhooks REST API and the
//! identity side (API.md marks these INFERRED). Each can be set in [`crate::Config::switches`],
//! with a flag of the binary, and at run time with `PUT /admin/v1/switches`.
//!
//! The defaults are the emulator's usual behaviour; each switch turns on a plausible variant of
//! the real Carerix so the operator and `carerix-operator preflight` can be tested against it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A Webhooks operation of the client's permission matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// `POST /applications`, `POST /applications/{app}/webhooks`.
    Create,
    /// Every `GET`.
    Read,
    /// `POST .../enable|disable`, `PUT`/`PATCH`.
    Update,
    /// Every `DELETE`.
    Delete,
}

impl Permission {
    /// The lowercase name (`create`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Create => "create",
            Permission::Read => "read",
            Permission::Update => "update",
            Permission::Delete => "delete",
        }
    }

    /// The permission a webhooks REST call needs (`rest` is the path after `applications`).
    pub fn of_request(method: &http::Method, rest: &[&str]) -> Permission {
        match *method {
            http::Method::GET | http::Method::HEAD => Permission::Read,
            http::Method::DELETE => Permission::Delete,
            http::Method::POST if matches!(rest, [] | [_, "webhooks"]) => Permission::Create,
            _ => Permission::Update,
        }
    }
}

/// The switches. `Switches::default()` is the emulator's usual behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Switches {
    /// `_createdBy._id` of applications and webhooks is a service-account id derived from the
    /// client id (a UUID), not the client id itself. Ownership checks are unchanged.
    pub creator_service_account_ids: bool,
    /// `signatureVerification.publicKey` is left out of every REST answer.
    pub hide_public_key: bool,
    /// Custom header values come back as `********` in REST answers (deliveries still send the
    /// real values).
    pub mask_header_values: bool,
    /// This Webhooks permission is missing from every client's permission matrix: calls that need
    /// it are answered 403.
    pub missing_permission: Option<Permission>,
    /// Events of contacts are emitted with this prefix (e.g. `cruser`, the type behind
    /// `crContact`) instead of `crcontact`; webhooks must filter on it to receive them.
    pub contact_event_prefix: Option<String>,
}

/// What masked header values look like.
pub const MASK: &str = "********";

/// The service-account id Carerix would record for `client_id` (a UUID derived from it).
pub fn service_account_id(client_id: &str) -> String {
    let d = Sha256::digest(client_id.as_bytes());
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl Switches {
    fn creator(&self, v: &mut Value) {
        if self.creator_service_account_ids
            && let Some(id) = v.pointer_mut("/_createdBy/_id")
            && let Some(owner) = id.as_str()
        {
            *id = Value::String(service_account_id(owner));
        }
    }

    /// The REST JSON of an application with the switches applied.
    pub fn application(&self, mut v: Value) -> Value {
        self.creator(&mut v);
        if self.hide_public_key
            && let Some(sv) = v.get_mut("signatureVerification").and_then(Value::as_object_mut)
        {
            sv.remove("publicKey");
        }
        v
    }

    /// The REST JSON of a webhook with the switches applied.
    pub fn webhook(&self, mut v: Value) -> Value {
        self.creator(&mut v);
        if self.mask_header_values
            && let Some(headers) = v.get_mut("customHeaders").and_then(Value::as_array_mut)
        {
            for h in headers {
                if let Some(value) = h.get_mut("value") {
                    *value = Value::String(MASK.into());
                }
            }
        }
        v
    }

    /// Whether a call needing `needed` is refused.
    pub fn denies(&self, needed: Permission) -> bool {
        self.missing_permission == Some(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_account_id_is_a_stable_uuid_unlike_the_client_id() {
        let a = service_account_id("demo-client");
        assert_eq!(a, service_account_id("demo-client"));
        assert_ne!(a, service_account_id("other-client"));
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    }

    #[test]
    fn the_switches_rewrite_creator_key_and_headers() {
        let s = Switches {
            creator_service_account_ids: true,
            hide_public_key: true,
            mask_header_values: true,
            ..Switches::default()
        };
        let app = s.application(json!({"_id": "a", "_createdBy": {"_id": "c"},
            "signatureVerification": {"algorithm": "SHA256withRSA", "publicKey": "PEM"}}));
        assert_eq!(app["_createdBy"]["_id"], json!(service_account_id("c")));
        assert!(app["signatureVerification"].get("publicKey").is_none());
        let w = s.webhook(json!({"_id": "w", "customHeaders": [{"name": "x", "value": "secret"}]}));
        assert_eq!(w["customHeaders"][0]["value"], json!(MASK));
        let off = Switches::default();
        let app = off
            .application(json!({"_createdBy": {"_id": "c"}, "signatureVerification": {"publicKey": "PEM"}}));
        assert_eq!(app["_createdBy"]["_id"], json!("c"));
        assert_eq!(app["signatureVerification"]["publicKey"], json!("PEM"));
    }

    #[test]
    fn each_rest_call_needs_one_permission() {
        use http::Method;
        assert_eq!(Permission::of_request(&Method::GET, &[]), Permission::Read);
        assert_eq!(Permission::of_request(&Method::POST, &[]), Permission::Create);
        assert_eq!(Permission::of_request(&Method::POST, &["a", "webhooks"]), Permission::Create);
        assert_eq!(
            Permission::of_request(&Method::POST, &["a", "webhooks", "w", "enable"]),
            Permission::Update
        );
        assert_eq!(Permission::of_request(&Method::DELETE, &["a"]), Permission::Delete);
    }
}
