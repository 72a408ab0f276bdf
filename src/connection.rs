//! What the controller, the sync and the receiver all need to know about a connection: its key,
//! its credentials Secret, the Carerix client built from them, and the name of its webhook
//! application in Carerix. It depends on `api` and `carerix` only, so every loop can use it
//! without importing another.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use crate::{
    api::{CarerixConnection, CarerixConnectionSpec},
    carerix::{self, CarerixClient, CarerixClientBuilder, Credentials, RateLimiters},
    metrics::Metrics,
};

/// `namespace/name` of a connection.
pub fn key_of(obj: &CarerixConnection) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The name of our webhook application in Carerix: stable, so it is found again after a restart
/// or when the resource is re-created.
pub fn application_name(obj: &CarerixConnection) -> String {
    format!("carerix-operator.{}.{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Reads a key of a Secret as UTF-8, or `None` when the key is absent or empty.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(v.0.clone()).ok().filter(|s| !s.is_empty());
    }
    secret.string_data.as_ref().and_then(|d| d.get(key)).cloned().filter(|s| !s.is_empty())
}

/// Credentials read from the connection's Secret.
#[derive(Clone, Debug)]
pub struct SecretCredentials {
    /// Client id and secret.
    pub credentials: Credentials,
    /// The Secret's `resourceVersion`.
    pub resource_version: String,
}

/// Why the credentials Secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProblem {
    /// The Secret does not exist.
    NotFound(String),
    /// A key is missing or empty.
    MissingKey { secret: String, key: &'static str },
    /// A key the operator refuses rather than ignores (`apiKey`).
    Refused(crate::secret_keys::SecretKeyProblem),
}

/// Reading the credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The Secret is missing or incomplete: a person must act.
    #[error("the credentials Secret cannot be used: {0:?}")]
    Unusable(SecretProblem),
    /// The Kubernetes API call failed.
    #[error("failed to read the credentials Secret")]
    Kube(#[source] kube::Error),
}

/// The credentials in a Secret, or what is wrong with it.
pub fn credentials_in(name: &str, secret: Option<&Secret>) -> Result<SecretCredentials, SecretProblem> {
    let Some(secret) = secret else {
        return Err(SecretProblem::NotFound(name.to_string()));
    };
    crate::secret_keys::check_secret(name, secret).map_err(SecretProblem::Refused)?;
    let Some(client_id) = secret_value(secret, "clientId") else {
        return Err(SecretProblem::MissingKey { secret: name.to_string(), key: "clientId" });
    };
    let Some(client_secret) = secret_value(secret, "clientSecret") else {
        return Err(SecretProblem::MissingKey { secret: name.to_string(), key: "clientSecret" });
    };
    Ok(SecretCredentials {
        credentials: Credentials::new(client_id, client_secret),
        resource_version: secret.resource_version().unwrap_or_default(),
    })
}

/// Reads the credentials Secret `ns/name`.
///
/// # Errors
/// [`CredentialsError::Unusable`] when the Secret is missing or incomplete, [`CredentialsError::Kube`]
/// when the API call fails.
pub async fn load_credentials(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<SecretCredentials, CredentialsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get_opt(name).await.map_err(CredentialsError::Kube)?;
    credentials_in(name, secret.as_ref()).map_err(CredentialsError::Unusable)
}

/// Reads the credentials Secret of a connection (the receiver's older form of [`load_credentials`]).
///
/// # Errors
/// `Ok(Err(problem))` when the Secret is missing or incomplete; `Err` when the API call fails.
pub async fn read_credentials(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Result<SecretCredentials, SecretProblem>, kube::Error> {
    match load_credentials(client, ns, name).await {
        Ok(c) => Ok(Ok(c)),
        Err(CredentialsError::Unusable(p)) => Ok(Err(p)),
        Err(CredentialsError::Kube(e)) => Err(e),
    }
}

/// How Carerix clients are built.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Timeout of one Carerix request.
    pub timeout: Duration,
    /// Retries of one Carerix request inside the client.
    pub retries: u32,
}

/// A Carerix client for a connection's tenant and credentials, sharing the tenant's rate limit.
///
/// # Errors
/// When the URLs, tenant or credentials cannot make a client.
pub fn build_client(
    spec: &CarerixConnectionSpec,
    creds: &SecretCredentials,
    settings: &ClientSettings,
    rate_limiters: &RateLimiters,
    metrics: &Arc<Metrics>,
) -> Result<CarerixClient, carerix::Error> {
    client_builder(spec, creds, settings.timeout, rate_limiters, metrics)
        .max_retries(settings.retries)
        .build()
}

/// The client builder for a connection (URLs, tenant, credentials, timeout, the tenant's shared
/// rate limit, metrics); callers add their retry policy.
pub fn client_builder(
    spec: &CarerixConnectionSpec,
    creds: &SecretCredentials,
    timeout: Duration,
    rate_limiters: &RateLimiters,
    metrics: &Arc<Metrics>,
) -> CarerixClientBuilder {
    CarerixClient::builder()
        .identity_url(spec.identity_url())
        .api_url(spec.api_url())
        .tenant(&spec.tenant)
        .credentials(creds.credentials.clone())
        .timeout(timeout)
        .rate_limiter(rate_limiters.for_tenant(&spec.tenant))
        .observer(metrics.carerix_observer())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        let data: BTreeMap<String, ByteString> =
            pairs.iter().map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec()))).collect();
        Secret { data: Some(data), ..Secret::default() }
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        assert_eq!(credentials_in("cx", None).unwrap_err(), SecretProblem::NotFound("cx".into()));
        let s = secret(&[("clientId", "id")]);
        assert_eq!(
            credentials_in("cx", Some(&s)).unwrap_err(),
            SecretProblem::MissingKey { secret: "cx".into(), key: "clientSecret" }
        );
        let s = secret(&[("clientId", ""), ("clientSecret", "x")]);
        assert_eq!(
            credentials_in("cx", Some(&s)).unwrap_err(),
            SecretProblem::MissingKey { secret: "cx".into(), key: "clientId" }
        );
    }

    #[test]
    fn complete_credentials_are_read() {
        let s = secret(&[("clientId", "id"), ("clientSecret", "x")]);
        let c = credentials_in("cx", Some(&s)).unwrap();
        assert_eq!(c.credentials.client_id, "id");
    }

    #[test]
    fn an_api_key_in_the_secret_is_refused_with_where_it_belongs_never_ignored() {
        let s = secret(&[("clientId", "id"), ("clientSecret", "x"), ("apiKey", "s3cr3t-value-9f2")]);
        let Err(SecretProblem::Refused(problem)) = credentials_in("cx", Some(&s)) else {
            panic!("a Secret with apiKey must be refused");
        };
        let message = problem.to_string();
        assert!(message.contains("clientSecret"), "{message}");
        assert!(!message.contains("s3cr3t-value-9f2"), "the value never appears: {message}");
    }
}
