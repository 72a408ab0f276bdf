//! OAuth2 client credentials: RS256 access tokens, JWKS, and scope rules.
//!
//! Scope rules follow API.md §2.4: `X:data:manage` covers every narrower `X:data/...:read|manage`, and
//! `X:data:manage` covers `X:data:read`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;

/// The scopes every registered client gets by default.
pub const DEFAULT_SCOPES: &[&str] =
    &["urn:cx/cx5Acl:data:manage", "urn:cx/cx5Wrapper:data:manage", "urn:cx/webhooks:data:manage"];

/// Scopes a client may request on top of its defaults.
pub const ASSIGNABLE_SCOPES: &[&str] = &[
    "urn:cx/graphql:data:manage",
    "urn:cx/cx5Wrapper:data:manage",
    "urn:cx/cx5Acl:data:manage",
    "urn:cx/webhooks:data:manage",
    "urn:cx/webhooks:data:read",
    "urn:cx/webhooks:data/applications:read",
    "urn:cx/webhooks:data/applications:manage",
    "urn:cx/webhooks:data/webhooks:manage",
    "urn:cx/xmlapi:data:manage",
    "openid",
    "profile",
    "email",
];

/// The scope needed to manage webhooks.
pub const WEBHOOKS_MANAGE: &str = "urn:cx/webhooks:data:manage";
/// The scope for the `cr*` GraphQL queries.
pub const CX5_WRAPPER: &str = "urn:cx/cx5Wrapper:data:manage";
/// The alternative scope for GraphQL.
pub const GRAPHQL: &str = "urn:cx/graphql:data:manage";

/// Whether a granted scope covers a required one.
pub fn covers(granted: &str, required: &str) -> bool {
    if granted == required {
        return true;
    }
    // urn:cx/webhooks:data:manage covers urn:cx/webhooks:data/...:(read|manage) and urn:cx/webhooks:data:read
    if let Some(base) = granted.strip_suffix(":data:manage") {
        if required == format!("{base}:data:read") {
            return true;
        }
        if let Some(rest) = required.strip_prefix(&format!("{base}:data/")) {
            return rest.ends_with(":read") || rest.ends_with(":manage");
        }
    }
    false
}

/// Whether any granted scope covers any of the required ones.
pub fn has_any(granted: &[String], required: &[&str]) -> bool {
    granted.iter().any(|g| required.iter().any(|r| covers(g, r)))
}

/// The claims of our access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// `{base}/auth/realms/{tenant}`
    pub iss: String,
    /// The client id.
    pub azp: String,
    /// The service account subject.
    pub sub: String,
    /// Space-separated granted scopes.
    pub scope: String,
    /// Expiry (seconds since epoch).
    pub exp: u64,
    /// Issued at (seconds since epoch).
    pub iat: u64,
    /// Token id.
    pub jti: String,
    /// Token type (`Bearer`).
    pub typ: String,
    /// Keycloak's tenant-ish claim; carerix-sim sets it to the realm.
    pub tenant: String,
    /// Emulator-only: the token generation; `Sim::expire_tokens` bumps it, invalidating older tokens.
    #[serde(default)]
    pub sim_epoch: u64,
}

/// The signing key of the identity provider.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwks: Value,
    kid: String,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Generates an RSA private key of `bits` bits (slow; call from `spawn_blocking`).
pub fn generate_key(bits: usize) -> Result<RsaPrivateKey, Error> {
    let mut rng = rsa::rand_core::OsRng;
    RsaPrivateKey::new(&mut rng, bits).map_err(|e| Error::Crypto(e.to_string()))
}

/// The PEM SPKI form of a public key.
pub fn public_pem(key: &RsaPublicKey) -> Result<String, Error> {
    key.to_public_key_pem(LineEnding::LF).map_err(|e| Error::Crypto(e.to_string()))
}

impl Signer {
    /// Builds the signer from a private key.
    pub fn new(key: &RsaPrivateKey) -> Result<Signer, Error> {
        let pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| Error::Crypto(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| Error::Crypto(e.to_string()))?;
        let public = key.to_public_key();
        let pub_pem = public_pem(&public)?;
        let decoding =
            DecodingKey::from_rsa_pem(pub_pem.as_bytes()).map_err(|e| Error::Crypto(e.to_string()))?;
        let kid = uuid::Uuid::new_v4().to_string();
        let jwks = json!({"keys": [{
            "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]});
        Ok(Signer { encoding, decoding, jwks, kid })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Issues a token.
    pub fn issue(
        &self,
        issuer: &str,
        tenant: &str,
        client_id: &str,
        scope: &str,
        ttl: Duration,
        sim_epoch: u64,
    ) -> Result<String, Error> {
        let iat = now_secs();
        let claims = Claims {
            iss: issuer.to_string(),
            azp: client_id.to_string(),
            sub: format!("service-account-{client_id}"),
            scope: scope.to_string(),
            exp: iat + ttl.as_secs(),
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            typ: "Bearer".into(),
            tenant: tenant.to_string(),
            sim_epoch,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(|e| Error::Crypto(e.to_string()))
    }

    /// Verifies signature and expiry (no leeway).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = 0;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        (data.claims.exp > now_secs()).then_some(data.claims)
    }
}

/// Computes the granted scope list: defaults ∪ (requested ∩ assignable); webhook scopes are dropped
/// for a tenant without webhooks. `Err` names the invalid requested scopes.
pub fn grant(
    defaults: &[String],
    requested: Option<&str>,
    webhooks_activated: bool,
) -> Result<Vec<String>, String> {
    let mut granted: Vec<String> = defaults.to_vec();
    if let Some(req) = requested {
        let bad: Vec<&str> = req.split_whitespace().filter(|s| !ASSIGNABLE_SCOPES.contains(s)).collect();
        if !bad.is_empty() {
            return Err(bad.join(" "));
        }
        for s in req.split_whitespace() {
            if !granted.iter().any(|g| g == s) {
                granted.push(s.to_string());
            }
        }
    }
    if !webhooks_activated {
        granted.retain(|s| !s.starts_with("urn:cx/webhooks:"));
    }
    Ok(granted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broad_manage_scope_covers_narrower_ones() {
        assert!(covers(WEBHOOKS_MANAGE, "urn:cx/webhooks:data/applications:read"));
        assert!(covers(WEBHOOKS_MANAGE, "urn:cx/webhooks:data/webhooks:manage"));
        assert!(covers(WEBHOOKS_MANAGE, "urn:cx/webhooks:data:read"));
        assert!(!covers("urn:cx/webhooks:data:read", WEBHOOKS_MANAGE));
        assert!(!covers(CX5_WRAPPER, WEBHOOKS_MANAGE));
    }

    #[test]
    fn granted_scopes_are_defaults_plus_assignable_requested_ones() {
        let d: Vec<String> = DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect();
        let g = grant(&d, Some("urn:cx/graphql:data:manage"), true).expect("grant");
        assert_eq!(g.len(), 4);
        assert!(grant(&d, Some("urn:cx/nope:data:manage"), true).is_err());
        let g = grant(&d, None, false).expect("grant");
        assert!(!g.iter().any(|s| s == WEBHOOKS_MANAGE));
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let key = generate_key(1024).expect("key");
        let s = Signer::new(&key).expect("signer");
        let t = s
            .issue("http://x/auth/realms/acme", "acme", "c1", "a b", Duration::from_secs(60), 0)
            .expect("token");
        let c = s.verify(&t).expect("valid");
        assert_eq!(c.azp, "c1");
        assert_eq!(c.scope, "a b");
        assert!(s.verify(&format!("{t}x")).is_none());
    }
}
