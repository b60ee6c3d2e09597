//! What the BPF program reports through its ring buffer, handled as it
//! comes on a thread of its own (a window's batch is built elsewhere, so a
//! process that lives 100 ms is read while it lives): process events, whose
//! /proc reads are coalesced, and deferred walks, whose processes are read
//! at once and which are finished here later, between reads, with the
//! mappings of the very image they were sampled in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tracing::debug;

use crate::bpf::{
    self, DeferredSample, InterpCodeEvent, ProcessEvent, SampleKey, UnwindMode, UserStack,
};
use crate::deferred::{FinishedSample, InterpRuns};
use crate::process::{ProcessInfo, ProcessTracker};
use crate::runtimes::{CodeKey, CodeNames};
use crate::targets::TargetFilter;
use crate::unwind::UnwindTables;

/// What the event thread and the window thread share (behind one lock).
pub struct Shared {
    /// The ring buffer of process events and deferred walks.
    pub ring: RingBuf<MapData>,
    /// Its handler.
    pub events: EventHandler,
    /// What is known of each process.
    pub tracker: ProcessTracker,
    /// The unwinder's tables.
    pub tables: UnwindTables,
}

impl Shared {
    /// Handles every record in the ring buffer; how many were process events.
    pub fn read_events(&mut self) -> usize {
        let Self {
            ring,
            events,
            tracker,
            tables,
        } = self;
        events.read(ring, tracker, tables)
    }

    /// Loads the tables compiled meanwhile, then walks queued samples for
    /// up to `walk_budget` (`None`: every one, waiting for no table);
    /// whether walks that could be done are left.
    pub fn catch_up(&mut self, walk_budget: Option<Duration>) -> bool {
        let Self {
            events,
            tracker,
            tables,
            ..
        } = self;
        events.load_compiled(tracker, tables);
        events.walk_queued(tracker, tables, walk_budget)
    }
}

/// Events handled in one go above which reads are spaced by the poll interval.
pub const EVENT_BURST: usize = 64;
/// Records after which pending process reads are done, mid-stream.
const PENDING_READS_EVERY: usize = 32;
/// Deferred walks queued at most (18.5 KiB each: 4.7 MiB); past this one
/// is walked at once.
const MAX_QUEUED: usize = 256;
/// Time spent walking queued samples between two reads of the ring buffer.
pub const WALK_SLICE: Duration = Duration::from_millis(5);
/// Without an mmap hook, how long after its exec a process is read again:
/// the loader has mapped its libraries by then (it maps them all before it
/// relocates any), so their tables compile while the process starts up,
/// not once it is first sampled in them.
const LOADER_REREAD_AFTER: Duration = Duration::from_millis(50);
/// Processes waiting for that read, at most (an exec storm past this is
/// found when sampled, as with no second read).
const MAX_LOADER_REREADS: usize = 4096;

/// A deferred walk, its process read.
struct Queued {
    sample: Box<DeferredSample>,
    /// The process as read for the image sampled (it may be gone since).
    process: Arc<ProcessInfo>,
    /// Whether its process may be read again (it was not read for it).
    reread: bool,
}

/// Whether queued walks' processes wait for a table, asked once per
/// process image (a queue holds many samples of few processes).
#[derive(Default)]
struct Awaits(HashMap<*const ProcessInfo, bool>);

impl Awaits {
    fn check(&mut self, tables: &UnwindTables, queued: &Queued) -> bool {
        *self
            .0
            .entry(Arc::as_ptr(&queued.process))
            .or_insert_with(|| tables.awaits_tables(&queued.process))
    }
}

/// What is known of the image `sample` was taken in (not of a later exec).
fn image<'t>(tracker: &'t ProcessTracker, sample: &DeferredSample) -> Option<&'t ProcessInfo> {
    tracker
        .get(sample.pid)
        .filter(|p| p.generation == Some(sample.generation))
}

/// Deferred walks since the metrics were last updated.
#[derive(Default)]
pub struct DeferredResults {
    /// Finished in user space.
    pub finished: u64,
    /// Left as BPF walked them (the process was gone or had exec'd).
    pub unfinished: u64,
    /// The longest time from a sample to its walk's end, in nanoseconds.
    pub max_latency_ns: u64,
}

/// Handles what the ring buffer brings, in order: process events (whose
/// /proc reads are put off to the end of the read, so a loader mapping ten
/// libraries costs one read) and deferred walks (which first read their
/// process if it is pending or its mappings are stale).
pub struct EventHandler {
    mode: UnwindMode,
    /// Processes to (re)read before the read ends.
    pending: HashSet<u32>,
    /// Exec'd processes to read again once their loader has mapped their
    /// libraries, by when; `None` when an mmap hook reports those mappings.
    loader_rereads: Option<VecDeque<(Instant, u32)>>,
    /// Processes that exited before they were read, forgotten as the read ends.
    unread_exits: HashSet<u32>,
    /// Finished deferred samples, with the sequence number of their window.
    finished: Vec<(u32, FinishedSample)>,
    /// Deferred walks to do, oldest first, at most [`MAX_QUEUED`].
    queued: VecDeque<Queued>,
    /// Processes gone whose interpreter names wait for their queued walks.
    names_kept: HashSet<u32>,
    /// Deferred walks since the metrics were last updated.
    pub results: DeferredResults,
    /// Interpreter frames' names, found as BPF first reports their objects.
    pub names: CodeNames,
    /// With targets: which processes are sampled, hence worth reading.
    targets: Option<TargetFilter>,
}

impl EventHandler {
    /// A handler finishing walks in `mode`; `mmaps_reported` when BPF
    /// reports new executable mappings (else exec'd processes are read a
    /// second time, after their loader); `targets` when only some
    /// processes are sampled.
    pub fn new(mode: UnwindMode, mmaps_reported: bool, targets: Option<TargetFilter>) -> Self {
        Self {
            mode,
            pending: HashSet::new(),
            loader_rereads: (!mmaps_reported).then(VecDeque::new),
            unread_exits: HashSet::new(),
            finished: Vec::new(),
            queued: VecDeque::new(),
            names_kept: HashSet::new(),
            results: DeferredResults::default(),
            names: CodeNames::default(),
            targets,
        }
    }

    /// Handles every record in `ring`; how many were process events
    /// (deferred walks are bounded by the ring and their processes must be
    /// read while they live, so they never make the loop pause).
    fn read(
        &mut self,
        ring: &mut RingBuf<MapData>,
        tracker: &mut ProcessTracker,
        tables: &mut UnwindTables,
    ) -> usize {
        let (mut handled, mut records) = (0usize, 0usize);
        while let Some(item) = ring.next() {
            handled += usize::from(self.handle(&item, tracker, tables));
            drop(item);
            records += 1;
            // A long stream of records does not hold back a new process's read.
            if records.is_multiple_of(PENDING_READS_EVERY) {
                self.read_pending(tracker, tables);
            }
        }
        self.read_pending(tracker, tables);
        handled
    }

    /// When the next read after a loader is due.
    pub fn next_loader_reread(&self) -> Option<Instant> {
        self.loader_rereads.as_ref()?.front().map(|&(due, _)| due)
    }

    fn read_pending(&mut self, tracker: &mut ProcessTracker, tables: &mut UnwindTables) {
        if let Some(rereads) = &mut self.loader_rereads {
            let now = Instant::now();
            while let Some(&(_, pid)) = rereads.front().filter(|&&(due, _)| due <= now) {
                rereads.pop_front();
                if tracker.get(pid).is_some_and(|p| !p.exited) {
                    self.pending.insert(pid);
                }
            }
        }
        for pid in std::mem::take(&mut self.pending) {
            observe(tracker, tables, pid);
        }
        if !self.unread_exits.is_empty() {
            let pids: Vec<u32> = self.unread_exits.drain().collect();
            tables.forget_unread(&pids);
        }
    }

    /// Handles one record; true when it was a process event.
    fn handle(
        &mut self,
        record: &[u8],
        tracker: &mut ProcessTracker,
        tables: &mut UnwindTables,
    ) -> bool {
        if record.len() < std::mem::size_of::<ProcessEvent>() {
            return false;
        }
        // SAFETY: every record starts with a `struct process_event`; read unaligned.
        let event: ProcessEvent = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        match event.kind {
            bpf::PROCESS_FIRST_SEEN
            | bpf::PROCESS_EXEC
            | bpf::PROCESS_MAPPINGS_CHANGED
            | bpf::PROCESS_MMAP_EXEC => {
                let exec = event.kind == bpf::PROCESS_EXEC;
                if let Some(targets) = &mut self.targets {
                    // A process never sampled needs no read.
                    if !targets.admits(event.pid, event.kind) {
                        self.pending.remove(&event.pid);
                        return true;
                    }
                }
                // A new process under a pid that exited in this read.
                self.unread_exits.remove(&event.pid);
                self.pending.insert(event.pid);
                if exec {
                    self.reread_after_loader(event.pid);
                }
            }
            bpf::PROCESS_EXIT => {
                if let Some(targets) = &mut self.targets {
                    targets.exited(event.pid);
                }
                // Its memory is gone by the time this is read: a pending
                // read would find nothing.
                self.pending.remove(&event.pid);
                if tracker.get(event.pid).is_some() {
                    // Forgotten after the window it was sampled in.
                    tracker.exited(event.pid);
                } else {
                    // Gone before it could be read: nothing waits for it.
                    self.unread_exits.insert(event.pid);
                }
            }
            bpf::PROCESS_INTERP_CODE if record.len() >= std::mem::size_of::<InterpCodeEvent>() => {
                // SAFETY: a `struct interp_code_event` (kind says so, length checked); read unaligned.
                let code: InterpCodeEvent =
                    unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
                // Named now, while the object most likely lives; the
                // process is read first if that is pending.
                if self.pending.remove(&code.pid) {
                    observe(tracker, tables, code.pid);
                }
                let runtime = tracker.get(code.pid).and_then(|p| p.runtime.as_ref());
                let key = CodeKey {
                    pid: code.pid,
                    kind: code.interp,
                    object: code.object,
                    validation: code.validation,
                };
                self.names.resolve(key, runtime);
                return false;
            }
            bpf::PROCESS_DEFERRED_SAMPLE
                if record.len() >= std::mem::size_of::<DeferredSample>() =>
            {
                // SAFETY: a `struct deferred_sample` (kind says so, length checked); read unaligned.
                let sample: DeferredSample =
                    unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
                self.take_deferred(&sample, tracker, tables);
                return false;
            }
            _ => {}
        }
        true
    }

    /// Schedules `pid`'s second read, if exec'd processes get one.
    fn reread_after_loader(&mut self, pid: u32) {
        match &mut self.loader_rereads {
            Some(rereads) if rereads.len() < MAX_LOADER_REREADS => {
                rereads.push_back((Instant::now() + LOADER_REREAD_AFTER, pid));
            }
            _ => {}
        }
    }

    /// Takes a deferred walk in: reads its process now if pending or stale
    /// (while it lives), and queues the walk with the mappings of the very
    /// image it was sampled in, never a later exec's. Walks cost far more
    /// than reads (a deep stack through a large table: milliseconds), so
    /// they wait for [`Self::walk_queued`]: a backlog of them never holds
    /// back the reading of a process started meanwhile.
    fn take_deferred(
        &mut self,
        sample: &DeferredSample,
        tracker: &mut ProcessTracker,
        tables: &mut UnwindTables,
    ) {
        let mut read = false;
        if self.pending.remove(&sample.pid)
            || !image(tracker, sample).is_some_and(|p| p.covers(sample.pc))
        {
            observe(tracker, tables, sample.pid);
            read = true;
        }
        let Some(process) = image(tracker, sample).and_then(|_| tracker.get_shared(sample.pid))
        else {
            // Gone before it was read, or exec'd since.
            self.record(sample, None, None, tables);
            return;
        };
        if self.queued.len() >= MAX_QUEUED {
            // Full: the oldest that waits for no table is walked now (else
            // the oldest, with the tables there are).
            let mut awaits = Awaits::default();
            let ready = self
                .queued
                .iter()
                .position(|q| !awaits.check(tables, q))
                .unwrap_or(0);
            if let Some(queued) = self.queued.remove(ready) {
                self.walk(queued, tracker, tables);
            }
        }
        self.queued.push_back(Queued {
            sample: Box::new(*sample),
            process,
            reread: !read,
        });
    }

    /// Walks queued samples, oldest first, except those whose tables are
    /// being compiled, until `budget` is spent (`None`: all of them, as
    /// they are); whether any that could be walked are left.
    pub fn walk_queued(
        &mut self,
        tracker: &mut ProcessTracker,
        tables: &mut UnwindTables,
        budget: Option<Duration>,
    ) -> bool {
        let started = Instant::now();
        let mut waiting = VecDeque::new();
        let mut awaits = Awaits::default();
        let mut walked = false;
        while let Some(queued) = self.queued.pop_front() {
            if walked && budget.is_some_and(|b| started.elapsed() >= b) {
                self.queued.push_front(queued);
                break;
            }
            if budget.is_some() && awaits.check(tables, &queued) {
                waiting.push_back(queued);
                continue;
            }
            self.walk(queued, tracker, tables);
            walked = true;
        }
        let left = !self.queued.is_empty();
        waiting.append(&mut self.queued);
        self.queued = waiting;
        left
    }

    /// Finishes a queued walk.
    fn walk(&mut self, queued: Queued, tracker: &mut ProcessTracker, tables: &mut UnwindTables) {
        let Queued {
            sample,
            mut process,
            reread,
        } = queued;
        let mut user = tables.finish_deferred(&process, &sample, self.mode);
        // Code in no mapping: a library mapped since the last read (found
        // when sampled, if the mmap hook is unavailable). Read once more,
        // if the process still runs that image.
        let running = |tracker: &ProcessTracker| image(tracker, &sample).is_some_and(|p| !p.exited);
        if user.status == bpf::stack_status::UNKNOWN_CODE && reread && running(tracker) {
            observe(tracker, tables, sample.pid);
            let newer = image(tracker, &sample).and_then(|_| tracker.get_shared(sample.pid));
            if let Some(newer) = newer.filter(|p| !Arc::ptr_eq(p, &process)) {
                if tables.awaits_tables(&newer) {
                    // The library's table is on its way: walked once it is.
                    self.queued.push_back(Queued {
                        sample,
                        process: newer,
                        reread: false,
                    });
                    return;
                }
                user = tables.finish_deferred(&newer, &sample, self.mode);
                process = newer;
            }
        }
        self.record(&sample, Some(user), Some(process), tables);
    }

    /// After a window: forgets the interpreter names of the processes
    /// `gone`, once no queued walk of theirs needs them.
    pub fn next_window(&mut self, gone: Vec<u32>) {
        self.names_kept.extend(gone);
        let queued: HashSet<u32> = self.queued.iter().map(|q| q.sample.pid).collect();
        let forget: Vec<u32> = self
            .names_kept
            .iter()
            .filter(|pid| !queued.contains(pid))
            .copied()
            .collect();
        self.names_kept.retain(|pid| queued.contains(pid));
        self.names.next_window(&forget);
    }

    /// Loads the tables compiled since the last call and writes again the
    /// entries of the processes that waited for them.
    fn load_compiled(&mut self, tracker: &ProcessTracker, tables: &mut UnwindTables) {
        let waited = tables.load_compiled();
        for pid in waited {
            // An exited process's entry is gone from the kernel: not put back.
            if let Some(info) = tracker.get(pid).filter(|p| !p.exited) {
                tables.update_process(pid, info, &tracker.proc_dir(pid));
            }
        }
    }

    /// Keeps `sample`'s walk, finished here as `user` for `process`, or,
    /// when its mappings were never read, as BPF would have finished it.
    fn record(
        &mut self,
        sample: &DeferredSample,
        user: Option<UserStack>,
        process: Option<Arc<ProcessInfo>>,
        tables: &UnwindTables,
    ) {
        let pid = sample.pid;
        let finished = user.is_some();
        let user = user.unwrap_or_else(|| {
            // Gone before it was read, or exec'd since: its mappings are not
            // known, so frame pointers only, as the BPF walker would have.
            let mut user = tables.walk_deferred(sample, &[], self.mode, &mut InterpRuns::default());
            if user.status == bpf::stack_status::UNKNOWN_CODE {
                user.status = bpf::stack_status::NO_TABLE;
            }
            user
        });
        if finished {
            self.results.finished += 1;
        } else {
            self.results.unfinished += 1;
        }
        let latency = bpf::monotonic_ns().saturating_sub(sample.time_ns);
        self.results.max_latency_ns = self.results.max_latency_ns.max(latency);
        debug!(
            pid,
            finished,
            status = bpf::stack_status_name(user.status),
            frames = user.len,
            latency_us = latency / 1000,
            "deferred walk"
        );
        let key = SampleKey {
            pid,
            tid: sample.tid,
            cpu: sample.cpu,
            kernel_stack_id: -1,
            user_stack: 0,
            go_labels: sample.go_labels,
            comm: sample.comm,
        };
        self.finished.push((
            sample.window,
            FinishedSample {
                key,
                process: process.filter(|_| finished),
                kernel: sample.kernel_frames().to_vec(),
                user,
            },
        ));
    }

    /// The samples finished so far of windows up to `window` (a record
    /// queued behind one still being written may come after its window
    /// was drained: it goes with the next).
    pub fn take_finished(&mut self, window: u32) -> Vec<FinishedSample> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.finished)
            .into_iter()
            .partition(|(w, _)| window.wrapping_sub(*w) as i32 >= 0);
        self.finished = later;
        due.into_iter().map(|(_, f)| f).collect()
    }
}

/// (Re)reads `pid` and gives the unwinder its mappings and tables; notes
/// the exec generation the read saw when no exec raced with it.
pub fn observe(tracker: &mut ProcessTracker, tables: &mut UnwindTables, pid: u32) {
    let started = Instant::now();
    let before = tables.generation(pid);
    if tracker.observe(pid) {
        let after = tables.generation(pid);
        tracker.set_generation(pid, before.filter(|_| before == after));
    }
    let read = started.elapsed();
    if let Some(info) = tracker.get(pid) {
        tables.update_process(pid, info, &tracker.proc_dir(pid));
    }
    debug!(pid, ?read, total = ?started.elapsed(), "process read");
}
