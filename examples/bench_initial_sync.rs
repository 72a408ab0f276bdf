//! Benchmark: an initial sync of N records per entity from the emulator into PostgreSQL.
//!
//! ```text
//! cargo run --release --example bench_initial_sync -- --records 5000 [--entities 7]
//! ```
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
    let url = postgres()?;
    let mut config =
        carerix_sim::Config { records_per_entity: records, rate_limit_per_sec: RATE, ..Default::default() };
    config.tenants.push(carerix_sim::TenantConfig { name: "bench".into(), webhooks_activated: true });
    config.clients.push(carerix_sim::ClientConfig {
        tenant: "bench".into(),
        client_id: "bench".into(),
        secret: "bench".into(),
    });
    let sim = carerix_sim::spawn(config).await?;
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
    let engine = Engine::new(target, entities.clone());
    engine.prepare().await?;
    let start = Instant::now();
    let read = engine.pass().await?;
    let secs = start.elapsed().as_secs_f64();
    let bound = f64::from(RATE) * 100.0;
    println!("entities:        {}", entities.len());
    println!("records read:    {read} ({records} per entity, incl. soft-deleted)");
    println!("elapsed:         {secs:.1} s");
    println!("throughput:      {:.0} records/s", read as f64 / secs);
    println!("bound:           {bound:.0} records/s ({RATE} requests/s x 100 per page)");
    println!("of the bound:    {:.0} %", 100.0 * read as f64 / secs / bound);
    println!("peak memory:     {} (VmHWM)", vm_hwm());
    sim.shutdown().await;
    Ok(())
}
