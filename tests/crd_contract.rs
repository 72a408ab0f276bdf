//! The resource contract, proven on a real API server: the examples are accepted, every invalid
//! manifest is refused with a message a person understands, and `kubectl get`/`explain` show
//! what users rely on.

mod support;

use support::control_plane;

fn apply(ns: &str, yaml: &str) -> std::process::Output {
    control_plane().kubectl_stdin(&["apply", "--server-side", "-n", ns, "-f", "-"], yaml)
}

fn connection(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: hiredata.io/v1alpha1\nkind: CarerixConnection\nmetadata:\n  name: {name}\nspec:\n{spec}\n"
    )
}

fn assert_refused(out: std::process::Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the manifest was accepted, but should be refused with: {message}");
    assert!(stderr.contains(message), "refused, but without the message {message:?}: {stderr}");
}

const BASE: &str = "  tenant: acme\n  credentialsSecretRef: {name: acme-carerix}\n";

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn the_examples_are_accepted_by_server_side_apply() {
    let cp = control_plane();
    let ns = cp.namespace("examples");
    let dir = support::repo_root().join("examples/kubectl");
    let out = cp.kubectl(&["apply", "--server-side", "-n", &ns, "-f", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl(&["get", "cxc", "-n", &ns, "-o", "name"]);
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(names.contains("carerixconnection.hiredata.io/acme"), "{names}");
    assert!(names.contains("carerixconnection.hiredata.io/globex"), "{names}");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn a_tenant_with_capitals_is_refused_with_a_message_about_the_application_name() {
    let ns = control_plane().namespace("tenant-caps");
    let yaml = connection("caps", "  tenant: Acme\n  credentialsSecretRef: {name: acme-carerix}");
    assert_refused(apply(&ns, &yaml), "tenant must be the lowercase Carerix application name");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn changing_the_tenant_is_refused() {
    let ns = control_plane().namespace("tenant-immutable");
    let out = apply(&ns, &connection("moving", BASE));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let moved = connection("moving", "  tenant: globex\n  credentialsSecretRef: {name: acme-carerix}");
    assert_refused(apply(&ns, &moved), "tenant is immutable");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn eleven_events_on_one_webhook_are_refused() {
    let ns = control_plane().namespace("events-cap");
    let events: Vec<String> = (0..11).map(|i| format!("crentity{i}:updated")).collect();
    let spec = format!("{BASE}  webhooks:\n    - name: many\n      events: [{}]", events.join(", "));
    assert_refused(apply(&ns, &connection("many", &spec)), "at most 10 events per webhook");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn an_event_that_is_not_entity_colon_action_is_refused() {
    let ns = control_plane().namespace("events-shape");
    let spec = format!("{BASE}  webhooks:\n    - name: bad\n      events: [employee-created]");
    assert_refused(apply(&ns, &connection("bad-event", &spec)), "events look like <entity>:<action>");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn a_bad_duration_is_refused() {
    let ns = control_plane().namespace("duration");
    let spec = format!("{BASE}  interval: ten minutes");
    assert_refused(apply(&ns, &connection("slow", &spec)), "interval must be a duration");
    let spec = format!(
        "{BASE}  sync:\n    interval: 5 minutes\n    sink: {{postgres: {{connectionSecretRef: {{name: db, key: url}}}}}}"
    );
    assert_refused(apply(&ns, &connection("slow-sync", &spec)), "sync.interval must be a duration");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn a_duplicate_webhook_name_is_refused() {
    let ns = control_plane().namespace("dup-webhook");
    let spec = format!(
        "{BASE}  webhooks:\n    - name: same\n      events: [cremployee:created]\n    - name: same\n      events: [crmatch:created]"
    );
    assert_refused(apply(&ns, &connection("dups", &spec)), "webhook names must be unique");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn an_unknown_entity_and_a_reserved_header_are_refused() {
    let ns = control_plane().namespace("entity");
    let spec = format!(
        "{BASE}  sync:\n    entities: [candidates, invoices]\n    sink: {{postgres: {{connectionSecretRef: {{name: db, key: url}}}}}}"
    );
    assert_refused(apply(&ns, &connection("invoices", &spec)), "Unsupported value: \"invoices\"");
    let spec = format!(
        "{BASE}  webhooks:\n    - name: h\n      events: [crmatch:created]\n      customHeaders:\n        - name: Cx-Signature\n          valueFrom: {{secretKeyRef: {{name: s, key: k}}}}"
    );
    assert_refused(apply(&ns, &connection("reserved", &spec)), "reserved by Carerix");
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn kubectl_get_cxc_shows_the_printer_columns() {
    let cp = control_plane();
    let ns = cp.namespace("columns");
    let out = apply(&ns, &connection("acme", BASE));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl(&["get", "cxc", "-n", &ns]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "TENANT", "READY", "STATUS", "WEBHOOKS", "RECORDS", "LAST SYNC", "AGE"] {
        assert!(header.contains(column), "column {column} missing from: {header}");
    }
    assert!(table.contains("acme"), "{table}");
    // The categories work too.
    let out = cp.kubectl(&["get", "hiredata", "-n", &ns, "-o", "name"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("carerixconnection.hiredata.io/acme"));
}

#[test]
#[ignore = "needs the control plane: hack/test.sh"]
fn kubectl_explain_shows_the_field_docs() {
    let cp = control_plane();
    let out = cp.kubectl(&["explain", "cxc.spec.tenant"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("The Carerix application name"), "{text}");
    let out = cp.kubectl(&["explain", "cxc.spec.deletionPolicy"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Orphan"), "{text}");
}
