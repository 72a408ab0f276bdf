//! Flux's view of a CarerixConnection agrees with the operator's: kstatus (the library behind
//! Flux's health checks and `kubectl wait`-style tooling) computes Current for a ready connection,
//! InProgress while work is in progress, Failed when a person has to act. Argo CD's view (the
//! health.lua) agrees on every case.
//!
//! The status is written as the operator writes it (the Rust status type, through the status
//! subresource of a real API server) and read back from the API server, so the CRD's schema and
//! pruning apply; `kstatus` (hack/testbin/kstatus, sigs.k8s.io/cli-utils) and `argocd-lua-health`
//! (hack/testbin/lua, gopher-lua) then judge the object exactly as read.

mod support;

use std::process::Command;

use carerix_operator::api::CarerixConnectionStatus;
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use serde_json::Value;
use support::{control_plane, repo_root, testbin_tool};

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Creates a connection in a namespace of its own, writes `conditions` through the status
/// subresource (observed generation 1), optionally changes the spec afterwards (generation 2),
/// and returns the object as the API server serves it.
fn through_the_api_server(prefix: &str, conditions: Vec<Condition>, change_spec_after: bool) -> Value {
    let cp = control_plane();
    let ns = cp.namespace(prefix);
    let manifest = "apiVersion: hiredata.io/v1alpha1\nkind: CarerixConnection\nmetadata:\n  name: acme\nspec:\n  \
                    tenant: acme\n  credentialsSecretRef: {name: acme-carerix}\n";
    let out = cp.kubectl_stdin(&["apply", "--server-side", "-n", &ns, "-f", "-"], manifest);
    assert!(out.status.success(), "creating the connection: {}", String::from_utf8_lossy(&out.stderr));

    let status = CarerixConnectionStatus { observed_generation: Some(1), conditions, ..Default::default() };
    let patch = serde_json::json!({ "status": status }).to_string();
    let out = cp.kubectl(&[
        "patch",
        "cxc",
        "acme",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    assert!(out.status.success(), "writing the status: {}", String::from_utf8_lossy(&out.stderr));
    if change_spec_after {
        let out = cp.kubectl(&[
            "patch",
            "cxc",
            "acme",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"interval":"5m"}}"#,
        ]);
        assert!(out.status.success(), "changing the spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = cp.kubectl(&["get", "cxc", "acme", "-n", &ns, "-o", "json"]);
    assert!(out.status.success(), "reading the connection back: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("kubectl prints JSON")
}

/// Runs a checker on the object and returns its (status, message).
fn judge(tool: &str, args: &[&std::path::Path], object: &Value) -> (String, String) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("object.json");
    std::fs::write(&file, object.to_string()).expect("write the object");
    let path = testbin_tool(tool);
    let out = Command::new(&path)
        .args(args)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{} could not be run: {e}", path.display()));
    assert!(out.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).expect("the checker prints JSON");
    let field = |name: &str| result[name].as_str().unwrap_or_default().to_string();
    (field("status"), field("message"))
}

/// Flux's view: kstatus.
fn flux(object: &Value) -> (String, String) {
    judge("kstatus", &[], object)
}

/// Argo CD's view: the health.lua under gopher-lua.
fn argo_cd(object: &Value) -> String {
    judge("argocd-lua-health", &[&repo_root().join("examples/argocd/health.lua")], object).0
}

#[test]
#[ignore = "needs the control plane, kstatus and argocd-lua-health (Go): hack/test.sh"]
fn a_ready_connection_is_current_for_flux_and_healthy_for_argo_cd() {
    let message = "credentials valid; 2/2 webhooks ready; synced 2100 records";
    let object = through_the_api_server(
        "kstatus-ready",
        vec![
            condition("Ready", "True", "Ready", message),
            condition("CredentialsValid", "True", "Ready", "credentials valid"),
            condition("WebhooksReady", "True", "WebhooksReady", "2/2 webhooks ready"),
            condition("DataSynced", "True", "Synced", "synced 2100 records"),
        ],
        false,
    );
    assert_eq!(flux(&object).0, "Current", "{object}");
    assert_eq!(argo_cd(&object), "Healthy");
}

#[test]
#[ignore = "needs the control plane, kstatus and argocd-lua-health (Go): hack/test.sh"]
fn an_initial_sync_in_progress_is_in_progress_for_flux_and_progressing_for_argo_cd() {
    let message = "initial sync: 1200 of 5000 candidates";
    let object = through_the_api_server(
        "kstatus-sync",
        vec![
            condition("Ready", "False", "InitialSyncInProgress", message),
            condition("Reconciling", "True", "InitialSyncInProgress", message),
            condition("CredentialsValid", "True", "Ready", "credentials valid"),
            condition("DataSynced", "False", "InitialSyncInProgress", message),
        ],
        false,
    );
    let (status, flux_message) = flux(&object);
    assert_eq!(status, "InProgress", "{object}");
    assert_eq!(flux_message, message);
    assert_eq!(argo_cd(&object), "Progressing");
}

#[test]
#[ignore = "needs the control plane, kstatus and argocd-lua-health (Go): hack/test.sh"]
fn a_spec_change_the_operator_has_not_seen_yet_is_in_progress_even_while_ready_is_true() {
    let object = through_the_api_server(
        "kstatus-generation",
        vec![condition("Ready", "True", "Ready", "credentials valid; 2/2 webhooks ready")],
        true,
    );
    assert_eq!(object["metadata"]["generation"], 2, "the spec change bumps the generation");
    assert_eq!(flux(&object).0, "InProgress", "{object}");
    assert_eq!(argo_cd(&object), "Progressing");
}

#[test]
#[ignore = "needs the control plane, kstatus and argocd-lua-health (Go): hack/test.sh"]
fn a_stalled_connection_is_failed_for_flux_and_degraded_for_argo_cd() {
    let message = "Carerix rejects the client id or secret: fix or rotate the Secret acme-carerix";
    let object = through_the_api_server(
        "kstatus-stalled",
        vec![
            condition("Ready", "False", "InvalidClient", message),
            condition("Stalled", "True", "InvalidClient", message),
            condition("CredentialsValid", "False", "InvalidClient", message),
        ],
        false,
    );
    let (status, flux_message) = flux(&object);
    assert_eq!(status, "Failed", "{object}");
    assert_eq!(flux_message, message);
    assert_eq!(argo_cd(&object), "Degraded");
}
