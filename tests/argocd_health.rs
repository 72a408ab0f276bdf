//! The Argo CD health check (`examples/argocd/health.lua`), run by a real Lua interpreter against
//! CarerixConnections as the operator leaves them: ready, progressing, degraded, suspended.
//!
//! Argo CD runs the script with the object in the global `obj` and reads the returned table's
//! `status` and `message`. The harness below does the same with `lua5.4`
//! (`apt-get install -y lua5.4`; `.ci/run` installs it).

mod support;

use std::{path::PathBuf, process::Command};

use support::repo_root;

/// Sets `obj` from a Lua file that returns the object as a table literal, runs the health check,
/// and prints its status and message on two lines.
const HARNESS: &str = r#"
obj = dofile(arg[2])
local hs = dofile(arg[1])
io.write(tostring(hs.status), "\n", tostring(hs.message or ""), "\n")
"#;

fn health_lua() -> PathBuf {
    repo_root().join("examples/argocd/health.lua")
}

fn lua() -> &'static str {
    let found = Command::new("lua5.4").arg("-v").output().is_ok_and(|o| o.status.success());
    assert!(found, "lua5.4 is not installed: apt-get install -y lua5.4 (the test runs the real interpreter)");
    "lua5.4"
}

/// Runs the health check on `object` (a Lua table literal) and returns (status, message).
fn health(object: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let harness = dir.path().join("harness.lua");
    let obj = dir.path().join("object.lua");
    std::fs::write(&harness, HARNESS).expect("write the harness");
    std::fs::write(&obj, format!("return {object}\n")).expect("write the object");
    let out = Command::new(lua()).arg(&harness).arg(health_lua()).arg(&obj).output().expect("lua5.4 runs");
    assert!(out.status.success(), "the health check failed to run: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let message = lines.next().unwrap_or_default().to_string();
    (status, message)
}

/// A CarerixConnection with `generation`, the observed generation and the given conditions.
fn connection(generation: u32, observed: u32, conditions: &str) -> String {
    format!(
        r#"{{
  apiVersion = "hiredata.io/v1alpha1",
  kind = "CarerixConnection",
  metadata = {{ name = "acme", namespace = "recruiting", generation = {generation} }},
  spec = {{ tenant = "acme", credentialsSecretRef = {{ name = "acme-carerix" }} }},
  status = {{
    observedGeneration = {observed},
    conditions = {{ {conditions} }},
  }},
}}"#
    )
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: u32) -> String {
    format!(
        r#"{{ type = "{type_}", status = "{status}", reason = "{reason}", message = "{message}", observedGeneration = {generation} }},"#
    )
}

#[test]
fn a_ready_connection_for_the_current_generation_is_healthy() {
    let ready =
        condition("Ready", "True", "Succeeded", "credentials valid, 2 webhooks active, data synced", 4);
    let (status, message) = health(&connection(4, 4, &ready));
    assert_eq!(status, "Healthy");
    assert_eq!(message, "credentials valid, 2 webhooks active, data synced");
}

#[test]
fn a_new_generation_not_yet_observed_is_progressing_even_while_ready_is_still_true() {
    let ready = condition("Ready", "True", "Succeeded", "credentials valid", 2);
    let (status, message) = health(&connection(3, 2, &ready));
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 3"), "{message}");
}

#[test]
fn an_initial_sync_in_progress_is_progressing_with_the_ready_message() {
    let conditions = [
        condition("Ready", "False", "InitialSyncInProgress", "initial sync: 1200 of 5000 candidates", 1),
        condition("Reconciling", "True", "InitialSyncInProgress", "initial sync: 1200 of 5000 candidates", 1),
    ]
    .concat();
    let (status, message) = health(&connection(1, 1, &conditions));
    assert_eq!(status, "Progressing");
    assert_eq!(message, "initial sync: 1200 of 5000 candidates");
}

#[test]
fn a_transient_failure_such_as_rate_limiting_is_progressing_not_degraded() {
    let ready = condition("Ready", "False", "RateLimited", "Carerix rate limit reached; retrying in 30s", 1);
    let (status, message) = health(&connection(1, 1, &ready));
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Carerix rate limit reached; retrying in 30s");
}

#[test]
fn rejected_credentials_are_degraded_with_the_ready_message() {
    let ready = condition("Ready", "False", "InvalidClient", "Carerix rejects the client id or secret", 2);
    let (status, message) = health(&connection(2, 2, &ready));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "Carerix rejects the client id or secret");
}

#[test]
fn every_terminal_reason_is_degraded() {
    for reason in [
        "InvalidClient",
        "SecretNotFound",
        "InvalidSecret",
        "WebhooksNotActivated",
        "MissingScope",
        "CleanupBlocked",
        "InvalidSpec",
        "TenantNotFound",
    ] {
        let ready = condition("Ready", "False", reason, "a person has to act", 1);
        assert_eq!(health(&connection(1, 1, &ready)).0, "Degraded", "reason {reason}");
    }
}

#[test]
fn a_stalled_connection_is_degraded_whatever_the_ready_reason() {
    let conditions = [
        condition("Ready", "False", "WebhooksFailed", "webhooks are not activated for acme", 5),
        condition("Stalled", "True", "WebhooksNotActivated", "ask Carerix support to activate webhooks", 5),
    ]
    .concat();
    let (status, message) = health(&connection(5, 5, &conditions));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "ask Carerix support to activate webhooks");
}

#[test]
fn a_suspended_connection_is_suspended() {
    let object = r#"{
  metadata = { name = "acme", generation = 2 },
  spec = { tenant = "acme", suspend = true, credentialsSecretRef = { name = "acme-carerix" } },
  status = { observedGeneration = 2, conditions = {
    { type = "Ready", status = "False", reason = "Suspended", message = "suspended", observedGeneration = 2 },
  } },
}"#;
    let (status, message) = health(object);
    assert_eq!(status, "Suspended");
    assert!(message.contains("suspend"), "{message}");
}

#[test]
fn a_connection_without_status_is_progressing() {
    let object = r#"{ metadata = { name = "acme", generation = 1 }, spec = { tenant = "acme" } }"#;
    let (status, message) = health(object);
    assert_eq!(status, "Progressing");
    assert!(message.contains("carerix-operator"), "{message}");
}

#[test]
fn the_argocd_cm_example_embeds_exactly_health_lua() {
    let cm =
        std::fs::read_to_string(repo_root().join("examples/argocd/argocd-cm.yaml")).expect("argocd-cm.yaml");
    let cm: serde_json::Value = serde_saphyr::from_str(&cm).expect("argocd-cm.yaml is YAML");
    let embedded = cm["data"]["resource.customizations.health.hiredata.io_CarerixConnection"]
        .as_str()
        .unwrap_or_default();
    let lua = std::fs::read_to_string(health_lua()).expect("health.lua");
    assert!(
        embedded == lua,
        "examples/argocd/argocd-cm.yaml and health.lua differ: copy health.lua into the ConfigMap"
    );
}
