//! The Grafana dashboard shipped in the chart: every query names metrics the operator exports
//! (checked against the registry and a live scrape, so the dashboard cannot rot), every panel
//! the issue asks for is there, and the chart ships it in a ConfigMap for Grafana's sidecar.

mod observability;
mod support;
mod sync_common;

use std::collections::BTreeSet;

use observability::{LiveOperator, exported_sample_names, metric_names, render_template};
use serde_json::Value;
use support::{control_plane, repo_root};

fn dashboard() -> Value {
    let path = repo_root().join("charts/carerix-operator/dashboards/carerix-operator.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard exists")).expect("valid JSON")
}

fn panels(d: &Value) -> Vec<&Value> {
    d["panels"].as_array().expect("panels").iter().filter(|p| p["type"] != "row").collect()
}

/// (panel title, expression) of every query, template variables included.
fn queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        for t in p["targets"].as_array().expect("targets") {
            out.push((title.clone(), t["expr"].as_str().expect("a PromQL expr").to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

fn check_against(exported: &BTreeSet<String>, source: &str) {
    let d = dashboard();
    let mut used = BTreeSet::new();
    for (title, expr) in queries(&d) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "panel {title:?} queries no operator metric: {expr}");
        for name in names {
            assert!(exported.contains(&name), "panel {title:?} uses {name}, which {source} does not have");
            used.insert(name);
        }
    }
    assert!(used.len() >= 15, "the dashboard shows most metrics: {used:?}");
}

#[test]
fn every_query_names_a_metric_of_the_operators_registry() {
    let exported = exported_sample_names(&observability::exercised_registry());
    check_against(&exported, "the operator's registry");
}

#[test]
fn the_dashboard_has_the_panels_operators_look_for() {
    let d = dashboard();
    assert_eq!(d["uid"], "carerix-operator");
    let titles: Vec<&str> = panels(&d).iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Connections by condition",
        "Reconcile rate and errors by reason",
        "Carerix requests by operation and status",
        "Carerix request latency",
        "Rate-limited waits",
        "Sync records/s",
        "Sync lag",
        "Initial sync progress",
        "Receiver deliveries by result",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?} in {titles:?}");
    }
    for p in panels(&d) {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} has a fixed data source", p["title"]);
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w > 0), "panel {} has no size", p["title"]);
    }
}

#[test]
#[ignore = "needs helm from hack/build-testbin.sh: hack/test.sh"]
fn the_chart_ships_the_dashboard_in_a_configmap_for_the_grafana_sidecar() {
    let cm = render_template(
        "templates/grafana-dashboard.yaml",
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.annotations.grafana_folder=Carerix",
        ],
    );
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Carerix");
    let json: Value = serde_json::from_str(cm["data"]["carerix-operator.json"].as_str().expect("the JSON"))
        .expect("valid JSON");
    assert_eq!(json, dashboard(), "the ConfigMap carries the dashboard file unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn every_query_names_a_metric_a_live_operator_exports() {
    let cp = control_plane();
    let live = LiveOperator::start(cp).await;
    let scrape = live.scrape().await;
    // Two families have series only while something happens that this healthy, quickly synced
    // run does not show at scrape time: errors (after a failed pass) and Carerix's total (only
    // during an initial pass). Those are taken from the operator's registry; every other one
    // must be in the live scrape.
    let mut live_names = exported_sample_names(&scrape);
    let registry = exported_sample_names(&observability::exercised_registry());
    for transient in ["carerix_operator_reconcile_errors_total", "carerix_operator_sync_entity_total"] {
        assert!(registry.contains(transient), "{transient} is no longer exported");
        live_names.insert(transient.to_string());
    }
    check_against(&live_names, "a live scrape of the operator");
    // The connection's own series are there, under the labels the dashboard filters on.
    let ns = &live.namespace;
    assert!(
        scrape.contains(&format!(
            r#"carerix_operator_condition{{namespace="{ns}",name="acme",type="Ready",status="True"}} 1"#
        )),
        "{scrape}"
    );
}
