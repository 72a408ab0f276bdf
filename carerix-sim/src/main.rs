//! The `carerix-sim` binary: parses flags, starts the emulator, prints one line
//! `carerix-sim listening on http://ADDR` and serves until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
SURFACES (one port serves all of them)
  POST /auth/realms/{tenant}/protocol/openid-connect/token     client_credentials; client_secret_basic or _post
  GET  /auth/realms/{tenant}/.well-known/openid-configuration   discovery
  GET  /auth/realms/{tenant}/protocol/openid-connect/certs      JWKS (RS256)
  POST /graphql/v1/graphql                                      crX / crXPage queries (Bearer)
  *    /webhooks/v1/applications[/{appId}[/webhooks[/{id}[/enable|/disable]]]]   (Bearer)

ADMIN API (JSON, no auth; not part of Carerix)
  GET    /admin/v1/tenants                                  list tenants
  POST   /admin/v1/tenants                                  {name, webhooks_activated?, records?}
  GET    /admin/v1/tenants/{t}                              one tenant
  PUT    /admin/v1/tenants/{t}/webhooks-activated           {activated}
  GET    /admin/v1/clients                                  list clients (no secrets)
  POST   /admin/v1/clients                                  {tenant, client_id?, secret?, scopes?} -> {client_id, secret}
  POST   /admin/v1/clients/{id}/rotate-secret               {secret?} -> {client_id, secret}
  POST   /admin/v1/clients/{id}/revoke                      no new tokens; issued tokens stay valid
  GET    /admin/v1/tenants/{t}/records/{entity}             all records incl. soft-deleted
  POST   /admin/v1/tenants/{t}/records/{entity}             {field: value, ...} -> record; emits :created
  GET    /admin/v1/tenants/{t}/records/{entity}/{id}        one record
  PATCH  /admin/v1/tenants/{t}/records/{entity}/{id}        {field: value, ...}; bumps modificationDate; emits :updated
  DELETE /admin/v1/tenants/{t}/records/{entity}/{id}[?hard=true]   soft delete (deleted: 1) or hard delete
  GET    /admin/v1/tenants/{t}/applications                 webhook applications with owners
  POST   /admin/v1/tenants/{t}/applications                 {owner, name} (owner = a client id)
  DELETE /admin/v1/tenants/{t}/applications/{app}
  POST   /admin/v1/tenants/{t}/applications/{app}/webhooks  {owner, url, filters, customHeaders}
  GET    /admin/v1/tenants/{t}/webhooks                     all webhooks with owners
  PUT    /admin/v1/tenants/{t}/webhooks/{id}/status         {status: enabled|disabled|error}
  DELETE /admin/v1/tenants/{t}/webhooks/{id}
  GET    /admin/v1/faults                                   active faults
  POST   /admin/v1/faults                                   {kind: status, status: 503, count?, path_prefix?}
                                                            {kind: rate_limit, count?, path_prefix?}
                                                            {kind: latency, millis, count?, path_prefix?}
                                                            {kind: expire_tokens}  (invalidates all issued tokens now)
  DELETE /admin/v1/faults                                   clear faults
  GET    /admin/v1/requests                                 request log (seq, time, method, path, tenant, client_id, operation, status)
  GET    /admin/v1/deliveries                               delivery log (job_id, webhook_id, url, attempt, status_code, error, payload)
  DELETE /admin/v1/logs                                     clear both logs
  GET    /admin/v1/switches                                 behaviour switches in force
  PUT    /admin/v1/switches                                 {creator_service_account_ids?, hide_public_key?,
                                                            mask_header_values?, missing_permission?
                                                            (create|read|update|delete), contact_event_prefix?}
                                                            replaces all switches (missing = off)
  GET    /admin/v1/readings                                 readings of the INFERRED data-API points
  PUT    /admin/v1/readings                                 {second_precision?, page_cap?, id_order?: numeric|text,
                                                             id_in_qualifier?, id_in_sort?, wall_clock_order?,
                                                             latency_ms?, hidden_soft_deletes?} or {preset: hostile|default}
  PUT    /admin/v1/tenants/{t}/records/{entity}/{id}/modification-date   {value: 'yyyy-MM-dd HH:mm:ss' | null}

  {entity} is a Carerix type (CREmployee, CRUser, ...), an event prefix (cremployee, crcontact, ...)
  or the operator name (candidates, vacancies, companies, contacts, placements, matches, publications).

NOTES
  Revoking a client or rotating its secret does not invalidate tokens already issued; use the
  expire_tokens fault for that. Rate limit: token bucket per client id (burst = rate), 429 with
  Retry-After: 1; the token endpoint is not limited. Faults apply before normal handling, to API paths only.

EXAMPLE
  carerix-sim --tenant acme --client acme:demo-client:demo-secret --webhooks-activated";

/// An emulator of the public Carerix API (OAuth token endpoint, GraphQL data API, webhooks REST API,
/// signed webhook deliveries) for development and tests.
#[derive(Debug, Parser)]
#[command(name = "carerix-sim", version, after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Seed for the generated records (same seed, same data on the same day).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Generated records per entity per tenant.
    #[arg(long, default_value_t = 200)]
    records: usize,
    /// Tenant (realm) to create; repeatable.
    #[arg(long = "tenant", value_name = "NAME")]
    tenants: Vec<String>,
    /// Client to register as TENANT:ID:SECRET with the default scopes
    /// (urn:cx/cx5Acl:data:manage urn:cx/cx5Wrapper:data:manage urn:cx/webhooks:data:manage); repeatable.
    #[arg(long = "client", value_name = "TENANT:ID:SECRET")]
    clients: Vec<String>,
    /// Activate the webhooks feature for the tenants given with --tenant.
    #[arg(long)]
    webhooks_activated: bool,
    /// Requests per second (and burst) per client id.
    #[arg(long, default_value_t = 10)]
    rate_limit: u32,
    /// Access token lifetime in seconds (expires_in).
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    /// Maximum page size of cr*Page queries.
    #[arg(long, default_value_t = 100)]
    page_cap: usize,
    /// Candidates sharing one modificationDate second.
    #[arg(long, default_value_t = 150)]
    same_second_burst: usize,
    /// RSA key size for token signing and webhook applications.
    #[arg(long, default_value_t = 2048)]
    key_bits: usize,
    /// Also emit <entity>:deleted webhook events (undocumented by Carerix).
    #[arg(long)]
    deleted_events: bool,
    /// Report `_createdBy._id` of applications and webhooks as a service-account UUID, not the client id.
    #[arg(long)]
    creator_service_account_ids: bool,
    /// Leave signatureVerification.publicKey out of webhooks REST answers.
    #[arg(long)]
    hide_public_key: bool,
    /// Answer custom header values as ******** in webhooks REST answers.
    #[arg(long)]
    mask_header_values: bool,
    /// Refuse (403) every webhooks call that needs this permission.
    #[arg(long, value_enum, value_name = "PERMISSION")]
    missing_permission: Option<carerix_sim::Permission>,
    /// Emit contact events with this prefix instead of crcontact (e.g. cruser).
    #[arg(long, value_name = "PREFIX")]
    contact_event_prefix: Option<String>,
    /// Play every alternative reading of the data API at once (see docs/carerix-surface.md).
    #[arg(long)]
    hostile: bool,
    /// Whole-second modificationDate; several updates in one second keep it.
    #[arg(long)]
    reading_second_precision: bool,
    /// Page cap below --page-cap that clients do not know about.
    #[arg(long, value_name = "N")]
    reading_page_cap: Option<usize>,
    /// Sort and compare _id as text ("10" < "9").
    #[arg(long)]
    reading_text_ids: bool,
    /// Refuse _id in qualifiers.
    #[arg(long)]
    reading_refuse_id_qualifier: bool,
    /// Refuse _id as a sort property.
    #[arg(long)]
    reading_refuse_id_sort: bool,
    /// Order and compare modificationDate by its Amsterdam wall-clock text.
    #[arg(long)]
    reading_wall_clock_order: bool,
    /// Milliseconds each GraphQL answer takes.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    reading_latency_ms: u64,
    /// Soft-deleted matches (no `deleted` field) stay visible with norestrict only.
    #[arg(long)]
    reading_hidden_soft_deletes: bool,
}

impl Args {
    fn readings(&self) -> carerix_sim::Readings {
        let mut r =
            if self.hostile { carerix_sim::Readings::hostile() } else { carerix_sim::Readings::default() };
        r.second_precision |= self.reading_second_precision;
        if self.reading_page_cap.is_some() {
            r.page_cap = self.reading_page_cap;
        }
        if self.reading_text_ids {
            r.id_order = carerix_sim::IdOrder::Text;
        }
        r.id_in_qualifier &= !self.reading_refuse_id_qualifier;
        r.id_in_sort &= !self.reading_refuse_id_sort;
        r.wall_clock_order |= self.reading_wall_clock_order;
        r.latency_ms = r.latency_ms.max(self.reading_latency_ms);
        r.hidden_soft_deletes |= self.reading_hidden_soft_deletes;
        r
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = carerix_sim::Config {
        listen: args.listen,
        seed: args.seed,
        records_per_entity: args.records,
        rate_limit_per_sec: args.rate_limit,
        token_ttl: Duration::from_secs(args.token_ttl),
        page_cap: args.page_cap,
        same_second_burst: args.same_second_burst,
        key_bits: args.key_bits,
        emit_deleted_events: args.deleted_events,
        switches: carerix_sim::Switches {
            creator_service_account_ids: args.creator_service_account_ids,
            hide_public_key: args.hide_public_key,
            mask_header_values: args.mask_header_values,
            missing_permission: args.missing_permission,
            contact_event_prefix: args.contact_event_prefix.clone(),
        },
        readings: args.readings(),
        ..carerix_sim::Config::default()
    };
    for t in &args.tenants {
        config
            .tenants
            .push(carerix_sim::TenantConfig { name: t.clone(), webhooks_activated: args.webhooks_activated });
    }
    for c in &args.clients {
        let mut parts = c.splitn(3, ':');
        let (Some(tenant), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("--client must be TENANT:ID:SECRET, got '{c}'");
        };
        if !config.tenants.iter().any(|t| t.name == tenant) {
            config.tenants.push(carerix_sim::TenantConfig {
                name: tenant.into(),
                webhooks_activated: args.webhooks_activated,
            });
        }
        config.clients.push(carerix_sim::ClientConfig {
            tenant: tenant.into(),
            client_id: id.into(),
            secret: secret.into(),
        });
    }
    let handle = carerix_sim::spawn(config).await?;
    let base = handle.base_url();
    println!("carerix-sim listening on {}", base.as_str().trim_end_matches('/'));
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
