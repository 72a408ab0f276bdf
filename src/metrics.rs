//! Prometheus metrics, served as text at `/metrics`.
//!
//! Names are prefixed `carerix_operator_`. Labels never carry secrets; per-connection series use
//! `namespace` and `name`. The list with meanings is in docs/options.md.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    api::{CarerixConnection, SyncStatus},
    carerix,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    name: String,
    r#type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntityLabels {
    namespace: String,
    name: String,
    entity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    namespace: String,
    name: String,
    r#type: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    namespace: String,
    name: String,
}

/// Every condition type the operator writes.
const CONDITION_TYPES: [&str; 6] =
    ["Ready", "Reconciling", "Stalled", "CredentialsValid", "WebhooksReady", "DataSynced"];

/// All metrics of the operator.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_duration: Histogram,
    reconcile_errors: Family<ErrorLabels, Counter>,
    conditions: Family<ConditionLabels, Gauge>,
    carerix_requests: Family<RequestLabels, Counter>,
    carerix_request_duration: Histogram,
    rate_limited_waits: Family<TenantLabels, Counter>,
    rate_limited_seconds: Family<TenantLabels, Counter<f64>>,
    sync_records: Family<EntityLabels, Counter>,
    sync_lag: Family<EntityLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    deliveries: Family<ResultLabels, Counter>,
    leader: Gauge,
    shard_member: Family<ShardLabels, Gauge>,
    shard_members: Family<ShardLabels, Gauge>,
    shard_connections: Family<ShardLabels, Gauge>,
    shard_pending: Family<ShardLabels, Gauge>,
    last_success: Family<ConnectionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    sync_initial: Family<EntityLabels, Gauge>,
    sync_entity_records: Family<EntityLabels, Gauge>,
    sync_entity_total: Family<EntityLabels, Gauge>,
    condition_reasons: Family<ReasonLabels, Gauge>,
    /// The current reason of each (namespace, name, type), to remove the old series on change.
    current_reasons: Mutex<HashMap<(String, String, String), String>>,
    /// When each entity's last successful sync run finished; `sync_lag_seconds` is computed
    /// from it at every scrape, so it grows while runs fail.
    sync_finished: Mutex<HashMap<EntityLabels, SystemTime>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("carerix_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconcile passes run", reconciles.clone());
        let reconcile_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed, by reason",
            reconcile_errors.clone(),
        );
        let conditions = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "condition",
            "1 for the current status of each condition of each connection",
            conditions.clone(),
        );
        let carerix_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "carerix_requests",
            "Requests to Carerix by operation and HTTP status (error when none)",
            carerix_requests.clone(),
        );
        let carerix_request_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "carerix_request_duration_seconds",
            "Duration of requests to Carerix",
            carerix_request_duration.clone(),
        );
        let rate_limited_waits = Family::<TenantLabels, Counter>::default();
        registry.register(
            "rate_limited_waits",
            "Requests that waited for the per-tenant rate limit",
            rate_limited_waits.clone(),
        );
        let rate_limited_seconds = Family::<TenantLabels, Counter<f64>>::default();
        registry.register(
            "rate_limited_wait_seconds",
            "Time spent waiting for the per-tenant rate limit",
            rate_limited_seconds.clone(),
        );
        let sync_records = Family::<EntityLabels, Counter>::default();
        registry.register("sync_records", "Records written to the sink", sync_records.clone());
        let sync_lag = Family::<EntityLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "sync_lag_seconds",
            "Seconds since the last successful sync run of an entity finished",
            sync_lag.clone(),
        );
        let deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            "receiver_deliveries",
            "Webhook deliveries received, by result",
            deliveries.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controllers (holds the Lease, or leader election is off)",
            leader.clone(),
        );
        let shard_member = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "shard_member",
            "Sharded mode: 1 while this replica holds its membership Lease in the shard group",
            shard_member.clone(),
        );
        let shard_members = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "shard_members",
            "Sharded mode: live members of the shard group, as this replica sees them",
            shard_members.clone(),
        );
        let shard_connections = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "shard_connections",
            "Sharded mode: connections this replica works on",
            shard_connections.clone(),
        );
        let shard_pending = Family::<ShardLabels, Gauge>::default();
        registry.register(
            "shard_pending_connections",
            "Sharded mode: connections this replica owns but waits to start (hand-over in progress)",
            shard_pending.clone(),
        );
        let last_success = Family::<ConnectionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile pass of a connection that ended without error",
            last_success.clone(),
        );
        let sync_initial = Family::<EntityLabels, Gauge>::default();
        registry.register(
            "sync_initial",
            "1 while the initial full pass of an entity runs, 0 once it is incremental",
            sync_initial.clone(),
        );
        let sync_entity_records = Family::<EntityLabels, Gauge>::default();
        registry.register(
            "sync_entity_records",
            "Records of an entity in the sink, as last written to the status",
            sync_entity_records.clone(),
        );
        let sync_entity_total = Family::<EntityLabels, Gauge>::default();
        registry.register(
            "sync_entity_total",
            "During the initial pass: the records Carerix reports for the entity",
            sync_entity_total.clone(),
        );
        let condition_reasons = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "condition_reason",
            "1 for the current reason of each condition of each connection",
            condition_reasons.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            conditions,
            carerix_requests,
            carerix_request_duration,
            rate_limited_waits,
            rate_limited_seconds,
            sync_records,
            sync_lag,
            deliveries,
            leader,
            shard_member,
            shard_members,
            shard_connections,
            shard_pending,
            last_success,
            sync_initial,
            sync_entity_records,
            sync_entity_total,
            condition_reasons,
            current_reasons: Mutex::default(),
            sync_finished: Mutex::default(),
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let now = SystemTime::now();
        for (labels, finished) in self.sync_finished.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let lag = now.duration_since(*finished).unwrap_or_default();
            self.sync_lag.get_or_create(labels).set(lag.as_secs_f64());
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a reconcile pass and observes its duration when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { metrics: self, start: Instant::now() }
    }

    /// Counts a failed pass.
    pub fn reconcile_failed(&self, reason: &str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { reason: reason.to_string() }).inc();
    }

    /// Sets the condition gauges of a connection; those of conditions no longer present go away.
    pub fn set_conditions(&self, obj: &CarerixConnection, conditions: &[Condition]) {
        let namespace = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        for c in conditions {
            for status in ["True", "False", "Unknown"] {
                let labels = ConditionLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    r#type: c.type_.clone(),
                    status: status.to_string(),
                };
                self.conditions.get_or_create(&labels).set(i64::from(c.status == status));
            }
            self.set_reason(&namespace, &name, &c.type_, &c.reason);
        }
        // Reconciling and Stalled are present only while True: a condition that left the list
        // must not keep its last series (a Stalled alert would never resolve).
        for type_ in CONDITION_TYPES.iter().filter(|t| !conditions.iter().any(|c| c.type_ == **t)) {
            for status in ["True", "False", "Unknown"] {
                self.conditions.remove(&ConditionLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    r#type: (*type_).to_string(),
                    status: status.to_string(),
                });
            }
            let key = (namespace.clone(), name.clone(), (*type_).to_string());
            if let Some(old) =
                self.current_reasons.lock().unwrap_or_else(PoisonError::into_inner).remove(&key)
            {
                self.condition_reasons.remove(&ReasonLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    r#type: (*type_).to_string(),
                    reason: old,
                });
            }
        }
    }

    fn set_reason(&self, namespace: &str, name: &str, type_: &str, reason: &str) {
        let key = (namespace.to_string(), name.to_string(), type_.to_string());
        let mut current = self.current_reasons.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = |reason: &str| ReasonLabels {
            namespace: namespace.into(),
            name: name.into(),
            r#type: type_.into(),
            reason: reason.into(),
        };
        if let Some(old) = current.get(&key).filter(|old| old.as_str() != reason) {
            self.condition_reasons.remove(&labels(old));
        }
        self.condition_reasons.get_or_create(&labels(reason)).set(1);
        current.insert(key, reason.to_string());
    }

    /// Removes the series of a deleted connection.
    pub fn forget_connection(&self, namespace: &str, name: &str) {
        self.last_success.remove(&ConnectionLabels { namespace: namespace.into(), name: name.into() });
        {
            let mut current = self.current_reasons.lock().unwrap_or_else(PoisonError::into_inner);
            current.retain(|(ns, n, type_), reason| {
                let keep = ns != namespace || n != name;
                if !keep {
                    self.condition_reasons.remove(&ReasonLabels {
                        namespace: ns.clone(),
                        name: n.clone(),
                        r#type: type_.clone(),
                        reason: reason.clone(),
                    });
                }
                keep
            });
        }
        for entity in crate::carerix::Entity::ALL {
            let labels =
                EntityLabels { namespace: namespace.into(), name: name.into(), entity: entity.name().into() };
            self.sync_initial.remove(&labels);
            self.sync_entity_records.remove(&labels);
            self.sync_entity_total.remove(&labels);
            self.sync_lag.remove(&labels);
            self.sync_finished.lock().unwrap_or_else(PoisonError::into_inner).remove(&labels);
        }
        for type_ in CONDITION_TYPES {
            for status in ["True", "False", "Unknown"] {
                self.conditions.remove(&ConditionLabels {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    r#type: type_.to_string(),
                    status: status.to_string(),
                });
            }
        }
    }

    /// Counts records written for an entity.
    pub fn sync_records(&self, namespace: &str, name: &str, entity: &str, n: u64) {
        self.sync_records
            .get_or_create(&EntityLabels {
                namespace: namespace.into(),
                name: name.into(),
                entity: entity.into(),
            })
            .inc_by(n);
    }

    /// Sets the sync lag of an entity: its last successful run finished `lag` ago. The gauge
    /// keeps growing from there at every scrape until the next successful run.
    pub fn sync_lag(&self, namespace: &str, name: &str, entity: &str, lag: Duration) {
        let labels = EntityLabels { namespace: namespace.into(), name: name.into(), entity: entity.into() };
        let finished = SystemTime::now().checked_sub(lag).unwrap_or(SystemTime::UNIX_EPOCH);
        self.sync_lag.get_or_create(&labels).set(lag.as_secs_f64());
        self.sync_finished.lock().unwrap_or_else(PoisonError::into_inner).insert(labels, finished);
    }

    /// Counts a delivery by its result (`accepted`, `duplicate`, `bad_signature`, ...).
    pub fn delivery(&self, result: &str) {
        self.deliveries.get_or_create(&ResultLabels { result: result.to_string() }).inc();
    }

    /// Sets whether this replica runs the controllers.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Sets the shard gauges of this replica in `group`: whether it is a member, the live
    /// members it sees, the connections it works on and those it owns but waits to start.
    pub fn set_shard(&self, group: &str, member: bool, members: usize, working: usize, pending: usize) {
        let labels = ShardLabels { group: group.to_string() };
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.shard_member.get_or_create(&labels).set(i64::from(member));
        self.shard_members.get_or_create(&labels).set(n(members));
        self.shard_connections.get_or_create(&labels).set(n(working));
        self.shard_pending.get_or_create(&labels).set(n(pending));
    }

    /// Records that a reconcile pass of a connection ended without error, now.
    pub fn reconcile_succeeded(&self, namespace: &str, name: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success
            .get_or_create(&ConnectionLabels { namespace: namespace.into(), name: name.into() })
            .set(now);
    }

    /// Sets the per-entity sync gauges (phase, records, Carerix's total) from a connection's
    /// sync status as it is written.
    pub fn set_sync_status(&self, namespace: &str, name: &str, sync: Option<&SyncStatus>) {
        for e in sync.map(|s| s.entities.as_slice()).unwrap_or_default() {
            let labels =
                EntityLabels { namespace: namespace.into(), name: name.into(), entity: e.entity.clone() };
            let initial = e.phase == "Initial";
            self.sync_initial.get_or_create(&labels).set(i64::from(initial));
            self.sync_entity_records.get_or_create(&labels).set(e.records);
            match e.total.filter(|_| initial) {
                Some(total) => {
                    self.sync_entity_total.get_or_create(&labels).set(total);
                }
                None => {
                    self.sync_entity_total.remove(&labels);
                }
            }
        }
    }

    /// An observer for the Carerix client that feeds the request metrics.
    pub fn carerix_observer(self: &Arc<Self>) -> Arc<dyn carerix::Observer> {
        Arc::new(CarerixObserver(self.clone()))
    }
}

/// Observes a reconcile's duration on drop.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.observe(self.start.elapsed().as_secs_f64());
    }
}

struct CarerixObserver(Arc<Metrics>);

impl carerix::Observer for CarerixObserver {
    fn on_request(&self, operation: &str, status: Option<u16>, duration: Duration) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.0
            .carerix_requests
            .get_or_create(&RequestLabels { operation: operation.to_string(), status })
            .inc();
        self.0.carerix_request_duration.observe(duration.as_secs_f64());
    }

    fn on_rate_limit_wait(&self, tenant: &str, waited: Duration) {
        if waited.is_zero() {
            return;
        }
        let labels = TenantLabels { tenant: tenant.to_string() };
        self.0.rate_limited_waits.get_or_create(&labels).inc();
        self.0.rate_limited_seconds.get_or_create(&labels).inc_by(waited.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_lists_every_metric_family() {
        let m = Metrics::new();
        m.reconcile_failed("KubernetesApi");
        m.delivery("accepted");
        {
            let _t = m.reconcile_timer();
        }
        let text = m.render();
        for name in [
            "carerix_operator_reconciles_total",
            "carerix_operator_reconcile_duration_seconds",
            "carerix_operator_reconcile_errors_total{reason=\"KubernetesApi\"} 1",
            "carerix_operator_receiver_deliveries_total{result=\"accepted\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn progress_gauges_follow_the_sync_status_and_the_total_goes_once_incremental() {
        use crate::api::EntitySyncStatus;
        let m = Metrics::new();
        let mut status = SyncStatus {
            entities: vec![EntitySyncStatus {
                entity: "candidates".into(),
                phase: "Initial".into(),
                records: 400,
                total: Some(1000),
                ..EntitySyncStatus::default()
            }],
            ..SyncStatus::default()
        };
        m.set_sync_status("ns", "acme", Some(&status));
        let text = m.render();
        let labels = r#"{namespace="ns",name="acme",entity="candidates"}"#;
        assert!(text.contains(&format!("carerix_operator_sync_initial{labels} 1")), "{text}");
        assert!(text.contains(&format!("carerix_operator_sync_entity_records{labels} 400")), "{text}");
        assert!(text.contains(&format!("carerix_operator_sync_entity_total{labels} 1000")), "{text}");

        status.entities[0].phase = "Incremental".into();
        status.entities[0].records = 1000;
        m.set_sync_status("ns", "acme", Some(&status));
        let text = m.render();
        assert!(text.contains(&format!("carerix_operator_sync_initial{labels} 0")), "{text}");
        assert!(!text.contains("carerix_operator_sync_entity_total{"), "{text}");

        m.forget_connection("ns", "acme");
        assert!(!m.render().contains("carerix_operator_sync_entity_records{"));
    }

    #[test]
    fn the_leader_gauge_and_the_last_success_time_are_exported() {
        let m = Metrics::new();
        m.set_leader(true);
        m.reconcile_succeeded("ns", "acme");
        let text = m.render();
        assert!(text.contains("carerix_operator_leader 1"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with(r#"carerix_operator_last_successful_reconcile_timestamp_seconds{namespace="ns",name="acme"}"#))
            .unwrap_or_else(|| panic!("no last success series in:\n{text}"));
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number");
        assert!(value > 1.7e9, "{line}");
        m.set_leader(false);
        assert!(m.render().contains("carerix_operator_leader 0"));
    }

    #[test]
    fn the_shard_gauges_appear_only_in_sharded_mode() {
        let m = Metrics::new();
        assert!(!m.render().contains("carerix_operator_shard_member{"), "no series without sharding");
        m.set_shard("carerix-operator", true, 3, 97, 4);
        let text = m.render();
        for line in [
            r#"carerix_operator_shard_member{group="carerix-operator"} 1"#,
            r#"carerix_operator_shard_members{group="carerix-operator"} 3"#,
            r#"carerix_operator_shard_connections{group="carerix-operator"} 97"#,
            r#"carerix_operator_shard_pending_connections{group="carerix-operator"} 4"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
        }
    }

    #[test]
    fn a_condition_reason_series_is_replaced_when_the_reason_changes() {
        let m = Metrics::new();
        let mut obj = CarerixConnection::new(
            "acme",
            serde_json::from_value(serde_json::json!({
                "tenant": "acme",
                "credentialsSecretRef": {"name": "creds"}
            }))
            .expect("a valid spec"),
        );
        obj.metadata.namespace = Some("ns".into());
        let cond = |reason: &str| Condition {
            type_: "Stalled".into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        m.set_conditions(&obj, &[cond("InvalidCredentials")]);
        assert!(m.render().contains(r#"reason="InvalidCredentials"} 1"#));
        m.set_conditions(&obj, &[cond("MissingScopes")]);
        let text = m.render();
        assert!(text.contains(r#"type="Stalled",reason="MissingScopes"} 1"#), "{text}");
        assert!(!text.contains("InvalidCredentials"), "{text}");
        // Stalled leaves the list once resolved: its series go with it.
        m.set_conditions(&obj, &[]);
        let text = m.render();
        assert!(!text.contains(r#"type="Stalled""#), "{text}");
        m.set_conditions(&obj, &[cond("MissingScopes")]);
        m.forget_connection("ns", "acme");
        assert!(!m.render().contains("MissingScopes"));
    }

    #[test]
    fn the_sync_lag_grows_after_a_run_until_the_next_one() {
        let m = Metrics::new();
        m.sync_lag("ns", "acme", "candidates", Duration::from_secs(90));
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("carerix_operator_sync_lag_seconds{"))
            .unwrap_or_else(|| panic!("no lag in:\n{text}"));
        let lag: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number");
        assert!((90.0..120.0).contains(&lag), "{line}");
    }
}
