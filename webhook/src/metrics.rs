//! Prometheus metrics: admission requests by outcome, their latency, and TLS reloads.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::review::Outcome;

/// Label set of the requests counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Label set of the TLS reload counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric the webhook exports, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    latency: Histogram,
    tls_reloads: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("s3mount_webhook");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests by outcome",
            requests.clone(),
        );
        // 50 µs .. ~1.6 s
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            latency.clone(),
        );
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_reloads",
            "Reloads of the serving certificate by result",
            tls_reloads.clone(),
        );
        for outcome in [
            Outcome::Patched,
            Outcome::Skipped,
            Outcome::Denied,
            Outcome::Invalid,
        ] {
            drop(requests.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            }));
        }
        for result in ["ok", "error"] {
            drop(tls_reloads.get_or_create(&ResultLabel { result }));
        }
        Metrics {
            registry,
            requests,
            latency,
            tls_reloads,
        }
    }

    pub fn observe(&self, outcome: Outcome, took: Duration) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_latency_and_reloads_are_exported() {
        let m = Metrics::new();
        m.observe(Outcome::Patched, Duration::from_millis(1));
        m.observe(Outcome::Denied, Duration::from_millis(2));
        m.tls_reload(true);
        let text = m.encode();
        assert!(
            text.contains("s3mount_webhook_admission_requests_total{outcome=\"patched\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("s3mount_webhook_admission_requests_total{outcome=\"invalid\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("s3mount_webhook_admission_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("s3mount_webhook_tls_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
    }
}
