/* Structs shared by the BPF program (cpu.bpf.c) and the receiver in Rust
 * (receivers/ebpf-cpu/src/bpf.rs holds #[repr(C)] twins; a test checks them
 * against this object's BTF). */
#ifndef AGENT_CPU_H
#define AGENT_CPU_H

#define COMM_LEN 16
/* The kernel's default perf_event_max_stack. */
#define MAX_STACK_DEPTH 127

/* Most executable mappings of one process the unwinder knows (a power of 2). */
#define MAX_UNWIND_MAPPINGS 512

/* Key of the sample counts: one entry per distinct (thread, CPU, stacks). */
struct sample_key {
	__u32 pid;             /* process (tgid) */
	__u32 tid;             /* thread */
	__u32 cpu;
	__s32 kernel_stack_id; /* < 0: no kernel stack (the error code) */
	__u64 user_stack;      /* key in the window's user_stacks map; 0: no user stack */
	__u64 go_labels;       /* key in the go_labels map; 0: no goroutine labels */
	char comm[COMM_LEN];   /* thread name */
};

enum unwind_mode {
	UNWIND_TABLES = 0,         /* tables where they exist, frame pointers elsewhere */
	UNWIND_FRAME_POINTERS = 1, /* frame pointers only */
	UNWIND_MIXED = 2,          /* per frame: a table row when one covers it, else frame pointers */
};

/* Settings user space writes into the one-entry `config` array. */
struct sampler_config {
	__u32 window;          /* the window's sequence number; its parity picks the map set */
	__u32 include_idle;    /* also sample the idle task (pid 0) */
	__u32 unwind_mode;     /* enum unwind_mode */
	__u32 targeted;        /* sample only the processes in the targets map */
	/* Off-CPU: a task going off CPU is timed when bpf_get_prandom_u32()
	 * is below this (0: never; 1 << 32: always). */
	__u64 off_cpu_threshold;
};

/* A task timed off CPU: its sample key (stack ids in off_cpu_stacks and
 * off_cpu_user_stacks) until it runs again. */
struct off_cpu_pending {
	struct sample_key key;
	__u64 since;           /* bpf_ktime_get_ns() when it went off CPU */
};

/* How a user stack walk ended. */
enum stack_status {
	STACK_COMPLETE = 0,             /* reached the outermost frame */
	STACK_TRUNCATED = 1,            /* MAX_STACK_DEPTH frames */
	STACK_READ_FAILED = 2,          /* the stack memory a row points to is unreadable */
	STACK_NO_ROW = 3,               /* no row covers the address */
	STACK_UNSUPPORTED_RULE = 4,     /* the row's rule cannot be followed */
	STACK_UNKNOWN_CODE = 5,         /* JIT or anonymous code whose frame pointer chain broke */
	STACK_FRAME_POINTER_FAILED = 6, /* the frame pointer chain broke in a known file */
	STACK_NO_TABLE = 7,             /* the table is not loaded (yet) and frame pointers failed */
	STACK_DEFERRED = 8,             /* handed to user space with a copy of the stack (never emitted) */
	STACK_COPY_EXHAUSTED = 9,       /* finished in user space: the walk needed stack past the copy */
};

/* An interpreter's frame takes two words of a user stack, leaf first: a
 * tag word (top byte INTERP_FRAME_TAG | enum interp_kind, then a 24-bit
 * instruction offset, then a 32-bit validation value) and the address of
 * the object user space names it by (CPython: the code object). A user
 * address never has its top bits set, so a tag word is never a pc. */
#define INTERP_FRAME_TAG 0xc0
/* The instruction offset is not known (or does not fit). */
#define INTERP_OFFSET_UNKNOWN 0xffffff
/* Closes one run of interpreter frames in a deferred sample (a tag word
 * of no interpreter). */
#define INTERP_RUN_END ((__u64)INTERP_FRAME_TAG << 56)
/* The highest user-space address (x86-64, 4-level or 5-level paging). */
#define USER_ADDRESS_MAX 0x00ffffffffffffffULL

enum interp_kind {
	INTERP_NONE = 0,
	INTERP_CPYTHON = 1,
	INTERP_PHP = 2,
	INTERP_RUBY = 3,
	INTERP_V8 = 4,
	/* A frame kind only (its process runs INTERP_V8): a JavaScript frame
	 * running code V8 generated that its function does not point to (on-
	 * stack replacement, deoptimized code), named by the code's address. */
	INTERP_V8_CODE_ADDRESS = 5,
	INTERP_JVM = 6,
	/* A frame kind only (its process runs INTERP_JVM): a frame of code the
	 * JIT compiled, named by its nmethod and the pc's offset in its code. */
	INTERP_JVM_COMPILED = 7,
};

/* A user stack, leaf first. */
struct user_stack {
	__u32 len;
	__u32 status;          /* enum stack_status */
	__u64 frames[MAX_STACK_DEPTH];
};

/* What a row of an unwind table says (agent-unwind-table's RowKind). */
enum unwind_row_kind {
	ROW_NONE = 0,        /* no call frame information here */
	ROW_CFA_RSP = 1,     /* CFA = rsp + cfa_offset */
	ROW_CFA_RBP = 2,     /* CFA = rbp + cfa_offset */
	ROW_CFA_PLT = 3,     /* CFA = rsp + cfa_offset (+ 8 once rip & 15 >= rbp_offset) */
	ROW_END = 4,         /* outermost frame */
	ROW_SIGNAL = 5,      /* signal trampoline: registers from the signal frame */
	ROW_UNSUPPORTED = 6, /* a rule the unwinder cannot follow */
};

/* One row of an unwind table, valid from pc to the next row's pc. The
 * return address is at CFA - 8. */
struct unwind_row {
	__u32 pc;              /* ELF virtual address */
	__u8 kind;             /* enum unwind_row_kind */
	__s8 rbp_offset;       /* caller's rbp at CFA + 8 * rbp_offset; 0: unchanged */
	__u16 cfa_offset;
};

/* An unwind table is an array of blocks (one 4 KiB page each): first its
 * rows, ROWS_PER_BLOCK to a block, then, when there is more than one row
 * block, its fences: fence b is the pc of row b * ROWS_PER_BLOCK,
 * FENCES_PER_BLOCK to a block. A lookup then reads two blocks and searches
 * them in place, not one array element per halving. */
#define ROWS_PER_BLOCK 512
#define FENCES_PER_BLOCK 1024
/* Fence blocks a table may have: at most 2^25 rows. */
#define MAX_FENCE_BLOCKS 64
union unwind_block {
	struct unwind_row rows[ROWS_PER_BLOCK];
	__u32 fences[FENCES_PER_BLOCK];
};

/* Set in a known_processes value once the process exited: a sample of
 * that pid then belongs to a new process (the pid was reused). */
#define GENERATION_EXITED 0x80000000U

/* table_id of a mapping without a table. */
#define TABLE_NONE 0
/* table_id of anonymous executable memory (JIT code). */
#define TABLE_ANONYMOUS 0xffffffff
/* table_id of a mapping whose table user space is compiling: walks
 * reaching it are deferred (when they may be). */
#define TABLE_PENDING 0xfffffffe

/* One executable mapping of a process. */
struct unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 bias;            /* address - bias = the ELF virtual address rows use */
	__u32 table_id;        /* key in unwind_tables, or TABLE_NONE / TABLE_ANONYMOUS / TABLE_PENDING */
	__u32 rows;            /* rows in that table */
};

/* How a CPython frame chain marks where one run of the eval loop (one
 * native _PyEval_EvalFrameDefault activation) begins. */
enum python_entry_rule {
	PY_ENTRY_EACH_FRAME = 0, /* <= 3.10: a run is one frame */
	PY_ENTRY_FLAG = 1,       /* 3.11: the run's first frame has is_entry set */
	PY_ENTRY_SHIM = 2,       /* 3.12+: a shim frame (owner == entry_shim) lies below the run */
};

/* Interpreter walkers read no more than this of a frame or a code object. */
#define INTERP_READ_MAX 256

/* Where one CPython version keeps what the walker reads (offsets in bytes;
 * user space fills it from its per-version table). */
struct python_layout {
	__u64 interp_head;      /* address of the pointer to the first PyInterpreterState */
	__u64 code_type;        /* address of PyCode_Type */
	__u16 interp_threads;   /* PyInterpreterState: its first PyThreadState */
	__u16 tstate_next;
	__u16 tstate_thread_id; /* pthread_self(): the thread's fs base */
	__u16 tstate_frame;     /* the current frame, or the _PyCFrame holding it */
	__u16 cframe_frame;     /* _PyCFrame: the current frame; 0xffff: no _PyCFrame */
	__u16 frame_back;
	__u16 frame_code;
	__u16 frame_instr;      /* f_lasti (an int), or prev_instr / instr_ptr (a pointer) */
	__u16 frame_entry;      /* is_entry or owner (a byte) */
	__u16 frame_size;       /* bytes read of a frame (past every field above) */
	__u16 code_name;
	__u16 code_firstlineno;
	__u16 code_argcount;
	__u16 code_bytecode;    /* where the bytecode starts in the code object (pointer instrs) */
	__u16 code_size;        /* bytes read of a code object */
	__u16 code_filename;    /* co_filename */
	__u16 code_identity;    /* a word set once per code object: ob_size (3.11+) or co_code */
	__u8 instr_is_pointer;
	__u8 entry_rule;        /* enum python_entry_rule */
	__u8 entry_shim;        /* owner value of a shim frame */
	__u8 reserved[3];
};

/* Where one PHP version keeps what the walker reads (offsets in bytes;
 * user space fills it from its per-version table). */
struct php_layout {
	__u64 current_execute_data; /* address of EG(current_execute_data) */
	__u16 data_opline;          /* zend_execute_data */
	__u16 data_func;
	__u16 data_call_info;       /* This.u1.type_info: call flags in its top 16 bits */
	__u16 data_prev;
	__u16 data_size;            /* bytes read of a zend_execute_data */
	__u16 func_name;            /* zend_function (common.function_name) */
	__u16 func_scope;
	__u16 func_filename;        /* op_array.filename */
	__u16 func_line_start;      /* op_array.line_start */
	__u16 func_size;            /* bytes read of a zend_function */
	__u16 op_lineno;            /* zend_op.lineno */
	__u16 reserved[5];
};

/* Where one Ruby (CRuby) version keeps what the walker reads (offsets in
 * bytes; user space fills it from its per-version table). */
struct ruby_layout {
	__u64 tls_module_got;    /* the GOT word holding ruby_current_ec's TLS module id; 0: none */
	__s64 tls_static_offset; /* ruby_current_ec's address - the thread pointer (static TLS); 0: none */
	__u64 ec_global;         /* address of a global pointing to the current ec (2.6, 2.7); 0: none */
	__u16 tls_offset;        /* ruby_current_ec's offset in its module's TLS block */
	__u16 ec_vm_stack;       /* rb_execution_context_t */
	__u16 ec_vm_stack_size;  /* (in VALUEs) */
	__u16 ec_cfp;
	__u16 cfp_size;          /* rb_control_frame_t */
	__u16 cfp_pc;
	__u16 cfp_iseq;
	__u16 cfp_ep;
	__u16 iseq_body;         /* rb_iseq_t */
	__u16 body_size;         /* rb_iseq_constant_body.iseq_size (in VALUEs) */
	__u16 body_encoded;      /* rb_iseq_constant_body.iseq_encoded */
	__u16 cme_def;           /* rb_callable_method_entry_t.def */
	__u16 cme_owner;
	__u16 reserved[3];
};

/* Where one V8 build keeps what the walker reads (from the build's own
 * v8dbg_ symbols; user space fills it). */
struct v8_layout {
	__u8 fp_context;          /* a JavaScript frame's slots, in bytes below its frame pointer */
	__u8 fp_function;
	__u8 fp_bytecode_array;
	__u8 fp_bytecode_offset;
	__u8 code_kind_mask;      /* Code.flags: (flags >> code_kind_shift) & code_kind_mask */
	__u8 code_kind_shift;
	__u8 code_kind_baseline;  /* CodeKind::BASELINE: the kinds past it are optimized code */
	__u8 code_start_is_pointer; /* Code.instruction_start holds the address (else: code + it) */
	__u16 function_shared;    /* JSFunction.shared */
	__u16 function_code;      /* JSFunction.code; 0: compiled code is not read */
	__u16 map_instance_type;  /* Map.instance_type (16 bits) */
	__u16 sfi_function_data;  /* SharedFunctionInfo.function_data */
	__u16 sfi_name;           /* SharedFunctionInfo.name_or_scope_info */
	__u16 sfi_script;         /* SharedFunctionInfo.script_or_debug_info */
	__u16 sfi_size;           /* bytes read of a SharedFunctionInfo */
	__u16 code_instruction_start;
	__u16 code_instruction_size; /* an int */
	__u16 code_flags;         /* a uint32 */
	__u16 code_size;          /* bytes read of a Code object */
	__u16 type_sfi;           /* SHARED_FUNCTION_INFO_TYPE */
	__u16 type_bytecode_array; /* BYTECODE_ARRAY_TYPE */
	__u16 type_code;          /* CODE_TYPE */
	__u16 reserved[2];
};

/* Where one JVM (HotSpot) keeps what the walker reads, from the tables
 * it describes itself with (gHotSpotVMStructs; user space fills it). */
#define JVM_MAX_HEAPS 3
struct jvm_layout {
	__u64 code_start;         /* CodeCache's bounds: [code_start, code_end) */
	__u64 code_end;
	__u64 heap_low[JVM_MAX_HEAPS];    /* each code heap's memory: [low, high) */
	__u64 heap_high[JVM_MAX_HEAPS];
	__u64 heap_segmap[JVM_MAX_HEAPS]; /* its segment map: a byte per segment */
	__u8 heap_log2_segment[JVM_MAX_HEAPS];
	__u8 heap_count;
	__u8 block_header;        /* sizeof(HeapBlock): the blob follows it */
	__u8 kind_size;           /* the bytes of blob_kind: 1 (CodeBlob._kind) or 4 (CodeBlob._header_size) */
	__u8 frame_complete_size; /* CodeBlob._frame_complete_offset: an int16 or int */
	__u8 code_is_offset;      /* CodeBlob code field: an int offset from the blob (else a pointer) */
	__u8 reserved[2];
	__u16 blob_kind;          /* what tells an nmethod: it holds kind_nmethod */
	__u16 kind_nmethod;
	__u16 blob_frame_complete;
	__u16 blob_frame_size;    /* in words, return address and saved rbp included */
	__u16 blob_code;
	__u16 blob_size;          /* bytes read of a blob */
	__u16 nmethod_method;     /* nmethod._method */
	__u16 nmethod_compile_id;
	__u16 method_const;       /* Method._constMethod */
	__u16 const_method_size;  /* sizeof(ConstMethod): its bytecodes follow */
	__u16 reserved2[2];
};

/* The interpreter a process runs, found by user space in its mappings. */
struct interp_info {
	__u32 kind;             /* enum interp_kind; INTERP_NONE: none */
	__u32 version;          /* major << 8 | minor */
	__u64 loop_start;       /* the interpreter loop's code: [loop_start, loop_end) */
	__u64 loop_end;
	__u64 cold_start;       /* and its part moved out of line (.cold), if known */
	__u64 cold_end;
	struct python_layout python; /* INTERP_CPYTHON */
	struct php_layout php;       /* INTERP_PHP */
	struct ruby_layout ruby;     /* INTERP_RUBY */
	struct v8_layout v8;         /* INTERP_V8: loop_start/loop_end hold its builtins' code */
	struct jvm_layout jvm;       /* INTERP_JVM: loop_start/loop_end hold the template interpreter's code */
};

/* How a Go program's goroutine labels (runtime/pprof.Do) are kept. */
enum go_labels_kind {
	GO_LABELS_NONE = 0,  /* not a Go program, or its layout is unknown */
	GO_LABELS_MAP = 1,   /* *map[string]string (Go 1.9-1.23) */
	GO_LABELS_SLICE = 2, /* *[]struct{key, value string}, sorted (Go 1.24+) */
};

/* Where the sampled thread's goroutine and its labels are, per Go binary. */
struct go_layout {
	__s64 tls_g;        /* the current g, from the thread's fs base */
	__u32 labels_kind;  /* enum go_labels_kind */
	__u16 g_m;          /* offsetof(g, m) */
	__u16 m_curg;       /* offsetof(m, curg): the user goroutine, also on g0 */
	__u16 g_labels;     /* offsetof(g, labels) */
	__u16 reserved[3];
};

/* Goroutine labels of a sample, at most GO_MAX_LABELS of bounded length
 * (longer keys and values are cut). */
#define GO_MAX_LABELS 8
#define GO_LABEL_KEY_LEN 32
#define GO_LABEL_VALUE_LEN 64
struct go_label {
	__u8 key_len;
	__u8 value_len;
	char key[GO_LABEL_KEY_LEN];
	char value[GO_LABEL_VALUE_LEN];
};
struct go_labels {
	__u32 count;
	__u32 truncated; /* labels beyond GO_MAX_LABELS, not read */
	struct go_label labels[GO_MAX_LABELS];
};

/* A process's executable mappings, sorted by start. */
struct process_unwind_info {
	__u64 refresh_requested_ns; /* when the unwinder last asked for a re-read */
	__u64 written_ns;           /* when user space wrote this entry (bpf_ktime_get_ns clock) */
	__u32 mapping_count;
	__u32 generation;           /* the exec generation these mappings are of (known_processes) */
	struct interp_info interp;
	struct go_layout go;
	struct unwind_mapping mappings[MAX_UNWIND_MAPPINGS];
};

enum process_event_kind {
	PROCESS_FIRST_SEEN = 1,
	PROCESS_EXEC = 2,
	PROCESS_EXIT = 3,
	PROCESS_MAPPINGS_CHANGED = 4, /* a sampled address is in no known mapping */
	PROCESS_MMAP_EXEC = 5,        /* a known process mapped a file executable */
	PROCESS_DEFERRED_SAMPLE = 6,  /* a struct deferred_sample */
	PROCESS_INTERP_CODE = 7,      /* a struct interp_code_event */
};

/* Sent through the `events` ring buffer. */
struct process_event {
	__u32 kind;            /* enum process_event_kind */
	__u32 pid;
};

/* An interpreter frame object first seen in a sample (per pid, object and
 * validation value): user space names it while it most likely lives. */
struct interp_code_event {
	__u32 kind;            /* PROCESS_INTERP_CODE */
	__u32 pid;
	__u32 interp;          /* enum interp_kind */
	__u32 validation;
	__u64 object;
};

/* Indices into the per-CPU `stats` array. */
enum stat_index {
	STAT_SAMPLES = 0,
	STAT_USER_STACKS_FULL = 1,
	STAT_KERNEL_STACK_COLLISIONS = 2,
	STAT_USER_STACK_ERRORS = 3,
	STAT_COUNTS_FULL = 4,
	STAT_EVENTS_LOST = 5,
	STAT_WALKS_DEFERRED = 6,      /* user stack walks handed to user space */
	STAT_DEFER_RING_FULL = 7,     /* walks that stayed in BPF: no room in the ring buffer */
	STAT_INTERP_FRAMES = 8,       /* interpreter frames emitted */
	STAT_INTERP_NO_THREAD = 9,    /* the thread's interpreter state was not found */
	STAT_INTERP_READ_FAILED = 10, /* an interpreter frame or object was unreadable */
	STAT_INTERP_NOT_CODE = 11,    /* a frame's code was not a code object */
	STAT_GO_LABELS = 12,          /* samples that carry goroutine labels */
	STAT_GO_LABELS_FAILED = 13,   /* a goroutine's labels were unreadable */
	STAT_UNTARGETED = 14,         /* samples of processes no target matches (not taken) */
	STAT_OFF_CPU = 15,            /* off-CPU samples: timed tasks back on a CPU */
	STAT_COUNT = 16,
};

/* Bytes of user stack a deferred walk copies, from the stack pointer up. */
#define DEFERRED_STACK_BYTES 16384

/* A sample whose user stack walk reached code the unwinder has no table
 * for yet (a process's first milliseconds: its mappings or tables are not
 * in the kernel yet). Sent through `events` in place of a count, with the
 * registers of the frame where the walk stopped and the stack above it, so
 * user space finishes the walk with the same tables once they exist, the
 * way `perf --call-graph dwarf` unwinds after the fact. */
struct deferred_sample {
	__u32 kind;            /* PROCESS_DEFERRED_SAMPLE */
	__u32 pid;
	__u32 tid;
	__u32 cpu;
	__u32 window;          /* the sequence number of the window it belongs to */
	__u32 generation;      /* the process's exec count when sampled */
	__u64 time_ns;         /* bpf_ktime_get_ns() when sampled */
	__u64 go_labels;       /* key in the go_labels map; 0: none */
	__u64 pc;              /* the frame where the walk stopped (the last of user.frames) */
	__u64 sp;
	__u64 bp;
	__u32 exact_pc;        /* pc is where execution is, not a return address */
	__u32 trusted_pc;      /* pc came from registers or a table row */
	__u32 stack_bytes;     /* bytes of `stack` copied from sp */
	__u32 kernel_len;      /* frames in `kernel` */
	__u32 interp_words;    /* words of user.frames past user.len: see below */
	__u32 reserved;
	char comm[COMM_LEN];
	__u64 kernel[MAX_STACK_DEPTH]; /* kernel frames, leaf first */
	/* Frames walked in BPF, leaf first; then the interpreter frames of the
	 * loop frames the walk did not reach, read at the sample (they are
	 * gone by the time user space walks): run by run, leaf first, each
	 * closed by INTERP_RUN_END. */
	struct user_stack user;
	__u8 stack[DEFERRED_STACK_BYTES];
};

#endif
