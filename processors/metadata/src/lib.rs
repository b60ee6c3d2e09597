//! `metadata` processor: attaches agent-level labels to every series.
//!
//! Today: `node` (from `service.node` / `--node`) and the external labels
//! (`--metadata-external-labels`). Process, thread, system and container
//! labels (`__meta_process_*`, …) are not built yet.

use std::collections::BTreeMap;

use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Factory, FieldError, Processor, ProfileBatch,
    Stability,
};
use serde::{Deserialize, Serialize};

/// Config of the `metadata` processor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Labels attached to every series (`--metadata-external-labels`);
    /// a label the series already has is kept.
    pub external_labels: BTreeMap<String, String>,
}

/// True for a valid Prometheus label name.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl ComponentConfig for MetadataConfig {
    fn validate(&self) -> Vec<FieldError> {
        self.external_labels
            .keys()
            .filter(|k| !is_label_name(k))
            .map(|k| {
                FieldError::new(
                    &format!("external_labels::{k}"),
                    "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                )
            })
            .collect()
    }
}

/// Builds `metadata` processors.
pub struct MetadataFactory;

impl Factory for MetadataFactory {
    const TYPE: &'static str = "metadata";
    const STABILITY: Stability = Stability::Development;
    const DESCRIPTION: &'static str = "attaches node and external labels to every series";
    type Config = MetadataConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        Ok(Box::new(Metadata {
            node: ctx.service.node.clone(),
            external_labels: config.external_labels,
        }))
    }
}

struct Metadata {
    node: String,
    external_labels: BTreeMap<String, String>,
}

impl Processor for Metadata {
    fn process(&mut self, mut batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        batch.map_series(|set| {
            let mut out = set.clone();
            out.set("node", self.node.as_str());
            for (k, v) in &self.external_labels {
                if set.get(k).is_none() {
                    out.set(k.as_str(), v.as_str());
                }
            }
            Some(out)
        });
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{LabelSet, ProfileType, Sample};

    #[test]
    fn attaches_node_and_external_labels_without_overriding() {
        let config = MetadataConfig {
            external_labels: [("region".into(), "eu".into()), ("comm".into(), "x".into())].into(),
        };
        let mut p = MetadataFactory
            .create(config, &BuildContext::for_test("metadata"))
            .unwrap();
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
        let stack = b.stacks.intern(vec![]);
        let series = b.label_sets.intern(LabelSet::new([("comm", "nginx")]));
        b.samples.push(Sample {
            stack,
            series,
            attributes: 0,
            value: 1,
            timestamp_unix_nanos: None,
        });
        let b = p.process(b).unwrap();
        let labels = b.labels(b.samples[0].series);
        assert_eq!(labels.get("node"), Some("test-node"));
        assert_eq!(labels.get("region"), Some("eu"));
        assert_eq!(labels.get("comm"), Some("nginx"));
    }

    #[test]
    fn invalid_label_names_are_refused() {
        let config = MetadataConfig {
            external_labels: [("1bad".into(), "v".into()), ("ok_name".into(), "v".into())].into(),
        };
        let errors = config.validate();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "external_labels::1bad");
    }
}
