//! Benchmark: many connections against the real API server and the emulator, with answer latency.
//!
//! ```text
//! cargo build --release --bins --examples
//! KUBECONFIG=... target/release/examples/bench_scale --connections 1000 --latency-ms 200 \
//!     --operator target/release/carerix-operator [-- extra operator flags]
//! ```
//!
//! Needs a running API server (`hack/control-plane.sh start DIR` prints the `KUBECONFIG`) with the
//! CRD installed. The emulator runs in this process with one tenant, one client and one webhook per
//! connection, behind a proxy that delays every answer by `--latency-ms`. The operator runs as its
//! own process, so its memory and CPU are its own. Printed, as a Markdown table row:
//! seconds from the first `apply` until every connection is `Ready`, the operator's peak RSS
//! (VmHWM), its RSS before any connection existed, memory per connection, its RSS at the end, and
//! over two reconcile intervals of steady state: status writes (watch events), Carerix writes,
//! Carerix requests and the operator's CPU share.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::Response,
};
use carerix_operator::api::CarerixConnection;
use carerix_sim::{ClientConfig, Config as SimConfig, TenantConfig};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::watcher,
};
use serde_json::json;

struct Args {
    connections: usize,
    latency: Duration,
    operator: PathBuf,
    interval_secs: u64,
    namespace: String,
    operator_args: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        connections: 1000,
        latency: Duration::from_millis(200),
        operator: PathBuf::from("target/release/carerix-operator"),
        interval_secs: 60,
        namespace: "bench-scale".into(),
        operator_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--connections" => args.connections = value()?.parse()?,
            "--latency-ms" => args.latency = Duration::from_millis(value()?.parse()?),
            "--operator" => args.operator = PathBuf::from(value()?),
            "--interval-seconds" => args.interval_secs = value()?.parse()?,
            "--namespace" => args.namespace = value()?,
            "--" => {
                args.operator_args = it.by_ref().collect();
                break;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// A reverse proxy in front of the emulator that delays every answer, as a distant Carerix does.
#[derive(Clone)]
struct Proxy {
    upstream: String,
    latency: Duration,
    http: reqwest::Client,
}

async fn forward(
    State(p): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(p.latency).await;
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let mut req = p.http.request(method, format!("{}{}", p.upstream, path)).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .unwrap_or_default();
        }
    };
    let mut out = Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            out = out.header(k, v);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    out.body(Body::from(bytes)).unwrap_or_default()
}

async fn start_proxy(upstream: String, latency: Duration) -> Result<SocketAddr> {
    let proxy =
        Proxy { upstream: upstream.trim_end_matches('/').to_string(), latency, http: reqwest::Client::new() };
    let app = Router::new().fallback(forward).with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// VmHWM and VmRSS of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat: 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn ready(c: &CarerixConnection) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|cond| cond.type_ == "Ready" && cond.status == "True"))
}

fn tenant(i: usize) -> String {
    format!("t{i:05}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let n = args.connections;
    let kube = Client::try_default().await.context("KUBECONFIG must point at the API server")?;

    // The emulator: one tenant and one client per connection, no records (the reconciler does not
    // read them); 1024-bit application keys, since the emulator's key generation is not measured.
    let mut sim = SimConfig::for_tests();
    sim.records_per_entity = 0;
    sim.same_second_burst = 0;
    sim.rate_limit_per_sec = 1000;
    sim.tenants = (0..n).map(|i| TenantConfig { name: tenant(i), webhooks_activated: true }).collect();
    sim.clients = (0..n)
        .map(|i| ClientConfig {
            tenant: tenant(i),
            client_id: format!("client-{i}"),
            secret: format!("secret-{i}"),
        })
        .collect();
    let sim = carerix_sim::spawn(sim).await.context("the emulator starts")?;
    let proxy = start_proxy(sim.base_url().to_string(), args.latency).await?;
    let carerix = format!("http://{proxy}");

    let ns = args.namespace.clone();
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let ssa = PatchParams::apply("bench-scale").force();
    namespaces
        .patch(
            &ns,
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        )
        .await?;

    // The operator, idle, before any connection exists.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::env::temp_dir().join("bench-scale-operator.log");
    let mut child: Child = Command::new(&args.operator)
        .args(["run", "--namespaces", &ns, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--receiver-base-url", &format!("http://127.0.0.1:{port}"), "--log-level", "warn"])
        .args(&args.operator_args)
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .spawn()
        .with_context(|| format!("starting {}", args.operator.display()))?;
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, idle_rss) = memory_kib(pid);

    // Peak RSS sampled throughout (VmHWM also records it; both are printed).
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kib(pid).1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let cxs: Api<CarerixConnection> = Api::namespaced(kube.clone(), &ns);
    let started = Instant::now();
    let interval = format!("{}s", args.interval_secs);
    stream::iter(0..n)
        .map(|i| {
            let (secrets, cxs, ssa, carerix, interval) =
                (secrets.clone(), cxs.clone(), ssa.clone(), carerix.clone(), interval.clone());
            async move {
                let name = format!("c{i:05}");
                let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
                    "stringData": {"clientId": format!("client-{i}"), "clientSecret": format!("secret-{i}")}});
                secrets.patch(&name, &ssa, &Patch::Apply(secret)).await?;
                let cx = json!({"apiVersion": "hiredata.io/v1alpha1", "kind": "CarerixConnection",
                    "metadata": {"name": name},
                    "spec": {"tenant": tenant(i), "credentialsSecretRef": {"name": name},
                        "identityUrl": carerix, "apiUrl": carerix, "interval": interval,
                        "webhooks": [{"name": "candidates", "events": ["cremployee:updated"]}]}});
                cxs.patch(&name, &ssa, &Patch::Apply(cx)).await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let applied = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(900);
    let all_ready = loop {
        let list = cxs.list(&ListParams::default()).await?;
        let count = list.items.iter().filter(|c| ready(c)).count();
        if count == n {
            break started.elapsed();
        }
        if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
            sampling.store(false, Ordering::Relaxed);
            let _ = child.kill();
            bail!(
                "only {count}/{n} connections Ready after {:?}; operator log: {}",
                started.elapsed(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Steady state: two intervals (plus the interval's jitter) with every connection Ready.
    let window = Duration::from_secs(args.interval_secs * 2 + args.interval_secs / 5);
    let writes = Arc::new(AtomicU64::new(0));
    let watching = {
        let writes = writes.clone();
        let cxs = cxs.clone();
        tokio::spawn(async move {
            let mut initial = true;
            let mut events = watcher(cxs, watcher::Config::default()).boxed();
            while let Some(Ok(ev)) = events.next().await {
                match ev {
                    watcher::Event::InitDone => initial = false,
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) if !initial => {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seq_before = sim.sim().request_log().last().map(|r| r.seq).unwrap_or(0);
    let cpu_before = cpu_seconds(pid);
    let window_start = Instant::now();
    tokio::time::sleep(window).await;
    let cpu_share = (cpu_seconds(pid) - cpu_before) / window_start.elapsed().as_secs_f64();
    watching.abort();
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let log_entries = sim.sim().request_log();
    for r in log_entries.iter().filter(|r| r.seq > seq_before) {
        let kind = if r.path.contains("/protocol/openid-connect/token") {
            "token"
        } else if r.method == "GET" || r.path.contains("graphql") {
            "read"
        } else {
            "write"
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    sampling.store(false, Ordering::Relaxed);
    let (hwm, steady_rss) = memory_kib(pid);
    let peak_rss = peak.load(Ordering::Relaxed);

    println!(
        "| connections | latency | applied in | all Ready after | peak RSS (VmHWM) | idle RSS | per connection | \
         steady RSS | steady: status writes | Carerix writes | Carerix reads | token requests | CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} ms | {:.1} s | {:.1} s | {:.1} MiB ({:.1} MiB sampled) | {:.1} MiB | {:.1} KiB | {:.1} MiB | {} | {} | {} | {} | {:.2} % |",
        args.latency.as_millis(),
        applied.as_secs_f64(),
        all_ready.as_secs_f64(),
        hwm as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        (hwm.saturating_sub(idle_rss)) as f64 / n as f64,
        steady_rss as f64 / 1024.0,
        writes.load(Ordering::Relaxed),
        by_kind.get("write").copied().unwrap_or(0),
        by_kind.get("read").copied().unwrap_or(0),
        by_kind.get("token").copied().unwrap_or(0),
        cpu_share * 100.0,
    );

    // Clean up: connections first (their finalizers remove the webhooks), then the operator.
    let _ = cxs.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
    let wait = Instant::now();
    while !cxs.list(&ListParams::default()).await?.items.is_empty()
        && wait.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    sim.shutdown().await;
    Ok(())
}
