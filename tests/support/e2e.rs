//! End-to-end helpers: the emulator in-process, the operator as a real process, and waits on
//! the resource's conditions.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use carerix_operator::api::{CarerixConnection, CarerixConnectionStatus};
use carerix_sim::{ClientConfig, Config as SimConfig, SimHandle, TenantConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};

use super::ControlPlane;

/// Starts the emulator with the given tenants (name, webhooks activated) and clients
/// (tenant, id, secret), with few records (the reconciler does not read them).
pub async fn emulator(tenants: &[(&str, bool)], clients: &[(&str, &str, &str)]) -> SimHandle {
    let mut config = SimConfig::for_tests();
    config.records_per_entity = 5;
    config.same_second_burst = 0;
    config.tenants = tenants
        .iter()
        .map(|(n, a)| TenantConfig { name: (*n).to_string(), webhooks_activated: *a })
        .collect();
    config.clients = clients
        .iter()
        .map(|(t, id, s)| ClientConfig { tenant: (*t).into(), client_id: (*id).into(), secret: (*s).into() })
        .collect();
    carerix_sim::spawn(config).await.expect("the emulator starts")
}

/// The operator, running as its own process until dropped.
pub struct Operator {
    child: Option<Child>,
    /// Port of its webhook receiver.
    pub port: u16,
    /// Port of its probe and metrics server.
    pub probe_port: u16,
    /// Its log file.
    pub log: PathBuf,
    args: Vec<String>,
    kubeconfig: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Operator {
    /// Starts `carerix-operator run` watching `namespaces`, with fast backoff for tests.
    pub fn start(cp: &ControlPlane, namespaces: &[&str], extra: &[&str]) -> Operator {
        Self::start_with_kubeconfig(cp.kubeconfig.clone(), namespaces, extra)
    }

    /// The same with another identity's kubeconfig.
    pub fn start_with_kubeconfig(kubeconfig: PathBuf, namespaces: &[&str], extra: &[&str]) -> Operator {
        let port = free_port();
        let probe_port = free_port();
        let mut args = vec![
            "run".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--probe-listen".into(),
            format!("127.0.0.1:{probe_port}"),
        ];
        // Replicas of one deployment share one public URL (the Service): a test can give one.
        if !extra.contains(&"--receiver-base-url") {
            args.extend(["--receiver-base-url".to_string(), format!("http://127.0.0.1:{port}")]);
        }
        args.extend([
            "--backoff-base-seconds".to_string(),
            "1".into(),
            "--backoff-max-seconds".into(),
            "4".into(),
            "--carerix-timeout-seconds".into(),
            "10".into(),
            "--log-level".into(),
            "info,carerix_operator=debug".into(),
        ]);
        if !namespaces.is_empty() {
            args.push("--namespaces".into());
            args.push(namespaces.join(","));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::env::temp_dir().join(format!("carerix-operator-{port}.log"));
        let mut op = Operator { child: None, port, probe_port, log, args, kubeconfig };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let file = File::create(&self.log).expect("a log file");
        let err = file.try_clone().expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_carerix-operator"))
            .args(&self.args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env_remove("KUBECONFIG")
            // The emulator listens on plain http on localhost: allowed explicitly, as the demo does.
            .env("ALLOWED_CARERIX_HOSTS", "*.carerix.io,*.carerix.net,http://127.0.0.1:*")
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("the operator binary starts");
        self.child = Some(child);
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        c.wait().expect("exit status")
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the process without waiting for it.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(format!("-{signal}")).arg(c.id().to_string()).status();
        }
    }

    /// Starts it again with the same arguments (a restart).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its resident memory (VmRSS) in KiB, on Linux; for measurements printed by tests.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// GET a path of its probe and metrics server (`/healthz`, `/readyz`, `/metrics`).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::get(format!("http://127.0.0.1:{}{path}", self.probe_port)).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.unwrap_or_default()))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- operator log (kept in {}):\n{}", self.log.display(), self.log_tail());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Creates or replaces an Opaque Secret.
pub async fn put_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) -> Secret {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let string_data: std::collections::BTreeMap<String, String> =
        data.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
        "stringData": string_data,
    });
    api.patch(name, &PatchParams::apply("e2e-tests").force(), &Patch::Apply(&secret))
        .await
        .expect("the Secret is written")
}

/// Creates a CarerixConnection from YAML (spec only).
pub async fn apply_connection(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> CarerixConnection {
    let api: Api<CarerixConnection> = Api::namespaced(client.clone(), ns);
    let obj = serde_json::json!({
        "apiVersion": "hiredata.io/v1alpha1", "kind": "CarerixConnection",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    api.patch(name, &PatchParams::apply("e2e-tests").force(), &Patch::Apply(&obj))
        .await
        .expect("the CarerixConnection is accepted")
}

/// The spec of a connection of `tenant` at `url` (the emulator), with credentials in Secret
/// `creds`, one webhook "candidates" on `events`, and its data synced into `schema` of the
/// database whose URL is in Secret `db` (key `url`). Reconciled and synced every ten minutes: a
/// test sets `interval`, `sync.interval` and the like on the value.
pub fn synced_spec(tenant: &str, creds: &str, url: &str, schema: &str, events: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "tenant": tenant,
        "credentialsSecretRef": {"name": creds},
        "identityUrl": url, "apiUrl": url,
        "interval": "10m",
        "webhooks": [{"name": "candidates", "events": events}],
        "sync": {
            "interval": "10m",
            "sink": {"postgres": {"connectionSecretRef": {"name": "db", "key": "url"}, "schema": schema}}
        }
    })
}

/// Deletes a CarerixConnection (the finalizer then runs).
pub async fn delete_connection(client: &Client, ns: &str, name: &str) {
    let api: Api<CarerixConnection> = Api::namespaced(client.clone(), ns);
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Reads a connection.
pub async fn get_connection(client: &Client, ns: &str, name: &str) -> Option<CarerixConnection> {
    let api: Api<CarerixConnection> = Api::namespaced(client.clone(), ns);
    api.get_opt(name).await.ok().flatten()
}

/// The status, reason and message of a condition.
pub fn condition(obj: &CarerixConnection, type_: &str) -> Option<(String, String, String)> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until condition `type_` has `status` (and `reason`, when given).
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> CarerixConnection {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Some(obj) = get_connection(client, ns, name).await {
            last = format!("{:?}", obj.status.as_ref().map(|s| &s.conditions));
            if let Some((s, r, _)) = condition(&obj, type_)
                && s == status
                && reason.is_none_or(|want| want == r)
            {
                return obj;
            }
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {ns}/{name} to have {type_}={status} {reason:?}; last conditions: {last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the connection is Ready and its status also passes `check` (a generation, an
/// echoed stamp). Ready matters: a pass that backs off half-way also writes `observedGeneration`.
pub async fn wait_ready_and(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&CarerixConnectionStatus) -> bool,
) -> CarerixConnection {
    let check = &check;
    super::eventually(what, timeout, || async move {
        let obj = get_connection(client, ns, name).await?;
        let ready = condition(&obj, "Ready").is_some_and(|(status, ..)| status == "True");
        (ready && obj.status.as_ref().is_some_and(check)).then_some(obj)
    })
    .await
}

/// Waits until the connection no longer exists (its finalizer has run).
pub async fn wait_gone(client: &Client, ns: &str, name: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while get_connection(client, ns, name).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "{ns}/{name} still exists after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a namespace through the API.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    api.create(&PostParams::default(), &ns).await.expect("namespace created");
    name
}
