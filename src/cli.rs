//! The command line: subcommands, and Parca Agent's flags, each mapped to the
//! config field of the component that owns it.
//!
//! [`FLAGS`] is the single source of truth: the parser, `--help` and the
//! README's flag table (checked by a test) all come from it.

use std::path::PathBuf;

use agent_core::config::{Override, OverrideTarget};
use agent_core::Kind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_yaml::{Mapping, Value};

/// `agent --version`: version and git revision.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("AGENT_GIT_REVISION"),
    ")"
);

/// The type of a flag's value, and how it becomes a config value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// `--flag` or `--flag=false`.
    Bool,
    /// Free text.
    Text,
    /// A non-negative integer.
    Int,
    /// A probability: a number from 0 to 1.
    Probability,
    /// A duration such as `10s`, `250ms`, `5m`.
    Duration,
    /// Comma-separated list; a repeated flag adds to it.
    List,
    /// `KEY=VALUE;KEY=VALUE`; a repeated flag adds to it (a later value
    /// for the same key wins).
    Labels,
}

/// What a flag does in this agent.
#[derive(Clone, Copy, Debug)]
pub enum Owner {
    /// Read by the binary itself (logging).
    Agent,
    /// Sets these config fields (every configured instance of each).
    Sets(&'static [OverrideTarget]),
    /// Accepted with one notice; has no meaning here (the reason).
    NoEffect(&'static str),
    /// Deprecated spelling of another flag.
    AliasOf(&'static str),
}

/// One command-line flag.
#[derive(Clone, Copy, Debug)]
pub struct FlagSpec {
    /// Long name without `--`.
    pub name: &'static str,
    /// Value type.
    pub kind: ValueKind,
    /// Default as Parca Agent documents it (`None`: empty / off).
    pub default: Option<&'static str>,
    /// One-line help.
    pub help: &'static str,
    /// Where it goes.
    pub owner: Owner,
}

const fn service(field: &'static str) -> OverrideTarget {
    OverrideTarget::Service(field)
}
const fn receiver(type_name: &'static str, field: &'static str) -> OverrideTarget {
    OverrideTarget::Component {
        kind: Kind::Receiver,
        type_name,
        field,
    }
}
const fn processor(type_name: &'static str, field: &'static str) -> OverrideTarget {
    OverrideTarget::Component {
        kind: Kind::Processor,
        type_name,
        field,
    }
}
const fn exporter(type_name: &'static str, field: &'static str) -> OverrideTarget {
    OverrideTarget::Component {
        kind: Kind::Exporter,
        type_name,
        field,
    }
}

const fn flag(
    name: &'static str,
    kind: ValueKind,
    default: Option<&'static str>,
    help: &'static str,
    owner: Owner,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        help,
        owner,
    }
}

use ValueKind::*;

/// Every Parca Agent flag, in Parca Agent's order.
pub const FLAGS: &[FlagSpec] = &[
    flag(
        "log-level",
        Text,
        Some("info"),
        "Log level: error, warn, info or debug.",
        Owner::Agent,
    ),
    flag(
        "log-format",
        Text,
        Some("logfmt"),
        "Log format: logfmt or json.",
        Owner::Agent,
    ),
    flag(
        "http-address",
        Text,
        Some("127.0.0.1:7071"),
        "Address of the local HTTP server.",
        Owner::Sets(&[service("http_address")]),
    ),
    flag(
        "node",
        Text,
        Some("hostname"),
        "Name of this node; on Kubernetes it must match the node name.",
        Owner::Sets(&[service("node")]),
    ),
    flag(
        "config-path",
        Text,
        None,
        "Parca Agent config file whose `relabel_configs` feed the relabel processor.",
        Owner::Sets(&[processor("relabel", "relabel_configs_file")]),
    ),
    flag(
        "memlock-rlimit",
        Int,
        Some("0"),
        "RLIMIT_MEMLOCK for BPF maps in bytes; 0 means unlimited.",
        Owner::Sets(&[receiver("ebpf_cpu", "memlock_rlimit")]),
    ),
    flag(
        "mutex-profile-fraction",
        Int,
        Some("0"),
        "Go runtime setting of Parca Agent; no effect here.",
        Owner::NoEffect("a Go runtime setting; this agent is written in Rust"),
    ),
    flag(
        "block-profile-rate",
        Int,
        Some("0"),
        "Go runtime setting of Parca Agent; no effect here.",
        Owner::NoEffect("a Go runtime setting; this agent is written in Rust"),
    ),
    flag(
        "profiling-duration",
        Duration,
        Some("10s"),
        "Length of one profiling window.",
        Owner::Sets(&[receiver("ebpf_cpu", "profiling_duration")]),
    ),
    flag(
        "profiling-cpu-sampling-frequency",
        Int,
        Some("19"),
        "CPU samples per second per CPU.",
        Owner::Sets(&[receiver("ebpf_cpu", "sampling_frequency")]),
    ),
    flag(
        "profiling-perf-event-buffer-poll-interval",
        Duration,
        Some("250ms"),
        "How often the process-event ring buffer is read.",
        Owner::Sets(&[receiver("ebpf_cpu", "event_buffer_poll_interval")]),
    ),
    flag(
        "profiling-perf-event-buffer-processing-interval",
        Duration,
        Some("100ms"),
        "Parca Agent's perf buffer processing; no effect here.",
        Owner::NoEffect("process events are handled as they are read, every poll interval"),
    ),
    flag(
        "profiling-perf-event-buffer-worker-count",
        Int,
        Some("4"),
        "Parca Agent's perf buffer workers; no effect here.",
        Owner::NoEffect("one thread reads process events; samples are aggregated in BPF maps"),
    ),
    flag(
        "profiling-probabilistic-threshold",
        Int,
        Some("100"),
        "Chance in percent (1-100) that an interval is profiled; below 100, each interval is drawn and sampling pauses when it loses.",
        Owner::Sets(&[receiver("ebpf_cpu", "probabilistic_threshold")]),
    ),
    flag(
        "profiling-probabilistic-interval",
        Duration,
        Some("1m"),
        "Length of one probabilistic profiling interval.",
        Owner::Sets(&[receiver("ebpf_cpu", "probabilistic_interval")]),
    ),
    flag(
        "off-cpu-threshold",
        Probability,
        Some("0"),
        "Off-CPU profiling: the probability (0-1) that a thread going off CPU is timed and its stacks recorded with the time until it runs again; 0 is off.",
        Owner::Sets(&[receiver("ebpf_cpu", "off_cpu_threshold")]),
    ),
    flag(
        "metadata-external-labels",
        Labels,
        None,
        "Labels attached to every series, as KEY=VALUE;KEY=VALUE.",
        Owner::Sets(&[processor("metadata", "external_labels")]),
    ),
    flag(
        "metadata-container-runtime-socket-path",
        Text,
        None,
        "Socket of the container runtime, for container names (empty: the runtimes' default sockets).",
        Owner::Sets(&[processor("metadata", "container_runtime_socket")]),
    ),
    flag(
        "metadata-disable-caching",
        Bool,
        None,
        "Re-read process metadata every window.",
        Owner::Sets(&[processor("metadata", "disable_caching")]),
    ),
    flag(
        "include-env-var",
        List,
        None,
        "Environment variables of each process to label its series with, as __meta_env_var_NAME (only these are kept).",
        Owner::Sets(&[processor("metadata", "include_env_vars")]),
    ),
    flag(
        "metadata-disable-cpu-label",
        Bool,
        None,
        "Leave out the cpu sample label.",
        Owner::Sets(&[receiver("ebpf_cpu", "disable_cpu_label")]),
    ),
    flag(
        "metadata-disable-thread-id-label",
        Bool,
        None,
        "Leave out the thread_id sample label.",
        Owner::Sets(&[receiver("ebpf_cpu", "disable_thread_id_label")]),
    ),
    flag(
        "metadata-disable-thread-comm-label",
        Bool,
        None,
        "Leave out the thread_comm sample label.",
        Owner::Sets(&[receiver("ebpf_cpu", "disable_thread_comm_label")]),
    ),
    flag(
        "local-store-directory",
        Text,
        None,
        "Directory the file exporter writes pprof files to.",
        Owner::Sets(&[exporter("file", "directory")]),
    ),
    flag(
        "remote-store-address",
        Text,
        None,
        "gRPC address of the Parca server.",
        Owner::Sets(&[exporter("parca_grpc", "address")]),
    ),
    flag(
        "remote-store-bearer-token",
        Text,
        None,
        "Bearer token for the Parca server.",
        Owner::Sets(&[exporter("parca_grpc", "bearer_token")]),
    ),
    flag(
        "remote-store-bearer-token-file",
        Text,
        None,
        "File holding the bearer token; re-read when it changes.",
        Owner::Sets(&[exporter("parca_grpc", "bearer_token_file")]),
    ),
    flag(
        "remote-store-insecure",
        Bool,
        None,
        "Plaintext gRPC instead of TLS.",
        Owner::Sets(&[exporter("parca_grpc", "tls::insecure")]),
    ),
    flag(
        "remote-store-insecure-skip-verify",
        Bool,
        None,
        "Skip TLS certificate verification.",
        Owner::Sets(&[exporter("parca_grpc", "tls::insecure_skip_verify")]),
    ),
    flag(
        "remote-store-client-cert",
        Text,
        None,
        "Client certificate (PEM) for a Parca server that requires one (mutual TLS).",
        Owner::Sets(&[exporter("parca_grpc", "tls::cert_file")]),
    ),
    flag(
        "remote-store-client-key",
        Text,
        None,
        "Private key (PEM) of the client certificate.",
        Owner::Sets(&[exporter("parca_grpc", "tls::key_file")]),
    ),
    flag(
        "remote-store-grpc-headers",
        Labels,
        None,
        "gRPC headers sent with every call to the Parca server, as KEY=VALUE;KEY=VALUE.",
        Owner::Sets(&[exporter("parca_grpc", "headers")]),
    ),
    flag(
        "remote-store-batch-write-interval",
        Duration,
        Some("10s"),
        "Interval between batched writes to the Parca server.",
        Owner::Sets(&[exporter("parca_grpc", "batch_write_interval")]),
    ),
    flag(
        "remote-store-rpc-logging-enable",
        Bool,
        None,
        "Log every gRPC call.",
        Owner::Sets(&[exporter("parca_grpc", "rpc_logging")]),
    ),
    flag(
        "remote-store-rpc-unary-timeout",
        Duration,
        Some("5m"),
        "Timeout of one unary gRPC call.",
        Owner::Sets(&[exporter("parca_grpc", "rpc_unary_timeout")]),
    ),
    flag(
        "offline-mode-storage-path",
        Text,
        None,
        "Offline mode: keep windows in this directory instead of sending them.",
        Owner::Sets(&[exporter("parca_grpc", "offline_mode::storage_path")]),
    ),
    flag(
        "offline-mode-rotation-interval",
        Duration,
        Some("10m"),
        "Offline mode: how often the file being written is closed for upload.",
        Owner::Sets(&[exporter("parca_grpc", "offline_mode::rotation_interval")]),
    ),
    flag(
        "offline-mode-upload",
        Bool,
        None,
        "Send what offline mode stored to the remote store, then exit.",
        Owner::Agent,
    ),
    flag(
        "debuginfo-directories",
        List,
        Some("/usr/lib/debug"),
        "Directories searched for separate debug files, in order.",
        Owner::Sets(&[
            processor("symbolize", "debuginfo_directories"),
            exporter("parca_grpc", "debuginfo_directories"),
        ]),
    ),
    flag(
        "debuginfo-temp-dir",
        Text,
        Some("/tmp"),
        "Where stripped debuginfo is written before upload.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_temp_dir")]),
    ),
    flag(
        "debuginfo-strip",
        Bool,
        Some("true"),
        "Upload only what symbolization needs.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_strip")]),
    ),
    flag(
        "debuginfo-compress",
        Bool,
        None,
        "Compress DWARF sections before upload.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_compress")]),
    ),
    flag(
        "debuginfo-upload-disable",
        Bool,
        None,
        "Do not upload debuginfo.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_upload_disable")]),
    ),
    flag(
        "debuginfo-upload-max-parallel",
        Int,
        Some("25"),
        "Most debuginfo uploads at once.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_upload_max_parallel")]),
    ),
    flag(
        "debuginfo-upload-timeout-duration",
        Duration,
        Some("2m"),
        "Timeout of one debuginfo upload.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_upload_timeout")]),
    ),
    flag(
        "debuginfo-upload-cache-duration",
        Duration,
        Some("5m"),
        "How long upload answers are remembered.",
        Owner::Sets(&[exporter("parca_grpc", "debuginfo_upload_cache_duration")]),
    ),
    flag(
        "debuginfo-disable-caching",
        Bool,
        None,
        "Do not cache parsed debuginfo.",
        Owner::Sets(&[processor("symbolize", "disable_caching")]),
    ),
    flag(
        "symbolizer-jit-disable",
        Bool,
        None,
        "Do not symbolize JIT frames from perf maps.",
        Owner::Sets(&[processor("symbolize", "jit_disable")]),
    ),
    flag(
        "otlp-address",
        Text,
        None,
        "Endpoint the agent's own traces are sent to: host:port or an http(s):// URL.",
        Owner::Sets(&[service("traces::endpoint")]),
    ),
    flag(
        "otlp-exporter",
        Text,
        Some("grpc"),
        "Protocol of the agent's own traces: grpc or http.",
        Owner::Sets(&[service("traces::protocol")]),
    ),
    flag(
        "object-file-pool-eviction-policy",
        Text,
        Some("lru"),
        "Eviction policy of open object files.",
        Owner::Sets(&[processor("symbolize", "object_file_pool_eviction_policy")]),
    ),
    flag(
        "object-file-pool-size",
        Int,
        Some("100"),
        "Most object files kept open; 0 means no limit.",
        Owner::Sets(&[processor("symbolize", "object_file_pool_size")]),
    ),
    flag(
        "dwarf-unwinding-disable",
        Bool,
        None,
        "Unwind with frame pointers only.",
        Owner::Sets(&[receiver("ebpf_cpu", "dwarf_unwinding_disable")]),
    ),
    flag(
        "dwarf-unwinding-mixed",
        Bool,
        None,
        "Switch between .eh_frame tables and frame pointers per frame.",
        Owner::Sets(&[receiver("ebpf_cpu", "dwarf_unwinding_mixed")]),
    ),
    flag(
        "python-unwinding-disable",
        Bool,
        None,
        "Do not unwind Python frames: CPython processes show the interpreter's native frames only.",
        Owner::Sets(&[receiver("ebpf_cpu", "python_unwinding_disable")]),
    ),
    flag(
        "php-unwinding-disable",
        Bool,
        None,
        "Do not unwind PHP frames: PHP processes show the engine's native frames only (ours: Parca Agent has no PHP switch).",
        Owner::Sets(&[receiver("ebpf_cpu", "php_unwinding_disable")]),
    ),
    flag(
        "ruby-unwinding-disable",
        Bool,
        None,
        "Do not unwind Ruby frames: Ruby processes show the VM's native frames only.",
        Owner::Sets(&[receiver("ebpf_cpu", "ruby_unwinding_disable")]),
    ),
    flag(
        "v8-unwinding-disable",
        Bool,
        None,
        "Do not unwind JavaScript frames: Node.js processes show V8's native frames only, named from a perf map where the process writes one (ours: Parca Agent has no V8 switch).",
        Owner::Sets(&[receiver("ebpf_cpu", "v8_unwinding_disable")]),
    ),
    flag(
        "jvm-unwinding-disable",
        Bool,
        None,
        "Do not unwind Java frames: JVM processes show HotSpot's native frames only (ours: Parca Agent has no JVM switch).",
        Owner::Sets(&[receiver("ebpf_cpu", "jvm_unwinding_disable")]),
    ),
    flag(
        "analytics-opt-out",
        Bool,
        None,
        "Parca Agent's usage statistics; this agent sends none.",
        Owner::NoEffect("this agent sends no analytics"),
    ),
    flag(
        "telemetry-disable-panic-reporting",
        Bool,
        None,
        "Do not report panics to the Parca server.",
        Owner::Sets(&[exporter("parca_grpc", "panic_reporting_disable")]),
    ),
    flag(
        "telemetry-stderr-buffer-size-kb",
        Int,
        Some("4096"),
        "Size of the stderr tail sent with a panic report.",
        Owner::Sets(&[exporter("parca_grpc", "stderr_buffer_size_kb")]),
    ),
    flag(
        "bpf-verbose-logging",
        Bool,
        None,
        "Verbose BPF logging, with the full verifier log on errors.",
        Owner::Sets(&[receiver("ebpf_cpu", "bpf_verbose_logging")]),
    ),
    flag(
        "bpf-events-buffer-size",
        Int,
        Some("64"),
        "Size of the process-event ring buffer in 4 KiB pages (Parca Agent: 8192).",
        Owner::Sets(&[receiver("ebpf_cpu", "bpf_events_buffer_size")]),
    ),
    flag(
        "verbose-bpf-logging",
        Bool,
        None,
        "Deprecated: use --bpf-verbose-logging.",
        Owner::AliasOf("bpf-verbose-logging"),
    ),
];

/// Converts a flag's text into a config value.
pub fn parse_value(kind: ValueKind, text: &str) -> Result<Value, String> {
    match kind {
        Bool => match text {
            "true" | "" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("`{text}` is not true or false")),
        },
        Text => Ok(Value::String(text.to_owned())),
        Int => text
            .parse::<u64>()
            .map(|n| Value::Number(n.into()))
            .map_err(|_| format!("`{text}` is not a non-negative integer")),
        Probability => match text.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(Value::Number(p.into())),
            _ => Err(format!("`{text}` is not a probability from 0 to 1")),
        },
        Duration => humantime::parse_duration(text)
            .map(|_| Value::String(text.to_owned()))
            .map_err(|e| format!("`{text}` is not a duration like 10s or 250ms: {e}")),
        List => Ok(Value::Sequence(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        Labels => {
            let mut map = Mapping::new();
            for pair in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                // Not repeated: a value may be a secret (a header's).
                let (k, v) = pair
                    .split_once('=')
                    .ok_or("an entry is not KEY=VALUE (entries are separated by ';')")?;
                map.insert(
                    Value::String(k.trim().to_owned()),
                    Value::String(v.trim().to_owned()),
                );
            }
            Ok(Value::Mapping(map))
        }
    }
}

fn arg(spec: &FlagSpec) -> Arg {
    let kind = spec.kind;
    let mut help = spec.help.to_owned();
    if let Some(d) = spec.default {
        help.push_str(&format!(" [default: {d}]"));
    }
    let mut a = Arg::new(spec.name)
        .long(spec.name)
        .help(help)
        .global(true)
        .value_parser(move |s: &str| parse_value(kind, s));
    a = match kind {
        Bool => a
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
        List => a.action(ArgAction::Append).value_name("A,B,..."),
        Labels => a.action(ArgAction::Append).value_name("KEY=VALUE;..."),
        Text | Int | Probability | Duration => a.action(ArgAction::Set).value_name(match kind {
            Duration => "DURATION",
            Int => "N",
            Probability => "P",
            _ => "STRING",
        }),
    };
    if spec.name == "log-level" {
        a = a.value_parser(["error", "warn", "info", "debug"]);
    }
    if spec.name == "log-format" {
        a = a.value_parser(["logfmt", "json"]);
    }
    a
}

/// The clap command: subcommands, `--config`, and every flag of [`FLAGS`].
pub fn command() -> Command {
    let config = Arg::new("config")
        .long("config")
        .value_name("FILE")
        .global(true)
        .value_parser(clap::value_parser!(PathBuf))
        .help("Pipeline config (YAML); without it the embedded pipeline.yaml runs.");
    let mut cmd = Command::new("agent")
        .version(VERSION)
        .about("Always-on continuous profiler for Linux, built like an OpenTelemetry Collector.")
        .arg(config)
        .subcommand(
            Command::new("validate").about("Check a config and exit 0 (valid) or 1 (invalid)."),
        )
        .subcommand(
            Command::new("components")
                .about("List the compiled-in components: kind, type, stability."),
        )
        .subcommand(
            Command::new("print-config")
                .about("Print the config after env expansion, flags and defaults."),
        )
        .subcommand(Command::new("schema").about(
            "Print the JSON Schema of a pipeline config for the compiled-in components (for editors).",
        ));
    for spec in FLAGS {
        cmd = cmd.arg(arg(spec));
    }
    cmd
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the pipelines.
    Run,
    /// Validate the config.
    Validate,
    /// List components.
    Components,
    /// Print the effective config.
    PrintConfig,
    /// Print the pipeline config's JSON Schema.
    Schema,
    /// Send what offline mode stored, then exit.
    OfflineUpload,
}

/// Logging settings.
#[derive(Clone, Debug)]
pub struct Logging {
    /// error, warn, info or debug.
    pub level: String,
    /// logfmt or json.
    pub json: bool,
}

/// The parsed command line.
pub struct Cli {
    /// What to do.
    pub action: Action,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// Logging settings.
    pub logging: Logging,
    /// Config values set by flags.
    pub overrides: Vec<Override>,
    /// Notices for flags that have no effect, logged once each.
    pub notices: Vec<String>,
}

fn given(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Two values of a repeated flag as one: lists concatenated, mappings
/// merged (the later wins a key), else the later.
fn joined(first: Value, later: Value) -> Value {
    match (first, later) {
        (Value::Sequence(mut a), Value::Sequence(b)) => {
            a.extend(b);
            Value::Sequence(a)
        }
        (Value::Mapping(mut a), Value::Mapping(b)) => {
            a.extend(b);
            Value::Mapping(a)
        }
        (_, later) => later,
    }
}

/// Interprets parsed arguments.
pub fn from_matches(top: &ArgMatches) -> Cli {
    let (action, m) = match top.subcommand() {
        Some(("validate", m)) => (Action::Validate, m),
        Some(("components", m)) => (Action::Components, m),
        Some(("print-config", m)) => (Action::PrintConfig, m),
        Some(("schema", m)) => (Action::Schema, m),
        _ if top.get_one::<Value>("offline-mode-upload") == Some(&Value::Bool(true)) => {
            (Action::OfflineUpload, top)
        }
        _ => (Action::Run, top),
    };
    let text = |id: &str, default: &str| {
        m.get_one::<String>(id)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let mut cli = Cli {
        action,
        config: m.get_one::<PathBuf>("config").cloned(),
        logging: Logging {
            level: text("log-level", "info"),
            json: text("log-format", "logfmt") == "json",
        },
        overrides: Vec::new(),
        notices: Vec::new(),
    };
    for spec in FLAGS {
        if !given(m, spec.name) {
            continue;
        }
        let (spec, flag) = match spec.owner {
            Owner::AliasOf(target) => {
                let target = FLAGS
                    .iter()
                    .find(|f| f.name == target)
                    .expect("alias target exists");
                cli.notices.push(format!(
                    "--{} is deprecated; use --{}",
                    spec.name, target.name
                ));
                (target, format!("--{}", spec.name))
            }
            _ => (spec, format!("--{}", spec.name)),
        };
        match spec.owner {
            Owner::Agent | Owner::AliasOf(_) => {}
            Owner::NoEffect(why) => cli.notices.push(format!("{flag} has no effect: {why}")),
            Owner::Sets(targets) => {
                let given = m
                    .get_many::<Value>(&flag[2..])
                    .expect("a given flag has a parsed value");
                let value = given
                    .cloned()
                    .reduce(joined)
                    .expect("a given flag has a value");
                cli.overrides.push(Override {
                    flag,
                    targets: targets.to_vec(),
                    value,
                });
            }
        }
    }
    cli
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut all = vec!["agent"];
        all.extend_from_slice(args);
        from_matches(&command().try_get_matches_from(all).unwrap())
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn flags_become_overrides_of_their_owners() {
        let cli = parse(&[
            "print-config",
            "--node=n1",
            "--local-store-directory",
            "/tmp/p",
            "--metadata-external-labels=a=1;b=2",
            "--remote-store-insecure",
            "--debuginfo-strip=false",
            "--analytics-opt-out",
            "--otlp-address=x:4317",
            "--verbose-bpf-logging",
        ]);
        assert_eq!(cli.action, Action::PrintConfig);
        let get = |flag: &str| {
            cli.overrides
                .iter()
                .find(|o| o.flag == flag)
                .map(|o| o.value.clone())
        };
        assert_eq!(get("--node"), Some(Value::String("n1".into())));
        assert_eq!(
            get("--local-store-directory"),
            Some(Value::String("/tmp/p".into()))
        );
        assert_eq!(
            get("--metadata-external-labels"),
            Some(serde_yaml::from_str("{a: '1', b: '2'}").unwrap())
        );
        assert_eq!(get("--remote-store-insecure"), Some(Value::Bool(true)));
        assert_eq!(get("--debuginfo-strip"), Some(Value::Bool(false)));
        assert_eq!(get("--verbose-bpf-logging"), Some(Value::Bool(true)));
        assert!(cli
            .notices
            .iter()
            .any(|n| n.contains("--analytics-opt-out has no effect")));
        assert!(cli
            .notices
            .iter()
            .any(|n| n.contains("--verbose-bpf-logging is deprecated")));
        assert_eq!(get("--otlp-address"), Some(Value::String("x:4317".into())));
    }

    #[test]
    fn repeated_list_and_label_flags_add_up() {
        let cli = parse(&[
            "print-config",
            "--include-env-var=APP_VERSION,REGION",
            "--include-env-var",
            "TEAM",
            "--remote-store-grpc-headers=x-tenant=a;x-org=o",
            "--remote-store-grpc-headers=x-tenant=b",
        ]);
        let get = |flag: &str| {
            let mut found = cli.overrides.iter().filter(|o| o.flag == flag);
            let value = found.next().map(|o| o.value.clone());
            assert!(found.next().is_none(), "one override per flag");
            value
        };
        assert_eq!(
            get("--include-env-var"),
            Some(serde_yaml::from_str("[APP_VERSION, REGION, TEAM]").unwrap())
        );
        assert_eq!(
            get("--remote-store-grpc-headers"),
            Some(serde_yaml::from_str("{x-tenant: b, x-org: o}").unwrap())
        );
    }

    #[test]
    fn flag_defaults_are_the_component_defaults() {
        let registry = crate::components::registry();
        for spec in FLAGS {
            let (Owner::Sets(targets), Some(default)) = (spec.owner, spec.default) else {
                continue;
            };
            for target in targets {
                let OverrideTarget::Component {
                    kind,
                    type_name,
                    field,
                } = target
                else {
                    continue;
                };
                let Some(factory) = registry.get(*kind, type_name) else {
                    continue;
                };
                let defaults = factory.default_config();
                let value = field.split("::").fold(&defaults, |v, key| &v[key]);
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Sequence(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    other => panic!("--{}: unexpected default {other:?}", spec.name),
                };
                let same = match spec.kind {
                    Duration => {
                        humantime::parse_duration(&text).ok()
                            == humantime::parse_duration(default).ok()
                    }
                    Probability => text.parse::<f64>().ok() == default.parse::<f64>().ok(),
                    _ => text == default,
                };
                assert!(
                    same,
                    "--{} documents {default} but {type_name}::{field} defaults to {text}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn unset_flags_override_nothing() {
        let cli = parse(&[]);
        assert_eq!(cli.action, Action::Run);
        assert!(cli.overrides.is_empty());
        assert_eq!(cli.logging.level, "info");
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        for args in [
            &["--profiling-duration", "ten"][..],
            &["--profiling-cpu-sampling-frequency", "-1"],
            &["--metadata-external-labels", "novalue"],
            &["--remote-store-insecure=maybe"],
            &["--log-level", "trace"],
        ] {
            let mut all = vec!["agent"];
            all.extend_from_slice(args);
            assert!(command().try_get_matches_from(all).is_err(), "{args:?}");
        }
    }

    #[test]
    fn every_flag_is_in_the_readme_table() {
        let readme = include_str!("../README.md");
        for spec in FLAGS {
            assert!(
                readme.contains(&format!("| `--{}` |", spec.name)),
                "README flag table lacks --{}",
                spec.name
            );
        }
    }

    /// Parca Agent's flag names (from its `--help`).
    const PARCA_AGENT_FLAGS: &[&str] = &[
        "log-level",
        "log-format",
        "http-address",
        "node",
        "config-path",
        "memlock-rlimit",
        "mutex-profile-fraction",
        "block-profile-rate",
        "profiling-duration",
        "profiling-cpu-sampling-frequency",
        "profiling-perf-event-buffer-poll-interval",
        "profiling-perf-event-buffer-processing-interval",
        "profiling-perf-event-buffer-worker-count",
        "profiling-probabilistic-threshold",
        "profiling-probabilistic-interval",
        "off-cpu-threshold",
        "metadata-external-labels",
        "metadata-container-runtime-socket-path",
        "metadata-disable-caching",
        "include-env-var",
        "metadata-disable-cpu-label",
        "metadata-disable-thread-id-label",
        "metadata-disable-thread-comm-label",
        "local-store-directory",
        "remote-store-address",
        "remote-store-bearer-token",
        "remote-store-bearer-token-file",
        "remote-store-insecure",
        "remote-store-insecure-skip-verify",
        "remote-store-client-cert",
        "remote-store-client-key",
        "remote-store-grpc-headers",
        "remote-store-batch-write-interval",
        "remote-store-rpc-logging-enable",
        "remote-store-rpc-unary-timeout",
        "offline-mode-storage-path",
        "offline-mode-rotation-interval",
        "offline-mode-upload",
        "debuginfo-directories",
        "debuginfo-temp-dir",
        "debuginfo-strip",
        "debuginfo-compress",
        "debuginfo-upload-disable",
        "debuginfo-upload-max-parallel",
        "debuginfo-upload-timeout-duration",
        "debuginfo-upload-cache-duration",
        "debuginfo-disable-caching",
        "symbolizer-jit-disable",
        "otlp-address",
        "otlp-exporter",
        "object-file-pool-eviction-policy",
        "object-file-pool-size",
        "dwarf-unwinding-disable",
        "dwarf-unwinding-mixed",
        "python-unwinding-disable",
        "ruby-unwinding-disable",
        "analytics-opt-out",
        "telemetry-disable-panic-reporting",
        "telemetry-stderr-buffer-size-kb",
        "bpf-verbose-logging",
        "bpf-events-buffer-size",
        "verbose-bpf-logging",
    ];

    /// Flags of ours, not Parca Agent's (their help says so).
    const OUR_FLAGS: &[&str] = &[
        "php-unwinding-disable",
        "v8-unwinding-disable",
        "jvm-unwinding-disable",
    ];

    #[test]
    fn every_parca_agent_flag_is_here() {
        for name in PARCA_AGENT_FLAGS {
            assert!(
                FLAGS.iter().any(|f| f.name == *name),
                "missing Parca Agent flag --{name}"
            );
        }
        for name in OUR_FLAGS {
            let ours = FLAGS.iter().find(|f| f.name == *name).unwrap();
            assert!(
                ours.help.contains("ours"),
                "--{name} does not say it is ours"
            );
        }
        assert_eq!(FLAGS.len(), PARCA_AGENT_FLAGS.len() + OUR_FLAGS.len());
    }
}
