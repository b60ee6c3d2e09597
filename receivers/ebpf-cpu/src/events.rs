//! What the BPF program reports through its ring buffer, handled as it
//! comes on a thread of its own (a window's batch is built elsewhere, so a
//! process that lives 100 ms is read while it lives): process events, whose
//! /proc reads are coalesced, and deferred walks, finished here with the
//! mappings of the very image they were sampled in.

use std::collections::HashSet;
use std::time::Instant;

use aya::maps::{MapData, RingBuf};
use tracing::debug;

use crate::bpf::{self, DeferredSample, InterpCodeEvent, ProcessEvent, SampleKey, UnwindMode};
use crate::deferred::{FinishedSample, InterpRuns};
use crate::process::{ProcessInfo, ProcessTracker};
use crate::runtimes::{CodeKey, CodeNames};
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
}

/// Events handled in one go above which reads are spaced by the poll interval.
pub const EVENT_BURST: usize = 64;
/// Records after which pending process reads are done, mid-stream.
const PENDING_READS_EVERY: usize = 32;

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
    /// Processes that exited before they were read, forgotten as the read ends.
    unread_exits: HashSet<u32>,
    /// Finished deferred samples, with the sequence number of their window.
    finished: Vec<(u32, FinishedSample)>,
    /// Deferred walks since the metrics were last updated.
    pub results: DeferredResults,
    /// Interpreter frames' names, found as BPF first reports their objects.
    pub names: CodeNames,
}

impl EventHandler {
    /// A handler finishing walks in `mode`.
    pub fn new(mode: UnwindMode) -> Self {
        Self {
            mode,
            pending: HashSet::new(),
            unread_exits: HashSet::new(),
            finished: Vec::new(),
            results: DeferredResults::default(),
            names: CodeNames::default(),
        }
    }

    /// Handles every record in `ring`; how many were process events
    /// (deferred walks are bounded by the ring and must be finished while
    /// their processes live, so they never make the loop pause).
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

    fn read_pending(&mut self, tracker: &mut ProcessTracker, tables: &mut UnwindTables) {
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
                // A new process under a pid that exited in this read.
                self.unread_exits.remove(&event.pid);
                self.pending.insert(event.pid);
            }
            bpf::PROCESS_EXIT => {
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
                self.finish(&sample, tracker, tables);
                return false;
            }
            _ => {}
        }
        true
    }

    /// Finishes a deferred walk with the mappings of the very image it was
    /// sampled in: read now if pending or stale, never a later exec's.
    fn finish(
        &mut self,
        sample: &DeferredSample,
        tracker: &mut ProcessTracker,
        tables: &mut UnwindTables,
    ) {
        let pid = sample.pid;
        fn current<'t>(
            tracker: &'t ProcessTracker,
            sample: &DeferredSample,
        ) -> Option<&'t ProcessInfo> {
            tracker
                .get(sample.pid)
                .filter(|p| p.generation == Some(sample.generation))
        }
        let mut read = false;
        if self.pending.remove(&pid)
            || !current(tracker, sample).is_some_and(|p| p.covers(sample.pc))
        {
            observe(tracker, tables, pid);
            read = true;
        }
        let mode = self.mode;
        let walk = |tracker: &ProcessTracker, tables: &UnwindTables| {
            current(tracker, sample).map(|info| tables.finish_deferred(info, sample, mode))
        };
        let mut user = walk(tracker, tables);
        // Code in no mapping: a library mapped since the last read (found
        // when sampled, if the mmap hook is unavailable). Read once more.
        if user.is_some_and(|u| u.status == bpf::stack_status::UNKNOWN_CODE) && !read {
            observe(tracker, tables, pid);
            user = walk(tracker, tables).or(user);
        }
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
        let process = current(tracker, sample).and_then(|_| tracker.get_shared(pid));
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
