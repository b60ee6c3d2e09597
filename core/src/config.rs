//! Loading and validating the pipeline config (OpenTelemetry Collector layout).
//!
//! Every problem is reported with its key path (`exporters::file::directory`)
//! and all problems are reported at once.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::component::Kind;
use crate::registry::{ParsedConfig, Registry};

/// One problem in a config, with the key path where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `::`-separated key path; empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// Builds an error.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Appends `field` (already `::`-separated) to `prefix`.
pub fn join_path(prefix: &str, field: &str) -> String {
    match (prefix.is_empty(), field.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => field.to_owned(),
        (false, false) => format!("{prefix}::{field}"),
    }
}

/// The key path of a serde error, `::`-separated.
fn serde_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|s| match s {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("::")
}

/// Deserializes `value` into `T`, turning the error into a [`ConfigError`] under `prefix`.
pub fn deserialize_at<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = join_path(prefix, &serde_path(e.path()));
        ConfigError::new(path, e.into_inner().to_string())
    })
}

/// A component id: `type` or `type/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentId {
    /// The component type (`file`).
    pub type_name: String,
    /// The instance name (`debug` in `file/debug`).
    pub name: Option<String>,
}

impl ComponentId {
    /// Parses `type[/name]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (type_name, name) = match s.split_once('/') {
            Some((t, n)) => (t, Some(n)),
            None => (s, None),
        };
        if type_name.is_empty()
            || !type_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "`{s}` is not a valid component id: the type must be lowercase letters, digits and `_` (`type` or `type/name`)"
            ));
        }
        if let Some(n) = name {
            if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(format!(
                    "`{s}` is not a valid component id: the name after `/` must be non-empty, without spaces or `/`"
                ));
            }
        }
        Ok(Self {
            type_name: type_name.to_owned(),
            name: name.map(str::to_owned),
        })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{n}", self.type_name),
            None => f.write_str(&self.type_name),
        }
    }
}

/// One pipeline: receivers fan out into processors (in order) then exporters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Receiver ids.
    pub receivers: Vec<String>,
    /// Processor ids, run in this order.
    pub processors: Vec<String>,
    /// Exporter ids.
    pub exporters: Vec<String>,
}

/// The `service` section.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Name of this node (`--node`); must match the Kubernetes node name there.
    pub node: String,
    /// Address of the local HTTP server (`--http-address`).
    pub http_address: String,
    /// How long shutdown may take to flush the last window before exiting anyway.
    #[schemars(with = "crate::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The agent's own traces.
    pub traces: TracesConfig,
    /// Pipelines by id (`profiles` or `profiles/NAME`).
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// How the agent's own traces leave it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TraceProtocol {
    /// OTLP/gRPC `TraceService/Export`.
    #[default]
    Grpc,
    /// OTLP/HTTP `POST /v1/traces` (protobuf).
    Http,
}

/// The agent's own OpenTelemetry traces: a span per window and per stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Where spans go (`--otlp-address`): `host:port` (plaintext) or an
    /// `http(s)://` URL; empty: no traces. A password in it is shown
    /// redacted.
    pub endpoint: crate::Endpoint,
    /// `grpc` or `http` (`--otlp-exporter`).
    pub protocol: TraceProtocol,
}

/// This machine's host name, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            node: hostname(),
            http_address: "127.0.0.1:7071".to_owned(),
            shutdown_timeout: Duration::from_secs(30),
            traces: TracesConfig::default(),
            pipelines: BTreeMap::new(),
        }
    }
}

/// The most batches an exporter's queue may hold (each a window: far past
/// any real backlog).
pub const MAX_QUEUE_SIZE: usize = 1 << 16;

/// The bounded queue in front of every exporter (`sending_queue` in its config).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SendingQueue {
    /// Batches that may wait; when full, new batches are dropped and counted.
    pub queue_size: usize,
    /// Wait instead of dropping when full. This stalls the pipelines feeding
    /// the exporter, and so their receivers: for converting files, not for
    /// live profiling.
    pub block_on_overflow: bool,
}

impl Default for SendingQueue {
    fn default() -> Self {
        Self {
            queue_size: 16,
            block_on_overflow: false,
        }
    }
}

/// A configured component instance.
pub struct ConfiguredComponent {
    /// Its kind.
    pub kind: Kind,
    /// Its id.
    pub id: ComponentId,
    /// Its parsed config.
    pub config: ParsedConfig,
    /// For exporters: their queue.
    pub queue: Option<SendingQueue>,
}

/// A validated config.
pub struct AgentConfig {
    /// Every configured component, in file order per section.
    pub components: Vec<ConfiguredComponent>,
    /// The service section.
    pub service: ServiceConfig,
    /// Problems that do not stop the agent (unused components).
    pub warnings: Vec<String>,
}

impl AgentConfig {
    /// The component of `kind` with id `id`.
    pub fn component(&self, kind: Kind, id: &str) -> Option<&ConfiguredComponent> {
        self.components
            .iter()
            .find(|c| c.kind == kind && c.id.to_string() == id)
    }

    /// The config with env expanded, flags applied and defaults filled in.
    pub fn effective(&self) -> Value {
        let mut root = Mapping::new();
        for kind in [Kind::Receiver, Kind::Processor, Kind::Exporter] {
            let mut section = Mapping::new();
            for c in self.components.iter().filter(|c| c.kind == kind) {
                let mut value = c.config.effective.clone();
                if let (Some(q), Value::Mapping(m)) = (&c.queue, &mut value) {
                    m.insert(
                        "sending_queue".into(),
                        serde_yaml::to_value(q).unwrap_or(Value::Null),
                    );
                }
                section.insert(c.id.to_string().into(), value);
            }
            root.insert(kind.section().into(), Value::Mapping(section));
        }
        root.insert(
            "service".into(),
            serde_yaml::to_value(&self.service).unwrap_or(Value::Null),
        );
        Value::Mapping(root)
    }
}

/// Where a command-line flag writes its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverrideTarget {
    /// A key of the `service` section.
    Service(&'static str),
    /// A key of every configured component of this kind and type.
    Component {
        /// Kind.
        kind: Kind,
        /// Type name.
        type_name: &'static str,
        /// Key inside the component's config (`::`-separated for nesting).
        field: &'static str,
    },
}

/// A value given on the command line that replaces config values.
#[derive(Clone, Debug)]
pub struct Override {
    /// The flag, for error messages (`--local-store-directory`).
    pub flag: String,
    /// Where it goes: every target that exists in the config gets it.
    pub targets: Vec<OverrideTarget>,
    /// The value.
    pub value: Value,
}

/// Expands `${env:NAME}`, `${env:NAME:-default}` and `$$` in every string.
///
/// A string that is exactly one reference takes the variable's value as a
/// YAML scalar, so `${env:PORT}` can fill an integer key.
pub fn expand_env(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand_str(s, lookup) {
            Ok((expanded, whole)) => {
                *value = if whole {
                    match serde_yaml::from_str::<Value>(&expanded) {
                        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
                        _ => Value::String(expanded),
                    }
                } else {
                    Value::String(expanded)
                }
            }
            Err(message) => errors.push(ConfigError::new(path, message)),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &join_path(path, &i.to_string()), lookup, errors);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = key_text(k);
                expand_env(v, &join_path(path, &key), lookup, errors);
            }
        }
        Value::Tagged(t) => expand_env(&mut t.value, path, lookup, errors),
        _ => {}
    }
}

/// Expands one string; also says whether it was exactly one reference.
fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut references = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
            let body = &r[..end];
            let spec = body.strip_prefix("env:").ok_or_else(|| {
                format!("`${{{body}}}` is not supported: use `${{env:NAME}}` or `${{env:NAME:-default}}` (`$$` for a literal `$`)")
            })?;
            let (name, default) = match spec.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (spec, None),
            };
            if default.is_some_and(|d| d.contains("${")) {
                // `${env:A:-${env:B:-x}}`: the first `}` ends the outer
                // reference, so the default would be a mangled literal.
                return Err(format!(
                    "`{s}`: a default cannot hold another `${{env:…}}` reference; give a literal default"
                ));
            }
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{body}}}`: `{name}` is not a valid environment variable name"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (give a default with `${{env:{name}:-default}}`)"
                    ))
                }
            }
            references += 1;
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    let whole =
        references == 1 && s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
    Ok((out, whole))
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// Suggests the closest of `candidates` to `name`, if any is close.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn suggestion(name: &str, candidates: &[String]) -> String {
    match did_you_mean(name, candidates.iter().map(String::as_str)) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

const TOP_LEVEL_KEYS: [&str; 4] = ["receivers", "processors", "exporters", "service"];

/// Parses, expands, overrides and validates a config document.
pub fn load(
    text: &str,
    overrides: &[Override],
    registry: &Registry,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigErrors> {
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Mapping::new()),
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError::new(
                "",
                format!("invalid YAML: {e}"),
            )]));
        }
    };
    let mut errors = Vec::new();
    expand_env(&mut root, "", lookup, &mut errors);
    let Value::Mapping(mut root) = root else {
        return Err(ConfigErrors(vec![ConfigError::new(
            "",
            "the config must be a mapping with `receivers`, `processors`, `exporters` and `service`",
        )]));
    };
    for key in root.keys() {
        let key = key_text(key);
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            let hint = suggestion(&key, &TOP_LEVEL_KEYS.map(String::from));
            errors.push(ConfigError::new(
                key.clone(),
                format!(
                    "unknown top-level key `{key}` (expected one of receivers, processors, exporters, service){hint}"
                ),
            ));
        }
    }
    // Old key names are moved first, so that a flag setting the new key
    // overrides the file whichever name the file uses.
    let mut warnings = Vec::new();
    move_renamed_keys(&mut root, registry, &mut errors, &mut warnings);
    apply_overrides(&mut root, overrides, registry, &mut errors);

    let mut components = Vec::new();
    for kind in [Kind::Receiver, Kind::Processor, Kind::Exporter] {
        let section = kind.section();
        let entries = match root.get(section) {
            None | Some(Value::Null) => continue,
            Some(Value::Mapping(m)) => m.clone(),
            Some(_) => {
                errors.push(ConfigError::new(
                    section,
                    format!("must be a mapping of {} ids to their config", kind.name()),
                ));
                continue;
            }
        };
        for (key, value) in entries {
            let key = key_text(&key);
            let path = join_path(section, &key);
            let id = match ComponentId::parse(&key) {
                Ok(id) => id,
                Err(message) => {
                    errors.push(ConfigError::new(path, message));
                    continue;
                }
            };
            let Some(factory) = registry.get(kind, &id.type_name) else {
                errors.push(ConfigError::new(
                    path,
                    unknown_type_message(registry, kind, &id.type_name),
                ));
                continue;
            };
            let (value, queue) = if kind == Kind::Exporter {
                match split_sending_queue(value, &path) {
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            } else {
                (value, None)
            };
            match factory.parse(&value, &path) {
                Ok(config) => components.push(ConfiguredComponent {
                    kind,
                    id,
                    config,
                    queue,
                }),
                Err(mut e) => errors.append(&mut e),
            }
        }
    }

    let service = root
        .get("service")
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()));
    let service: ServiceConfig = match deserialize_at(service, "service") {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            return Err(ConfigErrors(errors));
        }
    };
    if service
        .http_address
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        errors.push(ConfigError::new(
            "service::http_address",
            format!(
                "`{}` is not an address like 127.0.0.1:7071",
                service.http_address
            ),
        ));
    }
    let mut checks = crate::bounds::Checks::default();
    checks.duration(
        "service::shutdown_timeout",
        service.shutdown_timeout,
        Duration::from_secs(1),
        crate::bounds::MAX_DURATION,
    );
    errors.extend(
        checks
            .finish()
            .into_iter()
            .map(|e| ConfigError::new(e.field, e.message)),
    );
    let endpoint = service.traces.endpoint.trim();
    if !endpoint.is_empty() {
        let scheme_ok = match endpoint.split_once("://") {
            Some((scheme, _)) => scheme == "http" || scheme == "https",
            None => endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
        };
        if !scheme_ok {
            errors.push(ConfigError::new(
                "service::traces::endpoint",
                format!("`{endpoint}` is neither host:port nor an http:// or https:// URL"),
            ));
        }
    }
    check_pipelines(&root, &service, &components, &mut errors, &mut warnings);
    if errors.is_empty() {
        Ok(AgentConfig {
            components,
            service,
            warnings,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

fn unknown_type_message(registry: &Registry, kind: Kind, type_name: &str) -> String {
    if let Some(absent) = registry.absent_reason(kind, type_name) {
        return format!(
            "{kind} type `{type_name}` is not in this build ({})",
            absent.reason
        );
    }
    let known: Vec<String> = registry
        .type_names(kind)
        .into_iter()
        .map(String::from)
        .collect();
    format!(
        "unknown {kind} type `{type_name}`{} (this build has: {})",
        suggestion(type_name, &known),
        known.join(", ")
    )
}

/// Takes the core-handled `sending_queue` key out of an exporter's config.
fn split_sending_queue(
    value: Value,
    path: &str,
) -> Result<(Value, Option<SendingQueue>), ConfigError> {
    let Value::Mapping(mut m) = value else {
        return Ok((value, Some(SendingQueue::default())));
    };
    let queue = match m.remove("sending_queue") {
        Some(q) => {
            let q: SendingQueue = deserialize_at(q, &join_path(path, "sending_queue"))?;
            let mut checks = crate::bounds::Checks::default();
            checks.number("queue_size", q.queue_size, 1, MAX_QUEUE_SIZE);
            if let Some(e) = checks.finish().pop() {
                return Err(ConfigError::new(
                    join_path(path, &format!("sending_queue::{}", e.field)),
                    e.message,
                ));
            }
            q
        }
        None => SendingQueue::default(),
    };
    Ok((Value::Mapping(m), Some(queue)))
}

fn apply_overrides(
    root: &mut Mapping,
    overrides: &[Override],
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
) {
    for o in overrides {
        let mut applied = false;
        let mut reasons = Vec::new();
        for target in &o.targets {
            match target {
                OverrideTarget::Service(field) => {
                    let service = root
                        .entry("service".into())
                        .or_insert_with(|| Value::Mapping(Mapping::new()));
                    set_field(service, field, o.value.clone());
                    applied = true;
                }
                OverrideTarget::Component {
                    kind,
                    type_name,
                    field,
                } => {
                    let target = format!("{}::{type_name}::{field}", kind.section());
                    if registry.get(*kind, type_name).is_none() {
                        let why = unknown_type_message(registry, *kind, type_name);
                        reasons.push(format!("it sets {target}, but {why}"));
                        continue;
                    }
                    let mut found = false;
                    if let Some(Value::Mapping(section)) = root.get_mut(kind.section()) {
                        for (key, value) in section.iter_mut() {
                            let matches = ComponentId::parse(&key_text(key))
                                .is_ok_and(|id| id.type_name == *type_name);
                            if matches {
                                if value.is_null() {
                                    *value = Value::Mapping(Mapping::new());
                                }
                                set_field(value, field, o.value.clone());
                                found = true;
                            }
                        }
                    }
                    if found {
                        applied = true;
                    } else {
                        reasons.push(format!(
                            "it sets {target}, but the config has no `{type_name}` {}",
                            kind.name()
                        ));
                    }
                }
            }
        }
        if !applied {
            errors.push(ConfigError::new(
                "",
                format!("flag {} has no effect: {}", o.flag, reasons.join("; ")),
            ));
        }
    }
}

/// Moves each component's old key names (its factory's `RENAMED_KEYS`) to
/// their new place, with a warning; an old key given with its new one is
/// an error (a null old key is just dropped).
fn move_renamed_keys(
    root: &mut Mapping,
    registry: &Registry,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) {
    for kind in [Kind::Receiver, Kind::Processor, Kind::Exporter] {
        let section = kind.section();
        let Some(Value::Mapping(entries)) = root.get_mut(section) else {
            continue;
        };
        for (key, value) in entries.iter_mut() {
            let key = key_text(key);
            let Some(factory) = ComponentId::parse(&key)
                .ok()
                .and_then(|id| registry.get(kind, &id.type_name))
            else {
                continue;
            };
            for (old, new) in factory.renamed_keys() {
                let path = join_path(&join_path(section, &key), old);
                match move_renamed_key(value, old, new) {
                    Ok(true) => warnings.push(format!(
                        "{path} is the old name of {}; it still works",
                        join_path(&join_path(section, &key), new)
                    )),
                    Ok(false) => {}
                    Err(e) => errors.push(ConfigError::new(path, e)),
                }
            }
        }
    }
}

/// Moves the value at `old` (a `::` path) to `new` in a component's config,
/// for a key that was renamed: true when it moved; both given is an error.
fn move_renamed_key(config: &mut Value, old: &str, new: &str) -> Result<bool, String> {
    let (parent, last) = old.rsplit_once("::").unwrap_or(("", old));
    let mut current = &mut *config;
    for part in parent.split("::").filter(|p| !p.is_empty()) {
        match current.get_mut(part) {
            Some(next) => current = next,
            None => return Ok(false),
        }
    }
    let Some(moved) = current.as_mapping_mut().and_then(|m| m.remove(last)) else {
        return Ok(false);
    };
    if moved.is_null() {
        return Ok(false);
    }
    let mut target = &*config;
    for (i, part) in new.split("::").enumerate() {
        if !target.is_mapping() && !target.is_null() {
            let parent = new.split("::").take(i).collect::<Vec<_>>().join("::");
            return Err(format!(
                "is the old name of {new}, but {parent} is not a mapping"
            ));
        }
        match target.get(part) {
            Some(next) => target = next,
            None => {
                set_field(config, new, moved);
                return Ok(true);
            }
        }
    }
    if !target.is_null() {
        return Err(format!("is the old name of {new}; give one of them"));
    }
    set_field(config, new, moved);
    Ok(true)
}

/// Sets a `::`-separated field inside a mapping, creating mappings on the way.
fn set_field(target: &mut Value, field: &str, value: Value) {
    let mut current = target;
    for part in field.split("::") {
        if !current.is_mapping() {
            *current = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = current else {
            unreachable!("made a mapping just above")
        };
        current = m.entry(part.into()).or_insert(Value::Null);
    }
    *current = value;
}

fn check_pipelines(
    root: &Mapping,
    service: &ServiceConfig,
    components: &[ConfiguredComponent],
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) {
    if service.pipelines.is_empty() {
        errors.push(ConfigError::new(
            "service::pipelines",
            "no pipelines defined; add e.g. `profiles: {receivers: [...], exporters: [...]}`",
        ));
    }
    // Ids written in each section, valid or not, so a reference to a
    // component that failed to parse is not reported twice.
    let written = |kind: Kind| -> Vec<String> {
        match root.get(kind.section()) {
            Some(Value::Mapping(m)) => m.keys().map(key_text).collect(),
            _ => Vec::new(),
        }
    };
    let mut used: HashSet<(Kind, String)> = HashSet::new();
    for (pid, p) in &service.pipelines {
        let ppath = format!("service::pipelines::{pid}");
        let valid_id = pid == "profiles"
            || pid
                .strip_prefix("profiles/")
                .is_some_and(|n| !n.is_empty() && !n.contains(char::is_whitespace));
        if !valid_id {
            errors.push(ConfigError::new(
                &ppath,
                format!("`{pid}` is not a pipeline id: only profiles pipelines exist (`profiles` or `profiles/NAME`)"),
            ));
        }
        for (kind, ids) in [
            (Kind::Receiver, &p.receivers),
            (Kind::Processor, &p.processors),
            (Kind::Exporter, &p.exporters),
        ] {
            let lpath = format!("{ppath}::{}", kind.section());
            if ids.is_empty() && kind != Kind::Processor {
                errors.push(ConfigError::new(
                    &lpath,
                    format!("a pipeline needs at least one {}", kind.name()),
                ));
            }
            let configured = written(kind);
            let mut seen = HashSet::new();
            for id in ids {
                if !seen.insert(id) {
                    errors.push(ConfigError::new(&lpath, format!("`{id}` is listed twice")));
                    continue;
                }
                used.insert((kind, id.clone()));
                if configured.contains(id) {
                    continue;
                }
                let elsewhere = [Kind::Receiver, Kind::Processor, Kind::Exporter]
                    .into_iter()
                    .find(|k| *k != kind && written(*k).contains(id));
                let hint = match elsewhere {
                    Some(k) => format!("; `{id}` is configured as a {k}"),
                    None => suggestion(id, &configured),
                };
                errors.push(ConfigError::new(
                    &lpath,
                    format!("`{id}` is not configured under `{}`{hint}", kind.section()),
                ));
            }
        }
    }
    for c in components {
        if !used.contains(&(c.kind, c.id.to_string())) {
            warnings.push(format!(
                "{}::{} is configured but no pipeline uses it",
                c.kind.section(),
                c.id
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DIR" => Some("/data".into()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    fn expand(s: &str) -> Result<Value, Vec<ConfigError>> {
        let mut v = Value::String(s.into());
        let mut errors = Vec::new();
        expand_env(&mut v, "x", &env, &mut errors);
        if errors.is_empty() {
            Ok(v)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn env_expansion() {
        assert_eq!(
            expand("${env:DIR}/p").unwrap(),
            Value::String("/data/p".into())
        );
        assert_eq!(
            expand("${env:PORT}").unwrap(),
            serde_yaml::from_str::<Value>("8080").unwrap()
        );
        assert_eq!(
            expand("${env:NOPE:-7}").unwrap(),
            serde_yaml::from_str::<Value>("7").unwrap()
        );
        assert_eq!(expand("a$$b").unwrap(), Value::String("a$b".into()));
        assert_eq!(
            expand("$$${env:DIR}").unwrap(),
            Value::String("$/data".into())
        );
        assert_eq!(expand("cost $5").unwrap(), Value::String("cost $5".into()));
        for bad in [
            "${env:DIR",
            "${DIR}",
            "${env:}",
            "${env:1X}",
            "${env:NOPE}",
            "${env:A-B}",
            // Nested: never a directory named `${env:B:-/x}`.
            "${env:NOPE:-${env:ALSO_NOPE:-/x}}",
            "${env:DIR:-${env:PORT}}",
        ] {
            let e = expand(bad).unwrap_err();
            assert_eq!(e[0].path, "x", "{bad}");
        }
    }

    #[test]
    fn component_ids() {
        assert_eq!(ComponentId::parse("file").unwrap().to_string(), "file");
        assert_eq!(
            ComponentId::parse("file/debug").unwrap().name.as_deref(),
            Some("debug")
        );
        for bad in ["", "File", "file/", "file/a b", "/x", "a/b/c"] {
            assert!(ComponentId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("fiel", ["file", "pprof"]), Some("file"));
        assert_eq!(did_you_mean("zzz", ["file", "pprof"]), None);
    }

    #[test]
    fn renamed_keys_move_once_and_conflicts_are_named() {
        let yaml = |text: &str| -> Value { serde_yaml::from_str(text).unwrap() };
        let mut config = yaml("{insecure: true, other: 1}");
        assert_eq!(
            move_renamed_key(&mut config, "insecure", "tls::insecure"),
            Ok(true)
        );
        assert_eq!(config, yaml("{other: 1, tls: {insecure: true}}"));
        // Absent, or null: nothing to move.
        assert_eq!(
            move_renamed_key(&mut config, "insecure", "tls::insecure"),
            Ok(false)
        );
        let mut config = yaml("{insecure: ~, tls: {insecure: true}}");
        assert_eq!(
            move_renamed_key(&mut config, "insecure", "tls::insecure"),
            Ok(false)
        );
        assert_eq!(config, yaml("{tls: {insecure: true}}"));
        // Both: an error, whatever the values.
        let mut config = yaml("{insecure: true, tls: {insecure: true}}");
        assert!(move_renamed_key(&mut config, "insecure", "tls::insecure")
            .unwrap_err()
            .contains("give one of them"));
        // The new key's parent is not a mapping: said, not overwritten.
        let mut config = yaml("{insecure: true, tls: true}");
        assert!(move_renamed_key(&mut config, "insecure", "tls::insecure")
            .unwrap_err()
            .contains("tls is not a mapping"));
        // A whole block.
        let mut config = yaml("{retry: {max_interval: 9s}}");
        assert_eq!(
            move_renamed_key(&mut config, "retry", "retry_on_failure"),
            Ok(true)
        );
        assert_eq!(config, yaml("{retry_on_failure: {max_interval: 9s}}"));
    }
}
