//! `kubectl carerix` against a real API server: connections made ready, progressing and stalled
//! by writing their status subresource as the operator would, the plugin's plain and JSON output
//! for each, `status -w` in a pseudo-terminal whose screen shows the bar advance while the status
//! changes, and `reconcile` waiting for the operator's echo. One test drives `status -w` through a
//! real initial sync: the operator (run in this process), the emulator and PostgreSQL, as the demo.
//!
//! The control plane is the one `hack/test.sh` started (`CARERIX_TEST_KUBECONFIG`), else this
//! binary starts its own with `hack/control-plane.sh`, as the operator's tests do.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use carerix_operator::api::{CarerixConnection, RECONCILE_REQUESTED_AT};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the plugin lives in the workspace")
}

struct ControlPlane {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
}

impl ControlPlane {
    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl could not be run")
    }

    async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("readable kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("valid kubeconfig");
        Client::try_from(config).expect("a kube client")
    }

    fn namespace(&self, prefix: &str) -> String {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("{prefix}-{:08x}", (nanos as u64 ^ u64::from(std::process::id())) & 0xffff_ffff);
        let out = self.kubectl(&["create", "namespace", &name]);
        assert!(out.status.success(), "creating namespace {name}: {}", String::from_utf8_lossy(&out.stderr));
        name
    }
}

fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let cp = if let Ok(path) = std::env::var("CARERIX_TEST_KUBECONFIG") {
            let kubectl = std::env::var("CARERIX_TEST_KUBECTL")
                .map_or_else(|_| PathBuf::from("kubectl"), PathBuf::from);
            ControlPlane { kubeconfig: PathBuf::from(path), kubectl }
        } else {
            let dir = std::env::temp_dir().join(format!("kubectl-carerix-cp-{}", std::process::id()));
            let out = Command::new(repo_root().join("hack/control-plane.sh"))
                .arg("start")
                .arg(&dir)
                .arg("--watch-pid")
                .arg(std::process::id().to_string())
                .output()
                .expect("could not run hack/control-plane.sh");
            assert!(
                out.status.success(),
                "hack/control-plane.sh could not start kube-apiserver and etcd:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let bin = std::fs::read_to_string(dir.join("bin")).expect("control plane wrote its bin dir");
            ControlPlane {
                kubeconfig: dir.join("kubeconfig"),
                kubectl: PathBuf::from(bin.trim()).join("kubectl"),
            }
        };
        let crds = repo_root().join("crds");
        let out =
            cp.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds.to_str().expect("utf-8")]);
        assert!(out.status.success(), "installing the CRD: {}", String::from_utf8_lossy(&out.stderr));
        let out = cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/carerixconnections.hiredata.io",
        ]);
        assert!(
            out.status.success(),
            "the CRD was not established: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..100 {
            let out = cp.kubectl(&["get", "--raw", "/apis/hiredata.io/v1alpha1"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"carerixconnections\"")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        cp
    })
}

fn plugin(cp: &ControlPlane, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-carerix"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .env_remove("NO_COLOR")
        .args(args)
        .output()
        .expect("the plugin runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn create(client: &Client, ns: &str, name: &str) -> Api<CarerixConnection> {
    let api: Api<CarerixConnection> = Api::namespaced(client.clone(), ns);
    let obj = json!({
        "apiVersion": "hiredata.io/v1alpha1", "kind": "CarerixConnection",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "tenant": "acme",
            "credentialsSecretRef": {"name": "creds"},
            "webhooks": [{"name": "matches", "events": ["crmatch:created", "crmatch:updated"]}],
        },
    });
    api.patch(name, &PatchParams::apply("plugin-tests").force(), &Patch::Apply(&obj)).await.expect("created");
    api
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T10:00:00Z"})
}

async fn set_status(api: &Api<CarerixConnection>, name: &str, status: Value) {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status })))
        .await
        .expect("the status is written");
}

fn webhooks() -> Value {
    json!({"applicationId": "app-1", "summary": "1/1", "items": [{
        "name": "matches", "id": "wh-1", "url": "https://hooks.example.com/webhooks/ns/acme",
        "events": ["crmatch:created", "crmatch:updated"], "state": "enabled"}]})
}

fn ready_status() -> Value {
    json!({
        "conditions": [
            cond("Ready", "True", "Ready", "credentials valid, 1/1 webhooks, 1200 records synced"),
            cond("CredentialsValid", "True", "Ready", "token obtained"),
            cond("WebhooksReady", "True", "WebhooksReady", "1/1 webhooks enabled"),
            cond("DataSynced", "True", "Synced", "1200 records"),
        ],
        "webhooks": webhooks(),
        "sync": {"records": 1200, "lastSyncTime": "2026-01-01T10:05:00Z", "entities": [
            {"entity": "candidates", "phase": "Incremental", "records": 1200,
             "lastRunFinished": "2026-01-01T10:05:00Z"}]},
    })
}

fn progressing_status(records: i64, started: &str) -> Value {
    json!({
        "conditions": [
            cond("Ready", "False", "InitialSyncInProgress", "candidates: initial sync"),
            cond("Reconciling", "True", "InitialSyncInProgress", "candidates: initial sync"),
            cond("CredentialsValid", "True", "Ready", "token obtained"),
            cond("WebhooksReady", "True", "WebhooksReady", "1/1 webhooks enabled"),
            cond("DataSynced", "False", "InitialSyncInProgress", "candidates: initial sync"),
        ],
        "webhooks": webhooks(),
        "sync": {"records": records, "entities": [
            {"entity": "candidates", "phase": "Initial", "records": records, "total": 1000,
             "initialSyncStarted": started}]},
    })
}

fn stalled_status() -> Value {
    json!({
        "conditions": [
            cond("Ready", "False", "MissingScope", "the client lacks the scope urn:cx/webhooks:data:manage"),
            cond("Stalled", "True", "MissingScope", "the client lacks the scope urn:cx/webhooks:data:manage"),
            cond("CredentialsValid", "False", "MissingScope", "the client lacks the scope urn:cx/webhooks:data:manage"),
        ],
    })
}

fn seconds_ago(s: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
#[ignore = "needs the control plane: hack/test.sh"]
async fn status_tells_ready_progressing_and_stalled_connections_apart_in_plain_text() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = cp.namespace("plugin-text");
    let ready = create(&client, &ns, "ready").await;
    set_status(&ready, "ready", ready_status()).await;
    let syncing = create(&client, &ns, "syncing").await;
    set_status(&syncing, "syncing", progressing_status(250, &seconds_ago(100))).await;
    let stalled = create(&client, &ns, "stalled").await;
    set_status(&stalled, "stalled", stalled_status()).await;

    let out = plugin(cp, &["status", "-n", &ns]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "piped output has no colours: {text:?}");
    assert!(text.contains(&format!("{ns}/ready  tenant acme  Ready\n")), "{text}");
    assert!(text.contains("ok DataSynced        data is synced"), "{text}");
    assert!(
        text.contains(
            "matches  enabled  crmatch:created,crmatch:updated  -> https://hooks.example.com/webhooks/ns/acme"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{ns}/syncing  tenant acme  Initial sync in progress: candidates: initial sync"
        ))
    );
    assert!(text.contains("candidates  initial sync  250/1000 (25%)  2."), "rate of about 2.5/s: {text}");
    assert!(text.contains("ETA 5m"), "750 records left at 2.5/s: {text}");
    assert!(
        text.contains(&format!(
            "{ns}/stalled  tenant acme  Stalled (MissingScope): the client lacks the scope urn:cx/webhooks:data:manage"
        )),
        "{text}"
    );
    assert!(
        text.contains("!! Stalled           stalled: retrying will not help until someone acts"),
        "{text}"
    );

    // One connection by name, and all namespaces.
    let one = stdout(&plugin(cp, &["status", "stalled", "-n", &ns]));
    assert!(one.contains("/stalled") && !one.contains("/ready"), "{one}");
    let all = stdout(&plugin(cp, &["status", "-A"]));
    assert!(all.contains(&format!("{ns}/ready")) && all.contains(&format!("{ns}/syncing")), "{all}");
    let missing = plugin(cp, &["status", "nope", "-n", &ns]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains(&format!("CarerixConnection {ns}/nope was not found"))
    );
}

#[tokio::test]
#[ignore = "needs the control plane: hack/test.sh"]
async fn status_as_json_carries_conditions_webhooks_and_progress_for_scripts() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = cp.namespace("plugin-json");
    let ready = create(&client, &ns, "ready").await;
    set_status(&ready, "ready", ready_status()).await;
    let syncing = create(&client, &ns, "syncing").await;
    set_status(&syncing, "syncing", progressing_status(400, &seconds_ago(200))).await;
    let stalled = create(&client, &ns, "stalled").await;
    set_status(&stalled, "stalled", stalled_status()).await;

    let out = plugin(cp, &["status", "-n", &ns, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let conns = v["connections"].as_array().expect("a list");
    let names: Vec<&str> = conns.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["ready", "stalled", "syncing"]);
    let by = |n: &str| conns.iter().find(|c| c["name"] == n).expect("present");
    assert_eq!(by("ready")["summary"], "Ready");
    assert_eq!(by("ready")["webhooks"]["items"][0]["state"], "enabled");
    assert_eq!(by("stalled")["conditions"][1]["type"], "Stalled");
    assert_eq!(by("stalled")["conditions"][1]["good"], false);
    let e = &by("syncing")["sync"]["entities"][0];
    assert_eq!(e["records"], 400);
    assert_eq!(e["total"], 1000);
    assert_eq!(e["fraction"], 0.4);
    let rate = e["ratePerSecond"].as_f64().expect("a rate");
    assert!((1.8..=2.1).contains(&rate), "400 records in about 200s: {rate}");
    assert!(e["etaSeconds"].as_u64().is_some_and(|s| (280..=340).contains(&s)), "{e}");
}

/// The screen of a pseudo-terminal running the plugin, as a terminal would show it.
struct Terminal {
    screen: Arc<Mutex<vt100::Parser>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Terminal {
    fn run(cp: &ControlPlane, args: &[&str]) -> Terminal {
        use portable_pty::{CommandBuilder, PtySize, native_pty_system};
        let pair = native_pty_system()
            .openpty(PtySize { rows: 40, cols: 160, pixel_width: 0, pixel_height: 0 })
            .expect("a pty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_kubectl-carerix"));
        cmd.args(args);
        cmd.env("KUBECONFIG", &cp.kubeconfig);
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("NO_COLOR");
        let child = pair.slave.spawn_command(cmd).expect("the plugin starts in the pty");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("a reader");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(40, 160, 0)));
        let feed = screen.clone();
        std::thread::spawn(move || {
            let _master = pair.master;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).process(&buf[..n]);
            }
        });
        Terminal { screen, child }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).screen().contents()
    }

    fn has_colour(&self) -> bool {
        let parser = self.screen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let screen = parser.screen();
        (0..40).any(|row| {
            (0..160).any(|col| screen.cell(row, col).is_some_and(|c| c.fgcolor() != vt100::Color::Default))
        })
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.contents();
            if check(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "the terminal never showed {what}; it shows:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bar_cells(screen: &str) -> usize {
    screen.lines().find(|l| l.trim_start().starts_with("candidates ")).map_or(0, |l| l.matches('█').count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn status_watch_in_a_terminal_shows_the_bar_advance_while_the_initial_sync_runs() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = cp.namespace("plugin-watch");
    let api = create(&client, &ns, "acme").await;
    let started = seconds_ago(60);
    set_status(&api, "acme", progressing_status(100, &started)).await;

    let term = Terminal::run(cp, &["status", "acme", "-n", &ns, "-w"]);
    let first = term.wait_for("100 of 1000 records", |s| s.contains("100/1000 (10%)")).await;
    assert_eq!(bar_cells(&first), 3, "a tenth of 30 cells:\n{first}");
    assert!(term.has_colour(), "a terminal gets colours");

    set_status(&api, "acme", progressing_status(600, &started)).await;
    let later = term.wait_for("600 of 1000 records", |s| s.contains("600/1000 (60%)")).await;
    assert_eq!(bar_cells(&later), 18, "six tenths of 30 cells:\n{later}");
    assert!(!later.contains("100/1000"), "the frame is redrawn in place:\n{later}");

    set_status(&api, "acme", ready_status()).await;
    let done =
        term.wait_for("the end of the initial sync", |s| s.contains("1200 records, incremental")).await;
    assert!(done.contains(&format!("{ns}/acme  tenant acme  Ready")), "{done}");
    assert_eq!(bar_cells(&done), 0, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn reconcile_sets_the_annotation_and_returns_once_the_operator_echoes_it() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = cp.namespace("plugin-reconcile");
    let api = create(&client, &ns, "acme").await;
    set_status(&api, "acme", ready_status()).await;

    // Stand in for the operator: echo the annotation into the status once it appears.
    let echo = {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                let obj = api.get("acme").await.expect("readable");
                if let Some(at) =
                    obj.metadata.annotations.as_ref().and_then(|a| a.get(RECONCILE_REQUESTED_AT))
                {
                    let patch = json!({"status": {"lastHandledReconcileAt": at}});
                    api.patch_status("acme", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .expect("echo");
                    return at.clone();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let kubeconfig = cp.kubeconfig.clone();
    let ns2 = ns.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kubectl-carerix"))
            .env("KUBECONFIG", kubeconfig)
            .args(["reconcile", "acme", "-n", &ns2, "--timeout", "30s"])
            .output()
            .expect("the plugin runs")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let requested = echo.await.expect("the echo ran");
    let text = stdout(&out);
    assert!(text.contains(&format!("requested a reconcile of {ns}/acme at {requested}")), "{text}");
    assert!(text.contains("reconciled: Ready"), "{text}");

    // Without an operator to echo it, the plugin gives up with advice.
    let out = plugin(cp, &["reconcile", "acme", "-n", &ns, "--timeout", "2s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the operator did not handle the reconcile request within 2s"), "{err}");
}

/// The operator's command line, to run it in this process as the binary would.
#[derive(clap::Parser)]
struct OperatorCli {
    #[command(flatten)]
    run: carerix_operator::run::RunArgs,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// PostgreSQL: `CARERIX_TEST_POSTGRES_URL` (set by `hack/test.sh`), else one started here.
fn postgres_url() -> String {
    if let Ok(url) = std::env::var("CARERIX_TEST_POSTGRES_URL") {
        return url;
    }
    let dir = std::env::temp_dir().join(format!("kubectl-carerix-pg-{}", std::process::id()));
    let out = Command::new(repo_root().join("hack/postgres.sh"))
        .arg("start")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .output()
        .expect("hack/postgres.sh runs (needs Debian's postgresql package)");
    assert!(out.status.success(), "PostgreSQL did not start: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export CARERIX_TEST_POSTGRES_URL="))
        .expect("hack/postgres.sh prints the URL")
        .trim()
        .to_string()
}

async fn put_secret(client: &Client, ns: &str, name: &str, data: Value) {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                        "stringData": data});
    api.patch(name, &PatchParams::apply("plugin-tests").force(), &Patch::Apply(&secret))
        .await
        .expect("secret");
}

/// The line of `entity` in the sync part of the screen (a webhook may have the same name).
fn sync_line<'a>(screen: &'a str, entity: &str) -> Option<&'a str> {
    screen
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Sync:"))
        .find(|l| l.trim_start().starts_with(&format!("{entity} ")))
}

/// What the terminal shows for one entity: the done count while the bar runs, or `None` once
/// the entity is incremental.
fn entity_state(screen: &str, entity: &str) -> Option<Option<u64>> {
    let line = sync_line(screen, entity)?;
    if line.contains("records, incremental") {
        return Some(None);
    }
    let (done, _) = line.split_once('/')?;
    done.rsplit(' ').next()?.parse().ok().map(Some)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and PostgreSQL: hack/test.sh"]
async fn status_watch_follows_a_real_initial_sync_with_a_moving_bar_until_it_is_done() {
    use clap::Parser;
    let cp = control_plane();
    let client = cp.client().await;
    let ns = cp.namespace("plugin-live");
    // 4200 records at 3 requests per second: an initial sync of some twenty seconds.
    let mut config = carerix_sim::Config::for_tests();
    config.records_per_entity = 600;
    config.tenants.push(carerix_sim::TenantConfig { name: "acme".into(), webhooks_activated: true });
    config.clients.push(carerix_sim::ClientConfig {
        tenant: "acme".into(),
        client_id: "demo-client".into(),
        secret: "demo-secret".into(),
    });
    let sim = carerix_sim::spawn(config).await.expect("the emulator starts");
    let sim_url = sim.base_url().as_str().trim_end_matches('/').to_string();
    put_secret(
        &client,
        &ns,
        "acme-carerix",
        json!({"clientId": "demo-client", "clientSecret": "demo-secret"}),
    )
    .await;
    put_secret(&client, &ns, "carerix-db", json!({"url": postgres_url()})).await;

    let (port, probe_port) = (free_port(), free_port());
    let kubeconfig = cp.kubeconfig.to_string_lossy().into_owned();
    let cli = OperatorCli::parse_from([
        "carerix-operator",
        "--kubeconfig",
        &kubeconfig,
        "--namespaces",
        &ns,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--probe-listen",
        &format!("127.0.0.1:{probe_port}"),
        "--receiver-base-url",
        &format!("http://127.0.0.1:{port}"),
        "--carerix-rate-limit",
        "3",
        "--allowed-carerix-hosts",
        "http://127.0.0.1:*",
    ]);
    // `run` is not `Send`: it gets a thread and a runtime of its own, until the test binary exits.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime for the operator");
        if let Err(e) = runtime.block_on(carerix_operator::run::run(cli.run)) {
            eprintln!("the operator stopped: {e}");
        }
    });
    let api: Api<CarerixConnection> = Api::namespaced(client.clone(), &ns);
    let schema = format!("live_{}", &ns[ns.len() - 8..]);
    let obj = json!({
        "apiVersion": "hiredata.io/v1alpha1", "kind": "CarerixConnection",
        "metadata": {"name": "acme", "namespace": ns},
        "spec": {
            "tenant": "acme",
            "credentialsSecretRef": {"name": "acme-carerix"},
            "identityUrl": sim_url, "apiUrl": sim_url,
            "interval": "3s",
            "webhooks": [{"name": "candidates", "events": ["cremployee:created", "cremployee:updated"]}],
            "sync": {"interval": "30s",
                     "sink": {"postgres": {"connectionSecretRef": {"name": "carerix-db", "key": "url"}, "schema": schema}}},
        },
    });
    api.patch("acme", &PatchParams::apply("plugin-tests").force(), &Patch::Apply(&obj))
        .await
        .expect("created");

    let term = Terminal::run(cp, &["status", "acme", "-n", &ns, "-w"]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen: Vec<u64> = Vec::new();
    let mut coloured_bar = false;
    let finished = loop {
        let screen = term.contents();
        match entity_state(&screen, "candidates") {
            Some(Some(done)) => {
                if seen.last() != Some(&done) {
                    seen.push(done);
                }
                coloured_bar |= term.has_colour() && screen.contains('█');
            }
            Some(None) if !seen.is_empty() && screen.contains(&format!("{ns}/acme  tenant acme  Ready")) => {
                break screen;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the initial sync did not finish on screen within 180 s; progress seen {seen:?}; screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen.len() >= 2, "the bar never moved: done counts seen {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "the bar went backwards: {seen:?}");
    assert!(coloured_bar, "the terminal showed no coloured bar");
    // The live records (Carerix also lists the soft-deleted ones).
    let expected = sim
        .sim()
        .list_records("acme", carerix_sim::Entity::parse("candidates").expect("entity"))
        .expect("records")
        .iter()
        .filter(|r| r.get("deleted").and_then(Value::as_i64).unwrap_or(0) == 0)
        .count();
    let line = sync_line(&finished, "candidates").unwrap_or_default();
    assert!(line.contains(&format!(" {expected} records, incremental")), "{finished}");
    assert!(!finished.contains('░'), "no bar is left once the sync is done:\n{finished}");
}

/// A copy of the plugin alone in a temp dir, so what is beside it is up to the test.
/// Runs a program this test has just written. Another test thread that forks while the file is
/// still open for writing holds it open in its child until that child execs, and running the file
/// meanwhile fails with ETXTBSY ("Text file busy"): wait for that moment to pass.
fn output_of_fresh_executable(cmd: &mut Command) -> std::process::Output {
    for _ in 0..200 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.expect("runs"),
        }
    }
    panic!("the freshly written program stayed busy for 2 s")
}

fn lone_plugin() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let copy = dir.path().join("kubectl-carerix");
    std::fs::copy(env!("CARGO_BIN_EXE_kubectl-carerix"), &copy).expect("copy the plugin");
    (dir, copy)
}

#[test]
fn preflight_without_the_operator_binary_says_where_it_looked() {
    let (_dir, plugin) = lone_plugin();
    let out = output_of_fresh_executable(Command::new(&plugin).env("PATH", "/nonexistent").args([
        "preflight",
        "--tenant",
        "acme",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("carerix-operator was not found on PATH nor next to kubectl-carerix"), "{err}");
}

#[test]
fn preflight_runs_the_operator_beside_the_plugin_with_the_arguments_and_its_exit_code() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, plugin) = lone_plugin();
    let fake = dir.path().join("carerix-operator");
    std::fs::write(&fake, "#!/bin/sh\necho \"operator called with: $*\"\nexit 3\n").expect("write");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = output_of_fresh_executable(Command::new(&plugin).env("PATH", "/nonexistent").args([
        "preflight",
        "--tenant",
        "acme",
        "-o",
        "json",
    ]));
    assert_eq!(out.status.code(), Some(3), "the operator's exit code is passed on");
    assert_eq!(stdout(&out), "operator called with: preflight --tenant acme -o json\n");
}
