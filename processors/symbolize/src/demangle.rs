//! Demangling: Rust (legacy and v0) with rustc-demangle; C++ with the C++
//! runtime's own `__cxa_demangle` (libiberty's demangler, what binutils
//! prints) when libstdc++ is on the machine, else with cpp_demangle.
//!
//! cpp_demangle alone misreads templated constructors (gimli-rs/cpp_demangle
//! #129: `basic_string<…>::basic_string<…>(char const*, …)` loses its first
//! parameter), which `std::string` code hits everywhere.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

type CxaDemangle =
    unsafe extern "C" fn(*const c_char, *mut c_char, *mut usize, *mut c_int) -> *mut c_char;

/// libstdc++'s `__cxa_demangle`, loaded once; `None` when not installed.
fn cxa_demangle() -> Option<CxaDemangle> {
    static CXA: OnceLock<Option<(libloading::Library, CxaDemangle)>> = OnceLock::new();
    CXA.get_or_init(|| {
        // SAFETY: libstdc++ has no initialisers with preconditions; the
        // symbol has the Itanium ABI signature declared above.
        unsafe {
            let lib = libloading::Library::new("libstdc++.so.6").ok()?;
            let f = *lib.get::<CxaDemangle>(b"__cxa_demangle\0").ok()?;
            Some((lib, f))
        }
    })
    .as_ref()
    .map(|(_, f)| *f)
}

fn demangle_cpp(name: &str) -> Option<String> {
    if let Some(cxa) = cxa_demangle() {
        let c_name = CString::new(name).ok()?;
        let mut status: c_int = 0;
        // SAFETY: NUL-terminated input; a null buffer asks for a malloc'd result.
        let out = unsafe {
            cxa(
                c_name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut status,
            )
        };
        if out.is_null() {
            return None;
        }
        // SAFETY: on success `out` is a NUL-terminated malloc'd string we own.
        let text = unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated by malloc inside __cxa_demangle.
        unsafe { libc::free(out.cast()) };
        return (status == 0).then_some(text);
    }
    let symbol = cpp_demangle::Symbol::new(name.as_bytes()).ok()?;
    symbol.demangle().ok()
}

/// The human-readable name of a symbol; the name itself when it is not mangled.
pub fn demangle(name: &str) -> Cow<'_, str> {
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        // `{:#}` leaves out the legacy hash suffix, as binutils does.
        return Cow::Owned(format!("{rust:#}"));
    }
    if name.starts_with("_Z") {
        if let Some(cpp) = demangle_cpp(name) {
            return Cow::Owned(cpp);
        }
    }
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_like_binutils() {
        assert_eq!(
            demangle("_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEC2IS3_EEPKcRKS3_"),
            "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >\
             ::basic_string<std::allocator<char> >(char const*, std::allocator<char> const&)"
        );
        assert_eq!(demangle("_ZN2fx3runEi"), "fx::run(int)");
        assert_eq!(
            demangle("_ZN7fixture5tally17h0123456789abcdefE"),
            "fixture::tally"
        );
        assert_eq!(demangle("_RNvCs1234_7fixture5tally"), "fixture::tally");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Znot_mangled"), "_Znot_mangled");
    }
}
