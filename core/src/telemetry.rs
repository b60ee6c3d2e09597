//! The agent's own metrics, in one registry exposed as OpenMetrics text.
//!
//! Metric families are created on first use, so a component asks for a
//! counter by name and labels and gets a cheap handle to keep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// Label pairs of one metric series.
pub type MetricLabels = Vec<(String, String)>;

type HistogramFamily = Family<MetricLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Default)]
struct Families {
    counters: HashMap<String, Family<MetricLabels, Counter>>,
    gauges: HashMap<String, Family<MetricLabels, Gauge>>,
    histograms: HashMap<String, HistogramFamily>,
}

struct Inner {
    registry: Mutex<Registry>,
    families: Mutex<Families>,
    ready: AtomicBool,
}

/// Shared handle to the agent's metrics registry and health state.
#[derive(Clone)]
pub struct Telemetry(Arc<Inner>);

impl Default for Telemetry {
    fn default() -> Self {
        Self(Arc::new(Inner {
            registry: Mutex::new(Registry::with_prefix("agent")),
            families: Mutex::new(Families::default()),
            ready: AtomicBool::new(false),
        }))
    }
}

fn owned(labels: &[(&str, &str)]) -> MetricLabels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Telemetry {
    /// A counter `agent_<name>_total` with `labels`; `help` is used on first creation.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let mut f = self.0.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = f.counters.entry(name.to_owned()).or_insert_with(|| {
            let family = Family::default();
            self.register(name, help, family.clone());
            family
        });
        family.get_or_create_owned(&owned(labels))
    }

    /// A gauge `agent_<name>` with `labels`.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let mut f = self.0.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = f.gauges.entry(name.to_owned()).or_insert_with(|| {
            let family = Family::default();
            self.register(name, help, family.clone());
            family
        });
        family.get_or_create_owned(&owned(labels))
    }

    /// A latency histogram `agent_<name>` (seconds) with `labels`.
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Histogram {
        let mut f = self.0.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = f.histograms.entry(name.to_owned()).or_insert_with(|| {
            let family: HistogramFamily = Family::new_with_constructor(latency_histogram);
            self.register(name, help, family.clone());
            family
        });
        family.get_or_create_owned(&owned(labels))
    }

    fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.0
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// All metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.0.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Marks the agent ready (every pipeline started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::SeqCst);
    }

    /// True once every pipeline has started.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// A view that adds the labels of one component to every metric.
    pub fn scoped(&self, labels: &[(&str, &str)]) -> ComponentTelemetry {
        ComponentTelemetry {
            telemetry: self.clone(),
            labels: owned(labels),
        }
    }
}

/// Metrics of one component: every metric carries the component's labels.
#[derive(Clone)]
pub struct ComponentTelemetry {
    telemetry: Telemetry,
    labels: MetricLabels,
}

impl ComponentTelemetry {
    fn with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        self.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
            .collect()
    }

    /// A counter with this component's labels plus `extra`.
    pub fn counter(&self, name: &str, help: &str, extra: &[(&str, &str)]) -> Counter {
        self.telemetry.counter(name, help, &self.with(extra))
    }

    /// A gauge with this component's labels plus `extra`.
    pub fn gauge(&self, name: &str, help: &str, extra: &[(&str, &str)]) -> Gauge {
        self.telemetry.gauge(name, help, &self.with(extra))
    }

    /// A latency histogram with this component's labels plus `extra`.
    pub fn histogram(&self, name: &str, help: &str, extra: &[(&str, &str)]) -> Histogram {
        self.telemetry.histogram(name, help, &self.with(extra))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_by_name_and_labels_and_encoded() {
        let t = Telemetry::default();
        let c = t.scoped(&[("exporter", "file")]);
        c.counter("exporter_dropped_batches", "Batches dropped.", &[])
            .inc();
        c.counter("exporter_dropped_batches", "Batches dropped.", &[])
            .inc_by(2);
        t.gauge("queue_depth", "Depth.", &[("exporter", "x")])
            .set(4);
        let text = t.encode();
        assert!(
            text.contains("agent_exporter_dropped_batches_total{exporter=\"file\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("agent_queue_depth{exporter=\"x\"} 4"),
            "{text}"
        );
    }
}
