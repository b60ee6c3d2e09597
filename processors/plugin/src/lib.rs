//! `plugin` processor: runs a processor from a shared library, through the C
//! ABI of `plugin/include/agent_plugin.h`. Batches cross the boundary as
//! OTLP `ProfilesData` protobuf bytes.

use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;

use agent_core::otlp::{from_otlp, to_otlp, ProfilesData};
use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Factory, FieldError, Processor, ProfileBatch,
    Stability,
};
use prost::Message;
use serde::{Deserialize, Serialize};

/// The ABI version this agent speaks.
pub const ABI_VERSION: u32 = 1;
/// The symbol every plugin exports.
pub const ENTRY_SYMBOL: &str = "agent_plugin_entry";

/// `struct agent_bytes`.
#[repr(C)]
pub struct Bytes {
    ptr: *mut u8,
    len: usize,
}

/// `struct agent_plugin_vtable`.
#[repr(C)]
pub struct VTable {
    abi_version: u32,
    name: *const c_char,
    create: unsafe extern "C" fn(*const u8, usize, *mut *mut c_void, *mut Bytes) -> i32,
    process: unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut Bytes) -> i32,
    free_bytes: unsafe extern "C" fn(Bytes),
    destroy: unsafe extern "C" fn(*mut c_void),
}

/// Config of a `plugin` processor.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    /// The shared library.
    pub path: PathBuf,
    /// Handed to the plugin's `create`, as JSON.
    #[schemars(with = "serde_json::Value")]
    pub config: serde_yaml::Value,
}

impl ComponentConfig for PluginConfig {
    fn validate(&self) -> Vec<FieldError> {
        if self.path.as_os_str().is_empty() {
            vec![FieldError::new(
                "path",
                "required: the plugin's shared library (.so)",
            )]
        } else {
            Vec::new()
        }
    }
}

/// Why a plugin cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// dlopen failed.
    #[error("cannot load plugin {path}: {error}")]
    Load {
        /// The library.
        path: PathBuf,
        /// The loader's error.
        error: String,
    },
    /// The library lacks the entry symbol.
    #[error("{path} is not an agent plugin: it does not export `{ENTRY_SYMBOL}` ({error})")]
    MissingEntry {
        /// The library.
        path: PathBuf,
        /// The loader's error.
        error: String,
    },
    /// Another ABI version.
    #[error("plugin {path} speaks ABI version {found}; this agent speaks version {ABI_VERSION}: rebuild the plugin against this agent's plugin/include/agent_plugin.h or SDK")]
    AbiVersion {
        /// The library.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The plugin's create failed.
    #[error("plugin {name} ({path}) refused its config: {message}")]
    Create {
        /// Plugin name.
        name: String,
        /// The library.
        path: PathBuf,
        /// Its message.
        message: String,
    },
    /// The plugin's process failed.
    #[error("plugin {name} failed: {message}")]
    Process {
        /// Plugin name.
        name: String,
        /// Its message.
        message: String,
    },
    /// The plugin returned bytes that are not ProfilesData.
    #[error("plugin {name} returned invalid data: {message}")]
    Output {
        /// Plugin name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A loaded plugin library and its vtable.
pub struct Library {
    vtable: &'static VTable,
    name: String,
    // Dropped last: the vtable points into it.
    _library: Option<libloading::Library>,
}

impl Library {
    /// Loads `path` and checks its entry point and ABI version.
    pub fn load(path: &std::path::Path) -> Result<Self, PluginError> {
        // SAFETY: loading runs the library's initializers; plugins are trusted
        // code named by the operator's config.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| PluginError::Load {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        // SAFETY: the symbol's type is fixed by agent_plugin.h.
        let entry: libloading::Symbol<extern "C" fn() -> *const VTable> = unsafe {
            library.get(ENTRY_SYMBOL.as_bytes())
        }
        .map_err(|e| PluginError::MissingEntry {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
        let vtable = entry();
        // SAFETY: the pointer comes from the library's entry point.
        unsafe { Self::from_vtable(vtable, path, Some(library)) }
    }

    /// Checks a vtable (from a library's entry point, or linked in for
    /// benchmarks) and wraps it.
    ///
    /// # Safety
    /// `vtable` must be null or point to an `agent_plugin_vtable` that lives
    /// as long as `library` (forever when `None`).
    pub unsafe fn from_vtable(
        vtable: *const VTable,
        path: &std::path::Path,
        library: Option<libloading::Library>,
    ) -> Result<Self, PluginError> {
        if vtable.is_null() {
            return Err(PluginError::MissingEntry {
                path: path.to_owned(),
                error: "agent_plugin_entry returned NULL".into(),
            });
        }
        // SAFETY: guaranteed by the caller.
        let vtable: &'static VTable = unsafe { &*vtable };
        if vtable.abi_version != ABI_VERSION {
            return Err(PluginError::AbiVersion {
                path: path.to_owned(),
                found: vtable.abi_version,
            });
        }
        let name = if vtable.name.is_null() {
            path.display().to_string()
        } else {
            // SAFETY: the ABI requires a static NUL-terminated name.
            unsafe { CStr::from_ptr(vtable.name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(Self {
            vtable,
            name,
            _library: library,
        })
    }

    /// Takes bytes the plugin returned, copying and releasing them.
    fn take(&self, bytes: Bytes) -> Vec<u8> {
        let out = if bytes.ptr.is_null() || bytes.len == 0 {
            Vec::new()
        } else {
            // SAFETY: the plugin returned `len` readable bytes.
            unsafe { std::slice::from_raw_parts(bytes.ptr, bytes.len) }.to_vec()
        };
        // SAFETY: these bytes came from this plugin and are released once.
        unsafe { (self.vtable.free_bytes)(bytes) };
        out
    }
}

/// One plugin instance (a `create`d handle).
pub struct PluginProcessor {
    handle: *mut c_void,
    library: Library,
}

// SAFETY: the ABI lets a handle be used from any thread, one call at a time,
// which `&mut self` in `process` guarantees.
unsafe impl Send for PluginProcessor {}

impl PluginProcessor {
    /// Creates an instance with `config` (JSON).
    pub fn new(
        library: Library,
        path: &std::path::Path,
        config: &serde_json::Value,
    ) -> Result<Self, PluginError> {
        let json = config.to_string();
        let mut handle = std::ptr::null_mut();
        let mut error = Bytes {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: valid input bytes and out pointers, as the ABI requires.
        let code =
            unsafe { (library.vtable.create)(json.as_ptr(), json.len(), &mut handle, &mut error) };
        if code != 0 {
            let message = String::from_utf8_lossy(&library.take(error)).into_owned();
            return Err(PluginError::Create {
                name: library.name.clone(),
                path: path.to_owned(),
                message,
            });
        }
        Ok(Self { handle, library })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.library.name
    }

    /// Sends encoded `ProfilesData` through the plugin.
    pub fn call(&mut self, input: &[u8]) -> Result<Vec<u8>, PluginError> {
        let mut output = Bytes {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: a handle from create, used by one caller (`&mut self`); valid buffers.
        let code = unsafe {
            (self.library.vtable.process)(self.handle, input.as_ptr(), input.len(), &mut output)
        };
        let bytes = self.library.take(output);
        if code != 0 {
            return Err(PluginError::Process {
                name: self.library.name.clone(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes)
    }
}

impl Drop for PluginProcessor {
    fn drop(&mut self) {
        // SAFETY: the handle came from create and is destroyed once.
        unsafe { (self.library.vtable.destroy)(self.handle) };
    }
}

/// Converts a batch to OTLP, runs the plugin, converts back. Several
/// batches coming back (e.g. the plugin changed timestamps) merge into one.
pub fn process_batch(
    plugin: &mut PluginProcessor,
    batch: &ProfileBatch,
) -> Result<ProfileBatch, PluginError> {
    let input = to_otlp(batch).encode_to_vec();
    let output = plugin.call(&input)?;
    let invalid = |message: String| PluginError::Output {
        name: plugin.name().to_owned(),
        message,
    };
    let data = ProfilesData::decode(&output[..]).map_err(|e| invalid(e.to_string()))?;
    let mut batches = from_otlp(&data)
        .map_err(|e| invalid(e.to_string()))?
        .into_iter();
    let Some(mut merged) = batches.next() else {
        // Nothing came back: the plugin dropped every sample.
        let mut empty = batch.clone();
        empty.samples.clear();
        return Ok(empty);
    };
    for other in batches {
        if other.profile_type != merged.profile_type {
            return Err(invalid("returned profiles of another profile type".into()));
        }
        merged.merge(&other);
    }
    Ok(merged)
}

impl Processor for PluginProcessor {
    fn process(&mut self, batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        Ok(process_batch(self, &batch)?)
    }
}

/// Builds `plugin` processors.
pub struct PluginFactory;

impl Factory for PluginFactory {
    const TYPE: &'static str = "plugin";
    const STABILITY: Stability = Stability::Development;
    const DESCRIPTION: &'static str = "runs a processor from a shared library (C ABI, OTLP bytes)";
    type Config = PluginConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        _ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        let library = Library::load(&config.path)?;
        let json = match &config.config {
            serde_yaml::Value::Null => serde_json::Value::Object(Default::default()),
            other => serde_json::to_value(other).map_err(|e| format!("config: {e}"))?,
        };
        Ok(Box::new(PluginProcessor::new(
            library,
            &config.path,
            &json,
        )?))
    }
}
