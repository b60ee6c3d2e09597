//! Finishing, in user space, the user stack walks the BPF program handed
//! over (`struct deferred_sample`): it stops where a process's mappings or
//! tables are not in the kernel yet (its first milliseconds, a library just
//! mapped) and sends the registers of that frame and a copy of the stack
//! above it. Once the tables exist, [`finish_walk`] goes on from there with
//! the same rules the BPF walker follows (`unwind_frame` in ebpf/cpu.bpf.c),
//! reading the copy instead of the process. Interpreter frames cannot be
//! read after the fact (the interpreter has moved on), so BPF reads those
//! the walk has not reached at the sample and sends them along
//! ([`InterpRuns`]); they are placed as the walk meets their loop frames.

use agent_unwind_table::{RowKind, UnwindRow};

use crate::bpf::{
    interp_kind, stack_status, DeferredSample, InterpInfo, SampleKey, UnwindMapping, UnwindMode,
    UserStack, INTERP_RUN_END, MAX_STACK_DEPTH, TABLE_ANONYMOUS, TABLE_NONE, TABLE_PENDING,
    USER_ADDRESS_MAX,
};

/// A sample whose user stack walk was finished here.
#[derive(Clone, Debug)]
pub struct FinishedSample {
    /// Its key (no stack ids: the stacks are below).
    pub key: SampleKey,
    /// The process image it was finished with (its frames lie in these
    /// mappings, even if the process exec'd since); `None` when unknown.
    pub process: Option<std::sync::Arc<crate::process::ProcessInfo>>,
    /// Kernel frames, leaf first.
    pub kernel: Vec<u64>,
    /// The whole user stack and how its walk ended.
    pub user: UserStack,
}

/// Registers of the frame a walk goes on from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    /// Instruction pointer (or return address).
    pub pc: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer.
    pub bp: u64,
    /// `pc` is where execution is, not a return address.
    pub exact_pc: bool,
}

impl Registers {
    /// Where the BPF walk of `sample` stopped.
    pub fn of(sample: &DeferredSample) -> Self {
        Self {
            pc: sample.pc,
            sp: sample.sp,
            bp: sample.bp,
            exact_pc: sample.exact_pc != 0,
        }
    }
}

/// The stack memory the BPF program copied.
#[derive(Clone, Copy, Debug)]
pub struct StackCopy<'a> {
    /// Address of the first byte.
    pub base: u64,
    /// The bytes.
    pub bytes: &'a [u8],
    /// The copy stopped at its size limit, not at the stack's end.
    pub cut: bool,
}

impl<'a> StackCopy<'a> {
    /// The copy in `sample`.
    pub fn of(sample: &'a DeferredSample) -> Self {
        let bytes = sample.stack_copy();
        Self {
            base: sample.sp,
            bytes,
            cut: bytes.len() == crate::bpf::DEFERRED_STACK_BYTES,
        }
    }

    /// The 8 bytes at `address`, or the status a walk ends with: past a
    /// copy that was cut, the copy was too short; anywhere else the memory
    /// is not the stack.
    fn read(&self, address: u64) -> Result<u64, u32> {
        // Registers hold anything: every address computation wraps or checks.
        let end = self.base.saturating_add(self.bytes.len() as u64);
        if address >= self.base && address.checked_add(8).is_some_and(|a| a <= end) {
            let at = (address - self.base) as usize;
            let word: [u8; 8] = self.bytes[at..at + 8].try_into().expect("8 bytes");
            return Ok(u64::from_le_bytes(word));
        }
        if self.cut && address >= end.saturating_sub(7) {
            Err(stack_status::COPY_EXHAUSTED)
        } else {
            Err(stack_status::READ_FAILED)
        }
    }
}

/// The interpreter frames BPF read at the sample for the loop frames its
/// walk had not reached, handed out run by run as the walk meets those
/// frames (each loop frame stands for one run, as in the BPF walker).
/// V8's frames, which lie on the native stack itself, are read as the walk
/// meets them instead ([`V8Frames`]).
#[derive(Clone, Default)]
pub struct InterpRuns<'a> {
    /// The interpreter loop's code: `[start, end)` ranges.
    loops: Vec<(u64, u64)>,
    /// The runs left, leaf first, each closed by [`INTERP_RUN_END`].
    words: &'a [u64],
    /// The V8 a process runs, if it runs one.
    v8: Option<&'a dyn V8Frames>,
}

impl std::fmt::Debug for InterpRuns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpRuns")
            .field("loops", &self.loops)
            .field("words", &self.words)
            .field("v8", &self.v8.is_some())
            .finish()
    }
}

/// Reads V8's frames as the BPF walker does (`v8_step` in
/// ebpf/runtimes/v8.h), from the stack copy and the process's memory.
pub trait V8Frames {
    /// Whether `pc` is V8's code: its builtins, or code it generated
    /// (anonymous memory, or in no mapping).
    fn is_v8_code(&self, pc: u64, mapping: Option<&UnwindMapping>) -> bool;
    /// The JavaScript frame at `regs` (its slots read with `slot`, an
    /// address below the frame pointer): its two words, or `None` when it
    /// is another of V8's frames.
    fn frame(&self, regs: &Registers, slot: &dyn Fn(u64) -> Option<u64>) -> Option<[u64; 2]>;
}

impl<'a> InterpRuns<'a> {
    /// `words` (see [`DeferredSample::interp_runs`]) for a process running
    /// the interpreter `interp`; none when it runs none (or V8, whose frames
    /// are no runs).
    pub fn new(interp: Option<&InterpInfo>, words: &'a [u64]) -> Self {
        let Some(interp) =
            interp.filter(|i| i.kind != interp_kind::NONE && i.kind != interp_kind::V8)
        else {
            return Self::default();
        };
        Self {
            loops: vec![
                (interp.loop_start, interp.loop_end),
                (interp.cold_start, interp.cold_end),
            ],
            words,
            v8: None,
        }
    }

    /// Reads V8's frames with `v8` as the walk meets them.
    pub fn with_v8(mut self, v8: &'a dyn V8Frames) -> Self {
        self.v8 = Some(v8);
        self
    }

    /// The frames (two words each) to emit in place of the frame at `pc`:
    /// `None` when it is no loop frame or no runs are left.
    fn take(&mut self, pc: u64) -> Option<&'a [u64]> {
        if self.words.is_empty() || !self.loops.iter().any(|&(s, e)| s <= pc && pc < e) {
            return None;
        }
        let end = self
            .words
            .iter()
            .position(|&w| w == INTERP_RUN_END)
            .unwrap_or(self.words.len());
        let run = &self.words[..end];
        self.words = self.words.get(end + 1..).unwrap_or(&[]);
        Some(run)
    }
}

/// Rows of the tables in the kernel, by table id.
pub trait RowSource {
    /// The last row at or below `pc` in table `table_id` of `rows` rows:
    /// `Err(())` when the table is not loaded, `Ok(None)` when no row is.
    #[allow(clippy::result_unit_err)]
    fn row(&mut self, table_id: u32, rows: u32, pc: u32) -> Result<Option<UnwindRow>, ()>;
}

/// The last row at or below `pc` in `rows`, as the BPF walker searches.
pub fn find_row(rows: &[UnwindRow], pc: u32) -> Option<UnwindRow> {
    let i = rows.partition_point(|r| r.pc <= pc).checked_sub(1)?;
    Some(rows[i])
}

/// The mapping holding `pc` in `mappings` (sorted by start).
fn find_mapping(mappings: &[UnwindMapping], pc: u64) -> Option<&UnwindMapping> {
    let i = mappings.partition_point(|m| m.start <= pc).checked_sub(1)?;
    Some(&mappings[i]).filter(|m| pc < m.end)
}

/// Either go on (`None`) or end with a status.
type Step = Option<u32>;

fn frame_pointer_step(regs: &mut Registers, copy: &StackCopy, failure: u32) -> Step {
    if regs.bp == 0 {
        // _start and thread entry clear rbp: the chain's end.
        return Some(stack_status::COMPLETE);
    }
    let read = |address: u64| {
        copy.read(address).map_err(|status| {
            if status == stack_status::COPY_EXHAUSTED {
                status
            } else {
                failure
            }
        })
    };
    let (ra, next) = match (read(regs.bp.wrapping_add(8)), read(regs.bp)) {
        (Ok(ra), Ok(next)) => (ra, next),
        (Err(status), _) | (_, Err(status)) => return Some(status),
    };
    if next != 0 && next <= regs.bp {
        return Some(failure);
    }
    *regs = Registers {
        pc: ra,
        sp: regs.bp.wrapping_add(16),
        bp: next,
        exact_pc: false,
    };
    None
}

fn table_step(regs: &mut Registers, copy: &StackCopy, row: &UnwindRow) -> Step {
    let cfa = match row.kind() {
        RowKind::End => return Some(stack_status::COMPLETE),
        RowKind::CfaRsp => regs.sp.wrapping_add(u64::from(row.cfa_offset)),
        RowKind::CfaRbp => regs.bp.wrapping_add(u64::from(row.cfa_offset)),
        RowKind::CfaPlt => {
            let past = (regs.pc & 15) >= row.rbp_offset as u8 as u64;
            regs.sp
                .wrapping_add(u64::from(row.cfa_offset))
                .wrapping_add(if past { 8 } else { 0 })
        }
        RowKind::Signal => {
            // sp is at the kernel's ucontext: uc_mcontext starts 40 bytes
            // in; rbp, rsp and rip are its 11th, 16th and 17th words.
            let context = regs.sp.wrapping_add(40);
            let word = |n: u64| copy.read(context.wrapping_add(n));
            return match (word(80), word(120), word(128)) {
                (Ok(bp), Ok(sp), Ok(pc)) => {
                    *regs = Registers {
                        pc,
                        sp,
                        bp,
                        exact_pc: true,
                    };
                    None
                }
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => Some(s),
            };
        }
        RowKind::None => return Some(stack_status::NO_ROW),
        RowKind::Unsupported => return Some(stack_status::UNSUPPORTED_RULE),
    };
    let ra = match copy.read(cfa.wrapping_sub(8)) {
        Ok(ra) => ra,
        Err(status) => return Some(status),
    };
    let mut bp = regs.bp;
    if row.kind() != RowKind::CfaPlt && row.rbp_offset != 0 {
        match copy.read(cfa.wrapping_add_signed(i64::from(row.rbp_offset) * 8)) {
            Ok(saved) => bp = saved,
            Err(status) => return Some(status),
        }
    }
    *regs = Registers {
        pc: ra,
        sp: cfa,
        bp,
        exact_pc: false,
    };
    None
}

/// Goes on with `stack` (the frames BPF walked, the last of them at
/// `regs`) from `regs`'s caller, reading `copy`, with `mappings` (what the
/// BPF walker would see for the process now) and their tables from `rows`,
/// placing `interp`'s runs at the loop frames; sets the frames and how the
/// walk ended. Complete only when the walk reached the outermost frame.
pub fn finish_walk(
    stack: &mut UserStack,
    mut regs: Registers,
    copy: &StackCopy,
    mappings: &[UnwindMapping],
    mode: UnwindMode,
    rows: &mut impl RowSource,
    interp: &mut InterpRuns,
) {
    let mut recorded = true;
    loop {
        let mapping = find_mapping(mappings, regs.pc);
        let v8 = interp.v8.filter(|v8| v8.is_v8_code(regs.pc, mapping));
        if !recorded {
            let slot = |address: u64| copy.read(address).ok();
            let status = match v8.and_then(|v8| v8.frame(&regs, &slot)) {
                Some(words) => push_words(stack, &words),
                None => record(stack, regs.pc, interp),
            };
            if let Some(status) = status {
                stack.status = status;
                return;
            }
        }
        recorded = false;
        let step = match mapping {
            // V8 keeps a frame pointer in all it runs.
            _ if v8.is_some() => {
                frame_pointer_step(&mut regs, copy, stack_status::FRAME_POINTER_FAILED)
            }
            None => frame_pointer_step(&mut regs, copy, stack_status::UNKNOWN_CODE),
            Some(m) if m.table_id == TABLE_ANONYMOUS => {
                frame_pointer_step(&mut regs, copy, stack_status::UNKNOWN_CODE)
            }
            Some(m) if m.table_id == TABLE_NONE || mode == UnwindMode::FramePointers => {
                frame_pointer_step(&mut regs, copy, stack_status::FRAME_POINTER_FAILED)
            }
            Some(m) if m.table_id == TABLE_PENDING => {
                frame_pointer_step(&mut regs, copy, stack_status::NO_TABLE)
            }
            Some(m) => {
                // A return address may be one past a call that ends its function.
                let at = if regs.exact_pc {
                    regs.pc
                } else {
                    regs.pc.wrapping_sub(1)
                };
                match rows.row(m.table_id, m.rows, at.wrapping_sub(m.bias) as u32) {
                    Err(()) => frame_pointer_step(&mut regs, copy, stack_status::NO_TABLE),
                    Ok(row)
                        if (mode == UnwindMode::Mixed || interp.v8.is_some())
                            && row.is_none_or(|r| {
                                matches!(r.kind(), RowKind::None | RowKind::Unsupported)
                            }) =>
                    {
                        frame_pointer_step(&mut regs, copy, stack_status::FRAME_POINTER_FAILED)
                    }
                    Ok(None) => Some(stack_status::NO_ROW),
                    Ok(Some(row)) => table_step(&mut regs, copy, &row),
                }
            }
        };
        if let Some(status) = step {
            stack.status = status;
            return;
        }
    }
}

/// Appends `words` (one interpreter frame) to `stack`, or the status the
/// walk ends with.
fn push_words(stack: &mut UserStack, words: &[u64]) -> Option<u32> {
    let len = stack.len as usize;
    if len + words.len() > MAX_STACK_DEPTH {
        return Some(stack_status::TRUNCATED);
    }
    stack.frames[len..len + words.len()].copy_from_slice(words);
    stack.len = (len + words.len()) as u32;
    None
}

/// Appends the frame at `pc` to `stack` (the interpreter frames of its run
/// when it is a loop frame), or the status the walk ends with.
fn record(stack: &mut UserStack, pc: u64, interp: &mut InterpRuns) -> Option<u32> {
    let len = (stack.len as usize).min(MAX_STACK_DEPTH);
    if len >= MAX_STACK_DEPTH {
        return Some(stack_status::TRUNCATED);
    }
    if pc == 0 {
        return Some(stack_status::COMPLETE);
    }
    if pc > USER_ADDRESS_MAX {
        // Not code: a broken frame chain (and never to be taken for an
        // interpreter frame's tag word), as the BPF walker decides.
        return Some(stack_status::FRAME_POINTER_FAILED);
    }
    let frames = match interp.take(pc) {
        // A loop frame's own pc stands for nothing its frames do not say.
        Some(run) if !run.is_empty() => run,
        _ => std::slice::from_ref(&pc),
    };
    // Whole interpreter frames only, as the BPF walker emits them.
    frames.chunks(2).find_map(|frame| push_words(stack, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables as plain vectors.
    struct Rows(Vec<(u32, Vec<UnwindRow>)>);

    impl RowSource for Rows {
        fn row(&mut self, table_id: u32, _rows: u32, pc: u32) -> Result<Option<UnwindRow>, ()> {
            let (_, rows) = self.0.iter().find(|(id, _)| *id == table_id).ok_or(())?;
            Ok(find_row(rows, pc))
        }
    }

    fn row(pc: u32, kind: RowKind, cfa_offset: u16, rbp_offset: i8) -> UnwindRow {
        UnwindRow {
            pc,
            kind: kind as u8,
            rbp_offset,
            cfa_offset,
        }
    }

    /// Where the copied stack starts.
    const SP: u64 = 0x7000_0000;

    /// An object mapped at bias 0x40_0000 with table 3, and JIT code.
    fn mappings() -> Vec<UnwindMapping> {
        vec![
            UnwindMapping {
                start: 0x40_1000,
                end: 0x40_9000,
                bias: 0x40_0000,
                table_id: 3,
                rows: 4,
            },
            UnwindMapping {
                start: 0x9000_0000,
                end: 0x9001_0000,
                bias: 0,
                table_id: TABLE_ANONYMOUS,
                rows: 0,
            },
        ]
    }

    /// Table 3: leaf (CFA rsp+24: two locals) -> middle (rsp+16, rbp
    /// saved at CFA-16) -> main (the outermost frame).
    fn rows() -> Rows {
        Rows(vec![(
            3,
            vec![
                row(0x1000, RowKind::CfaRsp, 24, 0),
                row(0x2000, RowKind::CfaRsp, 16, -2),
                row(0x3000, RowKind::End, 0, 0),
                row(0x4000, RowKind::None, 0, 0),
            ],
        )])
    }

    /// Registers at `pc` with the stack at [`SP`].
    fn at(pc: u64, bp: u64) -> Registers {
        Registers {
            pc,
            sp: SP,
            bp,
            exact_pc: true,
        }
    }

    /// Goes on from `regs` after the frames `walked` and `regs.pc`'s, over
    /// a copy of `words` at [`SP`] (`cut`: it stopped at its size limit).
    fn walk(
        walked: &[u64],
        regs: Registers,
        words: &[u64],
        cut: bool,
        rows: &mut Rows,
    ) -> UserStack {
        walk_interp(walked, regs, words, cut, rows, &mut InterpRuns::default())
    }

    /// [`walk`], with interpreter runs read at the sample.
    fn walk_interp(
        walked: &[u64],
        regs: Registers,
        words: &[u64],
        cut: bool,
        rows: &mut Rows,
        interp: &mut InterpRuns,
    ) -> UserStack {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let copy = StackCopy {
            base: SP,
            bytes: &bytes,
            cut,
        };
        let mut stack = UserStack {
            len: walked.len() as u32 + 1,
            status: stack_status::DEFERRED,
            frames: [0; MAX_STACK_DEPTH],
        };
        stack.frames[..walked.len()].copy_from_slice(walked);
        stack.frames[walked.len()] = regs.pc;
        finish_walk(
            &mut stack,
            regs,
            &copy,
            &mappings(),
            UnwindMode::Tables,
            rows,
            interp,
        );
        stack
    }

    #[test]
    fn a_walk_goes_on_from_where_bpf_stopped_down_to_the_outermost_frame() {
        // leaf's frame: 2 locals, then the return into middle; middle's
        // frame: saved rbp, then the return into main.
        let words = [0xaa, 0xbb, 0x40_2010, 0x1234, 0x40_3020];
        // BPF walked one frame before it stopped.
        let stack = walk(&[0xdead], at(0x40_1010, 7), &words, false, &mut rows());
        assert_eq!(stack.status, stack_status::COMPLETE);
        assert_eq!(stack.frames(), &[0xdead, 0x40_1010, 0x40_2010, 0x40_3020]);
    }

    #[test]
    fn a_copy_too_short_says_so_and_is_never_complete() {
        for (cut, status) in [
            (true, stack_status::COPY_EXHAUSTED),
            (false, stack_status::READ_FAILED),
        ] {
            let stack = walk(&[], at(0x40_1010, 0), &[0xaa, 0xbb], cut, &mut rows());
            assert_eq!(stack.status, status);
            assert_eq!(stack.frames(), &[0x40_1010]);
        }
    }

    #[test]
    fn v8_frames_met_by_the_walk_are_read_and_stepped_over_by_frame_pointer() {
        /// JavaScript frames: a function and a context (heap objects:
        /// odd words) below the frame pointer.
        struct FakeV8;
        const V8_WORD: u64 = 0xc4ff_ffff_0000_0001;
        impl V8Frames for FakeV8 {
            fn is_v8_code(&self, _pc: u64, mapping: Option<&UnwindMapping>) -> bool {
                mapping.is_some_and(|m| m.table_id == TABLE_ANONYMOUS)
            }
            fn frame(
                &self,
                regs: &Registers,
                slot: &dyn Fn(u64) -> Option<u64>,
            ) -> Option<[u64; 2]> {
                let function = slot(regs.bp - 16)?;
                (function & 1 == 1 && slot(regs.bp - 8)? & 1 == 1).then_some([V8_WORD, function])
            }
        }
        // Generated code at bp = SP + 16 (recorded by BPF), called from a
        // frame at SP + 48 (its slots below: 0xabc1, then `context`),
        // called from main.
        let walk_v8 = |context: u64| {
            let words = [0, 0, SP + 48, 0x9000_0100, 0xabc1, context, 0, 0x40_3020];
            let mut v8 = InterpRuns::default().with_v8(&FakeV8);
            walk_interp(
                &[],
                at(0x9000_0200, SP + 16),
                &words,
                false,
                &mut rows(),
                &mut v8,
            )
        };
        let stack = walk_v8(0x2001);
        assert_eq!(stack.status, stack_status::COMPLETE);
        assert_eq!(stack.frames(), &[0x9000_0200, V8_WORD, 0xabc1, 0x40_3020]);
        // A frame of V8's own (a marker, even, where the context would be)
        // stays a native frame.
        let stack = walk_v8(0x8);
        assert_eq!(stack.frames(), &[0x9000_0200, 0x9000_0100, 0x40_3020]);
    }

    #[test]
    fn code_without_a_table_falls_back_to_frame_pointers_as_in_bpf() {
        // JIT code: a frame-pointer frame at bp = SP + 8 whose caller is main.
        let words = [0, 0, 0x40_3020];
        let stack = walk(&[], at(0x9000_0100, SP + 8), &words, false, &mut rows());
        assert_eq!(stack.status, stack_status::COMPLETE);
        assert_eq!(stack.frames(), &[0x9000_0100, 0x40_3020]);
        // An address in no mapping whose frame pointer leads nowhere.
        let stack = walk(&[], at(0x5000_0000, 0x10), &words, false, &mut rows());
        assert_eq!(stack.status, stack_status::UNKNOWN_CODE);
        // A table that is not loaded.
        let stack = walk(
            &[],
            at(0x40_1010, 0x10),
            &words,
            false,
            &mut Rows(Vec::new()),
        );
        assert_eq!(stack.status, stack_status::NO_TABLE);
    }

    #[test]
    fn rows_are_found_as_the_bpf_search_finds_them() {
        let rows = [
            row(0x10, RowKind::CfaRsp, 8, 0),
            row(0x20, RowKind::End, 0, 0),
        ];
        assert_eq!(find_row(&rows, 0x0f), None);
        assert_eq!(find_row(&rows, 0x10), Some(rows[0]));
        assert_eq!(find_row(&rows, 0x1f), Some(rows[0]));
        assert_eq!(find_row(&rows, 0x1000), Some(rows[1]));
    }

    #[test]
    fn any_registers_and_stack_contents_end_the_walk_without_a_panic() {
        // Registers and stack words hold anything in code without frame
        // pointers; extremes included (a debug build checks overflow).
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let extremes = [
            0,
            1,
            u64::MAX,
            u64::MAX - 7,
            SP,
            SP + 8,
            0x40_2010,
            0x9000_0100,
        ];
        for round in 0..2000u32 {
            let pick = |v: u64| {
                if v.is_multiple_of(3) {
                    extremes[(v >> 8) as usize % extremes.len()]
                } else {
                    v
                }
            };
            let bytes: Vec<u8> = (0..64).flat_map(|_| pick(next()).to_le_bytes()).collect();
            let regs = Registers {
                pc: pick(next()),
                sp: pick(next()),
                bp: pick(next()),
                exact_pc: round.is_multiple_of(2),
            };
            let copy = StackCopy {
                base: regs.sp,
                bytes: &bytes,
                cut: round.is_multiple_of(3),
            };
            let mut stack = UserStack {
                len: 0,
                status: stack_status::DEFERRED,
                frames: [0; MAX_STACK_DEPTH],
            };
            let runs = [pick(next()), pick(next()), INTERP_RUN_END, pick(next())];
            let interp = InterpInfo {
                kind: interp_kind::CPYTHON,
                loop_start: pick(next()),
                loop_end: pick(next()),
                ..InterpInfo::default()
            };
            finish_walk(
                &mut stack,
                regs,
                &copy,
                &mappings(),
                UnwindMode::Mixed,
                &mut rows(),
                &mut InterpRuns::new(Some(&interp), &runs),
            );
            assert!((stack.len as usize) <= MAX_STACK_DEPTH);
            assert_ne!(stack.status, stack_status::DEFERRED);
        }
    }

    #[test]
    fn the_depth_limit_truncates() {
        // Frame-pointer frames upward without end, each one calling the next.
        let words: Vec<u64> = (0..200u64)
            .flat_map(|i| [SP + 16 * (i + 1), 0x9000_0100])
            .collect();
        let stack = walk(&[], at(0x9000_0100, SP), &words, false, &mut rows());
        assert_eq!(stack.status, stack_status::TRUNCATED);
        assert_eq!(stack.len as usize, MAX_STACK_DEPTH);
    }

    /// A loop-frame chain: leaf 0x40_1010 → loop frames 0x40_2010 and
    /// 0x40_2020 → main 0x40_3020, and the interpreter loop's range.
    fn two_loop_frames() -> (Vec<u64>, InterpInfo) {
        let words = vec![0xaa, 0xbb, 0x40_2010, 0x11, 0x40_2020, 0x22, 0x40_3020];
        let interp = InterpInfo {
            kind: interp_kind::CPYTHON,
            loop_start: 0x40_2000,
            loop_end: 0x40_3000,
            ..InterpInfo::default()
        };
        (words, interp)
    }

    const TAG: u64 = 0xc1 << 56;

    #[test]
    fn interpreter_runs_read_at_the_sample_take_their_loop_frames_places() {
        let (words, interp) = two_loop_frames();
        // Two runs: two frames, then one.
        let runs = [
            TAG | 1,
            0x100,
            TAG | 2,
            0x200,
            INTERP_RUN_END,
            TAG | 3,
            0x300,
            INTERP_RUN_END,
        ];
        let mut interp_runs = InterpRuns::new(Some(&interp), &runs);
        let stack = walk_interp(
            &[],
            at(0x40_1010, 7),
            &words,
            false,
            &mut rows(),
            &mut interp_runs,
        );
        assert_eq!(stack.status, stack_status::COMPLETE);
        assert_eq!(
            stack.frames(),
            &[
                0x40_1010,
                TAG | 1,
                0x100,
                TAG | 2,
                0x200,
                TAG | 3,
                0x300,
                0x40_3020
            ]
        );
        // An empty run, or none left: the loop frame keeps its own pc.
        for runs in [
            &[TAG | 1, 0x100, INTERP_RUN_END, INTERP_RUN_END][..],
            &[TAG | 1, 0x100, INTERP_RUN_END],
        ] {
            let mut interp_runs = InterpRuns::new(Some(&interp), runs);
            let stack = walk_interp(
                &[],
                at(0x40_1010, 7),
                &words,
                false,
                &mut rows(),
                &mut interp_runs,
            );
            assert_eq!(
                stack.frames(),
                &[0x40_1010, TAG | 1, 0x100, 0x40_2020, 0x40_3020]
            );
        }
        // A process without an interpreter: the words are never placed.
        let mut interp_runs = InterpRuns::new(None, &runs);
        let stack = walk_interp(
            &[],
            at(0x40_1010, 7),
            &words,
            false,
            &mut rows(),
            &mut interp_runs,
        );
        assert_eq!(
            stack.frames(),
            &[0x40_1010, 0x40_2010, 0x40_2020, 0x40_3020]
        );
    }

    #[test]
    fn interpreter_frames_past_the_depth_limit_truncate_whole() {
        let (words, interp) = two_loop_frames();
        let mut runs: Vec<u64> = (0..100u64).flat_map(|i| [TAG | i, 0x1000 + i]).collect();
        runs.push(INTERP_RUN_END);
        let mut interp_runs = InterpRuns::new(Some(&interp), &runs);
        let stack = walk_interp(
            &[],
            at(0x40_1010, 7),
            &words,
            false,
            &mut rows(),
            &mut interp_runs,
        );
        assert_eq!(stack.status, stack_status::TRUNCATED);
        // The leaf, then as many whole frames as fit.
        assert_eq!(stack.len as usize, 1 + (MAX_STACK_DEPTH - 1) / 2 * 2);
        assert_eq!(stack.frames()[stack.len as usize - 2] >> 56, 0xc1);
    }
}
