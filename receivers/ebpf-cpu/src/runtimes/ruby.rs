//! CRuby (MRI) 2.6–3.4: found by the `ruby_version` and `rb_vm_exec`
//! symbols of `libruby*` or a `ruby` executable, walked in BPF along the
//! sampled thread's control frames with the struct offsets of its version
//! (a table below, facts from Ruby's headers), named here from the
//! process's memory: Ruby frames by their instruction sequence, C methods
//! by their method entry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{
    Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationFlags, RelocationTarget,
};

use super::{
    process_range, read_memory, read_u64, u32_in, u64_in, CodeInfo, DetectError, LineSource,
    NameError, Segments,
};
use crate::bpf::{self, InterpInfo, RubyLayout};

/// Whether a file's name says it may hold Ruby's VM (`ruby`, `ruby3.1`,
/// `libruby-3.1.so.3.1`, `libruby.so.3.3`).
pub fn may_be_ruby(path: &str) -> bool {
    let Some(name) = Path::new(path).file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("libruby") || name.starts_with("ruby")
}

/// Where one Ruby version keeps what the unwinder and the namer read (byte
/// offsets, x86-64).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Offsets {
    /// `sizeof(rb_control_frame_t)`.
    cfp_size: u16,
    /// `rb_iseq_constant_body.insns_info`: body, size, succ_index_table.
    insns_info_body: u16,
    insns_info_size: u16,
    succ_index_table: u16,
    /// `sizeof(struct iseq_insn_info_entry)` (its line_no comes first).
    insn_info_entry_size: u16,
    /// `tLAST_OP_ID`: IDs up to it are their own serial.
    last_op_id: u64,
    /// Ruby 3.2+ keeps a string's length in the string (before, an
    /// embedded string's length is in its flags).
    string_len_field: bool,
    /// `RARRAY_EMBED_LEN_MASK >> RARRAY_EMBED_LEN_SHIFT`.
    array_embed_len_mask: u64,
}

/// `rb_execution_context_t`: vm_stack, vm_stack_size, cfp (2.6–3.4).
const EC_VM_STACK: u16 = 0;
const EC_VM_STACK_SIZE: u16 = 8;
const EC_CFP: u16 = 16;
/// `rb_control_frame_t`: pc, sp, iseq, self, ep, …
const CFP_PC: u16 = 0;
const CFP_ISEQ: u16 = 16;
const CFP_EP: u16 = 32;
/// `rb_iseq_t.body`.
const ISEQ_BODY: u16 = 16;
/// `rb_iseq_constant_body`: type, iseq_size (4 bytes each), iseq_encoded,
/// …, location (pathobj, base_label, label).
const BODY_SIZE: u16 = 4;
const BODY_ENCODED: u16 = 8;
const BODY_LOCATION: u16 = 64;
const BODY_FIRST_LINENO: u16 = BODY_LOCATION + 24;
/// `rb_callable_method_entry_t`: flags, defined_class, def, called_id, owner.
const CME_DEF: u16 = 16;
const CME_OWNER: u16 = 32;
/// `rb_method_definition_t.original_id`.
const DEF_ORIGINAL_ID: u64 = 32;
/// `rb_symbols_t.ids`; IDs per entry array and VALUEs per ID in it (the
/// first its name).
const SYMBOLS_IDS: u64 = 16;
const ID_ENTRY_UNIT: u64 = 512;
const ID_ENTRY_SIZE: u64 = 2;
/// `RUBY_ID_SCOPE_SHIFT`.
const ID_SCOPE_SHIFT: u32 = 4;
/// Object flags: the type in the low 5 bits; an imemo's kind above FL_USHIFT.
const T_STRING: u64 = 0x05;
const T_ARRAY: u64 = 0x07;
const T_IMEMO: u64 = 0x1a;
const IMEMO_MENT: u64 = 6;
const IMEMO_ISEQ: u64 = 7;
/// `RSTRING_NOEMBED` / `RARRAY_EMBED_FLAG` (FL_USER1).
const FL_USER1: u64 = 1 << 13;

/// Exported class globals whose C name is not the Ruby name (Ruby 2.6–3.4);
/// `None`: not worth naming a method by.
const CLASS_RENAMES: &[(&str, Option<&str>)] = &[
    ("ArgError", Some("ArgumentError")),
    ("EncCompatError", Some("Encoding::CompatibilityError")),
    ("Fatal", Some("fatal")),
    ("IOBuffer", Some("IO::Buffer")),
    ("ISeq", Some("RubyVM::InstructionSequence")),
    ("IOTimeoutError", Some("IO::TimeoutError")),
    ("Match", Some("MatchData")),
    ("MathDomainError", Some("Math::DomainError")),
    ("NameErrorMesg", None),
    ("NoMemError", Some("NoMemoryError")),
    ("NotImpError", Some("NotImplementedError")),
    ("RactorIsolationError", Some("Ractor::IsolationError")),
    ("RactorUnsafeError", Some("Ractor::UnsafeError")),
    ("RubyVMFrozenCore", None),
    ("Stat", Some("File::Stat")),
    ("SysStackError", Some("SystemStackError")),
    ("WaitReadable", Some("IO::WaitReadable")),
    ("WaitWritable", Some("IO::WaitWritable")),
    ("ZeroDivError", Some("ZeroDivisionError")),
];

/// The Ruby name of the class an exported `rb_c*`/`rb_m*`/`rb_e*` global
/// holds, from the rest of its C name.
fn class_name_of_global(suffix: &str) -> Option<String> {
    match CLASS_RENAMES.iter().find(|(c, _)| *c == suffix) {
        Some((_, ruby)) => ruby.map(str::to_owned),
        None => Some(suffix.to_owned()),
    }
}

/// The offsets of Ruby `major.minor`.
fn offsets(version: (u8, u8)) -> Option<Offsets> {
    // Control frames lost `bp` in 3.3 and gained `jit_return` in 3.1;
    // insns_info moved up 8 bytes in 3.2; its entries grew a node id in 3.1.
    let (cfp_size, insns_info_body, insn_info_entry_size, last_op_id) = match version {
        (2, 6) => (56, 120, 8, 164),
        (2, 7) | (3, 0) => (56, 120, 8, 168),
        (3, 1) => (64, 120, 12, 169),
        (3, 2) => (64, 112, 12, 169),
        (3, 3) => (56, 112, 12, 169),
        (3, 4) => (56, 112, 12, 170),
        _ => return None,
    };
    Some(Offsets {
        cfp_size,
        insns_info_body,
        insns_info_size: insns_info_body + 16,
        succ_index_table: insns_info_body + 24,
        insn_info_entry_size,
        last_op_id,
        string_len_field: version >= (3, 2),
        array_embed_len_mask: if version >= (3, 2) { 0x7f } else { 0x3 },
    })
}

/// How the sampled thread's execution context is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcRoute {
    /// `ruby_current_ec` in a shared library's TLS block: the GOT word the
    /// loader fills with the module id, and the variable's offset in the block.
    TlsModule { got: u64, offset: u64 },
    /// `ruby_current_ec` in the executable's TLS: its offset from the thread pointer.
    TlsStatic(i64),
    /// `ruby_current_execution_context_ptr` (2.6, 2.7): a global.
    Global(u64),
}

/// What a file holding Ruby's VM says about it (ELF virtual addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RubyBinary {
    /// (major, minor).
    pub version: (u8, u8),
    /// `rb_vm_exec`: (start, size).
    pub vm_exec: (u64, u64),
    /// How the current execution context is found.
    pub ec: EcRoute,
    /// The symbol table (`ruby_global_symbols`), if found: C methods are
    /// named through it.
    pub global_symbols: Option<u64>,
    /// Exported globals holding core classes and modules (`rb_cArray`):
    /// (class name, address).
    pub classes: Vec<(String, u64)>,
    /// Where its PT_LOAD segments are.
    pub segments: Segments,
}

impl RubyBinary {
    /// Reads the symbols and version the unwinder needs from an ELF file.
    pub fn read(data: &[u8]) -> Result<Self, DetectError> {
        let obj = object::File::parse(data).map_err(|e| DetectError::Unreadable(e.to_string()))?;
        let mut found: HashMap<&[u8], (u64, u64)> = HashMap::new();
        let mut classes = Vec::new();
        for sym in obj.dynamic_symbols().chain(obj.symbols()) {
            let Ok(name) = sym.name_bytes() else { continue };
            let class = name
                .strip_prefix(b"rb_c")
                .or_else(|| name.strip_prefix(b"rb_m"))
                .or_else(|| name.strip_prefix(b"rb_e"));
            match class {
                Some(class)
                    if sym.kind() == object::SymbolKind::Data
                        && sym.size() == 8
                        && class.first().is_some_and(u8::is_ascii_uppercase) =>
                {
                    let name = class_name_of_global(&String::from_utf8_lossy(class));
                    if let Some(name) = name
                        .filter(|_| !classes.iter().any(|c: &(String, u64)| c.1 == sym.address()))
                    {
                        classes.push((name, sym.address()));
                    }
                }
                _ => {
                    found.entry(name).or_insert((sym.address(), sym.size()));
                }
            }
        }
        let vm_exec = *found
            .get(&b"rb_vm_exec"[..])
            .ok_or(DetectError::NoInterpreter)?;
        let version_at = found
            .get(&b"ruby_version"[..])
            .ok_or(DetectError::MissingSymbol("ruby_version"))?
            .0;
        let version = read_version(&obj, version_at).ok_or(DetectError::MissingSymbol(
            "ruby_version (a readable version)",
        ))?;
        if offsets(version).is_none() {
            return Err(DetectError::UnsupportedVersion(format!(
                "Ruby {}.{} (2.6 through 3.4 are supported)",
                version.0, version.1
            )));
        }
        let ec = if version >= (3, 0) {
            let tls = found
                .get(&b"ruby_current_ec"[..])
                .ok_or(DetectError::MissingSymbol("ruby_current_ec"))?
                .0;
            match tls_module_got(&obj, b"ruby_current_ec") {
                Some(got) => EcRoute::TlsModule { got, offset: tls },
                None => EcRoute::TlsStatic(static_tls_offset(data, tls).ok_or(
                    DetectError::MissingSymbol(
                        "ruby_current_ec's TLS module (no DTPMOD64 relocation, no PT_TLS)",
                    ),
                )?),
            }
        } else {
            EcRoute::Global(
                found
                    .get(&b"ruby_current_execution_context_ptr"[..])
                    .ok_or(DetectError::MissingSymbol(
                        "ruby_current_execution_context_ptr",
                    ))?
                    .0,
            )
        };
        let global_symbols = ["ruby_global_symbols", "global_symbols"]
            .iter()
            .find_map(|n| found.get(n.as_bytes()).map(|s| s.0))
            .or_else(|| {
                let (at, size) = *found.get(&b"rb_sym_all_symbols"[..])?;
                global_symbols_from_code(&obj, at, size)
            });
        Ok(Self {
            version,
            vm_exec,
            ec,
            global_symbols,
            classes,
            segments: Segments::of(&obj),
        })
    }
}

/// The (major, minor) of the `ruby_version` string at `address`.
fn read_version(obj: &object::File<'_>, address: u64) -> Option<(u8, u8)> {
    let section = obj
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&address))?;
    let data = section.data().ok()?;
    let text = data.get(usize::try_from(address - section.address()).ok()?..)?;
    let text = &text[..text.iter().position(|&b| b == 0)?];
    let mut parts = std::str::from_utf8(text).ok()?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The GOT word of a TLS variable's module id (its R_X86_64_DTPMOD64
/// relocation), in a shared library: the general-dynamic model names the
/// variable; the local-dynamic model names no symbol (the module's own).
fn tls_module_got(obj: &object::File<'_>, name: &[u8]) -> Option<u64> {
    let symbols = obj.dynamic_symbol_table()?;
    let mut module_own = None;
    for (offset, r) in obj.dynamic_relocations()? {
        let RelocationFlags::Elf { r_type } = r.flags() else {
            continue;
        };
        if r_type != elf::R_X86_64_DTPMOD64 {
            continue;
        }
        match r.target() {
            RelocationTarget::Symbol(index) => {
                if symbols.symbol_by_index(index).ok()?.name_bytes().ok()? == name {
                    return Some(offset);
                }
            }
            _ => module_own = module_own.or(Some(offset)),
        }
    }
    module_own
}

/// A TLS variable's offset from the thread pointer in an executable (the
/// first TLS block, which ends at the thread pointer: x86-64's variant II).
/// `None` for a shared library, whose block's place the loader chooses.
fn static_tls_offset(data: &[u8], value: u64) -> Option<i64> {
    let file = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = file.endian();
    let headers = file.elf_program_headers();
    if !headers.iter().any(|p| p.p_type(endian) == elf::PT_INTERP) {
        return None;
    }
    let tls = headers.iter().find(|p| p.p_type(endian) == elf::PT_TLS)?;
    let align = tls.p_align(endian).max(1);
    let size = tls.p_memsz(endian).div_ceil(align) * align;
    Some(value as i64 - size as i64)
}

/// `ruby_global_symbols` (static in stripped builds) from the code of
/// `rb_sym_all_symbols`, whose first load from writable data is
/// `global_symbols.str_sym` (the second field, after the 8-byte last_id).
/// What it points to is checked when a name is read (last_id bounds the
/// serial, ids must be an Array).
fn global_symbols_from_code(obj: &object::File<'_>, at: u64, size: u64) -> Option<u64> {
    let text = obj
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&at))?;
    let code = text.data().ok()?;
    let start = usize::try_from(at - text.address()).ok()?;
    let code = code.get(start..start + usize::try_from(size.min(256)).ok()?)?;
    // The table is initialized data; a load from .got or .bss is another global.
    let data = obj.section_by_name(".data")?;
    let in_data = |a: u64| (data.address()..data.address() + data.size()).contains(&a);
    // mov disp32(%rip), %r64: REX.W (0x48 or 0x4c), 0x8b, ModRM 00 reg 101.
    (0..code.len().saturating_sub(7)).find_map(|i| {
        let w = &code[i..i + 7];
        if !matches!(w[0], 0x48 | 0x4c) || w[1] != 0x8b || w[2] & 0xc7 != 0x05 {
            return None;
        }
        let disp = i32::from_le_bytes(w[3..7].try_into().unwrap());
        let target = (at + i as u64 + 7).wrapping_add_signed(i64::from(disp));
        in_data(target).then(|| target - 8)
    })
}

/// Ruby as one process runs it (process addresses).
#[derive(Debug)]
pub struct RubyProcess {
    /// (major, minor).
    pub version: (u8, u8),
    offsets: Offsets,
    vm_exec: (u64, u64),
    ec: EcRoute,
    global_symbols: Option<u64>,
    classes: Vec<(String, u64)>,
    /// Class objects (VALUEs) of `classes`, read once they are set.
    class_names: Mutex<HashMap<u64, String>>,
}

impl PartialEq for RubyProcess {
    fn eq(&self, other: &Self) -> bool {
        (self.version, self.vm_exec, self.ec, self.global_symbols)
            == (other.version, other.vm_exec, other.ec, other.global_symbols)
    }
}

impl Eq for RubyProcess {}

impl RubyProcess {
    /// Ruby in `binary`, mapped with `bias`.
    pub fn new(binary: &RubyBinary, bias: u64) -> Option<Self> {
        let ec = match binary.ec {
            EcRoute::TlsModule { got, offset } => EcRoute::TlsModule {
                got: got.wrapping_add(bias),
                offset,
            },
            EcRoute::Global(at) => EcRoute::Global(at.wrapping_add(bias)),
            fixed @ EcRoute::TlsStatic(_) => fixed,
        };
        Some(Self {
            version: binary.version,
            offsets: offsets(binary.version)?,
            vm_exec: process_range(binary.vm_exec, bias),
            ec,
            global_symbols: binary.global_symbols.map(|a| a.wrapping_add(bias)),
            classes: binary
                .classes
                .iter()
                .map(|(n, a)| (n.clone(), a.wrapping_add(bias)))
                .collect(),
            class_names: Mutex::new(HashMap::new()),
        })
    }

    /// The record the BPF walker reads.
    pub fn interp_info(&self) -> InterpInfo {
        let (tls_module_got, tls_offset, tls_static_offset, ec_global) = match self.ec {
            // An offset past u16 (never seen: TLS blocks hold a few words)
            // finds no context rather than a wrong one.
            EcRoute::TlsModule { got, offset } => (got, u16::try_from(offset).unwrap_or(0), 0, 0),
            EcRoute::TlsStatic(offset) => (0, 0, offset, 0),
            EcRoute::Global(at) => (0, 0, 0, at),
        };
        InterpInfo {
            kind: bpf::interp_kind::RUBY,
            version: u32::from(self.version.0) << 8 | u32::from(self.version.1),
            loop_start: self.vm_exec.0,
            loop_end: self.vm_exec.1,
            ruby: RubyLayout {
                tls_module_got,
                tls_static_offset,
                ec_global,
                tls_offset,
                ec_vm_stack: EC_VM_STACK,
                ec_vm_stack_size: EC_VM_STACK_SIZE,
                ec_cfp: EC_CFP,
                cfp_size: self.offsets.cfp_size,
                cfp_pc: CFP_PC,
                cfp_iseq: CFP_ISEQ,
                cfp_ep: CFP_EP,
                iseq_body: ISEQ_BODY,
                body_size: BODY_SIZE,
                body_encoded: BODY_ENCODED,
                cme_def: CME_DEF,
                cme_owner: CME_OWNER,
                reserved: [0; 3],
            },
            ..InterpInfo::default()
        }
    }

    /// Names the instruction sequence or method entry at `object` of
    /// process `pid`, if it still is the one the BPF walker saw.
    pub fn name_object(
        &self,
        pid: u32,
        object: u64,
        validation: u32,
    ) -> Result<CodeInfo, NameError> {
        let flags = read_u64(pid, object).map_err(NameError::Read)?;
        if flags & 0x1f != T_IMEMO {
            return Err(NameError::NotCode);
        }
        match (flags >> 12) & 0xf {
            IMEMO_ISEQ => self.name_iseq(pid, object, validation),
            IMEMO_MENT => self.name_method_entry(pid, object, validation),
            _ => Err(NameError::NotCode),
        }
    }

    fn name_iseq(&self, pid: u32, iseq: u64, validation: u32) -> Result<CodeInfo, NameError> {
        let o = &self.offsets;
        let body = read_u64(pid, iseq.wrapping_add(ISEQ_BODY.into())).map_err(NameError::Read)?;
        let mut head = [0u8; 192];
        let head = &mut head[..usize::from(o.succ_index_table + 8)];
        read_memory(pid, body, head).map_err(NameError::Read)?;
        let u64_at = |at: u16| u64_in(head, at.into());
        let u32_at = |at: u16| u32_in(head, at.into());
        let (encoded, size) = (u64_at(BODY_ENCODED), u32_at(BODY_SIZE));
        if ruby_validation(body, encoded, u64::from(size)) != validation {
            return Err(NameError::Stale);
        }
        let path = self.read_path(pid, u64_at(BODY_LOCATION))?;
        let label = self.read_string(pid, u64_at(BODY_LOCATION + 16))?;
        let lines = self.line_table(
            pid,
            u64_at(o.insns_info_body),
            u32_at(o.insns_info_size),
            u64_at(o.succ_index_table),
            size,
        )?;
        // location.first_lineno: a Fixnum before 3.2, an int since.
        let first_line = if o.string_len_field {
            u32_at(BODY_FIRST_LINENO)
        } else {
            (u64_at(BODY_FIRST_LINENO) >> 1) as u32
        };
        Ok(CodeInfo {
            name: label,
            filename: path,
            first_line,
            lines: LineSource::ByPosition(lines),
        })
    }

    fn name_method_entry(
        &self,
        pid: u32,
        cme: u64,
        validation: u32,
    ) -> Result<CodeInfo, NameError> {
        let mut head = [0u8; 40];
        read_memory(pid, cme, &mut head).map_err(NameError::Read)?;
        let u64_at = |at: u16| u64_in(&head, at.into());
        let (def, owner) = (u64_at(CME_DEF), u64_at(CME_OWNER));
        if ruby_validation(def, u64_at(CME_DEF + 8), owner) != validation {
            return Err(NameError::Stale);
        }
        let id = read_u64(pid, def.wrapping_add(DEF_ORIGINAL_ID)).map_err(NameError::Read)?;
        let method = self.id_name(pid, id)?;
        let name = match self.class_name(pid, owner) {
            Some(class) => format!("{class}#{method}"),
            None => method,
        };
        Ok(CodeInfo {
            name,
            filename: String::new(),
            first_line: 0,
            lines: LineSource::InFrame,
        })
    }

    /// A core class's name (`Array`), from the exported global holding it.
    fn class_name(&self, pid: u32, class: u64) -> Option<String> {
        let mut names = self.class_names.lock().unwrap_or_else(|e| e.into_inner());
        if names.is_empty() {
            for (name, at) in &self.classes {
                if let Ok(value) = read_u64(pid, *at) {
                    if value != 0 {
                        names.insert(value, name.clone());
                    }
                }
            }
        }
        names.get(&class).cloned()
    }

    /// The name of a symbol ID, from the VM's symbol table.
    fn id_name(&self, pid: u32, id: u64) -> Result<String, NameError> {
        let table = self.global_symbols.ok_or(NameError::NotCode)?;
        let serial = if id > self.offsets.last_op_id {
            id >> ID_SCOPE_SHIFT
        } else {
            id
        };
        let last = read_u64(pid, table).map_err(NameError::Read)? & 0xffff_ffff;
        if serial == 0 || serial > last {
            return Err(NameError::Stale);
        }
        let ids = read_u64(pid, table.wrapping_add(SYMBOLS_IDS)).map_err(NameError::Read)?;
        let unit = self.array_entry(pid, ids, serial / ID_ENTRY_UNIT)?;
        let string = self.array_entry(pid, unit, (serial % ID_ENTRY_UNIT) * ID_ENTRY_SIZE)?;
        self.read_string(pid, string)
    }

    /// Element `index` of an Array.
    fn array_entry(&self, pid: u32, array: u64, index: u64) -> Result<u64, NameError> {
        let mut head = [0u8; 40];
        read_memory(pid, array, &mut head).map_err(NameError::Read)?;
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap());
        let flags = word(0);
        if flags & 0x1f != T_ARRAY {
            return Err(NameError::NotCode);
        }
        let (len, items) = if flags & FL_USER1 != 0 {
            (
                (flags >> 15) & self.offsets.array_embed_len_mask,
                array + 16,
            )
        } else {
            (word(16), word(32))
        };
        if index >= len {
            return Err(NameError::Stale);
        }
        read_u64(pid, items + index * 8).map_err(NameError::Read)
    }

    /// A String's text.
    fn read_string(&self, pid: u32, string: u64) -> Result<String, NameError> {
        let mut head = [0u8; 32];
        read_memory(pid, string, &mut head).map_err(NameError::Read)?;
        let word = |at: usize| u64_in(&head, at);
        let flags = word(0);
        if flags & 0x1f != T_STRING {
            return Err(NameError::NotCode);
        }
        let embedded = flags & FL_USER1 == 0;
        let (len, data) = match (self.offsets.string_len_field, embedded) {
            (false, true) => ((flags >> 14) & 0x1f, string.wrapping_add(16)),
            (false, false) => (word(16), word(24)),
            (true, true) => (word(16), string.wrapping_add(24)),
            (true, false) => (word(16), word(24)),
        };
        if len > MAX_STRING {
            return Err(NameError::TooLong);
        }
        let mut bytes = vec![0u8; len as usize];
        read_memory(pid, data, &mut bytes).map_err(NameError::Read)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// An iseq's path: a String, or an Array of (path, real path).
    fn read_path(&self, pid: u32, pathobj: u64) -> Result<String, NameError> {
        let flags = read_u64(pid, pathobj).map_err(NameError::Read)?;
        if flags & 0x1f == T_ARRAY {
            let path = self.array_entry(pid, pathobj, 0)?;
            return self.read_string(pid, path);
        }
        self.read_string(pid, pathobj)
    }

    /// The line of every instruction position of an iseq, from its
    /// instruction info entries and the succinct index that maps positions
    /// to them (vm's succ_index_table).
    fn line_table(
        &self,
        pid: u32,
        entries: u64,
        count: u32,
        succ_table: u64,
        iseq_size: u32,
    ) -> Result<Vec<u32>, NameError> {
        // Each instruction has at most one entry: more is not a line table.
        if count == 0 || count > iseq_size.max(1) || u64::from(iseq_size) > MAX_ISEQ {
            return Err(NameError::NotCode);
        }
        let entry_size = usize::from(self.offsets.insn_info_entry_size);
        let mut raw = vec![0u8; count as usize * entry_size];
        read_memory(pid, entries, &mut raw).map_err(NameError::Read)?;
        let line_of = |i: usize| u32_in(&raw, i * entry_size);
        if count == 1 || succ_table == 0 {
            return Ok(vec![line_of(0); iseq_size as usize]);
        }
        let blocks = (iseq_size as usize)
            .saturating_sub(IMMEDIATE_TABLE_SIZE)
            .div_ceil(512);
        let mut table = vec![0u8; 48 + blocks * 80];
        read_memory(pid, succ_table, &mut table).map_err(NameError::Read)?;
        let index = SuccIndex::new(&table);
        Ok((0..iseq_size as usize)
            .map(|pos| line_of((index.lookup(pos) as usize).saturating_sub(1)))
            .collect())
    }
}

/// Longest string read.
const MAX_STRING: u64 = 4096;
/// Most instruction positions of an iseq read.
const MAX_ISEQ: u64 = 1 << 20;
/// Positions of the succinct index kept in its immediate part.
const IMMEDIATE_TABLE_SIZE: usize = 54;

/// Ruby's succinct bit vector from instruction positions to the number of
/// instruction-info entries starting at or before them (`succ_index_table`:
/// 6 words of 9 7-bit ranks, then 80-byte blocks of 512 positions: a rank,
/// 7 9-bit small-block ranks and 8 words of bits).
struct SuccIndex<'a> {
    table: &'a [u8],
}

impl SuccIndex<'_> {
    fn new(table: &[u8]) -> SuccIndex<'_> {
        SuccIndex { table }
    }

    fn word(&self, at: usize) -> u64 {
        u64_in(self.table, at)
    }

    fn lookup(&self, pos: usize) -> u64 {
        if pos < IMMEDIATE_TABLE_SIZE {
            return (self.word(pos / 9 * 8) >> (pos % 9 * 7)) & 0x7f;
        }
        let x = pos - IMMEDIATE_TABLE_SIZE;
        let block = 48 + x / 512 * 80;
        let bit = x % 512;
        let small = bit / 64;
        let rank = self.word(block) & 0xffff_ffff;
        let small_rank = match small {
            0 => 0,
            i => (self.word(block + 8) >> ((i - 1) * 9)) & 0x1ff,
        };
        let bits = self.word(block + 16 + small * 8) << (63 - bit % 64);
        rank + small_rank + u64::from(bits.count_ones())
    }
}

/// The validation value BPF computes for a frame's object (see
/// `ruby_validation` in ebpf/runtimes/ruby.h).
pub fn ruby_validation(a: u64, b: u64, c: u64) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, v: u64| (h ^ v).wrapping_mul(K);
    (mix(mix(mix(a, 0x7275_6279_0000_0000), b), c) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_may_hold_ruby() {
        for path in [
            "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1",
            "/usr/bin/ruby3.1",
            "/root/.rbenv/versions/3.3.0/bin/ruby",
        ] {
            assert!(may_be_ruby(path), "{path}");
        }
        assert!(!may_be_ruby("/usr/bin/python3.11"));
    }

    #[test]
    fn validation_is_what_bpf_computes() {
        // What ruby_validation in ebpf/runtimes/ruby.h gives (compiled from
        // that source with clang and run).
        assert_eq!(
            ruby_validation(0x7f00_0000_1000, 0x7f00_0000_2000, 120),
            0x2c00_74df
        );
        assert_ne!(
            ruby_validation(0x7f00_0000_1000, 0x7f00_0000_2000, 121),
            0x2c00_74df
        );
    }

    #[test]
    fn classes_are_named_as_ruby_names_them() {
        assert_eq!(class_name_of_global("Array").as_deref(), Some("Array"));
        assert_eq!(class_name_of_global("Stat").as_deref(), Some("File::Stat"));
        assert_eq!(
            class_name_of_global("ZeroDivError").as_deref(),
            Some("ZeroDivisionError")
        );
        assert_eq!(class_name_of_global("RubyVMFrozenCore"), None);
    }

    #[test]
    fn every_supported_version_has_offsets() {
        for version in [(2, 6), (2, 7), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)] {
            let o = offsets(version).unwrap();
            assert!(o.succ_index_table + 8 <= 192, "{version:?}");
            assert!(o.cfp_size <= 64, "{version:?}");
        }
        assert!(offsets((2, 5)).is_none());
        assert!(offsets((3, 5)).is_none());
    }

    /// Debian's libruby (stripped of .symtab): the execution context through
    /// its TLS module's GOT word, the symbol table (in .data) from
    /// rb_sym_all_symbols' code, core classes from .dynsym. CI installs it;
    /// elsewhere the test says it skipped.
    #[test]
    fn reads_debians_stripped_libruby() {
        let path = "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1";
        let Ok(data) = std::fs::read(path) else {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI must install ruby"
            );
            eprintln!("SKIPPED: no {path}");
            return;
        };
        let binary = RubyBinary::read(&data).unwrap();
        assert_eq!(binary.version, (3, 1));
        assert!(binary.vm_exec.1 > 0);
        let EcRoute::TlsModule { got, offset } = binary.ec else {
            panic!("{:?}", binary.ec)
        };
        assert_eq!(offset, 8);
        let obj = object::File::parse(&*data).unwrap();
        let got_section = obj.section_by_name(".got").unwrap();
        assert!((got_section.address()..got_section.address() + got_section.size()).contains(&got));
        let symbols = binary.global_symbols.unwrap();
        let data_section = obj.section_by_name(".data").unwrap();
        assert!(
            (data_section.address()..data_section.address() + data_section.size())
                .contains(&symbols)
        );
        for class in ["Array", "Integer", "Kernel", "Object", "StandardError"] {
            assert!(binary.classes.iter().any(|(n, _)| n == class), "{class}");
        }
    }

    /// Builds a succinct index the way Ruby's succ_index_table_create does,
    /// for positions where entries start.
    fn succ_table(starts: &[usize], size: usize) -> Vec<u8> {
        let blocks = size.saturating_sub(IMMEDIATE_TABLE_SIZE).div_ceil(512);
        let mut table = vec![0u8; 48 + blocks * 80];
        let rank_at = |pos: usize| starts.iter().filter(|&&s| s <= pos).count() as u64;
        for pos in 0..IMMEDIATE_TABLE_SIZE.min(size) {
            let word = pos / 9 * 8;
            let mut v = u64::from_le_bytes(table[word..word + 8].try_into().unwrap());
            v |= rank_at(pos) << (pos % 9 * 7);
            table[word..word + 8].copy_from_slice(&v.to_le_bytes());
        }
        for b in 0..blocks {
            let base = IMMEDIATE_TABLE_SIZE + b * 512;
            let at = 48 + b * 80;
            let rank = rank_at(base) - u64::from(starts.contains(&base));
            table[at..at + 4].copy_from_slice(&(rank as u32).to_le_bytes());
            let mut small = 0u64;
            for i in 1..8 {
                let r = rank_at(base + i * 64 - 1) - rank;
                small |= r << ((i - 1) * 9);
            }
            table[at + 8..at + 16].copy_from_slice(&small.to_le_bytes());
            for i in 0..8 {
                let mut bits = 0u64;
                for j in 0..64 {
                    if starts.contains(&(base + i * 64 + j)) {
                        bits |= 1 << j;
                    }
                }
                table[at + 16 + i * 8..at + 24 + i * 8].copy_from_slice(&bits.to_le_bytes());
            }
        }
        table
    }

    #[test]
    fn the_succinct_index_counts_entries_up_to_a_position() {
        let starts = [0, 3, 9, 53, 54, 60, 600, 1100];
        let size = 1200;
        let table = succ_table(&starts, size);
        let index = SuccIndex::new(&table);
        for pos in 0..size {
            let want = starts.iter().filter(|&&s| s <= pos).count() as u64;
            assert_eq!(index.lookup(pos), want, "position {pos}");
        }
    }
}
