//! Active-active sharding end to end: replica processes of the operator share 300 connections on
//! a real API server, with the Carerix emulator counting every write per application.
//!
//! Who works on what is read from each replica's metrics: a replica exports
//! `carerix_operator_last_successful_reconcile_timestamp_seconds` only for the connections it
//! reconciles, and drops the series of those it hands over.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use carerix_operator::{
    api::CarerixConnection,
    shard::{FORWARDED_HEADER, VIEW_ANNOTATION, membership::lease_name, ring::Ring},
};
use carerix_sim::{ClientConfig, Config as SimConfig, SimHandle, TenantConfig};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::ListParams};
use serde_json::json;
use support::{
    control_plane,
    e2e::{Operator, apply_connection, put_secret},
    eventually,
};

/// Connections in the test (the goal; the debug build on 2 cores handles it).
const CONNECTIONS: usize = 300;
/// Tenants they are spread over (each with its own client and Secret).
const TENANTS: usize = 10;
/// Lease duration of the replicas: short so that a loss is noticed quickly, long enough that
/// a replica keeps its Lease while 2 shared cores build and run debug binaries (at 4 s all three
/// once lost theirs, one after the other, and stopped as they should).
const LEASE_SECONDS: u64 = 10;
const GROUP: &str = "e2e";
const BASE_URL: &str = "https://hooks.example.com";

fn tenant(i: usize) -> String {
    format!("t{}", i % TENANTS)
}

fn name(i: usize) -> String {
    format!("c{i:03}")
}

async fn emulator() -> SimHandle {
    let mut config = SimConfig::for_tests();
    config.records_per_entity = 5;
    config.same_second_burst = 0;
    // 300 connections of one client each share its bucket: the test is not about rate limits.
    config.rate_limit_per_sec = 100_000;
    config.tenants =
        (0..TENANTS).map(|t| TenantConfig { name: tenant(t), webhooks_activated: true }).collect();
    config.clients = (0..TENANTS)
        .map(|t| ClientConfig {
            tenant: tenant(t),
            client_id: format!("client-{t}"),
            secret: "s3cret".into(),
        })
        .collect();
    carerix_sim::spawn(config).await.expect("the emulator starts")
}

fn replica(ns: &str, identity: &str) -> Operator {
    let lease = LEASE_SECONDS.to_string();
    Operator::start(
        control_plane(),
        &[ns],
        &[
            "--sharding",
            "--shard-group",
            GROUP,
            "--lease-namespace",
            ns,
            "--lease-duration-seconds",
            &lease,
            "--identity",
            identity,
            "--receiver-base-url",
            BASE_URL,
            "--carerix-rate-limit",
            "1000",
        ],
    )
}

/// The connections a replica reconciled (and still works on), with the time of the last pass.
async fn reconciled_by(op: &Operator, ns: &str) -> BTreeMap<String, f64> {
    let prefix =
        format!("carerix_operator_last_successful_reconcile_timestamp_seconds{{namespace=\"{ns}\",name=\"");
    let Some((200, text)) = op.get("/metrics").await else { return BTreeMap::new() };
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A counter or gauge line of a replica's metrics, 0 when absent.
async fn metric(op: &Operator, series: &str) -> f64 {
    let Some((200, text)) = op.get("/metrics").await else { return 0.0 };
    let needle = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(&needle).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

async fn deliveries(op: &Operator, result: &str) -> f64 {
    metric(op, &format!("carerix_operator_receiver_deliveries_total{{result=\"{result}\"}}")).await
}

async fn all_deliveries(op: &Operator) -> f64 {
    let Some((200, text)) = op.get("/metrics").await else { return 0.0 };
    text.lines()
        .filter(|l| l.starts_with("carerix_operator_receiver_deliveries_total{"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until the live members' Leases all carry the view of exactly `members`.
async fn settled_on(client: &kube::Client, ns: &str, members: &[&str]) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let want = Ring::new(members.iter().copied()).view();
    eventually(&format!("the members {members:?} to acknowledge one view"), Duration::from_secs(60), || {
        let leases = leases.clone();
        let want = want.clone();
        async move {
            let list = leases
                .list(&ListParams::default().labels(&format!("carerix.hiredata.io/shard-group={GROUP}")))
                .await
                .ok()?;
            let acks: BTreeMap<String, String> = list
                .items
                .iter()
                .filter_map(|l| {
                    let holder = l.spec.as_ref()?.holder_identity.clone()?;
                    let view = l.metadata.annotations.as_ref()?.get(VIEW_ANNOTATION)?.clone();
                    Some((holder, view))
                })
                .collect();
            members.iter().all(|m| acks.get(*m) == Some(&want)).then_some(())
        }
    })
    .await;
}

async fn ready_count(client: &kube::Client, ns: &str) -> usize {
    let api: Api<CarerixConnection> = Api::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&ListParams::default()).await else { return 0 };
    list.items
        .iter()
        .filter(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

/// Every connection's application was created once and its one webhook once, and nothing else
/// was written: two replicas working on one connection would show here.
fn assert_written_once(sim: &SimHandle, ns: &str) {
    let mut seen = 0;
    for t in 0..TENANTS {
        for (app, writes) in sim.sim().application_writes(&tenant(t)).expect("tenant") {
            assert_eq!(
                (writes.applications_created, writes.webhooks_created, writes.total()),
                (1, 1, 2),
                "{app} was written more than once: {writes:?}"
            );
            assert!(app.starts_with(&format!("carerix-operator.{ns}.")), "{app}");
            seen += 1;
        }
    }
    assert_eq!(seen, CONNECTIONS, "one application per connection");
}

/// Who works on what, from the metrics: every connection on exactly one replica.
async fn owners(ops: &[(&str, &Operator)], ns: &str) -> BTreeMap<String, String> {
    let mut owner = BTreeMap::new();
    for (id, op) in ops {
        for name in reconciled_by(op, ns).await.into_keys() {
            if let Some(other) = owner.insert(name.clone(), id.to_string()) {
                panic!("{name} is reconciled by both {other} and {id}");
            }
        }
    }
    owner
}

async fn wait_all_owned(ops: &[(&str, &Operator)], ns: &str, what: &str) -> BTreeMap<String, String> {
    eventually(what, Duration::from_secs(240), || async {
        let mut seen = BTreeMap::new();
        for (id, op) in ops {
            for name in reconciled_by(op, ns).await.into_keys() {
                seen.entry(name).or_insert_with(Vec::new).push(id.to_string());
            }
        }
        (seen.len() == CONNECTIONS && seen.values().all(|v| v.len() == 1)).then_some(())
    })
    .await;
    owners(ops, ns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: hack/test.sh"]
async fn three_replicas_share_300_connections_hand_them_over_safely_and_forward_deliveries() {
    let cp = control_plane();
    let client = cp.client().await;
    let sim = emulator().await;
    let ns = cp.namespace("shards");
    for t in 0..TENANTS {
        let id = format!("client-{t}");
        put_secret(
            &client,
            &ns,
            &format!("creds-{t}"),
            &[("clientId", id.as_str()), ("clientSecret", "s3cret")],
        )
        .await;
    }
    let mut a = replica(&ns, "a");
    let b = replica(&ns, "b");
    let mut c = replica(&ns, "c");
    settled_on(&client, &ns, &["a", "b", "c"]).await;
    let idle = [a.rss_kib(), b.rss_kib(), c.rss_kib()];

    let url = sim.base_url().to_string();
    let url = url.trim_end_matches('/');
    let started = Instant::now();
    for i in 0..CONNECTIONS {
        let spec = json!({
            "tenant": tenant(i),
            "credentialsSecretRef": {"name": format!("creds-{}", i % TENANTS)},
            "identityUrl": url,
            "apiUrl": url,
            "interval": "10m",
            "webhooks": [{"name": "matches", "events": ["crmatch:created"]}],
        });
        apply_connection(&client, &ns, &name(i), spec).await;
    }
    eventually("all connections to be Ready", Duration::from_secs(300), || async {
        (ready_count(&client, &ns).await == CONNECTIONS).then_some(())
    })
    .await;
    eprintln!("{CONNECTIONS} connections Ready on 3 replicas {:?} after the first apply", started.elapsed());

    // Each connection is worked on by exactly one replica, the one the ring names, and each
    // application and webhook was created exactly once.
    let three = [("a", &a), ("b", &b), ("c", &c)];
    let owner = wait_all_owned(&three, &ns, "every connection to be reconciled by one replica").await;
    let loaded = [a.rss_kib(), b.rss_kib(), c.rss_kib()];
    for (i, (id, _)) in three.iter().enumerate() {
        let n = owner.values().filter(|o| o == id).count();
        eprintln!(
            "memory of {id}: {:?} KiB idle, {:?} KiB with {CONNECTIONS} cached, {n} owned",
            idle[i], loaded[i]
        );
    }
    let ring = Ring::new(["a", "b", "c"]);
    for (conn, id) in &owner {
        assert_eq!(ring.owner(&format!("{ns}/{conn}")), Some(id.as_str()), "{conn}");
    }
    for (id, op) in &three {
        let n = owner.values().filter(|o| o == id).count();
        assert!(n > CONNECTIONS / 6, "{id} works on only {n} connections");
        // The gauge is counted at each renewal of the member's Lease, so it may still show the
        // count from before the last connections were applied.
        let series = format!("carerix_operator_shard_connections{{group=\"{GROUP}\"}}");
        eventually(
            &format!("{id}'s shard_connections gauge to show {n}"),
            Duration::from_secs(30),
            || async { (metric(op, &series).await as usize == n).then_some(()) },
        )
        .await;
    }
    assert_written_once(&sim, &ns);

    // A delivery to a replica that does not own the connection is verified there and forwarded.
    let (conn, _) = owner.iter().find(|(_, id)| *id == "b").expect("b owns some");
    let i: usize = conn[1..].parse().expect("an index");
    let app = sim
        .sim()
        .applications(&tenant(i))
        .expect("tenant")
        .into_iter()
        .find(|app| app.name == format!("carerix-operator.{ns}.{conn}"))
        .expect("its application");
    let body =
        json!({"id": "evt-forwarded-1", "type": "crmatch:created", "data": {"entityId": "1"}}).to_string();
    let signature = sim.sim().sign_as_application(&tenant(i), &app.id, body.as_bytes()).expect("signed");
    let to_a = format!("http://127.0.0.1:{}/webhooks/{ns}/{conn}", a.port);
    let (owner_before, forwarded_before) =
        (deliveries(&b, "ignored").await, deliveries(&a, "forwarded").await);
    let http = reqwest::Client::new();
    let answer = http
        .post(&to_a)
        .header("content-type", "application/json")
        .header("cx-signature", &signature)
        .body(body.clone())
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200, "the owner's answer, passed on");
    assert_eq!(deliveries(&b, "ignored").await, owner_before + 1.0, "the owner served it");
    assert_eq!(deliveries(&a, "forwarded").await, forwarded_before + 1.0);
    // One that says it was forwarded already is never forwarded again (no loops): Carerix retries.
    let looped = http
        .post(&to_a)
        .header("cx-signature", &signature)
        .header(FORWARDED_HEADER, "b")
        .body(body.clone())
        .send()
        .await
        .expect("an answer");
    assert_eq!(looped.status(), 503);
    assert_eq!(looped.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    assert_eq!(deliveries(&b, "ignored").await, owner_before + 1.0, "not passed on");
    // An unsigned one is refused by the replica it reached, without costing the owner anything.
    let owner_total = all_deliveries(&b).await;
    let unsigned_before = deliveries(&a, "unsigned").await;
    let answer = http.post(&to_a).body(body.clone()).send().await.expect("an answer");
    assert_eq!(answer.status(), 401);
    assert_eq!(deliveries(&a, "unsigned").await, unsigned_before + 1.0);
    let forged =
        http.post(&to_a).header("cx-signature", "Zm9yZ2Vk").body(body).send().await.expect("an answer");
    assert_eq!(forged.status(), 401);
    assert_eq!(all_deliveries(&b).await, owner_total, "nothing unsigned or forged was forwarded");

    // c crashes: its connections are worked on again by a and b once its Lease expired.
    let c_had: BTreeSet<String> = owner.iter().filter(|(_, id)| *id == "c").map(|(n, _)| n.clone()).collect();
    let killed_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs_f64();
    let killed = Instant::now();
    c.kill();
    let two = [("a", &a), ("b", &b)];
    eventually("a and b to reconcile c's connections", Duration::from_secs(LEASE_SECONDS + 120), || async {
        let mut passes = reconciled_by(&a, &ns).await;
        passes.extend(reconciled_by(&b, &ns).await);
        c_had.iter().all(|n| passes.get(n).is_some_and(|at| *at > killed_at)).then_some(())
    })
    .await;
    eprintln!("c's {} connections reconciled by a and b {:?} after SIGKILL", c_had.len(), killed.elapsed());
    let after_kill = wait_all_owned(&two, &ns, "every connection on a or b").await;
    for (i, (id, op)) in two.iter().enumerate() {
        let n = after_kill.values().filter(|o| o == id).count();
        eprintln!(
            "memory of {id}: {:?} KiB with {CONNECTIONS} cached, {n} owned (was {:?})",
            op.rss_kib(),
            loaded[i]
        );
    }
    let ring = Ring::new(["a", "b"]);
    for (conn, id) in &after_kill {
        if !c_had.contains(conn) {
            assert_eq!(owner.get(conn), Some(id), "{conn} moved although its owner stayed");
        }
        assert_eq!(ring.owner(&format!("{ns}/{conn}")), Some(id.as_str()), "{conn}");
    }
    assert_eq!(ready_count(&client, &ns).await, CONNECTIONS);
    assert_written_once(&sim, &ns);

    // d joins: about a third moves to it, only to it, and nothing is written twice.
    let d = replica(&ns, "d");
    settled_on(&client, &ns, &["a", "b", "d"]).await;
    let three = [("a", &a), ("b", &b), ("d", &d)];
    let after_join = wait_all_owned(&three, &ns, "every connection on exactly one of a, b, d").await;
    let moved: Vec<&String> = after_join.iter().filter(|(_, id)| *id == "d").map(|(n, _)| n).collect();
    eprintln!("{} of {CONNECTIONS} connections moved to the joining replica", moved.len());
    assert!(
        (CONNECTIONS / 5..=CONNECTIONS / 2).contains(&moved.len()),
        "{} of {CONNECTIONS} moved to the new replica, not about a third",
        moved.len()
    );
    for (conn, id) in &after_join {
        if id != "d" {
            assert_eq!(after_kill.get(conn), Some(id), "{conn} moved between the replicas that stayed");
        }
    }
    assert_eq!(ready_count(&client, &ns).await, CONNECTIONS);
    assert_written_once(&sim, &ns);

    // a leaves gracefully (SIGTERM, as in a rollout): it finishes, deletes its Lease and exits 0;
    // b and d take its connections without waiting for a Lease to expire.
    let a_had = after_join.values().filter(|id| *id == "a").count();
    let left = Instant::now();
    let status = a.terminate();
    assert!(status.success(), "a graceful exit: {status:?}\n{}", a.log_tail());
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    assert!(leases.get_opt(&lease_name(GROUP, "a")).await.expect("a list").is_none(), "a's Lease is gone");
    let two = [("b", &b), ("d", &d)];
    let after_leave = wait_all_owned(&two, &ns, "every connection on b or d").await;
    eprintln!("a's {a_had} connections on b and d {:?} after SIGTERM", left.elapsed());
    for (conn, id) in &after_leave {
        if after_join.get(conn).is_some_and(|old| old != "a") {
            assert_eq!(after_join.get(conn), Some(id), "{conn} moved although its owner stayed");
        }
    }
    assert_eq!(ready_count(&client, &ns).await, CONNECTIONS);
    assert_written_once(&sim, &ns);
}
