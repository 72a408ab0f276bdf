//! `kubectl carerix`: a kubectl plugin for carerix-operator.
//!
//! - `status [NAME] [-n NS | -A] [-w] [-o text|json]`: each connection's conditions in words, its
//!   webhooks, and per entity the progress of the initial sync (records of total, rate, ETA);
//!   `-w` redraws on every change.
//! - `reconcile NAME [-n NS]`: sets `hiredata.io/reconcile-requested-at` and waits until the
//!   operator echoes it in `status.lastHandledReconcileAt`.
//! - `preflight [ARGS...]`: runs `carerix-operator preflight ARGS...`.
//!
//! Install with `cargo install --path kubectl-carerix`; kubectl finds `kubectl-carerix` on PATH.

mod view;

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use carerix_operator::api::{CarerixConnection, RECONCILE_REQUESTED_AT};
use chrono::{SecondsFormat, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher},
};
use view::{ConnectionView, Style, connection_view, render_text};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl carerix",
    version,
    about = "Status, reconcile and preflight for carerix-operator's CarerixConnections"
)]
struct Cli {
    /// Path to the kubeconfig (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show connections: conditions in words, webhooks, and the initial sync's progress.
    Status {
        /// One connection; all in the namespace when omitted.
        name: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Keep watching and redraw on every change (Ctrl-C to stop).
        #[arg(short = 'w', long)]
        watch: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Ask the operator to reconcile a connection now and wait until it has.
    Reconcile {
        /// The connection.
        name: String,
        /// How long to wait for the operator, e.g. 30s or 2m.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Run `carerix-operator preflight` with the arguments that follow.
    Preflight {
        /// Arguments for `carerix-operator preflight`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot reach the cluster: {0} (check KUBECONFIG or --kubeconfig)")]
    Config(String),
    #[error("the Kubernetes API refused the request: {0}")]
    Kube(#[from] kube::Error),
    #[error("CarerixConnection {namespace}/{name} was not found")]
    NotFound { namespace: String, name: String },
    #[error(
        "the operator did not handle the reconcile request within {0:?}: is carerix-operator running and \
         watching this namespace? (kubectl get pods -A -l app.kubernetes.io/name=carerix-operator)"
    )]
    ReconcileTimeout(Duration),
    #[error(
        "carerix-operator was not found on PATH nor next to kubectl-carerix ({0}); install it with \
         `cargo install --path .` from the carerix-operator repository, or put it on PATH"
    )]
    OperatorBinaryMissing(String),
    #[error("could not run {0}: {1}")]
    Exec(String, std::io::Error),
    #[error("cannot watch CarerixConnections: {0}")]
    Watch(kube::runtime::watcher::Error),
    #[error("could not write the output: {0}")]
    Write(#[from] std::io::Error),
    #[error("could not encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration such as 30s or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration such as 30s or 2m")),
    }
}

async fn client(cli: &Cli) -> Result<(Client, String), Error> {
    let options = KubeConfigOptions { context: cli.context.clone(), ..KubeConfigOptions::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Config(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| Error::Config(e.to_string()))?
        }
        None if cli.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| Error::Config(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| Error::Config(e.to_string()))?,
    };
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok((client, namespace))
}

fn style() -> Style {
    Style { terminal: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() }
}

fn print_views(views: &[ConnectionView], output: Output, style: Style) -> Result<String, Error> {
    Ok(match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&serde_json::json!({ "connections": views }))?;
            s.push('\n');
            s
        }
        Output::Text if views.is_empty() => "No CarerixConnections found.\n".to_string(),
        Output::Text => views.iter().map(|v| render_text(v, style)).collect::<Vec<_>>().join("\n"),
    })
}

fn views<'a>(objs: impl Iterator<Item = &'a CarerixConnection>) -> Vec<ConnectionView> {
    let now = Utc::now();
    let mut v: Vec<ConnectionView> = objs.map(|o| connection_view(o, now)).collect();
    v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    v
}

async fn status(
    api: Api<CarerixConnection>,
    namespace: &str,
    name: Option<String>,
    watch: bool,
    output: Output,
) -> Result<(), Error> {
    let style = style();
    let mut stdout = std::io::stdout();
    if !watch {
        let objs = match &name {
            Some(n) => vec![
                api.get_opt(n)
                    .await?
                    .ok_or_else(|| Error::NotFound { namespace: namespace.to_string(), name: n.clone() })?,
            ],
            None => api.list(&ListParams::default()).await?.items,
        };
        stdout.write_all(print_views(&views(objs.iter()), output, style)?.as_bytes())?;
        return Ok(());
    }
    let mut config = watcher::Config::default();
    if let Some(n) = &name {
        config = config.fields(&format!("metadata.name={n}"));
    }
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut objs: BTreeMap<(String, String), CarerixConnection> = BTreeMap::new();
    let mut init: BTreeMap<(String, String), CarerixConnection> = BTreeMap::new();
    let mut synced = false;
    let mut last = String::new();
    // On a terminal the rate and ETA tick every second; piped, a view is printed when it changes.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return Ok(()) };
                let key = |o: &CarerixConnection| (o.namespace().unwrap_or_default(), o.name_any());
                let event = match event {
                    Ok(event) => event,
                    // Before the first listing an error is the answer (no CRD, no access);
                    // afterwards the watch retries with backoff.
                    Err(e) if !synced => return Err(Error::Watch(e)),
                    Err(_) => continue,
                };
                match event {
                    watcher::Event::Init => init.clear(),
                    watcher::Event::InitApply(o) => { init.insert(key(&o), o); }
                    watcher::Event::InitDone => { objs = std::mem::take(&mut init); synced = true; }
                    watcher::Event::Apply(o) => { objs.insert(key(&o), o); }
                    watcher::Event::Delete(o) => { objs.remove(&key(&o)); }
                }
            }
            _ = tick.tick(), if style.terminal || !synced => {}
        }
        if !synced {
            continue;
        }
        let text = print_views(&views(objs.values()), output, style)?;
        if style.terminal && output == Output::Text {
            // Home, draw, clear what is left of the previous frame.
            stdout.write_all(format!("\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n")).as_bytes())?;
            stdout.flush()?;
        } else if text != last {
            stdout.write_all(text.as_bytes())?;
            if output == Output::Text {
                stdout.write_all(b"\n")?;
            }
            stdout.flush()?;
        }
        last = text;
    }
}

async fn reconcile(
    api: Api<CarerixConnection>,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), Error> {
    if api.get_opt(name).await?.is_none() {
        return Err(Error::NotFound { namespace: namespace.into(), name: name.into() });
    }
    let requested = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
    let patch = serde_json::json!({ "metadata": { "annotations": { RECONCILE_REQUESTED_AT: requested } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    println!("requested a reconcile of {namespace}/{name} at {requested}; waiting for the operator");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let obj = api.get(name).await?;
        let status = obj.status.as_ref();
        if status.and_then(|s| s.last_handled_reconcile_at.as_deref()) == Some(requested.as_str()) {
            let view = connection_view(&obj, Utc::now());
            println!("reconciled: {}", view.summary);
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::ReconcileTimeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `carerix-operator` next to this executable, else on PATH.
fn operator_binary() -> Result<PathBuf, Error> {
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let candidate = dir.join("carerix-operator");
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(dir.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("carerix-operator");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        looked.push("PATH".into());
    }
    Err(Error::OperatorBinaryMissing(format!("looked in {}", looked.join(" and "))))
}

fn preflight(cli: &Cli, args: &[String]) -> Result<ExitCode, Error> {
    let bin = operator_binary()?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("preflight").args(args);
    if let Some(k) = &cli.kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let status = cmd.status().map_err(|e| Error::Exec(bin.display().to_string(), e))?;
    Ok(ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)))
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    if let Command::Preflight { args } = &cli.command {
        return preflight(&cli, args);
    }
    let (client, namespace) = client(&cli).await?;
    match cli.command {
        Command::Status { name, all_namespaces, watch, output } => {
            let api: Api<CarerixConnection> = if all_namespaces && name.is_none() {
                Api::all(client)
            } else {
                Api::namespaced(client, &namespace)
            };
            status(api, &namespace, name, watch, output).await?;
        }
        Command::Reconcile { name, timeout } => {
            reconcile(Api::namespaced(client, &namespace), &namespace, &name, timeout).await?;
        }
        Command::Preflight { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_take_seconds_minutes_and_hours() {
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_command_line_reads_like_kubectl() {
        let cli =
            Cli::try_parse_from(["kubectl-carerix", "status", "acme", "-n", "shop", "-w", "-o", "json"])
                .expect("parses");
        assert_eq!(cli.namespace.as_deref(), Some("shop"));
        match cli.command {
            Command::Status { name, watch, output, all_namespaces } => {
                assert_eq!(name.as_deref(), Some("acme"));
                assert!(watch && !all_namespaces);
                assert_eq!(output, Output::Json);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["kubectl-carerix", "preflight", "--tenant", "acme"]).expect("parses");
        match cli.command {
            Command::Preflight { args } => assert_eq!(args, ["--tenant", "acme"]),
            other => panic!("parsed as {other:?}"),
        }
    }
}
