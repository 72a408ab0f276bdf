//! What the credentials Secret may hold, as a pure check shared by `preflight` and the
//! reconciler.
//!
//! The operator reads `clientId` and `clientSecret` (the OAuth2 client credentials of a
//! Confidential Carerix client) and nothing else. An `apiKey` key is refused rather than ignored:
//! "API key" means either the client secret under another name or the legacy REST Application
//! Token (API.md §2.6), and in both cases the user meant something by it that would silently not
//! happen. The message says what to put where.

use k8s_openapi::api::core::v1::Secret;

/// The Secret key holding the client id.
pub const CLIENT_ID_KEY: &str = "clientId";
/// The Secret key holding the client secret.
pub const CLIENT_SECRET_KEY: &str = "clientSecret";
/// The key that is refused.
pub const API_KEY_KEY: &str = "apiKey";

/// Why a Secret's keys cannot be used as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretKeyProblem {
    /// `apiKey` next to `clientSecret`.
    #[error(
        "Secret {secret} has the key apiKey, which carerix-operator does not use: it authenticates \
         with clientId and clientSecret only. If apiKey holds the client secret, it belongs under \
         clientSecret; if it is the legacy REST Application Token, remove it (see \
         docs/carerix-setup.md, \"The apiKey key\")"
    )]
    UnusedApiKey {
        /// The Secret, as `namespace/name` or `name`.
        secret: String,
    },
    /// `apiKey` without `clientSecret`.
    #[error(
        "Secret {secret} has apiKey but no clientSecret: if apiKey holds the client secret of your \
         Confidential Carerix client, rename the key to clientSecret; the legacy REST Application \
         Token cannot be used, create a Confidential client instead (see docs/carerix-setup.md, \
         steps 2 and 3)"
    )]
    ApiKeyInsteadOfClientSecret {
        /// The Secret, as `namespace/name` or `name`.
        secret: String,
    },
}

/// Checks which keys a Secret has (`present` yields the keys with a non-empty value).
///
/// # Errors
///
/// A [`SecretKeyProblem`] when `apiKey` is present.
pub fn check_keys<'a>(
    secret: &str,
    present: impl IntoIterator<Item = &'a str>,
) -> Result<(), SecretKeyProblem> {
    let keys: Vec<&str> = present.into_iter().collect();
    if !keys.contains(&API_KEY_KEY) {
        return Ok(());
    }
    let secret = secret.to_string();
    if keys.contains(&CLIENT_SECRET_KEY) {
        Err(SecretKeyProblem::UnusedApiKey { secret })
    } else {
        Err(SecretKeyProblem::ApiKeyInsteadOfClientSecret { secret })
    }
}

/// The keys of a Secret with a non-empty value (`data` and `stringData`).
pub fn present_keys(secret: &Secret) -> Vec<String> {
    let mut keys: Vec<String> = secret
        .data
        .iter()
        .flatten()
        .filter(|(_, v)| !v.0.is_empty())
        .map(|(k, _)| k.clone())
        .chain(secret.string_data.iter().flatten().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// [`check_keys`] on a Secret object; `name` is how the message names it.
///
/// # Errors
///
/// A [`SecretKeyProblem`] when `apiKey` is present.
pub fn check_secret(name: &str, secret: &Secret) -> Result<(), SecretKeyProblem> {
    let keys = present_keys(secret);
    check_keys(name, keys.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn secret(keys: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_secret_with_client_id_and_secret_passes() {
        assert_eq!(check_secret("s", &secret(&[("clientId", "a"), ("clientSecret", "b")])), Ok(()));
    }

    #[test]
    fn an_api_key_next_to_the_client_secret_is_refused_with_what_to_do() {
        let err = check_secret("ns/s", &secret(&[("clientId", "a"), ("clientSecret", "b"), ("apiKey", "c")]))
            .expect_err("refused");
        assert_eq!(err, SecretKeyProblem::UnusedApiKey { secret: "ns/s".into() });
        let msg = err.to_string();
        assert!(msg.contains("belongs under clientSecret") && msg.contains("remove it"), "{msg}");
    }

    #[test]
    fn an_api_key_instead_of_the_client_secret_is_refused_with_the_rename() {
        let err = check_secret("s", &secret(&[("clientId", "a"), ("apiKey", "c")])).expect_err("refused");
        assert!(err.to_string().contains("rename the key to clientSecret"), "{err}");
    }

    #[test]
    fn an_empty_api_key_is_not_a_problem() {
        assert_eq!(
            check_secret("s", &secret(&[("clientId", "a"), ("clientSecret", "b"), ("apiKey", "")])),
            Ok(())
        );
        let string_data = Secret {
            string_data: Some([("apiKey".to_string(), "x".to_string())].into_iter().collect()),
            ..Secret::default()
        };
        assert!(check_secret("s", &string_data).is_err());
    }
}
