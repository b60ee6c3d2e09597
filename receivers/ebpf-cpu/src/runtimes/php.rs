//! PHP 7.4–8.5 (the Zend engine, thread-unsafe "NTS" builds: the CLI,
//! php-fpm, mod_php): found by the `executor_globals` and `execute_ex`
//! symbols of `php*` / `libphp*`, walked in BPF along the
//! `zend_execute_data` chain with the struct offsets of its version (a
//! table below, facts from php-src's headers), named here from the
//! process's memory.

use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

use super::{
    process_range, read_memory, read_u64, u32_in, u64_in, CodeInfo, DetectError, LineSource,
    NameError, Segments,
};
use crate::bpf::{self, InterpInfo, PhpLayout};

/// Whether a file's name says it may hold PHP's engine (`php`, `php8.2`,
/// `php-fpm8.2`, `php-cgi`, `libphp.so`, `libphp8.2.so`).
pub fn may_be_php(path: &str) -> bool {
    let Some(name) = Path::new(path).file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("php") || name.starts_with("libphp")
}

/// Where one PHP version keeps what the unwinder and the namer read (byte
/// offsets, x86-64).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offsets {
    /// `zend_executor_globals.current_execute_data`.
    current_execute_data: u16,
    /// `zend_function.op_array.filename`.
    filename: u16,
    /// `zend_function.op_array.line_start`.
    line_start: u16,
}

/// `zend_execute_data` (Zend/zend_compile.h), the same from 7.4 to 8.5:
/// opline, call, return_value, func, This (a zval: its type_info at +8),
/// prev_execute_data.
const DATA_OPLINE: u16 = 0;
const DATA_FUNC: u16 = 24;
const DATA_CALL_INFO: u16 = 40;
const DATA_PREV: u16 = 48;
/// `zend_function.common` (type first): function_name, scope.
const FUNC_NAME: u16 = 8;
const FUNC_SCOPE: u16 = 16;
/// What every `zend_function` has: `common` up to its scope.
const FUNC_COMMON: u16 = FUNC_SCOPE + 8;
/// `zend_op.lineno`: after handler (8), op1, op2, result, extended_value (4 each).
const OP_LINENO: u16 = 24;
/// `zend_string`: len, then val (after refcounted header and hash).
const STRING_LEN: u64 = 16;
const STRING_VAL: u64 = 24;
/// `zend_class_entry.name` (after `char type`).
const CLASS_NAME: u64 = 8;
/// `zend_function.type` of user code (ZEND_USER_FUNCTION, ZEND_EVAL_CODE).
const USER_FUNCTION: u8 = 2;
const EVAL_CODE: u8 = 4;

/// The offsets of PHP `major.minor`.
fn offsets(version: (u8, u8)) -> Option<Offsets> {
    // EG(current_execute_data) moved when 8.5 added fields before it;
    // op_array grew (or shrank) before `filename` in 8.0, 8.2, 8.3 and 8.4.
    let (current_execute_data, filename) = match version {
        (7, 4) => (488, 136),
        (8, 0 | 1) => (488, 144),
        (8, 2) => (488, 152),
        (8, 3) => (488, 144),
        (8, 4) => (488, 168),
        (8, 5) => (512, 168),
        _ => return None,
    };
    Some(Offsets {
        current_execute_data,
        filename,
        line_start: filename + 8,
    })
}

/// What a file holding PHP's engine says about it (ELF virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhpBinary {
    /// (major, minor).
    pub version: (u8, u8),
    /// `executor_globals`.
    pub executor_globals: u64,
    /// `execute_ex`, the VM's loop: (start, size).
    pub execute_ex: (u64, u64),
    /// Where its PT_LOAD segments are.
    pub segments: Segments,
}

impl PhpBinary {
    /// Reads the symbols and version the unwinder needs from an ELF file.
    pub fn read(data: &[u8]) -> Result<Self, DetectError> {
        let obj = object::File::parse(data).map_err(|e| DetectError::Unreadable(e.to_string()))?;
        let (mut globals, mut execute_ex, mut zts) = (None, None, false);
        for sym in obj.dynamic_symbols().chain(obj.symbols()) {
            match sym.name_bytes() {
                Ok(b"executor_globals") => globals = Some(sym.address()),
                Ok(b"execute_ex") if sym.size() > 0 => {
                    execute_ex = execute_ex.or(Some((sym.address(), sym.size())))
                }
                // Thread-safe builds keep the globals per thread (TSRM).
                Ok(b"executor_globals_offset") => zts = true,
                _ => {}
            }
        }
        let execute_ex = execute_ex.ok_or(DetectError::NoInterpreter)?;
        // The header text is in .rodata (searching only there is ~5× less).
        let version = obj
            .section_by_name(".rodata")
            .and_then(|s| s.data().ok())
            .and_then(version_in)
            .or_else(|| version_in(data))
            .ok_or(DetectError::MissingSymbol(
                "the PHP version (\"X-Powered-By: PHP/\")",
            ))?;
        let supported = "7.4 through 8.5, thread-unsafe (NTS) builds, are supported";
        if zts {
            return Err(DetectError::UnsupportedVersion(format!(
                "PHP {}.{} built thread-safe (ZTS); {supported}",
                version.0, version.1
            )));
        }
        if offsets(version).is_none() {
            return Err(DetectError::UnsupportedVersion(format!(
                "PHP {}.{}; {supported}",
                version.0, version.1
            )));
        }
        Ok(Self {
            version,
            executor_globals: globals.ok_or(DetectError::MissingSymbol("executor_globals"))?,
            execute_ex,
            segments: Segments::of(&obj),
        })
    }
}

/// The version PHP puts in its `X-Powered-By` header, which every SAPI
/// links in: (major, minor).
fn version_in(data: &[u8]) -> Option<(u8, u8)> {
    const NEEDLE: &[u8] = b"X-Powered-By: PHP/";
    let at = memchr::memmem::find(data, NEEDLE)? + NEEDLE.len();
    let rest = &data[at..data.len().min(at + 16)];
    let mut parts = rest.split(|&b| b == b'.');
    let number = |p: Option<&[u8]>| std::str::from_utf8(p?).ok()?.parse::<u8>().ok();
    let major = number(parts.next())?;
    let minor_digits: Vec<u8> = parts
        .next()?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    Some((major, number(Some(&minor_digits))?))
}

/// PHP as one process runs it (process addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhpProcess {
    /// (major, minor).
    pub version: (u8, u8),
    offsets: Offsets,
    executor_globals: u64,
    execute_ex: (u64, u64),
}

impl PhpProcess {
    /// PHP in `binary`, mapped with `bias`.
    pub fn new(binary: &PhpBinary, bias: u64) -> Option<Self> {
        Some(Self {
            version: binary.version,
            offsets: offsets(binary.version)?,
            executor_globals: binary.executor_globals.wrapping_add(bias),
            execute_ex: process_range(binary.execute_ex, bias),
        })
    }

    /// The record the BPF walker reads.
    pub fn interp_info(&self) -> InterpInfo {
        let o = &self.offsets;
        InterpInfo {
            kind: bpf::interp_kind::PHP,
            version: u32::from(self.version.0) << 8 | u32::from(self.version.1),
            loop_start: self.execute_ex.0,
            loop_end: self.execute_ex.1,
            php: PhpLayout {
                current_execute_data: self.executor_globals + u64::from(o.current_execute_data),
                data_opline: DATA_OPLINE,
                data_func: DATA_FUNC,
                data_call_info: DATA_CALL_INFO,
                data_prev: DATA_PREV,
                data_size: DATA_PREV + 8,
                func_name: FUNC_NAME,
                func_scope: FUNC_SCOPE,
                func_filename: o.filename,
                func_line_start: o.line_start,
                func_size: o.line_start + 4,
                op_lineno: OP_LINENO,
                reserved: [0; 5],
            },
            ..InterpInfo::default()
        }
    }

    /// Names the `zend_function` at `func` of process `pid`, if it still is
    /// the one the BPF walker saw (`validation`).
    pub fn name_function(
        &self,
        pid: u32,
        func: u64,
        validation: u32,
    ) -> Result<CodeInfo, NameError> {
        let o = &self.offsets;
        let mut head = [0u8; 256];
        let head = &mut head[..usize::from(o.line_start + 4)];
        // An internal function is shorter than a user function's op_array
        // (as in BPF: what it surely has, if the whole cannot be read).
        let whole = read_memory(pid, func, head).is_ok();
        if !whole {
            read_memory(pid, func, &mut head[..usize::from(FUNC_COMMON)])
                .map_err(NameError::Read)?;
        }
        let kind = head[0];
        let user = kind == USER_FUNCTION || kind == EVAL_CODE;
        if user && !whole {
            return Err(NameError::NotCode);
        }
        let identity = FunctionIdentity {
            name: u64_in(head, FUNC_NAME.into()),
            scope: u64_in(head, FUNC_SCOPE.into()),
            filename: if user {
                u64_in(head, o.filename.into())
            } else {
                0
            },
            line_start: if user {
                u32_in(head, o.line_start.into())
            } else {
                0
            },
            kind,
        };
        if identity.validation() != validation {
            return Err(NameError::Stale);
        }
        let function = match identity.name {
            // A script's (or an included file's) own code has no name.
            0 => "{main}".to_owned(),
            name => read_string(pid, name)?,
        };
        let name = match identity.scope {
            0 => function,
            scope => {
                let class = read_string(
                    pid,
                    read_u64(pid, scope.wrapping_add(CLASS_NAME)).map_err(NameError::Read)?,
                )?;
                format!("{class}::{function}")
            }
        };
        let filename = match identity.filename {
            0 => String::new(),
            f => read_string(pid, f)?,
        };
        Ok(CodeInfo {
            name,
            filename,
            first_line: identity.line_start,
            lines: LineSource::InFrame,
        })
    }
}

/// What the validation value of a `zend_function` is made of (see
/// `php_validation` in ebpf/runtimes/php.h, which computes the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionIdentity {
    /// `function_name`'s address.
    pub name: u64,
    /// `scope`'s address (its class; 0 for a plain function).
    pub scope: u64,
    /// `op_array.filename`'s address (0 for an internal function).
    pub filename: u64,
    /// `op_array.line_start` (0 for an internal function).
    pub line_start: u32,
    /// `type`.
    pub kind: u8,
}

impl FunctionIdentity {
    /// The value BPF put in the frame.
    pub fn validation(&self) -> u32 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K);
        let h = mix(
            self.name,
            u64::from(self.line_start) << 8 | u64::from(self.kind),
        );
        (mix(mix(h, self.scope), self.filename) >> 32) as u32
    }
}

/// Longest name or file name read.
const MAX_STRING: u64 = 4096;

/// A `zend_string`'s text.
fn read_string(pid: u32, string: u64) -> Result<String, NameError> {
    let len = read_u64(pid, string.wrapping_add(STRING_LEN)).map_err(NameError::Read)?;
    if len > MAX_STRING {
        return Err(NameError::TooLong);
    }
    let mut bytes = vec![0u8; len as usize];
    read_memory(pid, string.wrapping_add(STRING_VAL), &mut bytes).map_err(NameError::Read)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_may_hold_php() {
        for path in [
            "/usr/bin/php8.2",
            "/usr/bin/php",
            "/usr/sbin/php-fpm8.2",
            "/usr/lib/apache2/modules/libphp8.2.so",
        ] {
            assert!(may_be_php(path), "{path}");
        }
        for path in [
            "/usr/bin/python3.11",
            "/usr/lib/libphpx/ruby",
            "/opt/graphp",
        ] {
            assert!(!may_be_php(path), "{path}");
        }
    }

    #[test]
    fn version_from_the_powered_by_header() {
        let data = b"\0\0junk X-Powered-By: PHP/8.2.36\0more";
        assert_eq!(version_in(data), Some((8, 2)));
        assert_eq!(version_in(b"X-Powered-By: PHP/7.4.33-nmm1\0"), Some((7, 4)));
        assert_eq!(version_in(b"X-Powered-By: PHP/\0"), None);
        assert_eq!(version_in(b"no header here"), None);
    }

    #[test]
    fn every_supported_version_has_offsets_within_what_bpf_reads() {
        for version in [(7, 4), (8, 0), (8, 1), (8, 2), (8, 3), (8, 4), (8, 5)] {
            let o = offsets(version).unwrap();
            // BPF masks offsets into its INTERP_READ_MAX (256)-byte buffers.
            assert!(o.line_start + 4 <= 256, "{version:?}");
        }
        assert!(offsets((7, 3)).is_none());
        assert!(offsets((8, 6)).is_none());
    }

    #[test]
    fn validation_tells_functions_apart() {
        let a = FunctionIdentity {
            name: 0x7f00_0000_1000,
            scope: 0,
            filename: 0x7f00_0000_2000,
            line_start: 10,
            kind: USER_FUNCTION,
        };
        let moved = FunctionIdentity {
            line_start: 11,
            ..a
        };
        let method = FunctionIdentity {
            scope: 0x7f00_0000_3000,
            ..a
        };
        // What php_validation in ebpf/runtimes/php.h gives for `a`
        // (compiled from that source with clang and run).
        assert_eq!(a.validation(), 0x7ec2_8386);
        assert_ne!(a.validation(), moved.validation());
        assert_ne!(a.validation(), method.validation());
    }
}
