//! Chaos, with nothing lost (issue 10): three connections run their initial sync into PostgreSQL
//! while Carerix keeps changing, and in turn the operators are killed with SIGKILL and restarted,
//! the leader dies and its standby takes over, PostgreSQL restarts, kube-apiserver restarts (etcd
//! keeps the data), and the emulator answers storms of 5xx and of 429. Afterwards every
//! connection is Ready, the sink equals Carerix row by row, and each tenant has exactly one
//! application and one webhook.
//!
//! The test starts its own control plane, PostgreSQL and emulator, so that restarting them hurts
//! no other test. It takes about three minutes: the operators are held to two Carerix requests per
//! second per tenant (deliveries of the changes use that budget too), so that the initial sync of
//! a few thousand records per connection outlasts the injections.

mod support;
mod sync_common;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use carerix_operator::{carerix::Entity, sync::Schema};
use carerix_sim::{ClientConfig, Config, Fault, FaultKind, SimHandle, TenantConfig};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Map, Value, json};
use support::{
    ControlPlane,
    e2e::{Operator, apply_connection, condition, get_connection, put_secret, synced_spec},
    repo_root,
};
use sync_common::OwnPostgres;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const IDENTITIES: [&str; 2] = ["first", "second"];
/// Records per entity and tenant: 7 entities, 4200 records per connection.
const RECORDS: usize = 600;

/// A control plane of this test alone, so that it may restart kube-apiserver.
fn own_control_plane() -> ControlPlane {
    let cp = support::start_control_plane(
        std::env::temp_dir().join(format!("carerix-chaos-cp-{}", std::process::id())),
    );
    support::install_crd(&cp);
    cp
}

fn restart_apiserver(cp: &ControlPlane) {
    let dir = cp.dir.as_ref().expect("our own control plane");
    let out = Command::new(repo_root().join("hack/control-plane.sh"))
        .arg("restart-apiserver")
        .arg(dir)
        .output()
        .expect("hack/control-plane.sh runs");
    assert!(
        out.status.success(),
        "kube-apiserver did not come back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sim_entity(e: Entity) -> carerix_sim::Entity {
    carerix_sim::Entity::parse(e.name()).expect("the emulator knows every entity")
}

async fn pg(url: &str) -> Option<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(conn);
    Some(client)
}

/// Rows in the sink over every connection and entity (`None` while PostgreSQL is away).
async fn sink_rows(url: &str, schema: &Schema) -> Option<i64> {
    let db = pg(url).await?;
    let mut total = 0;
    for e in Entity::ALL {
        let row = db.query_one(&format!("SELECT count(*) FROM {}", schema.entity(e)), &[]).await.ok()?;
        total += row.get::<_, i64>(0);
    }
    Some(total)
}

/// Records in the emulator over every tenant and entity.
fn carerix_rows(sim: &SimHandle) -> usize {
    TENANTS
        .iter()
        .flat_map(|t| Entity::ALL.map(|e| sim.sim().list_records(t, sim_entity(e)).map_or(0, |r| r.len())))
        .sum()
}

/// How the sink differs from the emulator for one tenant's connection, row by row: every record
/// of Carerix is there with the same fields, modification date and deleted flag; every other row
/// is marked deleted.
async fn differences(
    sim: &SimHandle,
    url: &str,
    schema: &Schema,
    tenant: &str,
    connection: &str,
) -> Vec<String> {
    let Some(db) = pg(url).await else { return vec!["PostgreSQL unreachable".into()] };
    let mut diffs = Vec::new();
    for e in Entity::ALL {
        let sql = format!("SELECT id, deleted, record FROM {} WHERE connection = $1", schema.entity(e));
        let rows: BTreeMap<String, (bool, Value)> = match db.query(&sql, &[&connection]).await {
            Ok(rows) => rows
                .into_iter()
                .map(|r| (r.get::<_, String>(0), (r.get::<_, bool>(1), r.get::<_, Value>(2))))
                .collect(),
            Err(err) => return vec![format!("{}: {err}", e.name())],
        };
        let records = sim.sim().list_records(tenant, sim_entity(e)).expect("records");
        let mut seen = BTreeSet::new();
        for rec in &records {
            let id = rec["_id"].as_str().expect("_id").to_string();
            seen.insert(id.clone());
            let Some((deleted, stored)) = rows.get(&id) else {
                diffs.push(format!("{tenant} {} {id}: missing from the sink", e.name()));
                continue;
            };
            let carerix_deleted = rec.get("deleted").and_then(Value::as_i64).unwrap_or(0) != 0;
            if *deleted != carerix_deleted {
                diffs.push(format!(
                    "{tenant} {} {id}: deleted {deleted}, Carerix says {carerix_deleted}",
                    e.name()
                ));
            }
            let fields = stored.as_object().map(Map::len).unwrap_or(0);
            if fields < 3 {
                diffs.push(format!("{tenant} {} {id}: only {fields} fields stored", e.name()));
            }
            for (k, v) in stored.as_object().into_iter().flatten() {
                if rec.get(k).unwrap_or(&Value::Null) != v {
                    diffs.push(format!(
                        "{tenant} {} {id}: {k} is {v}, Carerix has {:?}",
                        e.name(),
                        rec.get(k)
                    ));
                }
            }
            if stored.get("modificationDate") != rec.get("modificationDate") {
                diffs.push(format!("{tenant} {} {id}: an older version is stored", e.name()));
            }
        }
        for (id, (deleted, _)) in &rows {
            if !seen.contains(id) && !deleted {
                diffs.push(format!("{tenant} {} {id}: gone from Carerix but not marked deleted", e.name()));
            }
        }
    }
    diffs
}

/// Carerix users at work: updates, creates, soft and hard deletes, round the tenants, until told
/// to stop. Returns how many changes were made.
fn keep_changing(sim: Arc<carerix_sim::Sim>, stop: Arc<AtomicBool>, made: Arc<AtomicUsize>) {
    let candidates = carerix_sim::Entity::parse("candidates").expect("entity");
    let vacancies = carerix_sim::Entity::parse("vacancies").expect("entity");
    let matches = carerix_sim::Entity::parse("matches").expect("entity");
    let mut i: usize = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let tenant = TENANTS[i % TENANTS.len()];
        let pick = |entity| {
            let live: Vec<u64> = sim
                .list_records(tenant, entity)
                .unwrap_or_default()
                .iter()
                .filter(|r| r.get("deleted").and_then(Value::as_i64).unwrap_or(0) == 0)
                .filter_map(|r| r["_id"].as_str()?.parse().ok())
                .collect();
            live.get(i.wrapping_mul(7919) % live.len().max(1)).copied()
        };
        let mut fields = Map::new();
        let done = match (i / TENANTS.len()) % 10 {
            0..=3 => pick(candidates).is_some_and(|id| {
                fields.insert("firstName".into(), json!(format!("Changed {i}")));
                sim.update_record(tenant, candidates, id, fields).is_ok()
            }),
            4 | 5 => {
                fields.insert("firstName".into(), json!(format!("New {i}")));
                fields.insert("lastName".into(), json!("Chaos"));
                sim.create_record(tenant, candidates, fields).is_ok()
            }
            6 => pick(candidates).is_some_and(|id| sim.soft_delete_record(tenant, candidates, id).is_ok()),
            7 => pick(vacancies).is_some_and(|id| {
                fields.insert("jobTitle".into(), json!(format!("Title {i}")));
                sim.update_record(tenant, vacancies, id, fields).is_ok()
            }),
            8 => pick(vacancies).is_some_and(|id| sim.soft_delete_record(tenant, vacancies, id).is_ok()),
            _ => pick(matches).is_some_and(|id| sim.hard_delete_record(tenant, matches, id).is_ok()),
        };
        if done {
            made.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The two operator processes, and which of them the test keeps down on purpose.
struct Replicas {
    operators: Vec<Operator>,
    held_down: [bool; 2],
    restarts: usize,
}

/// The test's clock and narrative, printed as it goes (kept in the failure output).
struct Timeline {
    start: Instant,
}

impl Timeline {
    fn note(&self, what: &str) {
        eprintln!("[chaos {:>5.1}s] {what}", self.start.elapsed().as_secs_f64());
    }
}

/// Waits until the sink holds `more` rows more than `from` (the sync goes on after an injection).
async fn wait_progress(t: &Timeline, url: &str, schema: &Schema, from: i64, more: i64, after: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(n) = sink_rows(url, schema).await
            && n >= from + more
        {
            t.note(&format!("the sync goes on after {after}: {n} rows"));
            return n;
        }
        assert!(Instant::now() < deadline, "the sync did not go on within 120 s after {after}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn lease_holder(client: &kube::Client, ns: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    leases.get_opt("carerix-operator").await.ok().flatten()?.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs kube-apiserver, etcd and PostgreSQL: hack/test.sh"]
async fn after_crashes_restarts_storms_and_a_failover_every_connection_is_ready_and_the_sink_equals_carerix()
{
    let t = Timeline { start: Instant::now() };
    let cp = own_control_plane();
    let postgres = OwnPostgres::start("chaos");
    let client = cp.client().await;
    let mut config = Config::for_tests();
    config.records_per_entity = RECORDS;
    config.rate_limit_per_sec = 1000;
    for tenant in TENANTS {
        config.tenants.push(TenantConfig { name: tenant.into(), webhooks_activated: true });
        config.clients.push(ClientConfig {
            tenant: tenant.into(),
            client_id: format!("{tenant}-client"),
            secret: "s3cret".into(),
        });
    }
    let sim = carerix_sim::spawn(config).await.expect("the emulator starts");
    let sim_url = sim.base_url().as_str().trim_end_matches('/').to_string();
    let ns = cp.namespace("chaos");
    let schema_name = format!("chaos_{}", &ns[ns.len() - 8..]);
    let schema = Schema::new(&schema_name).expect("schema");
    put_secret(&client, &ns, "db", &[("url", &postgres.url)]).await;
    for tenant in TENANTS {
        let id = format!("{tenant}-client");
        put_secret(&client, &ns, tenant, &[("clientId", &id), ("clientSecret", "s3cret")]).await;
    }

    // Two replicas with leader election; two Carerix requests per second per tenant. A replica
    // that exits (a lost lease ends the process) is started again, as the kubelet would.
    let args = |identity: &'static str| {
        vec![
            "--leader-elect",
            "--lease-namespace",
            ns.as_str(),
            "--lease-duration-seconds",
            "6",
            "--identity",
            identity,
            "--carerix-rate-limit",
            "2",
        ]
    };
    let replicas = Arc::new(Mutex::new(Replicas {
        operators: vec![
            Operator::start(&cp, &[&ns], &args("first")),
            Operator::start(&cp, &[&ns], &args("second")),
        ],
        held_down: [false, false],
        restarts: 0,
    }));
    let kubelet = tokio::spawn({
        let replicas = replicas.clone();
        let start = t.start;
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut r = replicas.lock().unwrap_or_else(PoisonError::into_inner);
                for (i, identity) in IDENTITIES.iter().enumerate() {
                    if !r.held_down[i] && !r.operators[i].is_running() {
                        Timeline { start }.note(&format!("{identity} exited; restarted"));
                        r.operators[i].restart();
                        r.restarts += 1;
                    }
                }
            }
        }
    });
    for tenant in TENANTS {
        let mut spec = synced_spec(
            tenant,
            tenant,
            &sim_url,
            &schema_name,
            &["cremployee:created", "cremployee:updated"],
        );
        spec["interval"] = json!("30s");
        spec["sync"]["interval"] = json!("5s");
        spec["sync"]["fullCompareInterval"] = json!("30s");
        apply_connection(&client, &ns, tenant, spec).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let changes = {
        let (sim, stop, made) = (sim.sim_arc(), stop.clone(), made.clone());
        std::thread::spawn(move || keep_changing(sim, stop, made))
    };
    t.note(&format!("{} records in Carerix; the initial sync starts", carerix_rows(&sim)));
    let mut rows = wait_progress(&t, &postgres.url, &schema, 0, 300, "the start").await;
    let mut during_initial_sync = Vec::new();
    let mut in_initial_sync = |rows: i64, what: &str| {
        let syncing = rows < carerix_rows(&sim) as i64;
        t.note(&format!("{what} ({rows} rows in the sink, initial sync running: {syncing})"));
        during_initial_sync.push((what.to_string(), syncing));
    };

    // 1. Both replicas die at once (SIGKILL) and are started again.
    in_initial_sync(rows, "SIGKILL of both operators, then a restart");
    {
        let mut r = replicas.lock().unwrap_or_else(PoisonError::into_inner);
        r.operators.iter_mut().for_each(Operator::kill);
        r.operators.iter_mut().for_each(Operator::restart);
    }
    rows = wait_progress(&t, &postgres.url, &schema, rows, 200, "the restart").await;

    // 2. The leader dies mid-sync and stays down until the standby has taken over.
    let holder = lease_holder(&client, &ns).await.expect("a leader");
    in_initial_sync(rows, &format!("SIGKILL of the leader ({holder})"));
    let leader = usize::from(holder == IDENTITIES[1]);
    let standby = IDENTITIES[1 - leader];
    {
        let mut r = replicas.lock().unwrap_or_else(PoisonError::into_inner);
        r.held_down[leader] = true;
        r.operators[leader].kill();
    }
    support::eventually("the standby takes the lease", Duration::from_secs(60), || {
        let client = client.clone();
        let ns = ns.clone();
        async move { (lease_holder(&client, &ns).await.as_deref() == Some(standby)).then_some(()) }
    })
    .await;
    t.note(&format!("{standby} holds the lease"));
    rows = wait_progress(&t, &postgres.url, &schema, rows, 200, "the failover").await;
    replicas.lock().unwrap_or_else(PoisonError::into_inner).held_down[leader] = false;

    // 3. PostgreSQL restarts (same data directory and port).
    in_initial_sync(rows, "PostgreSQL restart");
    postgres.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.restart();
    rows = wait_progress(&t, &postgres.url, &schema, rows, 200, "the PostgreSQL restart").await;

    // 4. kube-apiserver restarts; etcd keeps the data.
    in_initial_sync(rows, "kube-apiserver restart");
    tokio::task::spawn_blocking({
        let dir = cp.dir.clone();
        let cp2 = ControlPlane { kubeconfig: cp.kubeconfig.clone(), kubectl: cp.kubectl.clone(), dir };
        move || restart_apiserver(&cp2)
    })
    .await
    .expect("joined");
    t.note("kube-apiserver is back");
    rows = wait_progress(&t, &postgres.url, &schema, rows, 200, "the kube-apiserver restart").await;

    // 5. Storms: a spell where most requests get a 5xx, a full 503 outage, then only 429s.
    in_initial_sync(rows, "5xx and 429 storms");
    let storm_end = Instant::now() + Duration::from_secs(6);
    let mut n = 0u16;
    while Instant::now() < storm_end {
        n += 1;
        let status = [500, 502, 503, 504][usize::from(n % 4)];
        sim.sim().inject_fault(Fault {
            kind: FaultKind::Status { status },
            count: Some(2),
            path_prefix: None,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.sim().clear_faults();
    sim.sim().inject_fault(Fault { kind: FaultKind::Status { status: 503 }, count: None, path_prefix: None });
    tokio::time::sleep(Duration::from_secs(3)).await;
    sim.sim().clear_faults();
    sim.sim().inject_fault(Fault { kind: FaultKind::RateLimit, count: None, path_prefix: None });
    tokio::time::sleep(Duration::from_secs(5)).await;
    sim.sim().clear_faults();
    let log = sim.sim().request_log();
    let (errors, throttled) =
        (log.iter().filter(|r| r.status >= 500).count(), log.iter().filter(|r| r.status == 429).count());
    t.note(&format!("storms over: {errors} requests answered 5xx, {throttled} answered 429"));

    // Carerix users stop; the operators must now converge.
    stop.store(true, Ordering::Relaxed);
    changes.join().expect("the changes ran");
    t.note(&format!("{} changes were made in Carerix during the chaos", made.load(Ordering::Relaxed)));
    assert!(
        during_initial_sync.iter().take(4).all(|(_, syncing)| *syncing),
        "the injections before the storms must land in the initial sync: {during_initial_sync:?}"
    );
    assert!(errors > 0 && throttled > 0, "the operators sent nothing during the storms");

    for tenant in TENANTS {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let obj = get_connection(&client, &ns, tenant).await;
            if obj.as_ref().and_then(|o| condition(o, "Ready")).is_some_and(|c| c.0 == "True") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tenant} is not Ready 300 s after the chaos: {:?}",
                obj.and_then(|o| o.status).map(|s| s.conditions)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        t.note(&format!("{tenant} is Ready"));
    }
    // Hard deletes show only in a full comparison: wait for one that started after the last change.
    for tenant in TENANTS {
        let connection = format!("{ns}/{tenant}");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let diffs = differences(&sim, &postgres.url, &schema, tenant, &connection).await;
            if diffs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tenant}: the sink differs from Carerix 180 s after Ready ({} rows), e.g.:\n{}",
                diffs.len(),
                diffs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let records: usize = Entity::ALL
            .iter()
            .map(|e| sim.sim().list_records(tenant, sim_entity(*e)).map_or(0, |r| r.len()))
            .sum();
        t.note(&format!("{tenant}: the sink equals Carerix row by row ({records} records)"));
        // A failover in the meantime replaces the webhook (its URL names the leading replica),
        // creating the new one before deleting the old: wait for the pair to settle.
        let settled = format!("{tenant}: exactly one application and one webhook");
        support::eventually(&settled, Duration::from_secs(60), || {
            let apps = sim.sim().applications(tenant).map_or(0, |a| a.len());
            let hooks = sim.sim().webhooks(tenant, None).map_or(0, |h| h.len());
            std::future::ready((apps == 1 && hooks == 1).then_some(()))
        })
        .await;
    }
    kubelet.abort();
    let restarts = replicas.lock().unwrap_or_else(PoisonError::into_inner).restarts;
    t.note(&format!("done; the operators exited and were restarted {restarts} times on their own"));
}
