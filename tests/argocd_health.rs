//! The Argo CD health check (`examples/argocd/health.lua`), run the way Argo CD runs it against
//! CarerixConnections as the operator leaves them: ready, progressing, degraded, suspended.
//!
//! Argo CD embeds gopher-lua (Lua 5.1 semantics), opens only its package, base, table and a reduced
//! os library for a custom health check, puts the object in the global `obj` and reads the returned
//! table's `status` and `message`. `argocd-lua-health` (our runner in `hack/testbin/lua`, built with
//! Go by `hack/build-testbin.sh`) does the same, so a script that works here works in Argo CD.

mod support;

use std::{path::PathBuf, process::Command};

use serde_json::{Value, json};
use support::{repo_root, testbin_tool};

fn health_lua() -> PathBuf {
    repo_root().join("examples/argocd/health.lua")
}

/// Runs the health check on `object` and returns (status, message), as Argo CD would show them.
fn health(object: &Value) -> (String, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let obj = dir.path().join("object.json");
    std::fs::write(&obj, object.to_string()).expect("write the object");
    let runner = testbin_tool("argocd-lua-health");
    let out = Command::new(&runner)
        .arg(health_lua())
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| panic!("{} could not be run: {e}", runner.display()));
    assert!(out.status.success(), "the health check failed to run: {}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).expect("argocd-lua-health prints JSON");
    (
        result["status"].as_str().unwrap_or_default().to_string(),
        result["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// A CarerixConnection with `generation`, the observed generation and the given conditions.
fn connection(generation: u32, observed: u32, conditions: Vec<Value>) -> Value {
    json!({
        "apiVersion": "hiredata.io/v1alpha1",
        "kind": "CarerixConnection",
        "metadata": { "name": "acme", "namespace": "recruiting", "generation": generation },
        "spec": { "tenant": "acme", "credentialsSecretRef": { "name": "acme-carerix" } },
        "status": { "observedGeneration": observed, "conditions": conditions },
    })
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: u32) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_ready_connection_for_the_current_generation_is_healthy() {
    let ready = condition("Ready", "True", "Ready", "credentials valid, 2 webhooks active, data synced", 4);
    let (status, message) = health(&connection(4, 4, vec![ready]));
    assert_eq!(status, "Healthy");
    assert_eq!(message, "credentials valid, 2 webhooks active, data synced");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_new_generation_not_yet_observed_is_progressing_even_while_ready_is_still_true() {
    let ready = condition("Ready", "True", "Ready", "credentials valid", 2);
    let (status, message) = health(&connection(3, 2, vec![ready]));
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 3"), "{message}");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn an_initial_sync_in_progress_is_progressing_with_the_ready_message() {
    let conditions = vec![
        condition("Ready", "False", "InitialSyncInProgress", "initial sync: 1200 of 5000 candidates", 1),
        condition("Reconciling", "True", "InitialSyncInProgress", "initial sync: 1200 of 5000 candidates", 1),
    ];
    let (status, message) = health(&connection(1, 1, conditions));
    assert_eq!(status, "Progressing");
    assert_eq!(message, "initial sync: 1200 of 5000 candidates");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_transient_failure_such_as_rate_limiting_is_progressing_not_degraded() {
    let ready = condition("Ready", "False", "RateLimited", "Carerix rate limit reached; retrying in 30s", 1);
    let (status, message) = health(&connection(1, 1, vec![ready]));
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Carerix rate limit reached; retrying in 30s");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn rejected_credentials_are_degraded_with_the_ready_message() {
    let ready = condition("Ready", "False", "InvalidClient", "Carerix rejects the client id or secret", 2);
    let (status, message) = health(&connection(2, 2, vec![ready]));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "Carerix rejects the client id or secret");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
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
        assert_eq!(health(&connection(1, 1, vec![ready])).0, "Degraded", "reason {reason}");
    }
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_stalled_connection_is_degraded_whatever_the_ready_reason() {
    let conditions = vec![
        condition("Ready", "False", "CarerixRejected", "Carerix refused the webhook", 5),
        condition("Stalled", "True", "WebhooksNotActivated", "ask Carerix support to activate webhooks", 5),
    ];
    let (status, message) = health(&connection(5, 5, conditions));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "ask Carerix support to activate webhooks");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_suspended_connection_is_suspended() {
    let mut object = connection(2, 2, vec![condition("Ready", "False", "Suspended", "suspended", 2)]);
    object["spec"]["suspend"] = json!(true);
    let (status, message) = health(&object);
    assert_eq!(status, "Suspended");
    assert!(message.contains("suspend"), "{message}");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_connection_without_status_is_progressing() {
    let mut object = connection(1, 1, vec![]);
    object.as_object_mut().expect("an object").remove("status");
    let (status, message) = health(&object);
    assert_eq!(status, "Progressing");
    assert!(message.contains("carerix-operator"), "{message}");
}

#[test]
#[ignore = "needs argocd-lua-health, built with Go: hack/test.sh"]
fn a_script_that_needs_a_library_argo_cd_does_not_open_fails_as_it_would_in_argo_cd() {
    // Argo CD opens no string library for a custom health check: string.format is nil there.
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = dir.path().join("health.lua");
    let obj = dir.path().join("object.json");
    std::fs::write(&script, "return { status = string.format('%s', 'Healthy') }\n")
        .expect("write the script");
    std::fs::write(&obj, connection(1, 1, vec![]).to_string()).expect("write the object");
    let out =
        Command::new(testbin_tool("argocd-lua-health")).arg(&script).arg(&obj).output().expect("it runs");
    assert!(!out.status.success(), "string.format worked: {}", String::from_utf8_lossy(&out.stdout));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key 'format'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
