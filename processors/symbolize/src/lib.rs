//! `symbolize` processor: names the frames of every batch, once per distinct
//! location.
//!
//! - native frames from ELF symbol tables and DWARF (file, line, inlined
//!   functions), read through the process's own view of its files;
//! - kernel frames from /proc/kallsyms, with module names;
//! - JIT frames (anonymous code) from the runtime's perf map.
//!
//! Per-process access needs the series' `pid` label (or
//! `__meta_process_pid`): put `symbolize` before a relabel step that drops it.

pub mod demangle;
mod dwarf;
pub mod jit;
pub mod kernel;
pub mod native;
mod symbols;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_core::bounds::Checks;
use agent_core::labels;
use agent_core::telemetry::Counter;
use agent_core::{
    BuildContext, ComponentConfig, ComponentError, Factory, FieldError, FrameType, Function,
    LabelUse, Line, Location, LocationId, MappingId, Processor, ProfileBatch, Stability,
};
use serde::{Deserialize, Serialize};

pub use native::{
    DebugSource, Eviction, Frame, Frames, Locator, ObjectPool, ObjectRef, OpenSymbolizer, Shed,
};

/// What to do with native frames.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NativeMode {
    /// Name them here.
    #[default]
    Local,
    /// Leave them for a server that symbolizes uploaded debuginfo (Parca).
    Leave,
}

/// Config of the `symbolize` processor.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SymbolizeConfig {
    /// `local` names native frames here; `leave` leaves them to the server.
    /// Kernel and JIT frames are always named here.
    pub native: NativeMode,
    /// Searched for separate debug files, in order (`--debuginfo-directories`).
    pub debuginfo_directories: Vec<PathBuf>,
    /// Re-read object files every window (`--debuginfo-disable-caching`).
    pub disable_caching: bool,
    /// Leave JIT frames unnamed (`--symbolizer-jit-disable`).
    pub jit_disable: bool,
    /// Most object files kept open; 0 means no limit (`--object-file-pool-size`).
    pub object_file_pool_size: usize,
    /// Which open file is closed first (`--object-file-pool-eviction-policy`).
    pub object_file_pool_eviction_policy: Eviction,
    /// Where processes are read (the host's /proc mounted elsewhere in a container).
    pub proc_root: PathBuf,
    /// Bytes that open object files may keep between batches: DWARF
    /// indexes and units read, symbol tables, frames remembered per address.
    /// Over it, what is cheapest to rebuild is dropped first. File pages
    /// read during a batch are released after it, so they do not count.
    pub memory_limit: u64,
}

impl Default for SymbolizeConfig {
    fn default() -> Self {
        Self {
            native: NativeMode::Local,
            debuginfo_directories: vec![PathBuf::from("/usr/lib/debug")],
            disable_caching: false,
            jit_disable: false,
            object_file_pool_size: 100,
            object_file_pool_eviction_policy: Eviction::Lru,
            proc_root: PathBuf::from("/proc"),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

/// Default [`SymbolizeConfig::memory_limit`]: 64 MiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 << 20;
/// Least [`SymbolizeConfig::memory_limit`]: below it, a large file's index
/// alone would be rebuilt for every batch.
pub const MIN_MEMORY_LIMIT: u64 = 4 << 20;

impl ComponentConfig for SymbolizeConfig {
    fn validate(&self) -> Vec<FieldError> {
        let errors: Vec<FieldError> = self
            .debuginfo_directories
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_absolute())
            .map(|(i, d)| {
                FieldError::new(
                    &format!("debuginfo_directories::{i}"),
                    format!("{} is not an absolute path", d.display()),
                )
            })
            .collect();
        let mut checks = Checks::new(errors);
        checks.number("memory_limit", self.memory_limit, MIN_MEMORY_LIMIT, 1 << 40);
        checks.number(
            "object_file_pool_size",
            self.object_file_pool_size,
            0,
            1 << 20,
        );
        checks.finish()
    }
}

/// Builds `symbolize` processors.
pub struct SymbolizeFactory;

impl Factory for SymbolizeFactory {
    const TYPE: &'static str = "symbolize";
    const STABILITY: Stability = Stability::Development;
    const DESCRIPTION: &'static str =
        "names native (ELF/DWARF), kernel (kallsyms) and JIT (perf map) frames";
    type Config = SymbolizeConfig;
    type Output = Box<dyn Processor>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        Ok(Box::new(Symbolizer::new(config, ctx)))
    }
}

/// Counters of one frame kind.
struct KindCounters {
    resolved: Counter,
    unresolved: Counter,
}

/// The processor.
pub struct Symbolizer {
    config: SymbolizeConfig,
    objects: ObjectPool,
    kernel: KernelSymbols,
    perf_maps: jit::PerfMaps,
    native: KindCounters,
    kernel_frames: KindCounters,
    jit: KindCounters,
    objects_opened: Counter,
    objects_failed: Counter,
    objects_evicted: Counter,
    memory_shed: Counter,
    memory: agent_core::telemetry::Gauge,
    reported: native::PoolStats,
}

/// Kallsyms, re-read when a kernel address is not covered (a module was
/// loaded) at most once a minute.
struct KernelSymbols {
    path: PathBuf,
    table: kernel::Kallsyms,
    read_at: Option<Instant>,
    warned: bool,
}

const KALLSYMS_REREAD: Duration = Duration::from_secs(60);

impl KernelSymbols {
    fn ensure_fresh(&mut self, missing: bool) {
        let due = match self.read_at {
            None => true,
            Some(at) => missing && at.elapsed() >= KALLSYMS_REREAD,
        };
        if !due {
            return;
        }
        self.read_at = Some(Instant::now());
        match kernel::Kallsyms::read(&self.path) {
            Ok(table) => self.table = table,
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(error = %e, "kernel frames stay unnamed");
            }
            Err(_) => {}
        }
    }
}

impl Symbolizer {
    /// A symbolizer with `config`; counters registered under `ctx`.
    pub fn new(config: SymbolizeConfig, ctx: &BuildContext) -> Self {
        let t = &ctx.telemetry;
        let locations = |kind: &str, result: &str| {
            t.counter(
                "symbolize_locations",
                "Distinct locations the symbolize processor looked up, by frame kind and result.",
                &[("kind", kind), ("result", result)],
            )
        };
        let kind = |kind: &str| KindCounters {
            resolved: locations(kind, "resolved"),
            unresolved: locations(kind, "unresolved"),
        };
        let objects = |result: &str| {
            t.counter(
                "symbolize_object_files",
                "Object files opened, not found or unreadable, and closed to stay within the pool size.",
                &[("result", result)],
            )
        };
        let locator = Locator {
            proc_root: config.proc_root.clone(),
            debug_dirs: config.debuginfo_directories.clone(),
        };
        if !agent_heap_meter::installed() {
            tracing::warn!(
                "symbolize: this binary does not count heap use, so memory_limit bounds only what it can see (install agent_heap_meter::CountingAllocator)"
            );
        }
        Self {
            objects: ObjectPool::new(
                locator,
                config.object_file_pool_size,
                config.object_file_pool_eviction_policy,
            )
            .with_memory_limit(usize::try_from(config.memory_limit).unwrap_or(usize::MAX)),
            kernel: KernelSymbols {
                path: config.proc_root.join("kallsyms"),
                table: kernel::Kallsyms::default(),
                read_at: None,
                warned: false,
            },
            perf_maps: jit::PerfMaps::new(&config.proc_root),
            native: kind("native"),
            kernel_frames: kind("kernel"),
            jit: kind("jit"),
            objects_opened: objects("opened"),
            objects_failed: objects("failed"),
            objects_evicted: objects("evicted"),
            memory_shed: t.counter(
                "symbolize_memory_shed",
                "Times open object files dropped read DWARF units, parsed tables or remembered frames to stay within memory_limit.",
                &[],
            ),
            memory: t.gauge(
                "symbolize_memory_bytes",
                "Bytes open object files keep between batches (heap and DWARF units read), held within memory_limit.",
                &[],
            ),
            reported: native::PoolStats::default(),
            config,
        }
    }

    /// Names every unnamed location of `batch`.
    pub fn symbolize(&mut self, batch: &mut ProfileBatch) {
        let work = Work::collect(batch, &self.config);
        if self.config.native == NativeMode::Local {
            self.symbolize_native(batch, &work.native);
        }
        self.symbolize_kernel(batch, &work.kernel);
        if !self.config.jit_disable {
            self.symbolize_jit(batch, &work);
        }
        if self.config.disable_caching {
            self.objects.clear();
        }
        let stats = self.objects.stats;
        self.objects_opened
            .inc_by(stats.opened - self.reported.opened);
        self.objects_failed
            .inc_by(stats.failed - self.reported.failed);
        self.objects_evicted
            .inc_by(stats.evicted - self.reported.evicted);
        self.memory_shed.inc_by(stats.shed - self.reported.shed);
        self.memory.set(self.objects.memory() as i64);
        self.reported = stats;
    }

    fn symbolize_native(
        &mut self,
        batch: &mut ProfileBatch,
        work: &HashMap<MappingId, NativeWork>,
    ) {
        for (&mapping_id, job) in work {
            let mapping = batch.mappings.get(mapping_id).clone();
            let path = batch.str(mapping.filename).to_owned();
            let any_id = batch.str(mapping.build_id);
            // Only a GNU build id can be checked against a file found by path.
            let build_id =
                (mapping.build_id_kind == agent_core::BuildIdKind::Gnu).then(|| any_id.to_owned());
            // Without a process, only a file a GNU build id proves is used.
            if job.pids.is_empty() && build_id.is_none() {
                self.native.unresolved.inc_by(job.locations.len() as u64);
                continue;
            }
            // Any build id (a content hash too) names the file across
            // processes; without one it is known only inside its process.
            let key = match (any_id, job.pids.first()) {
                ("", Some(pid)) => format!("{pid}:{path}"),
                (id, _) => format!("{:?}:{id}", mapping.build_id_kind),
            };
            let obj = ObjectRef {
                path: &path,
                build_id: build_id.as_deref(),
                pids: &job.pids,
                range: (mapping.memory_start, mapping.memory_limit),
            };
            let units_budget = self.objects.units_budget();
            let Some(symbolizer) = self.objects.get(&key, &obj) else {
                self.native.unresolved.inc_by(job.locations.len() as u64);
                continue;
            };
            for &loc in &job.locations {
                let address = batch.locations.get(loc).address;
                let file_offset = address
                    .wrapping_sub(mapping.memory_start)
                    .wrapping_add(mapping.file_offset);
                let frames = symbolizer
                    .virtual_address(file_offset)
                    .map(|vaddr| symbolizer.symbolize_within(vaddr, units_budget))
                    .filter(|f| !f.is_empty());
                match frames {
                    Some(frames) => {
                        set_lines(batch, loc, &frames, FrameType::Native);
                        self.native.resolved.inc();
                    }
                    None => self.native.unresolved.inc(),
                }
            }
            self.objects.settle(&key);
        }
    }

    fn symbolize_kernel(&mut self, batch: &mut ProfileBatch, work: &[LocationId]) {
        if work.is_empty() {
            return;
        }
        let addresses: Vec<u64> = work
            .iter()
            .map(|&l| batch.locations.get(l).address)
            .collect();
        self.kernel.ensure_fresh(false);
        if !addresses.iter().all(|&a| self.kernel.table.covers(a)) {
            self.kernel.ensure_fresh(true);
        }
        let symbols = self.kernel.table.lookup_all(&addresses);
        for (&loc, symbol) in work.iter().zip(symbols) {
            let Some(symbol) = symbol else {
                self.kernel_frames.unresolved.inc();
                continue;
            };
            let name: std::sync::Arc<str> = symbol.name.into();
            let frame = Frame {
                name: name.clone(),
                system_name: name,
                file: symbol
                    .module
                    .map_or_else(|| "".into(), |m| format!("[{m}]").into()),
                line: 0,
                column: 0,
            };
            set_lines(batch, loc, std::slice::from_ref(&frame), FrameType::Kernel);
            self.kernel_frames.resolved.inc();
        }
    }

    /// JIT locations are per process (the same address means different code
    /// in two processes): a location used by one process is named in place,
    /// one shared by several gets a location per process and the stacks of
    /// those samples are rewritten.
    fn symbolize_jit(&mut self, batch: &mut ProfileBatch, work: &Work) {
        let mut pids: Vec<u32> = work.jit.iter().map(|&(pid, _)| pid).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            self.perf_maps.refresh(pid);
        }
        let mut users: HashMap<LocationId, u32> = HashMap::new();
        for &(_, loc) in &work.jit {
            *users.entry(loc).or_default() += 1;
        }
        let mut per_process: HashMap<(u32, LocationId), LocationId> = HashMap::new();
        for &(pid, loc) in &work.jit {
            let location = batch.locations.get(loc).clone();
            let Some(name) = self.perf_maps.lookup(pid, location.address) else {
                self.jit.unresolved.inc();
                continue;
            };
            self.jit.resolved.inc();
            let name: std::sync::Arc<str> = name.into();
            let frame = Frame {
                name: name.clone(),
                system_name: name,
                file: "".into(),
                line: 0,
                column: 0,
            };
            if users[&loc] == 1 {
                set_lines(batch, loc, std::slice::from_ref(&frame), FrameType::Jit);
            } else {
                let lines = vec![line_of(batch, &frame)];
                let named = batch.locations.intern(Location {
                    lines,
                    frame_type: FrameType::Jit,
                    ..location
                });
                per_process.insert((pid, loc), named);
            }
        }
        if per_process.is_empty() {
            return;
        }
        let mut rewritten: HashMap<(u32, u32), u32> = HashMap::new();
        for i in 0..batch.samples.len() {
            let sample = &batch.samples[i];
            let Some(pid) = work.series_pids[sample.series as usize] else {
                continue;
            };
            let stack_id = sample.stack;
            let new_stack = *rewritten.entry((pid, stack_id)).or_insert_with(|| {
                let stack: Vec<LocationId> = batch
                    .stacks
                    .get(stack_id)
                    .iter()
                    .map(|&l| per_process.get(&(pid, l)).copied().unwrap_or(l))
                    .collect();
                batch.stacks.intern(stack)
            });
            batch.samples[i].stack = new_stack;
        }
    }
}

/// Most processes remembered per mapping to reach its file through.
const PIDS_PER_MAPPING: usize = 4;

#[derive(Default)]
struct NativeWork {
    pids: Vec<u32>,
    locations: Vec<LocationId>,
}

/// The unnamed locations of a batch, each listed once.
struct Work {
    series_pids: Vec<Option<u32>>,
    native: HashMap<MappingId, NativeWork>,
    kernel: Vec<LocationId>,
    /// (pid, location) of anonymous code.
    jit: Vec<(u32, LocationId)>,
}

impl Work {
    fn collect(batch: &ProfileBatch, config: &SymbolizeConfig) -> Self {
        let series_pids: Vec<Option<u32>> = batch
            .label_sets
            .items()
            .iter()
            .map(labels::series_pid)
            .collect();
        let mut seen = vec![false; batch.locations.len()];
        let mut jit_seen: std::collections::HashSet<(u32, LocationId)> = Default::default();
        let mut work = Work {
            series_pids: Vec::new(),
            native: HashMap::new(),
            kernel: Vec::new(),
            jit: Vec::new(),
        };
        let native_local = config.native == NativeMode::Local;
        // Each stack once per process: JIT names and file access are per process.
        let mut seen_stacks: std::collections::HashSet<(Option<u32>, u32)> = Default::default();
        for sample in &batch.samples {
            let pid = series_pids[sample.series as usize];
            if !seen_stacks.insert((pid, sample.stack)) {
                continue;
            }
            for &loc in batch.stacks.get(sample.stack) {
                let location = batch.locations.get(loc);
                if !location.lines.is_empty() {
                    continue;
                }
                match (location.frame_type, location.mapping) {
                    (FrameType::Kernel, _) if !std::mem::replace(&mut seen[loc as usize], true) => {
                        work.kernel.push(loc);
                    }
                    (FrameType::Kernel, _) => {}
                    (FrameType::Native | FrameType::Unknown, Some(m)) if native_local => {
                        let filename = batch.str(batch.mappings.get(m).filename);
                        if filename.is_empty() || filename.starts_with('[') {
                            continue; // [vdso], [kernel.kallsyms] and friends
                        }
                        let job = work.native.entry(m).or_default();
                        if let Some(pid) = pid {
                            if job.pids.len() < PIDS_PER_MAPPING && !job.pids.contains(&pid) {
                                job.pids.push(pid);
                            }
                        }
                        if !std::mem::replace(&mut seen[loc as usize], true) {
                            job.locations.push(loc);
                        }
                    }
                    (FrameType::Unknown | FrameType::Jit, None) if !config.jit_disable => {
                        if let Some(pid) = pid {
                            if jit_seen.insert((pid, loc)) {
                                work.jit.push((pid, loc));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        work.series_pids = series_pids;
        work
    }
}

fn line_of(batch: &mut ProfileBatch, frame: &Frame) -> Line {
    let function = Function {
        name: batch.strings.intern_str(&frame.name),
        system_name: batch.strings.intern_str(&frame.system_name),
        filename: batch.strings.intern_str(&frame.file),
        start_line: 0,
    };
    Line {
        function: batch.functions.intern(function),
        line: i64::from(frame.line),
        column: i64::from(frame.column),
    }
}

/// Names location `loc` in place: every stack using it sees the names.
fn set_lines(batch: &mut ProfileBatch, loc: LocationId, frames: &[Frame], frame_type: FrameType) {
    let lines = frames.iter().map(|f| line_of(batch, f)).collect();
    let location = Location {
        lines,
        frame_type,
        ..batch.locations.get(loc).clone()
    };
    batch.locations.update(loc, location);
}

impl Processor for Symbolizer {
    fn label_use(&self, name: &str) -> LabelUse {
        match name {
            labels::PID | labels::META_PROCESS_PID => LabelUse::Reads,
            _ => LabelUse::Passes,
        }
    }

    fn process(&mut self, mut batch: ProfileBatch) -> Result<ProfileBatch, ComponentError> {
        self.symbolize(&mut batch);
        Ok(batch)
    }
}
