//! The one place that lists the compiled-in components, each behind its
//! Cargo feature (what the OpenTelemetry Collector builder generates as
//! `components.go`). Adding a component: a crate, a feature in Cargo.toml,
//! and one `register` line here.

use agent_core::Registry;

/// Every component compiled into this binary, and the known ones that are not.
pub fn registry() -> Registry {
    let mut r = Registry::default();

    #[cfg(feature = "receiver-ebpf-cpu")]
    r.register(agent_receiver_ebpf_cpu::EbpfCpuFactory);
    #[cfg(not(feature = "receiver-ebpf-cpu"))]
    r.absent(
        agent_core::Kind::Receiver,
        "ebpf_cpu",
        "built without Cargo feature `receiver-ebpf-cpu`",
    );

    #[cfg(feature = "receiver-pprof")]
    r.register(agent_receiver_pprof::PprofReceiverFactory);
    #[cfg(not(feature = "receiver-pprof"))]
    r.absent(
        agent_core::Kind::Receiver,
        "pprof",
        "built without Cargo feature `receiver-pprof`",
    );

    #[cfg(feature = "processor-metadata")]
    r.register(agent_processor_metadata::MetadataFactory);
    #[cfg(not(feature = "processor-metadata"))]
    r.absent(
        agent_core::Kind::Processor,
        "metadata",
        "built without Cargo feature `processor-metadata`",
    );

    #[cfg(feature = "processor-k8s-meta")]
    r.register(agent_processor_k8s_meta::K8sMetaFactory);
    #[cfg(not(feature = "processor-k8s-meta"))]
    r.absent(
        agent_core::Kind::Processor,
        "k8s_meta",
        "built without Cargo feature `processor-k8s-meta`",
    );

    #[cfg(feature = "processor-relabel")]
    r.register(agent_processor_relabel::RelabelFactory);
    #[cfg(not(feature = "processor-relabel"))]
    r.absent(
        agent_core::Kind::Processor,
        "relabel",
        "built without Cargo feature `processor-relabel`",
    );

    #[cfg(feature = "processor-plugin")]
    r.register(agent_processor_plugin::PluginFactory);
    #[cfg(not(feature = "processor-plugin"))]
    r.absent(
        agent_core::Kind::Processor,
        "plugin",
        "built without Cargo feature `processor-plugin`",
    );

    #[cfg(feature = "processor-symbolize")]
    r.register(agent_processor_symbolize::SymbolizeFactory);
    #[cfg(not(feature = "processor-symbolize"))]
    r.absent(
        agent_core::Kind::Processor,
        "symbolize",
        "built without Cargo feature `processor-symbolize`",
    );

    // The example of a compile-time processor (examples/drop-frames).
    #[cfg(feature = "processor-drop-frames")]
    r.register(agent_processor_drop_frames::DropFramesFactory);
    #[cfg(not(feature = "processor-drop-frames"))]
    r.absent(
        agent_core::Kind::Processor,
        "drop_frames",
        "built without Cargo feature `processor-drop-frames`",
    );

    #[cfg(feature = "exporter-file")]
    r.register(agent_exporter_file::FileExporterFactory);
    #[cfg(not(feature = "exporter-file"))]
    r.absent(
        agent_core::Kind::Exporter,
        "file",
        "built without Cargo feature `exporter-file`",
    );

    #[cfg(feature = "exporter-parca-grpc")]
    r.register(agent_exporter_parca_grpc::ParcaGrpcFactory);
    #[cfg(not(feature = "exporter-parca-grpc"))]
    r.absent(
        agent_core::Kind::Exporter,
        "parca_grpc",
        "built without Cargo feature `exporter-parca-grpc`",
    );

    #[cfg(feature = "exporter-otlp-profiles")]
    r.register(agent_exporter_otlp_profiles::OtlpProfilesFactory);
    #[cfg(not(feature = "exporter-otlp-profiles"))]
    r.absent(
        agent_core::Kind::Exporter,
        "otlp_profiles",
        "built without Cargo feature `exporter-otlp-profiles`",
    );

    r
}

/// Every registered factory against the rules a component must keep, and
/// the README's key reference against the config schemas.
#[cfg(test)]
mod conformance {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use agent_core::registry::{DynFactory, ParsedConfig};
    use agent_core::schema::{inline_schema_for, keys};
    use agent_core::{BatchSink, BuildContext, Component, Kind, LabelSet, ProfileBatch, Shutdown};
    use serde_yaml::Value;

    use super::registry;

    /// Whether a component can be started here.
    enum Start {
        Yes,
        /// Why not.
        No(&'static str),
    }

    /// A config each type accepts (the required keys set; `DIR` becomes a
    /// fresh directory), and whether it starts in a unit test.
    fn example(kind: Kind, type_name: &str) -> (&'static str, Start) {
        use Kind::*;
        match (kind, type_name) {
            (Receiver, "ebpf_cpu") => ("{}", Start::Yes),
            (Receiver, "pprof") => ("{path: tests/fixtures}", Start::Yes),
            (Processor, "plugin") => (
                "{path: /nonexistent/plugin.so}",
                Start::No("needs a built shared library; tests/plugins.rs starts it"),
            ),
            (Processor, "drop_frames") => ("{function_regex: '^x$'}", Start::Yes),
            (Processor, "metadata" | "k8s_meta" | "relabel" | "symbolize") => ("{}", Start::Yes),
            (Exporter, "file") => ("{directory: DIR}", Start::Yes),
            (Exporter, "parca_grpc") => (
                "{address: '127.0.0.1:1', tls: {insecure: true}, shutdown_flush_timeout: 1s, debuginfo_upload_disable: true, panic_reporting_disable: true}",
                Start::Yes,
            ),
            (Exporter, "otlp_profiles") => (
                "{endpoint: '127.0.0.1:1', tls: {insecure: true}, shutdown_flush_timeout: 1s}",
                Start::Yes,
            ),
            _ => panic!("{type_name}: a new component type needs its example here"),
        }
    }

    fn yaml(text: &str, dir: &std::path::Path) -> Value {
        serde_yaml::from_str(&text.replace("DIR", &dir.display().to_string())).unwrap()
    }

    /// The keys the schema has: an exporter's `sending_queue` is the
    /// service's (parsed apart, documented once).
    fn schema_keys(factory: &dyn DynFactory) -> (BTreeSet<String>, BTreeSet<String>) {
        let keys: Vec<_> = keys(factory.config_schema().as_value())
            .into_iter()
            .filter(|k| !k.path.starts_with("sending_queue::"))
            .collect();
        let optional = keys
            .iter()
            .filter(|k| k.optional)
            .map(|k| k.path.clone())
            .collect();
        (keys.into_iter().map(|k| k.path).collect(), optional)
    }

    /// The key paths of a parsed config, descending into a mapping only
    /// where the schema has keys below it.
    fn config_keys(
        value: &Value,
        prefix: &str,
        schema: &BTreeSet<String>,
        out: &mut BTreeSet<String>,
    ) {
        let Value::Mapping(map) = value else { return };
        for (key, child) in map {
            let key = key.as_str().expect("string keys");
            let path = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}::{key}")
            };
            let below = format!("{path}::");
            if schema.iter().any(|k| k.starts_with(&below)) {
                config_keys(child, &path, schema, out);
            } else {
                out.insert(path);
            }
        }
    }

    /// The keys of the first `| key | default | meaning |` table after the
    /// line that starts with `heading`, before the next component's.
    fn readme_keys(heading: &str) -> BTreeSet<String> {
        let readme = include_str!("../README.md");
        let start = readme
            .lines()
            .position(|l| l.starts_with(heading))
            .unwrap_or_else(|| panic!("README has no section starting with {heading}"));
        let mut keys = BTreeSet::new();
        let mut in_table = false;
        for line in readme.lines().skip(start + 1) {
            if line.starts_with("`receivers::")
                || line.starts_with("`processors::")
                || line.starts_with("`exporters::")
            {
                break;
            }
            if line.starts_with("| key | default | meaning |") {
                in_table = true;
            } else if in_table {
                let Some(cell) = line.strip_prefix("| `") else {
                    if line.starts_with("|---") {
                        continue;
                    }
                    break;
                };
                keys.insert(cell.split('`').next().unwrap().to_owned());
            }
        }
        assert!(!keys.is_empty(), "README: no key table after {heading}");
        keys
    }

    #[test]
    fn every_component_keeps_the_rules() {
        let registry = registry();
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let valid_id = |id: &str| {
            id.starts_with(|c: char| c.is_ascii_lowercase())
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let mut checked = 0;
        for factory in registry.factories() {
            let (kind, name) = (factory.kind(), factory.type_name());
            let path = format!("{}::{name}", kind.section());
            assert!(valid_id(name), "{path}: not a valid type id");
            assert!(!factory.description().is_empty(), "{path}: no description");
            let (text, start) = example(kind, name);

            // The default config and the example parse; what print-config
            // shows parses back to the same.
            let parsed = factory
                .parse(&Value::Null, &path)
                .map(|p| p.effective)
                .or_else(|_| {
                    factory
                        .parse(&yaml(text, dir.path()), &path)
                        .map(|p| p.effective)
                })
                .unwrap_or_else(|e| {
                    panic!(
                        "{path}: {:?}",
                        e.iter().map(ToString::to_string).collect::<Vec<_>>()
                    )
                });
            let config = factory
                .parse(&yaml(text, dir.path()), &path)
                .unwrap_or_else(|e| {
                    panic!(
                        "{path}: {:?}",
                        e.iter().map(ToString::to_string).collect::<Vec<_>>()
                    )
                });
            let again = factory.parse(&config.effective, &path).unwrap();
            assert_eq!(
                again.effective, config.effective,
                "{path}: the effective config does not round-trip"
            );
            assert!(parsed.is_mapping(), "{path}");

            // An unknown key is refused, named with its path.
            let mut unknown = yaml(text, dir.path());
            unknown
                .as_mapping_mut()
                .unwrap()
                .insert("zz_not_a_key".into(), 1.into());
            let errors = factory
                .parse(&unknown, &path)
                .err()
                .unwrap_or_else(|| panic!("{path}: an unknown key was accepted"));
            assert!(
                errors
                    .iter()
                    .any(|e| e.path == format!("{path}::zz_not_a_key")),
                "{path}: {:?}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>()
            );

            // The schema, the parsed config and the README name the same keys.
            let (schema, optional) = schema_keys(factory);
            let mut parsed_keys = BTreeSet::new();
            config_keys(&config.effective, "", &schema, &mut parsed_keys);
            let unknown: Vec<_> = parsed_keys.difference(&schema).collect();
            assert!(
                unknown.is_empty(),
                "{path}: keys the schema lacks: {unknown:?}"
            );
            let missing: Vec<_> = schema
                .difference(&parsed_keys)
                .filter(|k| !optional.contains(*k))
                .collect();
            assert!(
                missing.is_empty(),
                "{path}: required by the schema, absent when parsed: {missing:?}"
            );
            assert_eq!(
                readme_keys(&format!("`{path}`")),
                schema,
                "{path}: README key table (left) vs the config schema (right)"
            );

            match start {
                Start::Yes => runtime.block_on(start_and_stop(factory, &config, &path)),
                Start::No(why) => eprintln!("{path}: not started here: {why}"),
            }
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} components registered");
    }

    /// Builds the component (which must not begin work yet: a BPF receiver
    /// is not attached, an exporter's writer not running), starts it within
    /// the service's start bound, gives it work, stops it: it ends within
    /// its bound (an exporter within its 1 s flush bound + 2 s, the rest 10 s).
    async fn start_and_stop(factory: &dyn DynFactory, config: &ParsedConfig, path: &str) {
        let (stop, stopping) = Shutdown::new();
        let ctx = BuildContext {
            stopping: stopping.clone(),
            ..BuildContext::for_test(path)
        };
        let component = factory
            .build(config, &ctx)
            .unwrap_or_else(|e| panic!("{path}: not built: {e}"));
        let start = agent_core::service::START_TIMEOUT;
        let started = |result: Result<Result<(), _>, _>| {
            result
                .unwrap_or_else(|_| panic!("{path}: not started within {start:?}"))
                .unwrap_or_else(|e| panic!("{path}: does not start: {e}"))
        };
        let batch = ProfileBatch::one_sample_per_series([LabelSet::new([
            ("pid", "1"),
            ("comm", "conformance"),
        ])]);
        match component {
            Component::Receiver(mut receiver) => {
                started(tokio::time::timeout(start, receiver.start()).await);
                let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
                let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
                let running = tokio::spawn(receiver.run(BatchSink::for_test(vec![tx]), stopping));
                tokio::time::sleep(Duration::from_millis(300)).await;
                stop.stop();
                let stopped = Instant::now();
                tokio::time::timeout(Duration::from_secs(10), running)
                    .await
                    .unwrap_or_else(|_| panic!("{path}: still running 10 s after the stop"))
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
                drain.await.unwrap();
                eprintln!("{path}: stopped in {:?}", stopped.elapsed());
            }
            Component::Processor(mut processor) => {
                started(tokio::time::timeout(start, processor.start()).await);
                let processed = tokio::task::spawn_blocking(move || {
                    processor.process(batch).map(|_| processor)
                })
                .await
                .unwrap();
                let mut processor = processed.unwrap_or_else(|e| panic!("{path}: {e}"));
                tokio::time::timeout(Duration::from_secs(10), processor.shutdown())
                    .await
                    .unwrap_or_else(|_| panic!("{path}: shutdown took 10 s"))
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
            }
            Component::Exporter(mut exporter) => {
                started(tokio::time::timeout(start, exporter.start()).await);
                // A backend that is down (127.0.0.1:1): the export goes on
                // retrying until the stop's flush bound ends it.
                let exporting = tokio::spawn(async move {
                    let result = exporter.export(Arc::new(batch)).await;
                    (exporter, result)
                });
                tokio::time::sleep(Duration::from_millis(300)).await;
                stop.stop();
                let stopped = Instant::now();
                let (mut exporter, result) =
                    tokio::time::timeout(Duration::from_secs(3), exporting)
                        .await
                        .unwrap_or_else(|_| {
                            panic!("{path}: an export went on past its flush bound + 2 s")
                        })
                        .unwrap();
                eprintln!("{path}: export ended with {result:?}");
                tokio::time::timeout(Duration::from_secs(3), exporter.shutdown())
                    .await
                    .unwrap_or_else(|_| panic!("{path}: shutdown past its flush bound + 2 s"))
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
                eprintln!("{path}: shut down in {:?}", stopped.elapsed());
            }
        }
    }

    #[test]
    fn the_shared_tables_match_their_schemas() {
        let names = |schema: &serde_json::Value| -> BTreeSet<String> {
            keys(schema).into_iter().map(|k| k.path).collect()
        };
        assert_eq!(
            readme_keys("`service`"),
            names(inline_schema_for::<agent_core::config::ServiceConfig>().as_value()),
            "README service table (left) vs the schema (right)"
        );
        let queue = names(inline_schema_for::<agent_core::config::SendingQueue>().as_value());
        assert_eq!(
            readme_keys("Every exporter also takes a `sending_queue`"),
            queue
                .iter()
                .map(|k| format!("sending_queue::{k}"))
                .collect(),
            "README sending_queue table (left) vs the schema (right)"
        );
    }
}
