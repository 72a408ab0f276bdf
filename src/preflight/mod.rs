//! `carerix-operator preflight`: checks a Carerix tenant before anything is applied.
//!
//! The inputs come from flags (the secret from a file or stdin, never a flag) or from a Secret or
//! `CarerixConnection` in the cluster. Each check runs against the Carerix API itself
//! ([`checks`]); the result is a table or JSON ([`report`]). The exit code is 0 only when no
//! check failed. A temporary webhook application is created for the permission checks and is
//! always removed again, also on Ctrl-C.
//!
//! [`secret`] holds the check of the credentials Secret's keys (the refused `apiKey`), shared
//! with the reconciler.

pub mod checks;
pub mod report;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use self::checks::{DeliveryOptions, Options, Sink, Stats, Temporary};
use self::report::{Check, Report};
use crate::api::CarerixConnection;
use crate::carerix::client::{DEFAULT_API_URL, DEFAULT_IDENTITY_URL};
use crate::carerix::{CarerixClient, Credentials, Entity};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per check.
    Table,
    /// The report as JSON.
    Json,
}

/// The flags of `carerix-operator preflight`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Set up the Carerix client first: docs/carerix-setup.md. Exit code: 0 when no check \
failed, 1 when one did, 2 for bad input, 130 when interrupted (the temporary application is removed first).")]
pub struct PreflightArgs {
    /// The tenant: the lowercase first part of <tenant>.carerix.net (also the identity realm).
    #[arg(long)]
    pub tenant: Option<String>,
    /// The identity host, from the tenant's OpenID Configuration URL [default: https://id.carerix.io].
    #[arg(long, value_name = "URL")]
    pub identity_url: Option<String>,
    /// The API host [default: https://api.carerix.io].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// The client id of the Confidential client.
    #[arg(long)]
    pub client_id: Option<String>,
    /// A file holding the client secret; `-` reads it from stdin. The secret is never a flag.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
    /// Take tenant, hosts, credentials and entities from this CarerixConnection and its Secret
    /// (uses the kubeconfig). Flags given as well override the connection's values.
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with_all = ["from_secret", "client_secret_file"])]
    pub from_connection: Option<String>,
    /// Take the client id and secret from this Secret (keys clientId, clientSecret; uses the
    /// kubeconfig).
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "client_secret_file")]
    pub from_secret: Option<String>,
    /// Entities whose GraphQL reads are checked, comma-separated [default: the connection's
    /// sync.entities, else all seven].
    #[arg(long, value_delimiter = ',')]
    pub entities: Vec<Entity>,
    /// Subscribe a temporary webhook to this URL and wait for one signed delivery, checked
    /// against the application's public key. The URL must reach --delivery-listen.
    #[arg(long, value_name = "URL", requires = "delivery_listen")]
    pub delivery_url: Option<String>,
    /// The local address that receives the test delivery.
    #[arg(long, value_name = "ADDR")]
    pub delivery_listen: Option<SocketAddr>,
    /// Seconds to wait for the test delivery.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub delivery_wait: u64,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// Why preflight could not start checking.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// A flag is missing or wrong.
    #[error("{0}")]
    Usage(String),
    /// The secret file could not be read.
    #[error("cannot read the client secret from {path}: {source}")]
    SecretFile {
        /// The file (`-` for stdin).
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cluster could not be asked.
    #[error("cannot read {what} from the cluster: {source}")]
    Kube {
        /// What was asked for.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The Carerix client could not be built.
    #[error(transparent)]
    Client(#[from] crate::carerix::Error),
}

/// What preflight checks, resolved from flags and cluster objects.
struct Target {
    tenant: String,
    identity_url: String,
    api_url: String,
    client_id: String,
    client_secret: String,
    entities: Vec<Entity>,
    /// Checks found while reading the inputs (the Secret's keys).
    input_checks: Vec<Check>,
}

fn split_ref(value: &str, flag: &str) -> Result<(String, String), PreflightError> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.to_string(), name.to_string())),
        _ => Err(PreflightError::Usage(format!("{flag} must be NAMESPACE/NAME, got {value:?}"))),
    }
}

fn read_secret_file(path: &PathBuf) -> Result<String, PreflightError> {
    let shown = path.display().to_string();
    let raw = if shown == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|source| PreflightError::SecretFile { path: shown.clone(), source })?;
    let secret = raw.trim().to_string();
    if secret.is_empty() {
        return Err(PreflightError::Usage(format!("the client secret file {shown} is empty")));
    }
    Ok(secret)
}

/// Reads a credentials Secret: client id and secret (if usable) and the `secret` check.
async fn secret_from_cluster(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(Option<String>, Option<String>, Check), PreflightError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let shown = format!("{ns}/{name}");
    let found = api
        .get_opt(name)
        .await
        .map_err(|source| PreflightError::Kube { what: format!("the Secret {shown}"), source })?;
    let Some(found) = found else {
        let check = Check::fail(
            "secret",
            "secret",
            format!("Secret {shown} not found"),
            "Create the Secret with the keys clientId and clientSecret (docs/carerix-setup.md step 6)",
        );
        return Ok((None, None, check));
    };
    let id = crate::connection::secret_value(&found, crate::secret_keys::CLIENT_ID_KEY);
    let value = crate::connection::secret_value(&found, crate::secret_keys::CLIENT_SECRET_KEY);
    let check = match (crate::secret_keys::check_secret(&shown, &found), &id, &value) {
        (Err(problem), _, _) => Check::fail(
            "secret",
            "secret",
            problem.to_string(),
            "See docs/carerix-setup.md, \"The apiKey key\"",
        ),
        (Ok(()), None, _) | (Ok(()), _, None) => Check::fail(
            "secret",
            "secret",
            format!("Secret {shown} lacks clientId or clientSecret"),
            "Put the client id under clientId and the secret under clientSecret (docs/carerix-setup.md steps 3 and 6)",
        ),
        (Ok(()), Some(_), Some(_)) => {
            Check::pass("secret", "secret", format!("Secret {shown} has clientId and clientSecret"))
        }
    };
    Ok((id, value, check))
}

async fn resolve(args: &PreflightArgs) -> Result<Target, PreflightError> {
    let mut tenant = args.tenant.clone();
    let mut identity_url = args.identity_url.clone();
    let mut api_url = args.api_url.clone();
    let mut client_id = args.client_id.clone();
    let mut client_secret = None;
    let mut entities = args.entities.clone();
    let mut input_checks = Vec::new();
    let mut secret_ref: Option<(String, String)> =
        args.from_secret.as_deref().map(|s| split_ref(s, "--from-secret")).transpose()?;
    let mut kube_client = None;
    if let Some(conn) = &args.from_connection {
        let (ns, name) = split_ref(conn, "--from-connection")?;
        let client = kube::Client::try_default()
            .await
            .map_err(|source| PreflightError::Kube { what: "the kubeconfig".into(), source })?;
        let api: Api<CarerixConnection> = Api::namespaced(client.clone(), &ns);
        let cx = api.get(&name).await.map_err(|source| PreflightError::Kube {
            what: format!("the CarerixConnection {conn}"),
            source,
        })?;
        tenant = tenant.or(Some(cx.spec.tenant.clone()));
        identity_url = identity_url.or(cx.spec.identity_url.clone());
        api_url = api_url.or(cx.spec.api_url.clone());
        if entities.is_empty() {
            entities = cx.spec.sync.as_ref().map(|s| s.entities.clone()).unwrap_or_default();
        }
        secret_ref = Some((ns, cx.spec.credentials_secret_ref.name.clone()));
        kube_client = Some(client);
    }
    if let Some((ns, name)) = &secret_ref {
        let client = match kube_client {
            Some(c) => c,
            None => kube::Client::try_default()
                .await
                .map_err(|source| PreflightError::Kube { what: "the kubeconfig".into(), source })?,
        };
        let (id, value, check) = secret_from_cluster(&client, ns, name).await?;
        client_id = client_id.or(id);
        client_secret = value;
        input_checks.push(check);
    }
    if let Some(path) = &args.client_secret_file {
        client_secret = Some(read_secret_file(path)?);
    }
    let tenant =
        tenant.ok_or_else(|| PreflightError::Usage("--tenant (or --from-connection) is required".into()))?;
    let client_id = client_id.unwrap_or_default();
    let client_secret = client_secret.unwrap_or_default();
    if input_checks.is_empty() && (client_id.is_empty() || client_secret.is_empty()) {
        return Err(PreflightError::Usage(
            "give --client-id and --client-secret-file (or --from-secret / --from-connection)".into(),
        ));
    }
    if entities.is_empty() {
        entities = Entity::ALL.to_vec();
    }
    Ok(Target {
        tenant,
        identity_url: identity_url.unwrap_or_else(|| DEFAULT_IDENTITY_URL.to_string()),
        api_url: api_url.unwrap_or_else(|| DEFAULT_API_URL.to_string()),
        client_id,
        client_secret,
        entities,
        input_checks,
    })
}

/// Runs preflight: resolves the inputs, runs the checks (cleaning up on Ctrl-C) and returns the
/// report.
///
/// # Errors
///
/// [`PreflightError`] when the inputs are incomplete or unreadable.
pub async fn run(args: &PreflightArgs) -> Result<Report, PreflightError> {
    let target = resolve(args).await?;
    let mut checks = target.input_checks.clone();
    let usable = !target.client_id.is_empty() && !target.client_secret.is_empty();
    if !usable || checks.iter().any(|c| c.outcome == report::Outcome::Fail) {
        return Ok(Report::new(
            &target.tenant,
            &target.identity_url,
            &target.api_url,
            &target.client_id,
            checks,
            false,
        ));
    }
    let stats = Arc::new(Stats::default());
    let client = CarerixClient::builder()
        .tenant(&target.tenant)
        .identity_url(&target.identity_url)
        .api_url(&target.api_url)
        .credentials(Credentials::new(target.client_id.clone(), target.client_secret.clone()))
        .observer(stats.clone())
        .build()?;
    let options = Options {
        entities: target.entities.clone(),
        delivery: match (&args.delivery_url, args.delivery_listen) {
            (Some(url), Some(listen)) => Some(DeliveryOptions {
                url: url.clone(),
                listen,
                wait: Duration::from_secs(args.delivery_wait),
            }),
            _ => None,
        },
    };
    let temporary = Temporary::default();
    let sink = Sink::default();
    let interrupted = tokio::select! {
        () = checks::run(&client, &options, &temporary, &stats, &sink) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    let mut found = sink.take();
    if let Some(cleanup) = checks::cleanup(&client, &temporary).await {
        found.push(cleanup);
    }
    checks.extend(found);
    Ok(Report::new(
        &target.tenant,
        &target.identity_url,
        &target.api_url,
        &target.client_id,
        checks,
        interrupted,
    ))
}

/// The `preflight` subcommand: runs, prints, and returns the exit code.
pub fn main(args: &PreflightArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            match args.output {
                OutputFormat::Table => print!("{}", report.table()),
                OutputFormat::Json => match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(err) => {
                        eprintln!("error: {err}");
                        return ExitCode::from(2);
                    }
                },
            }
            if report.interrupted {
                ExitCode::from(130)
            } else if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
