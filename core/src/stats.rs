//! The metrics every component of a kind has, defined once: their names,
//! help and labels (the component's id under its kind, `receiver`,
//! `processor` with its `pipeline`, `exporter`, as the Collector labels
//! them). The service updates them; the status page reads them through
//! these types, not by metric name.

use crate::component::Kind;
use crate::telemetry::{Counter, Gauge, Histogram, Telemetry};

/// What a receiver emitted.
#[derive(Clone)]
pub struct ReceiverStats {
    /// Batches emitted.
    pub batches: Counter,
    /// Samples emitted (the sum of values for count profiles, else rows).
    pub samples: Counter,
    /// Sample rows emitted (distinct stack and label combinations per batch).
    pub sample_rows: Counter,
    /// Series in the last batch.
    pub series: Gauge,
}

impl ReceiverStats {
    /// The metrics of receiver `id`.
    pub fn new(telemetry: &Telemetry, id: &str) -> Self {
        let t = telemetry.component(Kind::Receiver, id, None);
        Self {
            batches: t.counter("receiver_batches", "Batches emitted by a receiver.", &[]),
            samples: t.counter(
                "receiver_samples",
                "Samples emitted by a receiver (the sum of sample values for count profiles, else sample rows).",
                &[],
            ),
            sample_rows: t.counter(
                "receiver_sample_rows",
                "Sample rows emitted by a receiver (distinct stack and label combinations per batch).",
                &[],
            ),
            series: t.gauge("receiver_series", "Series in a receiver's last batch.", &[]),
        }
    }
}

/// What a processor of one pipeline failed on.
#[derive(Clone)]
pub struct ProcessorStats {
    /// Batches it failed on (they are dropped).
    pub errors: Counter,
    /// Samples in those batches.
    pub dropped_samples: Counter,
}

impl ProcessorStats {
    /// The metrics of processor `id` in pipeline `pipeline`.
    pub fn new(telemetry: &Telemetry, id: &str, pipeline: &str) -> Self {
        let t = telemetry.component(Kind::Processor, id, Some(pipeline));
        Self {
            errors: t.counter(
                "processor_errors",
                "Batches a processor failed on (they are dropped).",
                &[],
            ),
            dropped_samples: t.counter(
                "processor_dropped_samples",
                "Samples in batches dropped by processor errors.",
                &[],
            ),
        }
    }
}

/// What an exporter and its queue did.
#[derive(Clone)]
pub struct ExporterStats {
    /// Batches sent.
    pub batches: Counter,
    /// Samples sent (the sum of values for count profiles, else rows).
    pub samples: Counter,
    /// Batches it failed to send.
    pub errors: Counter,
    /// Series in the last batch sent.
    pub series: Gauge,
    /// Time per batch.
    pub export_duration: Histogram,
    /// Batches waiting in its queue.
    pub queue_depth: Gauge,
    /// Batches dropped because its queue was full.
    pub dropped_batches: Counter,
    /// Samples in those batches.
    pub dropped_samples: Counter,
}

impl ExporterStats {
    /// The metrics of exporter `id`.
    pub fn new(telemetry: &Telemetry, id: &str) -> Self {
        let t = telemetry.component(Kind::Exporter, id, None);
        Self {
            batches: t.counter("exporter_batches", "Batches an exporter sent.", &[]),
            samples: t.counter(
                "exporter_samples",
                "Samples an exporter sent (the sum of sample values for count profiles, else sample rows).",
                &[],
            ),
            errors: t.counter("exporter_errors", "Batches an exporter failed to send.", &[]),
            series: t.gauge(
                "exporter_series",
                "Series in the last batch an exporter sent.",
                &[],
            ),
            export_duration: t.histogram(
                "exporter_export_duration_seconds",
                "Time an exporter took per batch.",
                &[],
            ),
            queue_depth: t.gauge(
                "exporter_queue_depth",
                "Batches waiting in an exporter's queue.",
                &[],
            ),
            dropped_batches: t.counter(
                "exporter_dropped_batches",
                "Batches dropped because an exporter's queue was full.",
                &[],
            ),
            dropped_samples: t.counter(
                "exporter_dropped_samples",
                "Samples in batches dropped because an exporter's queue was full.",
                &[],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_back_what_the_metrics_show() {
        let telemetry = Telemetry::default();
        let exporter = ExporterStats::new(&telemetry, "file");
        exporter.batches.inc_by(3);
        exporter.queue_depth.set(2);
        ProcessorStats::new(&telemetry, "relabel", "p").errors.inc();
        // A second handle is the same series.
        assert_eq!(ExporterStats::new(&telemetry, "file").batches.get(), 3);
        assert_eq!(
            ProcessorStats::new(&telemetry, "relabel", "p").errors.get(),
            1
        );
        assert_eq!(
            ProcessorStats::new(&telemetry, "relabel", "q").errors.get(),
            0
        );
        let text = telemetry.encode();
        assert!(
            text.contains("agent_exporter_batches_total{exporter=\"file\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("agent_exporter_queue_depth{exporter=\"file\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("agent_processor_errors_total{pipeline=\"p\",processor=\"relabel\"} 1"),
            "{text}"
        );
    }
}
