//! Loading the sampler (ebpf/cpu.bpf.c), flipping its windows and draining them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::{FExit, PerfEvent, ProgramError, RawTracePoint};
use aya::util::{online_cpus, KernelVersion};
use aya::{Btf, Ebpf, EbpfError, EbpfLoader, VerifierLogLevel};

use crate::EbpfCpuError;

/// The sampler object, built by `make -C ebpf` and committed.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../ebpf/cpu.bpf.o");

/// `struct sample_key` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// Id in the window's stack map; negative: no kernel stack.
    pub kernel_stack_id: i32,
    /// Key in the window's user stack map; 0: no user stack.
    pub user_stack: u64,
    /// Key in the `go_labels` map; 0: no goroutine labels.
    pub go_labels: u64,
    /// Thread name, NUL-padded.
    pub comm: [u8; 16],
}

/// `struct sampler_config` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SamplerConfig {
    /// The window's sequence number; its parity picks the map set.
    pub window: u32,
    /// Also sample the idle task.
    pub include_idle: u32,
    /// `enum unwind_mode`.
    pub unwind_mode: u32,
    /// Sample only the processes in the `targets` map.
    pub targeted: u32,
    /// A task going off CPU is timed when a random u32 is below this
    /// (0: never; 2^32: always).
    pub off_cpu_threshold: u64,
}

/// `struct off_cpu_pending` of ebpf/cpu.h: a task timed off CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuPending {
    /// Its sample key; stack ids in the off-CPU stack maps.
    pub key: SampleKey,
    /// `CLOCK_MONOTONIC` nanoseconds when it went off CPU.
    pub since: u64,
}

/// `enum unwind_mode` of ebpf/cpu.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindMode {
    /// Tables where they exist, frame pointers elsewhere.
    Tables = 0,
    /// Frame pointers only.
    FramePointers = 1,
    /// Per frame: a table row when one covers the address, else frame pointers.
    Mixed = 2,
}

/// `struct process_event` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    /// `enum process_event_kind`.
    pub kind: u32,
    /// Process id.
    pub pid: u32,
}

/// `MAX_STACK_DEPTH` of ebpf/cpu.h.
pub const MAX_STACK_DEPTH: usize = 127;

/// `struct user_stack` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    /// Frames used.
    pub len: u32,
    /// `enum stack_status`.
    pub status: u32,
    /// Addresses, leaf first.
    pub frames: [u64; MAX_STACK_DEPTH],
}

impl UserStack {
    /// The frames walked.
    pub fn frames(&self) -> &[u64] {
        &self.frames[..(self.len as usize).min(MAX_STACK_DEPTH)]
    }
}

/// `enum stack_status` of ebpf/cpu.h, by value: how a user stack walk ended.
pub const STACK_STATUS_NAMES: [&str; 10] = [
    "complete",
    "truncated",
    "read_failed",
    "no_row",
    "unsupported_rule",
    "unknown_code",
    "frame_pointer_failed",
    "no_table",
    "deferred",
    "stack_copy_exhausted",
];

/// `enum stack_status` values.
pub mod stack_status {
    /// Reached the outermost frame.
    pub const COMPLETE: u32 = 0;
    /// `MAX_STACK_DEPTH` frames.
    pub const TRUNCATED: u32 = 1;
    /// The stack memory a row points to is unreadable.
    pub const READ_FAILED: u32 = 2;
    /// No row covers the address.
    pub const NO_ROW: u32 = 3;
    /// The row's rule cannot be followed.
    pub const UNSUPPORTED_RULE: u32 = 4;
    /// JIT or anonymous code whose frame pointer chain broke.
    pub const UNKNOWN_CODE: u32 = 5;
    /// The frame pointer chain broke in a known file.
    pub const FRAME_POINTER_FAILED: u32 = 6;
    /// The table is not loaded and frame pointers failed.
    pub const NO_TABLE: u32 = 7;
    /// Handed to user space (a `struct deferred_sample`); never emitted.
    pub const DEFERRED: u32 = 8;
    /// Finished in user space: the walk needed stack past the copy.
    pub const COPY_EXHAUSTED: u32 = 9;
}

/// The name of a `enum stack_status` value.
pub fn stack_status_name(status: u32) -> &'static str {
    STACK_STATUS_NAMES
        .get(status as usize)
        .copied()
        .unwrap_or("unknown")
}

/// `MAX_UNWIND_MAPPINGS` of ebpf/cpu.h.
pub const MAX_UNWIND_MAPPINGS: usize = 512;
/// `ROWS_PER_BLOCK` of ebpf/cpu.h: rows in one block of an unwind table.
pub const ROWS_PER_BLOCK: usize = 512;
/// `FENCES_PER_BLOCK` of ebpf/cpu.h: fences in one fence block.
pub const FENCES_PER_BLOCK: usize = 1024;
/// `MAX_FENCE_BLOCKS` of ebpf/cpu.h: the fence blocks the walker searches.
pub const MAX_FENCE_BLOCKS: usize = 64;
/// Bytes of one block (`union unwind_block`): the unwind tables' value size.
pub const UNWIND_BLOCK_BYTES: usize = 4096;
/// `TABLE_NONE`: a file mapping without a table.
pub const TABLE_NONE: u32 = 0;
/// `TABLE_ANONYMOUS`: anonymous executable memory.
pub const TABLE_ANONYMOUS: u32 = u32::MAX;
/// `TABLE_PENDING`: a table being compiled (walks reaching it are deferred).
pub const TABLE_PENDING: u32 = u32::MAX - 1;

/// `struct unwind_mapping` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    /// First address.
    pub start: u64,
    /// First address past the end.
    pub end: u64,
    /// `address - bias` is the ELF virtual address the table's rows use.
    pub bias: u64,
    /// Key in `unwind_tables`, or [`TABLE_NONE`] / [`TABLE_ANONYMOUS`] / [`TABLE_PENDING`].
    pub table_id: u32,
    /// Rows in the table.
    pub rows: u32,
}

/// `enum interp_kind` of ebpf/cpu.h.
pub mod interp_kind {
    /// No interpreter.
    pub const NONE: u32 = 0;
    /// CPython.
    pub const CPYTHON: u32 = 1;
    /// PHP (the Zend engine).
    pub const PHP: u32 = 2;
    /// Ruby (CRuby).
    pub const RUBY: u32 = 3;
    /// V8 (Node.js): its JavaScript frames are frames of the native stack.
    pub const V8: u32 = 4;
    /// A frame kind only (its process runs V8): a JavaScript frame running
    /// code its function does not point to, named by the code's address.
    pub const V8_CODE_ADDRESS: u32 = 5;
    /// The JVM (HotSpot): its Java frames are frames of the native stack;
    /// as a frame kind, an interpreted frame (a Method* and bytecode index).
    pub const JVM: u32 = 6;
    /// A frame kind only (its process runs the JVM): a frame of compiled
    /// code, named by its nmethod and the pc's offset in its code.
    pub const JVM_COMPILED: u32 = 7;
}

/// `INTERP_FRAME_TAG` of ebpf/cpu.h: the top byte of an interpreter frame's
/// tag word is this or'ed with its `interp_kind`.
pub const INTERP_FRAME_TAG: u8 = 0xc0;
/// `USER_ADDRESS_MAX` of ebpf/cpu.h: no code address is above it.
pub const USER_ADDRESS_MAX: u64 = 0x00ff_ffff_ffff_ffff;
/// `INTERP_OFFSET_UNKNOWN`: the frame's instruction offset is not known.
pub const INTERP_OFFSET_UNKNOWN: u32 = 0xff_ffff;
/// `INTERP_RUN_END`: closes a run of interpreter frames in a deferred sample.
pub const INTERP_RUN_END: u64 = (INTERP_FRAME_TAG as u64) << 56;

/// `struct python_layout` of ebpf/cpu.h: where one CPython version keeps
/// what the walker reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonLayout {
    /// Address of the pointer to the first `PyInterpreterState`.
    pub interp_head: u64,
    /// Address of `PyCode_Type`.
    pub code_type: u64,
    /// `PyInterpreterState`: its first thread state.
    pub interp_threads: u16,
    /// `PyThreadState.next`.
    pub tstate_next: u16,
    /// `PyThreadState.thread_id` (`pthread_self()`).
    pub tstate_thread_id: u16,
    /// `PyThreadState`: the current frame, or the `_PyCFrame` holding it.
    pub tstate_frame: u16,
    /// `_PyCFrame.current_frame`; `0xffff`: no `_PyCFrame`.
    pub cframe_frame: u16,
    /// The frame's caller.
    pub frame_back: u16,
    /// The frame's code object.
    pub frame_code: u16,
    /// `f_lasti` (an int) or `prev_instr` / `instr_ptr` (a pointer).
    pub frame_instr: u16,
    /// `is_entry` or `owner` (a byte).
    pub frame_entry: u16,
    /// Bytes read of a frame.
    pub frame_size: u16,
    /// `co_name`.
    pub code_name: u16,
    /// `co_firstlineno`.
    pub code_firstlineno: u16,
    /// `co_argcount`.
    pub code_argcount: u16,
    /// Where the bytecode starts in the code object.
    pub code_bytecode: u16,
    /// Bytes read of a code object.
    pub code_size: u16,
    /// `co_filename`.
    pub code_filename: u16,
    /// A word set once per code object (`ob_size` on 3.11+, `co_code` before).
    pub code_identity: u16,
    /// `frame_instr` is a pointer.
    pub instr_is_pointer: u8,
    /// `enum python_entry_rule`.
    pub entry_rule: u8,
    /// The owner value of a shim frame.
    pub entry_shim: u8,
    /// Padding.
    pub reserved: [u8; 3],
}

/// `struct php_layout` of ebpf/cpu.h: where one PHP version keeps what
/// the walker reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhpLayout {
    /// Address of `EG(current_execute_data)`.
    pub current_execute_data: u64,
    /// `zend_execute_data.opline`.
    pub data_opline: u16,
    /// `zend_execute_data.func`.
    pub data_func: u16,
    /// `zend_execute_data.This.u1.type_info` (call flags in its top 16 bits).
    pub data_call_info: u16,
    /// `zend_execute_data.prev_execute_data`.
    pub data_prev: u16,
    /// Bytes read of a `zend_execute_data`.
    pub data_size: u16,
    /// `zend_function.common.function_name`.
    pub func_name: u16,
    /// `zend_function.common.scope`.
    pub func_scope: u16,
    /// `zend_function.op_array.filename`.
    pub func_filename: u16,
    /// `zend_function.op_array.line_start`.
    pub func_line_start: u16,
    /// Bytes read of a `zend_function`.
    pub func_size: u16,
    /// `zend_op.lineno`.
    pub op_lineno: u16,
    /// Padding.
    pub reserved: [u16; 5],
}

/// `struct ruby_layout` of ebpf/cpu.h: where one Ruby version keeps what
/// the walker reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RubyLayout {
    /// The GOT word holding `ruby_current_ec`'s TLS module id; 0: none.
    pub tls_module_got: u64,
    /// `ruby_current_ec`'s address minus the thread pointer (static TLS); 0: none.
    pub tls_static_offset: i64,
    /// Address of a global pointing to the current execution context (2.6, 2.7).
    pub ec_global: u64,
    /// `ruby_current_ec`'s offset in its module's TLS block.
    pub tls_offset: u16,
    /// `rb_execution_context_t.vm_stack`.
    pub ec_vm_stack: u16,
    /// `rb_execution_context_t.vm_stack_size` (in VALUEs).
    pub ec_vm_stack_size: u16,
    /// `rb_execution_context_t.cfp`.
    pub ec_cfp: u16,
    /// `sizeof(rb_control_frame_t)`.
    pub cfp_size: u16,
    /// `rb_control_frame_t.pc`.
    pub cfp_pc: u16,
    /// `rb_control_frame_t.iseq`.
    pub cfp_iseq: u16,
    /// `rb_control_frame_t.ep`.
    pub cfp_ep: u16,
    /// `rb_iseq_t.body`.
    pub iseq_body: u16,
    /// `rb_iseq_constant_body.iseq_size`.
    pub body_size: u16,
    /// `rb_iseq_constant_body.iseq_encoded`.
    pub body_encoded: u16,
    /// `rb_callable_method_entry_t.def` (`called_id` follows it).
    pub cme_def: u16,
    /// `rb_callable_method_entry_t.owner`.
    pub cme_owner: u16,
    /// Padding.
    pub reserved: [u16; 3],
}

/// `struct v8_layout` of ebpf/cpu.h: where one V8 build keeps what the
/// walker reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Layout {
    /// A JavaScript frame's context slot, in bytes below its frame pointer.
    pub fp_context: u8,
    /// Its JSFunction slot.
    pub fp_function: u8,
    /// An interpreted frame's BytecodeArray slot.
    pub fp_bytecode_array: u8,
    /// An interpreted frame's bytecode offset slot (a Smi).
    pub fp_bytecode_offset: u8,
    /// `Code.flags`: its kind is `(flags >> code_kind_shift) & code_kind_mask`.
    pub code_kind_mask: u8,
    /// See `code_kind_mask`.
    pub code_kind_shift: u8,
    /// `CodeKind::BASELINE`.
    pub code_kind_baseline: u8,
    /// 1: `Code.instruction_start` holds the address; 0: it is an offset in the object.
    pub code_start_is_pointer: u8,
    /// `JSFunction.shared`.
    pub function_shared: u16,
    /// `JSFunction.code`; 0: compiled code is not read.
    pub function_code: u16,
    /// `Map.instance_type`.
    pub map_instance_type: u16,
    /// `SharedFunctionInfo.function_data`.
    pub sfi_function_data: u16,
    /// `SharedFunctionInfo.name_or_scope_info`.
    pub sfi_name: u16,
    /// `SharedFunctionInfo.script_or_debug_info`.
    pub sfi_script: u16,
    /// Bytes read of a SharedFunctionInfo.
    pub sfi_size: u16,
    /// `Code.instruction_start`.
    pub code_instruction_start: u16,
    /// `Code.instruction_size` (an int).
    pub code_instruction_size: u16,
    /// `Code.flags` (a uint32).
    pub code_flags: u16,
    /// Bytes read of a Code object.
    pub code_size: u16,
    /// `SHARED_FUNCTION_INFO_TYPE`.
    pub type_sfi: u16,
    /// `BYTECODE_ARRAY_TYPE`.
    pub type_bytecode_array: u16,
    /// `CODE_TYPE`.
    pub type_code: u16,
    /// Padding.
    pub reserved: [u16; 2],
}

/// `struct interp_info` of ebpf/cpu.h: the interpreter a process runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterpInfo {
    /// `enum interp_kind`.
    pub kind: u32,
    /// `major << 8 | minor`.
    pub version: u32,
    /// The interpreter loop's code: `[loop_start, loop_end)`.
    pub loop_start: u64,
    /// See `loop_start`.
    pub loop_end: u64,
    /// The loop's part moved out of line (`.cold`), if known: `[cold_start, cold_end)`.
    pub cold_start: u64,
    /// See `cold_start`.
    pub cold_end: u64,
    /// CPython's layout (`kind` CPYTHON).
    pub python: PythonLayout,
    /// PHP's layout (`kind` PHP).
    pub php: PhpLayout,
    /// Ruby's layout (`kind` RUBY).
    pub ruby: RubyLayout,
    /// V8's layout (`kind` V8; `loop_start`/`loop_end` hold its builtins' code).
    pub v8: V8Layout,
    /// The JVM's layout (`kind` JVM; `loop_start`/`loop_end` hold its
    /// template interpreter's code).
    pub jvm: JvmLayout,
}

/// `JVM_MAX_HEAPS` of ebpf/cpu.h.
pub const JVM_MAX_HEAPS: usize = 3;

/// `struct jvm_layout` of ebpf/cpu.h: where one JVM keeps what the walker
/// reads (from its gHotSpotVMStructs tables).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JvmLayout {
    /// The code cache's bounds: `[code_start, code_end)`.
    pub code_start: u64,
    /// See `code_start`.
    pub code_end: u64,
    /// Each code heap's memory: `[heap_low, heap_high)`.
    pub heap_low: [u64; JVM_MAX_HEAPS],
    /// See `heap_low`.
    pub heap_high: [u64; JVM_MAX_HEAPS],
    /// Each code heap's segment map (a byte per segment).
    pub heap_segmap: [u64; JVM_MAX_HEAPS],
    /// Each code heap's log2 of its segment size.
    pub heap_log2_segment: [u8; JVM_MAX_HEAPS],
    /// Code heaps in use.
    pub heap_count: u8,
    /// `sizeof(HeapBlock)`: a block's CodeBlob follows it.
    pub block_header: u8,
    /// The bytes of `blob_kind`: 1 (`CodeBlob._kind`) or 4 (`CodeBlob._header_size`).
    pub kind_size: u8,
    /// `CodeBlob._frame_complete_offset`'s size: 2 or 4.
    pub frame_complete_size: u8,
    /// 1: the blob's code field is an int offset from the blob; 0: a pointer.
    pub code_is_offset: u8,
    /// Padding.
    pub reserved: [u8; 2],
    /// What tells an nmethod: `CodeBlob._kind` (JDK 23+) or, before,
    /// `CodeBlob._header_size` (an nmethod's is `sizeof(nmethod)`).
    pub blob_kind: u16,
    /// The value `blob_kind` holds in an nmethod.
    pub kind_nmethod: u16,
    /// `CodeBlob._frame_complete_offset`.
    pub blob_frame_complete: u16,
    /// `CodeBlob._frame_size` (words).
    pub blob_frame_size: u16,
    /// `CodeBlob._code_begin` or `_code_offset`.
    pub blob_code: u16,
    /// Bytes read of a blob.
    pub blob_size: u16,
    /// `nmethod._method`.
    pub nmethod_method: u16,
    /// `nmethod._compile_id`.
    pub nmethod_compile_id: u16,
    /// `Method._constMethod`.
    pub method_const: u16,
    /// `sizeof(ConstMethod)`: its bytecodes follow it.
    pub const_method_size: u16,
    /// Padding.
    pub reserved2: [u16; 2],
}

/// `enum go_labels_kind` of ebpf/cpu.h.
pub mod go_labels_kind {
    /// Not a Go program, or its layout is unknown.
    pub const NONE: u32 = 0;
    /// `*map[string]string` (Go 1.9–1.23).
    pub const MAP: u32 = 1;
    /// `*[]struct{key, value string}`, sorted (Go 1.24+).
    pub const SLICE: u32 = 2;
}

/// `struct go_layout` of ebpf/cpu.h: where a Go program's goroutine labels are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoLayout {
    /// The current `g`, from the thread's fs base.
    pub tls_g: i64,
    /// [`go_labels_kind`].
    pub labels_kind: u32,
    /// `offsetof(g, m)`.
    pub g_m: u16,
    /// `offsetof(m, curg)`.
    pub m_curg: u16,
    /// `offsetof(g, labels)`.
    pub g_labels: u16,
    /// Padding.
    pub reserved: [u16; 3],
}

/// `GO_MAX_LABELS`, `GO_LABEL_KEY_LEN`, `GO_LABEL_VALUE_LEN` of ebpf/cpu.h.
pub const GO_MAX_LABELS: usize = 8;
/// See [`GO_MAX_LABELS`].
pub const GO_LABEL_KEY_LEN: usize = 32;
/// See [`GO_MAX_LABELS`].
pub const GO_LABEL_VALUE_LEN: usize = 64;

/// `struct go_label` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoLabel {
    /// Bytes of `key` used.
    pub key_len: u8,
    /// Bytes of `value` used.
    pub value_len: u8,
    /// The key, cut to [`GO_LABEL_KEY_LEN`].
    pub key: [u8; GO_LABEL_KEY_LEN],
    /// The value, cut to [`GO_LABEL_VALUE_LEN`].
    pub value: [u8; GO_LABEL_VALUE_LEN],
}

/// `struct go_labels` of ebpf/cpu.h: one goroutine's labels.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoLabels {
    /// Labels used.
    pub count: u32,
    /// Labels beyond [`GO_MAX_LABELS`], not read.
    pub truncated: u32,
    /// The labels.
    pub labels: [GoLabel; GO_MAX_LABELS],
}

impl GoLabels {
    /// (key, value) pairs, as text (invalid UTF-8 replaced).
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.labels[..(self.count as usize).min(GO_MAX_LABELS)]
            .iter()
            .map(|l| {
                let key = &l.key[..usize::from(l.key_len).min(GO_LABEL_KEY_LEN)];
                let value = &l.value[..usize::from(l.value_len).min(GO_LABEL_VALUE_LEN)];
                (
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect()
    }
}

/// `struct interp_code_event` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InterpCodeEvent {
    /// [`PROCESS_INTERP_CODE`].
    pub kind: u32,
    /// Process id.
    pub pid: u32,
    /// `enum interp_kind`.
    pub interp: u32,
    /// The validation value BPF computed.
    pub validation: u32,
    /// The object's address.
    pub object: u64,
}

/// `struct process_unwind_info` of ebpf/cpu.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessUnwindInfo {
    /// Written by the BPF program.
    pub refresh_requested_ns: u64,
    /// When user space wrote the entry (`CLOCK_MONOTONIC` nanoseconds).
    pub written_ns: u64,
    /// Mappings used.
    pub mapping_count: u32,
    /// The exec generation the mappings are of.
    pub generation: u32,
    /// The interpreter the process runs.
    pub interp: InterpInfo,
    /// Where its goroutine labels are, for a Go program.
    pub go: GoLayout,
    /// Sorted by start.
    pub mappings: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}

impl Default for ProcessUnwindInfo {
    fn default() -> Self {
        Self {
            refresh_requested_ns: 0,
            written_ns: 0,
            mapping_count: 0,
            generation: 0,
            interp: InterpInfo::default(),
            go: GoLayout::default(),
            mappings: [UnwindMapping::default(); MAX_UNWIND_MAPPINGS],
        }
    }
}

// SAFETY: plain `#[repr(C)]` integers without padding, valid for any bytes.
unsafe impl aya::Pod for SampleKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SamplerConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for OffCpuPending {}
// SAFETY: as above.
unsafe impl aya::Pod for UserStack {}
// SAFETY: as above.
unsafe impl aya::Pod for ProcessUnwindInfo {}
// SAFETY: as above (bytes and u32s, no padding).
unsafe impl aya::Pod for GoLabels {}

/// `enum process_event_kind`.
pub const PROCESS_FIRST_SEEN: u32 = 1;
/// A process replaced its image.
pub const PROCESS_EXEC: u32 = 2;
/// A process exited.
pub const PROCESS_EXIT: u32 = 3;
/// A sampled address lies in no mapping user space told the unwinder about.
pub const PROCESS_MAPPINGS_CHANGED: u32 = 4;
/// A known process mapped a file executable.
pub const PROCESS_MMAP_EXEC: u32 = 5;
/// A [`DeferredSample`].
pub const PROCESS_DEFERRED_SAMPLE: u32 = 6;
/// An [`InterpCodeEvent`].
pub const PROCESS_INTERP_CODE: u32 = 7;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `GENERATION_EXITED` of ebpf/cpu.h: set once the process exited.
pub const GENERATION_EXITED: u32 = 0x8000_0000;

/// `DEFERRED_STACK_BYTES` of ebpf/cpu.h.
pub const DEFERRED_STACK_BYTES: usize = 16384;

/// `struct deferred_sample` of ebpf/cpu.h: a sample whose user stack walk
/// user space finishes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeferredSample {
    /// [`PROCESS_DEFERRED_SAMPLE`].
    pub kind: u32,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU.
    pub cpu: u32,
    /// The sequence number of the window it belongs to.
    pub window: u32,
    /// The process's exec count when sampled.
    pub generation: u32,
    /// `CLOCK_MONOTONIC` nanoseconds when sampled.
    pub time_ns: u64,
    /// Key in the `go_labels` map; 0: none.
    pub go_labels: u64,
    /// The frame where the BPF walk stopped (the last of `user`'s frames).
    pub pc: u64,
    /// Its stack pointer.
    pub sp: u64,
    /// Its frame pointer.
    pub bp: u64,
    /// `pc` is where execution is, not a return address.
    pub exact_pc: u32,
    /// `pc` came from registers or a table row.
    pub trusted_pc: u32,
    /// Bytes of `stack` copied from `sp`.
    pub stack_bytes: u32,
    /// Frames in `kernel`.
    pub kernel_len: u32,
    /// Words of `user.frames` past `user.len`: the interpreter frames of
    /// the loop frames the BPF walk did not reach, run by run, leaf first,
    /// each closed by [`INTERP_RUN_END`].
    pub interp_words: u32,
    /// Zero.
    pub reserved: u32,
    /// Thread name, NUL-padded.
    pub comm: [u8; 16],
    /// Kernel frames, leaf first.
    pub kernel: [u64; MAX_STACK_DEPTH],
    /// Frames walked in BPF, leaf first.
    pub user: UserStack,
    /// The user stack from `sp` up.
    pub stack: [u8; DEFERRED_STACK_BYTES],
}

impl DeferredSample {
    /// The kernel frames, leaf first.
    pub fn kernel_frames(&self) -> &[u64] {
        &self.kernel[..(self.kernel_len as usize).min(MAX_STACK_DEPTH)]
    }

    /// The stack bytes copied.
    pub fn stack_copy(&self) -> &[u8] {
        &self.stack[..(self.stack_bytes as usize).min(DEFERRED_STACK_BYTES)]
    }

    /// The interpreter frames read at the sample for the loop frames the
    /// BPF walk did not reach (see [`Self::interp_words`]).
    pub fn interp_runs(&self) -> &[u64] {
        let start = (self.user.len as usize).min(MAX_STACK_DEPTH);
        let end = start
            .saturating_add(self.interp_words as usize)
            .min(MAX_STACK_DEPTH);
        &self.user.frames[start..end]
    }
}

/// Number of `enum stat_index` counters.
pub const STAT_COUNT: usize = 16;

/// `enum stat_index`, in order.
pub const STAT_NAMES: [&str; STAT_COUNT] = [
    "samples",
    "user_stacks_full",
    "kernel_stack_collisions",
    "user_stack_errors",
    "counts_full",
    "events_lost",
    "walks_deferred",
    "defer_ring_full",
    "interp_frames",
    "interp_no_thread",
    "interp_read_failed",
    "interp_not_code",
    "go_labels",
    "go_labels_failed",
    "untargeted_samples",
    "off_cpu_samples",
];
/// Capacity of each counts map (`MAX_SAMPLE_KEYS`).
pub const MAX_SAMPLE_KEYS: usize = 16384;

impl Drained {
    /// Every user stack of the window with its process and sample count:
    /// the counted ones (an off-CPU key as one sample), then each walk
    /// finished in user space (one sample).
    pub fn user_stacks_counted(&self) -> impl Iterator<Item = (u32, &UserStack, u64)> {
        let samples = self.counts.iter().map(|(key, count)| (key, *count));
        let off_cpu = self.off_cpu.iter().map(|(key, _)| (key, 1));
        let counted = samples.chain(off_cpu).filter_map(|(key, count)| {
            Some((key.pid, self.user_stacks.get(&key.user_stack)?, count))
        });
        let finished = self.deferred.iter().map(|f| (f.key.pid, &f.user, 1));
        counted.chain(finished)
    }
}

/// What one window held.
#[derive(Default)]
pub struct Drained {
    /// The window's sequence number (its parity: the map set drained).
    pub window: u32,
    /// Sample counts.
    pub counts: Vec<(SampleKey, u64)>,
    /// Nanoseconds off CPU (off-CPU profiling); their user stacks are in
    /// `user_stacks` (keys are content hashes), their kernel stacks in
    /// `off_cpu_kernel_stacks`.
    pub off_cpu: Vec<(SampleKey, u64)>,
    /// Kernel frames of the stack ids the off-CPU keys name.
    pub off_cpu_kernel_stacks: HashMap<i32, Vec<u64>>,
    /// Kernel frames (addresses, leaf first) of every stack id the counts name.
    pub kernel_stacks: HashMap<i32, Vec<u64>>,
    /// User stacks by key.
    pub user_stacks: HashMap<u64, UserStack>,
    /// Samples whose walks user space finished (one sample each).
    pub deferred: Vec<crate::deferred::FinishedSample>,
    /// Goroutine labels by key (`go_labels` of the sample keys).
    pub go_labels: HashMap<u64, Vec<(String, String)>>,
}

/// The maps user space fills for the unwinder.
pub struct UnwindMaps {
    /// Table id → inner array of rows (`BPF_MAP_TYPE_HASH_OF_MAPS`); written
    /// with batch syscalls, since every write to a map of maps waits for an
    /// RCU grace period.
    pub tables: MapData,
    /// Pid → its mappings.
    pub processes: BpfHashMap<MapData, u32, ProcessUnwindInfo>,
    /// Pid → how often it exec'd since first seen (`known_processes`).
    pub generations: BpfHashMap<MapData, u32, u32>,
}

/// How to load the sampler.
pub struct LoadOptions {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Sample the idle task too.
    pub include_idle: bool,
    /// RLIMIT_MEMLOCK in bytes; 0: unlimited.
    pub memlock_rlimit: u64,
    /// Full verifier log on failure.
    pub verbose: bool,
    /// Ring buffer size in pages for process events; room for deferred
    /// walks is added to it.
    pub events_pages: u32,
    /// How user stacks are walked.
    pub unwind_mode: UnwindMode,
    /// How long the event thread may pause after a burst of process events
    /// (the ring holds the deferred walks of that long, and more).
    pub event_pause: Duration,
    /// How long a window is: each window's maps hold its samples.
    pub window: Duration,
    /// Sample only the processes of the `targets` map ([`Sampler::take_targets`]).
    pub targeted: bool,
    /// Probability that a task going off CPU is timed (0: off-CPU
    /// profiling off, its programs not attached).
    pub off_cpu_threshold: f64,
}

/// The loaded and attached sampler.
pub struct Sampler {
    ebpf: Ebpf,
    window: u32,
    include_idle: bool,
    unwind_mode: UnwindMode,
    targeted: bool,
    /// Whether `process_mmap_exec` reports new executable mappings.
    mmap_hook: bool,
    /// Samples per second per CPU.
    frequency: u64,
    /// The sampling timer of each online CPU; none while sampling is paused.
    timers: Vec<(u32, PerfEventLinkId)>,
    /// `sampler_config.off_cpu_threshold` while sampling.
    off_cpu_threshold: u64,
    /// Off-CPU stacks kept at the last drain that no key needed then.
    off_cpu_unneeded: OffCpuStackIds,
    /// Sampling is on (not paused by probabilistic profiling).
    sampling: bool,
}

/// Kernel 5.8 brought BPF ring buffers. Newer helpers (see
/// [`NEWER_HELPERS`]) are left to the verifier, not to the version: distribution
/// kernels backport them under older version numbers.
const MIN_KERNEL: KernelVersion = KernelVersion::new(5, 8, 0);

/// Helpers the programs call that came after [`MIN_KERNEL`], by id: a
/// kernel without one refuses the program with `invalid func unknown#ID`.
const NEWER_HELPERS: [(u32, &str); 3] = [
    (158, "bpf_get_current_task_btf (Linux 5.11)"),
    (175, "bpf_task_pt_regs (Linux 5.15)"),
    (181, "bpf_loop (Linux 5.17)"),
];

/// The helper a verifier log says this kernel does not have, if it is one
/// of [`NEWER_HELPERS`].
fn missing_helper(verifier_log: &str) -> Option<&'static str> {
    verifier_log.lines().find_map(|line| {
        let id: u32 = line
            .trim()
            .strip_prefix("invalid func unknown#")?
            .parse()
            .ok()?;
        NEWER_HELPERS
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, name)| *name)
    })
}

fn set_memlock(bytes: u64) -> Result<(), EbpfCpuError> {
    let limit = if bytes == 0 {
        libc::RLIM_INFINITY
    } else {
        bytes
    };
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads a valid, initialized struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlimit) } != 0 {
        let error = std::io::Error::last_os_error();
        // Kernels since 5.11 account BPF memory to the cgroup; the limit then does not matter.
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 11, 0)) {
            return Err(EbpfCpuError::Memlock(error));
        }
        tracing::debug!(%error, "cannot raise RLIMIT_MEMLOCK; not needed on this kernel");
    }
    Ok(())
}

fn permission_hint(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Whether a program load failed for want of privileges: the verifier
/// refuses a program with EACCES too, but only after it ran, so with a log.
fn load_not_permitted(e: &std::io::Error, verifier_log: &str) -> bool {
    permission_hint(e) && verifier_log.trim().is_empty()
}

/// What a verifier rejection's message adds: where the full log is, and
/// on a kernel older than `bpf_loop` whose verifier stopped before naming
/// it (5.10 refuses the callback's reference first), that it may be why.
fn verifier_hint(verbose: bool, kernel: Option<KernelVersion>) -> String {
    let mut hint = String::new();
    if !verbose {
        hint.push_str(" (full log: --bpf-verbose-logging)");
    }
    if kernel.is_some_and(|v| v < KernelVersion::new(5, 17, 0)) {
        hint.push_str(
            "; this kernel is older than 5.17: unless it backports bpf_loop, the receiver cannot run on it",
        );
    }
    hint
}

/// Turns a program load error into one line that says what to do.
fn program_error(program: &str, e: ProgramError, verbose: bool) -> EbpfCpuError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if load_not_permitted(&io_error, &log) {
                return EbpfCpuError::NotPermitted(io_error.to_string());
            }
            if let Some(helper) = missing_helper(&log) {
                return EbpfCpuError::KernelLacksHelper(helper);
            }
            let lines: Vec<&str> = log.lines().collect();
            let shown = if verbose {
                &lines[..]
            } else {
                &lines[lines.len().saturating_sub(15)..]
            };
            EbpfCpuError::Verifier {
                program: program.to_owned(),
                error: io_error.to_string(),
                log: shown.join("\n"),
                hint: verifier_hint(verbose, KernelVersion::current().ok()),
            }
        }
        ProgramError::SyscallError(e) if permission_hint(&e.io_error) => {
            EbpfCpuError::NotPermitted(e.to_string())
        }
        other => EbpfCpuError::Attach {
            program: program.to_owned(),
            error: other.to_string(),
        },
    }
}

/// The error and its sources, `: `-joined; a permission error anywhere in
/// the chain becomes [`EbpfCpuError::NotPermitted`].
fn load_error(e: &EbpfError) -> EbpfCpuError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    let mut denied = false;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            denied |= permission_hint(io);
        }
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if denied {
        EbpfCpuError::NotPermitted(text)
    } else {
        map_error("loading the object", text)
    }
}

fn map_error(what: &str, e: impl std::fmt::Display) -> EbpfCpuError {
    EbpfCpuError::Map(format!("{what}: {e}"))
}

impl Sampler {
    /// Loads the object, attaches the sampler to every online CPU and the
    /// process tracepoints.
    pub fn load(opts: &LoadOptions) -> Result<Self, EbpfCpuError> {
        match KernelVersion::current() {
            Ok(v) if v < MIN_KERNEL => return Err(EbpfCpuError::KernelTooOld(v.to_string())),
            _ => {}
        }
        set_memlock(opts.memlock_rlimit)?;
        let burst = opts.event_pause + DEFERRED_BURST;
        let ring_bytes = ring_buffer_bytes(opts.events_pages, num_cpus(), opts.frequency, burst);
        let window_entries = window_map_entries(num_cpus(), opts.frequency, opts.window);
        let kernel_stacks = kernel_stack_entries(num_cpus(), opts.frequency, opts.window);
        let off_cpu = opts.off_cpu_threshold > 0.0;
        // Unused maps of a feature that is off: one entry each.
        let off_cpu_entries = if off_cpu { OFF_CPU_WINDOW_ENTRIES } else { 1 };
        let level = if opts.verbose {
            VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS
        } else {
            VerifierLogLevel::DEBUG | VerifierLogLevel::STATS
        };
        let ebpf = EbpfLoader::new()
            .verifier_log_level(level)
            // Without targets the map is never used: one entry, not 32,768.
            .map_max_entries("targets", if opts.targeted { 32768 } else { 1 })
            .map_max_entries("events", ring_bytes)
            .map_max_entries("counts_0", window_entries)
            .map_max_entries("counts_1", window_entries)
            .map_max_entries("user_stacks_0", window_entries)
            .map_max_entries("user_stacks_1", window_entries)
            .map_max_entries("stacks_0", kernel_stacks)
            .map_max_entries("stacks_1", kernel_stacks)
            .map_max_entries("off_cpu_counts_0", off_cpu_entries)
            .map_max_entries("off_cpu_counts_1", off_cpu_entries)
            .map_max_entries("off_cpu_stacks", off_cpu_entries)
            .map_max_entries("off_cpu_user_stacks", off_cpu_entries)
            .map_max_entries("off_cpu_pending", if off_cpu { 32768 } else { 1 })
            .load(OBJECT)
            .map_err(|e| load_error(&e))?;
        let mut sampler = Sampler {
            ebpf,
            window: 0,
            include_idle: opts.include_idle,
            unwind_mode: opts.unwind_mode,
            targeted: opts.targeted,
            mmap_hook: false,
            frequency: opts.frequency,
            timers: Vec::new(),
            off_cpu_threshold: off_cpu_threshold_bits(opts.off_cpu_threshold),
            off_cpu_unneeded: OffCpuStackIds::default(),
            sampling: true,
        };
        sampler.write_config()?;
        sampler
            .sample_cpu()?
            .load()
            .map_err(|e| program_error("sample_cpu", e, opts.verbose))?;
        sampler.set_sampling(true)?;
        sampler.attach_mmap_exec();
        // Raw tracepoints need no tracefs mount (nor kernel BTF). Off-CPU
        // profiling is one on `sched_switch`, which sees both sides of every
        // switch without a kprobe or a BPF trampoline (kernels may lack both).
        let forks = opts
            .targeted
            .then_some(("process_fork", "sched_process_fork"));
        let switches = off_cpu.then_some(("off_cpu_switch", "sched_switch"));
        for (name, tracepoint) in [
            ("process_exec", "sched_process_exec"),
            ("process_exit", "sched_process_exit"),
        ]
        .into_iter()
        .chain(forks)
        .chain(switches)
        {
            let program: &mut RawTracePoint = sampler
                .ebpf
                .program_mut(name)
                .ok_or_else(|| map_error("object", format!("no program {name}")))?
                .try_into()
                .map_err(|e| map_error(name, e))?;
            program
                .load()
                .map_err(|e| program_error(name, e, opts.verbose))?;
            program
                .attach(tracepoint)
                .map_err(|e| program_error(name, e, opts.verbose))?;
        }
        Ok(sampler)
    }

    fn sample_cpu(&mut self) -> Result<&mut PerfEvent, EbpfCpuError> {
        self.ebpf
            .program_mut("sample_cpu")
            .ok_or_else(|| map_error("object", "no program sample_cpu"))?
            .try_into()
            .map_err(|e| map_error("sample_cpu", e))
    }

    /// Starts or pauses sampling: the timer on each online CPU is opened,
    /// or closed (paused, no timer fires and the program never runs). On an
    /// error the timers that did change stay changed and are remembered, so
    /// a later call finishes the job without opening a CPU's timer twice.
    pub fn set_sampling(&mut self, on: bool) -> Result<(), EbpfCpuError> {
        let frequency = self.frequency;
        self.sampling = on;
        // Off-CPU timing pauses with it (a task already timed is recorded
        // when it comes back).
        self.write_config()?;
        let mut timers = std::mem::take(&mut self.timers);
        let program = self.sample_cpu()?;
        let result = if on {
            online_cpus()
                .map_err(|(what, e)| map_error(what, e))
                .and_then(|cpus| {
                    for cpu in cpus {
                        if timers.iter().any(|&(on_cpu, _)| on_cpu == cpu) {
                            continue;
                        }
                        let timer = program
                            .attach(
                                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                                PerfEventScope::AllProcessesOneCpu { cpu },
                                SamplePolicy::Frequency(frequency),
                                false,
                            )
                            .map_err(|e| program_error("sample_cpu", e, false))?;
                        timers.push((cpu, timer));
                    }
                    Ok(())
                })
        } else {
            // A failed detach still forgets the link (aya takes it out of
            // the program first): no timer is left to retry.
            let mut failed = Ok(());
            for (_, timer) in timers.drain(..) {
                if let Err(e) = program.detach(timer) {
                    failed = Err(program_error("sample_cpu", e, false));
                }
            }
            failed
        };
        self.timers = timers;
        result
    }

    /// Whether new executable mappings are reported as they are made (the
    /// fexit hook is attached).
    pub fn reports_mmaps(&self) -> bool {
        self.mmap_hook
    }

    /// Attaches `process_mmap_exec` (fexit, which needs kernel BTF and BPF
    /// trampolines). Without it new libraries are still found, only later:
    /// by a read shortly after exec (the loader's) or when a sample lands
    /// in them (a dlopen).
    fn attach_mmap_exec(&mut self) {
        let attached = (|| {
            let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
            let program: &mut FExit = self
                .ebpf
                .program_mut("process_mmap_exec")
                .ok_or("no program process_mmap_exec")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            program
                .load("vm_mmap_pgoff", &btf)
                .map_err(|e| format!("loading: {e}"))?;
            program.attach().map_err(|e| format!("attaching: {e}"))?;
            Ok::<_, String>(())
        })();
        self.mmap_hook = attached.is_ok();
        if let Err(error) = attached {
            tracing::info!(%error, "no fexit hook on vm_mmap_pgoff: libraries the loader maps are found by a second read shortly after exec, later ones when first sampled");
        }
    }

    fn write_config(&mut self) -> Result<(), EbpfCpuError> {
        let mut config: Array<&mut MapData, SamplerConfig> = Array::try_from(
            self.ebpf
                .map_mut("config")
                .ok_or_else(|| map_error("object", "no map config"))?,
        )
        .map_err(|e| map_error("config", e))?;
        let value = SamplerConfig {
            window: self.window,
            include_idle: u32::from(self.include_idle),
            unwind_mode: self.unwind_mode as u32,
            targeted: u32::from(self.targeted),
            off_cpu_threshold: if self.sampling {
                self.off_cpu_threshold
            } else {
                0
            },
        };
        config.set(0, value, 0).map_err(|e| map_error("config", e))
    }

    /// Takes the ring buffer of process events (once).
    pub fn take_events(&mut self) -> Result<RingBuf<aya::maps::MapData>, EbpfCpuError> {
        let map = self
            .ebpf
            .take_map("events")
            .ok_or_else(|| map_error("object", "no map events"))?;
        RingBuf::try_from(map).map_err(|e| map_error("events", e))
    }

    /// Takes the map of targeted processes (once).
    pub fn take_targets(&mut self) -> Result<BpfHashMap<MapData, u32, u8>, EbpfCpuError> {
        let map = self
            .ebpf
            .take_map("targets")
            .ok_or_else(|| map_error("object", "no map targets"))?;
        BpfHashMap::try_from(map).map_err(|e| map_error("targets", e))
    }

    /// Takes the flag the event reader raises before it sleeps (once).
    pub fn take_reader_asleep(&mut self) -> Result<ReaderAsleep, EbpfCpuError> {
        let map = self
            .ebpf
            .take_map("reader_asleep")
            .ok_or_else(|| map_error("object", "no map reader_asleep"))?;
        Ok(ReaderAsleep(
            Array::try_from(map).map_err(|e| map_error("reader_asleep", e))?,
        ))
    }

    /// Takes the unwinder's table and process maps (once).
    pub fn take_unwind_maps(&mut self) -> Result<UnwindMaps, EbpfCpuError> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| map_error("object", format!("no map {name}")))
        };
        let tables = take("unwind_tables")?;
        let processes = take("unwind_processes")?;
        let generations = take("known_processes")?;
        let aya::maps::Map::HashOfMaps(tables) = tables else {
            return Err(map_error("unwind_tables", "not a hash of maps"));
        };
        Ok(UnwindMaps {
            tables,
            processes: BpfHashMap::try_from(processes)
                .map_err(|e| map_error("unwind_processes", e))?,
            generations: BpfHashMap::try_from(generations)
                .map_err(|e| map_error("known_processes", e))?,
        })
    }

    /// Sends new samples to the other map set, waits for programs still
    /// writing to the old one, then empties the old set and returns it.
    pub fn flip_and_drain(&mut self) -> Result<Drained, EbpfCpuError> {
        let old = self.window;
        self.window = old.wrapping_add(1);
        self.write_config()?;
        // A perf_event program runs for microseconds; this is ample for any in flight.
        std::thread::sleep(Duration::from_millis(5));

        let set = old & 1;
        let stacks_name = if set == 0 { "stacks_0" } else { "stacks_1" };
        let user_stacks_name = if set == 0 {
            "user_stacks_0"
        } else {
            "user_stacks_1"
        };
        let mut drained = Drained {
            window: old,
            ..Drained::default()
        };
        drained.counts = self.drain_counts(["counts_0", "counts_1"][set as usize])?;
        {
            let mut user: BpfHashMap<&mut MapData, u64, UserStack> = BpfHashMap::try_from(
                self.ebpf
                    .map_mut(user_stacks_name)
                    .ok_or_else(|| map_error("object", user_stacks_name))?,
            )
            .map_err(|e| map_error(user_stacks_name, e))?;
            drained.user_stacks = user.iter().filter_map(Result::ok).collect();
            for key in drained.user_stacks.keys() {
                let _ = user.remove(key);
            }
        }
        let mut stacks: StackTraceMap<&mut MapData> = StackTraceMap::try_from(
            self.ebpf
                .map_mut(stacks_name)
                .ok_or_else(|| map_error("object", stacks_name))?,
        )
        .map_err(|e| map_error(stacks_name, e))?;
        for (key, _) in &drained.counts {
            let id = key.kernel_stack_id;
            if id < 0 || drained.kernel_stacks.contains_key(&id) {
                continue;
            }
            if let Ok(trace) = stacks.get(&(id as u32), 0) {
                drained
                    .kernel_stacks
                    .insert(id, trace.frames().iter().map(|f| f.ip).collect());
            }
        }
        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }
        if self.off_cpu_threshold > 0 {
            drained.off_cpu =
                self.drain_counts(["off_cpu_counts_0", "off_cpu_counts_1"][set as usize])?;
            self.read_off_cpu_stacks(&mut drained)?;
        }
        Ok(drained)
    }

    /// Copies the stacks of the window's off-CPU keys out of the off-CPU
    /// stack maps (not per window: a task may come back windows after it
    /// went off CPU), then frees the stacks no key has needed at two
    /// drains in a row: none of the timed tasks still away nor the window
    /// being written named them, now or at the last drain. (A stack taken
    /// again between this drain's look at those keys and its removal,
    /// milliseconds, is freed under its key.)
    fn read_off_cpu_stacks(&mut self, drained: &mut Drained) -> Result<(), EbpfCpuError> {
        let counted = OffCpuStackIds::of(drained.off_cpu.iter().map(|(key, _)| key));
        let kernel_map = self
            .ebpf
            .map_mut("off_cpu_stacks")
            .ok_or_else(|| map_error("object", "off_cpu_stacks"))?;
        let kernel: StackTraceMap<&mut MapData> =
            StackTraceMap::try_from(kernel_map).map_err(|e| map_error("off_cpu_stacks", e))?;
        for &id in &counted.kernel {
            if let Ok(trace) = kernel.get(&(id as u32), 0) {
                let frames = trace.frames().iter().map(|f| f.ip).collect();
                drained.off_cpu_kernel_stacks.insert(id, frames);
            }
        }
        let kernel_present: Vec<i32> = kernel
            .stack_ids()
            .filter_map(Result::ok)
            .map(|id| id as i32)
            .collect();
        let user_map = self
            .ebpf
            .map("off_cpu_user_stacks")
            .ok_or_else(|| map_error("object", "off_cpu_user_stacks"))?;
        let user: BpfHashMap<&MapData, u64, UserStack> =
            BpfHashMap::try_from(user_map).map_err(|e| map_error("off_cpu_user_stacks", e))?;
        for &key in &counted.user {
            if let Ok(stack) = user.get(&key, 0) {
                drained.user_stacks.entry(key).or_insert(stack);
            }
        }
        let user_present: Vec<u64> = user.keys().filter_map(Result::ok).collect();

        // Listed before the keys that need them are read: a stack taken
        // after its listing is not a candidate.
        let pending: BpfHashMap<&MapData, u32, OffCpuPending> = BpfHashMap::try_from(
            self.ebpf
                .map("off_cpu_pending")
                .ok_or_else(|| map_error("object", "off_cpu_pending"))?,
        )
        .map_err(|e| map_error("off_cpu_pending", e))?;
        let mut needed: Vec<SampleKey> = pending
            .iter()
            .filter_map(Result::ok)
            .map(|(_, p)| p.key)
            .collect();
        let writing = ["off_cpu_counts_0", "off_cpu_counts_1"][(self.window & 1) as usize];
        let counts: BpfHashMap<&MapData, SampleKey, u64> = BpfHashMap::try_from(
            self.ebpf
                .map(writing)
                .ok_or_else(|| map_error("object", writing))?,
        )
        .map_err(|e| map_error(writing, e))?;
        needed.extend(counts.keys().filter_map(Result::ok));
        let needed = OffCpuStackIds::of(needed.iter());

        let before = std::mem::take(&mut self.off_cpu_unneeded);
        let mut unneeded = OffCpuStackIds::default();
        let mut kernel: StackTraceMap<&mut MapData> = StackTraceMap::try_from(
            self.ebpf
                .map_mut("off_cpu_stacks")
                .ok_or_else(|| map_error("object", "off_cpu_stacks"))?,
        )
        .map_err(|e| map_error("off_cpu_stacks", e))?;
        unneeded.kernel = sweep(kernel_present, &needed.kernel, &before.kernel, |id| {
            let _ = kernel.remove(&(*id as u32));
        });
        let mut user: BpfHashMap<&mut MapData, u64, UserStack> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("off_cpu_user_stacks")
                .ok_or_else(|| map_error("object", "off_cpu_user_stacks"))?,
        )
        .map_err(|e| map_error("off_cpu_user_stacks", e))?;
        unneeded.user = sweep(user_present, &needed.user, &before.user, |key| {
            let _ = user.remove(key);
        });
        self.off_cpu_unneeded = unneeded;
        Ok(())
    }

    /// Empties a counts map of the idle set and returns what it held.
    fn drain_counts(&mut self, name: &str) -> Result<Vec<(SampleKey, u64)>, EbpfCpuError> {
        let mut counts: BpfHashMap<&mut MapData, SampleKey, u64> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| map_error("object", name))?,
        )
        .map_err(|e| map_error(name, e))?;
        let drained: Vec<(SampleKey, u64)> = counts.iter().filter_map(Result::ok).collect();
        for (key, _) in &drained {
            // Already gone is fine: nothing writes to this set now.
            let _ = counts.remove(key);
        }
        Ok(drained)
    }

    /// Reads the goroutine labels the samples of `drained` refer to (after
    /// its deferred samples are in). Sets evicted meanwhile from the LRU map
    /// (1024 distinct sets in flight) are missing: those samples go without.
    pub fn read_go_labels(&self, drained: &mut Drained) -> Result<(), EbpfCpuError> {
        let map = self
            .ebpf
            .map("go_labels")
            .ok_or_else(|| map_error("object", "go_labels"))?;
        let labels: BpfHashMap<&MapData, u64, GoLabels> =
            BpfHashMap::try_from(map).map_err(|e| map_error("go_labels", e))?;
        let ids = drained
            .counts
            .iter()
            .chain(&drained.off_cpu)
            .map(|(key, _)| key.go_labels)
            .chain(drained.deferred.iter().map(|f| f.key.go_labels));
        for id in ids {
            if id != 0 && !drained.go_labels.contains_key(&id) {
                if let Ok(set) = labels.get(&id, 0) {
                    drained.go_labels.insert(id, set.pairs());
                }
            }
        }
        Ok(())
    }

    /// The sampler's counters, summed over CPUs, in [`STAT_NAMES`] order.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT], EbpfCpuError> {
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("stats")
                .ok_or_else(|| map_error("object", "stats"))?,
        )
        .map_err(|e| map_error("stats", e))?;
        let mut out = [0u64; STAT_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = stats.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        Ok(out)
    }
}

/// Stack ids of the off-CPU stack maps.
#[derive(Default)]
struct OffCpuStackIds {
    kernel: HashSet<i32>,
    user: HashSet<u64>,
}

impl OffCpuStackIds {
    /// The stacks the keys name.
    fn of<'a>(keys: impl Iterator<Item = &'a SampleKey>) -> Self {
        let mut ids = Self::default();
        for key in keys {
            if key.kernel_stack_id >= 0 {
                ids.kernel.insert(key.kernel_stack_id);
            }
            if key.user_stack != 0 {
                ids.user.insert(key.user_stack);
            }
        }
        ids
    }
}

/// Frees (`free`) the present stacks neither needed now nor at the last
/// drain (`before`: the ones unneeded then); returns the ones unneeded now
/// and kept for one more drain.
fn sweep<K: std::hash::Hash + Eq + Copy>(
    present: Vec<K>,
    needed: &HashSet<K>,
    before: &HashSet<K>,
    mut free: impl FnMut(&K),
) -> HashSet<K> {
    let mut unneeded = HashSet::new();
    for id in present.into_iter().filter(|id| !needed.contains(id)) {
        if before.contains(&id) {
            free(&id);
        } else {
            unneeded.insert(id);
        }
    }
    unneeded
}

/// `sampler_config.off_cpu_threshold` for a probability: 2^32 × p.
pub(crate) fn off_cpu_threshold_bits(probability: f64) -> u64 {
    (probability.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64
}

/// Online CPUs, at least 1.
fn num_cpus() -> u32 {
    online_cpus().map_or(1, |cpus| cpus.len().max(1) as u32)
}

/// Deferred walks each CPU can have queued, at the least.
const MIN_DEFERRED_PER_CPU: u64 = 8;
/// How long the event thread may be busy (loading tables) on top of its
/// pauses: the ring holds every sample of that long on every CPU as
/// deferred walks, within [`MAX_DEFERRED_BYTES`].
const DEFERRED_BURST: Duration = Duration::from_millis(200);
/// Most ring buffer bytes kept for deferred walks.
const MAX_DEFERRED_BYTES: u64 = 8 << 20;

/// The ring buffer's size, a power of 2: twice the larger of
/// `events_pages` (process events) and room for the deferred walks of a
/// `burst` of samples at `frequency` on `cpus`. The BPF program defers only
/// while the ring is less than half full, so process events always keep
/// their room.
fn ring_buffer_bytes(events_pages: u32, cpus: u32, frequency: u64, burst: Duration) -> u32 {
    let events = u64::from(events_pages.max(1)) * 4096;
    let burst_ms = u64::try_from(burst.as_millis()).unwrap_or(u64::MAX);
    let per_cpu = (frequency.saturating_mul(burst_ms) / 1000).max(MIN_DEFERRED_PER_CPU);
    let deferred = (std::mem::size_of::<DeferredSample>() as u64)
        .saturating_mul(per_cpu)
        .saturating_mul(u64::from(cpus))
        .min(MAX_DEFERRED_BYTES);
    let bytes = (events.max(deferred) * 2).next_power_of_two();
    u32::try_from(bytes).unwrap_or(1 << 31)
}

/// Fewest and most entries of each window's sample count and user stack maps.
const MIN_WINDOW_ENTRIES: u64 = 1024;
const MAX_WINDOW_ENTRIES: u64 = 1 << 16;

/// Distinct off-CPU keys (thread, CPU, stacks) a window holds, and user
/// stacks added for them: switches are not paced by the sampling frequency,
/// a busy node's threads repeat their few blocking stacks. More are counted
/// (`counts_full`, `user_stacks_full`).
const OFF_CPU_WINDOW_ENTRIES: u32 = 8192;

/// Entries of each window's sample count and user stack maps (both
/// preallocated, a user stack ~1 KiB): every sample of a window on every CPU
/// may be a new key, twice that since a window's drain can come late,
/// within [`MIN_WINDOW_ENTRIES`, `MAX_WINDOW_ENTRIES`]. A sample that finds
/// no room is counted (`counts_full`, `user_stacks_full`).
fn window_map_entries(cpus: u32, frequency: u64, window: Duration) -> u32 {
    let entries = window_samples(cpus, frequency, window)
        .saturating_mul(2)
        .clamp(MIN_WINDOW_ENTRIES, MAX_WINDOW_ENTRIES);
    u32::try_from(entries).unwrap_or(u32::MAX)
}

/// Samples a window takes on every CPU.
fn window_samples(cpus: u32, frequency: u64, window: Duration) -> u64 {
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    frequency
        .saturating_mul(window_ms)
        .saturating_mul(u64::from(cpus))
        / 1000
}

/// Fewest and most entries of each window's kernel stack map (~1 KiB each).
const MIN_KERNEL_STACKS: u64 = 4096;
const MAX_KERNEL_STACKS: u64 = 1 << 14;

/// Entries of each window's kernel stack map. A stack trace map has as
/// many hash buckets (a power of two), and a stack whose bucket holds
/// another is lost (`kernel_stack_collisions`): eight buckets per sample a
/// window may take keep that under 1 in 16 even if every sample's kernel
/// stack differed, within [`MIN_KERNEL_STACKS`, `MAX_KERNEL_STACKS`] (the
/// floor, 4 MiB, is what 2 CPUs at 19 Hz need; it was the size on every
/// machine, 8192, at 8.5 MiB a window).
fn kernel_stack_entries(cpus: u32, frequency: u64, window: Duration) -> u32 {
    let entries = window_samples(cpus, frequency, window)
        .saturating_mul(8)
        .checked_next_power_of_two()
        .unwrap_or(MAX_KERNEL_STACKS)
        .clamp(MIN_KERNEL_STACKS, MAX_KERNEL_STACKS);
    u32::try_from(entries).unwrap_or(u32::MAX)
}

/// The flag the event reader raises before it sleeps: process events wake
/// it only while it sleeps (`reader_asleep` in cpu.bpf.c says why).
pub struct ReaderAsleep(Array<MapData, u64>);

impl ReaderAsleep {
    /// Raises the flag; false when the kernel refused (then nothing wakes
    /// the reader, which must not sleep long).
    pub fn raise(&mut self) -> bool {
        self.0.set(0, 1, 0).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    #[test]
    fn a_program_the_verifier_refused_is_not_blamed_on_privileges() {
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(load_not_permitted(&denied, ""));
        assert!(load_not_permitted(
            &std::io::Error::from_raw_os_error(libc::EPERM),
            "\n"
        ));
        assert!(!load_not_permitted(
            &denied,
            "2165: (61) r4 = *(u32 *)(r9 +24)\nR9 invalid mem access 'scalar'"
        ));
        assert!(!load_not_permitted(
            &std::io::Error::from_raw_os_error(libc::EINVAL),
            ""
        ));
    }

    #[test]
    fn a_helper_the_kernel_lacks_is_named() {
        let log = "180: (85) call unknown#181\ninvalid func unknown#181\nprocessed 2714 insns";
        assert_eq!(missing_helper(log), Some("bpf_loop (Linux 5.17)"));
        // Only an id it knows, and the whole id.
        assert_eq!(missing_helper("invalid func unknown#18\n"), None);
        assert_eq!(missing_helper("invalid func unknown#1811\n"), None);
        assert_eq!(
            missing_helper("R9 invalid mem access 'scalar'\ninvalid func unknown"),
            None
        );
        let error = EbpfCpuError::KernelLacksHelper("bpf_loop (Linux 5.17)").to_string();
        assert!(error.contains("bpf_loop (Linux 5.17)"), "{error}");
        assert!(verifier_hint(false, Some(KernelVersion::new(5, 10, 0))).contains("bpf_loop"));
        assert!(!verifier_hint(false, Some(KernelVersion::new(6, 1, 0))).contains("bpf_loop"));
        assert_eq!(verifier_hint(true, None), "");
    }

    /// The number after `key=` in a line of bpftool's raw BTF dump.
    fn btf_field(line: &str, key: &str) -> usize {
        line.split(&format!("{key}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    }

    /// `(size, [(member, byte offset)])` of struct `name` in bpftool's raw BTF dump.
    fn btf_struct(dump: &str, name: &str) -> (usize, Vec<(String, usize)>) {
        let header = format!("STRUCT '{name}' size=");
        let mut lines = dump.lines().skip_while(|l| !l.contains(&header));
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("struct {name} not in the object's BTF"));
        let size = btf_field(first, "size");
        let members = lines
            .take_while(|l| l.starts_with('\t'))
            .map(|l| {
                let member = l.trim().split('\'').nth(1).unwrap().to_owned();
                (member, btf_field(l, "bits_offset") / 8)
            })
            .collect();
        (size, members)
    }

    /// The `value_size` of the unwind tables' inner map template, from the
    /// object's BTF (`__uint` encodes it as a pointer to an array of that size).
    fn unwind_table_value_size(dump: &str) -> usize {
        let line_of = |id: usize| -> &str {
            let prefix = format!("[{id}] ");
            dump.lines().find(|l| l.starts_with(&prefix)).unwrap()
        };
        let member = dump
            .lines()
            .skip_while(|l| !l.contains("STRUCT 'unwind_table' "))
            .find(|l| l.contains("'value_size'"))
            .expect("unwind_table has a value_size");
        let pointer = line_of(btf_field(member, "type_id"));
        btf_field(line_of(btf_field(pointer, "type_id")), "nr_elems")
    }

    #[test]
    fn rust_twins_match_the_object_btf() {
        let object = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/cpu.bpf.o");
        let dump = match Command::new("bpftool")
            .args(["btf", "dump", "file", object, "format", "raw"])
            .output()
        {
            Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
            other => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("bpftool is needed in CI to check the BPF struct layouts: {other:?}");
                }
                eprintln!("SKIPPED: bpftool not available ({other:?})");
                return;
            }
        };
        let check = |name: &str, size: usize, members: &[(&str, usize)]| {
            let (btf_size, btf_members) = btf_struct(&dump, name);
            assert_eq!(btf_size, size, "size of {name}");
            let ours: Vec<(String, usize)> =
                members.iter().map(|(m, o)| (m.to_string(), *o)).collect();
            assert_eq!(btf_members, ours, "members of {name}");
        };
        check(
            "sample_key",
            size_of::<SampleKey>(),
            &[
                ("pid", offset_of!(SampleKey, pid)),
                ("tid", offset_of!(SampleKey, tid)),
                ("cpu", offset_of!(SampleKey, cpu)),
                ("kernel_stack_id", offset_of!(SampleKey, kernel_stack_id)),
                ("user_stack", offset_of!(SampleKey, user_stack)),
                ("go_labels", offset_of!(SampleKey, go_labels)),
                ("comm", offset_of!(SampleKey, comm)),
            ],
        );
        check(
            "off_cpu_pending",
            size_of::<OffCpuPending>(),
            &[
                ("key", offset_of!(OffCpuPending, key)),
                ("since", offset_of!(OffCpuPending, since)),
            ],
        );
        check(
            "sampler_config",
            size_of::<SamplerConfig>(),
            &[
                ("window", offset_of!(SamplerConfig, window)),
                ("include_idle", offset_of!(SamplerConfig, include_idle)),
                ("unwind_mode", offset_of!(SamplerConfig, unwind_mode)),
                ("targeted", offset_of!(SamplerConfig, targeted)),
                (
                    "off_cpu_threshold",
                    offset_of!(SamplerConfig, off_cpu_threshold),
                ),
            ],
        );
        check(
            "user_stack",
            size_of::<UserStack>(),
            &[
                ("len", offset_of!(UserStack, len)),
                ("status", offset_of!(UserStack, status)),
                ("frames", offset_of!(UserStack, frames)),
            ],
        );
        check(
            "unwind_mapping",
            size_of::<UnwindMapping>(),
            &[
                ("start", offset_of!(UnwindMapping, start)),
                ("end", offset_of!(UnwindMapping, end)),
                ("bias", offset_of!(UnwindMapping, bias)),
                ("table_id", offset_of!(UnwindMapping, table_id)),
                ("rows", offset_of!(UnwindMapping, rows)),
            ],
        );
        check(
            "process_unwind_info",
            size_of::<ProcessUnwindInfo>(),
            &[
                (
                    "refresh_requested_ns",
                    offset_of!(ProcessUnwindInfo, refresh_requested_ns),
                ),
                ("written_ns", offset_of!(ProcessUnwindInfo, written_ns)),
                (
                    "mapping_count",
                    offset_of!(ProcessUnwindInfo, mapping_count),
                ),
                ("generation", offset_of!(ProcessUnwindInfo, generation)),
                ("interp", offset_of!(ProcessUnwindInfo, interp)),
                ("go", offset_of!(ProcessUnwindInfo, go)),
                ("mappings", offset_of!(ProcessUnwindInfo, mappings)),
            ],
        );
        check(
            "interp_info",
            size_of::<InterpInfo>(),
            &[
                ("kind", offset_of!(InterpInfo, kind)),
                ("version", offset_of!(InterpInfo, version)),
                ("loop_start", offset_of!(InterpInfo, loop_start)),
                ("loop_end", offset_of!(InterpInfo, loop_end)),
                ("cold_start", offset_of!(InterpInfo, cold_start)),
                ("cold_end", offset_of!(InterpInfo, cold_end)),
                ("python", offset_of!(InterpInfo, python)),
                ("php", offset_of!(InterpInfo, php)),
                ("ruby", offset_of!(InterpInfo, ruby)),
                ("v8", offset_of!(InterpInfo, v8)),
                ("jvm", offset_of!(InterpInfo, jvm)),
            ],
        );
        check(
            "jvm_layout",
            size_of::<JvmLayout>(),
            &[
                ("code_start", offset_of!(JvmLayout, code_start)),
                ("code_end", offset_of!(JvmLayout, code_end)),
                ("heap_low", offset_of!(JvmLayout, heap_low)),
                ("heap_high", offset_of!(JvmLayout, heap_high)),
                ("heap_segmap", offset_of!(JvmLayout, heap_segmap)),
                (
                    "heap_log2_segment",
                    offset_of!(JvmLayout, heap_log2_segment),
                ),
                ("heap_count", offset_of!(JvmLayout, heap_count)),
                ("block_header", offset_of!(JvmLayout, block_header)),
                ("kind_size", offset_of!(JvmLayout, kind_size)),
                (
                    "frame_complete_size",
                    offset_of!(JvmLayout, frame_complete_size),
                ),
                ("code_is_offset", offset_of!(JvmLayout, code_is_offset)),
                ("reserved", offset_of!(JvmLayout, reserved)),
                ("blob_kind", offset_of!(JvmLayout, blob_kind)),
                ("kind_nmethod", offset_of!(JvmLayout, kind_nmethod)),
                (
                    "blob_frame_complete",
                    offset_of!(JvmLayout, blob_frame_complete),
                ),
                ("blob_frame_size", offset_of!(JvmLayout, blob_frame_size)),
                ("blob_code", offset_of!(JvmLayout, blob_code)),
                ("blob_size", offset_of!(JvmLayout, blob_size)),
                ("nmethod_method", offset_of!(JvmLayout, nmethod_method)),
                (
                    "nmethod_compile_id",
                    offset_of!(JvmLayout, nmethod_compile_id),
                ),
                ("method_const", offset_of!(JvmLayout, method_const)),
                (
                    "const_method_size",
                    offset_of!(JvmLayout, const_method_size),
                ),
                ("reserved2", offset_of!(JvmLayout, reserved2)),
            ],
        );
        check(
            "v8_layout",
            size_of::<V8Layout>(),
            &[
                ("fp_context", offset_of!(V8Layout, fp_context)),
                ("fp_function", offset_of!(V8Layout, fp_function)),
                ("fp_bytecode_array", offset_of!(V8Layout, fp_bytecode_array)),
                (
                    "fp_bytecode_offset",
                    offset_of!(V8Layout, fp_bytecode_offset),
                ),
                ("code_kind_mask", offset_of!(V8Layout, code_kind_mask)),
                ("code_kind_shift", offset_of!(V8Layout, code_kind_shift)),
                (
                    "code_kind_baseline",
                    offset_of!(V8Layout, code_kind_baseline),
                ),
                (
                    "code_start_is_pointer",
                    offset_of!(V8Layout, code_start_is_pointer),
                ),
                ("function_shared", offset_of!(V8Layout, function_shared)),
                ("function_code", offset_of!(V8Layout, function_code)),
                ("map_instance_type", offset_of!(V8Layout, map_instance_type)),
                ("sfi_function_data", offset_of!(V8Layout, sfi_function_data)),
                ("sfi_name", offset_of!(V8Layout, sfi_name)),
                ("sfi_script", offset_of!(V8Layout, sfi_script)),
                ("sfi_size", offset_of!(V8Layout, sfi_size)),
                (
                    "code_instruction_start",
                    offset_of!(V8Layout, code_instruction_start),
                ),
                (
                    "code_instruction_size",
                    offset_of!(V8Layout, code_instruction_size),
                ),
                ("code_flags", offset_of!(V8Layout, code_flags)),
                ("code_size", offset_of!(V8Layout, code_size)),
                ("type_sfi", offset_of!(V8Layout, type_sfi)),
                (
                    "type_bytecode_array",
                    offset_of!(V8Layout, type_bytecode_array),
                ),
                ("type_code", offset_of!(V8Layout, type_code)),
                ("reserved", offset_of!(V8Layout, reserved)),
            ],
        );
        check(
            "ruby_layout",
            size_of::<RubyLayout>(),
            &[
                ("tls_module_got", offset_of!(RubyLayout, tls_module_got)),
                (
                    "tls_static_offset",
                    offset_of!(RubyLayout, tls_static_offset),
                ),
                ("ec_global", offset_of!(RubyLayout, ec_global)),
                ("tls_offset", offset_of!(RubyLayout, tls_offset)),
                ("ec_vm_stack", offset_of!(RubyLayout, ec_vm_stack)),
                ("ec_vm_stack_size", offset_of!(RubyLayout, ec_vm_stack_size)),
                ("ec_cfp", offset_of!(RubyLayout, ec_cfp)),
                ("cfp_size", offset_of!(RubyLayout, cfp_size)),
                ("cfp_pc", offset_of!(RubyLayout, cfp_pc)),
                ("cfp_iseq", offset_of!(RubyLayout, cfp_iseq)),
                ("cfp_ep", offset_of!(RubyLayout, cfp_ep)),
                ("iseq_body", offset_of!(RubyLayout, iseq_body)),
                ("body_size", offset_of!(RubyLayout, body_size)),
                ("body_encoded", offset_of!(RubyLayout, body_encoded)),
                ("cme_def", offset_of!(RubyLayout, cme_def)),
                ("cme_owner", offset_of!(RubyLayout, cme_owner)),
                ("reserved", offset_of!(RubyLayout, reserved)),
            ],
        );
        check(
            "php_layout",
            size_of::<PhpLayout>(),
            &[
                (
                    "current_execute_data",
                    offset_of!(PhpLayout, current_execute_data),
                ),
                ("data_opline", offset_of!(PhpLayout, data_opline)),
                ("data_func", offset_of!(PhpLayout, data_func)),
                ("data_call_info", offset_of!(PhpLayout, data_call_info)),
                ("data_prev", offset_of!(PhpLayout, data_prev)),
                ("data_size", offset_of!(PhpLayout, data_size)),
                ("func_name", offset_of!(PhpLayout, func_name)),
                ("func_scope", offset_of!(PhpLayout, func_scope)),
                ("func_filename", offset_of!(PhpLayout, func_filename)),
                ("func_line_start", offset_of!(PhpLayout, func_line_start)),
                ("func_size", offset_of!(PhpLayout, func_size)),
                ("op_lineno", offset_of!(PhpLayout, op_lineno)),
                ("reserved", offset_of!(PhpLayout, reserved)),
            ],
        );
        check(
            "python_layout",
            size_of::<PythonLayout>(),
            &[
                ("interp_head", offset_of!(PythonLayout, interp_head)),
                ("code_type", offset_of!(PythonLayout, code_type)),
                ("interp_threads", offset_of!(PythonLayout, interp_threads)),
                ("tstate_next", offset_of!(PythonLayout, tstate_next)),
                (
                    "tstate_thread_id",
                    offset_of!(PythonLayout, tstate_thread_id),
                ),
                ("tstate_frame", offset_of!(PythonLayout, tstate_frame)),
                ("cframe_frame", offset_of!(PythonLayout, cframe_frame)),
                ("frame_back", offset_of!(PythonLayout, frame_back)),
                ("frame_code", offset_of!(PythonLayout, frame_code)),
                ("frame_instr", offset_of!(PythonLayout, frame_instr)),
                ("frame_entry", offset_of!(PythonLayout, frame_entry)),
                ("frame_size", offset_of!(PythonLayout, frame_size)),
                ("code_name", offset_of!(PythonLayout, code_name)),
                (
                    "code_firstlineno",
                    offset_of!(PythonLayout, code_firstlineno),
                ),
                ("code_argcount", offset_of!(PythonLayout, code_argcount)),
                ("code_bytecode", offset_of!(PythonLayout, code_bytecode)),
                ("code_size", offset_of!(PythonLayout, code_size)),
                ("code_filename", offset_of!(PythonLayout, code_filename)),
                ("code_identity", offset_of!(PythonLayout, code_identity)),
                (
                    "instr_is_pointer",
                    offset_of!(PythonLayout, instr_is_pointer),
                ),
                ("entry_rule", offset_of!(PythonLayout, entry_rule)),
                ("entry_shim", offset_of!(PythonLayout, entry_shim)),
                ("reserved", offset_of!(PythonLayout, reserved)),
            ],
        );
        check(
            "interp_code_event",
            size_of::<InterpCodeEvent>(),
            &[
                ("kind", offset_of!(InterpCodeEvent, kind)),
                ("pid", offset_of!(InterpCodeEvent, pid)),
                ("interp", offset_of!(InterpCodeEvent, interp)),
                ("validation", offset_of!(InterpCodeEvent, validation)),
                ("object", offset_of!(InterpCodeEvent, object)),
            ],
        );
        use agent_unwind_table::UnwindRow;
        assert_eq!(unwind_table_value_size(&dump), UNWIND_BLOCK_BYTES);
        assert_eq!(ROWS_PER_BLOCK * size_of::<UnwindRow>(), UNWIND_BLOCK_BYTES);
        assert_eq!(FENCES_PER_BLOCK * size_of::<u32>(), UNWIND_BLOCK_BYTES);
        check(
            "unwind_row",
            size_of::<UnwindRow>(),
            &[
                ("pc", offset_of!(UnwindRow, pc)),
                ("kind", offset_of!(UnwindRow, kind)),
                ("rbp_offset", offset_of!(UnwindRow, rbp_offset)),
                ("cfa_offset", offset_of!(UnwindRow, cfa_offset)),
            ],
        );
        check(
            "deferred_sample",
            size_of::<DeferredSample>(),
            &[
                ("kind", offset_of!(DeferredSample, kind)),
                ("pid", offset_of!(DeferredSample, pid)),
                ("tid", offset_of!(DeferredSample, tid)),
                ("cpu", offset_of!(DeferredSample, cpu)),
                ("window", offset_of!(DeferredSample, window)),
                ("generation", offset_of!(DeferredSample, generation)),
                ("time_ns", offset_of!(DeferredSample, time_ns)),
                ("go_labels", offset_of!(DeferredSample, go_labels)),
                ("pc", offset_of!(DeferredSample, pc)),
                ("sp", offset_of!(DeferredSample, sp)),
                ("bp", offset_of!(DeferredSample, bp)),
                ("exact_pc", offset_of!(DeferredSample, exact_pc)),
                ("trusted_pc", offset_of!(DeferredSample, trusted_pc)),
                ("stack_bytes", offset_of!(DeferredSample, stack_bytes)),
                ("kernel_len", offset_of!(DeferredSample, kernel_len)),
                ("interp_words", offset_of!(DeferredSample, interp_words)),
                ("reserved", offset_of!(DeferredSample, reserved)),
                ("comm", offset_of!(DeferredSample, comm)),
                ("kernel", offset_of!(DeferredSample, kernel)),
                ("user", offset_of!(DeferredSample, user)),
                ("stack", offset_of!(DeferredSample, stack)),
            ],
        );
        check(
            "go_layout",
            size_of::<GoLayout>(),
            &[
                ("tls_g", offset_of!(GoLayout, tls_g)),
                ("labels_kind", offset_of!(GoLayout, labels_kind)),
                ("g_m", offset_of!(GoLayout, g_m)),
                ("m_curg", offset_of!(GoLayout, m_curg)),
                ("g_labels", offset_of!(GoLayout, g_labels)),
                ("reserved", offset_of!(GoLayout, reserved)),
            ],
        );
        check(
            "go_labels",
            size_of::<GoLabels>(),
            &[
                ("count", offset_of!(GoLabels, count)),
                ("truncated", offset_of!(GoLabels, truncated)),
                ("labels", offset_of!(GoLabels, labels)),
            ],
        );
        check(
            "go_label",
            size_of::<GoLabel>(),
            &[
                ("key_len", offset_of!(GoLabel, key_len)),
                ("value_len", offset_of!(GoLabel, value_len)),
                ("key", offset_of!(GoLabel, key)),
                ("value", offset_of!(GoLabel, value)),
            ],
        );
        check(
            "process_event",
            size_of::<ProcessEvent>(),
            &[
                ("kind", offset_of!(ProcessEvent, kind)),
                ("pid", offset_of!(ProcessEvent, pid)),
            ],
        );
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    #[test]
    fn an_off_cpu_stack_is_freed_after_two_drains_unneeded() {
        let mut freed = Vec::new();
        let needed = HashSet::from([1]);
        // 2 and 3 unneeded now; 3 already at the last drain.
        let kept = sweep(vec![1, 2, 3], &needed, &HashSet::from([1, 3]), |id| {
            freed.push(*id)
        });
        assert_eq!(freed, [3]);
        assert_eq!(kept, HashSet::from([2]));
        // Needed again at the next drain: kept, and off the unneeded list.
        let kept = sweep(vec![1, 2], &HashSet::from([2]), &kept, |id| freed.push(*id));
        assert_eq!(freed, [3]);
        assert_eq!(kept, HashSet::from([1]));
    }

    #[test]
    fn off_cpu_probabilities_become_thresholds_of_a_random_u32() {
        assert_eq!(off_cpu_threshold_bits(0.0), 0);
        assert_eq!(off_cpu_threshold_bits(1.0), 1 << 32);
        assert_eq!(off_cpu_threshold_bits(0.5), 1 << 31);
        assert_eq!(off_cpu_threshold_bits(0.1), 429_496_730);
        // Every u32 is below 2^32: 1.0 times every switch.
        assert!(u64::from(u32::MAX) < off_cpu_threshold_bits(1.0));
    }

    #[test]
    fn window_maps_hold_twice_a_window_of_samples_within_bounds() {
        let ten_s = Duration::from_secs(10);
        // 2 CPUs at 19 Hz: 380 samples a window, the floor.
        assert_eq!(window_map_entries(2, 19, ten_s), 1024);
        // 64 CPUs at 19 Hz: 12,160 a window.
        assert_eq!(window_map_entries(64, 19, ten_s), 24_320);
        // 2 CPUs at 997 Hz in 1 s windows (the end-to-end tests).
        assert_eq!(window_map_entries(2, 997, Duration::from_secs(1)), 3988);
        for (cpus, frequency, window) in [
            (1024, 10_000, Duration::from_secs(3600)),
            (u32::MAX, u64::MAX, Duration::MAX),
        ] {
            assert_eq!(window_map_entries(cpus, frequency, window), 1 << 16);
        }
        assert_eq!(window_map_entries(1, 1, Duration::from_millis(100)), 1024);
    }

    #[test]
    fn kernel_stack_maps_have_eight_buckets_a_sample_within_bounds() {
        let ten_s = Duration::from_secs(10);
        // 380 samples a window: 3,040 buckets, the floor.
        assert_eq!(kernel_stack_entries(2, 19, ten_s), 4096);
        // 760: 6,080, a power of two up.
        assert_eq!(kernel_stack_entries(4, 19, ten_s), 8192);
        assert_eq!(kernel_stack_entries(64, 19, ten_s), 1 << 14);
        assert_eq!(
            kernel_stack_entries(2, 997, Duration::from_secs(1)),
            1 << 14
        );
        assert_eq!(
            kernel_stack_entries(u32::MAX, u64::MAX, Duration::MAX),
            1 << 14
        );
        assert_eq!(kernel_stack_entries(1, 1, Duration::from_millis(100)), 4096);
    }

    #[test]
    fn the_ring_buffer_holds_events_and_deferred_walks_of_every_cpu() {
        let record = std::mem::size_of::<DeferredSample>() as u64;
        for cpus in [1, 2, 16, 256] {
            for pages in [1, 64, 4096, 262_144] {
                for frequency in [1, 19, 997, 10_000] {
                    for burst_ms in [0, 450, 10_000_000] {
                        let burst = Duration::from_millis(burst_ms);
                        let bytes = u64::from(ring_buffer_bytes(pages, cpus, frequency, burst));
                        let case = format!(
                            "{cpus} CPUs, {pages} pages, {frequency} Hz, {burst_ms} ms: {bytes}"
                        );
                        assert!(bytes.is_power_of_two(), "{case}");
                        // Half stays for events; the other half for deferred walks (capped).
                        assert!(bytes / 2 >= u64::from(pages) * 4096, "{case}");
                        let samples = (frequency * burst_ms / 1000).max(8) * u64::from(cpus);
                        assert!(
                            bytes / 2 >= (samples * record).min(MAX_DEFERRED_BYTES),
                            "{case}"
                        );
                        assert!(
                            bytes <= 4 * (u64::from(pages) * 4096).max(MAX_DEFERRED_BYTES),
                            "{case}"
                        );
                    }
                }
            }
        }
        // The default 64 pages, 250 ms pause + 200 ms: 1 MiB at 19 Hz on 2 CPUs; 16 MiB at 997 Hz.
        let burst = Duration::from_millis(450);
        assert_eq!(ring_buffer_bytes(64, 2, 19, burst), 1 << 20);
        assert_eq!(ring_buffer_bytes(64, 2, 997, burst), 16 << 20);
    }
}
