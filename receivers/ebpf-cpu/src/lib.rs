//! `ebpf_cpu` receiver: samples every CPU at a fixed frequency with a BPF
//! program and emits one batch per window: per process its samples with raw
//! user and kernel addresses, its executable mappings (file offsets, paths,
//! build ids), thread and CPU as sample attributes.
//!
//! User stacks (up to 127 frames) are walked by the BPF program with unwind
//! tables compiled from each executable's `.eh_frame` ([`unwind`]), and with
//! frame pointers where there is no table (JIT code); each sample says how
//! its walk ended (`unwind_status`). A walk that reaches code whose table is
//! not in the kernel yet (a process's first milliseconds) comes with a copy
//! of the stack and is finished here once the table is loaded ([`deferred`]),
//! so no sample is cut short by the start-up gap.

pub mod bpf;
pub mod compiler;
pub mod deferred;
pub mod events;
#[cfg(test)]
#[path = "../../../tests/support/go_workload.rs"]
mod go_workload;
pub mod process;
pub mod runtimes;
pub mod targets;
pub mod unwind;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_core::bounds::Checks;
use agent_core::labels;
use agent_core::telemetry::{ComponentTelemetry, Counter, Gauge};
use agent_core::{
    BatchSink, BuildContext, BuildIdKind, ComponentConfig, ComponentError, Factory, FieldError,
    FrameType, Function, LabelSet, Line, Location, Mapping, ProfileBatch, ProfileType, Receiver,
    Sample, Shutdown, Stability,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use bpf::{Drained, LoadOptions, ReaderAsleep, Sampler, UnwindMode};
use events::{DeferredResults, EventHandler, Shared};
use process::{ProcessInfo, ProcessTracker};
use runtimes::{CodeInfo, CodeKey, CodeNames, InterpFrame, UserFrame};
use unwind::UnwindTables;

/// Config of the `ebpf_cpu` receiver.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfCpuConfig {
    /// Length of one window (`--profiling-duration`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub profiling_duration: Duration,
    /// Samples per second per CPU (`--profiling-cpu-sampling-frequency`).
    pub sampling_frequency: u64,
    /// Also sample the idle task (pid 0).
    pub include_idle: bool,
    /// RLIMIT_MEMLOCK in bytes, 0 = unlimited (`--memlock-rlimit`).
    pub memlock_rlimit: u64,
    /// Full verifier log when loading fails (`--bpf-verbose-logging`).
    pub bpf_verbose_logging: bool,
    /// Process-event ring buffer size in 4 KiB pages (`--bpf-events-buffer-size`).
    pub bpf_events_buffer_size: u32,
    /// How often process events are read (`--profiling-perf-event-buffer-poll-interval`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub event_buffer_poll_interval: Duration,
    /// Frame pointers only, no unwind tables (`--dwarf-unwinding-disable`).
    pub dwarf_unwinding_disable: bool,
    /// Per frame: a table row where one covers the address, frame pointers
    /// where none does (`--dwarf-unwinding-mixed`).
    pub dwarf_unwinding_mixed: bool,
    /// Most bytes of unwind tables in the kernel; least recently used
    /// executables' tables are evicted beyond it.
    pub unwind_table_memory_limit: u64,
    /// No Python frames: CPython processes show the interpreter's native
    /// frames only (`--python-unwinding-disable`).
    pub python_unwinding_disable: bool,
    /// No PHP frames: PHP processes show the engine's native frames only
    /// (`--php-unwinding-disable`).
    pub php_unwinding_disable: bool,
    /// No Ruby frames: Ruby processes show the VM's native frames only
    /// (`--ruby-unwinding-disable`).
    pub ruby_unwinding_disable: bool,
    /// No JavaScript frames: Node.js processes show V8's native frames
    /// (and perf-map names where a perf map exists) (`--v8-unwinding-disable`).
    pub v8_unwinding_disable: bool,
    /// No Java frames: JVM processes show HotSpot's native frames only
    /// (`--jvm-unwinding-disable`).
    pub jvm_unwinding_disable: bool,
    /// Leave out the `cpu` sample label (`--metadata-disable-cpu-label`).
    pub disable_cpu_label: bool,
    /// Leave out the `thread_id` sample label
    /// (`--metadata-disable-thread-id-label`).
    pub disable_thread_id_label: bool,
    /// Leave out the `thread_comm` sample label
    /// (`--metadata-disable-thread-comm-label`).
    pub disable_thread_comm_label: bool,
    /// Probabilistic profiling: the chance, in percent, that an interval
    /// is profiled; 100 profiles always
    /// (`--profiling-probabilistic-threshold`).
    pub probabilistic_threshold: u64,
    /// Probabilistic profiling: how long one draw holds
    /// (`--profiling-probabilistic-interval`).
    #[schemars(with = "agent_core::schema::DurationText")]
    #[serde(with = "humantime_serde")]
    pub probabilistic_interval: Duration,
    /// Sample only the processes one of these matches (none: every
    /// process); enforced in BPF, so the others cost one map lookup.
    pub targets: Vec<targets::Target>,
    /// Off-CPU profiling: the probability (0–1) that a thread going off
    /// CPU is timed and, once back, its stacks recorded with the time it
    /// was away (`--off-cpu-threshold`); 0 (the default) leaves it off.
    pub off_cpu_threshold: f64,
}

impl Default for EbpfCpuConfig {
    fn default() -> Self {
        Self {
            profiling_duration: Duration::from_secs(10),
            sampling_frequency: 19,
            include_idle: false,
            memlock_rlimit: 0,
            bpf_verbose_logging: false,
            bpf_events_buffer_size: 64,
            event_buffer_poll_interval: Duration::from_millis(250),
            dwarf_unwinding_disable: false,
            dwarf_unwinding_mixed: false,
            // Four times what a node running a parallel cargo build held
            // (32 MiB, 76 tables); evictions are counted.
            unwind_table_memory_limit: 128 << 20,
            python_unwinding_disable: false,
            php_unwinding_disable: false,
            ruby_unwinding_disable: false,
            v8_unwinding_disable: false,
            jvm_unwinding_disable: false,
            disable_cpu_label: false,
            disable_thread_id_label: false,
            disable_thread_comm_label: false,
            probabilistic_threshold: 100,
            probabilistic_interval: Duration::from_secs(60),
            targets: Vec::new(),
            off_cpu_threshold: 0.0,
        }
    }
}

/// Probabilistic profiling: every interval a draw in 0–99 decides whether
/// the next interval is profiled (draw below the threshold). A paused
/// interval has no sampling timer at all.
struct Lottery {
    threshold: u64,
    interval: Duration,
    next_draw: Instant,
    drawn: [Counter; 2],
}

impl Lottery {
    /// `None` when every interval is profiled (threshold 100).
    fn new(config: &EbpfCpuConfig, telemetry: &ComponentTelemetry) -> Option<Self> {
        let drawn = |profiled| {
            telemetry.counter(
                "ebpf_probabilistic_intervals",
                "Probabilistic profiling intervals, by whether they were profiled.",
                &[("profiled", profiled)],
            )
        };
        (config.probabilistic_threshold < 100).then(|| Self {
            threshold: config.probabilistic_threshold,
            interval: config.probabilistic_interval,
            next_draw: Instant::now(),
            drawn: [drawn("false"), drawn("true")],
        })
    }

    /// Whether the interval starting now is profiled, when a draw is due.
    fn draw_if_due(&mut self, now: Instant) -> Option<bool> {
        if now < self.next_draw {
            return None;
        }
        while self.next_draw <= now {
            self.next_draw += self.interval;
        }
        let profiled = random_percent() < self.threshold;
        self.drawn[usize::from(profiled)].inc();
        Some(profiled)
    }
}

/// A uniform draw in 0–99 (std's hasher keys are seeded randomly per
/// thread and differ for each instance).
fn random_percent() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // Multiply-shift: no modulo bias worth naming at 64 bits.
    ((u128::from(bits) * 100) >> 64) as u64
}

/// Which sample labels of thread and CPU a batch carries. Samples that
/// differ only in a label left out become one.
#[derive(Clone, Copy, Debug)]
struct SampleLabels {
    cpu: bool,
    thread_id: bool,
    thread_comm: bool,
}

impl SampleLabels {
    #[cfg(test)]
    const ALL: Self = Self {
        cpu: true,
        thread_id: true,
        thread_comm: true,
    };
}

impl EbpfCpuConfig {
    fn sample_labels(&self) -> SampleLabels {
        SampleLabels {
            cpu: !self.disable_cpu_label,
            thread_id: !self.disable_thread_id_label,
            thread_comm: !self.disable_thread_comm_label,
        }
    }

    fn unwind_mode(&self) -> UnwindMode {
        if self.dwarf_unwinding_disable {
            UnwindMode::FramePointers
        } else if self.dwarf_unwinding_mixed {
            UnwindMode::Mixed
        } else {
            UnwindMode::Tables
        }
    }
}

impl ComponentConfig for EbpfCpuConfig {
    fn validate(&self) -> Vec<FieldError> {
        let mut checks = Checks::default();
        let ms = Duration::from_millis;
        checks.duration(
            "profiling_duration",
            self.profiling_duration,
            ms(100),
            ms(3_600_000),
        );
        checks.duration(
            "event_buffer_poll_interval",
            self.event_buffer_poll_interval,
            ms(10),
            ms(10_000),
        );
        checks.number("sampling_frequency", self.sampling_frequency, 1, 10_000);
        checks.number(
            "bpf_events_buffer_size",
            self.bpf_events_buffer_size,
            1,
            262_144,
        );
        if !self.dwarf_unwinding_disable {
            checks.number(
                "unwind_table_memory_limit",
                self.unwind_table_memory_limit,
                1 << 20,
                1 << 40,
            );
        }
        checks.number(
            "probabilistic_threshold",
            self.probabilistic_threshold,
            1,
            100,
        );
        checks.duration(
            "probabilistic_interval",
            self.probabilistic_interval,
            ms(100),
            ms(86_400_000),
        );
        let mut errors = checks.finish();
        if self.dwarf_unwinding_disable && self.dwarf_unwinding_mixed {
            errors.push(FieldError::new(
                "dwarf_unwinding_mixed",
                "cannot be set together with dwarf_unwinding_disable (frame pointers only)",
            ));
        }
        for (i, target) in self.targets.iter().enumerate() {
            errors.extend(target.validate(i));
        }
        let p = self.off_cpu_threshold;
        if !(0.0..=1.0).contains(&p) {
            errors.push(FieldError::new(
                "off_cpu_threshold",
                format!("must be a probability from 0 (off) to 1 (every switch), not {p}"),
            ));
        } else if p > 0.0 && bpf::off_cpu_threshold_bits(p) == 0 {
            errors.push(FieldError::new(
                "off_cpu_threshold",
                format!("{p} would time no switch: the smallest above 0 is 2^-32 (2.4e-10)"),
            ));
        }
        if self.include_idle && !self.targets.is_empty() {
            errors.push(FieldError::new(
                "include_idle",
                "cannot be set together with targets (the idle task is no target)",
            ));
        }
        errors
    }
}

/// Why the receiver cannot run; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EbpfCpuError {
    /// Missing privileges.
    #[error("loading BPF programs is not permitted ({0}): run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE")]
    NotPermitted(String),
    /// Kernel older than what the program needs.
    #[error("kernel {0} is too old: the ebpf_cpu receiver needs Linux 5.8 or newer")]
    KernelTooOld(String),
    /// The kernel refused a program for a BPF helper it does not have.
    #[error("this kernel lacks the BPF helper {0} that the ebpf_cpu receiver needs: run a newer kernel, or a distribution kernel that backports it")]
    KernelLacksHelper(&'static str),
    /// RLIMIT_MEMLOCK could not be raised on a kernel that needs it.
    #[error("cannot raise RLIMIT_MEMLOCK ({0}): run as root or set --memlock-rlimit within the hard limit")]
    Memlock(std::io::Error),
    /// The verifier refused a program.
    #[error("the kernel's verifier rejected BPF program {program}: {error}{hint}\n{log}")]
    Verifier {
        /// Program name.
        program: String,
        /// The load error.
        error: String,
        /// The verifier log (tail, or all when verbose).
        log: String,
        /// How to see more, and what an old kernel may lack.
        hint: String,
    },
    /// Attaching failed.
    #[error("cannot attach BPF program {program}: {error}")]
    Attach {
        /// Program name.
        program: String,
        /// The error.
        error: String,
    },
    /// A map operation failed.
    #[error("BPF map error: {0}")]
    Map(String),
    /// The event or the table-compiling thread could not be started.
    #[error("cannot start the receiver's threads: {0}")]
    Thread(#[from] std::io::Error),
    /// The event thread stopped on its own (a bug: it panicked).
    #[error("the receiver's event thread stopped: new processes would not be read any more")]
    EventThreadStopped,
}

/// Builds `ebpf_cpu` receivers.
pub struct EbpfCpuFactory;

impl Factory for EbpfCpuFactory {
    const TYPE: &'static str = "ebpf_cpu";
    const STABILITY: Stability = Stability::Development;
    const DESCRIPTION: &'static str = "samples user and kernel stacks of every CPU with BPF";
    type Config = EbpfCpuConfig;
    type Output = Box<dyn Receiver>;

    fn create(
        &self,
        config: Self::Config,
        ctx: &BuildContext,
    ) -> Result<Self::Output, ComponentError> {
        Ok(Box::new(EbpfCpuReceiver {
            counters: Some(Counters::new(&ctx.telemetry)),
            config,
            attached: None,
        }))
    }
}

impl EbpfCpuReceiver {
    /// Loads and attaches the BPF program and sets up its unwind tables.
    fn attach(config: &EbpfCpuConfig, counters: Counters) -> Result<Attached, ComponentError> {
        let mut sampler = Sampler::load(&LoadOptions {
            frequency: config.sampling_frequency,
            include_idle: config.include_idle,
            memlock_rlimit: config.memlock_rlimit,
            verbose: config.bpf_verbose_logging,
            events_pages: config.bpf_events_buffer_size,
            unwind_mode: config.unwind_mode(),
            event_pause: config.event_buffer_poll_interval,
            window: config.profiling_duration,
            targeted: !config.targets.is_empty(),
            off_cpu_threshold: config.off_cpu_threshold,
        })?;
        let tables = UnwindTables::new(
            sampler.take_unwind_maps()?,
            config.unwind_table_memory_limit,
            config.unwind_mode() != UnwindMode::FramePointers,
        )
        .map_err(EbpfCpuError::Thread)?;
        info!(frequency = config.sampling_frequency, window = ?config.profiling_duration, unwind = ?config.unwind_mode(), "BPF sampler attached");
        Ok(Attached {
            sampler,
            tables,
            counters,
            config: config.clone(),
        })
    }
}

/// The receiver's metrics.
struct Counters {
    bpf: Vec<Counter>,
    last_bpf: [u64; bpf::STAT_COUNT],
    /// Deferred walks by result: finished, or left as BPF walked them.
    deferred: [Counter; 2],
    /// The longest a deferred walk waited in the last window.
    deferred_latency: Gauge,
    vanished: Counter,
    last_vanished: u64,
    processes: Gauge,
    map_fill: Gauge,
    /// Samples by how their user stack walk ended.
    stack_status: Vec<Counter>,
    tables: [Counter; 6],
    last_tables: unwind::TableCounts,
    table_bytes: Gauge,
    tables_loaded: Gauge,
    /// Interpreter processes by runtime (`cpython 3.11`), made as found.
    interp_processes: HashMap<String, Gauge>,
    /// Interpreter objects named, and not named.
    interp_names: [Counter; 2],
    last_names: (u64, u64),
    interp_unnamed: Counter,
    telemetry: ComponentTelemetry,
}

impl Counters {
    fn new(t: &ComponentTelemetry) -> Self {
        let help: [&str; bpf::STAT_COUNT] = [
            "Samples taken by the BPF program.",
            "User stacks lost to a stack-map hash collision.",
            "Kernel stacks lost to a stack-map hash collision.",
            "Samples without a user stack (kernel threads, unreadable stacks).",
            "Samples lost because the counts map was full.",
            "Process events lost because the ring buffer was full.",
            "User stack walks handed to user space with a copy of the stack (tables not loaded yet).",
            "User stack walks finished in BPF because the ring buffer had no room for a deferred walk.",
            "Interpreter frames (Python, PHP, Ruby) emitted by the BPF walker.",
            "Interpreter walks ended early: the sampled thread's interpreter state was not found.",
            "Interpreter walks ended early: a frame or code object was unreadable.",
            "Interpreter walks ended early: a Python frame's code was not a code object.",
            "Samples of Go programs that carry their goroutine's pprof labels.",
            "Samples of Go programs whose goroutine labels were unreadable (taken without).",
            "Samples of processes no target matches, left at the BPF program's first lookup (targets).",
            "Off-CPU samples: threads timed going off CPU (off_cpu_threshold) and seen back on one.",
        ];
        let deferred_counter = |result: &str| {
            t.counter(
                "ebpf_deferred_walks",
                "Deferred user stack walks by result: finished here, or unfinished (the process was gone or had exec'd before its mappings were read).",
                &[("result", result)],
            )
        };
        let table_counter = |result: &str| {
            t.counter(
                "ebpf_unwind_tables",
                "Unwind table events: loaded, evicted, failed (no usable CFI), over_budget; unsupported_rows and mappings_dropped count rows and mappings.",
                &[("result", result)],
            )
        };
        Self {
            bpf: bpf::STAT_NAMES
                .iter()
                .zip(help)
                .map(|(name, help)| t.counter(&format!("ebpf_{name}"), help, &[]))
                .collect(),
            last_bpf: [0; bpf::STAT_COUNT],
            deferred: [deferred_counter("finished"), deferred_counter("unfinished")],
            deferred_latency: t.gauge(
                "ebpf_deferred_walk_latency_max_microseconds",
                "The longest time from a deferred walk's sample to its end in user space, in the last window.",
                &[],
            ),
            vanished: t.counter(
                "ebpf_processes_vanished",
                "Processes that exited before /proc could be read.",
                &[],
            ),
            last_vanished: 0,
            processes: t.gauge(
                "ebpf_processes_tracked",
                "Processes the receiver tracks.",
                &[],
            ),
            map_fill: t.gauge(
                "ebpf_counts_map_fill_percent",
                "How full the last window's counts map was, in percent.",
                &[],
            ),
            stack_status: bpf::STACK_STATUS_NAMES
                .iter()
                .map(|status| {
                    t.counter(
                        "ebpf_user_stacks",
                        "Samples by how their user stack walk ended.",
                        &[("status", status)],
                    )
                })
                .collect(),
            tables: [
                table_counter("loaded"),
                table_counter("evicted"),
                table_counter("failed"),
                table_counter("over_budget"),
                table_counter("unsupported_rows"),
                table_counter("mappings_dropped"),
            ],
            last_tables: unwind::TableCounts::default(),
            table_bytes: t.gauge(
                "ebpf_unwind_table_bytes",
                "Bytes of unwind table rows in the kernel.",
                &[],
            ),
            tables_loaded: t.gauge(
                "ebpf_unwind_tables_loaded",
                "Executables whose unwind table is in the kernel.",
                &[],
            ),
            interp_processes: HashMap::new(),
            interp_names: ["resolved", "failed"].map(|result| {
                t.counter(
                    "ebpf_interpreter_names",
                    "Interpreter code objects named from process memory (resolved), or not (failed: freed, reused or unreadable).",
                    &[("result", result)],
                )
            }),
            last_names: (0, 0),
            interp_unnamed: t.counter(
                "ebpf_interpreter_frames_unnamed",
                "Sampled interpreter frames left unnamed (their code object could not be read in time).",
                &[],
            ),
            telemetry: t.clone(),
        }
    }

    fn update_interp(&mut self, tracker: &ProcessTracker, names: &CodeNames, unnamed: u64) {
        let found = tracker.runtimes();
        for (runtime, gauge) in &self.interp_processes {
            if !found.contains_key(runtime) {
                gauge.set(0);
            }
        }
        for (runtime, n) in found {
            let gauge = self.interp_processes.entry(runtime).or_insert_with_key(|runtime| {
                self.telemetry.gauge(
                    "ebpf_interpreter_processes",
                    "Processes tracked whose interpreter the unwinder walks, by runtime and version.",
                    &[("runtime", runtime)],
                )
            });
            gauge.set(n as i64);
        }
        self.interp_names[0].inc_by(names.resolved - self.last_names.0);
        self.interp_names[1].inc_by(names.failed - self.last_names.1);
        self.last_names = (names.resolved, names.failed);
        self.interp_unnamed.inc_by(unnamed);
    }

    fn update_tables(&mut self, tables: &UnwindTables) {
        let (now, last) = (tables.counts, self.last_tables);
        let deltas = [
            now.loaded - last.loaded,
            now.evicted - last.evicted,
            now.failed - last.failed,
            now.over_budget - last.over_budget,
            now.unsupported_rows - last.unsupported_rows,
            now.mappings_dropped - last.mappings_dropped,
        ];
        for (counter, delta) in self.tables.iter().zip(deltas) {
            counter.inc_by(delta);
        }
        self.last_tables = now;
        self.table_bytes.set(tables.used_bytes() as i64);
        self.tables_loaded.set(tables.loaded_tables() as i64);
    }

    fn update_stacks(&mut self, drained: &Drained) {
        for (_, stack, count) in drained.user_stacks_counted() {
            if let Some(counter) = self.stack_status.get(stack.status as usize) {
                counter.inc_by(count);
            }
        }
    }

    fn update_deferred(&mut self, results: &mut DeferredResults) {
        self.deferred[0].inc_by(std::mem::take(&mut results.finished));
        self.deferred[1].inc_by(std::mem::take(&mut results.unfinished));
        self.deferred_latency
            .set((std::mem::take(&mut results.max_latency_ns) / 1000) as i64);
    }

    fn update(&mut self, stats: [u64; bpf::STAT_COUNT], tracker: &ProcessTracker, entries: usize) {
        for (i, c) in self.bpf.iter().enumerate() {
            c.inc_by(stats[i].saturating_sub(self.last_bpf[i]));
        }
        self.last_bpf = stats;
        self.vanished.inc_by(tracker.vanished - self.last_vanished);
        self.last_vanished = tracker.vanished;
        self.processes.set(tracker.len() as i64);
        self.map_fill
            .set((entries * 100 / bpf::MAX_SAMPLE_KEYS) as i64);
    }
}

/// The receiver as built: attached at `start`.
struct EbpfCpuReceiver {
    config: EbpfCpuConfig,
    /// Until attached.
    counters: Option<Counters>,
    attached: Option<Attached>,
}

/// The attached BPF program, its unwind tables, and what sampling counts.
struct Attached {
    sampler: Sampler,
    tables: UnwindTables,
    counters: Counters,
    config: EbpfCpuConfig,
}

/// Kernel-wide facts attached to kernel frames.
struct KernelImage {
    build_id: Option<String>,
}

impl KernelImage {
    fn read() -> Self {
        let build_id = std::fs::read("/sys/kernel/notes").ok().and_then(|notes| {
            let mut it = object::read::elf::NoteIterator::<
                object::elf::FileHeader64<object::Endianness>,
            >::new(object::Endianness::Little, 4u64, &notes[..])
            .ok()?;
            while let Ok(Some(note)) = it.next() {
                if note.name() == b"GNU"
                    && note.n_type(object::Endianness::Little) == object::elf::NT_GNU_BUILD_ID
                {
                    return Some(note.desc().iter().map(|b| format!("{b:02x}")).collect());
                }
            }
            None
        });
        Self { build_id }
    }
}

/// Kernel frames live in one mapping covering the kernel half of the address space.
pub const KERNEL_MAPPING_START: u64 = 0xffff_8000_0000_0000;

fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// A kernel stack's addresses as pprof wants them: the first is where the
/// sample hit, the others are return addresses, moved back into their call
/// instruction so symbolizers name the calling line, not the next one.
fn call_sites(frames: &[u64]) -> impl Iterator<Item = u64> + '_ {
    frames
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
}

/// The location of an interpreter frame: named (function, file, line) when
/// its object could be read, else unnamed, keeping the object's address.
fn interp_location(
    batch: &mut ProfileBatch,
    frame: &InterpFrame,
    name: Option<&Arc<CodeInfo>>,
) -> Location {
    let frame_type = match frame.kind {
        bpf::interp_kind::PHP => FrameType::Php,
        bpf::interp_kind::RUBY => FrameType::Ruby,
        bpf::interp_kind::V8 | bpf::interp_kind::V8_CODE_ADDRESS => FrameType::V8Js,
        bpf::interp_kind::JVM | bpf::interp_kind::JVM_COMPILED => FrameType::Jvm,
        _ => FrameType::CPython,
    };
    let Some(info) = name else {
        return Location {
            mapping: None,
            address: frame.object,
            lines: Vec::new(),
            frame_type,
        };
    };
    let mut line = |name: &str, filename: &str, first_line: u32, line: u32| {
        let name = batch.strings.intern_str(name);
        let function = batch.functions.intern(Function {
            name,
            system_name: name,
            filename: batch.strings.intern_str(filename),
            start_line: i64::from(first_line),
        });
        Line {
            function,
            line: i64::from(line),
            column: 0,
        }
    };
    // Functions inlined into optimized code: one line each, innermost first.
    let lines = match info.inlined_at(frame.offset) {
        Some(frames) => frames
            .iter()
            .map(|f| line(&f.name, &f.filename, f.first_line, f.line))
            .collect(),
        None => vec![line(
            &info.name,
            &info.filename,
            info.first_line,
            info.line(frame.offset),
        )],
    };
    Location {
        mapping: None,
        address: 0,
        lines,
        frame_type,
    }
}

/// The names of the interpreter frames in a drained window's stacks (read
/// now if BPF's announcement was missed), and how many frames stay unnamed.
fn interp_names(
    drained: &Drained,
    tracker: &ProcessTracker,
    names: &mut CodeNames,
) -> (HashMap<CodeKey, Arc<CodeInfo>>, u64) {
    let (mut found, mut unnamed) = (HashMap::new(), 0);
    for (pid, stack, count) in drained.user_stacks_counted() {
        for frame in runtimes::user_frames(stack.frames()) {
            let UserFrame::Interp(f) = frame else {
                continue;
            };
            let key = f.key(pid);
            if found.contains_key(&key) {
                continue;
            }
            let runtime = tracker.get(pid).and_then(|p| p.runtime.as_ref());
            match names.resolve(key, runtime) {
                Some(info) => {
                    found.insert(key, info);
                }
                None => unnamed += count,
            }
        }
    }
    (found, unnamed)
}

/// The profiles a window holds: what its samples measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// CPU samples, counted.
    Cpu,
    /// Time off CPU, in nanoseconds.
    OffCpu,
}

/// Turns one drained window's samples of one measure into a batch.
#[allow(clippy::too_many_arguments)]
fn build_batch(
    drained: &Drained,
    measure: Measure,
    processes: &HashMap<u32, Arc<ProcessInfo>>,
    names: &HashMap<CodeKey, Arc<CodeInfo>>,
    kernel: &KernelImage,
    profile_type: ProfileType,
    window: (u64, u64),
    sample_labels: SampleLabels,
) -> ProfileBatch {
    let mut batch = ProfileBatch::new(profile_type, window.0, window.1);
    let kernel_name = batch
        .strings
        .intern_str(agent_core::pprof::KERNEL_MAPPING_NAME);
    let kernel_build_id = kernel
        .build_id
        .as_deref()
        .map_or(0, |id| batch.strings.intern_str(id));
    let kernel_mapping = batch.mappings.intern(Mapping {
        memory_start: KERNEL_MAPPING_START,
        memory_limit: u64::MAX,
        file_offset: 0,
        filename: kernel_name,
        build_id: kernel_build_id,
        build_id_kind: if kernel_build_id == 0 {
            BuildIdKind::None
        } else {
            BuildIdKind::Gnu
        },
    });
    // (process image, mapping index) -> batch mapping id, so a process's
    // mappings are interned once (a deferred walk may be of an older image).
    let mut mapping_ids: HashMap<(*const ProcessInfo, usize), u32> = HashMap::new();
    let mut series_ids: HashMap<u32, u32> = HashMap::new();
    // (stack, series, attributes) -> index in batch.samples.
    let mut sample_index: HashMap<(u32, u32, u32), usize> = HashMap::new();
    let (counts, kernel_stacks) = match measure {
        Measure::Cpu => (&drained.counts, &drained.kernel_stacks),
        Measure::OffCpu => (&drained.off_cpu, &drained.off_cpu_kernel_stacks),
    };
    let counted = counts.iter().map(|(key, count)| {
        let kernel = kernel_stacks
            .get(&key.kernel_stack_id)
            .filter(|_| key.kernel_stack_id >= 0)
            .map_or(&[][..], Vec::as_slice);
        let info = processes.get(&key.pid).map(|p| &**p);
        let user = drained.user_stacks.get(&key.user_stack);
        (key, *count, kernel, user, info)
    });
    // Off-CPU walks are never deferred: their time is known only later.
    let deferred = match measure {
        Measure::Cpu => &drained.deferred[..],
        Measure::OffCpu => &[],
    };
    let finished = deferred.iter().map(|f| {
        let image = f.process.as_deref();
        let info = image.or_else(|| processes.get(&f.key.pid).map(|p| &**p));
        (&f.key, 1, f.kernel.as_slice(), Some(&f.user), info)
    });
    for (key, count, kernel_frames, user_stack, info) in counted.chain(finished) {
        let mut locations = Vec::new();
        for address in call_sites(kernel_frames) {
            locations.push(batch.locations.intern(Location {
                mapping: Some(kernel_mapping),
                address,
                lines: Vec::new(),
                frame_type: FrameType::Kernel,
            }));
        }
        let words = user_stack.map_or(&[][..], |s| s.frames());
        for (i, frame) in runtimes::user_frames(words).enumerate() {
            let address = match frame {
                // As call_sites does.
                UserFrame::Native(a) if i == 0 => a,
                UserFrame::Native(a) => a.saturating_sub(1),
                UserFrame::Interp(f) => {
                    let location = interp_location(&mut batch, &f, names.get(&f.key(key.pid)));
                    locations.push(batch.locations.intern(location));
                    continue;
                }
            };
            let mapping = info.and_then(|p| p.mapping_of(address)).map(|(i, m)| {
                *mapping_ids
                    .entry((info.map_or(std::ptr::null(), |p| p as *const _), i))
                    .or_insert_with(|| {
                        let filename = batch.strings.intern_str(&m.path);
                        let (build_id, build_id_kind) = match &m.build_id {
                            Some(b) => (batch.strings.intern_str(&b.id), b.kind),
                            None => (0, BuildIdKind::None),
                        };
                        batch.mappings.intern(Mapping {
                            memory_start: m.start,
                            memory_limit: m.end,
                            file_offset: m.offset,
                            filename,
                            build_id,
                            build_id_kind,
                        })
                    })
            });
            locations.push(batch.locations.intern(Location {
                mapping,
                address,
                lines: Vec::new(),
                frame_type: if mapping.is_some() {
                    FrameType::Native
                } else {
                    FrameType::Unknown
                },
            }));
        }
        let stack = batch.stacks.intern(locations);
        let thread_comm = comm_text(&key.comm);
        let series = *series_ids.entry(key.pid).or_insert_with(|| {
            let comm = info
                .map(|p| p.comm.as_str())
                .filter(|c| !c.is_empty())
                .unwrap_or(&thread_comm);
            batch.label_sets.intern(LabelSet::new([
                (labels::PID, key.pid.to_string()),
                (labels::COMM, comm.to_owned()),
            ]))
        });
        let mut attributes = Vec::new();
        if sample_labels.thread_id {
            attributes.push((labels::THREAD_ID.to_owned(), key.tid.to_string()));
        }
        if sample_labels.thread_comm {
            attributes.push((labels::THREAD_COMM.to_owned(), thread_comm));
        }
        if sample_labels.cpu {
            attributes.push((labels::CPU.to_owned(), key.cpu.to_string()));
        }
        if let Some(stack) = user_stack {
            attributes.push((
                "unwind_status".to_owned(),
                bpf::stack_status_name(stack.status).into(),
            ));
        }
        for (name, value) in drained.go_labels.get(&key.go_labels).into_iter().flatten() {
            attributes.push((go_label_name(name), value.clone()));
        }
        let attributes = batch.label_sets.intern(LabelSet::new(attributes));
        match sample_index.entry((stack, series, attributes)) {
            Entry::Occupied(at) => batch.samples[*at.get()].value += count as i64,
            Entry::Vacant(at) => {
                at.insert(batch.samples.len());
                batch.samples.push(Sample {
                    stack,
                    series,
                    attributes,
                    value: count as i64,
                    timestamp_unix_nanos: None,
                });
            }
        }
    }
    batch
}

/// The sample label a goroutine label `name` becomes: `__meta_go_label_`
/// and the name with every character Prometheus does not allow in a label
/// name replaced by `_`. Relabeling decides what leaves the pipeline (the
/// embedded one keeps them under their own names).
pub fn go_label_name(name: &str) -> String {
    let sanitized: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}{sanitized}", labels::GO_LABEL_PREFIX)
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Attached {
    /// The window loop, on its own thread: a batch every window, a last
    /// batch when `stop` is set. Process events and deferred walks are
    /// handled meanwhile by [`handle_events`] on another thread.
    fn sample(
        mut self,
        out: tokio::sync::mpsc::Sender<ProfileBatch>,
        stop: Arc<AtomicBool>,
        wake: UnixStream,
    ) -> Result<(), EbpfCpuError> {
        let ring = self.sampler.take_events()?;
        let mut asleep = self.sampler.take_reader_asleep()?;
        let events_fd = ring.as_raw_fd();
        let compiled_fd = self.tables.compiled_fd();
        let filter = if self.config.targets.is_empty() {
            None
        } else {
            let rules = targets::Targets::new(&self.config.targets, std::path::Path::new("/proc"))
                .map_err(|e| EbpfCpuError::Map(format!("targets: {e}")))?;
            Some(targets::TargetFilter::new(
                rules,
                self.sampler.take_targets()?,
            ))
        };
        let shared = Arc::new(Mutex::new(Shared {
            ring,
            events: EventHandler::new(
                self.config.unwind_mode(),
                self.sampler.reports_mmaps(),
                filter,
            ),
            tracker: ProcessTracker::new("/proc")
                .with_python(!self.config.python_unwinding_disable)
                .with_php(!self.config.php_unwinding_disable)
                .with_ruby(!self.config.ruby_unwinding_disable)
                .with_v8(!self.config.v8_unwinding_disable)
                .with_jvm(!self.config.jvm_unwinding_disable),
            tables: self.tables,
        }));
        let event_thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            let wake = wake.try_clone()?;
            let poll_interval = self.config.event_buffer_poll_interval;
            std::thread::Builder::new()
                .name("ebpf-cpu-events".into())
                .spawn(move || {
                    raise_priority();
                    let fds = [Some(events_fd), Some(wake.as_raw_fd()), compiled_fd];
                    let fds: Vec<RawFd> = fds.into_iter().flatten().collect();
                    handle_events(&shared, &fds, &mut asleep, &stop, poll_interval)
                })?
        };
        let kernel = KernelImage::read();
        let mut measures = vec![(
            Measure::Cpu,
            ProfileType::cpu_samples(self.config.sampling_frequency),
        )];
        if self.config.off_cpu_threshold > 0.0 {
            measures.push((
                Measure::OffCpu,
                ProfileType::off_cpu(self.config.off_cpu_threshold),
            ));
        }
        let mut window_start = SystemTime::now();
        let mut window_end = Instant::now() + self.config.profiling_duration;
        let mut lottery = Lottery::new(&self.config, &self.counters.telemetry);
        let result = loop {
            let stopping = stop.load(Ordering::SeqCst);
            let draw = lottery
                .as_mut()
                .filter(|_| !stopping)
                .and_then(|l| l.draw_if_due(Instant::now()));
            if let Some(profiled) = draw {
                debug!(
                    profiled,
                    "probabilistic profiling: drawn for the interval starting now"
                );
                // A timer that cannot change now is tried again at the next draw.
                if let Err(error) = self.sampler.set_sampling(profiled) {
                    warn!(%error, profiled, "probabilistic profiling: cannot switch sampling");
                }
            }
            if !stopping && Instant::now() < window_end {
                let wake_at = lottery
                    .as_ref()
                    .map_or(window_end, |l| window_end.min(l.next_draw));
                wait_readable(
                    &[wake.as_raw_fd()],
                    wake_at.saturating_duration_since(Instant::now()),
                );
                continue;
            }
            if event_thread.is_finished() && !stopping {
                // It panicked: no process would be read any more.
                break Err(EbpfCpuError::EventThreadStopped);
            }
            let mut drained = match self.sampler.flip_and_drain() {
                Ok(d) => d,
                Err(e) => break Err(e),
            };
            let now = SystemTime::now();
            let stats = match self.sampler.stats() {
                Ok(stats) => stats,
                Err(e) => break Err(e),
            };
            let (processes, names) = {
                let mut shared = lock(&shared);
                // Events and deferred walks sent before the flip belong to this window.
                shared.read_events();
                if stopping {
                    // No window follows: every walk goes in this one.
                    shared.catch_up(None);
                }
                let Shared {
                    events,
                    tracker,
                    tables,
                    ..
                } = &mut *shared;
                drained.deferred = events.take_finished(drained.window);
                if let Err(e) = self.sampler.read_go_labels(&mut drained) {
                    warn!(error = %e, "cannot read goroutine labels");
                }
                let processes = sampled_processes(&drained, tracker, tables);
                let (names, unnamed) = interp_names(&drained, tracker, &mut events.names);
                self.counters.update(stats, tracker, drained.counts.len());
                self.counters.update_deferred(&mut events.results);
                self.counters.update_tables(tables);
                self.counters.update_interp(tracker, &events.names, unnamed);
                let gone = tracker.forget_exited();
                for &pid in &gone {
                    tables.remove_process(pid);
                }
                events.next_window(gone);
                (processes, names)
            };
            self.counters.update_stacks(&drained);
            let window = (
                unix_nanos(window_start),
                now.duration_since(window_start)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            let mut closed = false;
            for (measure, profile_type) in &measures {
                let batch = build_batch(
                    &drained,
                    *measure,
                    &processes,
                    &names,
                    &kernel,
                    profile_type.clone(),
                    window,
                    self.config.sample_labels(),
                );
                debug!(
                    ?measure,
                    samples = batch.samples.len(),
                    total = batch.total_value(),
                    "window read"
                );
                closed |= out.blocking_send(batch).is_err();
            }
            if closed {
                break Ok(());
            }
            window_start = now;
            window_end += self.config.profiling_duration;
            if stopping {
                break Ok(());
            }
        };
        // The event thread sees it within its poll timeout.
        stop.store(true, Ordering::SeqCst);
        if event_thread.join().is_err() {
            warn!("event thread panicked");
        }
        result
    }
}

/// The shared state, even if the other thread panicked holding it (every
/// update leaves it consistent).
fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the window's batch needs of each process it sampled (read now if
/// unknown); marks their tables used in this window, and has evicted ones
/// compiled and loaded again.
fn sampled_processes(
    drained: &Drained,
    tracker: &mut ProcessTracker,
    tables: &mut UnwindTables,
) -> HashMap<u32, Arc<ProcessInfo>> {
    let mut processes = HashMap::new();
    let sampled = drained
        .counts
        .iter()
        .chain(&drained.off_cpu)
        .map(|(key, _)| key.pid);
    // A walk finished with its process carries it: that process may be long
    // forgotten, its pid read now another's.
    let deferred: Vec<u32> = drained
        .deferred
        .iter()
        .filter(|f| f.process.is_none() || tracker.get(f.key.pid).is_some())
        .map(|f| f.key.pid)
        .collect();
    for pid in sampled.chain(deferred) {
        if processes.contains_key(&pid) {
            continue;
        }
        if tracker.get(pid).is_none() {
            events::observe(tracker, tables, pid);
        } else if tables.touch_process(pid) {
            // A table it uses was evicted: have it back.
            if let Some(info) = tracker.get(pid) {
                tables.update_process(pid, info, &tracker.proc_dir(pid));
            }
        }
        if let Some(info) = tracker.shared(pid) {
            processes.insert(pid, info);
        }
    }
    tables.next_window();
    processes
}

/// Reads of process events are at least this far apart: under process
/// churn every read is a wakeup, a timed pause and a context switch (in a
/// VM, exits to the hypervisor), so new processes are read in batches, each
/// within this of its start (walks that meet them sooner are deferred, with
/// a copy of the stack). At 800 processes a second, two agents side by
/// side: 11-22 ms/s of CPU with 10 ms, 3-9 ms/s with 20 ms.
const MIN_READ_SPACING: Duration = Duration::from_millis(20);

/// The event thread's nice value: a process that lives 100 ms must be read
/// while it lives, and on a busy node a thread at the default priority that
/// has just spent slices walking waits its turn behind every busy one.
const EVENT_THREAD_NICE: libc::c_int = -10;

/// Raises the calling thread's priority to [`EVENT_THREAD_NICE`] (it
/// reads processes in microseconds, so it costs others nothing); without
/// CAP_SYS_NICE it stays as it is.
fn raise_priority() {
    // SAFETY: plain syscalls on the calling thread's id.
    let refused = unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, EVENT_THREAD_NICE) != 0
    };
    if refused {
        debug!(error = %std::io::Error::last_os_error(), "the event thread keeps its priority");
    }
}

/// Between two slices of deferred walks, the lock is left free this long.
const WALK_PAUSE: Duration = Duration::from_millis(1);

/// The event loop, on its own thread: sleeps until one of `fds` (the ring
/// buffer, the stop waker, the table compiler) is readable, handles what
/// came, until `stop`. New processes are read soon (their
/// walks need their tables), at most once per [`MIN_READ_SPACING`]; after a
/// burst the poll interval spaces the reads, so a fork storm is read in
/// batches.
fn handle_events(
    shared: &Mutex<Shared>,
    fds: &[RawFd],
    asleep: &mut ReaderAsleep,
    stop: &AtomicBool,
    poll_interval: Duration,
) {
    let (mut walks_left, mut loader_reread) = (false, None);
    while !stop.load(Ordering::SeqCst) {
        if !walks_left {
            // Raised, the flag makes the next new process wake us; exits
            // never do, and are read at the latest when this times out.
            let timeout = if asleep.raise() {
                Duration::from_secs(1)
            } else {
                MIN_READ_SPACING
            };
            let until_reread =
                loader_reread.map(|due: Instant| due.saturating_duration_since(Instant::now()));
            wait_readable(fds, until_reread.map_or(timeout, |t| t.min(timeout)));
        }
        let started = Instant::now();
        let handled = {
            let mut shared = lock(shared);
            let handled = shared.read_events();
            walks_left = shared.catch_up(Some(events::WALK_SLICE));
            loader_reread = shared.events.next_loader_reread();
            handled
        };
        let spacing = match handled {
            // Walks go on after a pause in which the window thread can
            // take the lock (a mutex is not fair to a waiter).
            0 if walks_left => {
                std::thread::sleep(WALK_PAUSE);
                continue;
            }
            0 => continue,
            n if n >= events::EVENT_BURST => poll_interval,
            _ => MIN_READ_SPACING.min(poll_interval),
        };
        if !stop.load(Ordering::SeqCst) {
            std::thread::sleep(spacing.saturating_sub(started.elapsed()));
        }
    }
}

/// Blocks until one of `fds` is readable or `timeout` passes.
fn wait_readable(fds: &[RawFd], timeout: Duration) {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up: a wait shorter than 1 ms must not become a busy loop.
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs.
    // EINTR and other errors just end the wait early; the loop re-checks.
    unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
}

#[agent_core::async_trait]
impl Receiver for EbpfCpuReceiver {
    async fn start(&mut self) -> Result<(), ComponentError> {
        let counters = self.counters.take().ok_or("started twice")?;
        // Loading verifies the program (seconds on a large one): off the
        // runtime's threads.
        let config = self.config.clone();
        let attached =
            tokio::task::spawn_blocking(move || Self::attach(&config, counters)).await??;
        self.attached = Some(attached);
        Ok(())
    }

    async fn run(
        self: Box<Self>,
        sink: BatchSink,
        mut shutdown: Shutdown,
    ) -> Result<(), ComponentError> {
        let attached = self.attached.ok_or("run before start")?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        // Writing a byte wakes the sampling thread at once to stop.
        let (mut waker, wake) = UnixStream::pair()?;
        let worker = std::thread::Builder::new()
            .name("ebpf-cpu".into())
            .spawn(move || attached.sample(tx, thread_stop, wake))?;
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => sink.send(b).await,
                    None => break,
                },
                _ = shutdown.requested() => {
                    stop.store(true, Ordering::SeqCst);
                    let _ = waker.write_all(&[1]);
                    // The last window arrives, then the channel closes.
                    while let Some(b) = rx.recv().await {
                        sink.send(b).await;
                    }
                    break;
                }
            }
        }
        match worker.join() {
            Ok(result) => Ok(result?),
            Err(_) => {
                warn!("sampling thread panicked");
                Err("the sampling thread panicked".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpf::SampleKey;
    use deferred::FinishedSample;

    fn key(pid: u32, user_stack: u64, kernel: i32) -> SampleKey {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"worker");
        SampleKey {
            pid,
            tid: pid + 1,
            cpu: 1,
            kernel_stack_id: kernel,
            user_stack,
            go_labels: 0,
            comm,
        }
    }

    fn user_stack(frames: &[u64], status: u32) -> bpf::UserStack {
        let mut stack = bpf::UserStack {
            len: frames.len() as u32,
            status,
            frames: [0; bpf::MAX_STACK_DEPTH],
        };
        stack.frames[..frames.len()].copy_from_slice(frames);
        stack
    }

    #[test]
    fn python_frames_become_named_locations_in_place_and_unnamed_ones_stay() {
        use runtimes::python::{LineFormat, LineTable};
        let tag = runtimes::cpython_tag_word;
        // Leaf first: native leaf, a named Python frame, an unnamed one, native root.
        let words = [
            0x1000,
            tag(6, 7),
            0x7f00_0000_2000,
            tag(0, 9),
            0x7f00_0000_3000,
            0x2000,
        ];
        let drained = Drained {
            counts: vec![(key(42, 5, -1), 3)],
            user_stacks: HashMap::from([(5, user_stack(&words, 0))]),
            ..Drained::default()
        };
        let named = CodeInfo {
            name: "Worker.run".into(),
            filename: "/srv/app.py".into(),
            first_line: 10,
            // Bytes 0..6: line 11; 6..: line 13.
            lines: runtimes::LineSource::Table(LineTable::new(
                LineFormat::Lnotab,
                10,
                vec![0, 1, 6, 2],
            )),
        };
        let names = HashMap::from([(
            CodeKey {
                pid: 42,
                kind: bpf::interp_kind::CPYTHON,
                object: 0x7f00_0000_2000,
                validation: 7,
            },
            Arc::new(named),
        )]);
        let kernel = KernelImage { build_id: None };
        let b = build_batch(
            &drained,
            Measure::Cpu,
            &HashMap::new(),
            &names,
            &kernel,
            ProfileType::cpu_samples(19),
            (1, 2),
            SampleLabels::ALL,
        );
        let sample = &b.resolved_samples()[0];
        assert_eq!(sample.value, 3);
        let frames = &sample.frames;
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(frames[0].address, 0x1000);
        let line = &frames[1].lines[0];
        assert_eq!(
            (line.function.as_str(), line.filename.as_str(), line.line),
            ("Worker.run", "/srv/app.py", 13)
        );
        assert!(frames[2].lines.is_empty());
        assert_eq!(frames[2].address, 0x7f00_0000_3000);
        // The root is a return address: moved back into its call.
        assert_eq!(frames[3].address, 0x1fff);
        let kinds: Vec<FrameType> = b
            .stacks
            .get(b.samples[0].stack)
            .iter()
            .map(|&l| b.locations.get(l).frame_type)
            .collect();
        assert_eq!(kinds[1..3], [FrameType::CPython, FrameType::CPython]);
    }

    #[test]
    fn a_window_becomes_series_with_mapped_user_frames_and_kernel_frames() {
        let me = std::process::id();
        let here = a_window_becomes_series_with_mapped_user_frames_and_kernel_frames as fn()
            as usize as u64;
        let labelled = SampleKey {
            go_labels: 77,
            ..key(me, 7, -14)
        };
        let drained = Drained {
            counts: vec![
                (key(me, 7, 2), 5),
                (labelled, 2),
                (key(u32::MAX - 1, 0, 2), 1),
            ],
            go_labels: [(77, vec![("http.route".into(), "/cart".into())])].into(),
            kernel_stacks: [(2, vec![0xffff_ffff_8100_0000])].into(),
            user_stacks: [(7, user_stack(&[here, here + 1], 1))].into(),
            // Walks finished in user space: one sample each, with its own
            // stacks; the second with the image it was sampled in (before
            // an exec), whose mappings name its frames.
            deferred: vec![
                FinishedSample {
                    key: key(me, 0, -1),
                    process: None,
                    kernel: vec![0xffff_ffff_8100_0010],
                    user: user_stack(&[here], 0),
                },
                FinishedSample {
                    key: key(me, 0, -1),
                    process: Some(Arc::new(ProcessInfo {
                        comm: "before-exec".into(),
                        mappings: vec![process::ExecutableMapping {
                            start: here - 0x10,
                            end: here + 0x10,
                            offset: 0,
                            path: "/old/image".into(),
                            inode: 1,
                            build_id: None,
                        }],
                        ..ProcessInfo::default()
                    })),
                    kernel: Vec::new(),
                    user: user_stack(&[here], 0),
                },
            ],
            window: 0,
            ..Drained::default()
        };
        let mut tracker = ProcessTracker::new("/proc");
        let kernel = KernelImage {
            build_id: Some("beef".into()),
        };
        let pids = drained.counts.iter().map(|(k, _)| k.pid);
        let processes = pids
            .chain(drained.deferred.iter().map(|f| f.key.pid))
            .filter_map(|pid| Some((pid, tracker.shared(pid)?)))
            .collect();
        let b = build_batch(
            &drained,
            Measure::Cpu,
            &processes,
            &HashMap::new(),
            &kernel,
            ProfileType::cpu_samples(19),
            (1, 2),
            SampleLabels::ALL,
        );
        assert_eq!(b.total_value(), 10);
        let samples = b.resolved_samples();
        // Kernel frames first, then user frames in their mapping (this test binary).
        let first = &samples[0];
        assert_eq!(first.frames.len(), 3);
        assert_eq!(
            first.frames[0].mapping.as_ref().unwrap().filename,
            "[kernel.kallsyms]"
        );
        assert_eq!(first.frames[0].mapping.as_ref().unwrap().build_id, "beef");
        // The return address steps back into its call instruction.
        assert_eq!(first.frames[2].address, here);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let user = first.frames[1].mapping.as_ref().unwrap();
        assert_eq!(std::path::Path::new(&user.filename), exe);
        assert!(!user.build_id.is_empty());
        assert_eq!(first.series.get("pid"), Some(me.to_string().as_str()));
        assert_eq!(first.attributes.get("thread_comm"), Some("worker"));
        assert_eq!(first.attributes.get("cpu"), Some("1"));
        assert_eq!(first.attributes.get("unwind_status"), Some("truncated"));
        assert_eq!(first.attributes.len(), 4, "no goroutine labels");
        // No kernel stack: user frames only.
        assert_eq!(samples[1].frames.len(), 2);
        // Goroutine labels, their names made label names.
        assert_eq!(
            samples[1].attributes.get("__meta_go_label_http_route"),
            Some("/cart")
        );
        // A process gone before it was read keeps its samples, named by its thread.
        assert_eq!(samples[2].series.get("comm"), Some("worker"));
        assert_eq!(samples[2].frames.len(), 1);
        assert_eq!(tracker.vanished, 1);
        let finished = &samples[3];
        assert_eq!(finished.value, 1);
        assert_eq!(finished.frames.len(), 2);
        assert_eq!(finished.frames[0].address, 0xffff_ffff_8100_0010);
        assert_eq!(finished.frames[1].address, here);
        assert_eq!(finished.attributes.get("unwind_status"), Some("complete"));
        assert_eq!(
            finished.frames[1].mapping.as_ref().unwrap().filename,
            exe.to_string_lossy()
        );
        let before_exec = &samples[4];
        assert_eq!(before_exec.frames.len(), 1);
        assert_eq!(
            before_exec.frames[0].mapping.as_ref().unwrap().filename,
            "/old/image"
        );
    }
    #[test]
    fn off_cpu_time_goes_to_its_own_batch_in_nanoseconds() {
        let me = std::process::id();
        let drained = Drained {
            counts: vec![(key(me, 7, 2), 5)],
            off_cpu: vec![(key(me, 7, 2), 3_000_000_000), (key(me, 0, 3), 7)],
            kernel_stacks: [(2, vec![0xffff_ffff_8100_0000])].into(),
            // Its own stack ids: 2 here is another stack than the samples' 2.
            off_cpu_kernel_stacks: [
                (2, vec![0xffff_ffff_8200_0000, 0xffff_ffff_8200_0100]),
                (3, vec![0xffff_ffff_8300_0000]),
            ]
            .into(),
            user_stacks: [(7, user_stack(&[0x1000], 1))].into(),
            deferred: vec![FinishedSample {
                key: key(me, 0, -1),
                process: None,
                kernel: vec![0xffff_ffff_8100_0010],
                user: user_stack(&[0x1000], 0),
            }],
            ..Drained::default()
        };
        let build = |measure, profile_type| {
            build_batch(
                &drained,
                measure,
                &HashMap::new(),
                &HashMap::new(),
                &KernelImage { build_id: None },
                profile_type,
                (1, 2),
                SampleLabels::ALL,
            )
        };
        let cpu = build(Measure::Cpu, ProfileType::cpu_samples(19));
        // Its count and the CPU walk finished in user space.
        assert_eq!(cpu.total_value(), 5 + 1);
        let off = build(Measure::OffCpu, ProfileType::off_cpu(0.5));
        assert_eq!(off.profile_type.sample_type.kind, "off_cpu");
        assert_eq!(off.profile_type.sample_type.unit, "nanoseconds");
        assert_eq!(off.profile_type.period, 2);
        assert_eq!(off.total_value(), 3_000_000_000 + 7);
        let samples = off.resolved_samples();
        let values: Vec<i64> = samples.iter().map(|s| s.value).collect();
        assert_eq!(values, [3_000_000_000, 7]);
        // Kernel frames from the off-CPU stack map, then the user frame.
        let addresses: Vec<u64> = samples[0].frames.iter().map(|f| f.address).collect();
        assert_eq!(
            addresses,
            [0xffff_ffff_8200_0000, 0xffff_ffff_8200_00ff, 0x1000]
        );
        assert_eq!(samples[1].frames[0].address, 0xffff_ffff_8300_0000);
        // The user stacks of off-CPU keys count for naming like samples':
        // the sample's, the off-CPU key's (the other has none), the walk's.
        assert_eq!(drained.user_stacks_counted().count(), 3);
    }

    #[test]
    fn samples_differing_only_in_a_label_left_out_become_one() {
        let me = std::process::id();
        // One stack on two CPUs from two threads.
        let other = SampleKey {
            tid: me + 2,
            cpu: 3,
            ..key(me, 7, 2)
        };
        let drained = Drained {
            counts: vec![(key(me, 7, 2), 5), (other, 2)],
            kernel_stacks: [(2, vec![0xffff_ffff_8100_0000])].into(),
            user_stacks: [(7, user_stack(&[0x1000], 1))].into(),
            ..Drained::default()
        };
        let build = |labels| {
            build_batch(
                &drained,
                Measure::Cpu,
                &HashMap::new(),
                &HashMap::new(),
                &KernelImage { build_id: None },
                ProfileType::cpu_samples(19),
                (1, 2),
                labels,
            )
        };
        let all = build(SampleLabels::ALL);
        assert_eq!(all.samples.len(), 2);
        let no_cpu = build(SampleLabels {
            cpu: false,
            ..SampleLabels::ALL
        });
        assert_eq!(no_cpu.samples.len(), 2, "the threads still differ");
        assert!(no_cpu.resolved_samples()[0].attributes.get("cpu").is_none());
        let comm_only = build(SampleLabels {
            cpu: false,
            thread_id: false,
            thread_comm: true,
        });
        let merged = comm_only.resolved_samples();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].value, 7);
        assert_eq!(merged[0].attributes.get("thread_comm"), Some("worker"));
        assert!(merged[0].attributes.get("thread_id").is_none());
    }
}
