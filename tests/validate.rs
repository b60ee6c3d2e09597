//! `agent validate`, `agent components` and `agent print-config`, run as a user would.

use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("agent runs")
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

const GOOD: &str = r#"
receivers:
  pprof: {path: ./tests/fixtures}
processors:
  metadata: {external_labels: {team: "${env:TEAM:-core}"}}
exporters:
  file: {directory: "${env:OUT_DIR}"}
service:
  pipelines:
    profiles: {receivers: [pprof], processors: [metadata], exporters: [file]}
"#;

/// Runs `subcommand` on the GOOD config with extra `flags` (and `TEAM=perf`).
fn on_good_config(subcommand: &str, flags: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), GOOD);
    let mut args = vec![subcommand, "--config", &config];
    args.extend_from_slice(flags);
    agent(&args, &[("OUT_DIR", "/tmp/out"), ("TEAM", "perf")])
}

#[test]
fn a_valid_config_passes() {
    let out = on_good_config("validate", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is valid: 1 pipeline(s), 3 component(s)")
    );
}

/// (what is wrong, config, expected message) — each must fail with exit 1.
const BAD: &[(&str, &str, &str)] = &[
    ("bad YAML", "receivers: [\n", "invalid YAML"),
    (
        "unknown key",
        "receivers: {pprof: {path: /tmp, pathh: x}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "receivers::pprof::pathh: unknown field `pathh`",
    ),
    (
        "unknown top-level key",
        "recievers: {}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "recievers: unknown top-level key `recievers` (expected one of receivers, processors, exporters, service); did you mean `receivers`?",
    ),
    (
        "unknown component type",
        "receivers: {pprof: {path: /tmp}}\nexporters: {fille: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [fille]}}}",
        "exporters::fille: unknown exporter type `fille`; did you mean `file`?",
    ),
    (
        "relative debug directory",
        "receivers: {pprof: {path: /tmp}}\nprocessors: {symbolize: {debuginfo_directories: [/usr/lib/debug, debug]}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], processors: [symbolize], exporters: [file]}}}",
        "processors::symbolize::debuginfo_directories::1: debug is not an absolute path",
    ),
    (
        "unknown eviction policy",
        "receivers: {pprof: {path: /tmp}}\nprocessors: {symbolize: {object_file_pool_eviction_policy: fifo}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], processors: [symbolize], exporters: [file]}}}",
        "processors::symbolize::object_file_pool_eviction_policy",
    ),
    (
        "two unwinding modes",
        "receivers: {ebpf_cpu: {dwarf_unwinding_disable: true, dwarf_unwinding_mixed: true}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [ebpf_cpu], exporters: [file]}}}",
        "receivers::ebpf_cpu::dwarf_unwinding_mixed: cannot be set together with dwarf_unwinding_disable (frame pointers only)",
    ),
    (
        "unwind table budget too small",
        "receivers: {ebpf_cpu: {unwind_table_memory_limit: 4096}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [ebpf_cpu], exporters: [file]}}}",
        "receivers::ebpf_cpu::unwind_table_memory_limit: must be between 1048576 and 1099511627776 (is 4096)",
    ),
    (
        "missing token file",
        "receivers: {pprof: {path: /tmp}}\nexporters: {parca_grpc: {address: 'parca:7070', bearer_token_file: /nonexistent/token}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [parca_grpc]}}}",
        "exporters::parca_grpc::bearer_token_file: cannot read /nonexistent/token: No such file or directory",
    ),
    (
        "misspelled reference",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file/local: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file/locl]}}}",
        "service::pipelines::profiles::exporters: `file/locl` is not configured under `exporters`; did you mean `file/local`?",
    ),
    (
        "wrong type",
        "receivers: {pprof: {path: /tmp, watch: often}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "receivers::pprof::watch: invalid type: string \"often\", expected a boolean",
    ),
    (
        "wrong nested type",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {retention: {max_files: -3}}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "exporters::file::retention::max_files: invalid value: integer `-3`",
    ),
    (
        "bad duration",
        "receivers: {pprof: {path: /tmp, poll_interval: soon}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "receivers::pprof::poll_interval:",
    ),
    (
        "bad ${env:…} syntax",
        "receivers: {pprof: {path: \"${env:DIR\"}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "receivers::pprof::path: unclosed `${`",
    ),
    (
        "unset variable without default",
        "receivers: {pprof: {path: \"${env:SURELY_NOT_SET_42}\"}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "receivers::pprof::path: environment variable `SURELY_NOT_SET_42` is not set",
    ),
    (
        "duplicate ids",
        "receivers: {pprof: {path: /tmp}}\nexporters:\n  file: {}\n  file: {}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "duplicate entry with key \"file\"",
    ),
    (
        "duplicate reference in a pipeline",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof, pprof], exporters: [file]}}}",
        "service::pipelines::profiles::receivers: `pprof` is listed twice",
    ),
    (
        "empty pipeline",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {}}}",
        "service::pipelines::profiles::receivers: a pipeline needs at least one receiver",
    ),
    (
        "pipeline with no exporter",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof]}}}",
        "service::pipelines::profiles::exporters: a pipeline needs at least one exporter",
    ),
    (
        "no pipelines",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {}}\n",
        "service::pipelines: no pipelines defined",
    ),
    (
        "not a profiles pipeline",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {}}\nservice: {pipelines: {traces: {receivers: [pprof], exporters: [file]}}}",
        "service::pipelines::traces: `traces` is not a pipeline id",
    ),
    (
        "missing required value",
        "receivers: {pprof: {}}\nexporters: {file: {}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "receivers::pprof::path: required",
    ),
    (
        "bad service value",
        "receivers: {pprof: {path: /tmp}}\nexporters: {file: {}}\nservice: {http_address: nowhere, pipelines: {profiles: {receivers: [pprof], exporters: [file]}}}",
        "service::http_address: `nowhere` is not an address",
    ),
];

#[test]
fn malformed_configs_fail_with_their_key_path() {
    let dir = tempfile::tempdir().unwrap();
    for (what, yaml, expected) in BAD {
        let config = write_config(dir.path(), yaml);
        let out = agent(&["validate", "--config", &config], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected `{expected}` in:\n{stderr}"
        );
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "receivers: {pprof: {}}\nexporters: {file: {bogus: 1}}\nservice: {pipelines: {profiles: {receivers: [pprof], exporters: [fil]}}}",
    );
    let out = agent(&["validate", "--config", &config], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "receivers::pprof::path",
        "exporters::file::bogus",
        "`fil` is not configured",
    ] {
        assert!(stderr.contains(expected), "{expected} in:\n{stderr}");
    }
}

#[test]
fn flags_set_fields_of_their_components() {
    let out = on_good_config(
        "print-config",
        &[
            "--node=node-7",
            "--local-store-directory=/var/lib/profiles",
            "--metadata-external-labels=region=eu;tier=1",
            "--metadata-container-runtime-socket-path=/run/k3s/containerd/containerd.sock",
            "--otlp-address=collector:4317",
            "--otlp-exporter=http",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["service"]["node"], "node-7");
    assert_eq!(
        printed["processors"]["metadata"]["container_runtime_socket"],
        "/run/k3s/containerd/containerd.sock"
    );
    assert_eq!(
        printed["processors"]["metadata"]["container_name_wait"],
        "250ms"
    );
    assert_eq!(printed["service"]["traces"]["endpoint"], "collector:4317");
    assert_eq!(printed["service"]["traces"]["protocol"], "http");
    assert_eq!(
        printed["exporters"]["file"]["directory"],
        "/var/lib/profiles"
    );
    // Defaults are filled in; env expanded.
    assert_eq!(printed["exporters"]["file"]["retention"]["max_files"], 1000);
    assert_eq!(
        printed["exporters"]["file"]["sending_queue"]["queue_size"],
        16
    );
    // The flag replaces the whole map, as Parca Agent's flag does.
    assert_eq!(
        printed["processors"]["metadata"]["external_labels"]["region"],
        "eu"
    );
    assert!(printed["processors"]["metadata"]["external_labels"]["team"].is_null());
}

#[test]
fn flags_of_components_missing_from_the_config_or_the_build_are_errors_that_say_so() {
    let out = on_good_config("validate", &["--remote-store-address=parca:7070"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("flag --remote-store-address has no effect: it sets exporters::parca_grpc::address, but the config has no `parca_grpc` exporter"),
        "{stderr}"
    );
    let out = on_good_config(
        "validate",
        &["--metadata-container-runtime-socket-path=run/docker.sock"],
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("processors::metadata::container_runtime_socket: must be an absolute path"));
    let out = on_good_config("validate", &["--otlp-address=collector"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "service::traces::endpoint: `collector` is neither host:port nor an http:// or https:// URL"
    ));
}

#[test]
fn remote_store_address_ships_the_embedded_pipeline_to_parca() {
    let printed = |flags: &[&str]| {
        let mut args = vec!["print-config"];
        args.extend_from_slice(flags);
        let out = agent(&args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_yaml::from_slice::<serde_yaml::Value>(&out.stdout).unwrap()
    };
    let config = printed(&[
        "--remote-store-address=parca:7070",
        "--remote-store-bearer-token=s3cr3t",
    ]);
    assert_eq!(config["exporters"]["parca_grpc"]["address"], "parca:7070");
    assert_eq!(
        config["exporters"]["parca_grpc"]["bearer_token"],
        "<redacted>"
    );
    assert!(
        config["exporters"]["file"].is_null(),
        "parca_grpc replaces file"
    );
    assert_eq!(
        config["service"]["pipelines"]["profiles"]["exporters"],
        serde_yaml::from_str::<serde_yaml::Value>("[parca_grpc]").unwrap()
    );
    let both = printed(&[
        "--remote-store-address=parca:7070",
        "--local-store-directory=/tmp/p",
    ]);
    assert_eq!(
        both["service"]["pipelines"]["profiles"]["exporters"],
        serde_yaml::from_str::<serde_yaml::Value>("[file, parca_grpc]").unwrap()
    );
    let out = agent(&["validate", "--remote-store-address=parca"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("exporters::parca_grpc::address: parca: no port (host:port)"));
}

#[test]
fn flags_without_meaning_are_accepted_with_a_notice() {
    let out = on_good_config(
        "validate",
        &["--analytics-opt-out", "--mutex-profile-fraction=5"],
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--analytics-opt-out has no effect"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--mutex-profile-fraction has no effect"),
        "{stderr}"
    );
}

#[test]
fn components_lists_what_is_compiled_in() {
    let out = agent(&["components"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert!(
        rows.contains(&vec!["receiver", "pprof", "alpha"]),
        "{stdout}"
    );
    assert!(
        rows.contains(&vec!["exporter", "file", "alpha"]),
        "{stdout}"
    );
    assert!(
        rows.contains(&vec!["processor", "metadata", "development"]),
        "{stdout}"
    );
}

#[test]
fn the_embedded_pipeline_is_valid() {
    let out = agent(&["validate"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent(
        &[
            "print-config",
            "--profiling-duration=3s",
            "--local-store-directory=/x",
        ],
        &[],
    );
    let printed: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["receivers"]["ebpf_cpu"]["profiling_duration"], "3s");
    assert_eq!(printed["receivers"]["ebpf_cpu"]["sampling_frequency"], 19);
    assert_eq!(printed["exporters"]["file"]["directory"], "/x");
}

#[test]
fn version_names_the_revision() {
    let out = agent(&["--version"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("agent {} (revision ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
}

/// A password in an endpoint URL never shows: not in `print-config`, not in
/// a validation error.
#[test]
fn passwords_in_endpoints_are_redacted() {
    let out = agent(
        &[
            "print-config",
            "--remote-store-address=https://parca:hunter2@parca.example:443",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("https://parca:<redacted>@parca.example:443"),
        "{stdout}"
    );
    let out = agent(
        &[
            "validate",
            "--remote-store-address=parca:hunter2@parca.example",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(
        stderr.contains("exporters::parca_grpc::address"),
        "{stderr}"
    );
}

/// Keys renamed to the Collector's shapes (`tls:`, `retry_on_failure:`)
/// still work under their old names; giving both is an error naming the old.
#[test]
fn renamed_keys_still_work_and_both_at_once_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |exporter: &str| {
        format!(
            "receivers: {{pprof: {{path: ./tests/fixtures}}}}\nexporters: {{{exporter}}}\n\
             service: {{pipelines: {{profiles: {{receivers: [pprof], exporters: [{}]}}}}}}\n",
            exporter.split(':').next().unwrap()
        )
    };
    let config = write_config(
        dir.path(),
        &pipeline(
            "otlp_profiles: {endpoint: 'otlp:4317', insecure: true, retry: {max_interval: 9s}}",
        ),
    );
    let out = agent(&["print-config", "--config", &config], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("tls:\n      insecure: true"), "{stdout}");
    assert!(
        stdout.contains("retry_on_failure:") && stdout.contains("max_interval: 9s"),
        "{stdout}"
    );
    assert!(!stdout.contains("retry:"), "{stdout}");
    let config = write_config(
        dir.path(),
        &pipeline("parca_grpc: {address: 'parca:7070', insecure: true, tls: {insecure: false}}"),
    );
    let out = agent(&["validate", "--config", &config], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "exporters::parca_grpc::insecure: is the old name of tls::insecure; give one of them"
        ),
        "{stderr}"
    );
}

/// Every number and duration a component takes, given its extremes (0,
/// negative, the largest integer, absurd units): `validate` either accepts
/// the value or refuses it naming the key path, and never panics. The keys
/// come from the config schemas (`agent schema`), so a new field is tried
/// as soon as it exists. (The network exporters' timeouts, retries and
/// queues run at their maxima in the pipeline tests' shutdown-during-outage
/// test.)
#[test]
fn extreme_values_are_refused_with_their_key_path_never_with_a_panic() {
    use agent_core::schema::{keys, KeyKind};
    // (section, every component of the build with what it requires)
    let components: &[(&str, &str)] = &[
        ("exporters", "parca_grpc: {address: 'parca:7070', KEY}"),
        ("exporters", "otlp_profiles: {endpoint: 'otlp:4317', KEY}"),
        ("exporters", "file: {directory: /tmp/agent-extremes, KEY}"),
        ("receivers", "pprof: {path: /tmp, watch: true, KEY}"),
        ("receivers", "ebpf_cpu: {KEY}"),
        ("processors", "symbolize: {KEY}"),
        ("processors", "metadata: {KEY}"),
        ("processors", "relabel: {KEY}"),
        ("processors", "k8s_meta: {KEY}"),
        ("processors", "plugin: {path: /x.so, KEY}"),
        #[cfg(feature = "processor-drop-frames")]
        ("processors", "drop_frames: {KEY}"),
    ];
    let out = agent(&["schema"], &[]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = |section: &str| -> usize {
        schema["properties"][section]["patternProperties"]
            .as_object()
            .unwrap()
            .len()
    };
    assert_eq!(
        components.len(),
        ["receivers", "processors", "exporters"]
            .map(listed)
            .iter()
            .sum::<usize>(),
        "every component of the build is tried"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut refused = 0;
    let mut tried = 0;
    for (section, component) in components {
        let id = component.split(':').next().unwrap();
        // A component's config, or nothing (its defaults).
        let component_schema = &schema["properties"][section]["patternProperties"]
            [format!("^{id}(/.+)?$")]["anyOf"][0];
        assert!(
            component_schema["properties"].is_object(),
            "{section}::{id}: no schema"
        );
        let cases: Vec<(String, &str)> = keys(component_schema)
            .into_iter()
            .flat_map(|k| {
                let values: &[&str] = match k.kind {
                    KeyKind::Duration => &["0s", "-1s", "10000000000h", "1ns"],
                    KeyKind::Integer => &["0", "-1", "18446744073709551615", "1e400"],
                    _ => &[],
                };
                values.iter().map(move |v| (k.path.clone(), *v))
            })
            .collect();
        tried += cases.len();
        for (key, value) in cases {
            let key = key.as_str();
            // `a::b: v` as YAML flow mappings: `a: {b: v}`.
            let parts: Vec<&str> = key.split("::").collect();
            let mut setting = format!("{}: {value}", parts[parts.len() - 1]);
            for part in parts[..parts.len() - 1].iter().rev() {
                setting = format!("{part}: {{{setting}}}");
            }
            let body = component.replace("KEY", &setting);
            let (receiver, exporter) = match *section {
                "receivers" => (id, "file"),
                "exporters" => ("pprof", id),
                _ => ("pprof", "file"),
            };
            let mut yaml = format!("{section}: {{{body}}}\n");
            if *section != "receivers" {
                yaml += "receivers: {pprof: {path: /tmp}}\n";
            }
            if *section != "exporters" {
                yaml += "exporters: {file: {directory: /tmp/agent-extremes}}\n";
            }
            let processors = if *section == "processors" {
                format!("[{id}]")
            } else {
                "[]".into()
            };
            yaml += &format!(
                "service: {{pipelines: {{profiles: {{receivers: [{receiver}], processors: {processors}, exporters: [{exporter}]}}}}}}\n"
            );
            let config = write_config(dir.path(), &yaml);
            let out = agent(&["validate", "--config", &config], &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let path = format!("{section}::{id}::{key}");
            match out.status.code() {
                Some(0) => {}
                Some(1) => {
                    refused += 1;
                    assert!(
                        stderr.contains(&path),
                        "{path} = {value}: the error names no key path:\n{stderr}"
                    );
                }
                other => panic!("{path} = {value}: exit {other:?}\n{stderr}"),
            }
            assert!(!stderr.contains("panicked"), "{path} = {value}:\n{stderr}");
        }
    }
    assert!(tried > 120, "only {tried} extremes tried");
    assert!(refused > 50, "only {refused} extremes refused");
}
