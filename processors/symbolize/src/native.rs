//! Native frames: ELF symbol tables and DWARF lines with inlined functions
//! (addr2line), from the process's own file or a separate debug file found
//! by build id or `.gnu_debuglink`; Go code without DWARF (stripped Go
//! binaries) from Go's own function table, inlined calls included.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_gopclntab::GoTable;
use agent_object_files::{read_elf, ElfInfo, FoundObject};

use crate::dwarf::{DwarfUnits, MappedFile, Sections};
use crate::symbols::SymbolTable;
pub use agent_object_files::{DebugSource, ObjectLocator as Locator, ObjectRef};

use crate::demangle::demangle;

/// One source position of a frame; a native address yields one per inlined
/// function, innermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Demangled name; empty when unknown.
    pub name: Arc<str>,
    /// Name as the object file has it (mangled).
    pub system_name: Arc<str>,
    /// Source file; empty when unknown.
    pub file: Arc<str>,
    /// Line; 0 when unknown.
    pub line: u32,
    /// Column; 0 when unknown.
    pub column: u32,
}

/// The frames of one address, innermost first; empty when nothing is known.
pub type Frames = Arc<[Frame]>;

/// Why an object file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Neither the file nor debug information for it was found.
    #[error("{0}: not found (process gone, file replaced, or no debug file)")]
    NotFound(String),
    /// The file is not an ELF file addr2line can read.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Opens object files as [`ObjectSymbolizer`]s, with the best debug
/// information found for them.
pub trait OpenSymbolizer {
    /// Opens the object `obj` names.
    fn open(&self, obj: &ObjectRef<'_>) -> Result<ObjectSymbolizer, OpenError>;
    /// Opens the file at `path` on this host, trusted as it is (tools,
    /// benchmarks).
    fn open_file(&self, path: &Path) -> Result<ObjectSymbolizer, OpenError>;
}

impl OpenSymbolizer for Locator {
    fn open(&self, obj: &ObjectRef<'_>) -> Result<ObjectSymbolizer, OpenError> {
        open_with(self, obj, self.open_binary(obj))
    }

    fn open_file(&self, path: &Path) -> Result<ObjectSymbolizer, OpenError> {
        let shown = path.to_string_lossy();
        let file = File::open(path).map_err(|_| OpenError::NotFound(shown.to_string()))?;
        let info = read_elf(&file).map_err(|reason| OpenError::Invalid {
            path: shown.to_string(),
            reason,
        })?;
        let obj = ObjectRef {
            path: &shown,
            build_id: None,
            pids: &[],
            range: (0, 0),
        };
        let binary = FoundObject {
            file,
            info,
            pid: None,
        };
        open_with(self, &obj, Some(binary))
    }
}

fn open_with(
    locator: &Locator,
    obj: &ObjectRef<'_>,
    binary: Option<FoundObject>,
) -> Result<ObjectSymbolizer, OpenError> {
    let build_id = obj
        .build_id
        .map(str::to_owned)
        .or_else(|| binary.as_ref().and_then(|b| b.info.build_id.clone()));
    let debug = match &binary {
        Some(b) if b.info.has_dwarf => None,
        _ => locator.find_debug_file(obj, build_id.as_deref(), binary.as_ref()),
    };
    // Addresses are translated with the binary's segments; a debug file
    // keeps the same program headers when the binary is not at hand.
    let (file, source, info) = match (&debug, &binary) {
        (Some(d), Some(b)) => (&d.file, d.source, &b.info),
        (Some(d), None) => (&d.file, d.source, &d.info),
        (None, Some(b)) => (&b.file, DebugSource::Itself, &b.info),
        (None, None) => return Err(OpenError::NotFound(obj.path.to_owned())),
    };
    let invalid = |reason: String| OpenError::Invalid {
        path: obj.path.to_owned(),
        reason,
    };
    let (symbolizer, kept) = agent_heap_meter::measure(|| {
        let mapped = MappedFile::open(file).map_err(invalid)?;
        object::File::parse(mapped.data()).map_err(|e| invalid(e.to_string()))?;
        let go_file = match &binary {
            Some(b) if std::ptr::eq(file, &b.file) => Some(mapped.clone()),
            Some(b) => MappedFile::open(&b.file).ok(),
            None => None,
        };
        let go = go_file.as_ref().and_then(go_table);
        let go_file = go_file.filter(|f| go.is_some() && !Arc::ptr_eq(f, &mapped));
        Ok(ObjectSymbolizer {
            parsed: None,
            file: mapped,
            go,
            go_file,
            info: info.clone(),
            source,
            memo: HashMap::new(),
            names: Names::default(),
            kept: 0,
        })
    });
    let mut symbolizer: ObjectSymbolizer = symbolizer?;
    symbolizer.kept = kept;
    Ok(symbolizer)
}

/// A file's bytes, shared by the readers of one object.
struct FileBytes(Arc<MappedFile>);

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.data()
    }
}

/// Go's function table of a binary, when it is a Go binary.
fn go_table(file: &Arc<MappedFile>) -> Option<GoTable<FileBytes>> {
    GoTable::new(FileBytes(file.clone())).ok()
}

/// Most addresses remembered per object; the memo is cleared when full.
const MEMO_LIMIT: usize = 1 << 17;
/// Most names and file paths remembered per object; cleared when full.
const NAMES_LIMIT: usize = 1 << 17;

/// Names and paths of one object, each demangled and allocated once: inlined
/// library functions and their headers repeat across many addresses.
#[derive(Default)]
struct Names {
    /// raw name -> demangled name.
    demangled: HashMap<Arc<str>, Arc<str>>,
    files: std::collections::HashSet<Arc<str>>,
}

impl Names {
    /// (demangled, raw) for a raw symbol name.
    fn function(&mut self, raw: &str) -> (Arc<str>, Arc<str>) {
        if let Some((raw, name)) = self.demangled.get_key_value(raw) {
            return (name.clone(), raw.clone());
        }
        if self.demangled.len() >= NAMES_LIMIT {
            self.demangled.clear();
        }
        let name: Arc<str> = demangle(raw).into();
        let raw: Arc<str> = raw.into();
        self.demangled.insert(raw.clone(), name.clone());
        (name, raw)
    }

    fn file(&mut self, path: &str) -> Arc<str> {
        if let Some(path) = self.files.get(path) {
            return path.clone();
        }
        if self.files.len() >= NAMES_LIMIT {
            self.files.clear();
        }
        let path: Arc<str> = path.into();
        self.files.insert(path.clone());
        path
    }
}

/// What an object keeps parsed between lookups (its DWARF sections
/// decompressed too), dropped when memory is short and parsed again on the
/// next address not remembered.
struct Parsed {
    dwarf: Option<DwarfUnits>,
    symbols: SymbolTable,
}

impl Parsed {
    fn new(file: &Arc<MappedFile>) -> Self {
        let symbols = SymbolTable::read(file.data());
        let dwarf = Sections::load(file.clone())
            .ok()
            .and_then(|s| DwarfUnits::new(Arc::new(s)));
        Self { dwarf, symbols }
    }

    /// The name of the symbol holding `vaddr`.
    fn symbol<'a>(&self, file: &'a MappedFile, vaddr: u64) -> Option<&'a str> {
        self.symbols.name(file.data(), vaddr)
    }
}

/// Symbolizes addresses of one object file, within the memory it is given:
/// results are remembered per address; the parsed state behind them is
/// dropped when memory is short and rebuilt on demand.
pub struct ObjectSymbolizer {
    parsed: Option<Parsed>,
    /// Go's function table: names Go code DWARF does not cover.
    go: Option<GoTable<FileBytes>>,
    /// The binary Go's table is read from, when not `file`.
    go_file: Option<Arc<MappedFile>>,
    /// The file DWARF and symbols are read from.
    file: Arc<MappedFile>,
    info: ElfInfo,
    source: DebugSource,
    memo: HashMap<u64, Frames>,
    names: Names,
    /// Heap this object keeps, measured (see [`agent_heap_meter`]).
    kept: i64,
}

/// What an object symbolizer keeps, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Heap: parsed DWARF and symbols, remembered frames and names.
    pub heap: usize,
    /// Anonymous pages holding the DWARF units being read.
    pub units: usize,
}

impl Footprint {
    /// Everything.
    pub fn total(&self) -> usize {
        self.heap + self.units
    }
}

impl ObjectSymbolizer {
    /// Where the debug information came from.
    pub fn debug_source(&self) -> DebugSource {
        self.source
    }

    /// Forgets the addresses symbolized so far (keeps the parsed file).
    pub fn clear_memo(&mut self) {
        self.shed(Shed::Memo);
    }

    /// The ELF virtual address of a file offset (what symbol tables and
    /// DWARF speak), through the PT_LOAD segment holding it.
    pub fn virtual_address(&self, file_offset: u64) -> Option<u64> {
        self.info.virtual_address(file_offset)
    }

    /// Memory this object holds.
    pub fn footprint(&self) -> Footprint {
        let units = self
            .parsed
            .as_ref()
            .and_then(|p| p.dwarf.as_ref())
            .map_or(0, |d| d.resident_bytes());
        Footprint {
            heap: self.kept.max(0) as usize,
            units,
        }
    }

    /// Ends a batch's work: drops the file's pages from resident memory
    /// (see [`MappedFile::release_pages`]) and a `.debug_info` decompressed
    /// for the batch.
    pub fn release_pages(&mut self) {
        self.file.release_pages();
        if let Some(go) = &self.go_file {
            go.release_pages();
        }
        let ((), freed) = agent_heap_meter::measure(|| {
            if let Some(d) = self.parsed.as_mut().and_then(|p| p.dwarf.as_mut()) {
                d.release_info();
            }
        });
        self.kept += freed;
    }

    /// Drops what `what` names, counting the memory it frees.
    pub fn shed(&mut self, what: Shed) {
        let ((), freed) = agent_heap_meter::measure(|| match what {
            Shed::Units => {
                if let Some(d) = self.parsed.as_mut().and_then(|p| p.dwarf.as_mut()) {
                    d.drop_views();
                }
            }
            Shed::Parsed => self.parsed = None,
            Shed::Memo => {
                self.memo = HashMap::new();
                self.names = Names::default();
            }
        });
        self.kept += freed;
    }

    /// The frames of the code at `vaddr`, innermost first: DWARF where it
    /// covers the address, the symbol table for the outermost name otherwise.
    /// `units_budget` bounds the DWARF units kept read between lookups.
    pub fn symbolize(&mut self, vaddr: u64) -> Frames {
        self.symbolize_within(vaddr, usize::MAX)
    }

    /// [`Self::symbolize`], keeping at most `units_budget` bytes of DWARF
    /// units read between lookups.
    pub fn symbolize_within(&mut self, vaddr: u64, units_budget: usize) -> Frames {
        if let Some(frames) = self.memo.get(&vaddr) {
            return frames.clone();
        }
        let (frames, kept) = agent_heap_meter::measure(|| {
            let frames: Frames = self.lookup(vaddr, units_budget).into();
            if self.memo.len() >= MEMO_LIMIT {
                self.memo.clear();
            }
            self.memo.insert(vaddr, frames.clone());
            frames
        });
        self.kept += kept;
        frames
    }

    fn lookup(&mut self, vaddr: u64, units_budget: usize) -> Vec<Frame> {
        // No instruction starts at the last byte of the address space, and
        // addr2line probes [vaddr, vaddr + 1): an overflow (found by fuzzing).
        if vaddr == u64::MAX {
            return Vec::new();
        }
        if self.parsed.is_none() {
            self.parsed = Some(Parsed::new(&self.file));
        }
        let parsed = self.parsed.as_mut().expect("just parsed");
        let names = &mut self.names;
        let empty: Arc<str> = Arc::from("");
        let mut frames = Vec::new();
        if let Some(dwarf) = parsed.dwarf.as_mut() {
            dwarf.with_frames(vaddr, units_budget, |iter| {
                let Some(mut iter) = iter else { return };
                while let Ok(Some(frame)) = iter.next() {
                    let raw = frame.function.as_ref().and_then(|f| f.raw_name().ok());
                    let (name, system_name) = match raw {
                        Some(raw) => names.function(&raw),
                        None => (empty.clone(), empty.clone()),
                    };
                    let location = frame.location.as_ref();
                    frames.push(Frame {
                        name,
                        system_name,
                        file: location
                            .and_then(|l| l.file)
                            .map_or_else(|| empty.clone(), |f| names.file(f)),
                        line: location.and_then(|l| l.line).unwrap_or(0),
                        column: location.and_then(|l| l.column).unwrap_or(0),
                    });
                }
            });
        }
        if frames.last().is_none_or(|f| f.name.is_empty()) {
            if let Some(go) = go_frames(self.go.as_ref(), vaddr, names) {
                return go;
            }
            if let Some(symbol) = parsed.symbol(&self.file, vaddr) {
                let (name, system_name) = names.function(symbol);
                match frames.last_mut() {
                    Some(last) => {
                        last.name = name;
                        last.system_name = system_name;
                    }
                    None => frames.push(Frame {
                        name,
                        system_name,
                        file: empty,
                        line: 0,
                        column: 0,
                    }),
                }
            }
        }
        frames
    }
}

/// What an object symbolizer can give back when memory is short, cheapest
/// to rebuild first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// The DWARF units read for past lookups.
    Units,
    /// The symbol table and DWARF index (parsed again on the next new address).
    Parsed,
    /// The frames remembered per address, and names.
    Memo,
}

/// The frames of Go code at `vaddr` from Go's function table, inlined calls
/// first; `None` outside Go code. A damaged inline tree still names the
/// function.
fn go_frames(go: Option<&GoTable<FileBytes>>, vaddr: u64, names: &mut Names) -> Option<Vec<Frame>> {
    let go = go?;
    let frames = match go.frames(vaddr) {
        Ok(frames) => frames,
        Err(_) => {
            let f = go.find(vaddr)?;
            let (file, line) = go.position(&f, vaddr).unwrap_or(("", 0));
            let function = go.name(&f).ok()?;
            vec![agent_gopclntab::Frame {
                function,
                file,
                line,
            }]
        }
    };
    Some(
        frames
            .into_iter()
            .map(|f| {
                let (name, system_name) = names.function(f.function);
                Frame {
                    name,
                    system_name,
                    file: names.file(f.file),
                    line: f.line,
                    column: 0,
                }
            })
            .collect(),
    )
}

/// Which open object file to close when the pool is full.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Eviction {
    /// Least recently used.
    #[default]
    Lru,
    /// Least frequently used (ties: least recently used).
    Lfu,
}

enum Slot {
    Open {
        symbolizer: Box<ObjectSymbolizer>,
        last_used: u64,
        uses: u64,
    },
    Missing {
        retry_at: Instant,
    },
}

/// A file that was not found is looked for again after this long.
const RETRY_MISSING_AFTER: Duration = Duration::from_secs(60);

/// Counts of what the pool did, read by the processor's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Object files opened.
    pub opened: u64,
    /// Object files that could not be found or read.
    pub failed: u64,
    /// Open object files closed to stay within the pool size or memory limit.
    pub evicted: u64,
    /// Times something was dropped to stay within the memory limit (read
    /// units, parsed tables, remembered frames, whole files).
    pub shed: u64,
}

/// Open object files by key (build id, or pid and path), bounded in number
/// and in the memory they hold.
pub struct ObjectPool {
    locator: Locator,
    capacity: usize,
    eviction: Eviction,
    memory_limit: usize,
    slots: HashMap<String, Slot>,
    clock: u64,
    /// What happened so far.
    pub stats: PoolStats,
}

impl ObjectPool {
    /// A pool keeping at most `capacity` files open (0: no limit), with no
    /// memory limit until [`Self::with_memory_limit`] sets one.
    pub fn new(locator: Locator, capacity: usize, eviction: Eviction) -> Self {
        Self {
            locator,
            capacity,
            eviction,
            memory_limit: usize::MAX,
            slots: HashMap::new(),
            clock: 0,
            stats: PoolStats::default(),
        }
    }

    /// Holds what open files keep to `bytes`.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// DWARF units read for one object's lookups are kept within this share
    /// of the limit (they serve only addresses not yet remembered); what is
    /// left holds indexes, symbol tables and remembered frames.
    pub fn units_budget(&self) -> usize {
        self.memory_limit / 8
    }

    /// The symbolizer of `obj`, opening it on first use.
    pub fn get(&mut self, key: &str, obj: &ObjectRef<'_>) -> Option<&mut ObjectSymbolizer> {
        self.clock += 1;
        let reopen = match self.slots.get(key) {
            None => true,
            Some(Slot::Missing { retry_at }) => Instant::now() >= *retry_at,
            Some(Slot::Open { .. }) => false,
        };
        if reopen {
            let slot = match self.locator.open(obj) {
                Ok(symbolizer) => {
                    self.stats.opened += 1;
                    self.make_room();
                    Slot::Open {
                        symbolizer: Box::new(symbolizer),
                        last_used: self.clock,
                        uses: 0,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "object file not symbolized");
                    self.stats.failed += 1;
                    Slot::Missing {
                        retry_at: Instant::now() + RETRY_MISSING_AFTER,
                    }
                }
            };
            self.slots.insert(key.to_owned(), slot);
        }
        match self.slots.get_mut(key)? {
            Slot::Open {
                symbolizer,
                last_used,
                uses,
            } => {
                *last_used = self.clock;
                *uses += 1;
                Some(symbolizer)
            }
            Slot::Missing { .. } => None,
        }
    }

    fn open_files(&self) -> impl Iterator<Item = (&String, &ObjectSymbolizer, u64, u64)> {
        self.slots.iter().filter_map(|(key, slot)| match slot {
            Slot::Open {
                symbolizer,
                last_used,
                uses,
            } => Some((key, &**symbolizer, *last_used, *uses)),
            Slot::Missing { .. } => None,
        })
    }

    /// Open files, the one to give up first first.
    fn by_eviction_order(&self) -> Vec<String> {
        let mut files: Vec<(&String, u64, u64)> = self
            .open_files()
            .map(|(key, _, last_used, uses)| (key, last_used, uses))
            .collect();
        files.sort_by_key(|&(_, last_used, uses)| match self.eviction {
            Eviction::Lru => (last_used, 0),
            Eviction::Lfu => (uses, last_used),
        });
        files.into_iter().map(|(key, _, _)| key.clone()).collect()
    }

    fn make_room(&mut self) {
        if self.capacity == 0 || self.open_count() < self.capacity {
            return;
        }
        if let Some(key) = self.by_eviction_order().into_iter().next() {
            self.slots.remove(&key);
            self.stats.evicted += 1;
        }
    }

    /// Memory the open files hold, in bytes.
    pub fn memory(&self) -> usize {
        self.open_files()
            .map(|(_, s, _, _)| s.footprint().total())
            .sum()
    }

    /// Ends a batch's work on the file under `key`: its pages leave resident
    /// memory, and files give back what they hold, in eviction order and
    /// cheapest first, until the pool is within its memory limit.
    pub fn settle(&mut self, key: &str) {
        if let Some(Slot::Open { symbolizer, .. }) = self.slots.get_mut(key) {
            symbolizer.release_pages();
        }
        if self.memory() <= self.memory_limit {
            return;
        }
        let order = self.by_eviction_order();
        for what in [Shed::Units, Shed::Parsed, Shed::Memo] {
            for key in &order {
                if let Some(Slot::Open { symbolizer, .. }) = self.slots.get_mut(key) {
                    if symbolizer.footprint().total() == 0 {
                        continue;
                    }
                    symbolizer.shed(what);
                    self.stats.shed += 1;
                }
                if self.memory() <= self.memory_limit {
                    return;
                }
            }
        }
        // Only what an open file holds without any use left: close them.
        for key in order {
            if self.memory() <= self.memory_limit {
                return;
            }
            self.slots.remove(&key);
            self.stats.evicted += 1;
        }
    }

    /// Closes every file (caching off: files are re-read every window).
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    /// Object files open now.
    pub fn open_count(&self) -> usize {
        self.open_files().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// This machine's binaries, each with its GNU build id.
    fn binaries() -> Vec<(String, String)> {
        ["/bin/ls", "/bin/cat", "/bin/true"]
            .iter()
            .map(|path| {
                let info = read_elf(&File::open(path).unwrap()).unwrap();
                (
                    path.to_string(),
                    info.build_id.expect("distribution binaries have build ids"),
                )
            })
            .collect()
    }

    fn pool(eviction: Eviction) -> ObjectPool {
        let locator = Locator {
            proc_root: PathBuf::from("/proc"),
            debug_dirs: vec![],
        };
        ObjectPool::new(locator, 2, eviction)
    }

    /// Opens binary `i` through the pool; true when it had to be opened.
    fn touch(pool: &mut ObjectPool, binaries: &[(String, String)], i: usize) -> bool {
        let (path, id) = &binaries[i];
        let opened = pool.stats.opened;
        let obj = ObjectRef {
            path,
            build_id: Some(id),
            pids: &[],
            range: (0, 0),
        };
        assert!(pool.get(id, &obj).is_some(), "{path}");
        pool.stats.opened > opened
    }

    #[test]
    fn a_full_pool_closes_the_least_recently_used_file() {
        let b = binaries();
        let mut pool = pool(Eviction::Lru);
        assert!(touch(&mut pool, &b, 0));
        assert!(touch(&mut pool, &b, 1));
        assert!(!touch(&mut pool, &b, 0), "still open");
        assert!(touch(&mut pool, &b, 2), "evicts 1, used longest ago");
        assert_eq!((pool.open_count(), pool.stats.evicted), (2, 1));
        assert!(!touch(&mut pool, &b, 0));
        assert!(touch(&mut pool, &b, 1), "1 was closed");
    }

    #[test]
    fn a_full_lfu_pool_closes_the_least_used_file() {
        let b = binaries();
        let mut pool = pool(Eviction::Lfu);
        assert!(touch(&mut pool, &b, 0));
        assert!(!touch(&mut pool, &b, 0));
        assert!(!touch(&mut pool, &b, 0));
        assert!(touch(&mut pool, &b, 1));
        assert!(!touch(&mut pool, &b, 1));
        assert!(
            touch(&mut pool, &b, 2),
            "evicts 1: fewer uses, though more recent"
        );
        assert!(!touch(&mut pool, &b, 0));
        assert!(touch(&mut pool, &b, 1));
        assert_eq!(pool.stats.evicted, 2);
    }

    #[test]
    fn a_file_whose_build_id_differs_is_not_used() {
        let b = binaries();
        let mut pool = pool(Eviction::Lru);
        let obj = ObjectRef {
            path: &b[0].0,
            build_id: Some(&b[1].1),
            pids: &[],
            range: (0, 0),
        };
        assert!(pool.get("k", &obj).is_none());
        assert_eq!(pool.stats.failed, 1);
    }
}
