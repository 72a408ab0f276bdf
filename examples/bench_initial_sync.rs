//! Benchmark: an initial sync of N records per entity from the emulator into PostgreSQL.
//!
//! ```text
//! cargo run --release --example bench_initial_sync -- --records 5000 [--entities 7] \
//!     [--latency-ms 300] [--candidates 40000] [--churn-updates 50]
//! ```
//!
//! `--latency-ms` makes every GraphQL answer of the emulator take that long; `--candidates`
//! gives candidates their own count (the largest entity in a real tenant); `--churn-updates`
//! then changes that many records and runs one incremental pass, reporting how long a change took
//! to reach its row.
//!
//! Uses `CARERIX_TEST_POSTGRES_URL`, or starts a PostgreSQL with `hack/postgres.sh`. Prints the
//! throughput against the bound the rate limit sets (requests/s × page size) and the peak memory
//! of the process (VmHWM).

use std::{process::Command, time::Instant};

use anyhow::{Context, Result};
use carerix_operator::{
    carerix::{CarerixClient, Credentials, Entity, RateLimiter},
    sync::{Engine, Schema, Target, store},
};

const RATE: u32 = 10;

fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).context("missing value")?.parse().context("not a number"),
        None => Ok(default),
    }
}

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn postgres() -> Result<String> {
    if let Ok(url) = std::env::var("CARERIX_TEST_POSTGRES_URL") {
        return Ok(url);
    }
    let dir = std::env::temp_dir().join(format!("carerix-bench-pg-{}", std::process::id()));
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/postgres.sh"))
        .arg("start")
        .arg(&dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .output()
        .context("hack/postgres.sh")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export CARERIX_TEST_POSTGRES_URL=").map(str::to_string))
        .context("hack/postgres.sh did not print a URL")
}

#[tokio::main]
async fn main() -> Result<()> {
    let records = arg("--records", 5000)?;
    let n_entities = arg("--entities", 7)?.clamp(1, 7);
    let latency = arg("--latency-ms", 0)?;
    let candidates = arg("--candidates", records)?;
    let churn = arg("--churn-updates", 0)?;
    let url = postgres()?;
    let mut config =
        carerix_sim::Config { records_per_entity: records, rate_limit_per_sec: RATE, ..Default::default() };
    config.tenants.push(carerix_sim::TenantConfig { name: "bench".into(), webhooks_activated: true });
    config.clients.push(carerix_sim::ClientConfig {
        tenant: "bench".into(),
        client_id: "bench".into(),
        secret: "bench".into(),
    });
    config.readings.latency_ms = latency as u64;
    config.same_second_burst = 150;
    let sim = carerix_sim::spawn(config).await?;
    // candidates: the largest entity
    let extra = candidates.saturating_sub(records);
    for i in 0..extra {
        let mut f = serde_json::Map::new();
        f.insert("firstName".into(), serde_json::json!(format!("C{i}")));
        sim.sim().create_record("bench", carerix_sim::Entity::Employee, f)?;
    }
    let base = sim.base_url().as_str().trim_end_matches('/').to_string();
    let client = CarerixClient::builder()
        .identity_url(base.clone())
        .api_url(base)
        .tenant("bench")
        .credentials(Credentials::new("bench", "bench"))
        .rate_limiter(RateLimiter::new(RATE))
        .build()?;
    let schema = Schema::new(&format!("bench_{}", std::process::id()))?;
    let target = Target::new(client, store::pool(&url)?, schema, "bench/bench");
    let entities: Vec<Entity> = Entity::ALL.into_iter().take(n_entities).collect();
    let engine = Engine::new(target.clone(), entities.clone());
    engine.prepare().await?;
    sim.sim().clear_logs();
    let start = Instant::now();
    let read = engine.pass().await?;
    let secs = start.elapsed().as_secs_f64();
    let log = sim.sim().request_log();
    let requests = log.iter().filter(|r| r.operation.starts_with("graphql")).count();
    let too_many = log.iter().filter(|r| r.status == 429).count();
    let bound = f64::from(RATE) * 100.0;
    println!("entities:        {}", entities.len());
    println!("latency:         {latency} ms per GraphQL answer");
    println!("records read:    {read} ({records} per entity, {candidates} candidates, incl. soft-deleted)");
    println!(
        "requests:        {requests} ({:.4} per record), 429s: {too_many}",
        requests as f64 / read.max(1) as f64
    );
    println!("elapsed:         {secs:.1} s");
    println!("throughput:      {:.0} records/s", read as f64 / secs);
    println!("bound:           {bound:.0} records/s ({RATE} requests/s x 100 per page)");
    println!("of the bound:    {:.0} %", 100.0 * read as f64 / secs / bound);
    println!("peak memory:     {} (VmHWM)", vm_hwm());
    // where the time went: GraphQL requests per 10 s of the pass (an idle limiter shows as a dip)
    if let Some(first) = log.iter().find(|r| r.operation.starts_with("graphql")).map(|r| r.time) {
        let mut buckets: Vec<usize> = Vec::new();
        for r in log.iter().filter(|r| r.operation.starts_with("graphql")) {
            let i = usize::try_from((r.time - first).num_seconds() / 10).unwrap_or_default();
            if buckets.len() <= i {
                buckets.resize(i + 1, 0);
            }
            buckets[i] += 1;
        }
        let per_10s: Vec<String> = buckets.iter().map(ToString::to_string).collect();
        println!("requests/10 s:   {}", per_10s.join(" "));
    }
    if churn > 0 {
        let ids: Vec<u64> = sim
            .sim()
            .list_records("bench", carerix_sim::Entity::Employee)?
            .iter()
            .filter_map(|r| r["_id"].as_str().and_then(|s| s.parse().ok()))
            .take(churn)
            .collect();
        let changed = Instant::now();
        for id in &ids {
            let mut f = serde_json::Map::new();
            f.insert("lastName".into(), serde_json::json!("churned"));
            sim.sim().update_record("bench", carerix_sim::Entity::Employee, *id, f)?;
        }
        let pass = Instant::now();
        engine.sync_entity(Entity::Candidates).await?;
        println!(
            "churn:           {} changes reached their rows {:.1} s after the change ({:.1} s incremental pass)",
            ids.len(),
            changed.elapsed().as_secs_f64(),
            pass.elapsed().as_secs_f64()
        );
    }
    sim.shutdown().await;
    Ok(())
}
