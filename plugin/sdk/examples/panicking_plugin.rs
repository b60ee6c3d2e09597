//! A plugin that panics on every batch: tests that the agent survives it.
use agent_plugin_sdk::{export_plugin, Plugin, ProfilesData};

struct Panicking;

impl Plugin for Panicking {
    const NAME: &'static std::ffi::CStr = c"panicking";
    fn create(_config: serde_json::Value) -> Result<Self, String> {
        Ok(Panicking)
    }
    fn process(&mut self, _data: ProfilesData) -> Result<ProfilesData, String> {
        panic!("this plugin always panics")
    }
}

export_plugin!(Panicking);
