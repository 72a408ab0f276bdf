//! Steps "check the spec", "read credentials" and "authenticate".
//!
//! The spec's URLs are checked against `--allowed-carerix-hosts` before any Secret is read, so a
//! namespace user cannot send a client secret to a server of their choice. A token proves the
//! credentials and tells the scopes granted; a missing webhooks or data scope stalls.

use kube::ResourceExt;

use super::{
    Context, Error,
    context::Connected,
    failure::{Failure, Halt, Stage, classify},
};
use crate::{
    api::{CarerixConnection, CarerixConnectionSpec, CredentialsStatus},
    conditions::{
        Reason,
        reason::message::{self, DATA_SCOPE, WEBHOOKS_SCOPE},
    },
    connection::{CredentialsError, SecretCredentials, SecretProblem, key_of, load_credentials},
};

fn at_credentials(failure: Failure) -> Halt {
    Halt::Failed { stage: Stage::Credentials, failure, credentials: None }
}

/// Checks `identityUrl` and `apiUrl` against the allowed hosts.
///
/// # Errors
/// An `InvalidSpec` failure naming the refused URL.
pub fn check_spec(ctx: &Context, spec: &CarerixConnectionSpec) -> Result<(), Halt> {
    for (field, url) in [("identityUrl", spec.identity_url()), ("apiUrl", spec.api_url())] {
        ctx.settings
            .allowed_hosts
            .check(field, url)
            .map_err(|why| at_credentials(Failure::stall(Reason::InvalidSpec, why)))?;
    }
    Ok(())
}

/// The failure for an unusable Secret.
pub fn secret_failure(ns: &str, problem: &SecretProblem) -> Failure {
    match problem {
        SecretProblem::NotFound(name) => {
            Failure::stall(Reason::SecretNotFound, message::secret_not_found(ns, name))
        }
        SecretProblem::MissingKey { secret, key } => {
            Failure::stall(Reason::InvalidSecret, message::invalid_secret(ns, secret, key))
        }
        SecretProblem::Refused(problem) => Failure::stall(Reason::InvalidSecret, problem.to_string()),
    }
}

/// Reads the credentials Secret.
///
/// # Errors
/// A stall when the Secret is missing or incomplete; [`Error::Kube`] when the API fails.
pub async fn read(ctx: &Context, obj: &CarerixConnection) -> Result<SecretCredentials, Halt> {
    let ns = obj.namespace().unwrap_or_default();
    match load_credentials(&ctx.client, &ns, &obj.spec.credentials_secret_ref.name).await {
        Ok(c) => Ok(c),
        Err(CredentialsError::Unusable(problem)) => Err(at_credentials(secret_failure(&ns, &problem))),
        Err(CredentialsError::Kube(source)) => {
            Err(Error::Kube { action: "read the credentials Secret of", key: key_of(obj), source }.into())
        }
    }
}

/// Credentials that Carerix accepted.
pub struct Authenticated {
    pub carerix: Connected,
    pub status: CredentialsStatus,
}

/// Gets a token and checks its scopes.
///
/// # Errors
/// A failure (stall or retry) when Carerix refuses or fails; [`Error::Client`] when no client can
/// be built.
pub async fn authenticate(
    ctx: &Context,
    obj: &CarerixConnection,
    creds: &SecretCredentials,
) -> Result<Authenticated, Halt> {
    let key = key_of(obj);
    let carerix = ctx.carerix(&key, &obj.spec, creds).await?;
    let scopes = match carerix.api.scopes().await {
        Ok(s) => s,
        Err(err) => {
            let failure = classify(&err, &obj.spec.tenant, "issue a token");
            if failure.next == super::failure::Next::Stall {
                ctx.forget_client(&key).await;
            }
            return Err(at_credentials(failure));
        }
    };
    let status = CredentialsStatus { secret_resource_version: Some(creds.resource_version.clone()), scopes };
    if let Err((stage, failure)) = check_scopes(&obj.spec, &status.scopes) {
        // Drop the token: the next pass must ask again, since granting a scope changes it.
        ctx.forget_client(&key).await;
        return Err(Halt::Failed { stage, failure, credentials: Some(Box::new(status)) });
    }
    Ok(Authenticated { carerix, status })
}

/// Whether the granted scopes cover what the spec needs; otherwise which part fails and why.
///
/// # Errors
/// `WebhooksNotActivated` (a webhooks part failure) or `MissingScope` for the data sync.
pub fn check_scopes(spec: &CarerixConnectionSpec, granted: &[String]) -> Result<(), (Stage, Failure)> {
    let has = |s: &str| granted.iter().any(|g| g == s);
    if !spec.webhooks.is_empty() && !has(WEBHOOKS_SCOPE) {
        let failure =
            Failure::stall(Reason::WebhooksNotActivated, message::webhooks_not_activated(&spec.tenant));
        return Err((Stage::Webhooks, failure));
    }
    if spec.sync.is_some() && !has(DATA_SCOPE) && !has("urn:cx/graphql:data:manage") {
        return Err((
            Stage::Credentials,
            Failure::stall(Reason::MissingScope, message::missing_data_scope()),
        ));
    }
    Ok(())
}

/// The `CredentialsValid` part once Carerix accepted the credentials.
pub fn accepted_message(spec: &CarerixConnectionSpec) -> String {
    format!("Carerix accepted the credentials of tenant {}", spec.tenant)
}
