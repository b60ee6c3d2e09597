//! `relabel` processor: Prometheus `relabel_configs`, with Prometheus's
//! semantics, defaults and validation, applied once per series — or once per
//! (series, thread, CPU) when a rule reads `__meta_thread_comm`,
//! `__meta_thread_id` or `__meta_cpu`. Afterwards
//! labels starting with `__` are removed (`__name__` stays); a series that a
//! rule drops loses its samples, which are counted.

use std::path::PathBuf;

use agent_core::labels::{self, GO_LABEL_PREFIX};
use agent_core::telemetry::Counter;
use agent_core::{
    is_internal_label, is_label_name, BuildContext, ComponentConfig, ComponentError, Factory,
    FieldError, LabelSet, LabelUse, Processor, ProfileBatch, Stability,
};
use md5::{Digest, Md5};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a rule does.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Sets `target_label` to `replacement` expanded with the regex's groups.
    #[default]
    Replace,
    /// Keeps the series when the regex matches.
    Keep,
    /// Drops the series when the regex matches.
    Drop,
    /// Keeps the series when the joined source equals `target_label`'s value.
    KeepEqual,
    /// Drops the series when the joined source equals `target_label`'s value.
    DropEqual,
    /// Sets `target_label` to the md5 hash of the source modulo `modulus`.
    HashMod,
    /// Copies labels whose name matches to the name `replacement` gives.
    LabelMap,
    /// Removes labels whose name matches.
    LabelDrop,
    /// Removes labels whose name does not match.
    LabelKeep,
    /// Sets `target_label` to the source in lower case.
    Lowercase,
    /// Sets `target_label` to the source in upper case.
    Uppercase,
}

const DEFAULT_SEPARATOR: &str = ";";
const DEFAULT_REGEX: &str = "(.*)";
const DEFAULT_REPLACEMENT: &str = "$1";

fn default_separator() -> String {
    DEFAULT_SEPARATOR.into()
}
fn default_regex() -> String {
    DEFAULT_REGEX.into()
}
fn default_replacement() -> String {
    DEFAULT_REPLACEMENT.into()
}

/// One rule, as in Prometheus's `relabel_config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfig {
    /// Labels whose values are joined with `separator` into the source.
    #[serde(default)]
    pub source_labels: Vec<String>,
    /// Joins the source values.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Matched against the source, fully anchored.
    #[serde(default = "default_regex")]
    pub regex: String,
    /// For `hashmod`.
    #[serde(default)]
    pub modulus: u64,
    /// The label written by `replace`, `hashmod`, `lowercase`, `uppercase`,
    /// compared by `keepequal` and `dropequal`.
    #[serde(default)]
    pub target_label: String,
    /// Written by `replace` and `labelmap`; `$1`, `${1}`, `$name` expand.
    #[serde(default = "default_replacement")]
    pub replacement: String,
    /// What the rule does.
    #[serde(default)]
    pub action: Action,
}

/// A Parca Agent config file (`--config-path`): `relabel_configs` at the top.
#[derive(Debug, Deserialize)]
struct ParcaAgentConfig {
    #[serde(default)]
    relabel_configs: Vec<RelabelConfig>,
}

/// Config of the `relabel` processor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RelabelProcessorConfig {
    /// The rules, applied in order.
    pub relabel_configs: Vec<RelabelConfig>,
    /// A Parca Agent config file whose `relabel_configs` run after these (`--config-path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relabel_configs_file: Option<PathBuf>,
}

/// A `target_label` or `labelmap` replacement: a label name that may hold
/// `$1`, `${1}`, `$name` references (Prometheus's `relabelTarget`).
fn is_relabel_target(text: &str) -> bool {
    static TARGET: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    TARGET
        .get_or_init(|| {
            Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$").expect("valid regex")
        })
        .is_match(text)
}

fn anchored(regex: &str) -> Result<Regex, regex::Error> {
    // As Prometheus: fully anchored, `.` also matches newlines.
    Regex::new(&format!("^(?s:{regex})$"))
}

impl RelabelConfig {
    /// Prometheus's validation of one rule; messages as Prometheus words them.
    pub fn validate(&self) -> Result<(), String> {
        use Action::*;
        let a = self.action_name();
        if self.modulus == 0 && self.action == HashMod {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        if matches!(
            self.action,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        ) && self.target_label.is_empty()
        {
            return Err(format!(
                "relabel configuration for {a} action requires 'target_label' value"
            ));
        }
        if self.action == Replace && !is_relabel_target(&self.target_label) {
            return Err(format!(
                "{:?} is invalid 'target_label' for {a} action",
                self.target_label
            ));
        }
        if matches!(
            self.action,
            Lowercase | Uppercase | KeepEqual | DropEqual | HashMod
        ) && !is_label_name(&self.target_label)
        {
            return Err(format!(
                "{:?} is invalid 'target_label' for {a} action",
                self.target_label
            ));
        }
        if matches!(self.action, Lowercase | Uppercase) && self.replacement != DEFAULT_REPLACEMENT {
            return Err(format!("'replacement' can not be set for {a} action"));
        }
        if self.action == LabelMap && !is_relabel_target(&self.replacement) {
            return Err(format!(
                "{:?} is invalid 'replacement' for {a} action",
                self.replacement
            ));
        }
        if matches!(self.action, LabelDrop | LabelKeep)
            && (!self.source_labels.is_empty()
                || !self.target_label.is_empty()
                || self.modulus != 0
                || self.separator != DEFAULT_SEPARATOR
                || self.replacement != DEFAULT_REPLACEMENT)
        {
            return Err(format!(
                "{a} action requires only 'regex', and no other fields"
            ));
        }
        if matches!(self.action, KeepEqual | DropEqual)
            && (self.regex != DEFAULT_REGEX
                || self.modulus != 0
                || self.separator != DEFAULT_SEPARATOR
                || self.replacement != DEFAULT_REPLACEMENT)
        {
            return Err(format!(
                "{a} action requires only 'source_labels' and `target_label`, and no other fields"
            ));
        }
        for name in &self.source_labels {
            if !is_label_name(name) {
                return Err(format!("{name:?} is not a valid label name"));
            }
        }
        anchored(&self.regex).map_err(|e| format!("invalid regex {:?}: {e}", self.regex))?;
        Ok(())
    }

    fn action_name(&self) -> &'static str {
        use Action::*;
        match self.action {
            Replace => "replace",
            Keep => "keep",
            Drop => "drop",
            KeepEqual => "keepequal",
            DropEqual => "dropequal",
            HashMod => "hashmod",
            LabelMap => "labelmap",
            LabelDrop => "labeldrop",
            LabelKeep => "labelkeep",
            Lowercase => "lowercase",
            Uppercase => "uppercase",
        }
    }
}

impl ComponentConfig for RelabelProcessorConfig {
    fn validate(&self) -> Vec<FieldError> {
        self.relabel_configs
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                rule.validate()
                    .err()
                    .map(|e| FieldError::new(&format!("relabel_configs::{i}"), e))
            })
            .collect()
    }
}

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    config: RelabelConfig,
    regex: Regex,
}

/// Compiled rules; applies them to label sets.
#[derive(Debug)]
pub struct Relabeler {
    rules: Vec<Rule>,
}

/// Why rules cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RelabelError {
    /// The Parca Agent config file.
    #[error("relabel_configs_file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A rule is invalid.
    #[error("rule {index}: {message}")]
    Rule {
        /// Position of the rule.
        index: usize,
        /// Prometheus's message.
        message: String,
    },
}

/// Meta labels of a sample rather than of its series, and the sample
/// attribute each comes from (as the `ebpf_cpu` receiver names them).
pub const SAMPLE_META_LABELS: [(&str, &str); 3] = [
    ("__meta_thread_comm", labels::THREAD_COMM),
    ("__meta_thread_id", labels::THREAD_ID),
    ("__meta_cpu", labels::CPU),
];

/// The hashmod value Prometheus computes: the md5 of `value`, last 8 bytes
/// big-endian, modulo `modulus`.
pub fn hashmod(value: &str, modulus: u64) -> u64 {
    let hash = Md5::digest(value.as_bytes());
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&hash[8..]);
    u64::from_be_bytes(tail) % modulus
}

impl Relabeler {
    /// Validates and compiles rules.
    pub fn new(configs: Vec<RelabelConfig>) -> Result<Self, RelabelError> {
        let rules = configs
            .into_iter()
            .enumerate()
            .map(|(index, config)| {
                config
                    .validate()
                    .map_err(|message| RelabelError::Rule { index, message })?;
                let regex = anchored(&config.regex).map_err(|e| RelabelError::Rule {
                    index,
                    message: e.to_string(),
                })?;
                Ok(Rule { config, regex })
            })
            .collect::<Result<_, RelabelError>>()?;
        Ok(Self { rules })
    }

    /// Applies every rule to `labels`; `None` when a rule drops the series.
    /// Does not remove `__` labels (see [`Relabeler::process_labels`]).
    pub fn relabel(&self, labels: &LabelSet) -> Option<LabelSet> {
        let mut lb = labels.clone();
        for rule in &self.rules {
            if !apply(rule, &mut lb) {
                return None;
            }
        }
        Some(lb)
    }

    /// True when a rule can read a sample-level meta label
    /// ([`SAMPLE_META_LABELS`]): as a source label, or through `labelmap`.
    pub fn reads_sample_labels(&self) -> bool {
        // A goroutine label as a rule would see one.
        let go_label = format!("{GO_LABEL_PREFIX}name");
        self.rules.iter().any(|rule| {
            SAMPLE_META_LABELS
                .iter()
                .map(|(meta, _)| *meta)
                .chain([go_label.as_str()])
                .any(|meta| {
                    rule.config
                        .source_labels
                        .iter()
                        .any(|l| l == meta || l.starts_with(GO_LABEL_PREFIX))
                        || (rule.config.action == Action::LabelMap && rule.regex.is_match(meta))
                })
        })
    }

    /// True when a rule can read label `name`: as a source label, or by
    /// its name (`labelmap`, `labeldrop`, `labelkeep`).
    pub fn may_read(&self, name: &str) -> bool {
        self.rules.iter().any(|rule| {
            rule.config.source_labels.iter().any(|l| l == name)
                || (matches!(
                    rule.config.action,
                    Action::LabelMap | Action::LabelDrop | Action::LabelKeep
                ) && rule.regex.is_match(name))
        })
    }

    /// [`Relabeler::relabel`], then removes labels starting with `__` but `__name__`.
    pub fn process_labels(&self, labels: &LabelSet) -> Option<LabelSet> {
        let mut out = self.relabel(labels)?;
        out.retain(|k, _| !k.starts_with("__") || k == "__name__");
        Some(out)
    }
}

/// Sets a label; an empty value deletes it, as Prometheus's builder does.
fn set(lb: &mut LabelSet, name: &str, value: String) {
    if value.is_empty() {
        lb.remove(name);
    } else {
        lb.set(name, value);
    }
}

/// One rule on one label set; false drops the series.
fn apply(rule: &Rule, lb: &mut LabelSet) -> bool {
    let c = &rule.config;
    let value = || {
        c.source_labels
            .iter()
            .map(|n| lb.get(n).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(&c.separator)
    };
    match c.action {
        Action::Drop => return !rule.regex.is_match(&value()),
        Action::Keep => return rule.regex.is_match(&value()),
        Action::DropEqual => return lb.get(&c.target_label).unwrap_or("") != value(),
        Action::KeepEqual => return lb.get(&c.target_label).unwrap_or("") == value(),
        Action::Replace => {
            let v = value();
            if let Some(caps) = rule.regex.captures(&v) {
                let mut target = String::new();
                caps.expand(&c.target_label, &mut target);
                if is_label_name(&target) {
                    let mut replaced = String::new();
                    caps.expand(&c.replacement, &mut replaced);
                    set(lb, &target, replaced);
                }
            }
        }
        Action::Lowercase => {
            let v = value().to_lowercase();
            set(lb, &c.target_label, v);
        }
        Action::Uppercase => {
            let v = value().to_uppercase();
            set(lb, &c.target_label, v);
        }
        Action::HashMod => {
            let v = hashmod(&value(), c.modulus).to_string();
            set(lb, &c.target_label, v);
        }
        Action::LabelMap => {
            let pairs: Vec<(String, String)> = lb.pairs().to_vec();
            for (name, v) in pairs {
                if rule.regex.is_match(&name) {
                    let new_name = rule
                        .regex
                        .replace_all(&name, c.replacement.as_str())
                        .into_owned();
                    set(lb, &new_name, v);
                }
            }
        }
        Action::LabelDrop => lb.retain(|name, _| !rule.regex.is_match(name)),
        Action::LabelKeep => lb.retain(|name, _| rule.regex.is_match(name)),
    }
    true
}

/// Builds `relabel` processors.
pub struct RelabelFactory;

impl Factory for RelabelFactory {
    const TYPE: &'static str = "relabel";
    const STABILITY: Stability = Stability::Alpha;
    const DESCRIPTION: &'static str = "Prometheus relabel_configs on every series";
    type Config = RelabelProcessorConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        let mut rules = config.relabel_configs;
        if let Some(path) = &config.relabel_configs_file {
            let file_error = |message: String| RelabelError::File {
                path: path.clone(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
            let parsed: ParcaAgentConfig =
                serde_yaml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
            rules.extend(parsed.relabel_configs);
        }
        let relabeler = Relabeler::new(rules)?;
        Ok(Box::new(RelabelProcessor {
            per_sample: relabeler.reads_sample_labels(),
            relabeler,
            dropped: ctx.telemetry.counter(
                "relabel_dropped_samples",
                "Samples of series that relabeling dropped.",
                &[],
            ),
        }))
    }
}

struct RelabelProcessor {
    relabeler: Relabeler,
    /// Rules read thread or CPU labels: run per (series, sample attributes).
    per_sample: bool,
    dropped: Counter,
}

impl Processor for RelabelProcessor {
    fn label_use(&self, name: &str) -> LabelUse {
        if self.relabeler.may_read(name) {
            LabelUse::Reads
        } else if is_internal_label(name) {
            LabelUse::Ends
        } else {
            LabelUse::Passes
        }
    }

    fn process(&mut self, mut batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        let relabeler = &self.relabeler;
        let before = batch.sample_count();
        if self.per_sample {
            batch.map_series_by_attributes(|series, attributes| {
                let mut labels = series.clone();
                for (meta, attribute) in SAMPLE_META_LABELS {
                    if let Some(value) = attributes.get(attribute) {
                        labels.set(meta, value);
                    }
                }
                for (name, value) in attributes.pairs() {
                    if name.starts_with(GO_LABEL_PREFIX) {
                        labels.set(name, value);
                    }
                }
                relabeler.process_labels(&labels)
            })
        } else {
            batch.map_series(|labels| relabeler.process_labels(labels))
        };
        self.dropped
            .inc_by(before.saturating_sub(batch.sample_count()));
        Ok(batch)
    }
}

#[cfg(test)]
mod tests;
