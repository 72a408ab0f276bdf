//! `carerix-operator run`: configuration, telemetry, the HTTP server and the controllers.
//!
//! One process serves the webhook receiver on one port and `/healthz`, `/readyz`, `/metrics` on
//! another, and runs one controller per watched namespace (or one for all namespaces). With leader
//! election on, only the leader runs the controllers, so only it writes to Carerix. With sharding
//! on, every replica runs them for its own share of the connections (`crate::shard`).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::join_all};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Config, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    core::PartialObjectMeta,
    runtime::{Controller, WatchStreamExt, events::Reporter, reflector::ObjectRef, watcher},
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    api::CarerixConnection,
    carerix::RateLimiters,
    controller::{self, Context, Settings, backoff::BackoffPolicy},
    leader::{LeaderElection, LeaseSettings},
    metrics::Metrics,
    receiver::{Connections, Limits, Parts as ReceiverParts, Receiver},
    server::{self, ProbeState},
    shard::{
        Shards,
        membership::{MemberSettings, Membership, Parts as MemberParts},
    },
    sync::SyncManager,
};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of `carerix-operator run`. Every flag can also be set from the environment.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kubeconfig to use; without it the in-cluster service account (or ~/.kube/config) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Public base URL of this operator's receiver, as Carerix reaches it (for example
    /// https://carerix-hooks.example.com). Webhooks without a url point at
    /// {base}/webhooks/{namespace}/{name}.
    #[arg(long, env = "RECEIVER_BASE_URL")]
    pub receiver_base_url: Option<String>,

    /// Address of the public webhook receiver (`POST /webhooks/{namespace}/{name}`).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (for example `info` or `carerix_operator=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Requests per second per Carerix tenant (Carerix allows about 10).
    #[arg(long, env = "CARERIX_RATE_LIMIT", default_value_t = 10)]
    pub carerix_rate_limit: u32,

    /// Timeout of one request to Carerix, in seconds.
    #[arg(long, env = "CARERIX_TIMEOUT_SECONDS", default_value_t = 30)]
    pub carerix_timeout_seconds: u64,

    /// Retries of one failed Carerix request (429, 5xx, network) inside a pass.
    #[arg(long, env = "CARERIX_RETRIES", default_value_t = 2)]
    pub carerix_retries: u32,

    /// Delay after a connection's first failure, in seconds; doubles per failure.
    #[arg(long, env = "BACKOFF_BASE_SECONDS", default_value_t = 5)]
    pub backoff_base_seconds: u64,

    /// Longest delay between retries of a failing connection, in seconds.
    #[arg(long, env = "BACKOFF_MAX_SECONDS", default_value_t = 300)]
    pub backoff_max_seconds: u64,

    /// Connections reconciled at the same time. Reconciles wait on Carerix's answers, not on the
    /// CPU, and the tenant's rate limit is the brake; at 200 ms per answer, 128 made 1000
    /// connections Ready 24 to 26 s after the first apply where 64 took 33 to 37 s, and 8 left
    /// most of them queued (docs/benchmarks.md).
    #[arg(long, env = "CONCURRENCY", default_value_t = 128)]
    pub concurrency: u16,

    /// Run only while holding the Lease (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,

    /// Share the connections between the replicas (active-active): each replica holds a Lease of
    /// its own and works on the connections a consistent hash ring gives it (docs/sharding.md).
    #[arg(long, env = "SHARDING", default_value_t = false)]
    pub sharding: bool,

    /// Shard group: the replicas with the same group share the connections (the label value
    /// and name prefix of their Leases).
    #[arg(long, env = "SHARD_GROUP", default_value = "carerix-operator")]
    pub shard_group: String,

    /// This replica's address as the other replicas reach it (the pod IP); deliveries for the
    /// connections it owns are forwarded to this address and the receiver's port. Default: the
    /// address of `--listen`, when it is not 0.0.0.0.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,

    /// UID of this replica's Pod: its shard Lease is then owned by the Pod and deleted with it.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,

    /// Name of the Lease (leader election).
    #[arg(long, env = "LEASE_NAME", default_value = "carerix-operator")]
    pub lease_name: String,

    /// Namespace of the Lease, or of the shard Leases (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a Lease (the leader's or a shard member's) is valid without renewal, in seconds.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// This replica's identity in the Lease (default: POD_NAME, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Hosts a connection's identityUrl and apiUrl may name (comma-separated, `*.` for any
    /// subdomain, optional `:port` or `:*`); https only, unless an entry says `http://`
    /// (e.g. `http://127.0.0.1:*` for a local emulator).
    #[arg(long, env = "ALLOWED_CARERIX_HOSTS", default_value = controller::allowed_hosts::DEFAULT_ALLOWED_HOSTS)]
    pub allowed_carerix_hosts: controller::allowed_hosts::AllowedHosts,

    /// Address of the probe and metrics server (`/healthz`, `/readyz`, `/metrics`), kept apart
    /// from the public receiver so that a flood there cannot fail liveness.
    #[arg(long, env = "PROBE_LISTEN_ADDR", default_value = "0.0.0.0:8081")]
    pub probe_listen: SocketAddr,

    /// Webhook deliveries accepted per second per connection (bursts of twice that pass);
    /// more are answered 429 and Carerix retries them.
    #[arg(long, env = "RECEIVER_RATE_LIMIT", default_value_t = 50)]
    pub receiver_rate_limit: u32,

    /// Webhook deliveries served at once; more are answered 503 at once.
    #[arg(long, env = "RECEIVER_CONCURRENCY", default_value_t = 256)]
    pub receiver_concurrency: usize,
}

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read.
    #[error("failed to read the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No Kubernetes configuration was found.
    #[error("failed to find a Kubernetes configuration (in-cluster or ~/.kube/config)")]
    InferConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes client could not be built.
    #[error("failed to build the Kubernetes client")]
    Client(#[source] kube::Error),
    /// The CRD is not installed or not served.
    #[error(
        "the CarerixConnection CRD is not served by the API server: install it with \
         `carerix-operator crd | kubectl apply --server-side -f -` (or `kubectl apply -f crds/`)"
    )]
    CrdMissing(#[source] kube::Error),
    /// The HTTP server could not start.
    #[error("failed to serve HTTP on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The sink could not be set up.
    #[error("failed to set up the data sync")]
    Sync(#[source] crate::sync::Error),
    /// Sharding needs an address the other replicas can forward deliveries to.
    #[error(
        "--sharding needs this replica's address for the other replicas: set POD_IP (--pod-ip, the \
         chart sets it from the downward API) or --listen to a specific address"
    )]
    ShardAddress,
    /// Sharding and leader election exclude each other.
    #[error("--sharding and --leader-elect exclude each other (LEADER_ELECT=false, or unset, with SHARDING)")]
    ShardingWithLeaderElection,
}

/// Sets up logging to stderr. Call once. Text is coloured only when stderr is a terminal (and
/// `NO_COLOR` is not set), so a log file or a log collector gets plain lines; JSON never is.
pub fn init_tracing(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::util::SubscriberInitExt;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let colour = std::io::stderr().is_terminal() && !no_color;
    let _ = log_subscriber(format, level, std::io::stderr, colour).try_init();
}

/// The subscriber [`init_tracing`] installs, writing to `writer`.
fn log_subscriber<W>(
    format: LogFormat,
    level: &str,
    writer: W,
    colour: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).with_ansi(false).finish()),
        LogFormat::Text => Box::new(builder.with_ansi(colour).finish()),
    }
}

async fn kube_client(args: &RunArgs) -> Result<Client, Error> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|source| Error::Kubeconfig { path: path.clone(), source })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig { path: path.clone(), source })?
        }
        None => Config::infer().await.map_err(Error::InferConfig)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// Runs the operator until SIGTERM or Ctrl-C.
///
/// # Errors
/// Fails when Kubernetes cannot be reached, the CRD is missing, or the port is taken.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    // Checked here, not by clap: the chart sets LEADER_ELECT=false next to SHARDING=true, and
    // clap counts a flag set from the environment as given, whatever its value.
    if args.sharding && args.leader_elect {
        return Err(Error::ShardingWithLeaderElection);
    }
    let client = kube_client(&args).await?;
    // Probe where the operator is allowed to look: a namespaced install may not list cluster-wide.
    let probe: Api<CarerixConnection> = match args.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe.list(&kube::api::ListParams::default().limit(1)).await.map_err(Error::CrdMissing)?;

    let metrics = Arc::new(Metrics::new());
    let rate_limiters = RateLimiters::new(args.carerix_rate_limit);
    let sync = Arc::new(SyncManager::new(client.clone(), metrics.clone()));
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let reporter = Reporter { controller: "carerix-operator".into(), instance: Some(identity.clone()) };
    let settings = Settings {
        receiver_base_url: args.receiver_base_url.clone(),
        backoff: BackoffPolicy {
            base: Duration::from_secs(args.backoff_base_seconds.max(1)),
            max: Duration::from_secs(args.backoff_max_seconds.max(1)),
        },
        carerix_timeout: Duration::from_secs(args.carerix_timeout_seconds.max(1)),
        carerix_retries: args.carerix_retries,
        allowed_hosts: args.allowed_carerix_hosts.clone(),
    };
    let validity = if args.leader_elect || args.sharding {
        crate::leader::Validity::elected()
    } else {
        crate::leader::Validity::default()
    };
    let lease_namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    // Without leader election this replica always leads (sharded: for its own share).
    let leading = Arc::new(AtomicBool::new(!args.leader_elect));
    metrics.set_leader(!args.leader_elect && !args.sharding);
    let (reconcile_tx, reconcile_rx) = futures::channel::mpsc::unbounded::<ObjectRef<CarerixConnection>>();
    // Every replica, leader or standby, keeps the connections in memory for the receiver.
    let (connections, watch_connections) = Connections::watch(&client, &args.namespaces);
    let connections_task = tokio::spawn(watch_connections);
    let membership = if args.sharding {
        Some(Membership::new(MemberParts {
            client: client.clone(),
            settings: MemberSettings {
                group: args.shard_group.clone(),
                namespace: lease_namespace.clone(),
                identity: identity.clone(),
                duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
                address: shard_address(&args)?,
                pod_uid: args.pod_uid.clone(),
            },
            validity: validity.clone(),
            metrics: metrics.clone(),
            sync: sync.clone(),
            connections: connections.clone(),
            reconcile: reconcile_tx.clone(),
        }))
    } else {
        None
    };
    let shards = membership.as_ref().map_or_else(Shards::unsharded, Membership::shards);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            settings.clone(),
            rate_limiters.clone(),
            controller::events::Events::new(client.clone(), reporter),
            metrics.clone(),
            sync.clone(),
        )
        .with_leadership(validity.clone())
        .with_shards(shards.clone()),
    );
    let defaults = Limits::default();
    let receiver = Receiver::new(ReceiverParts {
        client: client.clone(),
        metrics: metrics.clone(),
        sync: sync.clone(),
        connections: connections.clone(),
        carerix: settings.clone(),
        rate_limiters,
        reconcile: reconcile_tx.clone(),
        leading: leading.clone(),
        shards,
        identity: identity.clone(),
        limits: Limits {
            rate_per_second: std::num::NonZeroU32::new(args.receiver_rate_limit)
                .unwrap_or(defaults.rate_per_second),
            max_concurrency: args.receiver_concurrency.max(1),
            ..defaults
        },
    });
    let probes = ProbeState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        alive: alive.clone(),
        leader_election: args.leader_elect,
        leading: leading.clone(),
        receiver: receiver.clone(),
    };
    // The sync asks for a reconcile when its initial pass ends or its health changes.
    sync.set_reconcile_trigger(reconcile_tx);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Serve { addr: args.listen, source })?;
    let probe_listener = tokio::net::TcpListener::bind(args.probe_listen)
        .await
        .map_err(|source| Error::Serve { addr: args.probe_listen, source })?;
    info!(addr = %args.listen, probes = %args.probe_listen, "serving /webhooks, and /healthz, /readyz, /metrics");
    let header_timeout = receiver.limits().header_read_timeout;
    let server = tokio::spawn(server::serve(
        listener,
        server::receiver_router(receiver),
        header_timeout,
        shutdown_rx.clone(),
    ));
    let probe_server = tokio::spawn(server::serve(
        probe_listener,
        server::probe_router(probes),
        header_timeout,
        shutdown_rx.clone(),
    ));

    let signal = tokio::spawn({
        let tx = shutdown_tx.clone();
        async move {
            shutdown_signal().await;
            info!("shutting down: finishing in-flight work");
            let _ = tx.send(true);
        }
    });

    let leader = if args.leader_elect {
        let namespace = lease_namespace;
        Some(
            LeaderElection::new(
                client.clone(),
                LeaseSettings {
                    name: args.lease_name.clone(),
                    namespace,
                    identity: identity.clone(),
                    duration: Duration::from_secs(args.lease_duration_seconds.max(2)),
                },
            )
            .with_validity(validity),
        )
    } else {
        None
    };

    let controllers = run_controllers(
        &args,
        client.clone(),
        Controllers { ctx: ctx.clone(), connections: connections.clone(), ready: ready.clone() },
        reconcile_rx,
        shutdown_rx.clone(),
    );
    match leader {
        Some(leader) => {
            let mut shutdown = shutdown_rx.clone();
            tokio::select! {
                acquired = leader.acquire(shutdown_rx.clone()) => {
                    if acquired {
                        info!(identity = %identity, "acquired the lease; starting the controllers");
                        leading.store(true, Ordering::SeqCst);
                        metrics.set_leader(true);
                        let renew = leader.keep_renewing(shutdown_tx.clone());
                        tokio::select! {
                            () = controllers => {}
                            () = renew => { warn!("lost the lease; stopping"); }
                        }
                        leading.store(false, Ordering::SeqCst);
                        // Stop all work, the sync included, before a standby may take over.
                        sync.shutdown().await;
                        metrics.set_leader(false);
                        leader.release().await;
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
        None => match &membership {
            Some(membership) => {
                info!(identity = %identity, group = %args.shard_group, "sharding on: joining the shard group");
                tokio::select! {
                    () = controllers => {}
                    () = membership.run(shutdown_tx.clone()) => {
                        warn!("lost the shard membership; stopping");
                    }
                }
                // Stop all work, the syncs included, then let the others take over at once.
                membership.leave().await;
            }
            None => controllers.await,
        },
    }
    alive.store(false, Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    sync.shutdown().await;
    signal.abort();
    connections_task.abort();
    let _ = probe_server.await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(Error::Serve { addr: args.listen, source });
        }
        Err(err) => error!(error = %err, "the HTTP server task failed"),
    }
    info!("stopped");
    Ok(())
}

/// Where the other replicas forward deliveries to this one: the pod IP, else the listen address.
fn shard_address(args: &RunArgs) -> Result<String, Error> {
    let port = args.listen.port();
    match args.pod_ip.as_deref().map(str::trim).filter(|ip| !ip.is_empty()) {
        Some(ip) => Ok(match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{ip}:{port}"),
        }),
        None if !args.listen.ip().is_unspecified() => Ok(args.listen.to_string()),
        None => Err(Error::ShardAddress),
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "carerix-operator" } else { &host }, std::process::id())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Does a connection reference the Secret `name` (credentials, header values or the sink URL)?
pub fn references_secret(obj: &CarerixConnection, name: &str) -> bool {
    let spec = &obj.spec;
    spec.credentials_secret_ref.name == name
        || spec
            .webhooks
            .iter()
            .any(|w| w.custom_headers.iter().any(|h| h.value_from.secret_key_ref.name == name))
        || spec.sync.as_ref().is_some_and(|s| s.sink.postgres.connection_secret_ref.name == name)
}

/// What the controllers share with the rest of the process.
struct Controllers {
    ctx: Arc<Context>,
    connections: Connections,
    ready: Arc<AtomicBool>,
}

/// One controller per watched scope, on the replica's one cache of connections ([`Connections`]).
async fn run_controllers(
    args: &RunArgs,
    client: Client,
    shared: Controllers,
    reconcile_rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<CarerixConnection>>,
    shutdown: watch::Receiver<bool>,
) {
    let Controllers { ctx, connections, ready } = shared;
    // Reconcile requests (from the sync and the receiver) go to the controller of their namespace.
    let mut routes: Vec<(
        Option<String>,
        futures::channel::mpsc::UnboundedSender<ObjectRef<CarerixConnection>>,
    )> = Vec::new();
    let mut runs = Vec::new();
    for (index, (ns, store)) in connections.scopes().enumerate() {
        let ns = ns.map(str::to_string);
        let secrets: Api<PartialObjectMeta<Secret>> = match &ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        // Only changes a person made start a pass, never our own status writes (controller::watch).
        let changes = controller::watch::connection_changes(&connections, index);
        let controller = Controller::for_stream(changes, store.clone())
            .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency));
        let secret_events = watcher(secrets, watcher::Config::default().any_semantic()).touched_objects();
        let mapper_store = store.clone();
        let controller = controller.watches_stream(secret_events, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            mapper_store
                .state()
                .into_iter()
                .filter(|c| c.namespace() == ns && references_secret(c, &name))
                .map(|c| ObjectRef::from(c.as_ref()))
                .collect::<Vec<_>>()
        });
        let (route_tx, route_rx) = futures::channel::mpsc::unbounded();
        routes.push((ns.clone(), route_tx));
        let controller = controller.reconcile_on(route_rx);
        let mut stop = shutdown.clone();
        let ctx = ctx.clone();
        runs.push(async move {
            controller
                .graceful_shutdown_on(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .run(controller::reconcile, controller::error_policy, ctx.clone())
                .for_each(|result| async move {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "reconcile error");
                    }
                })
                .await;
        });
    }
    let readiness = async move {
        while !connections.is_ready() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ready.store(true, Ordering::SeqCst);
        info!("caches synced; ready");
    };
    tokio::spawn(readiness);
    tokio::spawn(async move {
        let mut requests = reconcile_rx;
        while let Some(obj) = requests.next().await {
            let route = routes.iter().find(|(ns, _)| ns.is_none() || *ns == obj.namespace);
            if let Some((_, tx)) = route {
                let _ = tx.unbounded_send(obj);
            }
        }
    });
    join_all(runs).await;
}

#[cfg(test)]
mod log_tests {
    use std::sync::{Arc, Mutex};

    use super::{LogFormat, log_subscriber};

    /// Everything written to it, as a log file would hold it.
    #[derive(Clone, Default)]
    struct LogFile(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogFile {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("the log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for LogFile {
        type Writer = LogFile;
        fn make_writer(&'w self) -> LogFile {
            self.clone()
        }
    }

    fn log_one_line(format: LogFormat, colour: bool) -> String {
        let file = LogFile::default();
        let subscriber = log_subscriber(format, "info", file.clone(), colour);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(connection = "recruiting/acme", "Carerix rate limit reached");
        });
        let bytes = file.0.lock().expect("the log buffer").clone();
        String::from_utf8(bytes).expect("UTF-8 log")
    }

    #[test]
    fn a_log_written_to_a_file_has_no_colour_codes() {
        let line = log_one_line(LogFormat::Text, false);
        assert!(line.contains("Carerix rate limit reached"), "{line}");
        assert!(line.contains("connection=\"recruiting/acme\""), "{line}");
        assert!(!line.contains('\x1b'), "colour codes in {line:?}");
    }

    #[test]
    fn a_log_on_a_terminal_is_coloured() {
        let line = log_one_line(LogFormat::Text, true);
        assert!(line.contains('\x1b'), "no colour codes in {line:?}");
    }

    #[test]
    fn json_logs_are_one_plain_json_object_per_line_even_on_a_terminal() {
        let line = log_one_line(LogFormat::Json, true);
        assert!(!line.contains('\x1b'), "colour codes in {line:?}");
        let event: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
        assert_eq!(event["message"], "Carerix rate limit reached");
        assert_eq!(event["connection"], "recruiting/acme");
        assert_eq!(event["level"], "WARN");
    }
}

#[cfg(test)]
mod mode_tests {
    use clap::Parser;

    use super::{Error, RunArgs, run};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["carerix-operator"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).expect("the flags parse").run
    }

    #[tokio::test]
    async fn sharding_and_leader_election_together_are_refused_before_anything_starts() {
        let both = args(&["--sharding", "--leader-elect", "--kubeconfig", "/nonexistent"]);
        assert!(matches!(run(both).await, Err(Error::ShardingWithLeaderElection)));
        // Either alone gets past that check (and then fails on the missing kubeconfig).
        for one in [["--sharding"], ["--leader-elect"]] {
            let alone = args(&[one[0], "--kubeconfig", "/nonexistent"]);
            assert!(matches!(run(alone).await, Err(Error::Kubeconfig { .. })));
        }
    }

    #[test]
    fn the_shard_address_is_the_pod_ip_with_the_receiver_port() {
        let a = args(&["--sharding", "--pod-ip", "10.1.2.3", "--listen", "0.0.0.0:8080"]);
        assert_eq!(super::shard_address(&a).expect("an address"), "10.1.2.3:8080");
        let v6 = args(&["--sharding", "--pod-ip", "fd00::7", "--listen", "[::]:8080"]);
        assert_eq!(super::shard_address(&v6).expect("an address"), "[fd00::7]:8080");
        let local = args(&["--sharding", "--listen", "127.0.0.1:9000"]);
        assert_eq!(super::shard_address(&local).expect("an address"), "127.0.0.1:9000");
        let nowhere = args(&["--sharding", "--listen", "0.0.0.0:8080"]);
        assert!(matches!(super::shard_address(&nowhere), Err(Error::ShardAddress)));
    }
}
