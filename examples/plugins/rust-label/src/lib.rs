//! Example runtime plugin: adds `key: value` (its config) to every series,
//! i.e. to the resource attributes of every `ResourceProfiles`.
//!
//! Build: `cargo build --release -p agent-plugin-example-label`, then in a
//! pipeline: `plugin/label: {path: target/release/libagent_plugin_example_label.so,
//! config: {key: team, value: perf}}`.

use agent_plugin_sdk::common::{any_value, AnyValue, KeyValue};
use agent_plugin_sdk::serde_json::Value;
use agent_plugin_sdk::{export_plugin, Plugin, ProfilesData};

struct AddLabel {
    key: String,
    value: String,
}

impl Plugin for AddLabel {
    const NAME: &'static std::ffi::CStr = c"add_label";

    fn create(config: Value) -> Result<Self, String> {
        let field = |name: &str| {
            config
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("config needs a string `{name}`"))
        };
        Ok(AddLabel {
            key: field("key")?,
            value: field("value")?,
        })
    }

    fn process(&mut self, mut data: ProfilesData) -> Result<ProfilesData, String> {
        for rp in &mut data.resource_profiles {
            let attributes = &mut rp.resource.get_or_insert_with(Default::default).attributes;
            attributes.retain(|kv| kv.key != self.key);
            attributes.push(KeyValue {
                key: self.key.clone(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(self.value.clone())),
                }),
                key_strindex: 0,
            });
        }
        Ok(data)
    }
}

export_plugin!(AddLabel);
