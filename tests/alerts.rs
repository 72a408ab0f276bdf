//! The chart's alerts: promtool accepts the rendered rules, each alert fires and resolves in
//! `promtool test rules` (tests/alerts/alerts-test.yaml), each has a runbook section, and the
//! operator's live `/metrics` passes `promtool check metrics`.

mod observability;
mod support;
mod sync_common;

use std::{path::Path, process::Command};

use observability::{LiveOperator, alert_names_in_template, metric_names, promtool, render_template};
use serde_json::Value;
use support::{control_plane, repo_root};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Renders the PrometheusRule with `sets` and writes its groups as a Prometheus rule file.
fn write_rule_file(dir: &Path, sets: &[&str]) -> Value {
    let mut all = vec!["prometheusRule.enabled=true"];
    all.extend_from_slice(sets);
    let rule = render_template("templates/prometheusrule.yaml", &all);
    assert_eq!(rule["kind"], "PrometheusRule");
    // JSON is YAML: promtool reads it as a rule file.
    std::fs::write(dir.join("rules.yaml"), serde_json::to_string_pretty(&rule["spec"]).expect("JSON"))
        .expect("write rules.yaml");
    rule
}

fn rendered_alerts(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect()
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook_section() {
    let alerts = alert_names_in_template();
    assert!(alerts.len() >= 10, "the template defines the alerts: {alerts:?}");
    let tests =
        std::fs::read_to_string(repo_root().join("tests/alerts/alerts-test.yaml")).expect("test file");
    let runbook = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("runbook");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts:\n          - exp_labels")),
            "tests/alerts/alerts-test.yaml never expects {alert} to fire"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts: []")),
            "tests/alerts/alerts-test.yaml never checks that {alert} stays quiet or resolves"
        );
        assert!(
            runbook.contains(&format!("\n### {alert}\n")),
            "docs/operations.md has no section ### {alert}"
        );
    }
}

#[test]
#[ignore = "needs helm and promtool from hack/build-testbin.sh: hack/test.sh"]
fn the_rendered_rules_pass_promtool_check_and_name_metrics_the_operator_exports() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rule = write_rule_file(dir.path(), &[]);
    let (ok, text) =
        run(Command::new(promtool()).arg("check").arg("rules").arg(dir.path().join("rules.yaml")));
    assert!(ok, "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS: 12 rules found"), "{text}");

    let exported = observability::exported_sample_names(&observability::exercised_registry());
    for alert in rendered_alerts(&rule) {
        let name = alert["alert"].as_str().expect("an alerting rule");
        let annotations = &alert["annotations"];
        for key in ["summary", "description", "runbook_url"] {
            assert!(annotations[key].as_str().is_some_and(|s| !s.is_empty()), "{name} has no {key}");
        }
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            annotations["runbook_url"].as_str().is_some_and(|u| u.ends_with(&anchor)),
            "{name}: runbook_url"
        );
        let expr = alert["expr"].as_str().expect("expr");
        let used = metric_names(expr);
        assert!(!used.is_empty(), "{name} uses no operator metric: {expr}");
        for metric in used {
            assert!(exported.contains(&metric), "{name} uses {metric}, which the operator does not export");
        }
    }
}

#[test]
#[ignore = "needs helm and promtool from hack/build-testbin.sh: hack/test.sh"]
fn each_alert_fires_and_resolves_in_promtool_unit_tests() {
    let dir = tempfile::tempdir().expect("a temp dir");
    write_rule_file(dir.path(), &[]);
    std::fs::copy(repo_root().join("tests/alerts/alerts-test.yaml"), dir.path().join("alerts-test.yaml"))
        .expect("copy the test file");
    let (ok, text) =
        run(Command::new(promtool()).current_dir(dir.path()).args(["test", "rules", "alerts-test.yaml"]));
    assert!(ok, "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
#[ignore = "needs helm and promtool from hack/build-testbin.sh: hack/test.sh"]
fn the_thresholds_come_from_the_values() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rule = write_rule_file(
        dir.path(),
        &[
            "prometheusRule.syncLagThresholdSeconds=7200",
            "prometheusRule.notReadyFor=30m",
            "prometheusRule.labels.release=kube-prometheus",
        ],
    );
    assert_eq!(rule["metadata"]["labels"]["release"], "kube-prometheus");
    let alerts = rendered_alerts(&rule);
    let find = |n: &str| *alerts.iter().find(|a| a["alert"] == n).expect("the alert exists");
    assert!(find("CarerixSyncLagHigh")["expr"].as_str().is_some_and(|e| e.ends_with("> 7200")));
    assert_eq!(find("CarerixConnectionNotReady")["for"], "30m");
    let (ok, text) =
        run(Command::new(promtool()).arg("check").arg("rules").arg(dir.path().join("rules.yaml")));
    assert!(ok, "promtool check rules:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and promtool: hack/test.sh"]
async fn a_live_scrape_of_the_operator_passes_promtool_check_metrics() {
    let cp = control_plane();
    let live = LiveOperator::start(cp).await;
    let scrape = live.scrape().await;
    for family in
        ["carerix_operator_leader 1", "carerix_operator_last_successful_reconcile_timestamp_seconds{"]
    {
        assert!(scrape.contains(family), "{family} missing from the scrape:\n{scrape}");
    }
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write the scrape");
    }
    let out = child.wait_with_output().expect("promtool output");
    // The operator serves OpenMetrics, where a counter's family `x` has HELP and TYPE and its
    // sample is `x_total`; promtool lints the classic text format and asks for HELP on `x_total`.
    // That one difference is expected; any other finding (names, units, types) fails.
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let openmetrics_counter = l
                .strip_suffix(" no help text")
                .and_then(|n| n.strip_suffix("_total"))
                .is_some_and(|family| {
                    scrape.contains(&format!("# HELP {family} "))
                        && scrape.contains(&format!("# TYPE {family} counter\n"))
                });
            !openmetrics_counter
        })
        .collect();
    assert!(
        problems.is_empty() && (out.status.success() || report.lines().any(|l| l.ends_with("no help text"))),
        "promtool check metrics found problems:\n{}\nin:\n{scrape}",
        problems.join("\n")
    );
    assert!(
        scrape.contains("carerix_operator_sync_records_total{"),
        "the scrape has the sync's series:\n{scrape}"
    );
}
