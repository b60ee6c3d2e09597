//! CPython 3.6–3.13: found by its symbols in `python3.N` or
//! `libpython3.N.so`, walked in BPF with the struct offsets of its version
//! (a table below, facts from CPython's headers, checked against the DWARF
//! of real builds), named here from the process's memory.

use std::path::Path;

use object::{Object, ObjectSymbol};

use super::{
    process_range, read_memory, read_u64, CodeInfo, DetectError, LineSource, NameError, Segments,
};
use crate::bpf::{self, InterpInfo, PythonLayout};

/// Where one CPython version keeps what the unwinder and the namer read
/// (byte offsets, x86-64).
#[derive(Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `_PyRuntime.interpreters.head`; `None` before 3.7 (the static
    /// `interp_head` holds it).
    pub runtime_interp_head: Option<u16>,
    /// `PyInterpreterState.tstate_head` / `threads.head`.
    pub interp_threads: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.thread_id`.
    pub tstate_thread_id: u16,
    /// `PyThreadState.frame` (≤ 3.10), `.cframe` (3.11, 3.12), `.current_frame` (3.13).
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame` (3.11, 3.12).
    pub cframe_frame: Option<u16>,
    /// `f_back` / `previous`.
    pub frame_back: u16,
    /// `f_code` / `f_executable`.
    pub frame_code: u16,
    /// `f_lasti` (≤ 3.10) or `prev_instr` / `instr_ptr`.
    pub frame_instr: u16,
    /// `is_entry` (3.11) or `owner` (3.12+); unused before.
    pub frame_entry: u16,
    /// How a run of the eval loop is delimited.
    pub entry_rule: u8,
    /// `co_argcount`.
    pub code_argcount: u16,
    /// `co_firstlineno`.
    pub code_firstlineno: u16,
    /// `co_filename`.
    pub code_filename: u16,
    /// `co_name`.
    pub code_name: u16,
    /// `co_qualname` (3.11+).
    pub code_qualname: Option<u16>,
    /// `co_lnotab` (≤ 3.9) or `co_linetable`.
    pub code_linetable: u16,
    /// `co_code_adaptive`: the bytecode inside the code object (3.11+).
    pub code_bytecode: Option<u16>,
    /// A word set once per code object: `ob_size` (3.11+) or `co_code`.
    pub code_identity: u16,
    /// `sizeof(PyASCIIObject)`: where compact ASCII text starts.
    pub ascii_size: u16,
}

/// `enum python_entry_rule` of ebpf/cpu.h.
const PY_ENTRY_EACH_FRAME: u8 = 0;
const PY_ENTRY_FLAG: u8 = 1;
const PY_ENTRY_SHIM: u8 = 2;
/// `FRAME_OWNED_BY_CSTACK` (3.12+).
const FRAME_OWNED_BY_CSTACK: u8 = 3;

/// The offsets of CPython 3.`minor` (3.6 through 3.13).
pub fn offsets(minor: u8) -> Option<&'static Offsets> {
    // Frames and code objects before 3.11 (PyFrameObject, co_lnotab/co_linetable).
    const fn legacy(
        runtime_interp_head: Option<u16>,
        tstate_thread_id: u16,
        f_lasti: u16,
        argcount_first_line: (u16, u16),
        code_filename_name_lines: (u16, u16, u16, u16),
    ) -> Offsets {
        Offsets {
            runtime_interp_head,
            interp_threads: 8,
            tstate_next: 8,
            tstate_thread_id,
            tstate_frame: 24,
            cframe_frame: None,
            frame_back: 24,
            frame_code: 32,
            frame_instr: f_lasti,
            frame_entry: 0,
            entry_rule: PY_ENTRY_EACH_FRAME,
            code_argcount: argcount_first_line.0,
            code_firstlineno: argcount_first_line.1,
            code_identity: code_filename_name_lines.0,
            code_filename: code_filename_name_lines.1,
            code_name: code_filename_name_lines.2,
            code_qualname: None,
            code_linetable: code_filename_name_lines.3,
            code_bytecode: None,
            ascii_size: 48,
        }
    }
    static V3_6: Offsets = legacy(None, 152, 120, (16, 36), (40, 96, 104, 112));
    static V3_7: Offsets = legacy(Some(24), 176, 104, (16, 36), (40, 96, 104, 112));
    static V3_8: Offsets = legacy(Some(32), 176, 104, (16, 40), (48, 104, 112, 120));
    static V3_10: Offsets = legacy(Some(32), 176, 96, (16, 40), (48, 104, 112, 120));
    static V3_11: Offsets = Offsets {
        runtime_interp_head: Some(40),
        interp_threads: 16,
        tstate_next: 8,
        tstate_thread_id: 152,
        tstate_frame: 56,
        cframe_frame: Some(8),
        frame_back: 48,
        frame_code: 32,
        frame_instr: 56,
        frame_entry: 68,
        entry_rule: PY_ENTRY_FLAG,
        code_argcount: 56,
        code_firstlineno: 72,
        code_filename: 112,
        code_name: 120,
        code_qualname: Some(128),
        code_linetable: 136,
        code_bytecode: Some(184),
        code_identity: 16,
        ascii_size: 48,
    };
    static V3_12: Offsets = Offsets {
        runtime_interp_head: Some(40),
        interp_threads: 72,
        tstate_next: 8,
        tstate_thread_id: 136,
        tstate_frame: 56,
        cframe_frame: Some(0),
        frame_back: 8,
        frame_code: 0,
        frame_instr: 56,
        frame_entry: 70,
        entry_rule: PY_ENTRY_SHIM,
        code_argcount: 52,
        code_firstlineno: 68,
        code_filename: 112,
        code_name: 120,
        code_qualname: Some(128),
        code_linetable: 136,
        code_bytecode: Some(192),
        code_identity: 16,
        ascii_size: 40,
    };
    static V3_13: Offsets = Offsets {
        runtime_interp_head: Some(632),
        interp_threads: 7344,
        tstate_thread_id: 152,
        tstate_frame: 72,
        cframe_frame: None,
        code_bytecode: Some(200),
        ..V3_12
    };
    match minor {
        6 => Some(&V3_6),
        7 => Some(&V3_7),
        8 | 9 => Some(&V3_8),
        10 => Some(&V3_10),
        11 => Some(&V3_11),
        12 => Some(&V3_12),
        13 => Some(&V3_13),
        _ => None,
    }
}

/// The CPython version a file's name says it holds (`python3.11`,
/// `libpython3.11.so.1.0`, `libpython3.7m.so`).
pub fn version_of_path(path: &str) -> Option<(u8, u8)> {
    let name = Path::new(path).file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    // python3.11, python3.11d, libpython3.11.so…, libpython3.7m.so…
    if !(after.is_empty() || after.starts_with(['.', 'd', 'm'])) {
        return None;
    }
    Some((3, digits.parse().ok()?))
}

/// What a file holding CPython's interpreter says about it (ELF virtual
/// addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonBinary {
    /// (3, minor).
    pub version: (u8, u8),
    /// `_PyRuntime` (3.7+) or `interp_head` (3.6).
    pub runtime: u64,
    /// `PyCode_Type`.
    pub code_type: u64,
    /// `_PyEval_EvalFrameDefault`: (start, size).
    pub eval_loop: (u64, u64),
    /// `_PyEval_EvalFrameDefault.cold` (in `.symtab` only): (start, size).
    pub eval_loop_cold: Option<(u64, u64)>,
    /// Where its PT_LOAD segments are.
    pub segments: Segments,
}

impl PythonBinary {
    /// Reads the symbols the unwinder needs from an ELF file of CPython 3.`version.1`.
    pub fn read(data: &[u8], version: (u8, u8)) -> Result<Self, DetectError> {
        if offsets(version.1).is_none() || version.0 != 3 {
            return Err(DetectError::UnsupportedVersion(format!(
                "CPython {}.{} (3.6 through 3.13 are supported)",
                version.0, version.1
            )));
        }
        let obj = object::File::parse(data).map_err(|e| DetectError::Unreadable(e.to_string()))?;
        let runtime_name = if version.1 >= 7 {
            "_PyRuntime"
        } else {
            "interp_head"
        };
        let (mut runtime, mut code_type, mut eval_loop, mut eval_loop_cold) =
            (None, None, None, None);
        for sym in obj.dynamic_symbols().chain(obj.symbols()) {
            let range = Some((sym.address(), sym.size())).filter(|r| r.1 > 0);
            match sym.name_bytes() {
                Ok(name) if name == runtime_name.as_bytes() => runtime = Some(sym.address()),
                Ok(b"PyCode_Type") => code_type = Some(sym.address()),
                Ok(b"_PyEval_EvalFrameDefault") => eval_loop = eval_loop.or(range),
                Ok(b"_PyEval_EvalFrameDefault.cold") => eval_loop_cold = range,
                _ => {}
            }
        }
        if version.1 >= 11 {
            // Py_Version (3.11+) holds PY_VERSION_HEX: the name must not lie.
            if let Some(found) = read_py_version(&obj).filter(|&v| v != version) {
                return Self::read(data, found);
            }
        }
        let eval_loop = eval_loop.ok_or(DetectError::NoInterpreter)?;
        Ok(Self {
            version,
            runtime: runtime.ok_or(DetectError::MissingSymbol(runtime_name))?,
            code_type: code_type.ok_or(DetectError::MissingSymbol("PyCode_Type"))?,
            eval_loop,
            eval_loop_cold,
            segments: Segments::of(&obj),
        })
    }
}

/// `Py_Version` of a 3.11+ build: (major, minor).
fn read_py_version(obj: &object::File<'_>) -> Option<(u8, u8)> {
    use object::ObjectSection;
    let sym = obj
        .dynamic_symbols()
        .chain(obj.symbols())
        .find(|s| s.name_bytes() == Ok(b"Py_Version"))?;
    let section = obj.section_by_index(sym.section_index()?).ok()?;
    let data = section.data().ok()?;
    let at = usize::try_from(sym.address().checked_sub(section.address())?).ok()?;
    let hex = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?);
    Some(((hex >> 24) as u8, (hex >> 16) as u8))
}

/// CPython as one process runs it (process addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonProcess {
    /// (3, minor).
    pub version: (u8, u8),
    offsets: &'static Offsets,
    /// Address of `_PyRuntime` / `interp_head`.
    runtime: u64,
    code_type: u64,
    eval_loop: (u64, u64),
    eval_loop_cold: (u64, u64),
}

impl PythonProcess {
    /// CPython in `binary`, mapped with `bias`.
    pub fn new(binary: &PythonBinary, bias: u64) -> Option<Self> {
        Some(Self {
            version: binary.version,
            offsets: offsets(binary.version.1)?,
            runtime: binary.runtime.wrapping_add(bias),
            code_type: binary.code_type.wrapping_add(bias),
            eval_loop: process_range(binary.eval_loop, bias),
            eval_loop_cold: binary
                .eval_loop_cold
                .map_or((0, 0), |r| process_range(r, bias)),
        })
    }

    /// The record the BPF walker reads.
    pub fn interp_info(&self) -> InterpInfo {
        let o = self.offsets;
        let frame_fields = [o.frame_back, o.frame_code, o.frame_entry];
        let instr_size = if o.code_bytecode.is_some() { 8 } else { 4 };
        let frame_size = frame_fields
            .iter()
            .map(|f| f + 8)
            .chain([o.frame_instr + instr_size])
            .max()
            .unwrap_or(0);
        let code_size = [
            o.code_argcount + 4,
            o.code_firstlineno + 4,
            o.code_name + 8,
            o.code_filename + 8,
            o.code_identity + 8,
            16,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        InterpInfo {
            kind: bpf::interp_kind::CPYTHON,
            version: u32::from(self.version.0) << 8 | u32::from(self.version.1),
            loop_start: self.eval_loop.0,
            loop_end: self.eval_loop.1,
            cold_start: self.eval_loop_cold.0,
            cold_end: self.eval_loop_cold.1,
            python: PythonLayout {
                interp_head: self.runtime + u64::from(o.runtime_interp_head.unwrap_or(0)),
                code_type: self.code_type,
                interp_threads: o.interp_threads,
                tstate_next: o.tstate_next,
                tstate_thread_id: o.tstate_thread_id,
                tstate_frame: o.tstate_frame,
                cframe_frame: o.cframe_frame.unwrap_or(0xffff),
                frame_back: o.frame_back,
                frame_code: o.frame_code,
                frame_instr: o.frame_instr,
                frame_entry: o.frame_entry,
                frame_size,
                code_name: o.code_name,
                code_firstlineno: o.code_firstlineno,
                code_argcount: o.code_argcount,
                code_bytecode: o.code_bytecode.unwrap_or(0),
                code_size,
                code_filename: o.code_filename,
                code_identity: o.code_identity,
                instr_is_pointer: u8::from(o.code_bytecode.is_some()),
                entry_rule: o.entry_rule,
                entry_shim: FRAME_OWNED_BY_CSTACK,
                reserved: [0; 3],
            },
            ..InterpInfo::default()
        }
    }

    /// Names the code object at `code` of process `pid`, if it still is
    /// the one the BPF walker saw (`validation`).
    pub fn name_code(&self, pid: u32, code: u64, validation: u32) -> Result<CodeInfo, NameError> {
        let o = self.offsets;
        let mut head = [0u8; 256];
        let size = usize::from(o.code_linetable.max(o.code_qualname.unwrap_or(0)) + 8);
        read_memory(pid, code, &mut head[..size]).map_err(NameError::Read)?;
        let u64_at = |at: u16| u64::from_le_bytes(head[at as usize..][..8].try_into().unwrap());
        let u32_at = |at: u16| u32::from_le_bytes(head[at as usize..][..4].try_into().unwrap());
        if u64_at(8) != self.code_type {
            return Err(NameError::NotCode);
        }
        let name_hash = read_u64(pid, u64_at(o.code_name) + 24).map_err(NameError::Read)?;
        let filename = u64_at(o.code_filename);
        let filename_length = read_u64(pid, filename + 16).map_err(NameError::Read)?;
        let first_line = u32_at(o.code_firstlineno);
        let identity = CodeIdentity {
            name_hash,
            first_line,
            argcount: u32_at(o.code_argcount),
            filename,
            filename_length,
            word: u64_at(o.code_identity),
        };
        if identity.validation() != validation {
            return Err(NameError::Stale);
        }
        let name = read_str(
            pid,
            u64_at(o.code_qualname.unwrap_or(o.code_name)),
            o.ascii_size,
        )?;
        let filename = read_str(pid, filename, o.ascii_size)?;
        let table = read_bytes(pid, u64_at(o.code_linetable))?;
        let format = match self.version.1 {
            ..=9 => LineFormat::Lnotab,
            10 => LineFormat::Linetable310,
            _ => LineFormat::Locations,
        };
        Ok(CodeInfo {
            name,
            filename,
            first_line,
            lines: LineSource::Table(LineTable {
                format,
                first_line,
                table,
                // 3.10's f_lasti counts code units; the others are bytes.
                offset_scale: if self.version.1 == 10 { 2 } else { 1 },
            }),
        })
    }
}

/// What the validation value of a code object is made of (see
/// `python_validation` in ebpf/runtimes/python.h, which computes the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeIdentity {
    /// `co_name`'s hash.
    pub name_hash: u64,
    /// `co_firstlineno`.
    pub first_line: u32,
    /// `co_argcount`.
    pub argcount: u32,
    /// `co_filename`'s address.
    pub filename: u64,
    /// `co_filename`'s length.
    pub filename_length: u64,
    /// `ob_size` (3.11+) or `co_code`.
    pub word: u64,
}

impl CodeIdentity {
    /// The value BPF put in the frame.
    pub fn validation(&self) -> u32 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K);
        let h = mix(
            self.name_hash,
            u64::from(self.first_line) << 32 | u64::from(self.argcount),
        );
        let h = mix(mix(mix(h, self.filename), self.filename_length), self.word);
        (h >> 32) as u32
    }
}

/// Longest name or file name read.
const MAX_STRING: u64 = 4096;
/// Longest line table read.
const MAX_TABLE: u64 = 1 << 20;

/// A `str` object's text (compact ASCII, Latin-1, UCS-2 or UCS-4).
fn read_str(pid: u32, object: u64, ascii_size: u16) -> Result<String, NameError> {
    let mut head = [0u8; 40];
    read_memory(pid, object, &mut head).map_err(NameError::Read)?;
    let length = u64::from_le_bytes(head[16..24].try_into().unwrap());
    let state = u32::from_le_bytes(head[32..36].try_into().unwrap());
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1, state >> 6 & 1);
    if compact == 0 || !matches!(kind, 1 | 2 | 4) {
        return Err(NameError::NotCode);
    }
    if length > MAX_STRING {
        return Err(NameError::TooLong);
    }
    // Compact non-ASCII text follows PyCompactUnicodeObject: utf8_length
    // and utf8 (and wstr_length before 3.12) after the ASCII header.
    let data = if ascii == 1 {
        u64::from(ascii_size)
    } else {
        u64::from(ascii_size) + if ascii_size == 48 { 24 } else { 16 }
    };
    let mut bytes = vec![0u8; (length * u64::from(kind)) as usize];
    read_memory(pid, object + data, &mut bytes).map_err(NameError::Read)?;
    Ok(match kind {
        1 => bytes.iter().map(|&b| char::from(b)).collect(),
        2 => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes(c.try_into().unwrap()))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
    })
}

/// A `bytes` object's content.
fn read_bytes(pid: u32, object: u64) -> Result<Vec<u8>, NameError> {
    let size = read_u64(pid, object + 16).map_err(NameError::Read)?;
    if size > MAX_TABLE {
        return Err(NameError::TooLong);
    }
    let mut bytes = vec![0u8; size as usize];
    read_memory(pid, object + 32, &mut bytes).map_err(NameError::Read)?;
    Ok(bytes)
}

/// How a code object maps instructions to lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// `co_lnotab` (≤ 3.9): (byte offset delta, signed line delta) pairs.
    Lnotab,
    /// `co_linetable` of 3.10: (byte length, signed line delta or -128) pairs.
    Linetable310,
    /// The location table of 3.11+ (varint entries in code units).
    Locations,
}

/// A code object's line table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineTable {
    format: LineFormat,
    first_line: u32,
    table: Vec<u8>,
    /// Multiplies an offset from the BPF walker into bytes.
    offset_scale: u32,
}

impl LineTable {
    /// Bytes of table held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// A line table of `format`.
    pub fn new(format: LineFormat, first_line: u32, table: Vec<u8>) -> Self {
        Self {
            format,
            first_line,
            table,
            offset_scale: 1,
        }
    }

    /// The line of the instruction at `offset` (bytes into the bytecode,
    /// as the BPF walker reports it); `None` when the table has none.
    pub fn line(&self, offset: u32) -> Option<u32> {
        let byte = u64::from(offset) * u64::from(self.offset_scale);
        let line = match self.format {
            LineFormat::Lnotab => lnotab_line(&self.table, self.first_line, byte),
            LineFormat::Linetable310 => linetable310_line(&self.table, self.first_line, byte),
            LineFormat::Locations => locations_line(&self.table, self.first_line, byte / 2),
        }?;
        u32::try_from(line).ok().filter(|&l| l > 0)
    }
}

fn lnotab_line(table: &[u8], first_line: u32, target: u64) -> Option<i64> {
    let (mut line, mut address) = (i64::from(first_line), 0u64);
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > target {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    Some(line)
}

fn linetable310_line(table: &[u8], first_line: u32, target: u64) -> Option<i64> {
    let (mut line, mut end) = (i64::from(first_line), 0u64);
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let current = (delta != -128).then(|| {
            line += i64::from(delta);
            line
        });
        if (start..end).contains(&target) {
            return current;
        }
    }
    None
}

fn locations_line(table: &[u8], first_line: u32, target_unit: u64) -> Option<i64> {
    let mut bytes = table.iter().copied().peekable();
    let (mut line, mut unit) = (i64::from(first_line), 0u64);
    let varint = |bytes: &mut std::iter::Peekable<std::iter::Copied<std::slice::Iter<'_, u8>>>| {
        let mut b = bytes.next()?;
        let (mut value, mut shift) = (u64::from(b & 63), 6);
        while b & 64 != 0 {
            b = bytes.next()?;
            value |= u64::from(b & 63) << shift;
            shift += 6;
            if shift > 60 {
                return None;
            }
        }
        Some(value)
    };
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None; // not at an entry's start: malformed
        }
        let code = (first >> 3) & 15;
        let length = u64::from(first & 7) + 1;
        let current = match code {
            15 => None, // no location
            14 | 13 => {
                let v = varint(&mut bytes)?;
                let delta = if v & 1 == 1 {
                    -((v >> 1) as i64)
                } else {
                    (v >> 1) as i64
                };
                line = line.checked_add(delta)?;
                if code == 14 {
                    // end line delta, start column + 1, end column + 1
                    for _ in 0..3 {
                        varint(&mut bytes)?;
                    }
                }
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
                Some(line)
            }
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        if (unit..unit + length).contains(&target_unit) {
            return current;
        }
        unit += length;
        // Skip to the next entry (a start byte has the high bit set).
        while bytes.peek().is_some_and(|b| b & 0x80 == 0) {
            bytes.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_file_names() {
        let cases = [
            ("/usr/bin/python3.11", Some((3, 11))),
            (
                "/root/.pyenv/versions/3.13.0/lib/libpython3.13.so.1.0",
                Some((3, 13)),
            ),
            ("/usr/lib/libpython3.7m.so.1.0", Some((3, 7))),
            ("/usr/local/bin/python3.12d", Some((3, 12))),
            ("/usr/bin/python3", None),
            ("/usr/bin/python3.11-config", None),
            ("/usr/lib/libpython2.7.so", None),
            ("/opt/python3.11x", None),
        ];
        for (path, want) in cases {
            assert_eq!(version_of_path(path), want, "{path}");
        }
    }

    #[test]
    fn every_supported_version_has_offsets_and_no_other() {
        for minor in 6..=13 {
            let o = offsets(minor).unwrap();
            // What BPF reads stays within its INTERP_READ_MAX-byte buffers.
            let p = PythonProcess {
                version: (3, minor),
                offsets: o,
                runtime: 0,
                code_type: 0,
                eval_loop: (0, 0),
                eval_loop_cold: (0, 0),
            };
            let info = p.interp_info();
            assert!(info.python.frame_size <= 256 && info.python.code_size <= 256);
        }
        assert!(offsets(5).is_none() && offsets(14).is_none());
    }

    #[test]
    fn lnotab_lines() {
        // Lines 10 (bytes 0..6), 12 (6..20), 11 (20..): deltas may be negative.
        let t = LineTable::new(LineFormat::Lnotab, 10, vec![6, 2, 14, 0xff]);
        assert_eq!(t.line(0), Some(10));
        assert_eq!(t.line(5), Some(10));
        assert_eq!(t.line(6), Some(12));
        assert_eq!(t.line(19), Some(12));
        assert_eq!(t.line(20), Some(11));
    }

    #[test]
    fn linetable_310_lines() {
        // Bytes 0..4: line 5; 4..10: no line; 10..16: line 7.
        let t = LineTable::new(LineFormat::Linetable310, 4, vec![4, 1, 6, 0x80, 6, 2]);
        assert_eq!(t.line(0), Some(5));
        assert_eq!(t.line(3), Some(5));
        assert_eq!(t.line(4), None);
        assert_eq!(t.line(12), Some(7));
        assert_eq!(t.line(16), None);
    }

    #[test]
    fn location_table_lines() {
        // Units 0..1: short form (line unchanged: 20); 1..3: one-line form
        // +1 (21); 3..4: no-column form −2 (19); 4..6: long form +5 (24).
        let t = LineTable::new(
            LineFormat::Locations,
            20,
            vec![
                0x80,               // code 0, 1 unit
                0x00,               // column byte
                0x80 | 11 << 3 | 1, // code 11 (+1), 2 units
                4,
                9,
                0x80 | 13 << 3,     // code 13, 1 unit
                0b101,              // svarint −2
                0x80 | 14 << 3 | 1, // code 14, 2 units
                10,                 // svarint +5
                0,
                1,
                1,
                0x80 | 15 << 3, // no location, 1 unit
            ],
        );
        assert_eq!(t.line(0), Some(20));
        assert_eq!(t.line(2), Some(21));
        assert_eq!(t.line(5), Some(21));
        assert_eq!(t.line(6), Some(19));
        assert_eq!(t.line(8), Some(24));
        assert_eq!(t.line(11), Some(24));
        assert_eq!(t.line(12), None);
        assert_eq!(t.line(14), None);
    }

    #[test]
    fn validation_tells_code_objects_apart_by_every_field() {
        let a = CodeIdentity {
            name_hash: 0x1234_5678_9abc_def0,
            first_line: 1,
            argcount: 0,
            filename: 0x7f00_0000_1000,
            filename_length: 12,
            word: 40,
        };
        let changes = [
            CodeIdentity { name_hash: 1, ..a },
            CodeIdentity { first_line: 2, ..a },
            CodeIdentity { argcount: 1, ..a },
            CodeIdentity {
                filename: 0x7f00_0000_1040,
                ..a
            },
            CodeIdentity {
                filename_length: 13,
                ..a
            },
            CodeIdentity { word: 41, ..a },
        ];
        for b in changes {
            assert_ne!(a.validation(), b.validation(), "{b:?}");
        }
    }
}
