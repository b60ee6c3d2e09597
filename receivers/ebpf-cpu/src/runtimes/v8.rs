//! V8, the JavaScript engine of Node.js: found by the `v8dbg_*` symbols of
//! `node` / `libnode.so` (V8's post-mortem metadata: the frame slots, field
//! offsets and type tags of that very build), its JavaScript frames read in
//! BPF as the native walk meets them (ebpf/runtimes/v8.h), named here from
//! the process's memory: the SharedFunctionInfo's name, its script's name,
//! and the line of an interpreted frame's bytecode offset.
//!
//! x86-64 builds without pointer compression (Node's): a tagged word is a
//! heap object's address + 1, or a small integer in its upper half.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use object::{Object, ObjectSection, ObjectSymbol, SectionKind};

use super::{
    pair_validation, process_range, read_memory, read_u64, CodeInfo, CodeKey, DetectError,
    InlineFrame, LineSource, NameError, Segments,
};
use crate::bpf::{self, InterpInfo, UnwindMapping, V8Layout, TABLE_ANONYMOUS};
use crate::deferred::{Registers, V8Frames};

/// Whether a file's name says it may hold V8 (`node`, `nodejs`, `node20`,
/// `libnode.so.108`).
pub fn may_be_v8(path: &str) -> bool {
    let Some(name) = Path::new(path).file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let node = name
        .strip_prefix("nodejs")
        .or_else(|| name.strip_prefix("node"))
        .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()));
    node || name.starts_with("libnode.so")
}

const HEAP_OBJECT_TAG: u64 = 1;

fn is_object(word: u64) -> bool {
    word & 3 == HEAP_OBJECT_TAG
}

fn is_smi(word: u64) -> bool {
    word & 1 == 0
}

fn smi(word: u64) -> i64 {
    (word as i64) >> 32
}

/// V8's post-mortem metadata: each `v8dbg_NAME` symbol's value, by NAME.
#[derive(Debug, Default)]
struct Metadata(HashMap<String, i64>);

impl Metadata {
    /// Reads every `v8dbg_` symbol's value (a 1- to 8-byte integer where
    /// the symbol points; 0 in `.bss`).
    fn read(obj: &object::File<'_>, data: &[u8], segments: &Segments) -> Self {
        let mut values = HashMap::new();
        for sym in obj.dynamic_symbols().chain(obj.symbols()) {
            let Some(name) = sym.name().ok().and_then(|n| n.strip_prefix("v8dbg_")) else {
                continue;
            };
            if values.contains_key(name) {
                continue;
            }
            let zero_filled = sym
                .section_index()
                .and_then(|i| obj.section_by_index(i).ok())
                .is_some_and(|s| s.kind() == SectionKind::UninitializedData);
            let value = if zero_filled {
                Some(0)
            } else {
                file_offset(segments, sym.address())
                    .and_then(|at| integer_at(data, at as usize, sym.size() as usize))
            };
            if let Some(value) = value {
                values.insert(name.to_owned(), value);
            }
        }
        Self(values)
    }

    fn get(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }

    /// `class_CLASS__FIELD__TYPE` for any TYPE (its spelling changes
    /// between versions: `Object`, `Tagged_Object_` …).
    fn field(&self, class: &str, field: &str) -> Option<u16> {
        let prefix = format!("class_{class}__{field}__");
        self.0
            .iter()
            .find(|(k, _)| k.starts_with(&prefix))
            .and_then(|(_, &v)| u16::try_from(v).ok())
    }

    fn required_field(
        &self,
        class: &str,
        field: &str,
        symbol: &'static str,
    ) -> Result<u16, DetectError> {
        self.field(class, field)
            .ok_or(DetectError::MissingSymbol(symbol))
    }

    fn type_tag(&self, name: &str) -> Option<u16> {
        self.get(&format!("type_{name}"))
            .and_then(|v| u16::try_from(v).ok())
    }
}

/// The file offset of ELF virtual address `vaddr`.
fn file_offset(segments: &Segments, vaddr: u64) -> Option<u64> {
    segments
        .0
        .iter()
        .find(|&&(_, size, start)| vaddr >= start && vaddr - start < size)
        .map(|&(offset, _, start)| offset + (vaddr - start))
}

/// The little-endian signed integer of `size` bytes at `at`.
fn integer_at(data: &[u8], at: usize, size: usize) -> Option<i64> {
    let bytes = data.get(at..at.checked_add(size)?)?;
    Some(match size {
        1 => i64::from(bytes[0] as i8),
        2 => i64::from(i16::from_le_bytes(bytes.try_into().ok()?)),
        4 => i64::from(i32::from_le_bytes(bytes.try_into().ok()?)),
        8 => i64::from_le_bytes(bytes.try_into().ok()?),
        _ => return None,
    })
}

/// Where one V8 build keeps what the walker and the namer read (byte
/// offsets; frame slots in bytes below the frame pointer).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    fp_context: u8,
    fp_function: u8,
    fp_bytecode_array: u8,
    fp_bytecode_offset: u8,
    function_shared: u16,
    map_instance_type: u16,
    sfi_function_data: u16,
    sfi_name: u16,
    sfi_script: u16,
    script_name: u16,
    script_source: u16,
    script_line_ends: u16,
    /// `FixedArrayBase.length` (a Smi) and where a FixedArray's or
    /// ByteArray's elements start.
    array_length: u16,
    array_data: u16,
    bytecode_positions: u16,
    bytecode_data: u16,
    /// Baseline code: its `bytecode_or_interpreter_data`; 0: not known.
    code_bytecode: u16,
    /// Compiled code, if this build's is understood.
    code: Option<CodeLayout>,
    scope_first_vars: u16,
    scope_context_locals: u16,
    /// V8 12.8+: a ScopeInfo's start and end positions are at fixed slots.
    scope_positions_fixed: bool,
    types: Types,
    strings: StringLayout,
}

/// Where compiled code (a `Code` object) keeps its instructions, source
/// positions and what was inlined into it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CodeLayout {
    function_code: u16,
    instruction_start: u16,
    start_is_pointer: bool,
    instruction_size: u16,
    flags: u16,
    kind_mask: u8,
    kind_shift: u8,
    kind_baseline: u8,
    source_positions: u16,
    deoptimization_data: u16,
    /// DeoptimizationData (a FixedArray): where its parts are.
    deopt_literals: u16,
    deopt_sfi: u16,
    /// V8 13+: the element at `deopt_sfi` wraps the SharedFunctionInfo,
    /// which is at this offset in the wrapper.
    deopt_sfi_wrapped: Option<u16>,
    deopt_inlining_positions: u16,
}

impl CodeLayout {
    /// From the metadata, or where the fields have been when it lost them
    /// (V8 11.x published no instruction start, size or flags).
    fn of(meta: &Metadata, version: (u8, u8), function_shared: u16) -> Option<Self> {
        // 11.x published the position table's place, 12.x the start's (and
        // has a wrapper pointer between them).
        let published_start = meta.field("Code", "instruction_start");
        // 10.x published neither: its Code's fourth word (after the map,
        // relocation info and deoptimization data) holds the table.
        let source_positions = meta
            .field("Code", "source_position_table")
            .or_else(|| {
                meta.type_tag("CodeWrapper__CODE_WRAPPER_TYPE")?;
                published_start?.checked_sub(24)
            })
            .or((version.0 == 10).then_some(24))?;
        let instruction_start = published_start.unwrap_or(source_positions + 16);
        let flags = meta.field("Code", "flags").unwrap_or(instruction_start + 8);
        // Two int16s (builtin id, kind-specific flags) before the size until 11.4.
        let instruction_size =
            meta.field("Code", "instruction_size")
                .unwrap_or(if version < (11, 4) {
                    flags + 8
                } else {
                    flags + 4
                });
        let kind_mask = meta.get("CodeKindFieldMask").unwrap_or(15);
        let kind_shift = meta.get("CodeKindFieldShift").unwrap_or(0);
        let index = |name: &str, default: i64| meta.get(name).unwrap_or(default) as u16;
        let (deopt_sfi, deopt_sfi_wrapped) =
            match meta.get("DeoptimizationDataWrappedSharedFunctionInfoIndex") {
                Some(i) => (
                    i as u16,
                    Some(meta.field("SharedFunctionInfoWrapper", "shared_info")?),
                ),
                None => (index("DeoptimizationDataSharedFunctionInfoIndex", 6), None),
            };
        Some(Self {
            // V8 13 dropped it (functions reach their code through a
            // dispatch table): 0, compiled code is not read.
            function_code: meta.field("JSFunction", "code").unwrap_or(match version {
                (13.., _) => 0,
                (12, _) | (11, 7..) => function_shared - 8,
                _ => function_shared + 24,
            }),
            instruction_start,
            start_is_pointer: version >= (11, 1),
            instruction_size,
            flags,
            kind_mask: u8::try_from(kind_mask >> kind_shift).ok()?,
            kind_shift: u8::try_from(kind_shift).ok()?,
            kind_baseline: u8::try_from(meta.get("CodeKindBaseline")?).ok()?,
            source_positions,
            deoptimization_data: meta
                .field("Code", "deoptimization_data")
                .unwrap_or(source_positions - 8),
            deopt_literals: index("DeoptimizationDataLiteralArrayIndex", 2),
            deopt_sfi,
            deopt_sfi_wrapped,
            deopt_inlining_positions: index("DeoptimizationDataInliningPositionsIndex", 7),
        })
    }

    /// Bytes of a Code object read (past every field used).
    fn size(&self) -> u16 {
        self.instruction_start
            .max(self.instruction_size)
            .max(self.flags)
            + 8
    }
}

/// Instance types (`Map.instance_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Types {
    sfi: u16,
    scope_info: u16,
    script: u16,
    bytecode_array: u16,
    code: u16,
}

/// How strings are laid out and told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StringLayout {
    first_nonstring: u16,
    representation_mask: u16,
    encoding_mask: u16,
    seq: u16,
    cons: u16,
    sliced: u16,
    thin: u16,
    one_byte: u16,
    length: u16,
    seq_chars: u16,
    cons_first: u16,
    cons_second: u16,
    sliced_parent: u16,
    sliced_offset: u16,
    thin_actual: u16,
}

impl Layout {
    fn of(meta: &Metadata, version: (u8, u8)) -> Result<Self, DetectError> {
        let below = |name: &'static str| -> Result<u8, DetectError> {
            meta.get(name.trim_start_matches("v8dbg_"))
                .filter(|v| (-128..0).contains(v))
                .map(|v| (-v) as u8)
                .ok_or(DetectError::MissingSymbol(name))
        };
        let fp_function = below("v8dbg_off_fp_function")?;
        // Not published before V8 9.5; two and three slots below the
        // function since 8.7.
        let fp_bytecode_array = below("v8dbg_off_fp_bytecode_array").unwrap_or(fp_function + 16);
        let fp_bytecode_offset = below("v8dbg_off_fp_bytecode_offset").unwrap_or(fp_function + 24);
        let sfi_name = meta.required_field(
            "SharedFunctionInfo",
            "name_or_scope_info",
            "v8dbg_class_SharedFunctionInfo__name_or_scope_info__*",
        )?;
        let script_name = meta.required_field("Script", "name", "v8dbg_class_Script__name__*")?;
        let array_length = meta.field("FixedArrayBase", "length").unwrap_or(8);
        let sfi_type = meta
            .type_tag("SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")
            .ok_or(DetectError::MissingSymbol(
                "v8dbg_type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE",
            ))?;
        // Published, or where it has been since 9.4: three words past the
        // array's length, its data 14 bytes (three int32 and an int16)
        // past the next word.
        let bytecode_positions = meta
            .field("BytecodeArray", "source_position_table")
            .unwrap_or(array_length + 24);
        let bytecode_data = meta
            .field("BytecodeArray", "data")
            .unwrap_or(bytecode_positions + 8 + 14);
        let string_tag = |name: &str, default: i64| meta.get(name).unwrap_or(default) as u16;
        Ok(Self {
            fp_context: below("v8dbg_off_fp_context")?,
            fp_function,
            fp_bytecode_array,
            fp_bytecode_offset,
            function_shared: meta.required_field(
                "JSFunction",
                "shared",
                "v8dbg_class_JSFunction__shared__SharedFunctionInfo",
            )?,
            map_instance_type: meta.required_field(
                "Map",
                "instance_type",
                "v8dbg_class_Map__instance_type__uint16_t",
            )?,
            sfi_function_data: meta
                .field("SharedFunctionInfo", "function_data")
                .or_else(|| meta.field("SharedFunctionInfo", "trusted_function_data"))
                .unwrap_or(8),
            sfi_name,
            sfi_script: meta
                .field("SharedFunctionInfo", "script_or_debug_info")
                .or_else(|| meta.field("SharedFunctionInfo", "script"))
                .ok_or(DetectError::MissingSymbol(
                    "v8dbg_class_SharedFunctionInfo__script_or_debug_info__*",
                ))?,
            script_name,
            script_source: meta.field("Script", "source").unwrap_or(script_name - 8),
            script_line_ends: meta.field("Script", "line_ends").unwrap_or(0),
            array_length,
            array_data: meta.field("FixedArray", "data").unwrap_or(array_length + 8),
            bytecode_positions,
            bytecode_data,
            // 10.x shares the deoptimization data's word (the third).
            code_bytecode: meta
                .field("Code", "bytecode_or_interpreter_data")
                .unwrap_or(if version.0 == 10 { 16 } else { 0 }),
            code: meta
                .type_tag("Code__CODE_TYPE")
                .and_then(|_| CodeLayout::of(meta, version, meta.field("JSFunction", "shared")?)),
            scope_first_vars: meta.get("scopeinfo_idx_first_vars").unwrap_or(3) as u16,
            scope_context_locals: meta.get("scopeinfo_idx_ncontextlocals").unwrap_or(2) as u16,
            scope_positions_fixed: version >= (12, 8),
            types: Types {
                sfi: sfi_type,
                scope_info: meta.type_tag("ScopeInfo__SCOPE_INFO_TYPE").unwrap_or(0),
                script: meta.type_tag("Script__SCRIPT_TYPE").unwrap_or(0),
                bytecode_array: meta
                    .type_tag("BytecodeArray__BYTECODE_ARRAY_TYPE")
                    .unwrap_or(0),
                code: meta.type_tag("Code__CODE_TYPE").unwrap_or(0),
            },
            strings: StringLayout {
                first_nonstring: string_tag("FirstNonstringType", 128),
                representation_mask: string_tag("StringRepresentationMask", 7),
                encoding_mask: string_tag("StringEncodingMask", 8),
                seq: string_tag("SeqStringTag", 0),
                cons: string_tag("ConsStringTag", 1),
                sliced: string_tag("SlicedStringTag", 3),
                thin: string_tag("ThinStringTag", 5),
                one_byte: string_tag("OneByteStringTag", 8),
                length: meta.field("String", "length").unwrap_or(12),
                seq_chars: meta.field("SeqOneByteString", "chars").unwrap_or(16),
                cons_first: meta.field("ConsString", "first").unwrap_or(16),
                cons_second: meta.field("ConsString", "second").unwrap_or(24),
                sliced_parent: meta.field("SlicedString", "parent").unwrap_or(16),
                sliced_offset: meta.field("SlicedString", "offset").unwrap_or(24),
                thin_actual: meta.field("ThinString", "actual").unwrap_or(16),
            },
        })
    }

    /// Bytes of a SharedFunctionInfo read (past every field used).
    fn sfi_size(&self) -> u16 {
        self.sfi_name
            .max(self.sfi_script)
            .max(self.sfi_function_data)
            + 8
    }
}

/// What a file holding V8 says about it (ELF virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V8Binary {
    /// V8's (major, minor); (0, 0) when the file does not say.
    pub version: (u8, u8),
    layout: Layout,
    /// The builtins' code (the interpreter's trampoline and bytecode
    /// handlers among them): (start, size).
    builtins: (u64, u64),
    /// Where its PT_LOAD segments are.
    pub segments: Segments,
}

impl V8Binary {
    /// Reads V8's metadata and where its builtins are from an ELF file.
    pub fn read(data: &[u8]) -> Result<Self, DetectError> {
        let obj = object::File::parse(data).map_err(|e| DetectError::Unreadable(e.to_string()))?;
        let segments = Segments::of(&obj);
        let meta = Metadata::read(&obj, data, &segments);
        if meta.0.is_empty() {
            return Err(DetectError::NoInterpreter);
        }
        let version_part = |name: &str| {
            let sym = obj
                .symbols()
                .chain(obj.dynamic_symbols())
                .find(|s| s.name() == Ok(name))?;
            let value = integer_at(data, file_offset(&segments, sym.address())? as usize, 4)?;
            u8::try_from(value).ok()
        };
        let version = version_part("_ZN2v88internal7Version6major_E")
            .zip(version_part("_ZN2v88internal7Version6minor_E"))
            .unwrap_or((0, 0));
        let layout = Layout::of(&meta, version)?;
        let builtins = builtins_range(&obj)
            .or_else(|| largest_unwind_gap(&obj))
            .ok_or(DetectError::MissingSymbol(
                "Builtins_* (the builtins' code), nor a gap in .eh_frame holding it",
            ))?;
        Ok(Self {
            version,
            layout,
            builtins,
            segments,
        })
    }
}

impl V8Binary {
    /// Where a mapping of this file at `start`..`end` from file `offset`
    /// holds the builtins' code, if it holds all of it: [start, end).
    pub fn builtins_in(&self, start: u64, end: u64, offset: u64) -> Option<(u64, u64)> {
        let file_start = file_offset(&self.segments, self.builtins.0)?;
        let at = start.checked_add(file_start.checked_sub(offset)?)?;
        (at + self.builtins.1 <= end).then_some((at, at + self.builtins.1))
    }
}

/// The code of V8's builtins, embedded in the binary: from the first
/// `Builtins_*` function to the end of the last.
fn builtins_range(obj: &object::File<'_>) -> Option<(u64, u64)> {
    let (mut start, mut end) = (u64::MAX, 0);
    for sym in obj.symbols().chain(obj.dynamic_symbols()) {
        if sym.kind() == object::SymbolKind::Text
            && sym.name().is_ok_and(|n| n.starts_with("Builtins_"))
        {
            start = start.min(sym.address());
            end = end.max(sym.address() + sym.size());
        }
    }
    (start < end).then(|| (start, end - start))
}

/// The builtins' code in a build without their symbols (Debian's
/// libnode): V8 embeds it as one blob of hand-generated code, which no
/// `.eh_frame` entry covers, so it is the one large gap between the
/// functions that have entries. Taken only when it stands out (the
/// blob is over a megabyte; other gaps are alignment and a few stubs).
fn largest_unwind_gap(obj: &object::File<'_>) -> Option<(u64, u64)> {
    use gimli::UnwindSection;
    const MIN_GAP: u64 = 512 * 1024;
    let section = obj.section_by_name(".eh_frame")?;
    let data = section.data().ok()?;
    let eh_frame = gimli::EhFrame::new(data, gimli::LittleEndian);
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = obj.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    let mut functions = Vec::new();
    let mut entries = eh_frame.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let gimli::CieOrFde::Fde(partial) = entry {
            if let Ok(fde) = partial.parse(gimli::EhFrame::cie_from_offset) {
                functions.push((fde.initial_address(), fde.end_address()));
            }
        }
    }
    functions.sort_unstable();
    let (mut largest, mut second) = ((0, 0), 0);
    let mut covered_to = functions.first()?.1;
    for &(start, end) in &functions[1..] {
        let gap = start.saturating_sub(covered_to);
        if gap > largest.1 {
            second = largest.1;
            largest = (covered_to, gap);
        } else {
            second = second.max(gap);
        }
        covered_to = covered_to.max(end);
    }
    (largest.1 >= MIN_GAP && largest.1 >= 4 * second).then_some(largest)
}

/// V8 as one process runs it (process addresses).
#[derive(Debug)]
pub struct V8Process {
    /// V8's (major, minor); (0, 0) when not known.
    pub version: (u8, u8),
    layout: Layout,
    builtins: (u64, u64),
    /// A second copy of the builtins, mapped next to generated code.
    builtins_copy: (u64, u64),
    /// Line ends of scripts named so far, by (script, source) address.
    line_ends: Mutex<HashMap<(u64, u64), LineEnds>>,
    /// The map of the objects whose header precedes instructions (V8 11.1+:
    /// instruction streams; before: Code), once one was found.
    header_map: AtomicU64,
}

impl PartialEq for V8Process {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.layout == other.layout
            && self.builtins == other.builtins
            && self.builtins_copy == other.builtins_copy
    }
}

impl Eq for V8Process {}

/// Where each line of a script ends (character offsets).
type LineEnds = Arc<Vec<u32>>;

/// By code offset, the frames there, innermost first.
type FramesByOffset = Vec<(u32, Arc<[InlineFrame]>)>;

/// Scripts whose line ends are kept per process; past it they are forgotten.
const LINE_ENDS_KEPT: usize = 256;
/// Longest string read: a name, or a script's source to find its lines in.
const MAX_STRING: u64 = 16 << 20;
/// Longest name kept.
const MAX_NAME: usize = 1024;
/// Bytes of code gone back over at most to find where code starts.
const MAX_CODE_SCAN: u64 = 1 << 20;
/// Longest source position table (or inlining table) read.
const MAX_POSITIONS: u64 = 1 << 20;

impl V8Process {
    /// V8 in `binary`, mapped with `bias`.
    pub fn new(binary: &V8Binary, bias: u64) -> Option<Self> {
        Some(Self {
            version: binary.version,
            layout: binary.layout.clone(),
            builtins: process_range(binary.builtins, bias),
            builtins_copy: (0, 0),
            line_ends: Mutex::default(),
            header_map: AtomicU64::new(0),
        })
    }

    /// Where the builtins' code is: [start, end).
    pub fn builtins(&self) -> (u64, u64) {
        self.builtins
    }

    /// Records the builtins' copy V8 mapped next to the code it generates.
    pub fn set_builtins_copy(&mut self, range: (u64, u64)) {
        self.builtins_copy = range;
    }

    /// The record the BPF walker reads (the builtins, and their copy, as
    /// the interpreter loop's ranges).
    pub fn interp_info(&self) -> InterpInfo {
        let l = &self.layout;
        let code = l.code.as_ref();
        InterpInfo {
            kind: bpf::interp_kind::V8,
            version: u32::from(self.version.0) << 8 | u32::from(self.version.1),
            loop_start: self.builtins.0,
            loop_end: self.builtins.1,
            cold_start: self.builtins_copy.0,
            cold_end: self.builtins_copy.1,
            v8: V8Layout {
                fp_context: l.fp_context,
                fp_function: l.fp_function,
                fp_bytecode_array: l.fp_bytecode_array,
                fp_bytecode_offset: l.fp_bytecode_offset,
                function_shared: l.function_shared,
                function_code: code.map_or(0, |c| c.function_code),
                code_kind_mask: code.map_or(0, |c| c.kind_mask),
                code_kind_shift: code.map_or(0, |c| c.kind_shift),
                code_kind_baseline: code.map_or(0, |c| c.kind_baseline),
                code_start_is_pointer: code.map_or(0, |c| u8::from(c.start_is_pointer)),
                code_instruction_start: code.map_or(0, |c| c.instruction_start),
                code_instruction_size: code.map_or(0, |c| c.instruction_size),
                code_flags: code.map_or(0, |c| c.flags),
                code_size: code.map_or(0, CodeLayout::size),
                type_code: l.types.code,
                map_instance_type: l.map_instance_type,
                sfi_function_data: l.sfi_function_data,
                sfi_name: l.sfi_name,
                sfi_script: l.sfi_script,
                sfi_size: l.sfi_size(),
                type_sfi: l.types.sfi,
                type_bytecode_array: l.types.bytecode_array,
                reserved: [0; 2],
            },
            ..InterpInfo::default()
        }
    }

    /// Names a frame's object, if it still is the one the BPF walker saw
    /// (`key.validation`): a SharedFunctionInfo or optimized Code (tagged),
    /// or the address of code its function no longer points to.
    pub fn name_frame(&self, key: CodeKey) -> Result<CodeInfo, NameError> {
        let l = &self.layout;
        let reader = Reader {
            pid: key.pid,
            layout: l,
        };
        if key.kind == bpf::interp_kind::V8_CODE_ADDRESS {
            return self.name_code_address(&reader, key.object, key.validation);
        }
        let kind = reader.type_of(key.object)?;
        if kind == l.types.sfi {
            self.name_sfi(&reader, key.object, key.validation)
        } else if kind == l.types.code && l.code.is_some() {
            self.name_code(&reader, key.object, key.validation)
        } else {
            Err(NameError::NotCode)
        }
    }

    /// An interpreted (or baseline-compiled) function's frame: its offset
    /// is the frame's raw bytecode offset slot.
    fn name_sfi(
        &self,
        reader: &Reader<'_>,
        sfi: u64,
        validation: u32,
    ) -> Result<CodeInfo, NameError> {
        let l = reader.layout;
        if reader.sfi_validation(sfi)? != validation {
            return Err(NameError::Stale);
        }
        let function = self.function(reader, sfi)?;
        // The slot holds the offset from the tagged BytecodeArray's address.
        let base = u32::from(l.bytecode_data) - 1;
        let lines = function
            .bytecode
            .iter()
            .filter_map(|&(offset, position)| Some((offset + base, function.line(position)?)))
            .collect();
        Ok(CodeInfo {
            name: function.name.to_string(),
            filename: function.filename.to_string(),
            first_line: function.first_line,
            lines: LineSource::ByOffset(lines),
        })
    }

    /// Optimized code's frame: its offset is the pc's (or the call's) in
    /// the code's instructions, where the functions inlined at it are found
    /// from the code's source positions and deoptimization data.
    fn name_code(
        &self,
        reader: &Reader<'_>,
        code: u64,
        validation: u32,
    ) -> Result<CodeInfo, NameError> {
        let (start, size) = reader.instructions(code)?;
        if pair_validation(start, u64::from(size)) != validation {
            return Err(NameError::Stale);
        }
        let (own, frames) = self.inlined(reader, code, None)?;
        Ok(CodeInfo {
            name: own.name.to_string(),
            filename: own.filename.to_string(),
            first_line: own.first_line,
            lines: LineSource::Inlined(frames),
        })
    }

    /// A frame of code its function no longer points to (on-stack
    /// replacement, code deoptimized since): the Code holding `address`,
    /// found by going back from it to its instructions' start, and the
    /// frames at `address` alone (the frame's offset is 0). `validation`
    /// is the function's: the code must be that function's.
    fn name_code_address(
        &self,
        reader: &Reader<'_>,
        address: u64,
        validation: u32,
    ) -> Result<CodeInfo, NameError> {
        let l = reader.layout;
        let (code, start) = reader.code_holding(address, &self.header_map)?;
        let own = reader.own_function(code)?;
        if reader.type_of(own)? != l.types.sfi || reader.sfi_validation(own)? != validation {
            return Err(NameError::Stale);
        }
        let offset = u32::try_from(address - start).map_err(|_| NameError::NotCode)?;
        let (own, frames) = self.inlined(reader, code, Some(offset))?;
        Ok(CodeInfo {
            name: own.name.to_string(),
            filename: own.filename.to_string(),
            first_line: own.first_line,
            lines: LineSource::Inlined(frames),
        })
    }

    /// The code's own function, and by code offset the frames there,
    /// innermost first: each inlined function at its position, then its
    /// caller at the position of the call it was inlined for. With `only`,
    /// the frames at that offset alone, at offset 0.
    fn inlined(
        &self,
        reader: &Reader<'_>,
        code: u64,
        only: Option<u32>,
    ) -> Result<(Arc<Function>, FramesByOffset), NameError> {
        let l = reader.layout;
        let c = l.code.as_ref().ok_or(NameError::NotCode)?;
        let deopt = reader.word(code, c.deoptimization_data)?;
        let element = |index: u16| reader.word(deopt, l.array_data + 8 * index);
        let literals = element(c.deopt_literals)?;
        let inlining = reader
            .bytes_of(element(c.deopt_inlining_positions)?)
            .unwrap_or_default();
        let table = reader
            .position_table(reader.word(code, c.source_positions)?)
            .unwrap_or_default();
        let mut positions: Vec<(u32, u64)> = decode_raw_positions(&table).collect();
        if let Some(offset) = only {
            let at = positions.partition_point(|&(o, _)| o <= offset);
            positions = at
                .checked_sub(1)
                .map(|i| vec![(0, positions[i].1)])
                .unwrap_or_default();
        }
        let mut functions: HashMap<u64, Arc<Function>> = HashMap::new();
        let mut function = |sfi: u64| -> Result<Arc<Function>, NameError> {
            if let Some(f) = functions.get(&sfi) {
                return Ok(f.clone());
            }
            if reader.type_of(sfi)? != l.types.sfi {
                return Err(NameError::NotCode);
            }
            let f = Arc::new(self.function(reader, sfi)?);
            functions.insert(sfi, f.clone());
            Ok(f)
        };
        let own = function(reader.own_function(code)?)?;
        let mut at_offsets = Vec::with_capacity(positions.len());
        for (offset, mut position) in positions {
            let mut frames = Vec::new();
            for _ in 0..MAX_INLINING_DEPTH {
                let id = (position >> 31) & 0xffff;
                if id == 0 {
                    break;
                }
                let entry = (id as usize - 1) * 16;
                let Some(item) = inlining.get(entry..entry + 16) else {
                    break;
                };
                let call_site = u64::from_le_bytes(item[..8].try_into().unwrap());
                let function_id = i32::from_le_bytes(item[8..12].try_into().unwrap());
                let inlined = match u16::try_from(function_id) {
                    Ok(id) => function(reader.word(literals, l.array_data + 8 * id)?)?,
                    Err(_) => own.clone(),
                };
                frames.push(inlined.frame(position));
                position = call_site;
            }
            frames.push(own.frame(position));
            at_offsets.push((offset, Arc::from(frames)));
        }
        Ok((own, at_offsets))
    }

    /// What names a function: its name, script name and lines.
    fn function(&self, reader: &Reader<'_>, sfi: u64) -> Result<Function, NameError> {
        let l = reader.layout;
        let (name_or_scope, script) = (
            reader.word(sfi, l.sfi_name)?,
            reader.word(sfi, l.sfi_script)?,
        );
        let (mut name, mut start) = (None, None);
        if is_object(name_or_scope) {
            let kind = reader.type_of(name_or_scope)?;
            if kind < l.strings.first_nonstring {
                name = Some(reader.string(name_or_scope, MAX_NAME as u64)?);
            } else if kind == l.types.scope_info {
                (name, start) = reader.scope_info(name_or_scope);
            }
        }
        let (mut filename, mut line_ends) = (String::new(), None);
        if is_object(script) && reader.type_of(script)? == l.types.script {
            let script_name = reader.word(script, l.script_name)?;
            if is_object(script_name) && reader.type_of(script_name)? < l.strings.first_nonstring {
                filename = reader.string(script_name, MAX_NAME as u64)?;
            }
            line_ends = self.line_ends(reader, script);
        }
        let mut function = Function {
            name: Arc::from(match name {
                Some(n) if !n.is_empty() => n,
                _ => "(anonymous)".to_owned(),
            }),
            filename: Arc::from(filename),
            line_ends,
            first_line: 0,
            bytecode: reader
                .bytecode_positions(reader.word(sfi, l.sfi_function_data)?)
                .unwrap_or_default(),
        };
        // The bytecode's first position is the function's own; the
        // ScopeInfo's start (found by a heuristic) only stands in for it.
        function.first_line = function
            .bytecode
            .iter()
            .filter_map(|&(_, position)| function.line(position))
            .min()
            .or_else(|| start.and_then(|s| function.line(s)))
            .unwrap_or(0);
        Ok(function)
    }

    /// The offsets where each line of `script`'s source ends.
    fn line_ends(&self, reader: &Reader<'_>, script: u64) -> Option<LineEnds> {
        let l = reader.layout;
        let at = |field: u16| read_u64(reader.pid, untag(script) + u64::from(field)).ok();
        let source = at(l.script_source)?;
        let key = (script, source);
        if let Some(ends) = self.line_ends.lock().unwrap().get(&key) {
            return Some(ends.clone());
        }
        // V8 keeps them once something asked (an error's stack, a
        // debugger); else they are found in the source.
        let kept = (l.script_line_ends != 0)
            .then(|| at(l.script_line_ends))
            .flatten()
            .and_then(|ends| reader.smi_array(ends));
        let ends = match kept {
            Some(ends) if !ends.is_empty() => ends,
            _ => {
                let text = reader.utf16(source, MAX_STRING).ok()?;
                text.iter()
                    .enumerate()
                    .filter(|&(_, &c)| c == u16::from(b'\n'))
                    .map(|(i, _)| i as u32)
                    .collect()
            }
        };
        let ends = Arc::new(ends);
        let mut kept = self.line_ends.lock().unwrap();
        if kept.len() >= LINE_ENDS_KEPT {
            kept.clear();
        }
        kept.insert(key, ends.clone());
        Some(ends)
    }
}

/// V8's frames of one process, for walks finished in user space.
pub struct ProcessFrames<'a> {
    v8: &'a V8Process,
    pid: u32,
}

impl V8Process {
    /// Reads the frames of process `pid` (which runs this V8).
    pub fn frames_of(&self, pid: u32) -> ProcessFrames<'_> {
        ProcessFrames { v8: self, pid }
    }

    fn in_builtins(&self, pc: u64) -> bool {
        [self.builtins, self.builtins_copy]
            .iter()
            .any(|&(start, end)| start <= pc && pc < end)
    }
}

impl V8Frames for ProcessFrames<'_> {
    fn is_v8_code(&self, pc: u64, mapping: Option<&UnwindMapping>) -> bool {
        self.v8.in_builtins(pc) || mapping.is_none_or(|m| m.table_id == TABLE_ANONYMOUS)
    }

    /// As `v8_frame` in ebpf/runtimes/v8.h, save that compiled frames name
    /// their function only (their code is not looked up).
    fn frame(&self, regs: &Registers, slot: &dyn Fn(u64) -> Option<u64>) -> Option<[u64; 2]> {
        let l = &self.v8.layout;
        let below = |distance: u8| slot(regs.bp.checked_sub(u64::from(distance))?);
        let (context, function) = (below(l.fp_context)?, below(l.fp_function)?);
        if !is_object(context) || !is_object(function) {
            return None;
        }
        let reader = Reader {
            pid: self.pid,
            layout: l,
        };
        let sfi = reader.word(function, l.function_shared).ok()?;
        if reader.type_of(sfi).ok()? != l.types.sfi {
            return None;
        }
        let validation = reader.sfi_validation(sfi).ok()?;
        let mut offset = bpf::INTERP_OFFSET_UNKNOWN;
        if let (true, Some(bytecode), Some(at)) = (
            self.v8.in_builtins(regs.pc),
            below(l.fp_bytecode_array),
            below(l.fp_bytecode_offset),
        ) {
            if is_smi(at)
                && reader.type_of(bytecode).ok() == Some(l.types.bytecode_array)
                && (at >> 32) < u64::from(bpf::INTERP_OFFSET_UNKNOWN)
            {
                offset = (at >> 32) as u32;
            }
        }
        let tag = u64::from(bpf::INTERP_FRAME_TAG | bpf::interp_kind::V8 as u8) << 56;
        Some([tag | u64::from(offset) << 32 | u64::from(validation), sfi])
    }
}

fn untag(object: u64) -> u64 {
    object.wrapping_sub(HEAP_OBJECT_TAG)
}

/// The 1-based line holding character `position`, given where lines end.
fn line_of_position(ends: &[u32], position: u32) -> u32 {
    ends.partition_point(|&end| end < position) as u32 + 1
}

/// Functions inlined into each other at most this deep are followed.
const MAX_INLINING_DEPTH: usize = 32;

/// A JavaScript function as frames name it.
struct Function {
    name: Arc<str>,
    filename: Arc<str>,
    line_ends: Option<LineEnds>,
    first_line: u32,
    /// (bytecode offset, script offset) pairs, where V8 has built them.
    bytecode: Vec<(u32, u32)>,
}

impl Function {
    /// The line of a script offset, if the script's lines are known.
    fn line(&self, position: u32) -> Option<u32> {
        self.line_ends
            .as_ref()
            .map(|ends| line_of_position(ends, position))
    }

    /// Its frame at a packed source position (the first line when the
    /// position is unknown or external).
    fn frame(&self, position: u64) -> InlineFrame {
        let line = script_offset(position)
            .and_then(|p| self.line(p))
            .unwrap_or(self.first_line);
        InlineFrame {
            name: self.name.clone(),
            filename: self.filename.clone(),
            first_line: self.first_line,
            line,
        }
    }
}

/// The script offset of a packed SourcePosition (bit 0: external; bits
/// 1–30: the offset + 1; bits 31–46: the inlining id + 1).
fn script_offset(position: u64) -> Option<u32> {
    let offset = ((position >> 1) & ((1 << 30) - 1)) as i64 - 1;
    (position & 1 == 0 && offset >= 0).then_some(offset as u32)
}

/// Reads V8's objects from a process.
struct Reader<'a> {
    pid: u32,
    layout: &'a Layout,
}

impl Reader<'_> {
    fn word(&self, object: u64, at: u16) -> Result<u64, NameError> {
        read_u64(self.pid, untag(object) + u64::from(at)).map_err(NameError::Read)
    }

    /// The validation value of a SharedFunctionInfo, from its words now.
    fn sfi_validation(&self, sfi: u64) -> Result<u32, NameError> {
        let l = self.layout;
        Ok(pair_validation(
            self.word(sfi, l.sfi_name)?,
            self.word(sfi, l.sfi_script)?,
        ))
    }

    /// The instance type of a heap object.
    fn type_of(&self, object: u64) -> Result<u16, NameError> {
        if !is_object(object) {
            return Err(NameError::NotCode);
        }
        let map = self.word(object, 0)?;
        if !is_object(map) {
            return Err(NameError::NotCode);
        }
        let mut b = [0u8; 2];
        read_memory(
            self.pid,
            untag(map) + u64::from(self.layout.map_instance_type),
            &mut b,
        )
        .map_err(NameError::Read)?;
        Ok(u16::from_le_bytes(b))
    }

    /// The SharedFunctionInfo optimized code was compiled for.
    fn own_function(&self, code: u64) -> Result<u64, NameError> {
        let l = self.layout;
        let c = l.code.as_ref().ok_or(NameError::NotCode)?;
        let deopt = self.word(code, c.deoptimization_data)?;
        let own = self.word(deopt, l.array_data + 8 * c.deopt_sfi)?;
        match c.deopt_sfi_wrapped {
            Some(at) => self.word(own, at),
            None => Ok(own),
        }
    }

    /// Where a Code object's instructions are: (start, size).
    fn instructions(&self, code: u64) -> Result<(u64, u32), NameError> {
        let c = self.layout.code.as_ref().ok_or(NameError::NotCode)?;
        let start = if c.start_is_pointer {
            self.word(code, c.instruction_start)?
        } else {
            untag(code) + u64::from(c.instruction_start)
        };
        let mut size = [0u8; 4];
        read_memory(
            self.pid,
            untag(code) + u64::from(c.instruction_size),
            &mut size,
        )
        .map_err(NameError::Read)?;
        Ok((start, u32::from_le_bytes(size)))
    }

    /// The Code object whose instructions hold `address`, and their start.
    /// Instructions start at a multiple of 32 after a header: since V8 11.1
    /// that of an object of their own, starting with its map and a pointer
    /// back to the Code; before, the Code's own (its instructions are
    /// inline). Candidates are tried going back from `address`, page by
    /// page while pages are mapped (after the first find, only where that
    /// map is).
    fn code_holding(&self, address: u64, header_map: &AtomicU64) -> Result<(u64, u64), NameError> {
        const CODE_ALIGNMENT: u64 = 32;
        const PAGE: u64 = 4096;
        let c = self.layout.code.as_ref().ok_or(NameError::NotCode)?;
        // (bytes from the header to the instructions, whether the header is
        // the Code's); the instruction stream's header is 16 bytes before V8
        // 12, 32 since.
        let inline_header = [(u64::from(c.instruction_start), true)];
        let headers: &[(u64, bool)] = if c.start_is_pointer {
            &[(16, false), (32, false)]
        } else {
            &inline_header
        };
        let reach = headers.iter().map(|h| h.0).max().unwrap_or(0);
        if !(CODE_ALIGNMENT..PAGE).contains(&reach) {
            return Err(NameError::NotCode);
        }
        let known_map = header_map.load(Ordering::Relaxed);
        let word = |buf: &[u8], at: u64| {
            u64::from_le_bytes(buf[at as usize..at as usize + 8].try_into().unwrap())
        };
        let mut buf = vec![0u8; PAGE as usize];
        let mut base = address & !(PAGE - 1);
        // The page [base, base + PAGE) holds the headers of the candidates
        // in [base + reach, base + PAGE] (all that is left of the page
        // above, as candidates are aligned).
        let mut start = address & !(CODE_ALIGNMENT - 1);
        for _ in 0..MAX_CODE_SCAN / PAGE {
            read_memory(self.pid, base, &mut buf).map_err(|_| NameError::NotCode)?;
            while start >= base + reach {
                for &(header, is_code) in headers {
                    let at = start - header - base;
                    let map = word(&buf, at);
                    let code = if is_code {
                        start - header + 1
                    } else {
                        word(&buf, at + 8)
                    };
                    if (known_map == 0 || map == known_map)
                        && is_object(map)
                        && is_object(code)
                        && self.type_of(code).ok() == Some(self.layout.types.code)
                        && matches!(self.instructions(code), Ok((s, size)) if s == start && address - s < u64::from(size))
                    {
                        header_map.store(map, Ordering::Relaxed);
                        return Ok((code, start));
                    }
                }
                start -= CODE_ALIGNMENT;
            }
            base = base.checked_sub(PAGE).ok_or(NameError::NotCode)?;
        }
        Err(NameError::NotCode)
    }

    /// A string's text (at most `limit` characters).
    fn string(&self, string: u64, limit: u64) -> Result<String, NameError> {
        Ok(String::from_utf16_lossy(&self.utf16(string, limit)?))
    }

    /// A string's characters as UTF-16 (one-byte strings are Latin-1).
    fn utf16(&self, string: u64, limit: u64) -> Result<Vec<u16>, NameError> {
        let mut out = Vec::new();
        self.append_utf16(string, limit, 16, &mut out)?;
        Ok(out)
    }

    fn append_utf16(
        &self,
        string: u64,
        limit: u64,
        depth: u32,
        out: &mut Vec<u16>,
    ) -> Result<(), NameError> {
        let s = &self.layout.strings;
        let kind = self.type_of(string)?;
        if kind >= s.first_nonstring || depth == 0 {
            return Err(NameError::NotCode);
        }
        let mut len_bytes = [0u8; 4];
        read_memory(
            self.pid,
            untag(string) + u64::from(s.length),
            &mut len_bytes,
        )
        .map_err(NameError::Read)?;
        let len = u64::from(u32::from_le_bytes(len_bytes));
        if len > limit || out.len() as u64 + len > MAX_STRING {
            return Err(NameError::TooLong);
        }
        let representation = kind & s.representation_mask;
        if representation == s.seq {
            let one_byte = kind & s.encoding_mask == s.one_byte;
            let mut bytes = vec![0u8; (len * if one_byte { 1 } else { 2 }) as usize];
            read_memory(self.pid, untag(string) + u64::from(s.seq_chars), &mut bytes)
                .map_err(NameError::Read)?;
            if one_byte {
                out.extend(bytes.iter().map(|&b| u16::from(b)));
            } else {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]])),
                );
            }
        } else if representation == s.cons {
            let first = self.word(string, s.cons_first)?;
            let second = self.word(string, s.cons_second)?;
            self.append_utf16(first, limit, depth - 1, out)?;
            self.append_utf16(second, limit, depth - 1, out)?;
        } else if representation == s.thin {
            self.append_utf16(self.word(string, s.thin_actual)?, limit, depth - 1, out)?;
        } else if representation == s.sliced {
            let parent = self.word(string, s.sliced_parent)?;
            let offset = smi(self.word(string, s.sliced_offset)?).max(0) as usize;
            let mut whole = Vec::new();
            self.append_utf16(parent, MAX_STRING, depth - 1, &mut whole)?;
            let end = (offset + len as usize).min(whole.len());
            out.extend_from_slice(whole.get(offset..end).unwrap_or_default());
        } else {
            // External strings live outside the heap, in the embedder's memory.
            return Err(NameError::NotCode);
        }
        Ok(())
    }

    /// The Smis of a FixedArray.
    fn smi_array(&self, array: u64) -> Option<Vec<u32>> {
        let l = self.layout;
        if !is_object(array) {
            return None;
        }
        let len = smi(self.word(array, l.array_length).ok()?);
        if !(0..=(MAX_STRING as i64)).contains(&len) {
            return None;
        }
        let mut bytes = vec![0u8; len as usize * 8];
        read_memory(self.pid, untag(array) + u64::from(l.array_data), &mut bytes).ok()?;
        bytes
            .chunks_exact(8)
            .map(|c| {
                let w = u64::from_le_bytes(c.try_into().unwrap());
                is_smi(w).then(|| smi(w) as u32)
            })
            .collect()
    }

    /// The (bytecode offset, source position) pairs of a function's
    /// bytecode (`function_data`: its BytecodeArray, or baseline code that
    /// points to it).
    fn bytecode_positions(&self, function_data: u64) -> Option<Vec<(u32, u32)>> {
        let l = self.layout;
        let mut bytecode = function_data;
        let kind = self.type_of(bytecode).ok()?;
        if kind == l.types.code && l.code_bytecode != 0 {
            bytecode = self.word(bytecode, l.code_bytecode).ok()?;
        }
        if self.type_of(bytecode).ok()? != l.types.bytecode_array {
            return None;
        }
        let table = self.position_table(self.word(bytecode, l.bytecode_positions).ok()?)?;
        Some(
            decode_raw_positions(&table)
                .filter_map(|(offset, position)| Some((offset, script_offset(position)?)))
                .collect(),
        )
    }

    /// A source position table's bytes.
    fn position_table(&self, table: u64) -> Option<Vec<u8>> {
        self.bytes_of(table)
            .filter(|b| b.len() as u64 <= MAX_POSITIONS)
    }

    /// A ByteArray's bytes.
    fn bytes_of(&self, array: u64) -> Option<Vec<u8>> {
        let l = self.layout;
        if !is_object(array) {
            return None;
        }
        let len = smi(self.word(array, l.array_length).ok()?);
        if !(0..=MAX_POSITIONS as i64).contains(&len) {
            return None;
        }
        let mut bytes = vec![0u8; len as usize];
        read_memory(self.pid, untag(array) + u64::from(l.array_data), &mut bytes).ok()?;
        Some(bytes)
    }

    /// A ScopeInfo's function name and start position. Its layout has no
    /// metadata: after the context locals (name and info each), the first
    /// string is the function's name (or the name V8 inferred); the start
    /// and end positions follow as a pair of Smis (at fixed slots since 12.8).
    fn scope_info(&self, scope_info: u64) -> (Option<String>, Option<u32>) {
        const SLOTS: usize = 16;
        let l = self.layout;
        let mut bytes = [0u8; SLOTS * 8];
        if read_memory(self.pid, untag(scope_info) + 8, &mut bytes).is_err() {
            return (None, None);
        }
        let slot = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        let locals = smi(slot(usize::from(l.scope_context_locals))).clamp(0, SLOTS as i64) as usize;
        let first = usize::from(l.scope_first_vars) + 2 * locals;
        let mut name = None;
        let mut start = l
            .scope_positions_fixed
            .then(|| slot(3))
            .filter(|&w| is_smi(w))
            .map(|w| smi(w) as u32);
        let mut previous = None;
        for i in first..SLOTS {
            let word = slot(i);
            if name.is_none() && is_object(word) {
                name = self
                    .string(word, MAX_NAME as u64)
                    .ok()
                    .filter(|n| !n.is_empty());
            }
            if start.is_none() && name.is_some() && is_smi(word) {
                if let Some(begin) = previous.filter(|&b| (0..smi(word)).contains(&b)) {
                    start = Some(begin as u32);
                }
                previous = Some(smi(word));
            } else {
                previous = None;
            }
            if name.is_some() && start.is_some() {
                break;
            }
        }
        (name, start)
    }
}

/// Decodes a source position table: VLQ-coded, zigzag deltas of (code
/// offset, packed SourcePosition), the code offset's sign telling
/// statements from expressions; (code offset, position) pairs in order.
fn decode_raw_positions(table: &[u8]) -> impl Iterator<Item = (u32, u64)> + '_ {
    let mut at = 0;
    let mut next = move || -> Option<i64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *table.get(at)?;
            at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    };
    let (mut code, mut position) = (-1i64, 0i64);
    std::iter::from_fn(move || {
        let code_delta = next()?;
        code += if code_delta >= 0 {
            code_delta
        } else {
            -code_delta - 1
        };
        position = position.wrapping_add(next()?);
        Some((u32::try_from(code).ok()?, position as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_may_hold_v8() {
        for path in [
            "/usr/bin/node",
            "/usr/bin/nodejs",
            "/opt/node20",
            "/usr/lib/x86_64-linux-gnu/libnode.so.108",
        ] {
            assert!(may_be_v8(path), "{path}");
        }
        for path in [
            "/usr/bin/nodemon",
            "/usr/lib/libnodejs-extra.so",
            "/usr/bin/python3",
        ] {
            assert!(!may_be_v8(path), "{path}");
        }
    }

    /// A table as V8 writes it (source-position-table.cc): each entry is
    /// the zigzag VLQ of the code offset's delta (negated - 1 for an
    /// expression) then of the packed position's delta.
    fn encode(entries: &[(u32, u32, bool)]) -> Vec<u8> {
        fn vlq(out: &mut Vec<u8>, value: i64) {
            let mut bits = ((value << 1) ^ (value >> 63)) as u64;
            loop {
                let byte = (bits & 0x7f) as u8;
                bits >>= 7;
                if bits == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        let (mut code, mut position) = (-1i64, 0i64);
        let mut out = Vec::new();
        for &(offset, script_offset, statement) in entries {
            let delta = i64::from(offset) - code;
            vlq(&mut out, if statement { delta } else { -delta - 1 });
            let packed = (i64::from(script_offset) + 1) << 1;
            vlq(&mut out, packed - position);
            code = i64::from(offset);
            position = packed;
        }
        out
    }

    #[test]
    fn source_positions_decode_to_what_was_encoded() {
        let entries = [
            (0, 10, true),
            (3, 25, false),
            (9, 7, true),
            (200, 4000, true),
        ];
        let table = encode(&entries);
        let decode = |table| -> Vec<(u32, u32)> {
            decode_raw_positions(table)
                .map(|(o, p)| (o, script_offset(p).unwrap()))
                .collect()
        };
        assert_eq!(
            decode(&table),
            entries.iter().map(|&(o, p, _)| (o, p)).collect::<Vec<_>>()
        );
        // A truncated table yields the entries before the cut.
        assert_eq!(decode(&table[..2]), vec![(0, 10)]);
        // Inlining ids sit above the offset; external positions have none.
        assert_eq!(script_offset((3 << 31) | (11 << 1)), Some(10));
        assert_eq!(script_offset((11 << 1) | 1), None);
    }

    #[test]
    fn positions_fall_on_the_line_whose_end_is_at_or_after_them() {
        // "ab\ncd\n\nef": lines end at 2, 5 and 6.
        let ends = [2, 5, 6];
        assert_eq!(line_of_position(&ends, 0), 1);
        assert_eq!(line_of_position(&ends, 2), 1);
        assert_eq!(line_of_position(&ends, 3), 2);
        assert_eq!(line_of_position(&ends, 6), 3);
        assert_eq!(line_of_position(&ends, 7), 4);
    }

    #[test]
    fn validation_tells_functions_apart() {
        let a = pair_validation(0x1000_0001, 0x2000_0001);
        assert_ne!(a, pair_validation(0x1000_0041, 0x2000_0001));
        assert_ne!(a, pair_validation(0x1000_0001, 0x2000_0041));
    }

    #[test]
    fn the_metadata_of_this_machines_node_gives_a_layout() {
        // CI's image has nodesource's Node 20, V8 in the executable.
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let Ok(data) = std::fs::read("/usr/bin/node") else {
            assert!(!in_ci, "CI must have /usr/bin/node");
            eprintln!("SKIPPED: no /usr/bin/node");
            return;
        };
        let binary = match V8Binary::read(&data) {
            Ok(b) => b,
            // Debian's node keeps V8 in libnode.so.
            Err(DetectError::NoInterpreter) if !in_ci => {
                eprintln!("SKIPPED: /usr/bin/node holds no V8 (Debian's keeps it in libnode)");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let l = &binary.layout;
        assert!(binary.version.0 >= 10, "{:?}", binary.version);
        assert_eq!((l.fp_context, l.fp_function), (8, 16));
        assert!(l.sfi_size() <= 256, "BPF reads at most 256 bytes");
        assert!(binary.builtins.1 > 1 << 20, "{:?}", binary.builtins);
        // Where the builtins' symbols are stripped, the gap in .eh_frame
        // stands for them: it holds them, and little else (alignment and
        // one stub before them).
        let obj = object::File::parse(&*data).unwrap();
        let (start, size) = largest_unwind_gap(&obj).expect("a gap");
        let (b_start, b_size) = binary.builtins;
        assert!(
            start <= b_start && b_start + b_size <= start + size,
            "gap {start:#x}+{size:#x}, builtins {b_start:#x}+{b_size:#x}"
        );
        assert!(size - b_size < 64 << 10, "{size:#x} against {b_size:#x}");
    }
}
