//! Compiles the call frame information of an x86_64 ELF object (`.eh_frame`,
//! found through `PT_GNU_EH_FRAME` when section headers are gone, or
//! `.debug_frame`; for Go code the stack-pointer deltas of `.gopclntab`)
//! into a table of 8-byte rows sorted by address, the form the BPF unwinder
//! binary-searches (`struct unwind_row` in ebpf/cpu.h).
//!
//! A row says, from its address until the next row's, how to find the
//! canonical frame address (CFA: `rsp` or `rbp` plus an offset, or the PLT
//! expression) and where the caller's `rbp` was saved. The return address is
//! always at CFA − 8 on x86_64. Rules a row cannot express are kept as
//! [`RowKind::Unsupported`] rows and counted, never approximated.

use std::path::Path;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EhFrameHdr, LittleEndian, Pointer,
    Register, RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Object, ObjectSection};

/// What a row tells the unwinder (`enum unwind_row_kind` in ebpf/cpu.h).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// No call frame information covers these addresses.
    None = 0,
    /// CFA = rsp + offset.
    CfaRsp = 1,
    /// CFA = rbp + offset.
    CfaRbp = 2,
    /// A PLT stub: CFA = rsp + offset, plus 8 once `rip & 15` reaches the threshold.
    CfaPlt = 3,
    /// The return address is undefined: the outermost frame (`_start`, thread start).
    End = 4,
    /// The kernel's signal trampoline (`__restore_rt`): registers come from the signal frame.
    Signal = 5,
    /// A rule the unwinder cannot follow (an unknown expression, an odd register).
    Unsupported = 6,
}

/// One row, `struct unwind_row` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// First address (ELF virtual address) the row covers.
    pub pc: u32,
    /// A [`RowKind`].
    pub kind: u8,
    /// Where the caller's rbp was saved, in 8-byte words from the CFA; 0:
    /// rbp is unchanged. For [`RowKind::CfaPlt`]: the `rip & 15` threshold.
    pub rbp_offset: i8,
    /// CFA offset from its base register.
    pub cfa_offset: u16,
}

impl UnwindRow {
    /// The row's kind.
    pub fn kind(&self) -> RowKind {
        match self.kind {
            1 => RowKind::CfaRsp,
            2 => RowKind::CfaRbp,
            3 => RowKind::CfaPlt,
            4 => RowKind::End,
            5 => RowKind::Signal,
            6 => RowKind::Unsupported,
            _ => RowKind::None,
        }
    }

    fn rule(kind: RowKind, cfa_offset: u16, rbp_offset: i8) -> Self {
        Self {
            pc: 0,
            kind: kind as u8,
            rbp_offset,
            cfa_offset,
        }
    }

    fn same_rule(&self, other: &Self) -> bool {
        (self.kind, self.rbp_offset, self.cfa_offset)
            == (other.kind, other.rbp_offset, other.cfa_offset)
    }
}

/// A `PT_LOAD` segment: how file offsets map to the addresses rows use.
pub use agent_object_files::Segment as LoadSegment;

/// Where the rows came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `.eh_frame` section.
    EhFrame,
    /// `.eh_frame` located through `PT_GNU_EH_FRAME` (no section headers).
    EhFrameHdr,
    /// The `.debug_frame` section.
    DebugFrame,
    /// Go's function table alone (a Go binary without C code).
    GoPclntab,
}

/// What compiling found, for metrics and notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Functions (FDEs) read.
    pub functions: u64,
    /// Rows whose CFA rule cannot be expressed.
    pub unsupported_cfa: u64,
    /// Rows whose rbp rule cannot be expressed.
    pub unsupported_rbp: u64,
    /// Rows of signal trampolines.
    pub signal_rows: u64,
    /// FDEs skipped: above 4 GiB or unparsable.
    pub skipped_functions: u64,
    /// Go functions whose rows come from `.gopclntab`.
    pub go_functions: u64,
}

/// The compiled table of one object.
#[derive(Clone, Debug)]
pub struct UnwindTable {
    /// Rows sorted by `pc`, no two neighbours with the same rule.
    pub rows: Vec<UnwindRow>,
    /// The object's loadable segments.
    pub segments: Vec<LoadSegment>,
    /// Where the rows came from.
    pub source: Source,
    /// Counts.
    pub stats: CompileStats,
}

/// Why an object has no table.
#[derive(Debug, thiserror::Error)]
pub enum UnwindTableError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not a 64-bit ELF file.
    #[error("not a 64-bit ELF file: {0}")]
    NotElf(object::Error),
    /// Another architecture than x86_64.
    #[error("unwind tables are built for x86_64 only (e_machine {0})")]
    Architecture(u16),
    /// No `.eh_frame`, `PT_GNU_EH_FRAME` or `.debug_frame`.
    #[error("no call frame information (.eh_frame, PT_GNU_EH_FRAME or .debug_frame)")]
    NoFrameInfo,
    /// The frame information is malformed.
    #[error("malformed call frame information: {0}")]
    Malformed(#[from] gimli::Error),
}

/// The PLT stub expression GCC and binutils emit:
/// `rsp + 8 + ((rip & 15) >= N) << 3`, N = 11 (`.plt`) or 10 (`.plt.sec`).
fn plt_threshold(expression: &[u8]) -> Option<u8> {
    const OP_BREG7: u8 = 0x77;
    const OP_BREG16: u8 = 0x80;
    const OP_LIT0: u8 = 0x30;
    match *expression {
        [OP_BREG7, 8, OP_BREG16, 0, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if (OP_LIT0..OP_LIT0 + 32).contains(&lit) =>
        {
            Some(lit - OP_LIT0)
        }
        _ => None,
    }
}

/// Compiles the file at `path`.
pub fn compile_file(path: &Path) -> Result<UnwindTable, UnwindTableError> {
    let file = std::fs::File::open(path).map_err(|source| UnwindTableError::Io {
        path: path.display().to_string(),
        source,
    })?;
    compile_opened(&file, &path.display().to_string())
}

/// Compiles a file opened earlier (it stays readable after the process
/// that mapped it is gone); `name` says which in errors.
pub fn compile_opened(file: &std::fs::File, name: &str) -> Result<UnwindTable, UnwindTableError> {
    // SAFETY: the map is read-only; a file truncated meanwhile makes gimli
    // or object see short data (an error), except that reading past the new
    // end raises SIGBUS — the same exposure every ELF reader has (addr2line,
    // perf). Objects are read once per build id.
    let data = unsafe { memmap2::Mmap::map(file) }.map_err(|source| UnwindTableError::Io {
        path: name.to_owned(),
        source,
    })?;
    // SAFETY: the mapping is read-only and never written, so its pages are
    // the page cache's: dropping them loses nothing, and slices into the map
    // read the same bytes again when they fault them back.
    let release = || {
        let _ = unsafe { data.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    };
    compile_releasing(&data, &release)
}

/// Compiles an ELF image held in memory.
pub fn compile(data: &[u8]) -> Result<UnwindTable, UnwindTableError> {
    compile_releasing(data, &|| {})
}

/// [`compile`], calling `release` after each [`RELEASE_EVERY`] bytes of call
/// frame information read: a mapped file's pages can go then, so a large
/// library's `.eh_frame` (libLLVM's: 5 MB) is never resident whole beside
/// its rows.
fn compile_releasing(data: &[u8], release: &dyn Fn()) -> Result<UnwindTable, UnwindTableError> {
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(UnwindTableError::NotElf)?;
    let endian = file.endian();
    let machine = file.elf_header().e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(UnwindTableError::Architecture(machine.0));
    }
    let headers = file.elf_program_headers();
    let segments = agent_object_files::load_segments(&file);

    let mut builder = RowBuilder {
        rows: Vec::new(),
        stats: CompileStats::default(),
        release,
    };
    // Section headers, when present, are the truth; a stale PT_GNU_EH_FRAME
    // may outlive a removed .eh_frame.
    let has_sections = file.sections().next().is_some();
    // Go code has no call frame information but exact stack-pointer deltas;
    // C code linked into a Go binary (cgo) has .eh_frame.
    let go_functions = go::rows(data, &mut builder);
    let source = if let Some(section) = file.section_by_name(".eh_frame") {
        let bases = bases_for(&file).set_eh_frame(section.address());
        let eh_frame = EhFrame::new(section.data().unwrap_or(&[]), LittleEndian);
        builder.read(&eh_frame, &bases)?;
        Source::EhFrame
    } else if go_functions > 0 {
        Source::GoPclntab
    } else if let Some(section) = file.section_by_name(".debug_frame") {
        let mut debug_frame = DebugFrame::new(section.data().unwrap_or(&[]), LittleEndian);
        debug_frame.set_address_size(8);
        builder.read(&debug_frame, &BaseAddresses::default())?;
        Source::DebugFrame
    } else if let Some(hdr) = headers
        .iter()
        .find(|p| p.p_type(endian) == elf::PT_GNU_EH_FRAME && !has_sections)
    {
        let (eh_frame, bases) = eh_frame_from_header(data, hdr.p_vaddr(endian), &segments)?;
        builder.read(&eh_frame, &bases)?;
        Source::EhFrameHdr
    } else {
        return Err(UnwindTableError::NoFrameInfo);
    };
    let (mut rows, mut stats) = builder.finish();
    stats.go_functions = go_functions;
    mark_entry_point(&mut rows, file.elf_header().e_entry(endian));
    Ok(UnwindTable {
        rows,
        segments,
        source,
        stats,
    })
}

/// Most bytes of entry code without call frame information marked as the
/// outermost frame (glibc's ld.so `_start` and `_dl_start_user` take 64).
const ENTRY_CODE_BYTES: u32 = 256;

/// The ELF entry point is where a process (or the dynamic loader's work for
/// it) begins: nothing called it, so a return address into it ends the
/// stack, even where no call frame information covers it (glibc's ld.so
/// `_start`). Where none does, marks from it to the next row, at most
/// [`ENTRY_CODE_BYTES`], as [`RowKind::End`].
fn mark_entry_point(rows: &mut Vec<UnwindRow>, entry: u64) {
    let Ok(entry) = u32::try_from(entry) else {
        return;
    };
    if entry == 0 {
        return;
    }
    let mut i = rows.partition_point(|r| r.pc <= entry);
    if i > 0 && rows[i - 1].kind() != RowKind::None {
        return; // call frame information covers it
    }
    if i > 0 && rows[i - 1].pc == entry {
        i -= 1;
        rows.remove(i);
    }
    let end = entry.saturating_add(ENTRY_CODE_BYTES);
    rows.insert(i, UnwindRow::rule(RowKind::End, 0, 0).at(u64::from(entry)));
    match rows.get_mut(i + 1) {
        Some(next) if next.pc <= end => {}
        // A gap marker after it now starts where the entry code ends.
        Some(next) if next.kind() == RowKind::None => next.pc = end,
        _ => rows.insert(
            i + 1,
            UnwindRow::rule(RowKind::None, 0, 0).at(u64::from(end)),
        ),
    }
}

fn bases_for(file: &ElfFile64<object::Endianness>) -> BaseAddresses {
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    bases
}

/// The bytes at virtual address `vaddr` up to the end of its segment.
fn bytes_at<'d>(data: &'d [u8], vaddr: u64, segments: &[LoadSegment]) -> Option<&'d [u8]> {
    let s = segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.file_size)?;
    let start = usize::try_from(s.file_offset + (vaddr - s.vaddr)).ok()?;
    let end = usize::try_from(s.file_offset + s.file_size).ok()?;
    data.get(start..end.min(data.len()))
}

/// Finds `.eh_frame` through `.eh_frame_hdr` (`PT_GNU_EH_FRAME`).
fn eh_frame_from_header<'d>(
    data: &'d [u8],
    hdr_vaddr: u64,
    segments: &[LoadSegment],
) -> Result<(EhFrame<gimli::EndianSlice<'d, LittleEndian>>, BaseAddresses), UnwindTableError> {
    let hdr_bytes = bytes_at(data, hdr_vaddr, segments).ok_or(UnwindTableError::NoFrameInfo)?;
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_vaddr);
    let hdr = EhFrameHdr::new(hdr_bytes, LittleEndian).parse(&bases, 8)?;
    let Pointer::Direct(eh_frame_vaddr) = hdr.eh_frame_ptr() else {
        return Err(UnwindTableError::NoFrameInfo);
    };
    // The section ends where its terminator (a zero length) is; gimli stops there.
    let bytes = bytes_at(data, eh_frame_vaddr, segments).ok_or(UnwindTableError::NoFrameInfo)?;
    Ok((
        EhFrame::new(bytes, LittleEndian),
        bases.set_eh_frame(eh_frame_vaddr),
    ))
}

/// Collects rows from every FDE, then sorts and compacts them in place (a
/// large object has millions: one 8-byte row each, no second copy).
struct RowBuilder<'a> {
    /// Rows, and each function's end marker (a [`RowKind::None`] row).
    rows: Vec<UnwindRow>,
    stats: CompileStats,
    /// Lets the pages of the data read so far go (see [`compile_releasing`]).
    release: &'a dyn Fn(),
}

/// Call frame information read between two releases of its pages (a page
/// in tests: their files then release many times).
const RELEASE_EVERY: usize = if cfg!(test) { 4096 } else { 1 << 20 };

impl RowBuilder<'_> {
    fn read<R, S>(&mut self, section: &S, bases: &BaseAddresses) -> Result<(), UnwindTableError>
    where
        R: gimli::Reader<Offset = usize>,
        S: UnwindSection<R>,
    {
        let mut ctx = UnwindContext::new();
        let mut entries = section.entries(bases);
        let mut released_at = 0;
        while let Some(entry) = entries.next()? {
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            if partial.offset() - released_at >= RELEASE_EVERY {
                (self.release)();
                released_at = partial.offset();
            }
            let Ok(fde) = partial.parse(S::cie_from_offset) else {
                self.stats.skipped_functions += 1;
                continue;
            };
            let (start, end) = (fde.initial_address(), fde.end_address());
            if end > u64::from(u32::MAX) || start >= end {
                self.stats.skipped_functions += 1;
                continue;
            }
            self.stats.functions += 1;
            if fde.is_signal_trampoline() {
                self.stats.signal_rows += 1;
                self.push(start, UnwindRow::rule(RowKind::Signal, 0, 0));
            } else {
                let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
                    self.stats.skipped_functions += 1;
                    continue;
                };
                while let Ok(Some(row)) = table.next_row() {
                    let rule = self.rule_of(section, row);
                    self.push(row.start_address(), rule);
                }
            }
            self.end_function(end);
        }
        Ok(())
    }

    fn push(&mut self, pc: u64, rule: UnwindRow) {
        self.rows.push(rule.at(pc));
    }

    /// Ends the function whose rows were pushed last at `end`.
    fn end_function(&mut self, end: u64) {
        self.push(end, UnwindRow::rule(RowKind::None, 0, 0));
    }

    fn rule_of<R, S>(&mut self, section: &S, row: &gimli::UnwindTableRow<usize>) -> UnwindRow
    where
        R: gimli::Reader<Offset = usize>,
        S: UnwindSection<R>,
    {
        match row.register(X86_64::RA) {
            Some(RegisterRule::Undefined) => return UnwindRow::rule(RowKind::End, 0, 0),
            Some(RegisterRule::Offset(-8)) => {}
            _ => {
                self.stats.unsupported_cfa += 1;
                return UnwindRow::rule(RowKind::Unsupported, 0, 0);
            }
        }
        // No rule: the x86-64 ABI's default for a callee-saved register, unchanged.
        let rbp = match row.register(X86_64::RBP) {
            None | Some(RegisterRule::SameValue) => Some(0),
            Some(RegisterRule::Offset(n)) if n % 8 == 0 && n != 0 => i8::try_from(n / 8).ok(),
            _ => None,
        };
        let Some(rbp) = rbp else {
            self.stats.unsupported_rbp += 1;
            return UnwindRow::rule(RowKind::Unsupported, 0, 0);
        };
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => {
                let kind = match *register {
                    Register(7) => Some(RowKind::CfaRsp),
                    Register(6) => Some(RowKind::CfaRbp),
                    _ => None,
                };
                kind.zip(u16::try_from(*offset).ok())
                    .map(|(kind, offset)| UnwindRow::rule(kind, offset, rbp))
            }
            CfaRule::Expression(expression) => expression
                .get(section)
                .ok()
                .and_then(|e| e.0.to_slice().ok().and_then(|b| plt_threshold(&b)))
                .map(|threshold| UnwindRow::rule(RowKind::CfaPlt, 8, threshold as i8)),
        };
        cfa.unwrap_or_else(|| {
            self.stats.unsupported_cfa += 1;
            UnwindRow::rule(RowKind::Unsupported, 0, 0)
        })
    }

    fn finish(self) -> (Vec<UnwindRow>, CompileStats) {
        let mut rows = self.rows;
        // At one address a function's first row wins over another's end
        // marker: markers sort first (a Go stack switch's row is a marker's
        // twin, so either may hold).
        rows.sort_unstable_by_key(|r| (r.pc, r.kind != RowKind::None as u8));
        // Compacted in place: `kept` rows are done, `i` is the next address.
        let mut kept = 0;
        let mut i = 0;
        while i < rows.len() {
            // The last entry at an address is the one that holds.
            let pc = rows[i].pc;
            let mut j = i;
            while j + 1 < rows.len() && rows[j + 1].pc == pc {
                j += 1;
            }
            let row = rows[j];
            if kept == 0 || !rows[kept - 1].same_rule(&row) {
                rows[kept] = row;
                kept += 1;
            }
            i = j + 1;
        }
        rows.truncate(kept);
        // A table starting with a gap marker has nothing to say before it.
        if rows.first().is_some_and(|r| r.kind() == RowKind::None) {
            rows.remove(0);
        }
        rows.shrink_to_fit();
        (rows, self.stats)
    }
}

impl UnwindRow {
    fn at(mut self, pc: u64) -> Self {
        // Callers keep addresses below 4 GiB (FDEs above are skipped).
        self.pc = pc as u32;
        self
    }
}

impl UnwindTable {
    /// The row covering `pc` (an ELF virtual address), as the BPF unwinder finds it.
    pub fn row_for(&self, pc: u64) -> Option<&UnwindRow> {
        let pc = u32::try_from(pc).ok()?;
        let i = self.rows.partition_point(|r| r.pc <= pc).checked_sub(1)?;
        Some(&self.rows[i]).filter(|r| r.kind() != RowKind::None)
    }

    /// The ELF virtual address at the start of an executable mapping of
    /// this file at file offset `offset` (page aligned, so it may lie before
    /// the segment's own `p_offset`).
    pub fn mapping_vaddr(segments: &[LoadSegment], offset: u64) -> Option<u64> {
        const PAGE: u64 = 4096;
        let s = segments.iter().find(|s| {
            s.executable
                && offset >= s.file_offset & !(PAGE - 1)
                && offset < s.file_offset.saturating_add(s.file_size)
        })?;
        // p_vaddr and p_offset agree modulo the page size.
        Some(s.vaddr.wrapping_sub(s.file_offset.wrapping_sub(offset)))
    }

    /// Bytes the rows take.
    pub fn size_bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<UnwindRow>()
    }
}

mod go;
#[cfg(test)]
mod tests;
