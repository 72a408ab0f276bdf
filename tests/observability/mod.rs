//! Shared by tests/alerts.rs and tests/dashboard.rs: promtool, the chart's rendered monitoring
//! objects, and a live scrape of the operator.
#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{
    ControlPlane,
    e2e::{Operator, apply_connection, emulator, put_secret, wait_condition},
    helm, repo_root,
};

/// promtool: `CARERIX_TEST_PROMTOOL`, else the one next to the test kubectl, else the one
/// `hack/build-testbin.sh` builds (or finds cached).
pub fn promtool() -> &'static Path {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(|| {
        if let Ok(path) = std::env::var("CARERIX_TEST_PROMTOOL") {
            return PathBuf::from(path);
        }
        if let Some(dir) = std::env::var("CARERIX_TEST_KUBECTL").ok().as_deref().map(Path::new).and_then(Path::parent)
            && dir.join("promtool").is_file()
        {
            return dir.join("promtool");
        }
        let out = Command::new(repo_root().join("hack/build-testbin.sh"))
            .output()
            .expect("could not run hack/build-testbin.sh (bash and Go are needed)");
        assert!(
            out.status.success(),
            "hack/build-testbin.sh could not build promtool:\n{}\nSet CARERIX_TEST_PROMTOOL to a promtool binary instead.",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
        PathBuf::from(dir).join("promtool")
    })
}

/// One template of the chart rendered with the given `--set` values, as a JSON value.
pub fn render_template(template: &str, sets: &[&str]) -> Value {
    let chart = repo_root().join("charts/carerix-operator");
    let mut args =
        vec!["template", "cx", chart.to_str().expect("utf-8 path"), "--namespace", "carerix-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(["--show-only", template]);
    let out = helm(&args);
    assert!(out.status.success(), "helm template {template}: {}", String::from_utf8_lossy(&out.stderr));
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("helm renders valid YAML")
}

/// The alert names in the chart's PrometheusRule template, read from its source.
pub fn alert_names_in_template() -> Vec<String> {
    let path = repo_root().join("charts/carerix-operator/templates/prometheusrule.yaml");
    let text = std::fs::read_to_string(path).expect("the template exists");
    text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(|s| s.trim().to_string()).collect()
}

/// Every `carerix_operator_*` name used in a PromQL expression.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("carerix_operator_") {
        let start = i + pos;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        if !preceded_by_ident {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The sample names a scrape can have, from its `# TYPE` lines: `x_total` for a counter, `x` for
/// a gauge, `x_bucket`/`x_sum`/`x_count` for a histogram. Families without series yet are
/// listed too, so a query is checked even before its first sample.
pub fn exported_sample_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        names.insert(line[..end].to_string());
    }
    names
}

/// A running operator with one Ready connection that syncs into PostgreSQL, a tight Carerix
/// rate limit (so requests wait), and one delivery with a bad signature: every metric family
/// has a series in its `/metrics`.
pub struct LiveOperator {
    pub operator: Operator,
    pub sim: carerix_sim::SimHandle,
    pub namespace: String,
}

impl LiveOperator {
    pub async fn start(cp: &ControlPlane) -> LiveOperator {
        let client = cp.client().await;
        let db_url = crate::sync_common::postgres_url();
        let sim = emulator(&[("acme", true)], &[("acme", "acme-client", "s3cret")]).await;
        let ns = cp.namespace("observe");
        let schema = format!("observe_{}", &ns[ns.len() - 8..]);
        put_secret(&client, &ns, "creds", &[("clientId", "acme-client"), ("clientSecret", "s3cret")]).await;
        put_secret(&client, &ns, "db", &[("url", &db_url)]).await;
        let operator = Operator::start(cp, &[&ns], &["--carerix-rate-limit", "2"]);
        let url = sim.base_url().as_str().trim_end_matches('/').to_string();
        apply_connection(
            &client,
            &ns,
            "acme",
            json!({
                "tenant": "acme",
                "credentialsSecretRef": {"name": "creds"},
                "identityUrl": url,
                "apiUrl": url,
                "interval": "5s",
                "webhooks": [{"name": "matches", "events": ["crmatch:created"]}],
                "sync": {
                    "interval": "1m",
                    "sink": {"postgres": {"connectionSecretRef": {"name": "db", "key": "url"}, "schema": schema}}
                }
            }),
        )
        .await;
        wait_condition(&client, &ns, "acme", "Ready", "True", None, Duration::from_secs(120)).await;
        let delivery = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/webhooks/{ns}/acme", operator.port))
            .header("Content-Type", "application/json")
            .header("Cx-Signature", "not-a-signature")
            .body(r#"{"event":"crmatch:created"}"#)
            .send()
            .await
            .expect("the receiver answers");
        assert!(delivery.status().is_client_error(), "a bad signature is refused: {}", delivery.status());
        LiveOperator { operator, sim, namespace: ns }
    }

    /// GET /metrics.
    pub async fn scrape(&self) -> String {
        let (status, body) = self.operator.get("/metrics").await.expect("the operator serves /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// A registry in which every metric family has a series, through the operator's own calls.
pub fn exercised_registry() -> String {
    use carerix_operator::{
        api::{CarerixConnection, EntitySyncStatus, SyncStatus},
        metrics::Metrics,
    };
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{Condition, Time},
        jiff::Timestamp,
    };
    let m = std::sync::Arc::new(Metrics::new());
    let mut obj = CarerixConnection::new(
        "acme",
        serde_json::from_value(json!({"tenant": "acme", "credentialsSecretRef": {"name": "c"}}))
            .expect("spec"),
    );
    obj.metadata.namespace = Some("shop".into());
    drop(m.reconcile_timer());
    m.reconcile_failed("CarerixUnavailable");
    m.reconcile_succeeded("shop", "acme");
    m.set_leader(true);
    m.set_shard("carerix-operator", true, 3, 100, 0);
    m.set_conditions(
        &obj,
        &[Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Ready".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }],
    );
    m.set_sync_status(
        "shop",
        "acme",
        Some(&SyncStatus {
            entities: vec![EntitySyncStatus {
                entity: "candidates".into(),
                phase: "Initial".into(),
                records: 10,
                total: Some(100),
                ..EntitySyncStatus::default()
            }],
            ..SyncStatus::default()
        }),
    );
    m.sync_records("shop", "acme", "candidates", 10);
    m.sync_lag("shop", "acme", "candidates", Duration::ZERO);
    m.delivery("accepted");
    let observer = m.carerix_observer();
    observer.on_request("graphql", Some(200), Duration::from_millis(20));
    observer.on_rate_limit_wait("acme", Duration::from_millis(100));
    m.render()
}
