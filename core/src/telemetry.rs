//! The agent's own metrics, in one registry exposed in the Prometheus text
//! format, plus its health state.
//!
//! Metric families are created on first use, so a component asks for a
//! counter by name and labels and gets a cheap handle to keep. Label names
//! of one family must always be the same.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::core::Collector;

use crate::component::Kind;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub use prometheus::proto::{MetricFamily, MetricType};
pub use prometheus::{Histogram, IntCounter as Counter, IntGauge as Gauge};

/// The label naming a processor's pipeline in its metrics.
pub const PIPELINE_LABEL: &str = "pipeline";

/// Label pairs of one metric series.
pub type MetricLabels = Vec<(String, String)>;

enum Family {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

struct Inner {
    registry: Registry,
    families: Mutex<HashMap<String, Family>>,
    ready: AtomicBool,
    failures: Mutex<Vec<ComponentFailure>>,
}

/// A component whose task ended while the agent ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentFailure {
    /// `pipeline` or `exporter`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Why, as far as known (a panic's message).
    pub reason: String,
}

/// Shared handle to the agent's metrics registry and health state.
#[derive(Clone)]
pub struct Telemetry(Arc<Inner>);

impl Default for Telemetry {
    fn default() -> Self {
        Self(Arc::new(Inner {
            registry: Registry::new(),
            families: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
        }))
    }
}

/// The `process_*` metrics, with `process_cpu_seconds_total` to the
/// microsecond: prometheus' collector counts whole seconds, so a young or
/// quiet agent reads 0 and a busy one lags by up to a second.
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        let Some(seconds) = cpu_seconds() else {
            return families;
        };
        for family in &mut families {
            if family.name() == "process_cpu_seconds_total" {
                for metric in family.mut_metric() {
                    let mut counter = prometheus::proto::Counter::default();
                    counter.set_value(seconds);
                    metric.set_counter(counter);
                }
            }
        }
        families
    }
}

/// User and system CPU time of this process (every thread, finished ones
/// included), in seconds.
fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one struct rusage into `usage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialized by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

fn names<'a>(labels: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    labels.iter().map(|(k, _)| *k).collect()
}

fn values<'a>(labels: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    labels.iter().map(|(_, v)| *v).collect()
}

impl Telemetry {
    /// This process's CPU seconds, memory and file descriptors
    /// (`process_*`), added to the registry.
    pub fn with_process_metrics(self) -> Self {
        let collector = ProcessMetrics(prometheus::process_collector::ProcessCollector::for_self());
        // Registering twice is the only error; a fresh registry has neither.
        let _ = self.0.registry.register(Box::new(collector));
        self
    }

    /// Finds or creates the family `name`, registering it on creation.
    fn family<T>(
        &self,
        name: &str,
        make: impl FnOnce() -> Family,
        pick: impl FnOnce(&Family) -> Option<T>,
    ) -> T {
        let mut families = self.0.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name.to_owned()).or_insert_with(|| {
            let family = make();
            let collector: Box<dyn Collector> = match &family {
                Family::Counter(c) => Box::new(c.clone()),
                Family::Gauge(g) => Box::new(g.clone()),
                Family::Histogram(h) => Box::new(h.clone()),
            };
            self.0
                .registry
                .register(collector)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            family
        });
        pick(family).unwrap_or_else(|| panic!("metric {name} was created as another type"))
    }

    /// The counter `agent_<name>_total` with `labels`; `help` is used on first creation.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let full = format!("agent_{name}_total");
        let vec = self.family(
            &full,
            || {
                Family::Counter(
                    IntCounterVec::new(Opts::new(&full, help), &names(labels))
                        .expect("valid metric"),
                )
            },
            |f| match f {
                Family::Counter(c) => Some(c.clone()),
                _ => None,
            },
        );
        vec.with_label_values(&values(labels))
    }

    /// The gauge `agent_<name>` with `labels`.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let full = format!("agent_{name}");
        let vec = self.family(
            &full,
            || {
                Family::Gauge(
                    IntGaugeVec::new(Opts::new(&full, help), &names(labels)).expect("valid metric"),
                )
            },
            |f| match f {
                Family::Gauge(g) => Some(g.clone()),
                _ => None,
            },
        );
        vec.with_label_values(&values(labels))
    }

    /// The latency histogram `agent_<name>` (seconds, 1 ms .. 33 s) with `labels`.
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Histogram {
        let full = format!("agent_{name}");
        let vec = self.family(
            &full,
            || {
                let buckets =
                    prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets");
                let opts = HistogramOpts::new(&full, help).buckets(buckets);
                Family::Histogram(HistogramVec::new(opts, &names(labels)).expect("valid metric"))
            },
            |f| match f {
                Family::Histogram(h) => Some(h.clone()),
                _ => None,
            },
        );
        vec.with_label_values(&values(labels))
    }

    /// Every metric, for views that show them.
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.0.registry.gather()
    }

    /// The sum of the counters or gauges named `name` (as exposed, with
    /// `_total`) whose labels include every one of `labels`; 0 if none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| {
                let kind = family.get_field_type();
                family.get_metric().iter().map(move |m| (kind, m))
            })
            .filter(|(_, m)| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|(kind, m)| match kind {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                _ => 0.0,
            })
            .sum()
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.gather(), &mut out)
            .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Marks the agent ready (every pipeline started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::SeqCst);
    }

    /// True once every pipeline has started, while none has failed.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst) && self.failures().is_empty()
    }

    /// Records that a component's task ended while the agent ran: the
    /// agent is no longer ready, and `agent_component_failures_total` and
    /// the status page say which and why.
    pub fn component_failed(&self, failure: ComponentFailure) {
        self.counter(
            "component_failures",
            "Components whose task ended while the agent ran (the agent is then not ready and exits non-zero).",
            &[("component_kind", failure.kind), ("component_id", &failure.id)],
        )
        .inc();
        self.0
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(failure);
    }

    /// The components that failed, in order.
    pub fn failures(&self) -> Vec<ComponentFailure> {
        self.0
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The metrics of one component: labelled with its id under its kind
    /// (`exporter="otlp"`) and, for a processor, its [`PIPELINE_LABEL`],
    /// as the Collector labels them.
    pub fn component(&self, kind: Kind, id: &str, pipeline: Option<&str>) -> ComponentTelemetry {
        let mut labels = vec![(kind.name(), id)];
        if let Some(p) = pipeline {
            labels.push((PIPELINE_LABEL, p));
        }
        self.scoped(&labels)
    }

    /// A view that adds the labels of one component to every metric.
    pub fn scoped(&self, labels: &[(&str, &str)]) -> ComponentTelemetry {
        ComponentTelemetry {
            telemetry: self.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
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

    /// The same labels without `label` (what a component shares across
    /// pipelines is not one pipeline's).
    pub fn without(&self, label: &str) -> ComponentTelemetry {
        ComponentTelemetry {
            telemetry: self.telemetry.clone(),
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| k != label)
                .cloned()
                .collect(),
        }
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
        t.histogram("latency_seconds", "Latency.", &[]).observe(0.5);
        let text = t.encode();
        assert!(
            text.contains("# TYPE agent_exporter_dropped_batches_total counter"),
            "{text}"
        );
        assert!(
            text.contains("agent_exporter_dropped_batches_total{exporter=\"file\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("agent_queue_depth{exporter=\"x\"} 4"),
            "{text}"
        );
        assert!(text.contains("agent_latency_seconds_count 1"), "{text}");
    }

    #[test]
    fn process_cpu_seconds_have_sub_second_precision() {
        let t = Telemetry::default().with_process_metrics();
        // A young test process has used well under a second, often 0.0x s.
        // Busy until it has used 30 ms of CPU (not of wall time: on a loaded
        // machine 30 ms of wall time may be far less CPU).
        let cpu_seconds = || {
            let mut t = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes the timespec it is given.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
            t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
        };
        while cpu_seconds() < 0.035 {}
        let text = t.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("process_cpu_seconds_total "))
            .unwrap_or_else(|| panic!("{text}"));
        let seconds: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(seconds >= 0.03, "{line}");
        assert!(seconds.fract() != 0.0, "whole seconds: {line}");
    }
}
