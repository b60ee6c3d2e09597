//! Reads the function table every Go binary carries (`.gopclntab`, kept by
//! `-ldflags="-s -w"`): each function's name, and per pc its file, line,
//! inlined calls and stack-pointer delta. Formats of Go 1.2–1.15, 1.16–1.17,
//! 1.18–1.19 and 1.20 onwards (the header's magic says which).
//!
//! Layout facts come from the Go runtime (`runtime/symtab.go`,
//! `internal/abi/symtab.go`) and `debug/gosym`. Every read is bounds
//! checked: a malformed table gives an [`Error`], never a panic.

mod elf;
mod pcvalue;

use elf::Image;
pub use pcvalue::PcValues;

/// Why a table cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a 64-bit ELF file.
    #[error("not a 64-bit ELF file")]
    NotElf,
    /// No `.gopclntab` section and no table header in the file.
    #[error("no Go function table (.gopclntab)")]
    NoTable,
    /// The table's header is not one this reader knows.
    #[error("unknown Go function table header (magic {0:#x})")]
    UnknownFormat(u32),
    /// A field points outside the table or holds an impossible value.
    #[error("malformed Go function table: {0}")]
    Malformed(&'static str),
}

/// The table layouts, named by the first Go release that wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// Go 1.2–1.15.
    Go12,
    /// Go 1.16–1.17: separate name, file and pc tables; files per compile unit.
    Go116,
    /// Go 1.18–1.19: 32-bit entry offsets from the start of text.
    Go118,
    /// Go 1.20 onwards: `_func.startLine`, a smaller inline-tree entry.
    Go120,
}

impl Format {
    fn from_magic(magic: u32) -> Option<Self> {
        match magic {
            0xffff_fffb => Some(Self::Go12),
            0xffff_fffa => Some(Self::Go116),
            0xffff_fff0 => Some(Self::Go118),
            0xffff_fff1 => Some(Self::Go120),
            _ => None,
        }
    }
}

/// `_func.flag` bits (Go 1.17+).
const FLAG_TOPFRAME: u8 = 1;
const FLAG_SPWRITE: u8 = 2;
/// `PCDATA_InlTreeIndex`.
const PCDATA_INL_TREE_INDEX: u32 = 2;
/// Deepest chain of inlined calls followed at one pc.
const MAX_INLINE_DEPTH: usize = 64;
/// Word index of `text` in the runtime's `moduledata` (Go 1.16+).
const MODULEDATA_TEXT: u64 = 22;

/// Word index of `gofunc` (the base of funcdata offsets) in the runtime's
/// `moduledata`, which grows fields between releases: `covctrs` in 1.20,
/// type and itab bounds in 1.27.
fn gofunc_word(format: Format, version: Option<(u32, u32)>) -> Option<u64> {
    match (format, version?) {
        (Format::Go118, _) => Some(38),
        (Format::Go120, (1, 20..=26)) => Some(40),
        (Format::Go120, (1, 27)) => Some(43),
        // A newer layout is not guessed: inlined calls go unexpanded.
        _ => None,
    }
}

/// Functions that begin a stack (nothing called them), for binaries older
/// than `_func.flag`.
const TOP_FRAMES: [&str; 4] = [
    "runtime.goexit",
    "runtime.mstart",
    "runtime.rt0_go",
    "runtime.mstart0",
];

/// `base + stride * i`: where element `i` of a table at `base` starts;
/// an error where that overflows (a count from a malformed header).
fn element(base: usize, stride: usize, i: usize) -> Result<usize, Error> {
    stride
        .checked_mul(i)
        .and_then(|o| base.checked_add(o))
        .ok_or(Error::Malformed("offset"))
}

/// One function of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Func {
    /// First address.
    pub entry: u64,
    /// First address after it (the next function's entry).
    pub end: u64,
    /// Offset of its `_func` record in the file.
    record: usize,
}

/// One source position of a pc, innermost first when calls were inlined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'d> {
    /// Function name, package-qualified (`main.goLeaf`).
    pub function: &'d str,
    /// Source file; empty when the table does not say.
    pub file: &'d str,
    /// Line; 0 when the table does not say.
    pub line: u32,
}

/// The function table of one Go binary, over its bytes `D` (a slice or a
/// file mapping).
pub struct GoTable<D> {
    data: D,
    image: Image,
    format: Format,
    /// Instruction size quantum (`minLC`): pc deltas are in its units.
    quantum: u64,
    nfunc: usize,
    /// Start of text (1.18+: entries are offsets from it).
    text_start: u64,
    /// File offsets of the sub-tables.
    pclntab: usize,
    pclntab_end: usize,
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// Where `_func` records' offsets count from.
    funcdata_base: usize,
    /// Go 1.12–1.15 file table: number of entries.
    nfiles: usize,
    /// 1.18+: `moduledata.gofunc`, the base of funcdata offsets; `None`
    /// when it was not found (inlined calls are then not expanded).
    gofunc: Option<u64>,
    /// `FUNCDATA_InlTree`: 4 in Go 1.12–1.15, 3 since; `None` before 1.12.
    inline_tree_funcdata: Option<u32>,
    /// The Go release that built the binary, as (1, minor).
    go_version: Option<(u32, u32)>,
}

impl<D: AsRef<[u8]>> GoTable<D> {
    /// Reads the table of the ELF image `data`.
    pub fn new(data: D) -> Result<Self, Error> {
        let image = Image::read(data.as_ref())?;
        let (pclntab, vaddr, len) = image.pclntab;
        let bytes = data.as_ref();
        let pclntab_end = pclntab
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or(Error::Malformed("table beyond the file"))?;
        let header = bytes
            .get(pclntab..pclntab_end)
            .filter(|h| h.len() >= 8 + 8 * 8)
            .ok_or(Error::Malformed("short header"))?;
        let magic = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
        let format = Format::from_magic(magic).ok_or(Error::UnknownFormat(magic))?;
        if header[4] != 0 || header[5] != 0 || !matches!(header[6], 1 | 2 | 4) || header[7] != 8 {
            return Err(Error::Malformed("header (pc quantum or pointer size)"));
        }
        let quantum = u64::from(header[6]);
        let words: Vec<u64> = header[8..8 + 8 * 8]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
            .collect();
        let word = |i: usize| words[i];
        let offset = |i: usize| -> Result<usize, Error> {
            usize::try_from(word(i))
                .ok()
                .filter(|&o| o < len)
                .map(|o| pclntab + o)
                .ok_or(Error::Malformed("sub-table offset"))
        };
        let nfunc = usize::try_from(word(0)).map_err(|_| Error::Malformed("function count"))?;
        let mut table = Self {
            image,
            format,
            quantum,
            nfunc,
            text_start: 0,
            pclntab,
            pclntab_end,
            funcnametab: pclntab,
            cutab: pclntab,
            filetab: pclntab,
            pctab: pclntab,
            functab: pclntab + 8 + 8,
            funcdata_base: pclntab,
            nfiles: 0,
            gofunc: None,
            inline_tree_funcdata: None,
            go_version: None,
            data,
        };
        table.inline_tree_funcdata = match (format, table.go_version) {
            // Before 1.12 the tree had no parent pcs to walk.
            (Format::Go12, Some((1, minor))) if minor < 12 => None,
            (Format::Go12, _) => Some(4),
            _ => Some(3),
        };
        table.go_version = table.image.go_version(table.data.as_ref());
        match format {
            Format::Go12 => {
                // nfunc (entry, record) pairs, then the end of text.
                let functab_end = element(table.functab, 16, nfunc)?
                    .checked_add(8)
                    .ok_or(Error::Malformed("function count"))?;
                let filetab_at = table.u32(functab_end)? as usize;
                table.filetab = pclntab
                    .checked_add(filetab_at)
                    .ok_or(Error::Malformed("file table offset"))?;
                table.nfiles = table.u32(table.filetab)? as usize;
            }
            Format::Go116 | Format::Go118 | Format::Go120 => {
                // Go 1.18 put the text start before the sub-table offsets.
                let first = if format == Format::Go116 { 2 } else { 3 };
                table.funcnametab = offset(first)?;
                table.cutab = offset(first + 1)?;
                table.filetab = offset(first + 2)?;
                table.pctab = offset(first + 3)?;
                table.functab = offset(first + 4)?;
                table.funcdata_base = table.functab;
            }
        }
        if format >= Format::Go118 {
            // A crafted address may wrap: it then matches no module data.
            let funcnametab_vaddr = vaddr.wrapping_add((table.funcnametab - pclntab) as u64);
            let moduledata = table
                .image
                .moduledata(table.data.as_ref(), funcnametab_vaddr);
            let word_of = |m: u64, i: u64| {
                table
                    .image
                    .word_at(table.data.as_ref(), m.checked_add(8 * i)?)
                    .filter(|&w| w != 0)
            };
            // Go 1.26+ leaves the header's text start 0: the runtime's
            // module data has it, or a position-independent binary's
            // relocation, or (internally linked) the .text section.
            table.text_start = match word(2) {
                0 => moduledata
                    .and_then(|m| word_of(m, MODULEDATA_TEXT))
                    .or_else(|| table.image.relative.get(&(vaddr + 24)).copied())
                    .or(table.image.text_section)
                    .ok_or(Error::Malformed("text start"))?,
                start => start,
            };
            table.gofunc = moduledata
                .zip(gofunc_word(format, table.go_version))
                .and_then(|(m, i)| word_of(m, i));
        }
        // The function table and its closing entry must be there.
        table.functab_entry(nfunc)?;
        Ok(table)
    }

    /// The layout the table uses.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// True when the table lists no function.
    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The address range the table covers.
    pub fn text_range(&self) -> Result<(u64, u64), Error> {
        Ok((self.functab_entry(0)?.0, self.functab_entry(self.nfunc)?.0))
    }

    /// Whether inlined calls can be expanded (1.18+ needs the runtime's
    /// module data, found by scanning the data segments).
    pub fn has_inline_trees(&self) -> bool {
        self.inline_tree_funcdata.is_some()
            && (self.format < Format::Go118 || self.gofunc.is_some())
    }

    /// The Go release that built the binary, as (1, minor), from its build
    /// information.
    pub fn go_version(&self) -> Option<(u32, u32)> {
        self.go_version
    }

    /// The `i`th function, in address order.
    pub fn func(&self, i: usize) -> Result<Func, Error> {
        if i >= self.nfunc {
            return Err(Error::Malformed("function index"));
        }
        let (entry, record) = self.functab_entry(i)?;
        let (end, _) = self.functab_entry(i + 1)?;
        let record = self
            .funcdata_base
            .checked_add(record)
            .ok_or(Error::Malformed("function record"))?;
        // The record repeats the entry: a cheap check that the table is whole.
        let own_entry = match self.format {
            Format::Go118 | Format::Go120 => {
                self.text_start.wrapping_add(u64::from(self.u32(record)?))
            }
            Format::Go12 | Format::Go116 => self.u64(record)?,
        };
        if own_entry != entry || end < entry {
            return Err(Error::Malformed("function record does not match its entry"));
        }
        Ok(Func { entry, end, record })
    }

    /// Every function, in address order.
    pub fn functions(&self) -> impl Iterator<Item = Result<Func, Error>> + '_ {
        (0..self.nfunc).map(|i| self.func(i))
    }

    /// The function holding `pc`.
    pub fn find(&self, pc: u64) -> Option<Func> {
        let (first, last) = self.text_range().ok()?;
        if pc < first || pc >= last {
            return None;
        }
        // Largest i with entry(i) <= pc.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.functab_entry(mid).ok()?.0 <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.func(lo).ok()
    }

    /// The function's machine code, as the file holds it.
    pub fn code(&self, f: &Func) -> Option<&[u8]> {
        let len = usize::try_from(f.end - f.entry).ok()?;
        self.image.bytes_at(self.data.as_ref(), f.entry)?.get(..len)
    }

    /// The function's name.
    pub fn name(&self, f: &Func) -> Result<&str, Error> {
        let name_off = self.field(f, 1)?;
        self.function_name(name_off)
    }

    /// Whether a stack begins in `f` (nothing called it: `runtime.goexit`,
    /// `runtime.mstart`, `runtime.rt0_go`).
    pub fn is_top_frame(&self, f: &Func) -> bool {
        self.flag(f) & FLAG_TOPFRAME != 0
            || (self.format <= Format::Go116 && self.name(f).is_ok_and(|n| TOP_FRAMES.contains(&n)))
    }

    /// Whether `f` writes the stack pointer in ways its pc/sp table does not
    /// describe (stack switches: `runtime.systemstack`, `runtime.mcall`,
    /// `runtime.asmcgocall`).
    pub fn writes_sp(&self, f: &Func) -> bool {
        self.flag(f) & FLAG_SPWRITE != 0
    }

    /// The stack-pointer delta of `f` (bytes below the return address's
    /// slot): runs of (first pc, first pc after, delta).
    pub fn sp_deltas(&self, f: &Func) -> PcValues<'_> {
        let table = self.field(f, 4).ok().and_then(|off| self.pc_table(off));
        PcValues::new(table.unwrap_or(&[]), f.entry, self.quantum)
    }

    /// The source positions of `pc`, innermost first: the inlined calls at
    /// `pc`, then the function holding it.
    pub fn frames(&self, pc: u64) -> Result<Vec<Frame<'_>>, Error> {
        let f = self
            .find(pc)
            .ok_or(Error::Malformed("no function holds the address"))?;
        let tree = match self.inline_tree_funcdata {
            Some(index) if self.has_inline_trees() => self.funcdata(&f, index)?,
            _ => None,
        };
        let mut frames = Vec::new();
        let mut at = pc;
        if let Some(tree) = tree {
            while let Some(index) = self.inline_index(&f, at)? {
                if frames.len() >= MAX_INLINE_DEPTH {
                    return Err(Error::Malformed("inlined calls nest too deep"));
                }
                let (name_off, parent_pc) = self.inlined_call(tree, index)?;
                let (file, line) = self.position(&f, at)?;
                frames.push(Frame {
                    function: self.function_name(name_off)?,
                    file,
                    line,
                });
                at = f
                    .entry
                    .checked_add(parent_pc)
                    .filter(|&p| p < f.end)
                    .ok_or(Error::Malformed("inlined call's parent pc"))?;
            }
        }
        let (file, line) = self.position(&f, at)?;
        frames.push(Frame {
            function: self.name(&f)?,
            file,
            line,
        });
        Ok(frames)
    }

    /// File and line of `pc` in `f` (not expanding inlined calls).
    pub fn position(&self, f: &Func, pc: u64) -> Result<(&str, u32), Error> {
        let file = match self.pc_value(f, 5, pc)? {
            Some(index) if index >= 0 => self.file_name(f, index as u32)?,
            _ => "",
        };
        let line = self
            .pc_value(f, 6, pc)?
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(0);
        Ok((file, line))
    }

    // --- records ---

    /// Entry address and record offset of functab entry `i` (`i == nfunc`:
    /// the closing entry, whose address is the end of text).
    fn functab_entry(&self, i: usize) -> Result<(u64, usize), Error> {
        match self.format {
            Format::Go118 | Format::Go120 => {
                let at = element(self.functab, 8, i)?;
                let entry = self.text_start.wrapping_add(u64::from(self.u32(at)?));
                let record = if i == self.nfunc {
                    0
                } else {
                    self.u32(at + 4)?
                };
                Ok((entry, record as usize))
            }
            Format::Go12 | Format::Go116 => {
                let at = element(self.functab, 16, i)?;
                let entry = self.u64(at)?;
                let record = if i == self.nfunc {
                    0
                } else {
                    self.u64(at + 8)?
                };
                Ok((
                    entry,
                    usize::try_from(record).map_err(|_| Error::Malformed("record offset"))?,
                ))
            }
        }
    }

    /// Size of the fixed part of a `_func` record.
    fn record_size(&self) -> usize {
        match self.format {
            Format::Go12 => 8 + 7 * 4 + 4,
            Format::Go116 => 8 + 8 * 4 + 4,
            Format::Go118 => 4 + 8 * 4 + 4,
            Format::Go120 => 4 + 9 * 4 + 4,
        }
    }

    /// 32-bit field `n` of the record (1 name, 4 pcsp, 5 pcfile, 6 pcln,
    /// 7 npcdata, 8 cuOffset).
    fn field(&self, f: &Func, n: usize) -> Result<u32, Error> {
        let first = if self.format >= Format::Go118 { 4 } else { 8 };
        self.u32(f.record + first + (n - 1) * 4)
    }

    fn flag(&self, f: &Func) -> u8 {
        if self.format == Format::Go12 {
            return 0;
        }
        self.byte(f.record + self.record_size() - 3).unwrap_or(0)
    }

    /// A pc table by its offset (0: none).
    fn pc_table(&self, offset: u32) -> Option<&[u8]> {
        if offset == 0 {
            return None;
        }
        let start = self.pctab.checked_add(offset as usize)?;
        self.data.as_ref().get(start..self.pclntab_end)
    }

    /// The value of pc table `field` (4, 5, 6) at `pc`; `None` without a table.
    fn pc_value(&self, f: &Func, field: usize, pc: u64) -> Result<Option<i32>, Error> {
        let Some(table) = self.pc_table(self.field(f, field)?) else {
            return Ok(None);
        };
        PcValues::new(table, f.entry, self.quantum).value_at(pc)
    }

    fn pcdata_value(&self, f: &Func, index: u32, pc: u64) -> Result<Option<i32>, Error> {
        if index >= self.field(f, 7)? {
            return Ok(None);
        }
        let offset = self.u32(f.record + self.record_size() + 4 * index as usize)?;
        let Some(table) = self.pc_table(offset) else {
            return Ok(None);
        };
        PcValues::new(table, f.entry, self.quantum).value_at(pc)
    }

    fn inline_index(&self, f: &Func, pc: u64) -> Result<Option<u32>, Error> {
        Ok(self
            .pcdata_value(f, PCDATA_INL_TREE_INDEX, pc)?
            .and_then(|i| u32::try_from(i).ok()))
    }

    /// The address of funcdata `index` of `f`; `None` when it has none.
    fn funcdata(&self, f: &Func, index: u32) -> Result<Option<u64>, Error> {
        let nfuncdata = self.byte(f.record + self.record_size() - 1)?;
        if index >= u32::from(nfuncdata) {
            return Ok(None);
        }
        let npcdata = self.field(f, 7)? as usize;
        let start = f.record + self.record_size() + 4 * npcdata;
        if self.format >= Format::Go118 {
            let offset = self.u32(start + 4 * index as usize)?;
            return Ok((offset != u32::MAX)
                .then(|| self.gofunc.and_then(|g| g.checked_add(u64::from(offset))))
                .flatten());
        }
        // Pointers, aligned to 8 in the loaded image.
        let vaddr_of = |at: usize| {
            self.image
                .pclntab
                .1
                .wrapping_add((at - self.pclntab) as u64)
        };
        let start = if vaddr_of(start) % 8 != 0 {
            start + 4
        } else {
            start
        };
        let pointer = self.u64(start + 8 * index as usize)?;
        Ok((pointer != 0).then_some(pointer))
    }

    /// (name offset, parent pc offset) of inline-tree entry `index`.
    fn inlined_call(&self, tree: u64, index: u32) -> Result<(u32, u64), Error> {
        let (size, name_at, parent_pc_at) = match self.format {
            Format::Go120 => (16, 4, 8),
            _ => (20, 12, 16),
        };
        let at = tree
            .checked_add(u64::from(index) * size)
            .ok_or(Error::Malformed("inline tree"))?;
        let entry = self
            .image
            .bytes_at(self.data.as_ref(), at)
            .and_then(|b| b.get(..size as usize))
            .ok_or(Error::Malformed("inline tree outside the file"))?;
        let u32_at = |o: usize| u32::from_le_bytes(entry[o..o + 4].try_into().unwrap_or_default());
        Ok((u32_at(name_at), u64::from(u32_at(parent_pc_at))))
    }

    // --- strings ---

    fn function_name(&self, offset: u32) -> Result<&str, Error> {
        let base = if self.format == Format::Go12 {
            self.pclntab
        } else {
            self.funcnametab
        };
        self.string(base, offset)
    }

    fn file_name(&self, f: &Func, index: u32) -> Result<&str, Error> {
        if self.format == Format::Go12 {
            if index as usize >= self.nfiles {
                return Err(Error::Malformed("file index"));
            }
            let offset = self.u32(self.filetab + 4 * index as usize)?;
            return self.string(self.pclntab, offset);
        }
        let cu = self.field(f, 8)?;
        let at = cu
            .checked_add(index)
            .ok_or(Error::Malformed("file index"))? as usize;
        match self.u32(self.cutab + 4 * at)? {
            u32::MAX => Ok(""),
            offset => self.string(self.filetab, offset),
        }
    }

    /// The NUL-terminated string at `base + offset`, within the table.
    fn string(&self, base: usize, offset: u32) -> Result<&str, Error> {
        let start = base
            .checked_add(offset as usize)
            .ok_or(Error::Malformed("string offset"))?;
        let bytes = self
            .data
            .as_ref()
            .get(start..self.pclntab_end)
            .ok_or(Error::Malformed("string offset"))?;
        let len = bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::Malformed("unterminated string"))?;
        std::str::from_utf8(&bytes[..len]).map_err(|_| Error::Malformed("string is not UTF-8"))
    }

    // --- integers ---

    fn bytes(&self, at: usize, n: usize) -> Result<&[u8], Error> {
        let end = at.checked_add(n).ok_or(Error::Malformed("offset"))?;
        if at < self.pclntab || end > self.pclntab_end {
            return Err(Error::Malformed("read outside the table"));
        }
        self.data
            .as_ref()
            .get(at..end)
            .ok_or(Error::Malformed("read outside the file"))
    }

    fn byte(&self, at: usize) -> Result<u8, Error> {
        Ok(self.bytes(at, 1)?[0])
    }

    fn u32(&self, at: usize) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(
            self.bytes(at, 4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&self, at: usize) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(
            self.bytes(at, 8)?.try_into().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests;
