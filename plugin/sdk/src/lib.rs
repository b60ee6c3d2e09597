//! Write an agent processor as a shared library, in Rust.
//!
//! Implement [`Plugin`] and export it with [`export_plugin!`]; build the
//! crate as a `cdylib`. The SDK speaks the C ABI of
//! `plugin/include/agent_plugin.h`: it decodes the OTLP `ProfilesData` the
//! agent passes, calls your code, encodes the result, and turns errors and
//! panics into error messages the agent reports — a panic never crosses
//! into the agent.
//!
//! ```no_run
//! use agent_plugin_sdk::{export_plugin, serde_json, Plugin, ProfilesData};
//!
//! struct PassThrough;
//! impl Plugin for PassThrough {
//!     const NAME: &'static std::ffi::CStr = c"pass_through";
//!     fn create(_config: serde_json::Value) -> Result<Self, String> { Ok(PassThrough) }
//!     fn process(&mut self, data: ProfilesData) -> Result<ProfilesData, String> { Ok(data) }
//! }
//! export_plugin!(PassThrough);
//! ```

use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use prost::Message;

pub use opentelemetry_proto::tonic::common::v1 as common;
pub use opentelemetry_proto::tonic::profiles::v1development as profiles;
pub use opentelemetry_proto::tonic::profiles::v1development::ProfilesData;
pub use serde_json;

/// The ABI version this SDK implements (`AGENT_PLUGIN_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// `AGENT_PLUGIN_OK`.
pub const OK: i32 = 0;
/// `AGENT_PLUGIN_ERROR`.
pub const ERROR: i32 = 1;

/// `struct agent_bytes`: bytes owned by the plugin.
#[repr(C)]
#[derive(Debug)]
pub struct Bytes {
    /// Start.
    pub ptr: *mut u8,
    /// Length.
    pub len: usize,
}

impl Bytes {
    /// Hands a vector over the boundary; [`free_bytes`] takes it back.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let mut b = v.into_boxed_slice();
        let out = Bytes {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        };
        std::mem::forget(b);
        out
    }

    /// An empty buffer.
    pub fn empty() -> Self {
        Bytes {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }
}

/// `struct agent_plugin_vtable`.
#[repr(C)]
pub struct PluginVTable {
    /// ABI version.
    pub abi_version: u32,
    /// NUL-terminated name.
    pub name: *const c_char,
    /// Creates an instance.
    pub create: unsafe extern "C" fn(*const u8, usize, *mut *mut c_void, *mut Bytes) -> i32,
    /// Processes a batch.
    pub process: unsafe extern "C" fn(*mut c_void, *const u8, usize, *mut Bytes) -> i32,
    /// Releases returned bytes.
    pub free_bytes: unsafe extern "C" fn(Bytes),
    /// Destroys an instance.
    pub destroy: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: the vtable is immutable; `name` points to a static string.
unsafe impl Sync for PluginVTable {}

/// A processor loaded at run time.
pub trait Plugin: Sized + 'static {
    /// The plugin's name.
    const NAME: &'static CStr;
    /// Builds an instance from the `config` of the pipeline (JSON).
    fn create(config: serde_json::Value) -> Result<Self, String>;
    /// Transforms one batch.
    fn process(&mut self, data: ProfilesData) -> Result<ProfilesData, String>;
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("plugin panicked: {text}")
}

/// Runs `f`, turning an error or a panic into a message.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panic_message(p)))
}

/// `create` of the vtable for `P`.
///
/// # Safety
/// `config` must hold `len` readable bytes; `handle` and `error` must be writable.
pub unsafe extern "C" fn ffi_create<P: Plugin>(
    config: *const u8,
    len: usize,
    handle: *mut *mut c_void,
    error: *mut Bytes,
) -> i32 {
    let result = guarded(|| {
        // SAFETY: the agent passes `len` readable bytes (or a null pointer with 0).
        let bytes = if len == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(config, len) }
        };
        let value = if bytes.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(bytes).map_err(|e| format!("config is not JSON: {e}"))?
        };
        P::create(value)
    });
    match result {
        Ok(plugin) => {
            // SAFETY: the agent passes a valid out pointer.
            unsafe { *handle = Box::into_raw(Box::new(plugin)).cast() };
            OK
        }
        Err(message) => {
            // SAFETY: as above.
            unsafe { *error = Bytes::from_vec(message.into_bytes()) };
            ERROR
        }
    }
}

/// `process` of the vtable for `P`.
///
/// # Safety
/// `handle` must come from `ffi_create::<P>` and not be in use elsewhere;
/// `input` must hold `len` readable bytes; `output` must be writable.
pub unsafe extern "C" fn ffi_process<P: Plugin>(
    handle: *mut c_void,
    input: *const u8,
    len: usize,
    output: *mut Bytes,
) -> i32 {
    let result = guarded(|| {
        // SAFETY: `handle` came from `ffi_create::<P>` and is used by one thread at a time.
        let plugin = unsafe { &mut *handle.cast::<P>() };
        // SAFETY: the agent passes `len` readable bytes.
        let bytes = if len == 0 {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(input, len) }
        };
        let data =
            ProfilesData::decode(bytes).map_err(|e| format!("input is not ProfilesData: {e}"))?;
        Ok(plugin.process(data)?.encode_to_vec())
    });
    let (code, bytes) = match result {
        Ok(out) => (OK, out),
        Err(message) => (ERROR, message.into_bytes()),
    };
    // SAFETY: the agent passes a valid out pointer.
    unsafe { *output = Bytes::from_vec(bytes) };
    code
}

/// `free_bytes` of every SDK plugin.
///
/// # Safety
/// `bytes` must have been returned by this SDK and not freed yet.
pub unsafe extern "C" fn ffi_free_bytes(bytes: Bytes) {
    if !bytes.ptr.is_null() {
        // SAFETY: `bytes` came from `Bytes::from_vec`, which leaked a boxed slice of this length.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes.ptr, bytes.len)) });
    }
}

/// `destroy` of the vtable for `P`.
///
/// # Safety
/// `handle` must come from `ffi_create::<P>` and not be used afterwards.
pub unsafe extern "C" fn ffi_destroy<P: Plugin>(handle: *mut c_void) {
    if !handle.is_null() {
        // SAFETY: `handle` came from `ffi_create::<P>`; the agent destroys it once.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(unsafe { Box::from_raw(handle.cast::<P>()) })
        }));
    }
}

/// The vtable of plugin type `P` (what [`export_plugin!`] exports).
pub const fn vtable<P: Plugin>() -> PluginVTable {
    PluginVTable {
        abi_version: ABI_VERSION,
        name: P::NAME.as_ptr(),
        create: ffi_create::<P>,
        process: ffi_process::<P>,
        free_bytes: ffi_free_bytes,
        destroy: ffi_destroy::<P>,
    }
}

/// Exports `agent_plugin_entry` for a [`Plugin`] type.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[no_mangle]
        pub extern "C" fn agent_plugin_entry() -> *const $crate::PluginVTable {
            static VTABLE: $crate::PluginVTable = $crate::vtable::<$plugin>();
            &VTABLE
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u64);
    impl Plugin for Counter {
        const NAME: &'static CStr = c"counter";
        fn create(config: serde_json::Value) -> Result<Self, String> {
            match config.get("fail") {
                Some(_) => Err("asked to fail".into()),
                None => Ok(Counter(0)),
            }
        }
        fn process(&mut self, data: ProfilesData) -> Result<ProfilesData, String> {
            self.0 += 1;
            if self.0 == 2 {
                panic!("second batch");
            }
            Ok(data)
        }
    }

    fn text(b: &Bytes) -> String {
        // SAFETY: test buffers come from Bytes::from_vec.
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(b.ptr, b.len) }).into_owned()
    }

    #[test]
    // SAFETY (every call below): buffers and handles come from this vtable.
    fn errors_and_panics_become_messages() {
        let vt = vtable::<Counter>();
        assert_eq!(vt.abi_version, ABI_VERSION);
        let mut handle = std::ptr::null_mut();
        let mut err = Bytes::empty();
        let bad = br#"{"fail": true}"#;
        assert_eq!(
            unsafe { (vt.create)(bad.as_ptr(), bad.len(), &mut handle, &mut err) },
            ERROR
        );
        assert_eq!(text(&err), "asked to fail");
        unsafe { (vt.free_bytes)(err) };

        let mut err = Bytes::empty();
        assert_eq!(
            unsafe { (vt.create)(std::ptr::null(), 0, &mut handle, &mut err) },
            OK
        );
        let input = ProfilesData::default().encode_to_vec();
        let mut out = Bytes::empty();
        assert_eq!(
            unsafe { (vt.process)(handle, input.as_ptr(), input.len(), &mut out) },
            OK
        );
        unsafe { (vt.free_bytes)(out) };
        let mut out = Bytes::empty();
        assert_eq!(
            unsafe { (vt.process)(handle, input.as_ptr(), input.len(), &mut out) },
            ERROR
        );
        assert_eq!(text(&out), "plugin panicked: second batch");
        unsafe { (vt.free_bytes)(out) };
        let garbage = [0xffu8, 0xff, 0xff];
        let mut out = Bytes::empty();
        assert_eq!(
            unsafe { (vt.process)(handle, garbage.as_ptr(), garbage.len(), &mut out) },
            ERROR
        );
        assert!(text(&out).starts_with("input is not ProfilesData"));
        unsafe { (vt.free_bytes)(out) };
        unsafe { (vt.destroy)(handle) };
    }
}
