//! Prometheus metrics (`GET /metrics`), with the official `prometheus-client` crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    model: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    model: String,
    detector: String,
}

/// Handles on one model's series for the common answer (status 200, decision `allow`), taken
/// once so that observing one allocates no labels and searches no family.
#[derive(Clone)]
pub struct ModelMetrics {
    requests_ok: Counter,
    latency: Histogram,
    allowed: Counter,
    queries: Counter,
}

impl ModelMetrics {
    /// Records one request answered with status 200 and decision `allow`: the same series as
    /// `Metrics::observe_request(model, 200, "allow", seconds, samples)`.
    pub fn observe_allowed(&self, seconds: f64, samples: u64) {
        self.requests_ok.inc();
        self.latency.observe(seconds);
        self.allowed.inc();
        self.queries.inc_by(samples);
    }
}

/// The audit writer's health, for alerting on a failing audit store: handles the writer
/// updates ([`crate::audit::WriterOptions::health`]) on series of the gateway's registry.
#[derive(Clone, Debug, Default)]
pub struct AuditHealth {
    /// `mamori_audit_write_failures_total`: store writes that failed (each attempt).
    pub write_failures: Counter,
    /// `mamori_audit_spilled_events_total`: events written to the spill file instead.
    pub spilled_events: Counter,
    /// `mamori_audit_replayed_events_total`: spilled events later written to the store.
    pub replayed_events: Counter,
    /// `mamori_audit_spill_pending`: 1 while the spill file holds events not yet in the store.
    pub spill_pending: Gauge,
    /// `mamori_audit_chain_sealed`: records this gateway has sealed into its audit chain (the
    /// next record's number). Scraped by Prometheus, it is a witness outside the gateway host
    /// of how long the chain was: `mamori audit verify --expect WRITER:N` checks that no tail
    /// was deleted.
    pub chain_sealed: Gauge,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    queries: Family<ModelLabel, Counter>,
    latency: Family<ModelLabel, Histogram>,
    decisions: Family<DecisionLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    resident_subjects: Family<ModelLabel, Gauge>,
    state_bytes: Family<ModelLabel, Gauge>,
    audit: AuditHealth,
    limit_store_errors: Counter,
    webhook: crate::alert_webhook::WebhookHealth,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mamori");
        let requests = Family::<RequestLabels, Counter>::default();
        let queries = Family::<ModelLabel, Counter>::default();
        let latency = Family::<ModelLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        let decisions = Family::<DecisionLabels, Counter>::default();
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "requests",
            "Inference requests by model and HTTP status",
            requests.clone(),
        );
        registry.register(
            "queries",
            "Samples answered (one query = one sample)",
            queries.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time spent in the protection chain",
            latency.clone(),
        );
        registry.register(
            "decisions",
            "Chain decisions (allow, alert, degrade, throttle, block, or error kind)",
            decisions.clone(),
        );
        registry.register("alerts", "Detector alarms by detector", alerts.clone());
        let resident_subjects = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "resident_subjects",
            "Subjects (clients, groups, networks) whose detector states are in memory",
            resident_subjects.clone(),
        );
        let state_bytes = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "detector_state_bytes",
            "Heap bytes of the detector states in memory (as of each subject's last measure)",
            state_bytes.clone(),
        );
        let audit = AuditHealth::default();
        registry.register(
            "audit_write_failures",
            "Audit store writes that failed (each attempt; the batch is retried or spilled)",
            audit.write_failures.clone(),
        );
        registry.register(
            "audit_spilled_events",
            "Audit events written to the local spill file while the store refused them",
            audit.spilled_events.clone(),
        );
        registry.register(
            "audit_replayed_events",
            "Spilled audit events later written to the store",
            audit.replayed_events.clone(),
        );
        registry.register(
            "audit_spill_pending",
            "1 while the spill file holds audit events not yet in the store",
            audit.spill_pending.clone(),
        );
        registry.register(
            "audit_chain_sealed",
            "Audit records this gateway has sealed into its tamper-evident chain",
            audit.chain_sealed.clone(),
        );
        let limit_store_errors = Counter::default();
        registry.register(
            "limit_store_errors",
            "Rate-limit checks the shared store (Redis) did not decide (an error, or within a second of one); each used this replica's own buckets",
            limit_store_errors.clone(),
        );
        let webhook = crate::alert_webhook::WebhookHealth::default();
        registry.register(
            "alert_webhook_delivered",
            "Alerts the webhook endpoint accepted",
            webhook.delivered.clone(),
        );
        registry.register(
            "alert_webhook_failures",
            "Failed alert webhook delivery attempts (each retry counts)",
            webhook.failures.clone(),
        );
        registry.register(
            "alert_webhook_dead",
            "Alerts the webhook endpoint refused for good (kept in the dead-letter file)",
            webhook.dead.clone(),
        );
        registry.register(
            "alert_webhook_pending",
            "Alerts waiting for webhook delivery",
            webhook.pending.clone(),
        );
        Self {
            registry,
            requests,
            queries,
            latency,
            decisions,
            alerts,
            resident_subjects,
            state_bytes,
            audit,
            limit_store_errors,
            webhook,
        }
    }

    /// Sets `model`'s resident subjects and their detector states' heap bytes.
    pub fn set_resident(&self, model: &str, subjects: usize, bytes: u64) {
        let m = ModelLabel {
            model: model.to_string(),
        };
        self.resident_subjects
            .get_or_create(&m)
            .set(subjects.min(i64::MAX as usize) as i64);
        self.state_bytes
            .get_or_create(&m)
            .set(bytes.min(i64::MAX as u64) as i64);
    }

    /// The alert webhook's series (handles to give the dispatcher).
    pub fn webhook_health(&self) -> crate::alert_webhook::WebhookHealth {
        self.webhook.clone()
    }

    /// `mamori_limit_store_errors_total`: the handle a shared limiter counts its failures in.
    pub fn limit_store_errors(&self) -> Counter {
        self.limit_store_errors.clone()
    }

    /// The audit writer's health series (handles to give the writer).
    pub fn audit_health(&self) -> AuditHealth {
        self.audit.clone()
    }

    /// Records one finished request.
    pub fn observe_request(
        &self,
        model: &str,
        status: u16,
        decision: &str,
        seconds: f64,
        samples: u64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                model: model.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .observe(seconds);
        self.decisions
            .get_or_create(&DecisionLabels {
                model: model.to_string(),
                decision: decision.to_string(),
            })
            .inc();
        if status == 200 {
            self.queries
                .get_or_create(&ModelLabel {
                    model: model.to_string(),
                })
                .inc_by(samples);
        }
    }

    /// Handles on `model`'s series for [`ModelMetrics::observe_allowed`] (creates them).
    pub fn model(&self, model: &str) -> ModelMetrics {
        let m = ModelLabel {
            model: model.to_string(),
        };
        ModelMetrics {
            requests_ok: self
                .requests
                .get_or_create(&RequestLabels {
                    model: model.to_string(),
                    status: "200".into(),
                })
                .clone(),
            latency: self.latency.get_or_create(&m).clone(),
            allowed: self
                .decisions
                .get_or_create(&DecisionLabels {
                    model: model.to_string(),
                    decision: "allow".into(),
                })
                .clone(),
            queries: self.queries.get_or_create(&m).clone(),
        }
    }

    /// Records one alarm.
    pub fn observe_alert(&self, model: &str, detector: &str) {
        self.alerts
            .get_or_create(&AlertLabels {
                model: model.to_string(),
                detector: detector.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_metrics() {
        let m = Metrics::new();
        m.observe_request("m", 200, "allow", 0.001, 4);
        m.observe_alert("m", "volume");
        let t = m.encode();
        assert!(
            t.contains("mamori_requests_total{model=\"m\",status=\"200\"} 1"),
            "{t}"
        );
        assert!(t.contains("mamori_queries_total{model=\"m\"} 4"));
        assert!(t.contains("mamori_alerts_total{model=\"m\",detector=\"volume\"} 1"));
        assert!(t.contains("mamori_request_duration_seconds_bucket"));
    }

    #[test]
    fn cached_handles_feed_the_same_series() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let h = b.model("m");
        for (secs, n) in [(0.001, 4), (0.02, 1)] {
            a.observe_request("m", 200, "allow", secs, n);
            h.observe_allowed(secs, n);
        }
        assert_eq!(a.encode(), b.encode());
    }
}
