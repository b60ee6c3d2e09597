//! The unwinder's tables in BPF maps: one array of rows per executable
//! (deduplicated by build id across processes and containers), filled
//! through mmap, inside a memory budget with least-recently-used eviction,
//! and per process the sorted list of its executable mappings.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use agent_unwind_table::{LoadSegment, UnwindRow, UnwindTable, UnwindTableError};
use aya::maps::{IterableMap, MapData};
use tracing::{debug, warn};

use crate::bpf::{
    DeferredSample, ProcessUnwindInfo, UnwindMapping, UnwindMaps, UnwindMode, UserStack,
    FENCES_PER_BLOCK, MAX_FENCE_BLOCKS, MAX_UNWIND_MAPPINGS, ROWS_PER_BLOCK, TABLE_ANONYMOUS,
    TABLE_NONE, TABLE_PENDING, UNWIND_BLOCK_BYTES,
};
use crate::compiler::{Compiled, Compiler, ObjectSource, Outcome};
use crate::deferred::{self, InterpRuns, Registers, RowSource, StackCopy};
use crate::process::{ExecutableMapping, ProcessInfo};
use crate::runtimes::Runtime;

/// Inner maps may differ in size from the template (kernel 5.10+).
const BPF_F_INNER_MAP: u32 = 1 << 12;
/// Arrays user space fills with one memcpy.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Which object a table belongs to: its build id, or the file when it has none.
pub type ObjectKey = String;

/// Objects queued to be compiled at most (each holds its file open).
const MAX_COMPILING: usize = 256;

/// Key of the vDSO's table: every process has the same kernel's vDSO.
pub const VDSO_KEY: &str = "[vdso]";

/// A table in the kernel.
struct LoadedTable {
    rows: u32,
    bytes: u64,
    /// Window in which a process using it was last sampled.
    last_used: u64,
    /// Keeps the inner map alive; dropping it frees the kernel memory once
    /// the outer map lets go too. Read a block at a time by deferred walks.
    map: MapData,
}

/// What happened to tables, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Tables compiled and loaded.
    pub loaded: u64,
    /// Tables evicted to stay in the budget.
    pub evicted: u64,
    /// Objects whose table could not be built (no CFI, not x86_64, unreadable).
    pub failed: u64,
    /// Tables that did not fit even after eviction.
    pub over_budget: u64,
    /// Rows whose rules the unwinder cannot follow.
    pub unsupported_rows: u64,
    /// Processes with more executable mappings than the unwinder holds.
    pub mappings_dropped: u64,
}

/// The unwinder's user-space side.
pub struct UnwindTables {
    maps: UnwindMaps,
    /// Stable id per object: a process entry never points at another object's table.
    ids: HashMap<ObjectKey, u32>,
    next_id: u32,
    loaded: HashMap<u32, LoadedTable>,
    /// Objects that have no table, and why (not retried).
    unusable: HashMap<ObjectKey, String>,
    /// Per process: the objects its mappings use.
    process_objects: HashMap<u32, Vec<ObjectKey>>,
    /// Load segments per object, kept after eviction (small) for the bias.
    segments: HashMap<ObjectKey, Vec<LoadSegment>>,
    budget_bytes: u64,
    used_bytes: u64,
    window: u64,
    vdso: Option<Vec<u8>>,
    /// False in frame-pointer mode: mappings only, no tables.
    load_tables: bool,
    /// Compiles tables off the event thread (none in frame-pointer mode).
    compiler: Option<Compiler>,
    /// Objects being compiled, and the processes whose entries wait for them.
    compiling: HashMap<ObjectKey, HashSet<u32>>,
    /// Objects whose table could not be read, fit in the budget or be
    /// loaded in this window, or that found the compiler's queue full:
    /// tried again in the next window, not as their processes are updated
    /// (which follows every compile: that would compile on and on).
    retry_next_window: HashSet<ObjectKey>,
    /// Totals since start.
    pub counts: TableCounts,
}

impl UnwindTables {
    /// Manages `maps` within `budget_bytes` of table memory; without
    /// `load_tables` only the mappings are written (frame-pointer mode).
    pub fn new(maps: UnwindMaps, budget_bytes: u64, load_tables: bool) -> std::io::Result<Self> {
        let compiler = if load_tables {
            Some(Compiler::start()?)
        } else {
            None
        };
        Ok(Self {
            maps,
            ids: HashMap::new(),
            next_id: 1,
            loaded: HashMap::new(),
            unusable: HashMap::new(),
            process_objects: HashMap::new(),
            segments: HashMap::new(),
            budget_bytes,
            used_bytes: 0,
            window: 0,
            vdso: own_vdso(),
            load_tables,
            compiler,
            compiling: HashMap::new(),
            retry_next_window: HashSet::new(),
            counts: TableCounts::default(),
        })
    }

    /// Bytes of rows in the kernel now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Tables in the kernel now.
    pub fn loaded_tables(&self) -> usize {
        self.loaded.len()
    }

    /// Starts a new window (for least-recently-used eviction).
    pub fn next_window(&mut self) {
        self.window += 1;
        self.retry_next_window.clear();
    }

    /// Writes `pid`'s mappings, with the tables they need that are not
    /// loaded yet marked [`TABLE_PENDING`] and sent to be compiled; once
    /// they are, [`Self::load_compiled`] names the processes to update again.
    pub fn update_process(&mut self, pid: u32, info: &ProcessInfo, proc_dir: &Path) {
        let keys: Vec<Option<ObjectKey>> = info
            .mappings
            .iter()
            .map(|m| object_key(m).filter(|_| self.load_tables))
            .collect();
        // Touched first: making room for a new table in this window never
        // evicts one a sampled process uses.
        for (m, key) in info.mappings.iter().zip(&keys) {
            let Some(key) = key else { continue };
            if self.touch(key)
                || self.unusable.contains_key(key)
                || self.retry_next_window.contains(key)
            {
                continue;
            }
            if !self.compiling.contains_key(key) {
                if self.compiling.len() >= MAX_COMPILING {
                    self.retry_next_window.insert(key.clone());
                    continue;
                }
                if !self.request(key, m, proc_dir) {
                    continue;
                }
            }
            self.compiling.entry(key.clone()).or_default().insert(pid);
        }
        // The walker then knows the process — its interpreter, so deferred
        // walks carry its frames — and defers walks into code whose table
        // is on its way instead of guessing with frame pointers.
        let old = self.maps.processes.get(&pid, 0).ok();
        self.write_entry(pid, info, keys, old.as_ref());
    }

    /// Sends `key`'s object, mapped at `m`, to be compiled; false when it
    /// cannot be opened (the process went away, or the file: another
    /// process mapping the object may still provide it, so no verdict).
    fn request(&mut self, key: &ObjectKey, m: &ExecutableMapping, proc_dir: &Path) -> bool {
        let Some(compiler) = &self.compiler else {
            return false;
        };
        match ObjectSource::open(key, m, proc_dir, self.vdso.as_deref()) {
            Ok(source) => {
                compiler.request(key.clone(), source);
                true
            }
            Err(error) => {
                debug!(object = %key, %error, "cannot open an object for its unwind table");
                false
            }
        }
    }

    /// Readable when compiled tables are ready for [`Self::load_compiled`].
    pub fn compiled_fd(&self) -> Option<std::os::fd::RawFd> {
        self.compiler.as_ref().map(Compiler::ready_fd)
    }

    /// Whether a table `info`'s mappings use is being compiled.
    pub fn awaits_tables(&self, info: &ProcessInfo) -> bool {
        !self.compiling.is_empty()
            && info
                .mappings
                .iter()
                .filter_map(object_key)
                .any(|key| self.compiling.contains_key(&key))
    }

    /// Loads the tables compiled since the last call into the kernel (one
    /// registering write for all); the processes that waited for them,
    /// whose entries are to be written again with [`Self::update_process`].
    pub fn load_compiled(&mut self) -> HashSet<u32> {
        let Some(compiled) = self.compiler.as_ref().map(Compiler::take) else {
            return HashSet::new();
        };
        let mut waited = HashSet::new();
        let mut ready = Vec::new();
        for Compiled {
            key,
            outcome,
            elapsed,
        } in compiled
        {
            let pids = self.compiling.remove(&key).unwrap_or_default();
            debug!(object = %key, ?elapsed, "unwind table compiled");
            // Made room for while the processes that waited run: their
            // other tables are not the ones to evict.
            self.touch_processes(&pids);
            waited.extend(pids);
            ready.extend(self.load(key, outcome));
        }
        self.register(ready);
        // Written once, when nothing else they use is on its way.
        waited.retain(|pid| !self.compiling.values().any(|pids| pids.contains(pid)));
        waited
    }

    /// Puts `key`'s compiled table in a map of its own, within the budget.
    fn load(
        &mut self,
        key: ObjectKey,
        outcome: Outcome,
    ) -> Option<(ObjectKey, UnwindTable, MapData)> {
        let table = match outcome {
            Outcome::Table(table) => table,
            Outcome::Unreadable(why) => {
                debug!(object = %key, %why, "cannot read an object for its unwind table");
                self.retry_next_window.insert(key);
                return None;
            }
            Outcome::Unusable(why) => {
                self.mark_unusable(&key, why);
                return None;
            }
        };
        self.counts.unsupported_rows += table.stats.unsupported_cfa + table.stats.unsupported_rbp;
        let Some(layout) = BlockLayout::of(table.rows.len()) else {
            let why = format!("{} rows, more than the walker searches", table.rows.len());
            self.mark_unusable(&key, why);
            return None;
        };
        if !self.make_room(layout.bytes()) {
            self.counts.over_budget += 1;
            debug!(object = %key, bytes = layout.bytes(), "unwind table does not fit the budget");
            self.retry_next_window.insert(key);
            return None;
        }
        match load_rows(&table.rows, layout) {
            Ok(map) => {
                // Counted now so the next table's make_room sees it.
                self.used_bytes += layout.bytes();
                Some((key, table, map))
            }
            Err(e) => {
                warn!(object = %key, error = %e, "cannot load an unwind table");
                self.counts.failed += 1;
                self.retry_next_window.insert(key);
                None
            }
        }
    }

    /// Writes `pid`'s entry: its mappings with the tables loaded now, and
    /// [`TABLE_PENDING`] for those being compiled (a pending entry, written
    /// again once they are); `old` is the entry before this update.
    fn write_entry(
        &mut self,
        pid: u32,
        info: &ProcessInfo,
        keys: Vec<Option<ObjectKey>>,
        old: Option<&ProcessUnwindInfo>,
    ) {
        let (mut all, objects) = self.unwind_mappings(info, keys);
        let pending = all.iter().any(|m| m.table_id == TABLE_PENDING);
        if all.len() > MAX_UNWIND_MAPPINGS {
            if !pending {
                self.counts.mappings_dropped += (all.len() - MAX_UNWIND_MAPPINGS) as u64;
            }
            all.truncate(MAX_UNWIND_MAPPINGS);
        }
        let mut entry = ProcessUnwindInfo {
            written_ns: crate::bpf::monotonic_ns(),
            mapping_count: all.len() as u32,
            // Unknown: never matches, so the BPF walker defers to user space.
            generation: info.generation.unwrap_or(u32::MAX),
            interp: info
                .runtime
                .as_ref()
                .map(|r| r.interp_info())
                .unwrap_or_default(),
            go: info.go.map(|g| g.layout).unwrap_or_default(),
            ..ProcessUnwindInfo::default()
        };
        entry.mappings[..all.len()].copy_from_slice(&all);
        // The unwinder asks for a re-read at most once a second per process,
        // and defers walks into unknown code while the entry is young. When
        // the mappings did change (a loader at work), both start again; when
        // they did not (JIT code, odd addresses, a table that cannot be
        // compiled) the limits hold — and a table's compiling, whatever it
        // comes to, is no change.
        if let Some(old) = old {
            let count = (old.mapping_count as usize).min(MAX_UNWIND_MAPPINGS);
            if same_mappings(&old.mappings[..count], &all) {
                entry.refresh_requested_ns = old.refresh_requested_ns;
                entry.written_ns = old.written_ns;
            }
        }
        if let Err(e) = self.maps.processes.insert(pid, entry, 0) {
            warn!(pid, error = %e, "cannot write the process's mappings for the unwinder");
        }
        self.process_objects.insert(pid, objects);
    }

    /// What the BPF walker sees of a process with `info`'s mappings (sorted;
    /// the first [`MAX_UNWIND_MAPPINGS`] are kept), with the tables loaded
    /// now (`keys`: each mapping's object) or being compiled, and the
    /// objects whose tables it uses.
    fn unwind_mappings(
        &self,
        info: &ProcessInfo,
        keys: Vec<Option<ObjectKey>>,
    ) -> (Vec<UnwindMapping>, Vec<ObjectKey>) {
        let mut all: Vec<UnwindMapping> = Vec::with_capacity(info.mappings.len());
        let mut objects = Vec::new();
        for (m, key) in info.mappings.iter().zip(keys) {
            if key.as_ref().is_some_and(|k| self.compiling.contains_key(k)) {
                all.push(UnwindMapping {
                    start: m.start,
                    end: m.end,
                    bias: 0,
                    table_id: TABLE_PENDING,
                    rows: 0,
                });
                continue;
            }
            let table = key.and_then(|key| {
                let id = *self.ids.get(&key)?;
                let rows = self.loaded.get(&id)?.rows;
                let vaddr = UnwindTable::mapping_vaddr(self.segments.get(&key)?, m.offset)?;
                objects.push(key);
                Some((id, rows, m.start.wrapping_sub(vaddr)))
            });
            let (table_id, rows, bias) = table.unwrap_or((TABLE_NONE, 0, 0));
            all.push(UnwindMapping {
                start: m.start,
                end: m.end,
                bias,
                table_id,
                rows,
            });
        }
        all.extend(info.anonymous.iter().map(|&(start, end)| UnwindMapping {
            start,
            end,
            bias: 0,
            table_id: TABLE_ANONYMOUS,
            rows: 0,
        }));
        all.sort_by_key(|m| m.start);
        (all, objects)
    }

    /// How often `pid` exec'd since the BPF program first saw it (whether
    /// or not it has exited since); `None` when it was never seen.
    pub fn generation(&self, pid: u32) -> Option<u32> {
        let generation = self.maps.generations.get(&pid, 0).ok()?;
        Some(generation & !crate::bpf::GENERATION_EXITED)
    }

    /// Finishes the walk BPF handed over in `sample`, for a process whose
    /// mappings are `info` and with the tables loaded now.
    pub fn finish_deferred(
        &self,
        info: &ProcessInfo,
        sample: &DeferredSample,
        mode: UnwindMode,
    ) -> UserStack {
        let keys = info
            .mappings
            .iter()
            .map(|m| object_key(m).filter(|_| self.load_tables))
            .collect();
        // A table still compiling ends the walk there as `no_table`.
        let (mut mappings, _) = self.unwind_mappings(info, keys);
        mappings.truncate(MAX_UNWIND_MAPPINGS);
        let interp = info.runtime.as_ref().map(|r| r.interp_info());
        let mut runs = InterpRuns::new(interp.as_ref(), sample.interp_runs());
        let v8 = match &info.runtime {
            Some(Runtime::V8(v8)) => Some(v8.frames_of(sample.pid)),
            _ => None,
        };
        if let Some(v8) = &v8 {
            runs = runs.with_v8(v8);
        }
        self.walk_deferred(sample, &mappings, mode, &mut runs)
    }

    /// Goes on with `sample`'s walk with `mappings` (none when the process's
    /// mappings are not known: frame pointers only, as BPF would), placing
    /// `interp`'s runs at the interpreter's loop frames.
    pub fn walk_deferred(
        &self,
        sample: &DeferredSample,
        mappings: &[UnwindMapping],
        mode: UnwindMode,
        interp: &mut InterpRuns,
    ) -> UserStack {
        let mut stack = sample.user;
        let mut views = TableViews {
            tables: &self.loaded,
            blocks: HashMap::new(),
        };
        deferred::finish_walk(
            &mut stack,
            Registers::of(sample),
            &StackCopy::of(sample),
            mappings,
            mode,
            &mut views,
            interp,
        );
        stack
    }

    /// Marks `key`'s table used in this window; false when it is not loaded.
    fn touch(&mut self, key: &ObjectKey) -> bool {
        match self.ids.get(key).and_then(|id| self.loaded.get_mut(id)) {
            Some(t) => {
                t.last_used = self.window;
                true
            }
            None => false,
        }
    }

    /// Puts compiled tables into the outer map in one batch write.
    fn register(&mut self, pending: Vec<(ObjectKey, UnwindTable, MapData)>) {
        if pending.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let ids: Vec<u32> = pending
            .iter()
            .map(|(key, _, _)| {
                *self.ids.entry(key.clone()).or_insert_with(|| {
                    let id = self.next_id;
                    self.next_id += 1;
                    id
                })
            })
            .collect();
        let fds: Vec<u32> = pending
            .iter()
            .map(|(_, _, map)| map.fd().as_fd().as_raw_fd() as u32)
            .collect();
        let result = map_batch(BPF_MAP_UPDATE_BATCH, &self.maps.tables, &ids, Some(&fds));
        // Those before the one the kernel refused are registered.
        let refused = result.as_ref().err().map(|(done, e)| (*done as usize, e));
        for (index, ((key, table, map), id)) in pending.into_iter().zip(ids).enumerate() {
            let bytes = BlockLayout::of(table.rows.len()).map_or(0, |l| l.bytes());
            if let Some((_, e)) = refused.filter(|&(done, _)| index >= done) {
                warn!(object = %key, error = %e, "cannot register an unwind table");
                self.counts.failed += 1;
                self.used_bytes -= bytes;
                self.retry_next_window.insert(key);
                continue;
            }
            self.counts.loaded += 1;
            self.loaded.insert(
                id,
                LoadedTable {
                    rows: table.rows.len() as u32,
                    bytes,
                    last_used: self.window,
                    map,
                },
            );
            self.segments.insert(key, table.segments);
        }
        debug!(elapsed = ?started.elapsed(), "unwind tables registered");
    }

    /// Marks the tables of `pids` used in this window.
    fn touch_processes(&mut self, pids: &HashSet<u32>) {
        for &pid in pids {
            self.touch_process(pid);
        }
    }

    /// Marks the tables of a sampled process used in this window; true when
    /// one was evicted since, so the caller has it compiled and loaded again
    /// with [`Self::update_process`] (the process entry keeps the same id).
    pub fn touch_process(&mut self, pid: u32) -> bool {
        let Some(objects) = self.process_objects.get_mut(&pid).map(std::mem::take) else {
            return false;
        };
        let missing = objects
            .iter()
            .fold(false, |missing, key| !self.touch(key) | missing);
        self.process_objects.insert(pid, objects);
        missing
    }

    /// Forgets processes that exited before they were read: nothing of
    /// them was written here, and BPF keeps an exited process's generation
    /// until told. One syscall for all (under process churn most processes
    /// are gone by the time their exec is read).
    pub fn forget_unread(&mut self, pids: &[u32]) {
        let map = IterableMap::map(&self.maps.generations);
        let mut rest = pids;
        while !rest.is_empty() {
            // The kernel stops at a key it does not have (evicted from the
            // LRU map): skip that one, go on with the others.
            let (Ok(done) | Err((done, _))) = map_batch(BPF_MAP_DELETE_BATCH, map, rest, None);
            rest = rest.get(done as usize + 1..).unwrap_or_default();
        }
    }

    /// Forgets a process that exited (its pid is new to the BPF program again).
    pub fn remove_process(&mut self, pid: u32) {
        self.process_objects.remove(&pid);
        let _ = self.maps.processes.remove(&pid);
        let _ = self.maps.generations.remove(&pid);
    }

    fn mark_unusable(&mut self, key: &ObjectKey, why: String) {
        debug!(object = %key, why = %why, "no unwind table");
        self.counts.failed += 1;
        self.unusable.insert(key.clone(), why);
    }

    /// Evicts least recently used tables not used in this window until
    /// `bytes` fit; false when they cannot.
    fn make_room(&mut self, bytes: u64) -> bool {
        let candidates: Vec<(u32, u64, u64)> = self
            .loaded
            .iter()
            .map(|(&id, t)| (id, t.last_used, t.bytes))
            .collect();
        let Some(victims) = eviction_victims(
            &candidates,
            self.window,
            self.used_bytes,
            bytes,
            self.budget_bytes,
        ) else {
            return false;
        };
        if !victims.is_empty() {
            let _ = map_batch(BPF_MAP_DELETE_BATCH, &self.maps.tables, &victims, None);
        }
        for id in victims {
            if let Some(t) = self.loaded.remove(&id) {
                self.used_bytes -= t.bytes;
                self.counts.evicted += 1;
            }
        }
        true
    }
}

/// Whether a process entry's mappings are the same, a table being compiled
/// on either side matching whatever that mapping has on the other.
fn same_mappings(old: &[UnwindMapping], new: &[UnwindMapping]) -> bool {
    old.len() == new.len()
        && old.iter().zip(new).all(|(a, b)| {
            a == b
                || (a.start, a.end) == (b.start, b.end)
                    && (a.table_id == TABLE_PENDING || b.table_id == TABLE_PENDING)
        })
}

/// Which tables (id, last used window, bytes) to evict so `needed` more
/// bytes fit: least recently used first, never one used in `window`; `None`
/// (and nothing evicted) when even that is not enough.
fn eviction_victims(
    tables: &[(u32, u64, u64)],
    window: u64,
    used: u64,
    needed: u64,
    budget: u64,
) -> Option<Vec<u32>> {
    let mut candidates: Vec<&(u32, u64, u64)> = tables
        .iter()
        .filter(|(_, last, _)| *last < window)
        .collect();
    candidates.sort_by_key(|(id, last, _)| (*last, *id));
    let mut victims = Vec::new();
    let mut used = used;
    for (id, _, bytes) in candidates {
        if used + needed <= budget {
            break;
        }
        victims.push(*id);
        used -= bytes;
    }
    (used + needed <= budget).then_some(victims)
}

/// The build id when there is one (shared across processes and
/// containers), else path and inode; `None` for pseudo-files without a table.
pub fn object_key(m: &ExecutableMapping) -> Option<ObjectKey> {
    if m.path == VDSO_KEY {
        return Some(VDSO_KEY.to_owned());
    }
    if m.inode == 0 {
        return None;
    }
    Some(match &m.build_id {
        Some(b) => b.id.clone(),
        None => format!("{}:{}", m.path, m.inode),
    })
}

/// Compiles the table of the object `key` mapped at `m` in the process at
/// `proc_dir` here and now; `vdso` is the vDSO image (the same in every process).
pub fn compile_object(
    key: &str,
    m: &ExecutableMapping,
    proc_dir: &Path,
    vdso: Option<&[u8]>,
) -> Result<UnwindTable, UnwindTableError> {
    ObjectSource::open(key, m, proc_dir, vdso)
        .map_err(|source| UnwindTableError::Io {
            path: m.path.clone(),
            source,
        })?
        .compile()
}

/// How a table lies in its BPF array (`union unwind_block` of ebpf/cpu.h):
/// its rows, [`ROWS_PER_BLOCK`] to a block, then, when there is more than
/// one row block, the pc of each row block's first row (its fence),
/// [`FENCES_PER_BLOCK`] to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockLayout {
    row_blocks: usize,
    fence_blocks: usize,
}

impl BlockLayout {
    /// The layout of `rows` rows; `None` past what the walker searches.
    fn of(rows: usize) -> Option<Self> {
        let row_blocks = rows.div_ceil(ROWS_PER_BLOCK);
        let fence_blocks = if row_blocks > 1 {
            row_blocks.div_ceil(FENCES_PER_BLOCK)
        } else {
            0
        };
        (fence_blocks <= MAX_FENCE_BLOCKS).then_some(Self {
            row_blocks,
            fence_blocks,
        })
    }

    fn blocks(&self) -> usize {
        self.row_blocks + self.fence_blocks
    }

    /// Kernel memory the table's array takes.
    fn bytes(&self) -> u64 {
        (self.blocks() * UNWIND_BLOCK_BYTES) as u64
    }

    /// Writes blocks `first..` of `rows` in this layout into `out` (zeroed,
    /// a whole number of blocks).
    fn write(&self, rows: &[UnwindRow], first: usize, out: &mut [u8]) {
        for (i, block) in out.chunks_exact_mut(UNWIND_BLOCK_BYTES).enumerate() {
            let index = first + i;
            if index < self.row_blocks {
                let rows =
                    &rows[index * ROWS_PER_BLOCK..rows.len().min((index + 1) * ROWS_PER_BLOCK)];
                // SAFETY: UnwindRow is plain old data (repr(C), no padding).
                let raw = unsafe {
                    std::slice::from_raw_parts(
                        rows.as_ptr().cast::<u8>(),
                        std::mem::size_of_val(rows),
                    )
                };
                block[..raw.len()].copy_from_slice(raw);
            } else {
                // Fence block: the first pc of each of its row blocks.
                let fenced = (index - self.row_blocks) * FENCES_PER_BLOCK;
                let starts = rows
                    .iter()
                    .step_by(ROWS_PER_BLOCK)
                    .skip(fenced)
                    .take(FENCES_PER_BLOCK);
                for (fence, row) in block.chunks_exact_mut(4).zip(starts) {
                    fence.copy_from_slice(&row.pc.to_ne_bytes());
                }
            }
        }
    }
}

/// Blocks of a table written through one mmap: the pages written stay in
/// the agent's resident memory until unmapped, so a large table is written
/// a window at a time (1 MiB) instead of all at once.
const BLOCKS_PER_WRITE: usize = 256;

/// An inner map holding `rows` in `layout`, written through mmap.
fn load_rows(rows: &[UnwindRow], layout: BlockLayout) -> Result<MapData, String> {
    let definition = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY,
        4,
        UNWIND_BLOCK_BYTES as u32,
        layout.blocks() as u32,
        BPF_F_INNER_MAP | BPF_F_MMAPABLE,
    );
    let map = MapData::create(definition, "unwind_table", None).map_err(|e| e.to_string())?;
    let fd = map.fd().as_fd().as_raw_fd();
    for first in (0..layout.blocks()).step_by(BLOCKS_PER_WRITE) {
        let blocks = BLOCKS_PER_WRITE.min(layout.blocks() - first);
        let bytes = blocks * UNWIND_BLOCK_BYTES;
        // SAFETY: mapping `blocks` blocks (whole pages) of a BPF array
        // created MMAPABLE with at least `first + blocks` of them (zeroed by
        // the kernel), shared and writable; unmapped before the next.
        unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                (first * UNWIND_BLOCK_BYTES) as libc::off_t,
            );
            if ptr == libc::MAP_FAILED {
                return Err(format!("mmap: {}", std::io::Error::last_os_error()));
            }
            layout.write(
                rows,
                first,
                std::slice::from_raw_parts_mut(ptr.cast::<u8>(), bytes),
            );
            libc::munmap(ptr, bytes);
        }
    }
    Ok(map)
}

/// The rows of the tables in the kernel, read a 4 KiB block at a time
/// (`BPF_MAP_LOOKUP_ELEM`), each block once per walk: a frame costs a few
/// blocks, as in the BPF walker. (A read-only mmap of the array instead
/// costs the kernel inserting every page of the table at each mapping:
/// 2-3 ms a walk through libLLVM's.)
struct TableViews<'a> {
    tables: &'a HashMap<u32, LoadedTable>,
    blocks: HashMap<(u32, usize), Box<Block>>,
}

/// One block of a table's array, as words.
type Block = [u32; UNWIND_BLOCK_BYTES / 4];

impl RowSource for TableViews<'_> {
    fn row(&mut self, table_id: u32, rows: u32, pc: u32) -> Result<Option<UnwindRow>, ()> {
        let tables = self.tables;
        let table = tables.get(&table_id).filter(|t| t.rows == rows).ok_or(())?;
        let blocks = &mut self.blocks;
        search_blocks(rows as usize, pc, |index, word| {
            let block = match blocks.entry((table_id, index)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(lookup_block(&table.map, index).map_err(
                    |e| debug!(table_id, index, error = %e, "cannot read an unwind table block"),
                )?),
            };
            Ok(block[word])
        })
    }
}

/// The last row at or below `pc` in a table of `rows` rows laid out in
/// blocks ([`BlockLayout`]), the row the BPF walker finds: the last fence
/// at or below `pc`, then the last row in its block; `word(block, index)`
/// reads a word.
fn search_blocks(
    rows: usize,
    pc: u32,
    mut word: impl FnMut(usize, usize) -> Result<u32, ()>,
) -> Result<Option<UnwindRow>, ()> {
    /// How many of the first `n` ascending values are at or below `pc`.
    fn at_or_below(
        n: usize,
        pc: u32,
        mut value: impl FnMut(usize) -> Result<u32, ()>,
    ) -> Result<usize, ()> {
        let (mut low, mut high) = (0, n);
        while low < high {
            let middle = low + (high - low) / 2;
            if value(middle)? <= pc {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }
    let layout = BlockLayout::of(rows).ok_or(())?;
    let block = if layout.fence_blocks == 0 {
        0
    } else {
        let fences = at_or_below(layout.row_blocks, pc, |f| {
            word(
                layout.row_blocks + f / FENCES_PER_BLOCK,
                f % FENCES_PER_BLOCK,
            )
        })?;
        let Some(block) = fences.checked_sub(1) else {
            return Ok(None);
        };
        block
    };
    let in_block = (rows - block * ROWS_PER_BLOCK).min(ROWS_PER_BLOCK);
    let Some(i) = at_or_below(in_block, pc, |i| word(block, 2 * i))?.checked_sub(1) else {
        return Ok(None);
    };
    let words = [word(block, 2 * i)?, word(block, 2 * i + 1)?];
    // SAFETY: a row is two words of plain old data (repr(C), 8 bytes, no
    // padding), as BlockLayout::write put them.
    Ok(Some(unsafe {
        std::mem::transmute::<[u32; 2], UnwindRow>(words)
    }))
}

/// Block `index` of a table's array.
fn lookup_block(map: &MapData, index: usize) -> std::io::Result<Box<Block>> {
    /// `bpf_attr` for element commands.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let key = u32::try_from(index).map_err(std::io::Error::other)?;
    let mut block = Box::new([0u32; UNWIND_BLOCK_BYTES / 4]);
    let attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: block.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: bpf(2) reads `attr` and the key, and writes the array's value
    // size (UNWIND_BLOCK_BYTES, the template's) into `block`; all outlive it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(block)
}

/// `bpf_attr.batch`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// One `BPF_MAP_UPDATE_BATCH` or `BPF_MAP_DELETE_BATCH` of u32 keys (and
/// values): how many elements were done, all or (on error) those before the
/// one that failed.
fn map_batch(
    cmd: libc::c_long,
    map: &MapData,
    keys: &[u32],
    values: Option<&[u32]>,
) -> Result<u32, (u32, std::io::Error)> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: bpf(2) reads `attr` and the key/value arrays it points to,
    // which outlive the call; it writes back only `attr.count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        return Err((attr.count, std::io::Error::last_os_error()));
    }
    Ok(attr.count)
}

/// This process's vDSO image: the kernel maps the same one into every process.
pub fn own_vdso() -> Option<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let parsed = crate::process::parse_maps_line(line)?;
    let len = usize::try_from(parsed.end - parsed.start).ok()?;
    // SAFETY: the kernel keeps the vDSO mapped readable for the process's life.
    let image = unsafe { std::slice::from_raw_parts(parsed.start as *const u8, len) };
    Some(image.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_compiling_is_no_change_of_mappings() {
        let mapping = |start, table_id| UnwindMapping {
            start,
            end: start + 0x1000,
            bias: 0x400000,
            table_id,
            rows: 10,
        };
        let loaded = [mapping(0x1000, 7), mapping(0x3000, 8)];
        let compiling = [mapping(0x1000, 7), mapping(0x3000, TABLE_PENDING)];
        let failed = [mapping(0x1000, 7), mapping(0x3000, TABLE_NONE)];
        assert!(same_mappings(&loaded, &compiling));
        assert!(same_mappings(&compiling, &loaded));
        assert!(same_mappings(&compiling, &failed));
        // A table that came where there was none is a change; so is a new mapping.
        assert!(!same_mappings(&failed, &loaded));
        assert!(!same_mappings(&loaded[..1], &compiling));
        let moved = [mapping(0x1000, 7), mapping(0x5000, TABLE_PENDING)];
        assert!(!same_mappings(&loaded, &moved));
    }

    #[test]
    fn eviction_takes_the_least_recently_used_and_only_as_many_as_needed() {
        // (id, last used window, bytes); the budget is 100, 90 used.
        let tables = [(1, 5, 30), (2, 3, 30), (3, 4, 30)];
        assert_eq!(eviction_victims(&tables, 6, 90, 10, 100), Some(vec![]));
        assert_eq!(eviction_victims(&tables, 6, 90, 20, 100), Some(vec![2]));
        assert_eq!(eviction_victims(&tables, 6, 90, 50, 100), Some(vec![2, 3]));
        // Tables sampled in the current window stay; too little room then means no eviction.
        assert_eq!(eviction_victims(&tables, 5, 90, 80, 100), None);
        assert_eq!(eviction_victims(&tables, 5, 90, 50, 100), Some(vec![2, 3]));
        assert_eq!(eviction_victims(&tables, 6, 90, 101, 100), None);
    }

    #[test]
    fn block_layout_sizes() {
        let layout = |rows| BlockLayout::of(rows).map(|l| (l.row_blocks, l.fence_blocks));
        assert_eq!(layout(1), Some((1, 0)));
        assert_eq!(layout(ROWS_PER_BLOCK), Some((1, 0)));
        assert_eq!(layout(ROWS_PER_BLOCK + 1), Some((2, 1)));
        assert_eq!(layout(ROWS_PER_BLOCK * FENCES_PER_BLOCK), Some((1024, 1)));
        assert_eq!(
            layout(ROWS_PER_BLOCK * FENCES_PER_BLOCK + 1),
            Some((1025, 2))
        );
        let most = ROWS_PER_BLOCK * FENCES_PER_BLOCK * MAX_FENCE_BLOCKS;
        assert_eq!(
            layout(most),
            Some((most / ROWS_PER_BLOCK, MAX_FENCE_BLOCKS))
        );
        assert_eq!(layout(most + 1), None);
    }

    /// The blocked search deferred walks make (the BPF walker's, ebpf/cpu.bpf.c
    /// find_row) finds the rows a plain search finds: one row block, one
    /// fence block, and two (past 512 x 1024 rows), at every boundary, in
    /// tables written a few blocks at a time.
    #[test]
    fn blocked_search_finds_the_rows_a_plain_search_finds() {
        for count in [300u32, 512, 513, 1500, 524_288, 524_289, 600_000] {
            let rows: Vec<UnwindRow> = (0..count)
                .map(|i| UnwindRow {
                    pc: 100 + i * 4,
                    kind: 1,
                    rbp_offset: 0,
                    cfa_offset: i as u16,
                })
                .collect();
            let layout = BlockLayout::of(rows.len()).unwrap();
            let mut bytes = vec![0u8; layout.bytes() as usize];
            // Written a window of blocks at a time, as into the kernel (7:
            // windows that split the row and fence blocks anywhere).
            for (i, window) in bytes.chunks_mut(7 * UNWIND_BLOCK_BYTES).enumerate() {
                layout.write(&rows, i * 7, window);
            }
            let word = |block: usize, index: usize| {
                let at = block * UNWIND_BLOCK_BYTES + 4 * index;
                Ok(u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()))
            };
            let last = 100 + (count - 1) * 4;
            let second_fence_block = 100 + (ROWS_PER_BLOCK * FENCES_PER_BLOCK) as u32 * 4;
            for pc in [
                0,
                99,
                100,
                101,
                2147,
                2148,
                2149,
                2150,
                6095,
                6096,
                last,
                last + 9,
            ]
            .into_iter()
            .chain([
                second_fence_block - 1,
                second_fence_block,
                second_fence_block + 5,
            ]) {
                let blocked = search_blocks(rows.len(), pc, word).unwrap();
                let plain = deferred::find_row(&rows, pc);
                assert_eq!(blocked, plain, "pc {pc} of {count} rows");
            }
        }
    }
}
