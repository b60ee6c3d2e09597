//! The JVM (HotSpot): its Java frames are read in BPF (ebpf/runtimes/jvm.h)
//! with the layout the JVM describes itself with — the `gHotSpotVMStructs`,
//! `gHotSpotVMTypes` and `gHotSpotVMIntConstants` tables its serviceability
//! agent reads — and named here from the process's memory: a Method's class,
//! name, source file and line (from its compressed line number table), and
//! for compiled code the methods inlined at the pc (from the nmethod's
//! PcDescs and scopes). The tables are read from the process (their
//! pointers are filled as libjvm loads), so each JDK works without a
//! hand-kept table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object::{Object, ObjectSymbol};

use super::{
    pair_validation, read_memory, read_u64, CodeInfo, CodeKey, DetectError, InlineFrame,
    LineSource, NameError, Segments,
};
use crate::bpf::{self, InterpInfo, JvmLayout, JVM_MAX_HEAPS};

/// Whether a mapped file may be HotSpot.
pub fn may_be_jvm(path: &str) -> bool {
    path.rsplit('/').next() == Some("libjvm.so")
}

/// The symbols locating the self-description tables: each holds a
/// pointer (the tables) or a number (entry strides and field offsets).
const TABLE_SYMBOLS: [&str; 16] = [
    "gHotSpotVMStructs",
    "gHotSpotVMStructEntryTypeNameOffset",
    "gHotSpotVMStructEntryFieldNameOffset",
    "gHotSpotVMStructEntryTypeStringOffset",
    "gHotSpotVMStructEntryIsStaticOffset",
    "gHotSpotVMStructEntryOffsetOffset",
    "gHotSpotVMStructEntryAddressOffset",
    "gHotSpotVMStructEntryArrayStride",
    "gHotSpotVMTypes",
    "gHotSpotVMTypeEntryTypeNameOffset",
    "gHotSpotVMTypeEntrySizeOffset",
    "gHotSpotVMTypeEntryArrayStride",
    "gHotSpotVMIntConstants",
    "gHotSpotVMIntConstantEntryNameOffset",
    "gHotSpotVMIntConstantEntryValueOffset",
    "gHotSpotVMIntConstantEntryArrayStride",
];

/// Entries read at most per table (JDK 17 has under 800).
const MAX_ENTRIES: u64 = 8192;
/// Inlining depth followed at most.
const MAX_INLINING_DEPTH: usize = 32;
/// Bytes of a name read at most.
const MAX_NAME: usize = 1024;

/// What libjvm.so says about where its tables are (ELF virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JvmBinary {
    /// Not known from the file: (0, 0) (the process's tables tell).
    pub version: (u8, u8),
    symbols: Vec<u64>,
    /// Where its PT_LOAD segments are.
    pub segments: Segments,
}

impl JvmBinary {
    /// Finds the self-description tables' symbols in libjvm.so.
    pub fn read(data: &[u8]) -> Result<Self, DetectError> {
        let obj = object::File::parse(data).map_err(|e| DetectError::Unreadable(e.to_string()))?;
        let mut found: HashMap<&str, u64> = HashMap::new();
        for sym in obj.dynamic_symbols().chain(obj.symbols()) {
            if let Ok(name) = sym.name() {
                if TABLE_SYMBOLS.contains(&name) {
                    found.entry(name).or_insert(sym.address());
                }
            }
        }
        let symbols = TABLE_SYMBOLS
            .iter()
            .map(|&name| {
                found
                    .get(name)
                    .copied()
                    .ok_or(DetectError::MissingSymbol(name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            version: (0, 0),
            symbols,
            segments: Segments::of(&obj),
        })
    }
}

/// A field of the struct table: its offset, or a static field's address.
#[derive(Clone, Debug)]
struct Field {
    offset: u64,
    address: u64,
    type_string: String,
}

/// The JVM's description of itself, as read from a process.
struct Tables {
    fields: HashMap<(String, String), Field>,
    sizes: HashMap<String, u64>,
    ints: HashMap<String, i64>,
}

impl Tables {
    fn read(pid: u32, binary: &JvmBinary, bias: u64) -> std::io::Result<Self> {
        let word = |i: usize| read_u64(pid, binary.symbols[i].wrapping_add(bias));
        let mut fields = HashMap::new();
        let (table, type_name, field_name, type_string, is_static, offset, address, stride) = (
            word(0)?,
            word(1)?,
            word(2)?,
            word(3)?,
            word(4)?,
            word(5)?,
            word(6)?,
            word(7)?,
        );
        for entry in entries(pid, table, stride, type_name)? {
            let text = |at: u64| c_string(pid, read_u64(pid, entry.wrapping_add(at)).unwrap_or(0));
            let (Some(t), Some(f)) = (text(type_name), text(field_name)) else {
                continue;
            };
            let mut flag = [0u8; 4];
            read_memory(pid, entry.wrapping_add(is_static), &mut flag)?;
            fields.insert(
                (t, f),
                Field {
                    offset: read_u64(pid, entry.wrapping_add(offset))?,
                    address: if u32::from_le_bytes(flag) != 0 {
                        read_u64(pid, entry.wrapping_add(address))?
                    } else {
                        0
                    },
                    type_string: text(type_string).unwrap_or_default(),
                },
            );
        }
        let mut sizes = HashMap::new();
        let (table, type_name, size, stride) = (word(8)?, word(9)?, word(10)?, word(11)?);
        for entry in entries(pid, table, stride, type_name)? {
            if let Some(t) = c_string(pid, read_u64(pid, entry.wrapping_add(type_name))?) {
                sizes.insert(t, read_u64(pid, entry.wrapping_add(size))?);
            }
        }
        let mut ints = HashMap::new();
        let (table, name, value, stride) = (word(12)?, word(13)?, word(14)?, word(15)?);
        for entry in entries(pid, table, stride, name)? {
            if let Some(n) = c_string(pid, read_u64(pid, entry.wrapping_add(name))?) {
                let mut v = [0u8; 4];
                read_memory(pid, entry.wrapping_add(value), &mut v)?;
                ints.insert(n, i64::from(i32::from_le_bytes(v)));
            }
        }
        Ok(Self {
            fields,
            sizes,
            ints,
        })
    }

    fn field(&self, type_name: &str, field: &str) -> Result<&Field, String> {
        self.fields
            .get(&(type_name.to_owned(), field.to_owned()))
            .ok_or_else(|| format!("no {type_name}::{field} in the JVM's tables"))
    }

    /// A field's offset (it must fit the layout's 16 bits).
    fn offset(&self, type_name: &str, field: &str) -> Result<u16, String> {
        let offset = self.field(type_name, field)?.offset;
        u16::try_from(offset).map_err(|_| format!("{type_name}::{field} at {offset}"))
    }

    /// A static field's address.
    fn address(&self, type_name: &str, field: &str) -> Result<u64, String> {
        Some(self.field(type_name, field)?.address)
            .filter(|&a| a != 0)
            .ok_or_else(|| format!("{type_name}::{field} is not static"))
    }

    fn size(&self, type_name: &str) -> Result<u64, String> {
        self.sizes
            .get(type_name)
            .copied()
            .ok_or_else(|| format!("no type {type_name} in the JVM's tables"))
    }

    fn int(&self, name: &str) -> Result<i64, String> {
        self.ints
            .get(name)
            .copied()
            .ok_or_else(|| format!("no constant {name} in the JVM's tables"))
    }
}

/// The addresses of a table's entries, up to the one whose name is null.
fn entries(pid: u32, table: u64, stride: u64, name: u64) -> std::io::Result<Vec<u64>> {
    if table == 0 || stride == 0 {
        return Err(std::io::Error::other("no table yet"));
    }
    let mut all = Vec::new();
    for i in 0..MAX_ENTRIES {
        let entry = table.wrapping_add(i.wrapping_mul(stride));
        if read_u64(pid, entry.wrapping_add(name))? == 0 {
            return Ok(all);
        }
        all.push(entry);
    }
    Err(std::io::Error::other("a table without its end"))
}

/// A NUL-terminated string of the process (None if unreadable or empty).
fn c_string(pid: u32, address: u64) -> Option<String> {
    if address == 0 {
        return None;
    }
    let mut text = Vec::new();
    let mut chunk = [0u8; 64];
    while text.len() < MAX_NAME {
        // Stop at a page's end: the string may be the last thing mapped.
        let at = address.wrapping_add(text.len() as u64);
        let len = chunk.len().min((4096 - (at & 4095)) as usize);
        read_memory(pid, at, &mut chunk[..len]).ok()?;
        if let Some(end) = chunk[..len].iter().position(|&b| b == 0) {
            text.extend_from_slice(&chunk[..end]);
            return (!text.is_empty()).then(|| String::from_utf8_lossy(&text).into_owned());
        }
        text.extend_from_slice(&chunk[..len]);
    }
    None
}

/// Where a JVM keeps what names a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Naming {
    method_const: u16,
    const_method_size: u64,
    const_method_constants: u16,
    const_method_code_size: u16,
    const_method_name: u16,
    const_method_signature: u16,
    const_method_flags: u16,
    const_method_flags_wide: bool,
    has_line_table: u32,
    pool_size: u64,
    pool_holder: u16,
    source_file: SourceFileIndex,
    klass_name: u16,
    symbol_length: u16,
    symbol_body: u16,
    nmethod_method: u16,
    nmethod_compile_id: u16,
    /// The byte UNSIGNED5 streams exclude: 0 before JDK 20, 1 since.
    unsigned5_excluded: u8,
    pcs: PcLayout,
}

/// Where the constant pool index of a class's source file name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceFileIndex {
    /// `ConstantPool._source_file_name_index`.
    InPool(u16),
    /// `InstanceKlass._source_file_name_index`.
    InClass(u16),
}

/// Where an nmethod's PcDescs, scopes and metadata are.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PcLayout {
    /// JDK 17: offsets from the nmethod; scopes behind a pointer.
    InBlob {
        pcs_start: u16,
        pcs_end: u16,
        scopes: u16,
        metadata: u16,
    },
    /// JDK 23+: offsets from the nmethod's immutable data (PcDescs, then
    /// scopes), metadata after the mutable data's relocations.
    Immutable {
        immutable: u16,
        pcs_start: u16,
        scopes_start: u16,
        mutable: u16,
        relocation_size: u16,
    },
}

/// Methods named at most are kept per process (then all are dropped).
const MAX_METHODS: usize = 32 << 10;

/// A JVM as one process runs it.
#[derive(Debug)]
pub struct JvmProcess {
    /// The JDK's feature release and update (`17.0.15`: (17, 0)).
    pub version: (u8, u8),
    layout: JvmLayout,
    interpreter: (u64, u64),
    naming: Naming,
    /// Where libjvm is (its bias) and where it keeps the code cache's
    /// start: what tells this JVM from another image of the process.
    bias: u64,
    code_start_at: u64,
    /// Methods named so far (the same ones are inlined into many nmethods),
    /// by address; used while the Method still has its ConstMethod.
    methods: Mutex<HashMap<u64, Arc<Method>>>,
}

impl PartialEq for JvmProcess {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.layout == other.layout
            && self.interpreter == other.interpreter
            && self.naming == other.naming
    }
}

impl Eq for JvmProcess {}

impl JvmProcess {
    /// Reads the JVM's tables and code cache from process `pid` (libjvm at
    /// `bias`); None until its code cache is set up, or when its layout is
    /// not understood.
    /// [`JvmProcess::read`], or None (logged) until its code cache is set
    /// up or when its layout is not understood.
    pub fn new(binary: &JvmBinary, bias: u64, pid: u32) -> Option<Self> {
        Self::read(binary, bias, pid)
            .inspect_err(|e| tracing::debug!(pid, error = %e, "JVM not read (yet)"))
            .ok()
    }

    pub fn read(binary: &JvmBinary, bias: u64, pid: u32) -> Result<Self, String> {
        let t = Tables::read(pid, binary, bias).map_err(|e| format!("its tables: {e}"))?;
        let word =
            |address: u64| read_u64(pid, address).map_err(|e| format!("reading {address:#x}: {e}"));
        let int = |address: u64| -> Result<i32, String> {
            let mut b = [0u8; 4];
            read_memory(pid, address, &mut b).map_err(|e| format!("reading {address:#x}: {e}"))?;
            Ok(i32::from_le_bytes(b))
        };
        let narrow = |what: &str, v: u64| u8::try_from(v).map_err(|_| format!("{what}: {v}"));
        let release = c_string(
            pid,
            word(t.address("Abstract_VM_Version", "_s_vm_release")?)?,
        )
        .ok_or("no VM release string")?;
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u8>().ok());
        let version = (
            numbers
                .next()
                .flatten()
                .ok_or(format!("release {release}"))?,
            numbers.next().flatten().unwrap_or(0),
        );

        let code_start_at = t.address("CodeCache", "_low_bound")?;
        let mut layout = JvmLayout {
            code_start: word(code_start_at)?,
            code_end: word(t.address("CodeCache", "_high_bound")?)?,
            block_header: narrow("HeapBlock", t.size("HeapBlock")?)?,
            ..JvmLayout::default()
        };
        let heaps = word(t.address("CodeCache", "_heaps")?)?;
        if heaps == 0 || layout.code_start == 0 {
            return Err("the code cache is not set up yet".into());
        }
        // GrowableArrayBase since JDK 16, GenericGrowableArray before.
        let length = t
            .offset("GrowableArrayBase", "_len")
            .or_else(|_| t.offset("GenericGrowableArray", "_len"))?;
        let count = int(heaps.wrapping_add(u64::from(length)))?;
        let data = word(heaps.wrapping_add(u64::from(t.offset("GrowableArray<int>", "_data")?)))?;
        let (memory, segmap) = (
            u64::from(t.offset("CodeHeap", "_memory")?),
            u64::from(t.offset("CodeHeap", "_segmap")?),
        );
        let (low, high) = (
            u64::from(t.offset("VirtualSpace", "_low_boundary")?),
            u64::from(t.offset("VirtualSpace", "_high_boundary")?),
        );
        let log2 = u64::from(t.offset("CodeHeap", "_log2_segment_size")?);
        for i in 0..usize::try_from(count).unwrap_or(0).min(JVM_MAX_HEAPS) {
            let heap = word(data.wrapping_add(8 * i as u64))?;
            layout.heap_low[i] = word(heap.wrapping_add(memory.wrapping_add(low)))?;
            layout.heap_high[i] = word(heap.wrapping_add(memory.wrapping_add(high)))?;
            layout.heap_segmap[i] = word(heap.wrapping_add(segmap.wrapping_add(low)))?;
            layout.heap_log2_segment[i] =
                narrow("segment size", int(heap.wrapping_add(log2))? as u64)?;
            layout.heap_count += 1;
        }
        if layout.heap_count == 0 {
            return Err("the code cache is not set up yet".into());
        }

        // The template interpreter's code: its stub queue's buffer.
        let queue = word(t.address("AbstractInterpreter", "_code")?)?;
        let buffer = word(queue.wrapping_add(u64::from(t.offset("StubQueue", "_stub_buffer")?)))?;
        let limit = int(queue.wrapping_add(u64::from(t.offset("StubQueue", "_buffer_limit")?)))?;
        let interpreter = (
            buffer,
            buffer.wrapping_add(u64::try_from(limit).unwrap_or(0)),
        );

        // What tells an nmethod: JDK 23+ keeps a blob's kind; before, an
        // nmethod's header is the size of an nmethod (stubs' are their own
        // classes' sizes).
        match t.offset("CodeBlob", "_kind") {
            Ok(kind) => {
                layout.blob_kind = kind;
                layout.kind_size = 1;
                layout.kind_nmethod = u16::try_from(t.int("CodeBlobKind::Nmethod")?)
                    .map_err(|_| "CodeBlobKind::Nmethod".to_owned())?;
            }
            Err(_) => {
                layout.blob_kind = t.offset("CodeBlob", "_header_size")?;
                layout.kind_size = 4;
                layout.kind_nmethod =
                    u16::try_from(t.size("nmethod")?).map_err(|_| "sizeof(nmethod)".to_owned())?;
            }
        }
        let complete = t.field("CodeBlob", "_frame_complete_offset")?;
        layout.blob_frame_complete = t.offset("CodeBlob", "_frame_complete_offset")?;
        layout.frame_complete_size = if complete.type_string.contains("16") {
            2
        } else {
            4
        };
        layout.blob_frame_size = t.offset("CodeBlob", "_frame_size")?;
        let code_offset = t.offset("CodeBlob", "_code_offset");
        match code_offset {
            Ok(code) => {
                layout.blob_code = code;
                layout.code_is_offset = 1;
            }
            Err(_) => layout.blob_code = t.offset("CodeBlob", "_code_begin")?,
        }
        let nmethod_method = t
            .offset("nmethod", "_method")
            .or_else(|_| t.offset("CompiledMethod", "_method"))?;
        let nmethod_compile_id = t.offset("nmethod", "_compile_id")?;
        layout.nmethod_method = nmethod_method;
        layout.nmethod_compile_id = nmethod_compile_id;
        // The compile id is read on its own (past 256 bytes on JDK 17).
        layout.blob_size = [
            layout.blob_kind,
            layout.blob_frame_complete,
            layout.blob_frame_size,
            layout.blob_code,
            nmethod_method,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8;
        if layout.blob_size > 256 {
            return Err(format!(
                "a blob's fields lie past 256 bytes ({})",
                layout.blob_size
            ));
        }
        layout.method_const = t.offset("Method", "_constMethod")?;
        let const_method_size = t.size("ConstMethod")?;
        layout.const_method_size =
            u16::try_from(const_method_size).map_err(|_| "ConstMethod's size".to_owned())?;

        let flags = t
            .field("ConstMethod", "_flags._flags")
            .or_else(|_| t.field("ConstMethod", "_flags"))?;
        let pcs = match code_offset {
            Ok(_) => PcLayout::Immutable {
                immutable: t.offset("nmethod", "_immutable_data")?,
                pcs_start: t.offset("nmethod", "_scopes_pcs_offset")?,
                scopes_start: t.offset("nmethod", "_scopes_data_offset")?,
                mutable: t.offset("CodeBlob", "_mutable_data")?,
                relocation_size: t.offset("CodeBlob", "_relocation_size")?,
            },
            Err(_) => PcLayout::InBlob {
                pcs_start: t.offset("nmethod", "_scopes_pcs_offset")?,
                pcs_end: t.offset("nmethod", "_dependencies_offset")?,
                scopes: t
                    .offset("CompiledMethod", "_scopes_data_begin")
                    .or_else(|_| t.offset("nmethod", "_scopes_data_begin"))?,
                metadata: t.offset("nmethod", "_metadata_offset")?,
            },
        };
        // Not published before JDK 17: bit 0 of the flags then.
        let has_line_table = t
            .int("ConstMethodFlags::_misc_has_linenumber_table")
            .or_else(|_| t.int("ConstMethod::_has_linenumber_table"))
            .unwrap_or(1);
        let naming = Naming {
            method_const: layout.method_const,
            const_method_size,
            const_method_constants: t.offset("ConstMethod", "_constants")?,
            const_method_code_size: t.offset("ConstMethod", "_code_size")?,
            const_method_name: t.offset("ConstMethod", "_name_index")?,
            const_method_signature: t.offset("ConstMethod", "_signature_index")?,
            const_method_flags: u16::try_from(flags.offset).map_err(|_| "ConstMethod's flags")?,
            const_method_flags_wide: flags.type_string.contains('4')
                || flags.type_string.contains("int"),
            has_line_table: u32::try_from(has_line_table).map_err(|_| "the line table flag")?,
            pool_size: t.size("ConstantPool")?,
            pool_holder: t.offset("ConstantPool", "_pool_holder")?,
            // In the constant pool since JDK 12, in the class before.
            source_file: match t.offset("ConstantPool", "_source_file_name_index") {
                Ok(at) => SourceFileIndex::InPool(at),
                Err(_) => {
                    SourceFileIndex::InClass(t.offset("InstanceKlass", "_source_file_name_index")?)
                }
            },
            klass_name: t.offset("Klass", "_name")?,
            symbol_length: t.offset("Symbol", "_length")?,
            symbol_body: t.offset("Symbol", "_body")?,
            nmethod_method,
            nmethod_compile_id,
            unsigned5_excluded: u8::from(version.0 >= 20),
            pcs,
        };
        Ok(Self {
            version,
            layout,
            interpreter,
            naming,
            bias,
            code_start_at,
            methods: Mutex::default(),
        })
    }

    /// Whether process `pid`, with libjvm at `bias`, still runs this JVM
    /// (its code cache where it was).
    pub fn is_running(&self, pid: u32, bias: u64) -> bool {
        self.bias == bias && read_u64(pid, self.code_start_at).ok() == Some(self.layout.code_start)
    }

    /// The record the BPF walker reads (the template interpreter as the
    /// interpreter loop's range).
    pub fn interp_info(&self) -> InterpInfo {
        InterpInfo {
            kind: bpf::interp_kind::JVM,
            version: u32::from(self.version.0) << 8 | u32::from(self.version.1),
            loop_start: self.interpreter.0,
            loop_end: self.interpreter.1,
            jvm: self.layout,
            ..InterpInfo::default()
        }
    }

    /// Names a frame's object, if it still is the one the BPF walker saw:
    /// a Method (interpreted) or an nmethod (compiled).
    pub fn name_frame(&self, key: CodeKey) -> Result<CodeInfo, NameError> {
        let reader = Reader {
            pid: key.pid,
            n: &self.naming,
            methods: &self.methods,
        };
        if key.kind == bpf::interp_kind::JVM_COMPILED {
            return reader.name_nmethod(key.object, key.validation);
        }
        let method = reader.method(key.object)?;
        if pair_validation(key.object, method.const_method) != key.validation {
            return Err(NameError::Stale);
        }
        Ok(CodeInfo {
            name: method.name.to_string(),
            filename: method.filename.to_string(),
            first_line: method.first_line(),
            lines: LineSource::ByOffset(method.lines.clone()),
        })
    }
}

/// What names a method.
#[derive(Clone, Debug)]
struct Method {
    const_method: u64,
    /// `package.Class.method`.
    name: Arc<str>,
    filename: Arc<str>,
    /// (bytecode index, line), by bytecode index.
    lines: Vec<(u32, u32)>,
}

impl Method {
    fn first_line(&self) -> u32 {
        self.lines.iter().map(|&(_, l)| l).min().unwrap_or(0)
    }

    /// The line of bytecode index `bci` (the last entry at or below it).
    fn line(&self, bci: u32) -> u32 {
        let at = self.lines.partition_point(|&(b, _)| b <= bci);
        at.checked_sub(1)
            .map_or(self.first_line(), |i| self.lines[i].1)
    }
}

/// An nmethod's PcDescs (pc offset, scope decode offset) by pc offset, and
/// where its scopes data and metadata array are.
struct PcTables {
    pcs: Vec<(i32, i64)>,
    scopes: u64,
    metadata: u64,
}

/// Reads a process's JVM objects.
struct Reader<'a> {
    pid: u32,
    n: &'a Naming,
    methods: &'a Mutex<HashMap<u64, Arc<Method>>>,
}

impl Reader<'_> {
    fn word(&self, address: u64) -> Result<u64, NameError> {
        read_u64(self.pid, address).map_err(NameError::Read)
    }

    fn bytes<const N: usize>(&self, address: u64) -> Result<[u8; N], NameError> {
        let mut b = [0u8; N];
        read_memory(self.pid, address, &mut b).map_err(NameError::Read)?;
        Ok(b)
    }

    fn u16(&self, address: u64) -> Result<u16, NameError> {
        Ok(u16::from_le_bytes(self.bytes(address)?))
    }

    fn i32(&self, address: u64) -> Result<i32, NameError> {
        Ok(i32::from_le_bytes(self.bytes(address)?))
    }

    /// A Symbol's text.
    fn symbol(&self, symbol: u64) -> Result<String, NameError> {
        if symbol == 0 {
            return Err(NameError::NotCode);
        }
        let len = usize::from(self.u16(symbol.wrapping_add(u64::from(self.n.symbol_length)))?);
        if len > MAX_NAME {
            return Err(NameError::TooLong);
        }
        let mut text = vec![0u8; len];
        read_memory(
            self.pid,
            symbol.wrapping_add(u64::from(self.n.symbol_body)),
            &mut text,
        )
        .map_err(NameError::Read)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// The Symbol at constant pool index `index`.
    fn pool_symbol(&self, pool: u64, index: u16) -> Result<String, NameError> {
        self.symbol(
            self.word(pool.wrapping_add(self.n.pool_size.wrapping_add(8 * u64::from(index))))?,
        )
    }

    /// A Method's names and line table (kept while the Method keeps its
    /// ConstMethod).
    fn method(&self, method: u64) -> Result<Arc<Method>, NameError> {
        let cm = self.word(method.wrapping_add(u64::from(self.n.method_const)))?;
        let cached = self
            .methods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&method)
            .cloned();
        if let Some(m) = cached.filter(|m| m.const_method == cm) {
            return Ok(m);
        }
        let m = Arc::new(self.read_method(cm)?);
        let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
        if methods.len() >= MAX_METHODS {
            methods.clear();
        }
        methods.insert(method, m.clone());
        Ok(m)
    }

    fn read_method(&self, cm: u64) -> Result<Method, NameError> {
        let n = self.n;
        let pool = self.word(cm.wrapping_add(u64::from(n.const_method_constants)))?;
        if cm == 0 || pool == 0 {
            return Err(NameError::NotCode);
        }
        let holder = self.word(pool.wrapping_add(u64::from(n.pool_holder)))?;
        let class = self.symbol(self.word(holder.wrapping_add(u64::from(n.klass_name)))?)?;
        let name = self.pool_symbol(
            pool,
            self.u16(cm.wrapping_add(u64::from(n.const_method_name)))?,
        )?;
        let source = match n.source_file {
            SourceFileIndex::InPool(at) => self.u16(pool.wrapping_add(u64::from(at)))?,
            SourceFileIndex::InClass(at) => self.u16(holder.wrapping_add(u64::from(at)))?,
        };
        let filename = if source == 0 {
            String::new()
        } else {
            self.pool_symbol(pool, source).unwrap_or_default()
        };
        let flags = if n.const_method_flags_wide {
            u32::from_le_bytes(self.bytes(cm.wrapping_add(u64::from(n.const_method_flags)))?)
        } else {
            u32::from(self.u16(cm.wrapping_add(u64::from(n.const_method_flags)))?)
        };
        let lines = if flags & n.has_line_table != 0 {
            let code_size = self.u16(cm.wrapping_add(u64::from(n.const_method_code_size)))?;
            self.line_table(cm.wrapping_add(n.const_method_size.wrapping_add(u64::from(code_size))))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Method {
            const_method: cm,
            name: Arc::from(format!("{}.{name}", class.replace('/', "."))),
            filename: Arc::from(filename),
            lines,
        })
    }

    /// A compressed line number table: (bytecode index, line) pairs.
    fn line_table(&self, at: u64) -> Result<Vec<(u32, u32)>, NameError> {
        const MAX_TABLE: usize = 64 << 10;
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        let mut pairs = Vec::new();
        let mut stream = Unsigned5 {
            at: 0,
            excluded: self.n.unsigned5_excluded,
        };
        let (mut bci, mut line) = (0i64, 0i64);
        loop {
            // Keep at least a whole entry (1 + 2 × 5 bytes) ahead.
            while stream.at + 11 > read {
                if read >= MAX_TABLE {
                    return Err(NameError::TooLong);
                }
                let len = buf
                    .len()
                    .min(4096 - ((at.wrapping_add(read as u64)) & 4095) as usize);
                let mut chunk = vec![0u8; len];
                read_memory(self.pid, at.wrapping_add(read as u64), &mut chunk)
                    .map_err(NameError::Read)?;
                buf.truncate(read);
                buf.extend_from_slice(&chunk);
                read += len;
            }
            let head = buf[stream.at];
            stream.at += 1;
            match head {
                0 => break,
                0xff => {
                    bci += signed(stream.next(&buf)?);
                    line += signed(stream.next(&buf)?);
                }
                b => {
                    bci += i64::from(b >> 3);
                    line += i64::from(b & 7);
                }
            }
            pairs.push((
                u32::try_from(bci).unwrap_or(0),
                u32::try_from(line).unwrap_or(0),
            ));
        }
        pairs.sort_unstable();
        Ok(pairs)
    }

    /// A compiled frame: its nmethod's method, and by code offset the
    /// methods inlined there, innermost first.
    fn name_nmethod(&self, nmethod: u64, validation: u32) -> Result<CodeInfo, NameError> {
        let n = self.n;
        let own = self.word(nmethod.wrapping_add(u64::from(n.nmethod_method)))?;
        let compile_id = self.i32(nmethod.wrapping_add(u64::from(n.nmethod_compile_id)))? as u32;
        if own == 0 || pair_validation(own, u64::from(compile_id)) != validation {
            return Err(NameError::Stale);
        }
        let own_method = self.method(own)?;
        let PcTables {
            pcs,
            scopes,
            metadata,
        } = self.pc_tables(nmethod)?;
        // The scope records the PcDescs point to, read in one go: they lie
        // within the furthest one (and its 15 bytes at most) from the start.
        const MAX_SCOPES: u64 = 1 << 20;
        let furthest = pcs.iter().map(|&(_, d)| d.max(0) as u64).max().unwrap_or(0);
        if furthest >= MAX_SCOPES {
            return Err(NameError::TooLong);
        }
        let mut scope_bytes = vec![0u8; furthest as usize + 16];
        if read_memory(self.pid, scopes, &mut scope_bytes).is_err() {
            // The last record may end before the 16 bytes do, at a page's end.
            scope_bytes.truncate(furthest as usize + 1);
            read_memory(self.pid, scopes, &mut scope_bytes).map_err(NameError::Read)?;
        }

        let mut by_offset = Vec::new();
        // A PcDesc names the pc after a call (a return address) or a
        // safepoint poll; a frame's offset is one before a return address:
        // each PcDesc stands for the offsets past the previous one's up to
        // its own.
        let mut previous = -1i64;
        for (pc_offset, decode) in pcs {
            let mut frames = Vec::new();
            let mut at = decode;
            for _ in 0..MAX_INLINING_DEPTH {
                if at <= 0 {
                    break;
                }
                let Ok((sender, method_index, bci)) = self.scope(&scope_bytes, at as usize) else {
                    break;
                };
                let Some(index) = method_index.checked_sub(1) else {
                    break;
                };
                let method = self.word(metadata.wrapping_add(8 * u64::from(index)))?;
                let m = self.method(method)?;
                let bci = bci.max(0) as u32;
                frames.push(InlineFrame {
                    name: m.name.clone(),
                    filename: m.filename.clone(),
                    first_line: m.first_line(),
                    line: m.line(bci),
                });
                at = sender as i64;
            }
            // HotSpot's PcDesc for a pc is the first at or after it.
            if !frames.is_empty() && pc_offset > 0 {
                by_offset.push(((previous + 1) as u32, Arc::from(frames)));
            }
            previous = i64::from(pc_offset).max(previous);
        }
        Ok(CodeInfo {
            name: own_method.name.to_string(),
            filename: own_method.filename.to_string(),
            first_line: own_method.first_line(),
            lines: LineSource::Inlined(by_offset),
        })
    }

    /// An nmethod's PcDescs (pc offset, scope decode offset) by pc offset,
    /// its scopes data and its metadata array.
    fn pc_tables(&self, nmethod: u64) -> Result<PcTables, NameError> {
        let (start, end, scopes, metadata) = match self.n.pcs {
            PcLayout::InBlob {
                pcs_start,
                pcs_end,
                scopes,
                metadata,
            } => (
                nmethod.wrapping_add_signed(i64::from(
                    self.i32(nmethod.wrapping_add(u64::from(pcs_start)))?,
                )),
                nmethod.wrapping_add_signed(i64::from(
                    self.i32(nmethod.wrapping_add(u64::from(pcs_end)))?,
                )),
                self.word(nmethod.wrapping_add(u64::from(scopes)))?,
                nmethod.wrapping_add_signed(i64::from(
                    self.i32(nmethod.wrapping_add(u64::from(metadata)))?,
                )),
            ),
            PcLayout::Immutable {
                immutable,
                pcs_start,
                scopes_start,
                mutable,
                relocation_size,
            } => {
                let data = self.word(nmethod.wrapping_add(u64::from(immutable)))?;
                let scopes_at = self.i32(nmethod.wrapping_add(u64::from(scopes_start)))?;
                let relocations = self.i32(nmethod.wrapping_add(u64::from(relocation_size)))?;
                (
                    data.wrapping_add_signed(i64::from(
                        self.i32(nmethod.wrapping_add(u64::from(pcs_start)))?,
                    )),
                    data.wrapping_add_signed(i64::from(scopes_at)),
                    data.wrapping_add_signed(i64::from(scopes_at)),
                    self.word(nmethod.wrapping_add(u64::from(mutable)))?
                        .wrapping_add_signed(i64::from(relocations)),
                )
            }
        };
        const PC_DESC: u64 = 16;
        let count = end.checked_sub(start).ok_or(NameError::NotCode)? / PC_DESC;
        if count > 1 << 16 {
            return Err(NameError::TooLong);
        }
        let mut raw = vec![0u8; (count * PC_DESC) as usize];
        read_memory(self.pid, start, &mut raw).map_err(NameError::Read)?;
        let pcs = raw
            .chunks_exact(PC_DESC as usize)
            .map(|d| {
                let pc = i32::from_le_bytes(d[0..4].try_into().unwrap());
                let scope = i32::from_le_bytes(d[4..8].try_into().unwrap());
                (pc, i64::from(scope))
            })
            .collect();
        Ok(PcTables {
            pcs,
            scopes,
            metadata,
        })
    }

    /// The scope record at `offset` of the scopes data `scopes`: (sender's
    /// decode offset, method index + 1, bytecode index).
    fn scope(&self, scopes: &[u8], offset: usize) -> Result<(u32, u32, i64), NameError> {
        let mut stream = Unsigned5 {
            at: offset,
            excluded: self.n.unsigned5_excluded,
        };
        let sender = stream.next(scopes)?;
        let method = stream.next(scopes)?;
        let bci = i64::from(stream.next(scopes)?) - 1;
        Ok((sender, method, bci))
    }
}

/// HotSpot's UNSIGNED5 encoding of u32s (CompressedReadStream): bytes at
/// or above 192 (+ the excluded byte) continue a number, six bits each.
struct Unsigned5 {
    at: usize,
    excluded: u8,
}

impl Unsigned5 {
    fn next(&mut self, buf: &[u8]) -> Result<u32, NameError> {
        const LG_H: u32 = 6;
        let x = u32::from(self.excluded);
        let l = 256 - x - 64;
        let mut value = 0u32;
        for i in 0..5 {
            let b = u32::from(*buf.get(self.at).ok_or(NameError::TooLong)?);
            self.at += 1;
            let digit = b.checked_sub(x).ok_or(NameError::NotCode)?;
            value = value.wrapping_add(digit << (LG_H * i));
            if digit < l {
                return Ok(value);
            }
        }
        Ok(value)
    }
}

/// A signed value from its UNSIGNED5 form (zigzag).
fn signed(v: u32) -> i64 {
    i64::from((v >> 1) as i32 ^ -((v & 1) as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_may_hold_the_jvm() {
        assert!(may_be_jvm(
            "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so"
        ));
        assert!(!may_be_jvm("/usr/lib/x86_64-linux-gnu/libjava.so"));
    }

    #[test]
    fn unsigned5_reads_one_and_several_bytes() {
        // JDK 20+ (byte 0 excluded): 5 is the byte 6.
        let mut s = Unsigned5 { at: 0, excluded: 1 };
        assert_eq!(s.next(&[6]).unwrap(), 5);
        // 192 is digit 191, which continues; then 2 is digit 1, worth 64.
        let mut s = Unsigned5 { at: 0, excluded: 1 };
        assert_eq!(s.next(&[192, 2]).unwrap(), 191 + 64);
        assert_eq!(s.at, 2);
        // JDK 17: nothing excluded; 191 ends a number.
        let mut s = Unsigned5 { at: 0, excluded: 0 };
        assert_eq!(s.next(&[191]).unwrap(), 191);
        assert_eq!(signed(3), -2);
        assert_eq!(signed(4), 2);
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;

    /// A JVM of this machine (CI's has Debian's OpenJDK 17) gives a layout.
    #[test]
    fn the_tables_of_this_machines_jvm_give_a_layout() {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/workloads/JChain.java"
        );
        let Ok(mut child) = std::process::Command::new("java")
            .args(["-Xmx64m", source, "3"])
            .stdout(std::process::Stdio::null())
            .spawn()
        else {
            assert!(!in_ci, "CI must have java");
            eprintln!("SKIPPED: no java");
            return;
        };
        let pid = child.id();
        let mut found = None;
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            let Some(line) = maps.lines().find(|l| l.ends_with("/libjvm.so")) else {
                continue;
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let start = u64::from_str_radix(fields[0].split('-').next().unwrap(), 16).unwrap();
            let offset = u64::from_str_radix(fields[2], 16).unwrap();
            let data = std::fs::read(fields[5]).unwrap();
            let binary = JvmBinary::read(&data).unwrap();
            let bias = binary.segments.bias(start, offset).unwrap();
            match JvmProcess::read(&binary, bias, pid) {
                Ok(jvm) => {
                    found = Some(jvm);
                    break;
                }
                Err(e) => eprintln!("not yet: {e}"),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let jvm = found.expect("the JVM's tables and code cache");
        eprintln!("{:?}", jvm);
        assert!(jvm.version.0 >= 11, "{:?}", jvm.version);
        let l = &jvm.layout;
        assert!(l.heap_count >= 1 && l.code_start < l.code_end);
        assert!(jvm.interpreter.0 >= l.code_start && jvm.interpreter.1 <= l.code_end);
        assert!(l.blob_size <= 256);
    }
}
