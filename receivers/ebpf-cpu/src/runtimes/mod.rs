//! Interpreters whose frames the BPF walker emits (ebpf/cpu.bpf.c): each
//! runtime module recognizes its interpreter in a process's mappings, gives
//! the walker a per-process record (`struct interp_info`) and names the
//! frames it emitted, reading the process's memory soon after the sample.
//!
//! An interpreter frame is two words of a user stack (see
//! `INTERP_FRAME_TAG` in ebpf/cpu.h): what user space needs to name it.

pub mod go;
pub mod jvm;
pub mod php;
pub mod python;
pub mod ruby;
pub mod v8;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use object::{Object, ObjectSegment};

use crate::bpf::{self, INTERP_FRAME_TAG, INTERP_OFFSET_UNKNOWN};

/// One frame of a user stack as the BPF walker wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserFrame {
    /// A native code address.
    Native(u64),
    /// An interpreter frame.
    Interp(InterpFrame),
}

/// An interpreter frame: enough to name it later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterpFrame {
    /// `enum interp_kind`.
    pub kind: u32,
    /// The object that names it (CPython: the code object).
    pub object: u64,
    /// Checked against the object when it is read.
    pub validation: u32,
    /// Instruction offset; `None` when not known.
    pub offset: Option<u32>,
}

impl InterpFrame {
    /// The object's identity in a process: (object, validation).
    pub fn key(&self, pid: u32) -> CodeKey {
        CodeKey {
            pid,
            kind: self.kind,
            object: self.object,
            validation: self.validation,
        }
    }
}

/// Splits a user stack's words into frames, leaf first (an interpreter
/// frame is a tag word followed by its object's address).
pub fn user_frames(words: &[u64]) -> impl Iterator<Item = UserFrame> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let word = *words.get(i)?;
        let tag = (word >> 56) as u8;
        if tag & 0xf0 == INTERP_FRAME_TAG {
            let object = *words.get(i + 1)?;
            i += 2;
            let offset = ((word >> 32) & 0xff_ffff) as u32;
            return Some(UserFrame::Interp(InterpFrame {
                kind: u32::from(tag & 0x0f),
                object,
                validation: word as u32,
                offset: (offset != INTERP_OFFSET_UNKNOWN).then_some(offset),
            }));
        }
        i += 1;
        Some(UserFrame::Native(word))
    })
}

/// The tag word BPF writes for a CPython frame (`python_frame` in
/// ebpf/runtimes/python.h), for tests.
#[cfg(test)]
pub(crate) fn cpython_tag_word(offset: u64, validation: u32) -> u64 {
    (u64::from(INTERP_FRAME_TAG | bpf::interp_kind::CPYTHON as u8) << 56)
        | (offset << 32)
        | u64::from(validation)
}

/// The interpreter a process runs, as found in its mappings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// CPython.
    Python(Arc<python::PythonProcess>),
    /// PHP.
    Php(Arc<php::PhpProcess>),
    /// Ruby.
    Ruby(Arc<ruby::RubyProcess>),
    /// V8 (Node.js).
    V8(Arc<v8::V8Process>),
    /// The JVM (HotSpot).
    Jvm(Arc<jvm::JvmProcess>),
}

impl Runtime {
    /// The record the BPF walker reads.
    pub fn interp_info(&self) -> bpf::InterpInfo {
        match self {
            Runtime::Python(p) => p.interp_info(),
            Runtime::Php(p) => p.interp_info(),
            Runtime::Ruby(p) => p.interp_info(),
            Runtime::V8(p) => p.interp_info(),
            Runtime::Jvm(p) => p.interp_info(),
        }
    }

    /// A short description for logs and metrics, e.g. `cpython 3.11`.
    pub fn describe(&self) -> String {
        match self {
            Runtime::Python(p) => format!("cpython {}.{}", p.version.0, p.version.1),
            Runtime::Php(p) => format!("php {}.{}", p.version.0, p.version.1),
            Runtime::Ruby(p) => format!("ruby {}.{}", p.version.0, p.version.1),
            Runtime::V8(p) => format!("v8 {}.{}", p.version.0, p.version.1),
            Runtime::Jvm(p) => format!("jvm {}.{}", p.version.0, p.version.1),
        }
    }

    /// Names the object of a frame this runtime's walker emitted, if it
    /// still is the one BPF saw.
    fn name(&self, key: CodeKey) -> Result<CodeInfo, NameError> {
        match self {
            Runtime::Python(p) => p.name_code(key.pid, key.object, key.validation),
            Runtime::Php(p) => p.name_function(key.pid, key.object, key.validation),
            Runtime::Ruby(p) => p.name_object(key.pid, key.object, key.validation),
            Runtime::V8(p) => p.name_frame(key),
            Runtime::Jvm(p) => p.name_frame(key),
        }
    }
}

/// A validation value from two words of an interpreter's object, as BPF
/// computes it (`pair_validation` in ebpf/cpu.bpf.c).
pub fn pair_validation(a: u64, b: u64) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let h = (a ^ 0x5638).wrapping_mul(K);
    ((h ^ b).wrapping_mul(K) >> 32) as u32
}

/// A file's PT_LOAD segments: (file offset, file size, virtual address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments(pub Vec<(u64, u64, u64)>);

impl Segments {
    /// The segments of an ELF file.
    pub fn of(obj: &object::File<'_>) -> Self {
        Self(
            obj.segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    (offset, size, s.address())
                })
                .collect(),
        )
    }

    /// The difference between process addresses and the file's virtual
    /// addresses, for a mapping of it at `start` from file `offset`.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|&&(o, size, _)| offset >= o && offset - o < size.max(1))
            .map(|&(o, _, vaddr)| start.wrapping_sub(offset - o + vaddr))
    }
}

/// A (start, size) range of a file at `bias`: [start, end) in the process.
fn process_range((start, size): (u64, u64), bias: u64) -> (u64, u64) {
    let start = start.wrapping_add(bias);
    (start, start.wrapping_add(size))
}

/// Why a file that looks like an interpreter's is not used.
#[derive(Debug, PartialEq, Eq)]
pub enum DetectError {
    /// Not an ELF file we can read.
    Unreadable(String),
    /// A version the offsets tables do not cover (what it is, and which are).
    UnsupportedVersion(String),
    /// A symbol the unwinder needs is missing (a stripped build).
    MissingSymbol(&'static str),
    /// The interpreter loop is not in this file (a launcher linked to the
    /// library where the interpreter is).
    NoInterpreter,
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetectError::Unreadable(e) => write!(f, "unreadable: {e}"),
            DetectError::UnsupportedVersion(v) => write!(f, "unsupported version: {v}"),
            DetectError::MissingSymbol(s) => write!(f, "no symbol {s} (stripped?)"),
            DetectError::NoInterpreter => f.write_str("no interpreter loop in this file"),
        }
    }
}

/// Why a frame could not be named.
#[derive(Debug)]
pub enum NameError {
    /// The process's memory could not be read (it exited, or the object was freed).
    Read(std::io::Error),
    /// The object is not what the frame said (any more).
    NotCode,
    /// Another object lives at the address now.
    Stale,
    /// A string or table longer than we read.
    TooLong,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Read(e) => write!(f, "reading process memory: {e}"),
            NameError::NotCode => f.write_str("not a code object"),
            NameError::Stale => f.write_str("another object lives there now"),
            NameError::TooLong => f.write_str("a string or line table is too long"),
        }
    }
}

/// The little-endian u64 at byte `at` of `buf` (0 past its end).
fn u64_in(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// The little-endian u32 at byte `at` of `buf` (0 past its end).
fn u32_in(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
}

/// The little-endian word at `address` of process `pid`.
fn read_u64(pid: u32, address: u64) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    read_memory(pid, address, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// An interpreter object in a process, as a frame refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodeKey {
    /// Process.
    pub pid: u32,
    /// The frame's `enum interp_kind`.
    pub kind: u32,
    /// The object's address.
    pub object: u64,
    /// Its validation value.
    pub validation: u32,
}

/// What names an interpreter frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// Function name (qualified where the runtime knows it).
    pub name: String,
    /// Source file.
    pub filename: String,
    /// Line where the function starts.
    pub first_line: u32,
    /// Where a frame's line comes from.
    pub lines: LineSource,
}

/// Where the line of an interpreter frame comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineSource {
    /// The frame's offset is an instruction offset this table turns into a line.
    Table(python::LineTable),
    /// The frame's offset is the line itself (PHP: BPF reads the line of
    /// the frame's current opline).
    InFrame,
    /// The line of each instruction position; the frame's offset is one
    /// past its instruction (Ruby: a frame's pc points to the next one).
    ByPosition(Vec<u32>),
    /// (offset, line) pairs sorted by offset: a frame's line is that of the
    /// last pair at or below its offset (V8: bytecode offsets).
    ByOffset(Vec<(u32, u32)>),
    /// (offset, frames) pairs sorted by offset: a frame stands for the
    /// frames of the last pair at or below its offset, innermost first
    /// (V8's optimized code: the functions inlined there, then its own).
    Inlined(Vec<(u32, Arc<[InlineFrame]>)>),
}

/// One of the functions a frame of optimized code stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineFrame {
    /// Function name.
    pub name: Arc<str>,
    /// Source file.
    pub filename: Arc<str>,
    /// Line where the function starts.
    pub first_line: u32,
    /// Line the frame is at.
    pub line: u32,
}

/// The value of the last of `pairs` (sorted by offset) at or below `offset`.
fn at_or_below<T>(pairs: &[(u32, T)], offset: u32) -> Option<&T> {
    let at = pairs.partition_point(|&(start, _)| start <= offset);
    at.checked_sub(1).map(|i| &pairs[i].1)
}

impl LineSource {
    /// Bytes held.
    pub fn len(&self) -> usize {
        match self {
            LineSource::Table(t) => t.len(),
            LineSource::InFrame => 0,
            LineSource::ByPosition(lines) => lines.len() * 4,
            LineSource::ByOffset(pairs) => pairs.len() * 8,
            LineSource::Inlined(pairs) => pairs
                .iter()
                .map(|(_, frames)| 8 + frames.len() * std::mem::size_of::<InlineFrame>())
                .sum(),
        }
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CodeInfo {
    /// The line of the instruction at `offset` (the first line when unknown).
    pub fn line(&self, offset: Option<u32>) -> u32 {
        let line = match &self.lines {
            LineSource::Table(t) => offset.and_then(|o| t.line(o)),
            LineSource::InFrame => offset.filter(|&l| l != 0),
            LineSource::ByPosition(lines) => offset
                .and_then(|o| lines.get(o.saturating_sub(1) as usize).copied())
                .filter(|&l| l != 0),
            LineSource::ByOffset(pairs) => offset.and_then(|o| at_or_below(pairs, o).copied()),
            LineSource::Inlined(pairs) => offset
                .and_then(|o| at_or_below(pairs, o))
                .and_then(|frames| frames.last())
                .map(|own| own.line),
        };
        line.unwrap_or(self.first_line)
    }

    /// The frames a frame at `offset` stands for, innermost first, when
    /// its code has other functions inlined there (none: the frame is the
    /// code's own function alone).
    pub fn inlined_at(&self, offset: Option<u32>) -> Option<&[InlineFrame]> {
        match &self.lines {
            LineSource::Inlined(pairs) => offset
                .and_then(|o| at_or_below(pairs, o))
                .map(|frames| &frames[..])
                .filter(|frames| frames.len() > 1),
            _ => None,
        }
    }
}

/// Names found so far, by object, with counts of what could not be named;
/// within a byte budget.
#[derive(Default)]
pub struct CodeNames {
    names: HashMap<CodeKey, Entry>,
    /// Bytes of names and line tables held.
    bytes: usize,
    /// Objects named.
    pub resolved: u64,
    /// Objects that could not be named (freed, reused, unreadable).
    pub failed: u64,
    window: u64,
}

struct Entry {
    /// `None`: tried and failed (not tried again).
    info: Option<Arc<CodeInfo>>,
    /// The window it was last used in.
    used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        std::mem::size_of::<(CodeKey, Entry)>()
            + self.info.as_ref().map_or(0, |i| {
                std::mem::size_of::<CodeInfo>() + i.name.len() + i.filename.len() + i.lines.len()
            })
    }
}

/// Bytes of names held at most; past it, those unused in the last two
/// windows go at the window's end.
const NAMES_BUDGET_BYTES: usize = 16 << 20;

impl CodeNames {
    /// Names `key` now unless it is known (or failed before), reading the
    /// memory of the process `runtime` runs in.
    pub fn resolve(&mut self, key: CodeKey, runtime: Option<&Runtime>) -> Option<Arc<CodeInfo>> {
        let window = self.window;
        if let Some(entry) = self.names.get_mut(&key) {
            entry.used = window;
            return entry.info.clone();
        }
        // Without the process's interpreter nothing is tried (nor remembered).
        let runtime = runtime?;
        let info = match runtime.name(key) {
            Ok(info) => {
                self.resolved += 1;
                Some(Arc::new(info))
            }
            Err(e) => {
                tracing::trace!(pid = key.pid, object = key.object, error = %e, "cannot name an interpreter frame");

                self.failed += 1;
                None
            }
        };
        let entry = Entry {
            info: info.clone(),
            used: window,
        };
        self.bytes += entry.bytes();
        self.names.insert(key, entry);
        info
    }

    /// After a window: forgets the objects of processes gone, and if over
    /// budget those not used in the last two windows.
    pub fn next_window(&mut self, gone: &[u32]) {
        if !gone.is_empty() {
            self.names.retain(|k, _| !gone.contains(&k.pid));
        }
        if self.bytes > NAMES_BUDGET_BYTES {
            let window = self.window;
            self.names.retain(|_, e| e.used + 2 > window);
        }
        self.bytes = self.names.values().map(Entry::bytes).sum();
        self.window += 1;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Reads `buf.len()` bytes at `address` of process `pid`.
pub fn read_memory(pid: u32, address: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, which outlives the call; the
    // remote side is only read by the kernel.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "short read of process memory",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_frames_are_two_words_and_native_frames_one() {
        let tag = cpython_tag_word;
        let words = [
            0x5555_0000_1000,
            tag(42, 0xdead_beef),
            0x7f00_0000_2000,
            tag(u64::from(INTERP_OFFSET_UNKNOWN), 7),
            0x7f00_0000_3000,
            0x5555_0000_0100,
        ];
        let frames: Vec<UserFrame> = user_frames(&words).collect();
        assert_eq!(
            frames,
            [
                UserFrame::Native(0x5555_0000_1000),
                UserFrame::Interp(InterpFrame {
                    kind: bpf::interp_kind::CPYTHON,
                    object: 0x7f00_0000_2000,
                    validation: 0xdead_beef,
                    offset: Some(42),
                }),
                UserFrame::Interp(InterpFrame {
                    kind: bpf::interp_kind::CPYTHON,
                    object: 0x7f00_0000_3000,
                    validation: 7,
                    offset: None,
                }),
                UserFrame::Native(0x5555_0000_0100),
            ]
        );
        // A tag word cut off from its object (a truncated stack) ends the frames.
        assert_eq!(user_frames(&words[..2]).count(), 1);
    }

    #[test]
    fn lines_come_from_the_frame_or_the_instruction_before_its_pc() {
        let info = |lines| CodeInfo {
            name: "f".into(),
            filename: "f.rb".into(),
            first_line: 7,
            lines,
        };
        // Ruby: offset n is one past instruction n - 1 (0: the first).
        let ruby = info(LineSource::ByPosition(vec![10, 10, 11, 12]));
        assert_eq!(ruby.line(Some(0)), 10);
        assert_eq!(ruby.line(Some(3)), 11);
        assert_eq!(ruby.line(Some(4)), 12);
        assert_eq!(ruby.line(Some(9)), 7, "past the table: the first line");
        assert_eq!(ruby.line(None), 7);
        // PHP: the offset is the line.
        let php = info(LineSource::InFrame);
        assert_eq!(php.line(Some(42)), 42);
        assert_eq!(php.line(None), 7);
    }

    #[test]
    fn optimized_code_stands_for_the_functions_inlined_at_each_offset() {
        let frame = |name: &str, line| InlineFrame {
            name: Arc::from(name),
            filename: Arc::from("a.js"),
            first_line: 1,
            line,
        };
        let info = CodeInfo {
            name: "outer".into(),
            filename: "a.js".into(),
            first_line: 20,
            lines: LineSource::Inlined(vec![
                (0, Arc::from(vec![frame("outer", 21)])),
                (
                    8,
                    Arc::from(vec![frame("leaf", 6), frame("mid", 15), frame("outer", 24)]),
                ),
            ]),
        };
        assert_eq!(
            info.inlined_at(Some(3)),
            None,
            "the code's own function alone"
        );
        assert_eq!(info.line(Some(3)), 21);
        let at = info.inlined_at(Some(40)).unwrap();
        assert_eq!(
            at.iter().map(|f| &*f.name).collect::<Vec<_>>(),
            ["leaf", "mid", "outer"]
        );
        assert_eq!(
            info.line(Some(8)),
            24,
            "the code's own line is the outermost's"
        );
        assert_eq!(info.line(None), 20);
    }

    #[test]
    fn reads_its_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mut buf = [0u8; 8];
        read_memory(std::process::id(), &value as *const u64 as u64, &mut buf).unwrap();
        assert_eq!(u64::from_le_bytes(buf), value);
        assert!(read_memory(std::process::id(), 8, &mut buf).is_err());
    }
}
