//! Running the operator in production shape: under the Helm chart's ServiceAccount and RBAC,
//! two replicas with leader election, metrics and probes, graceful shutdown.

mod support;

use std::{path::PathBuf, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use support::{
    ControlPlane, control_plane,
    e2e::{Operator, apply_connection, emulator, put_secret, wait_condition},
    helm, repo_root,
};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn spec(sim_url: &str) -> serde_json::Value {
    let url = sim_url.trim_end_matches('/');
    json!({
        "tenant": "acme",
        "credentialsSecretRef": {"name": "creds"},
        "identityUrl": url,
        "apiUrl": url,
        "interval": "3s",
        "webhooks": [{"name": "a", "events": ["crmatch:created"], "url": "https://x.example.com/a"}],
    })
}

/// Issues a client-certificate kubeconfig for `user` on the control plane the tests started.
fn user_kubeconfig(cp: &ControlPlane, user: &str) -> PathBuf {
    let dir = cp.kubeconfig.parent().expect("the kubeconfig lives in the control plane dir");
    assert!(
        dir.join("pki/ca.key").is_file(),
        "this test issues a certificate for the chart's ServiceAccount and needs the control plane that \
         hack/control-plane.sh started (not USE_EXISTING_CLUSTER)"
    );
    static ISSUE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ISSUE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = std::process::Command::new(repo_root().join("hack/control-plane.sh"))
        .args(["user", dir.to_str().expect("utf-8 path"), user])
        .output()
        .expect("hack/control-plane.sh runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and helm: hack/test.sh"]
async fn the_operator_works_under_the_charts_service_account_and_is_refused_outside_its_role() {
    let cp = control_plane();
    let client = cp.client().await;
    let sim = emulator(&[("acme", true)], &[("acme", "acme-client", "s3cret")]).await;
    let ns = cp.namespace("rbac");
    let release = format!("cx-{}", &ns[ns.len() - 8..]);
    // The chart's namespaced RBAC, with leader election, installed as Helm would.
    let chart = repo_root().join("charts/carerix-operator");
    let out = helm(&[
        "template",
        &release,
        chart.to_str().expect("utf-8"),
        "--namespace",
        &ns,
        "--set",
        &format!("fullnameOverride={release}"),
        "--set",
        &format!("watchNamespaces={{{ns}}}"),
        "--set",
        "leaderElection.enabled=true",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ]);
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let rbac = String::from_utf8_lossy(&out.stdout).to_string();
    let applied = cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &rbac);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let kubeconfig = user_kubeconfig(cp, &format!("system:serviceaccount:{ns}:{release}"));

    put_secret(&client, &ns, "creds", &[("clientId", "acme-client"), ("clientSecret", "s3cret")]).await;
    let _op = Operator::start_with_kubeconfig(
        kubeconfig.clone(),
        &[&ns],
        &["--leader-elect", "--lease-name", &release, "--lease-namespace", &ns],
    );
    apply_connection(&client, &ns, "acme", spec(sim.base_url().as_str())).await;
    wait_condition(&client, &ns, "acme", "Ready", "True", None, READY_TIMEOUT).await;

    // Outside the role: refused by the real API server.
    let kubectl_as = |args: &[&str]| {
        std::process::Command::new(&cp.kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    };
    for args in [
        vec!["get", "configmaps", "-n", ns.as_str()],
        vec!["delete", "secret", "creds", "-n", ns.as_str()],
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["get", "carerixconnections", "-A"],
    ] {
        let out = kubectl_as(&args);
        assert!(!out.status.success(), "kubectl {args:?} was allowed to the operator's identity");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn with_two_replicas_only_the_leader_acts_and_the_other_takes_over_when_it_dies() {
    let cp = control_plane();
    let client = cp.client().await;
    let sim = emulator(&[("acme", true)], &[("acme", "acme-client", "s3cret")]).await;
    let ns = cp.namespace("leader");
    put_secret(&client, &ns, "creds", &[("clientId", "acme-client"), ("clientSecret", "s3cret")]).await;
    let lease_args = ["--leader-elect", "--lease-namespace", &ns, "--lease-duration-seconds", "10"];
    let mut first = Operator::start(cp, &[&ns], &[&lease_args[..], &["--identity", "first"]].concat());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = support::eventually("a lease holder", READY_TIMEOUT, || {
        let leases = leases.clone();
        async move {
            let lease = leases.get_opt("carerix-operator").await.ok().flatten()?;
            lease.spec?.holder_identity
        }
    })
    .await;
    assert_eq!(holder, "first");
    let mut second = Operator::start(cp, &[&ns], &[&lease_args[..], &["--identity", "second"]].concat());
    // Deliveries go to the standby's receiver, as a Service may route them.
    let standby_url = format!("http://127.0.0.1:{}/webhooks/{ns}/acme", second.port);
    let mut with_receiver = spec(sim.base_url().as_str());
    with_receiver["webhooks"] = json!([{"name": "a", "events": ["cremployee:updated"], "url": standby_url}]);
    apply_connection(&client, &ns, "acme", with_receiver).await;
    wait_condition(&client, &ns, "acme", "Ready", "True", None, READY_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The standby is ready (it must not hold up rollouts) but leaves Carerix alone.
    let (status, body) = second.get("/readyz").await.expect("standby answers");
    assert_eq!((status, body.as_str()), (200, "standby"));
    assert!(!std::fs::read_to_string(&second.log).unwrap_or_default().contains("acquired the lease"));
    assert_eq!(sim.sim().webhooks("acme", None).expect("hooks").len(), 1);

    // It still verifies and acknowledges deliveries, looking the connection up itself.
    let candidates = carerix_sim::Entity::parse("candidates").expect("entity");
    let id = sim.sim().list_records("acme", candidates).expect("records")[0]["_id"]
        .as_str()
        .and_then(|i| i.parse().ok())
        .expect("numeric id");
    let mut change = serde_json::Map::new();
    change.insert("lastName".into(), json!("Standby"));
    sim.sim().update_record("acme", candidates, id, change).expect("update");
    support::eventually("the standby to acknowledge the delivery", Duration::from_secs(20), || {
        let sim = sim.sim_arc();
        let url = standby_url.clone();
        async move { sim.delivery_log().iter().any(|d| d.url == url && d.status_code == Some(200)).then_some(()) }
    })
    .await;

    // The leader dies without releasing: the standby takes over after the lease expires.
    first.kill();
    support::eventually("the standby to take the lease", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move {
            let lease = leases.get_opt("carerix-operator").await.ok().flatten()?;
            (lease.spec?.holder_identity.as_deref() == Some("second")).then_some(())
        }
    })
    .await;
    let mut changed = spec(sim.base_url().as_str());
    changed["webhooks"] =
        json!([{"name": "a", "events": ["crmatch:created", "crjob:created"], "url": standby_url}]);
    let generation = apply_connection(&client, &ns, "acme", changed).await.metadata.generation;
    support::e2e::wait_ready_and(
        &client,
        &ns,
        "acme",
        "the new leader to reconcile the change",
        READY_TIMEOUT,
        |s| s.observed_generation == generation,
    )
    .await;
    assert_eq!(sim.sim().applications("acme").expect("apps").len(), 1, "no duplicate application");
    // The replaced webhook is created before the old one is deleted; once the passes settle (the
    // interval is seconds), exactly one is left.
    support::eventually("exactly one webhook", Duration::from_secs(15), || {
        let sim = sim.sim_arc();
        async move { (sim.webhooks("acme", None).ok()?.len() == 1).then_some(()) }
    })
    .await;

    // A graceful stop releases the lease at once.
    let status = second.terminate();
    assert!(status.success(), "SIGTERM must end the operator cleanly: {status:?}");
    let lease = leases.get("carerix-operator").await.expect("lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None, "the lease was released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn health_readiness_and_metrics_reflect_the_running_operator() {
    let cp = control_plane();
    let client = cp.client().await;
    let sim = emulator(&[("acme", true)], &[("acme", "acme-client", "s3cret")]).await;
    let ns = cp.namespace("metrics");
    put_secret(&client, &ns, "creds", &[("clientId", "acme-client"), ("clientSecret", "s3cret")]).await;
    let op = Operator::start(cp, &[&ns], &["--log-format", "json"]);
    apply_connection(&client, &ns, "acme", spec(sim.base_url().as_str())).await;
    wait_condition(&client, &ns, "acme", "Ready", "True", None, READY_TIMEOUT).await;
    // JSON logs on request: one object per line, with level and message, and no secret.
    let log = std::fs::read_to_string(&op.log).expect("log");
    assert!(!log.contains("s3cret"), "a secret reached the log");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
    }
    assert_eq!(op.get("/healthz").await.map(|r| r.0), Some(200));
    let unknown = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/webhooks/{ns}/nobody", op.port))
        .body("{}")
        .send()
        .await
        .expect("the receiver answers");
    assert_eq!(
        unknown.status().as_u16(),
        401,
        "a delivery for a connection that does not exist looks like a bad signature"
    );
    // Probes and metrics have their own port: the public receiver serves none of them.
    let on_receiver = reqwest::get(format!("http://127.0.0.1:{}/metrics", op.port)).await.expect("answers");
    assert_eq!(on_receiver.status().as_u16(), 404, "/metrics is not served on the receiver's port");
    // Ready once the controller's and the receiver's caches have synced (moments after start).
    let mut ready = None;
    for _ in 0..100 {
        ready = op.get("/readyz").await.map(|r| r.0);
        if ready == Some(200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, Some(200), "/readyz turns 200 once the caches have synced");
    let (status, text) = op.get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        "carerix_operator_reconciles_total",
        "carerix_operator_reconcile_duration_seconds_bucket",
        &format!(
            "carerix_operator_condition{{namespace=\"{ns}\",name=\"acme\",type=\"Ready\",status=\"True\"}} 1"
        ),
        "carerix_operator_carerix_requests_total{operation=\"token\",status=\"200\"}",
        "carerix_operator_carerix_requests_total{operation=\"webhooks.create_webhook\",status=\"201\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics:\n{text}");
    }
}
