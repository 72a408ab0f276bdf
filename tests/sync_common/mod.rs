//! Shared by the sync and receiver tests: a real PostgreSQL, the emulator in-process, a client.
//!
//! PostgreSQL: `CARERIX_TEST_POSTGRES_URL` (set by `hack/test.sh`), else this binary starts one
//! with `hack/postgres.sh`, stopped by a watcher when the binary exits. Tests that stop PostgreSQL
//! start their own ([`OwnPostgres`]).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use carerix_operator::{
    carerix::{CarerixClient, Credentials, Entity, RateLimiter},
    sync::{Schema, Target, store},
};
use carerix_sim::{ClientConfig, Config, SimHandle, TenantConfig};
use serde_json::Value;

pub const TENANT: &str = "acme";
pub const CLIENT_ID: &str = "sync-client";
pub const SECRET: &str = "sync-secret";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start_postgres(dir: &Path) -> String {
    let out = Command::new(repo_root().join("hack/postgres.sh"))
        .arg("start")
        .arg(dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .output()
        .expect("hack/postgres.sh runs (needs Debian's postgresql package: apt-get install postgresql)");
    assert!(out.status.success(), "hack/postgres.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("export CARERIX_TEST_POSTGRES_URL="))
        .expect("hack/postgres.sh prints the URL")
        .trim()
        .to_string()
}

/// The URL of the PostgreSQL all tests of this binary share.
pub fn postgres_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("CARERIX_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            let dir = std::env::temp_dir().join(format!("carerix-sync-pg-{}", std::process::id()));
            start_postgres(&dir)
        })
    })
    .clone()
}

/// A PostgreSQL of one test, which the test may stop and start again (same data directory).
pub struct OwnPostgres {
    pub dir: PathBuf,
    pub url: String,
}

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version")
}

fn as_pg(args: &[&str]) -> Command {
    // PostgreSQL refuses to run as root, the script runs it as `postgres` then
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c.args(args);
        c
    } else {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    c
}

impl OwnPostgres {
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("carerix-{name}-{}", std::process::id()));
        let url = start_postgres(&dir);
        OwnPostgres { dir, url }
    }

    fn pg_ctl(&self) -> String {
        bindir().join("pg_ctl").to_string_lossy().into_owned()
    }

    /// `pg_ctl stop` (fast): connections are closed, the data stays.
    pub fn stop(&self) {
        let data = self.dir.join("data");
        let status = as_pg(&[&self.pg_ctl(), "-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"])
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl stop failed");
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&self) {
        let port = std::fs::read_to_string(self.dir.join("port")).expect("port file");
        let opts = format!(
            "-h 127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c max_connections=200",
            port.trim(),
            self.dir.to_string_lossy()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let status = as_pg(&[
            &self.pg_ctl(),
            "-D",
            &data.to_string_lossy(),
            "-l",
            &log.to_string_lossy(),
            "-w",
            "-t",
            "60",
            "-o",
            &opts,
            "start",
        ])
        .status()
        .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl start failed");
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("hack/postgres.sh")).arg("stop").arg(&self.dir).output();
    }
}

/// A schema of its own for each test, so tests share one database without interfering.
pub fn schema(test: &str) -> Schema {
    Schema::new(&format!("t_{test}_{}", std::process::id())).expect("valid schema")
}

/// The emulator with one tenant and one client.
pub async fn sim(records: usize, tweak: impl FnOnce(&mut Config)) -> SimHandle {
    let mut config = Config::for_tests();
    config.records_per_entity = records;
    config.tenants.push(TenantConfig { name: TENANT.into(), webhooks_activated: true });
    config.clients.push(ClientConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        secret: SECRET.into(),
    });
    tweak(&mut config);
    carerix_sim::spawn(config).await.expect("emulator starts")
}

/// A client of the emulator's tenant with the operator's rate limit (10 requests/s).
pub fn client(sim: &SimHandle) -> CarerixClient {
    client_at_rate(sim, 10)
}

/// A client of the emulator's tenant allowed `per_sec` requests per second.
pub fn client_at_rate(sim: &SimHandle, per_sec: u32) -> CarerixClient {
    let base = sim.base_url().as_str().trim_end_matches('/').to_string();
    CarerixClient::builder()
        .identity_url(base.clone())
        .api_url(base)
        .tenant(TENANT)
        .credentials(Credentials::new(CLIENT_ID, SECRET))
        .rate_limiter(RateLimiter::new(per_sec))
        .build()
        .expect("client builds")
}

/// A sync target for connection `test/<name>` in its own schema.
pub async fn target(sim: &SimHandle, url: &str, name: &str) -> Target {
    let pool = store::pool(url).expect("pool");
    Target::new(client(sim), pool, schema(name), format!("test/{name}"))
}

pub fn sim_entity(e: Entity) -> carerix_sim::Entity {
    carerix_sim::Entity::parse(e.name()).expect("the emulator knows every entity")
}

/// Rows of an entity in the sink: id -> (deleted, record).
pub async fn rows(t: &Target, e: Entity) -> std::collections::BTreeMap<String, (bool, Value)> {
    let client = t.pool.get().await.expect("connection");
    let sql = format!("SELECT id, deleted, record FROM {} WHERE connection = $1", t.schema.entity(e));
    client
        .query(&sql, &[&t.connection])
        .await
        .expect("query")
        .into_iter()
        .map(|r| (r.get::<_, String>(0), (r.get::<_, bool>(1), r.get::<_, Value>(2))))
        .collect()
}

/// Asserts that the sink equals the emulator for `e`: every record the emulator has is present
/// with the same fields and deleted flag, and every other row is marked deleted.
pub async fn assert_equal(sim: &SimHandle, t: &Target, e: Entity) {
    let expected = sim.sim().list_records(TENANT, sim_entity(e)).expect("records");
    let hidden: std::collections::BTreeSet<String> =
        sim.sim().deleted_ids(TENANT, sim_entity(e)).expect("ids").iter().map(u64::to_string).collect();
    let rows = rows(t, e).await;
    let mut present = std::collections::BTreeSet::new();
    for rec in &expected {
        let id = rec["_id"].as_str().expect("_id").to_string();
        if hidden.contains(&id) && rec.get("deleted").is_none() && !rows.contains_key(&id) {
            // soft-deleted without a `deleted` field (CRMatch) before any pass read it: restricted
            // reads never list it, so the sink never had it
            continue;
        }
        let (deleted, stored) =
            rows.get(&id).unwrap_or_else(|| panic!("{} {id} missing from the sink", e.name()));
        let sim_deleted =
            rec.get("deleted").and_then(Value::as_i64).unwrap_or(0) != 0 || hidden.contains(&id);
        assert_eq!(*deleted, sim_deleted, "{} {id}: deleted flag", e.name());
        if hidden.contains(&id) && rec.get("deleted").is_none() {
            // soft-deleted without a `deleted` field (CRMatch): its last version is not read
            // again, only its disappearance from the restricted list
            present.insert(id);
            continue;
        }
        for (k, v) in stored.as_object().expect("object") {
            assert_eq!(rec.get(k).unwrap_or(&Value::Null), v, "{} {id}: field {k}", e.name());
        }
        assert_eq!(stored["modificationDate"], rec["modificationDate"]);
        present.insert(id);
    }
    for (id, (deleted, _)) in &rows {
        if !present.contains(id) {
            assert!(*deleted, "{} {id} is gone from the emulator but not marked deleted", e.name());
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
