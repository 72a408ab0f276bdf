//! Prometheus metrics, served as text at `/metrics`.
//!
//! Names are prefixed `carerix_operator_`. Labels never carry secrets; per-connection series use
//! `namespace` and `name`. The list with meanings is in docs/options.md.

use std::{
    sync::Arc,
    time::{Duration, Instant},
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

use crate::{api::CarerixConnection, carerix};

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
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
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
        // A condition that went away (Reconciling, Stalled) must not keep its last value.
        for type_ in CONDITION_TYPES.iter().filter(|t| !conditions.iter().any(|c| c.type_ == **t)) {
            for status in ["True", "False", "Unknown"] {
                self.conditions.remove(&ConditionLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    r#type: (*type_).to_string(),
                    status: status.to_string(),
                });
            }
        }
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
        }
    }

    /// Removes the series of a deleted connection.
    pub fn forget_connection(&self, namespace: &str, name: &str) {
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

    /// Sets the sync lag of an entity.
    pub fn sync_lag(&self, namespace: &str, name: &str, entity: &str, lag: Duration) {
        self.sync_lag
            .get_or_create(&EntityLabels {
                namespace: namespace.into(),
                name: name.into(),
                entity: entity.into(),
            })
            .set(lag.as_secs_f64());
    }

    /// Counts a delivery by its result (`accepted`, `duplicate`, `bad_signature`, ...).
    pub fn delivery(&self, result: &str) {
        self.deliveries.get_or_create(&ResultLabels { result: result.to_string() }).inc();
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
    fn a_condition_that_goes_away_leaves_no_gauge_behind() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let m = Metrics::new();
        let mut obj = CarerixConnection::new(
            "acme",
            serde_json::from_value(serde_json::json!({
            "tenant": "acme", "credentialsSecretRef": {"name": "s"}}))
            .unwrap(),
        );
        obj.metadata.namespace = Some("team".into());
        let cond = |type_: &str, status: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
        };
        m.set_conditions(&obj, &[cond("Ready", "False"), cond("Stalled", "True")]);
        assert!(m.render().contains("type=\"Stalled\""));
        m.set_conditions(&obj, &[cond("Ready", "True")]);
        let text = m.render();
        assert!(
            !text.contains("type=\"Stalled\""),
            "a Stalled gauge stayed after Stalled went away:\n{text}"
        );
        assert!(text.contains("type=\"Ready\""));
    }
}
