//! `drop_frames` processor — the example of a processor added at compile
//! time: drops every frame whose function name matches a regex (runtime
//! internals, allocator frames, …). Frames without names are kept.
//!
//! It works per distinct location and per distinct stack, never per sample.

use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Factory, FieldError, LabelUse, Processor,
    ProfileBatch, Stability, StackId,
};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// Config of the `drop_frames` processor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DropFramesConfig {
    /// Frames whose function (any inlined level) matches are removed;
    /// unanchored, Rust `regex` syntax.
    pub function_regex: String,
}

impl ComponentConfig for DropFramesConfig {
    fn validate(&self) -> Vec<FieldError> {
        if self.function_regex.is_empty() {
            return vec![FieldError::new("function_regex", "required")];
        }
        match Regex::new(&self.function_regex) {
            Ok(_) => Vec::new(),
            Err(e) => vec![FieldError::new("function_regex", e.to_string())],
        }
    }
}

/// Builds `drop_frames` processors.
pub struct DropFramesFactory;

impl Factory for DropFramesFactory {
    const TYPE: &'static str = "drop_frames";
    const STABILITY: Stability = Stability::Development;
    const DESCRIPTION: &'static str = "example: drops frames whose function matches a regex";
    type Config = DropFramesConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        _ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        Ok(Box::new(DropFrames {
            regex: Regex::new(&config.function_regex)?,
        }))
    }
}

struct DropFrames {
    regex: Regex,
}

impl Processor for DropFrames {
    // It reads frames, no label: earlier processors may leave out labels
    // nothing else reads (without this, a processor is taken to read all).
    fn label_use(&self, _name: &str) -> LabelUse {
        LabelUse::Passes
    }

    fn process(&mut self, mut batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        let drop: Vec<bool> = batch
            .locations
            .items()
            .iter()
            .map(|l| {
                l.lines.iter().any(|line| {
                    let f = batch.functions.get(line.function);
                    self.regex.is_match(batch.str(f.name))
                })
            })
            .collect();
        let old: Vec<Vec<u32>> = batch.stacks.items().to_vec();
        let new_ids: Vec<StackId> = old
            .into_iter()
            .map(|stack| {
                let kept: Vec<u32> = stack.into_iter().filter(|&l| !drop[l as usize]).collect();
                batch.stacks.intern(kept)
            })
            .collect();
        for s in &mut batch.samples {
            s.stack = new_ids[s.stack as usize];
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{Function, LabelSet, Line, Location, ProfileType, Sample};

    #[test]
    fn drops_matching_frames_and_keeps_samples() {
        let mut b = ProfileBatch::new(ProfileType::cpu_samples(19), 0, 1);
        let loc = |b: &mut ProfileBatch, name: &str| {
            let n = b.strings.intern_str(name);
            let f = b.functions.intern(Function {
                name: n,
                system_name: n,
                filename: 0,
                start_line: 0,
            });
            b.locations.intern(Location {
                mapping: None,
                address: n as u64,
                lines: vec![Line {
                    function: f,
                    line: 1,
                    column: 0,
                }],
                frame_type: Default::default(),
            })
        };
        let (malloc, work, main) = (
            loc(&mut b, "__libc_malloc"),
            loc(&mut b, "work"),
            loc(&mut b, "main"),
        );
        let stack = b.stacks.intern(vec![malloc, work, main]);
        let series = b.label_sets.intern(LabelSet::new([("comm", "x")]));
        b.samples.push(Sample {
            stack,
            series,
            attributes: 0,
            value: 7,
            timestamp_unix_nanos: None,
        });
        let mut p = DropFramesFactory
            .create(
                DropFramesConfig {
                    function_regex: "malloc".into(),
                },
                &BuildContext::for_test("drop_frames"),
            )
            .unwrap();
        let out = p.process(b).unwrap();
        let names: Vec<String> = out.resolved_samples()[0]
            .frames
            .iter()
            .map(|f| f.display_name())
            .collect();
        assert_eq!(names, ["work", "main"]);
        assert_eq!(out.total_value(), 7);
    }

    #[test]
    fn a_bad_regex_is_a_config_error() {
        let errors = DropFramesConfig {
            function_regex: "(".into(),
        }
        .validate();
        assert_eq!(errors[0].field, "function_regex");
    }
}
