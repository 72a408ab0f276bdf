//! `carerix-operator preflight` through the binary, against the in-process emulator: a
//! well-configured tenant passes, and each broken setup (and each behaviour switch of the
//! emulator) shows up on the right line with its remedy and the right exit code. The temporary
//! application is gone afterwards, also after Ctrl-C.

use std::process::Stdio;
use std::time::Duration;

use carerix_sim::{ClientConfig, Config, Entity, Permission, SimHandle, Switches, TenantConfig};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

const SECRET: &str = "demo-secret";

async fn start(activated: bool, tweak: impl FnOnce(&mut Config)) -> SimHandle {
    let mut c = Config::for_tests();
    c.records_per_entity = 120;
    c.key_bits = 512; // key generation dominates in debug builds; 512 bits is plenty for a test
    c.same_second_burst = 10;
    c.tenants.push(TenantConfig { name: "acme".into(), webhooks_activated: activated });
    c.clients.push(ClientConfig {
        tenant: "acme".into(),
        client_id: "demo-client".into(),
        secret: SECRET.into(),
    });
    tweak(&mut c);
    carerix_sim::spawn(c).await.expect("spawn the emulator")
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The table line of the check called `name`.
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| names(l, name))
            .unwrap_or_else(|| panic!("no line for {name:?} in\n{}\n{}", self.stdout, self.stderr))
    }

    /// The remedy printed under the check called `name`.
    fn remedy(&self, name: &str) -> &str {
        let mut lines = self.stdout.lines().skip_while(|l| !names(l, name));
        lines.next();
        lines
            .next()
            .filter(|l| l.trim_start().starts_with('→'))
            .unwrap_or_else(|| panic!("no remedy under {name:?} in\n{}", self.stdout))
    }
}

/// Whether a table line is the one of the check called `name` (symbol, space, name, padding).
fn names(line: &str, name: &str) -> bool {
    line.split_once(' ')
        .and_then(|(_, rest)| rest.strip_prefix(name))
        .is_some_and(|after| after.starts_with(' ') || after.is_empty())
}

fn command(h: &SimHandle, extra: &[&str]) -> tokio::process::Command {
    command_for(h, "acme", extra)
}

fn command_for(h: &SimHandle, tenant: &str, extra: &[&str]) -> tokio::process::Command {
    let base = h.base_url().as_str().trim_end_matches('/').to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_carerix-operator"));
    cmd.args(["preflight", "--tenant", tenant, "--identity-url", &base, "--api-url", &base])
        .args(["--client-id", "demo-client", "--client-secret-file", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn preflight_with_secret(h: &SimHandle, secret: &str, extra: &[&str]) -> Run {
    let mut child = command(h, extra).spawn().expect("start carerix-operator preflight");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(format!("{secret}\n").as_bytes()).await.expect("write the secret");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("preflight finished in time")
        .expect("preflight ran");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn preflight(h: &SimHandle, extra: &[&str]) -> Run {
    preflight_with_secret(h, SECRET, extra).await
}

fn preflight_applications(h: &SimHandle) -> Vec<String> {
    h.sim()
        .applications("acme")
        .expect("applications")
        .into_iter()
        .filter(|a| a.name.starts_with("carerix-operator-preflight-"))
        .map(|a| a.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_configured_tenant_passes_every_check_and_leaves_nothing_behind() {
    let h = start(true, |_| {}).await;
    h.sim().register_client("acme", Some("other-client"), Some("x"), None).expect("other client");
    let theirs =
        h.sim().create_application("acme", "other-client", "someone-elses").await.expect("their app");

    let run = preflight(&h, &[]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains('✘'), "{}", run.stdout);
    for name in [
        "token",
        "scopes",
        "webhooks activated",
        "create application",
        "read application",
        "list webhooks",
        "create webhook",
        "header values",
        "update webhook",
        "creator of an application",
        "read all applications",
        "public key",
        "delete webhook",
        "delete application",
        "graphql candidates",
        "graphql contacts",
        "graphql page size",
        "graphql modificationDate qualifier",
        "graphql _id qualifier",
        "graphql norestrict",
        "rate limit",
        "latency",
    ] {
        assert!(run.line(name).starts_with('✔'), "{name}: {}", run.line(name));
    }
    assert!(run.line("read all applications").contains("sees 1 application(s) of other clients"));
    assert!(
        run.line("graphql candidates").contains(" ms)"),
        "answers are timed: {}",
        run.line("graphql candidates")
    );
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET), "the secret is never printed");
    assert!(preflight_applications(&h).is_empty(), "the temporary application is gone");
    let left = h.sim().applications("acme").expect("apps");
    assert_eq!(left.len(), 1, "the other client's application is untouched");
    assert_eq!(left[0].id, theirs.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_parses_and_says_whether_the_run_passed() {
    let h = start(true, |_| {}).await;
    let run = preflight(&h, &["-o", "json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let v: Value = serde_json::from_str(&run.stdout).expect("JSON output");
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["tenant"], "acme");
    let checks = v["checks"].as_array().expect("checks");
    let outcome = |id: &str| {
        checks
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["outcome"].clone())
            .unwrap_or_else(|| panic!("no {id}"))
    };
    assert_eq!(outcome("token"), "pass");
    assert_eq!(outcome("permission.delete-application"), "pass");
    assert_eq!(outcome("graphql.page-size"), "pass");
    assert!(checks.iter().all(|c| c["outcome"] != "fail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_the_token_with_the_step_that_fixes_it() {
    let h = start(true, |_| {}).await;
    let run = preflight_with_secret(&h, "not-the-secret", &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.line("token").starts_with('✘'));
    assert!(run.remedy("token").contains("step 3"), "{}", run.remedy("token"));
    assert!(!run.stdout.contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_tenant_fails_the_token_and_points_at_the_tenant_and_identity_host() {
    let h = start(true, |_| {}).await;
    let mut child = command_for(&h, "acme-typo", &[]).spawn().expect("start");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(SECRET.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✘ token") && stdout.contains("no realm \"acme-typo\""), "{stdout}");
    assert!(stdout.contains("OpenID Configuration URL") && stdout.contains("step 4"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_not_activated_fail_the_scope_and_activation_checks_with_step_1() {
    let h = start(false, |_| {}).await;
    let run = preflight(&h, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(
        run.line("scopes").starts_with('✘') && run.line("scopes").contains("urn:cx/webhooks:data:manage")
    );
    assert!(run.remedy("scopes").contains("step 1"));
    assert!(run.line("webhooks activated").starts_with('✘'));
    assert!(run.remedy("webhooks activated").contains("Ask Carerix support to activate webhooks"));
    assert!(run.line("webhooks permissions").starts_with('-'), "skipped");
    assert!(run.line("graphql candidates").starts_with('✔'), "the data API still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_data_scope_is_told_to_add_it() {
    let h = start(true, |c| c.clients.clear()).await;
    h.sim()
        .register_client(
            "acme",
            Some("demo-client"),
            Some(SECRET),
            Some(vec!["urn:cx/cx5Acl:data:manage".into(), "urn:cx/webhooks:data:manage".into()]),
        )
        .expect("client");
    let run = preflight(&h, &[]).await;
    assert_eq!(run.code, Some(1));
    assert!(run.line("scopes").contains("missing urn:cx/cx5Wrapper:data:manage"), "{}", run.line("scopes"));
    assert!(run.remedy("scopes").contains("step 2") && !run.remedy("scopes").contains("step 1"));
    assert!(run.line("graphql").starts_with('-'), "{}", run.stdout);
    assert!(run.line("create application").starts_with('✔'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_webhooks_permission_fails_its_own_line_and_names_the_permission() {
    let h = start(true, |_| {}).await;
    let cases = [
        (Permission::Create, "create application", "permission create to on"),
        (Permission::Read, "read application", "permission read to all"),
        (Permission::Update, "update webhook", "permission update to owner"),
        (Permission::Delete, "delete webhook", "permission delete to owner"),
    ];
    for (missing, name, remedy) in cases {
        h.sim().set_switches(Switches { missing_permission: Some(missing), ..Switches::default() });
        let run = preflight(&h, &["--entities", "candidates"]).await;
        assert_eq!(run.code, Some(1), "{missing:?}: {}", run.stdout);
        assert!(run.line(name).starts_with('✘'), "{missing:?}: {}", run.stdout);
        assert!(run.remedy(name).contains(remedy), "{missing:?}: {}", run.remedy(name));
        assert!(run.remedy(name).contains("step 2"));
        match missing {
            Permission::Read => {
                assert!(run.line("read all applications").starts_with('✘'));
                assert!(run.line("create application").starts_with('✔'));
            }
            Permission::Delete => {
                assert!(run.line("delete application").starts_with('✘'));
                assert!(run.line("cleanup").starts_with('✘'), "{}", run.stdout);
                assert!(run.remedy("cleanup").contains("DELETE /webhooks/v1/applications/"));
            }
            _ => {}
        }
        h.sim().set_switches(Switches::default());
        for id in preflight_applications(&h) {
            // what preflight could not delete without the permission
            assert_eq!(missing, Permission::Delete, "left behind with {missing:?}");
            h.sim().delete_application("acme", None, &id).expect("admin delete");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creator_unlike_the_client_id_is_a_note_not_a_failure() {
    let h = start(true, |c| c.switches.creator_service_account_ids = true).await;
    let run = preflight(&h, &["--entities", "candidates"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = run.line("creator of an application");
    assert!(line.starts_with('!'), "{line}");
    assert!(line.contains(&carerix_sim::switches::service_account_id("demo-client")), "{line}");
    assert!(line.contains("by the id in its status and by its name"), "{line}");
    assert!(preflight_applications(&h).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_public_key_fails_and_says_what_it_costs() {
    let h = start(true, |c| c.switches.hide_public_key = true).await;
    let run = preflight(&h, &["--entities", "candidates"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.line("public key").starts_with('✘'));
    assert!(run.remedy("public key").contains("receiver refuses them"), "{}", run.remedy("public key"));
    assert!(preflight_applications(&h).is_empty());
    h.sim().set_switches(Switches::default());
    let run = preflight(&h, &["--entities", "candidates"]).await;
    assert!(run.line("public key").contains("returned by create, read, list"), "{}", run.line("public key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_header_values_are_a_note() {
    let h = start(true, |c| c.switches.mask_header_values = true).await;
    let run = preflight(&h, &["--entities", "candidates"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = run.line("header values");
    assert!(line.starts_with('!') && line.contains("\"********\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_cap_below_the_requested_size_is_a_note_since_the_sync_reads_on() {
    let h = start(true, |c| c.readings.page_cap = Some(50)).await;
    let run = preflight(&h, &["--entities", "candidates,vacancies"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = run.line("graphql page size");
    assert!(line.starts_with('!') && line.contains("served 50 records for a page of 100"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_refused_in_qualifiers_is_a_note_naming_the_syncs_fallback() {
    let h = start(true, |c| c.readings.id_in_qualifier = false).await;
    let run = preflight(&h, &["--entities", "candidates"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = run.line("graphql _id qualifier");
    assert!(line.starts_with('!') && line.contains("falls back"), "{line}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs preflight with a test delivery; once its webhook exists, `change` changes a record.
async fn preflight_with_delivery(h: &SimHandle, entity: Entity) -> Run {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/carerix");
    let listen = format!("127.0.0.1:{port}");
    let mut child =
        command(h, &["--delivery-url", &url, "--delivery-listen", &listen, "--delivery-wait", "30"])
            .spawn()
            .expect("start");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(SECRET.as_bytes()).await.expect("write");
    drop(stdin);
    let mut subscribed = false;
    for _ in 0..300 {
        let hooks = h.sim().webhooks("acme", None).expect("webhooks");
        if hooks.iter().filter(|w| w.url == url && w.status == carerix_sim::WebhookStatus::Enabled).count()
            >= 2
        {
            subscribed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(subscribed, "preflight subscribed to the delivery URL");
    let id = h.sim().list_records("acme", entity).expect("records")[0]["_id"]
        .as_str()
        .expect("id")
        .parse::<u64>()
        .expect("numeric");
    h.sim()
        .update_record(
            "acme",
            entity,
            id,
            json!({"firstName": "Preflight"}).as_object().cloned().expect("object"),
        )
        .expect("update");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("in time")
        .expect("ran");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_test_delivery_verifies_against_the_public_key() {
    let h = start(true, |_| {}).await;
    let run = preflight_with_delivery(&h, Entity::Employee).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let line = run.line("test delivery");
    assert!(
        line.starts_with('✔') && line.contains("cremployee:updated") && line.contains("verifies"),
        "{line}"
    );
    assert!(run.stderr.contains("waiting up to 30 s for a delivery"));
    assert!(preflight_applications(&h).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_contact_event_prefix_shows_in_the_test_delivery() {
    let h = start(true, |c| c.switches.contact_event_prefix = Some("cruser".into())).await;
    let run = preflight_with_delivery(&h, Entity::Contact).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let line = run.line("test delivery");
    assert!(line.starts_with('✘') && line.contains("\"cruser:updated\""), "{line}");
    assert!(run.remedy("test delivery").contains("spec.webhooks[].events"));
    assert!(preflight_applications(&h).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_mid_run_removes_the_temporary_application() {
    let h = start(true, |_| {}).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/carerix");
    let listen = format!("127.0.0.1:{port}");
    let mut child =
        command(&h, &["--delivery-url", &url, "--delivery-listen", &listen, "--delivery-wait", "60"])
            .spawn()
            .expect("start");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(SECRET.as_bytes()).await.expect("write");
    drop(stdin);
    let mut created = false;
    for _ in 0..300 {
        if !preflight_applications(&h).is_empty() && h.sim().webhooks("acme", None).expect("hooks").len() >= 2
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(created, "preflight created its temporary application");
    let pid = child.id().expect("pid").to_string();
    let kill = tokio::process::Command::new("kill").args(["-INT", &pid]).status().await.expect("kill");
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("in time")
        .expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted, the temporary application was cleaned up"), "{stdout}");
    assert!(stdout.contains("✔ cleanup"), "{stdout}");
    assert!(preflight_applications(&h).is_empty(), "nothing left in Carerix");
    assert!(h.sim().webhooks("acme", None).expect("hooks").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_read_from_a_file_and_never_from_a_flag() {
    let h = start(true, |_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write");
    let base = h.base_url().as_str().trim_end_matches('/').to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carerix-operator"))
        .args(["preflight", "--tenant", "acme", "--identity-url", &base, "--api-url", &base])
        .args(["--client-id", "demo-client", "--entities", "candidates", "--client-secret-file"])
        .arg(&path)
        .output()
        .await
        .expect("ran");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_carerix-operator"))
        .args(["preflight", "--tenant", "acme", "--client-id", "demo-client", "--client-secret", SECRET])
        .output()
        .await
        .expect("ran");
    assert_eq!(out.status.code(), Some(2), "no --client-secret flag exists");
}

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn from_connection_reads_the_connection_and_its_secret_and_refuses_an_api_key() {
    let cp = support::control_plane();
    let client = cp.client().await;
    let ns = cp.namespace("preflight");
    let h = start(true, |_| {}).await;
    let base = h.base_url().as_str().trim_end_matches('/').to_string();
    support::e2e::put_secret(
        &client,
        &ns,
        "acme-carerix",
        &[("clientId", "demo-client"), ("clientSecret", SECRET)],
    )
    .await;
    support::e2e::apply_connection(
        &client,
        &ns,
        "acme",
        json!({"tenant": "acme", "identityUrl": base, "apiUrl": base,
            "credentialsSecretRef": {"name": "acme-carerix"}, "sync": {"entities": ["candidates"],
            "sink": {"postgres": {"connectionSecretRef": {"name": "db", "key": "url"}}}}}),
    )
    .await;
    let run = |ns: String| {
        let kubeconfig = cp.kubeconfig.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_carerix-operator"))
                .args(["preflight", "--from-connection", &format!("{ns}/acme")])
                .env("KUBECONFIG", kubeconfig)
                .output()
                .await
                .expect("ran")
        }
    };
    let out = run(ns.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("✔ secret") && stdout.contains("✔ graphql candidates"), "{stdout}");
    assert!(!stdout.contains("graphql vacancies"), "the connection's sync.entities are used: {stdout}");

    support::e2e::put_secret(
        &client,
        &ns,
        "acme-carerix",
        &[("clientId", "demo-client"), ("clientSecret", SECRET), ("apiKey", "legacy-token")],
    )
    .await;
    let out = run(ns.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✘ secret") && stdout.contains("apiKey"), "{stdout}");
    assert!(!stdout.contains("legacy-token") && !stdout.contains(SECRET));
    assert!(preflight_applications(&h).is_empty());
}
