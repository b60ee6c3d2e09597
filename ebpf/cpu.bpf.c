// SPDX-License-Identifier: GPL-2.0
/* System-wide CPU sampling: counts (thread, CPU, user stack, kernel stack).
 *
 * Samples go to one of two map sets (counts_N, stacks_N, user_stacks_N)
 * chosen by config.window; user space flips the window, waits for programs
 * in flight, then drains the idle set, so no sample is lost or counted twice
 * at a window edge. New, exec'ing and exiting processes are reported through
 * a ring buffer so their mappings are read while they exist.
 *
 * Kernel stacks come from bpf_get_stackid. User stacks are walked here,
 * frame by frame (bpf_loop): with the unwind table user space compiled from
 * the mapping's .eh_frame when there is one, with frame pointers otherwise.
 * A walk that reaches code whose table is not in the kernel yet (a new
 * process, a library just mapped) is handed to user space with a copy of
 * the stack instead of being cut short (struct deferred_sample). Where a
 * frame lies in an interpreter's loop (CPython's _PyEval_EvalFrameDefault,
 * PHP's execute_ex, Ruby's rb_vm_exec), the interpreter's own frames are
 * emitted in its place; a V8 JavaScript frame (Node.js) is emitted in
 * place of its native one (runtimes/).
 *
 * Off-CPU profiling (off_cpu_switch, attached only when enabled) walks the
 * same stacks of threads going off CPU and counts nanoseconds instead of
 * samples. */
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>

#include "cpu.h"

/* Each window's sample keys, user and kernel stacks: resized by user space
 * to a window's samples on this machine (window_map_entries,
 * kernel_stack_entries). */
#define MAX_SAMPLE_KEYS 16384
#define MAX_USER_STACKS 8192
#define MAX_STACKS 8192
#define MAX_PROCESSES 32768
#define MAX_UNWIND_TABLES 8192
/* Enough halvings for MAX_UNWIND_MAPPINGS mappings, MAX_FENCE_BLOCKS fence
 * blocks, and the fences or rows of one block. */
#define MAPPING_SEARCH_STEPS 10
#define FENCE_BLOCK_SEARCH_STEPS 7
#define FENCE_SEARCH_STEPS 11
#define ROW_SEARCH_STEPS 10
/* At most one mapping re-read request per process per second. */
#define REFRESH_INTERVAL_NS 1000000000ULL
/* How long after user space wrote a process's mappings a walk reaching code
 * in none of them is deferred each time (the loader still mapping
 * libraries); past it, at most once per refresh request. */
#define YOUNG_ENTRY_NS 2000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sampler_config);
} config SEC(".maps");

#define COUNTS_MAP(name)                                      \
	struct {                                                  \
		__uint(type, BPF_MAP_TYPE_HASH);                      \
		__uint(max_entries, MAX_SAMPLE_KEYS);                 \
		__type(key, struct sample_key);                       \
		__type(value, __u64);                                 \
	} name SEC(".maps")

#define STACKS_MAP(name)                                      \
	struct {                                                  \
		__uint(type, BPF_MAP_TYPE_STACK_TRACE);               \
		__uint(max_entries, MAX_STACKS);                      \
		__uint(key_size, sizeof(__u32));                      \
		__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));  \
	} name SEC(".maps")

#define USER_STACKS_MAP(name)                                 \
	struct {                                                  \
		__uint(type, BPF_MAP_TYPE_HASH);                      \
		__uint(max_entries, MAX_USER_STACKS);                 \
		__type(key, __u64);                                   \
		__type(value, struct user_stack);                     \
	} name SEC(".maps")

COUNTS_MAP(counts_0);
COUNTS_MAP(counts_1);
/* Off-CPU samples: nanoseconds off CPU by key (one entry each while
 * off-CPU profiling is off). */
COUNTS_MAP(off_cpu_counts_0);
COUNTS_MAP(off_cpu_counts_1);
STACKS_MAP(stacks_0);
STACKS_MAP(stacks_1);
USER_STACKS_MAP(user_stacks_0);
USER_STACKS_MAP(user_stacks_1);

/* One unwind table per executable (by build id), sized to its rows, filled
 * by user space through mmap. */
struct unwind_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	/* Sizes, not types: BTF would carry only a declaration of the union
	 * here (it is reached through pointers only), and a map with a key
	 * type needs a value type. */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(union unwind_block));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, MAX_UNWIND_TABLES);
	__type(key, __u32);
	__array(values, struct unwind_table);
} unwind_tables SEC(".maps");

/* Rows found lately, per CPU, by table and address: a sampled program
 * returns to the same addresses sample after sample, and a row found again
 * costs one cache line instead of the table's fence and row blocks (cold
 * at every sample: each search misses the cache and the TLB a few times).
 * Direct-mapped; a table's rows never change under its id (one id per
 * object, never reused), so an entry is right for as long as it stays.
 * A walk interrupted by another on its CPU (a sample during an off-CPU
 * walk) may find an entry half written: an entry is marked empty while it
 * is written, and a reader checks its key again after copying the row. */
#define ROW_CACHE_BITS 11
struct row_cache_entry {
	__u32 table_id;        /* TABLE_NONE: empty */
	__u32 lookup;          /* the address searched for */
	struct unwind_row row;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1 << ROW_CACHE_BITS);
	__type(key, __u32);
	__type(value, struct row_cache_entry);
} row_cache SEC(".maps");

/* Per process: its executable mappings and their tables. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, struct process_unwind_info);
} unwind_processes SEC(".maps");

/* A row the walk used, for the frame at the same depth of the next walk on
 * the same state (see unwind_state.recent_rows). */
struct recent_row {
	__u32 table_id;        /* TABLE_NONE: empty */
	__u32 lookup;          /* the address searched for */
	struct unwind_row row;
};

/* Words of the stack window a walk copies at a time (1 KiB). */
#define STACK_WINDOW_WORDS 128

/* The walk in progress on this CPU (too big for the BPF stack). */
struct unwind_state {
	__u64 pc;
	__u64 sp;
	__u64 bp;
	__u64 hash;
	__u32 pid;
	__u32 generation;      /* the process's exec generation */
	__u32 mode;
	__u32 can_defer;       /* may hand the walk to user space */
	__u32 exact_pc;        /* pc is where execution is, not a return address */
	__u32 trusted_pc;      /* pc came from registers or a table row, not a frame pointer */
	__u32 lo;              /* binary search bounds */
	__u32 hi;
	__u32 tid;
	__u32 plain_process;   /* its entry was read: no interpreter, the right generation */
	__u32 pc_recorded;     /* pc's frame is in the stack already: only step from it */
	__u32 interp_state;    /* enum interp_walk */
	__u32 run_frames;      /* interpreter frames emitted for the loop frame at pc */
	__u64 interp_frame;    /* the next interpreter frame to emit; 0: none left */
	__u64 interp_end;      /* where the interpreter's frames end (Ruby: its VM stack's end) */
	__u64 sample_r14;      /* the sampled user registers a VM may keep its state in */
	__u64 sample_r15;
	/* Maps of V8 objects found to be of a type (enum v8_map_slot), for
	 * the process image they were found in: its objects of a type share
	 * one map, whose type then needs no read. Kept across walks. */
	__u64 v8_maps[4];      /* by slot (the index is masked to 2 bits) */
	__u32 v8_maps_pid;
	__u32 v8_maps_generation;
	/* A copy of the mapping the last frame was in: frames in a row are
	 * mostly in one object, and a plain process's entry is then not
	 * looked up again. end == 0: none yet. */
	struct unwind_mapping mapping;
	__u64 window_start;    /* the user address of window[0] */
	__u64 window_bytes;    /* bytes of the stack window copied (whole words) */
	/* A stretch of the walked stack, copied with one read: from the
	 * sampled sp as the walk starts, again from sp when the walk nears its
	 * end. Frames' words then mostly need no helper call each. One word
	 * more for a pair at its end. */
	__u64 window[STACK_WINDOW_WORDS + 1];
	struct pt_regs regs;   /* the user registers at the event (off the BPF stack) */
	/* The rows of the last walk here, by frame depth: a sampled program
	 * returns to the same callers sample after sample, and their rows are
	 * then found in the few lines of this state the walk runs through, not
	 * in a line (and a page) of the row cache each, all cold at a sample.
	 * Only the walks on this state write it: no torn entries. */
	struct recent_row recent_rows[MAX_STACK_DEPTH + 1];
	struct user_stack stack;
	__u8 frame_buf[INTERP_READ_MAX + 8]; /* a frame or code object being read */
	__u8 code_buf[INTERP_READ_MAX + 8];
};

/* Copies the stack window from `from` up, or what of it is left in that
 * page when the stack ends sooner. */
static __always_inline void copy_stack_window(struct unwind_state *st, __u64 from)
{
	st->window_start = from;
	st->window_bytes = 0;
	if (bpf_probe_read_user(st->window, STACK_WINDOW_WORDS * 8, (const void *)from) == 0) {
		st->window_bytes = STACK_WINDOW_WORDS * 8;
		return;
	}
	__u32 rest = 4096 - (from & 4095);
	if (rest < STACK_WINDOW_WORDS * 8 && bpf_probe_read_user(st->window, rest, (const void *)from) == 0)
		st->window_bytes = rest & ~7;
}

/* Moves a whole window up to sp once less than a quarter of it is left
 * above sp: the words a frame reads lie just above its sp. (A window cut
 * short reaches the stack's end already.) */
static __always_inline void keep_stack_window_ahead(struct unwind_state *st)
{
	__u64 end = st->window_start + st->window_bytes;
	if (st->window_bytes == STACK_WINDOW_WORDS * 8 && st->sp > st->window_start &&
	    st->sp + STACK_WINDOW_WORDS * 2 > end)
		copy_stack_window(st, st->sp);
}

/* The `words` aligned words at address from the window; 0 when it does not
 * hold them. */
static __always_inline __u64 *window_words(struct unwind_state *st, __u64 address, __u32 words)
{
	__u64 need = words * 8;
	if (address < st->window_start || ((address - st->window_start) & 7) ||
	    st->window_bytes < need ||
	    address - st->window_start > st->window_bytes - need)
		return 0;
	return &st->window[((address - st->window_start) / 8) & (STACK_WINDOW_WORDS - 1)];
}

/* Where a walk stands with the interpreter's frames. */
enum interp_walk {
	INTERP_UNSTARTED = 0,  /* no interpreter loop frame reached yet */
	INTERP_ACTIVE = 1,     /* interp_frame is the next frame to emit */
	INTERP_IN_RUN = 2,     /* emitting the frames of the loop frame at pc */
	INTERP_DONE = 3,       /* no more frames (or a read failed) */
};

/* One walk per slot and CPU: the sampler's and the sched_switch
 * program's. (The sampler's timer interrupt cannot land in the switch,
 * which runs with interrupts off, but a hardware event's NMI could.) */
#define SCRATCH_SAMPLE 0
#define SCRATCH_OFF_CPU 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct unwind_state);
} unwind_scratch SEC(".maps");

/* Processes already announced to user space, with how often each exec'd
 * since (a deferred walk must not be finished with a later image's maps). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u32);
} known_processes SEC(".maps");

/* Targeting: while cfg->targeted, only the processes in this map are
 * sampled. User space adds the ones its targets match, at start and at each
 * exec; a process a target forks is added here, an exited one removed here
 * (its pid may come back as another process). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u8);
} targets SEC(".maps");

/* Interpreter frame objects announced to user space (struct interp_code_event). */
struct interp_code_key {
	__u32 pid;
	__u32 validation;
	__u64 object;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct interp_code_key);
	__type(value, __u8);
} interp_code_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); /* resized by user space */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Never used: keeps struct process_event in the BTF, where the Rust layout
 * test can check it (types only reached through pointers are not emitted). */
struct process_event process_event_layout;
struct unwind_row unwind_row_layout;
struct unwind_mapping unwind_mapping_layout;
struct deferred_sample deferred_sample_layout;
struct interp_code_event interp_code_event_layout;
struct off_cpu_pending off_cpu_pending_layout;

static __always_inline void count(__u32 index)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &index);
	if (v)
		*v += 1;
}

/* Non-zero while the event reader waits in poll (it sets it before each
 * wait; the first record that wakes it clears it). A wakeup is an interrupt
 * to self, in a VM an exit to the hypervisor (~12 us): under process churn
 * one per exec cost 10 ms/s at 800 processes a second, and most found the
 * reader between reads, where a wakeup wakes nobody. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} reader_asleep SEC(".maps");

/* Submit flags for a record the reader must see soon: a wakeup if it
 * sleeps. Called after the record's reserve: the exchange is a full
 * barrier, so either it sees the flag or the reader, which sets the flag
 * before its poll looks at the ring, sees the record. */
static __always_inline __u64 wakeup_if_asleep(void)
{
	__u32 zero = 0;
	__u64 *asleep = bpf_map_lookup_elem(&reader_asleep, &zero);
	if (!asleep)
		return BPF_RB_FORCE_WAKEUP;
	return __sync_lock_test_and_set(asleep, 0) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void send_event_flags(__u32 kind, __u32 pid, int urgent)
{
	struct process_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EVENTS_LOST);
		return;
	}
	e->kind = kind;
	e->pid = pid;
	bpf_ringbuf_submit(e, urgent ? wakeup_if_asleep() : BPF_RB_NO_WAKEUP);
}

/* Wakes the reader (if it sleeps): it reads a new image's mappings while the
 * process lives. (Not the ring's default, which wakes only a reader that has
 * read everything: exits queued without a wakeup would hold these back.) */
static __always_inline void send_event(__u32 kind, __u32 pid)
{
	send_event_flags(kind, pid, 1);
}

static __always_inline int read_user(__u64 *value, __u64 address)
{
	return bpf_probe_read_user(value, sizeof(*value), (const void *)address);
}

/* A word of the walked stack, from the window when it holds it; 0 on success. */
static __always_inline int read_stack(struct unwind_state *st, __u64 *value, __u64 address)
{
	__u64 *w = window_words(st, address, 1);
	if (!w)
		return read_user(value, address);
	*value = *w;
	return 0;
}

/* Two words of the walked stack (a saved rbp and a return address). */
static __always_inline int read_stack_pair(struct unwind_state *st, __u64 pair[2], __u64 address)
{
	__u64 *w = window_words(st, address, 2);
	if (!w)
		return bpf_probe_read_user(pair, 16, (const void *)address);
	pair[0] = w[0];
	pair[1] = w[1];
	return 0;
}

/* The searches below keep their bounds in the per-CPU state, read through
 * volatile loads: the verifier then sees unknown scalars at every loop head
 * and prunes, instead of following every path of the halvings. */
#define LOAD(x) (*(volatile __typeof__(x) *)&(x))

/* Binary search over [0, n) for a predicate of `mid` true on a prefix of
 * it: that prefix's length. */
#define BINARY_SEARCH(st, n, steps, at_or_below)                    \
	({                                                          \
		LOAD((st)->lo) = 0;                                 \
		LOAD((st)->hi) = (n);                               \
		for (int i = 0; i < (steps); i++) {                 \
			__u32 lo = LOAD((st)->lo), hi = LOAD((st)->hi); \
			if (lo >= hi)                               \
				break;                              \
			__u32 mid = lo + (hi - lo) / 2;             \
			if (at_or_below)                            \
				LOAD((st)->lo) = mid + 1;           \
			else                                        \
				LOAD((st)->hi) = mid;               \
		}                                                   \
		LOAD((st)->lo);                                     \
	})

/* The mapping holding pc, by binary search. */
static __always_inline struct unwind_mapping *find_mapping(struct unwind_state *st,
							   struct process_unwind_info *proc, __u64 pc)
{
	__u32 count = proc->mapping_count;
	if (count > MAX_UNWIND_MAPPINGS)
		count = MAX_UNWIND_MAPPINGS;
	__u32 found = BINARY_SEARCH(st, count, MAPPING_SEARCH_STEPS,
				    proc->mappings[mid & (MAX_UNWIND_MAPPINGS - 1)].start <= pc);
	if (found == 0)
		return 0;
	struct unwind_mapping *m = &proc->mappings[(found - 1) & (MAX_UNWIND_MAPPINGS - 1)];
	return pc < m->end ? m : 0;
}

/* Whether the walk's copy of a mapping (st->mapping) holds pc. */
static __always_inline int in_kept_mapping(struct unwind_state *st, __u64 pc)
{
	return st->mapping.start <= pc && pc < st->mapping.end;
}

/* Finds the mapping holding pc and keeps a copy of it in the walk state,
 * with whether the process runs no interpreter (whose frames then need no
 * process entry while they stay in it); the copy, or 0. */
static __always_inline struct unwind_mapping *keep_mapping(struct unwind_state *st,
							   struct process_unwind_info *proc, __u64 pc)
{
	struct unwind_mapping *found = find_mapping(st, proc, pc);
	if (!found)
		return 0;
	st->mapping = *found;
	st->plain_process = proc->interp.kind == INTERP_NONE;
	return &st->mapping;
}

/* The first fence of a table's fence block (an array element always
 * exists below the table's size; the maximum otherwise, so never below pc). */
static __always_inline __u32 fence_block_start(void *table, __u32 key)
{
	union unwind_block *f = bpf_map_lookup_elem(table, &key);
	return f ? f->fences[0] : 0xffffffff;
}

/* Entries of block `block` in use when `total` entries fill blocks of
 * `per_block` from the first. */
static __always_inline __u32 entries_in_block(__u32 total, __u32 block, __u32 per_block)
{
	__u32 left = total - block * per_block;
	return left < per_block ? left : per_block;
}

/* The last row at or below pc (see union unwind_block): the fences name the
 * row block, which holds the row; two block reads in all for tables up to
 * FENCES_PER_BLOCK row blocks. */
static __always_inline struct unwind_row *find_row(struct unwind_state *st, void *table,
						   __u32 rows, __u32 pc)
{
	__u32 row_blocks = (rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
	__u32 block = 0;
	if (row_blocks > 1) {
		__u32 fence_blocks = (row_blocks + FENCES_PER_BLOCK - 1) / FENCES_PER_BLOCK;
		__u32 first = 1;
		if (fence_blocks > 1)
			first = BINARY_SEARCH(st, fence_blocks, FENCE_BLOCK_SEARCH_STEPS,
					      fence_block_start(table, row_blocks + mid) <= pc);
		if (first == 0)
			return 0;
		first -= 1;
		__u32 key = row_blocks + first;
		union unwind_block *f = bpf_map_lookup_elem(table, &key);
		if (!f)
			return 0;
		__u32 n = entries_in_block(row_blocks, first, FENCES_PER_BLOCK);
		__u32 found = BINARY_SEARCH(st, n, FENCE_SEARCH_STEPS,
					    f->fences[mid & (FENCES_PER_BLOCK - 1)] <= pc);
		if (found == 0)
			return 0;
		block = first * FENCES_PER_BLOCK + found - 1;
	}
	union unwind_block *b = bpf_map_lookup_elem(table, &block);
	if (!b)
		return 0;
	__u32 n = entries_in_block(rows, block, ROWS_PER_BLOCK);
	__u32 found = BINARY_SEARCH(st, n, ROW_SEARCH_STEPS,
				    b->rows[mid & (ROWS_PER_BLOCK - 1)].pc <= pc);
	if (found == 0)
		return 0;
	return &b->rows[(found - 1) & (ROWS_PER_BLOCK - 1)];
}

/* One frame-pointer step; returns 0 to go on, 1 when the walk ends. */
static __always_inline long frame_pointer_step(struct unwind_state *st, __u32 failure)
{
	__u64 bp = st->bp, frame[2]; /* the caller's rbp, then the return address */
	if (bp == 0) {
		/* _start and thread entry clear rbp: the chain's end. */
		st->stack.status = STACK_COMPLETE;
		return 1;
	}
	if (read_stack_pair(st, frame, bp) || (frame[0] != 0 && frame[0] <= bp)) {
		st->stack.status = failure;
		return 1;
	}
	__u64 next = frame[0], ra = frame[1];
	st->sp = bp + 16;
	st->bp = next;
	st->pc = ra;
	st->exact_pc = 0;
	st->trusted_pc = 0;
	return 0;
}

/* Follows one table row; returns 0 to go on, 1 when the walk ends. */
static __always_inline long table_step(struct unwind_state *st, struct unwind_row *row)
{
	__u64 cfa, ra = 0, bp = st->bp;
	switch (row->kind) {
	case ROW_END:
		st->stack.status = STACK_COMPLETE;
		return 1;
	case ROW_CFA_RSP:
		cfa = st->sp + row->cfa_offset;
		break;
	case ROW_CFA_RBP:
		cfa = st->bp + row->cfa_offset;
		break;
	case ROW_CFA_PLT:
		cfa = st->sp + row->cfa_offset + (((st->pc & 15) >= (__u64)row->rbp_offset) ? 8 : 0);
		break;
	case ROW_SIGNAL: {
		/* sp is at the kernel's ucontext: uc_mcontext starts 40 bytes in;
		 * rbp, rsp and rip are its 11th, 16th and 17th words. */
		__u64 sp = 0, pc = 0;
		if (read_user(&bp, st->sp + 40 + 80) || read_user(&sp, st->sp + 40 + 120) ||
		    read_user(&pc, st->sp + 40 + 128)) {
			st->stack.status = STACK_READ_FAILED;
			return 1;
		}
		st->bp = bp;
		st->sp = sp;
		st->pc = pc;
		st->exact_pc = 1;
		return 0;
	}
	default:
		st->stack.status = row->kind == ROW_NONE ? STACK_NO_ROW : STACK_UNSUPPORTED_RULE;
		return 1;
	}
	if (row->kind != ROW_CFA_PLT && row->rbp_offset == -2) {
		/* rbp pushed right after the call (most frames): one read. */
		__u64 frame[2];
		if (read_stack_pair(st, frame, cfa - 16)) {
			st->stack.status = STACK_READ_FAILED;
			return 1;
		}
		bp = frame[0];
		ra = frame[1];
	} else if (read_stack(st, &ra, cfa - 8) ||
		   (row->kind != ROW_CFA_PLT && row->rbp_offset != 0 &&
		    read_stack(st, &bp, cfa + (__s64)row->rbp_offset * 8))) {
		st->stack.status = STACK_READ_FAILED;
		return 1;
	}
	st->sp = cfa;
	st->bp = bp;
	st->pc = ra;
	st->exact_pc = 0;
	st->trusted_pc = 1;
	return 0;
}

/* Asks user space to read pid's mappings again (at most once a second);
 * 1 when a walk should be deferred until it has: the entry is young, or
 * this very call asked. So a process whose code lies outside what the
 * unwinder holds (more than MAX_UNWIND_MAPPINGS mappings) costs at most
 * one deferred walk a second, not one per sample. */
static __always_inline int request_refresh(struct process_unwind_info *proc, __u32 pid)
{
	__u64 now = bpf_ktime_get_ns();
	int young = now - proc->written_ns < YOUNG_ENTRY_NS;
	if (now - proc->refresh_requested_ns < REFRESH_INTERVAL_NS)
		return young;
	proc->refresh_requested_ns = now;
	send_event(PROCESS_MAPPINGS_CHANGED, pid);
	return 1;
}

/* Ends the walk at st->pc (recorded, not stepped from) so user space
 * finishes it; 1. */
static __always_inline long defer_walk(struct unwind_state *st)
{
	st->pc_recorded = 1;
	st->stack.status = STACK_DEFERRED;
	return 1;
}

/* Appends a word to the stack (the caller checked there is room). */
static __always_inline void push_word(struct unwind_state *st, __u64 word)
{
	__u32 len = st->stack.len;
	if (len >= MAX_STACK_DEPTH)
		return;
	st->stack.frames[len] = word;
	st->stack.len = len + 1;
	st->hash = (st->hash ^ word) * 0x100000001b3ULL;
}

/* A field of a frame or code object read into buf (offsets come from user
 * space; the mask keeps every access inside the buffer). */
#define FIELD(buf, type, offset) (*(type *)((buf) + ((offset) & (INTERP_READ_MAX - 1))))

/* Reads `size` bytes (at most INTERP_READ_MAX) of user memory into buf; 0
 * on success. Not inlined: inlined, the compiler may hand the helper a copy
 * of size made before the bounds check, which the verifier does not know
 * is bounded. */
static __noinline long read_object(__u8 *buf, __u64 size, __u64 address)
{
	if (size == 0 || size > INTERP_READ_MAX)
		return -1;
	return bpf_probe_read_user(buf, size, (const void *)address);
}

/* Tells user space about an interpreter object first seen in a sample of
 * pid, so it names it while the object most likely still lives. */
static __always_inline void announce_object(__u32 pid, __u32 kind, __u32 validation, __u64 object)
{
	struct interp_code_key key = {.pid = pid, .validation = validation, .object = object};
	__u8 one = 1;
	/* Looked up first: an LRU update takes a free node (evicting to get
	 * one) before it finds the key exists. */
	if (bpf_map_lookup_elem(&interp_code_seen, &key) ||
	    bpf_map_update_elem(&interp_code_seen, &key, &one, BPF_NOEXIST) != 0)
		return; /* announced already */
	struct interp_code_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EVENTS_LOST);
		bpf_map_delete_elem(&interp_code_seen, &key);
		return;
	}
	e->kind = PROCESS_INTERP_CODE;
	e->pid = pid;
	e->interp = kind;
	e->validation = validation;
	e->object = object;
	bpf_ringbuf_submit(e, 0);
}

/* Just the fields read of the kernel's structs, relocated by CO-RE: the
 * thread's fs base, where language runtimes keep their thread state, and
 * the task's flags. */
struct thread_struct___agent {
	unsigned long fsbase;
} __attribute__((preserve_access_index));
struct task_struct___agent {
	unsigned int flags;
	struct thread_struct___agent thread;
} __attribute__((preserve_access_index));

#define PF_EXITING 0x00000004

/* Whether the current task is past its exit (sched_process_exit fires
 * after PF_EXITING is set; the task is sampled on while it tears down). */
static __always_inline int current_exiting(void)
{
	struct task_struct___agent *task = (void *)bpf_get_current_task();
	unsigned int flags = 0;
	bpf_probe_read_kernel(&flags, sizeof(flags), &task->flags);
	return flags & PF_EXITING;
}

/* Whether the process runs an interpreter whose loop frames run its
 * frames (V8's and the JVM's frames are frames of the native stack instead). */
static __always_inline int runs_interp_loop(struct interp_info *interp)
{
	return interp->kind != INTERP_NONE && interp->kind != INTERP_V8 && interp->kind != INTERP_JVM;
}

/* Whether pc lies in the interpreter's loop (a frame that runs interpreter frames). */
static __always_inline int in_interp_loop(struct interp_info *interp, __u64 pc)
{
	return (pc >= interp->loop_start && pc < interp->loop_end) ||
	       (pc >= interp->cold_start && pc < interp->cold_end);
}

#include "runtimes/python.h"
#include "runtimes/php.h"
#include "runtimes/ruby.h"
#include "runtimes/go.h"
/* A validation value from two words of an interpreter's object (V8: a
 * SharedFunctionInfo's name and script, a Code object's instructions'
 * start and size; the JVM: a Method and its ConstMethod, an nmethod's
 * Method and compile id). Another object that took a freed one's place
 * tells itself apart unless both words are the same. User space computes
 * it the same way (runtimes::pair_validation). */
static __always_inline __u32 pair_validation(__u64 a, __u64 b)
{
	const __u64 k = 0x9e3779b97f4a7c15ULL;
	__u64 h = (a ^ 0x5638) * k;
	h = (h ^ b) * k;
	return (__u32)(h >> 32);
}

#include "runtimes/v8.h"
#include "runtimes/jvm.h"

/* At a frame of the interpreter loop: emits the interpreter frames it runs,
 * one per call; 0 while there are more (pc stays), 1 when the run is over
 * and the loop frame itself is to be stepped over. */
static __always_inline long interpreter_step(struct unwind_state *st, struct interp_info *interp)
{
	if (st->interp_state == INTERP_UNSTARTED) {
		switch (interp->kind) {
		case INTERP_PHP:
			st->interp_frame = php_current_frame(&interp->php);
			break;
		case INTERP_RUBY:
			st->interp_frame = ruby_current_frame(st, &interp->ruby);
			break;
		default:
			st->interp_frame = python_current_frame(st, &interp->python);
		}
		st->interp_state = INTERP_ACTIVE;
		if (!st->interp_frame) {
			count(STAT_INTERP_NO_THREAD);
			st->interp_state = INTERP_DONE;
			return 1;
		}
	}
	if (st->interp_state == INTERP_ACTIVE) {
		st->interp_state = INTERP_IN_RUN;
		st->run_frames = 0;
	}
	if (st->interp_state != INTERP_IN_RUN || !st->interp_frame)
		return 1;
	long ended;
	switch (interp->kind) {
	case INTERP_PHP:
		ended = php_frame(st, interp);
		break;
	case INTERP_RUBY:
		ended = ruby_frame(st, &interp->ruby);
		break;
	default:
		ended = python_frame(st, &interp->python);
	}
	if (ended && st->interp_state == INTERP_IN_RUN)
		st->interp_state = INTERP_ACTIVE;
	return ended;
}

/* Steps st from the native frame at st->pc to its caller: the mapping,
 * its table's row and rule, or the frame pointer; 0 to go on, 1 when the
 * walk ends. proc: the process's entry (0: not read yet, or not needed:
 * st->mapping holds pc in a process without an interpreter).
 * Global, so the verifier checks it once on its own rather than once for
 * every path through the interpreter steps before it; it takes its
 * pointers as possibly null. */
__noinline long native_step(struct unwind_state *st, struct process_unwind_info *proc)
{
	if (!st)
		return 1;
	__u64 pc = st->pc;
	struct unwind_mapping *m = &st->mapping;
	if (!in_kept_mapping(st, pc)) {
		if (!proc) {
			/* User space has not read this process (this image of it) yet. */
			if (st->can_defer)
				return defer_walk(st);
			return frame_pointer_step(st, STACK_NO_TABLE);
		}
		if (!keep_mapping(st, proc, pc)) {
			/* New code since user space read the mappings (dlopen, JIT); an
			 * address from a broken frame pointer chain proves nothing. */
			if (st->trusted_pc && request_refresh(proc, st->pid) && st->can_defer)
				return defer_walk(st);
			return frame_pointer_step(st, STACK_UNKNOWN_CODE);
		}
	}
	if (m->table_id == TABLE_ANONYMOUS)
		return frame_pointer_step(st, STACK_UNKNOWN_CODE);
	if (m->table_id == TABLE_PENDING) {
		if (st->can_defer)
			return defer_walk(st);
		return frame_pointer_step(st, STACK_NO_TABLE);
	}
	if (m->table_id == TABLE_NONE || st->mode == UNWIND_FRAME_POINTERS)
		return frame_pointer_step(st, STACK_FRAME_POINTER_FAILED);
	__u32 table_id = m->table_id;
	/* A return address may be one past a call that ends its function. */
	__u32 lookup = (__u32)((st->exact_pc ? pc : pc - 1) - m->bias);
	struct unwind_row found = {}, *row = 0;
	struct recent_row *recent = &st->recent_rows[st->stack.len & MAX_STACK_DEPTH];
	if (recent->table_id == table_id && recent->lookup == lookup) {
		found = recent->row;
		row = &found;
	}
	__u32 cache_key = ((lookup * 0x9e3779b1U) ^ (table_id * 0x85ebca77U)) >> (32 - ROW_CACHE_BITS);
	struct row_cache_entry *cached = row ? 0 : bpf_map_lookup_elem(&row_cache, &cache_key);
	if (cached && LOAD(cached->table_id) == table_id && LOAD(cached->lookup) == lookup) {
		found = cached->row;
		barrier();
		if (LOAD(cached->table_id) == table_id && LOAD(cached->lookup) == lookup)
			row = &found;
	}
	if (!row) {
		void *table = bpf_map_lookup_elem(&unwind_tables, &table_id);
		if (!table) /* evicted since the entry was written; reloaded at the window's end */
			return frame_pointer_step(st, STACK_NO_TABLE);
		struct unwind_row *in_table = find_row(st, table, m->rows, lookup);
		if (in_table) {
			found = *in_table;
			row = &found;
			if (cached) {
				LOAD(cached->table_id) = TABLE_NONE;
				barrier();
				cached->lookup = lookup;
				cached->row = found;
				barrier();
				LOAD(cached->table_id) = table_id;
			}
		}
	}
	if (row && (recent->table_id != table_id || recent->lookup != lookup)) {
		recent->table_id = table_id;
		recent->lookup = lookup;
		recent->row = found;
	}
	/* V8's hand-written code (its stack-scanning trampolines) has no
	 * unwind table but keeps a frame pointer, as everything V8 runs does. */
	if ((st->mode == UNWIND_MIXED || (proc && proc->interp.kind == INTERP_V8)) &&
	    (!row || row->kind == ROW_NONE || row->kind == ROW_UNSUPPORTED))
		return frame_pointer_step(st, STACK_FRAME_POINTER_FAILED);
	if (!row) {
		st->stack.status = STACK_NO_ROW;
		return 1;
	}
	return table_step(st, row);
}

/* bpf_loop callback: records st->pc (or the interpreter frames run there)
 * and steps to the caller; slot: the walk's unwind_scratch key. */
static long unwind_frame(__u32 index, void *slot)
{
	struct unwind_state *st = bpf_map_lookup_elem(&unwind_scratch, slot);
	if (!st)
		return 1;
	__u32 len = st->stack.len;
	if (len >= MAX_STACK_DEPTH)
		return 1; /* status stays STACK_TRUNCATED */
	__u64 pc = st->pc;
	if (pc == 0) {
		st->stack.status = STACK_COMPLETE;
		return 1;
	}
	if (pc > USER_ADDRESS_MAX) {
		/* Not code: a broken frame chain (a tag word must never be taken for a pc). */
		st->stack.status = st->trusted_pc ? STACK_READ_FAILED : STACK_FRAME_POINTER_FAILED;
		return 1;
	}
	keep_stack_window_ahead(st);
	struct process_unwind_info *proc = 0;
	if (!(st->plain_process && in_kept_mapping(st, pc))) {
		proc = bpf_map_lookup_elem(&unwind_processes, &st->pid);
		if (proc && proc->generation != st->generation)
			proc = 0; /* another image's mappings (an exec raced with their read) */
		/* Else the compiler tests the generations again for the null
		 * check, which the verifier cannot follow. */
		barrier_var(proc);
	}

	/* A walk going on in BPF after a deferral failed: pc is out already. */
	int recorded = st->pc_recorded;
	st->pc_recorded = 0;
	if (!recorded && proc && proc->interp.kind == INTERP_V8) {
		long stepped = v8_step(st, proc);
		if (stepped >= 0)
			return stepped != 0;
	}
	if (!recorded && proc && proc->interp.kind == INTERP_JVM) {
		long stepped = jvm_step(st, proc);
		if (stepped >= 0)
			return stepped != 0;
	}
	int loop_frame = !recorded && proc && runs_interp_loop(&proc->interp) &&
			 st->interp_state != INTERP_DONE && in_interp_loop(&proc->interp, pc);
	if (loop_frame) {
		if (len + 2 > MAX_STACK_DEPTH)
			return 1; /* status stays STACK_TRUNCATED */
		if (!interpreter_step(st, &proc->interp))
			return 0; /* more interpreter frames at this pc */
		/* The loop frame's own pc stands for nothing its frames do not
		 * say, unless it ran none. */
		if (st->run_frames == 0)
			push_word(st, pc);
	} else if (!recorded) {
		push_word(st, pc);
	}

	return native_step(st, proc) != 0; /* a callback returns 0 or 1 */
}

/* bpf_loop callback, for a walk being deferred: appends the interpreter
 * frames of the loop frames it has not reached to the stack, run by run,
 * each closed by INTERP_RUN_END (user space places them as it meets the
 * loop frames; the frames are gone by then). */
static long collect_interp_frame(__u32 index, void *slot)
{
	struct unwind_state *st = bpf_map_lookup_elem(&unwind_scratch, slot);
	if (!st || st->interp_state == INTERP_DONE || st->stack.len + 3 > MAX_STACK_DEPTH)
		return 1;
	struct process_unwind_info *proc = bpf_map_lookup_elem(&unwind_processes, &st->pid);
	if (!proc || proc->generation != st->generation || !runs_interp_loop(&proc->interp))
		return 1;
	if (interpreter_step(st, &proc->interp))
		push_word(st, INTERP_RUN_END);
	return st->interp_state == INTERP_DONE || !st->interp_frame;
}

/* The user registers at the event: the event's own (at_event, if any) when
 * it hit user mode, else those saved at the kernel entry. 0 when the task
 * has no user side. */
static __always_inline int user_registers(struct pt_regs *at_event, struct pt_regs *regs)
{
	if (at_event && (at_event->cs & 3) == 3) {
		*regs = *at_event;
		return 1;
	}
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *saved = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!saved || bpf_probe_read_kernel(regs, sizeof(*regs), saved))
		return 0;
	return (regs->cs & 3) == 3 && regs->rip != 0;
}

/* Copies the user stack from sp up into dst, in 4 KiB chunks at fixed
 * offsets (the verifier then knows every write is in bounds) until the
 * stack's end or DEFERRED_STACK_BYTES; the bytes copied. */
static __always_inline __u32 copy_user_stack(__u8 *dst, __u64 sp)
{
	__u32 copied = 0;
#pragma unroll
	for (int i = 0; i < DEFERRED_STACK_BYTES / 4096; i++) {
		__u64 at = sp + i * 4096;
		if (bpf_probe_read_user(dst + i * 4096, 4096, (const void *)at) == 0) {
			copied += 4096;
			continue;
		}
		/* The stack ends inside this chunk: copy up to that page's end. */
		__u32 rest = (4096 - (at & 4095)) & 4095;
		if (rest && bpf_probe_read_user(dst + i * 4096, rest, (const void *)at) == 0)
			copied += rest;
		break;
	}
	return copied;
}

/* Sends the walk st stopped for user space to finish; 0 when the ring
 * buffer is too full (half of it stays free for process events). */
static __always_inline int send_deferred(void *ctx, struct unwind_state *st,
					 struct sample_key *key, __u32 window, __u32 generation,
					 __u32 interp_words)
{
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	__u64 queued = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (queued + sizeof(struct deferred_sample) > size / 2)
		return 0;
	struct deferred_sample *d = bpf_ringbuf_reserve(&events, sizeof(*d), 0);
	if (!d)
		return 0;
	d->kind = PROCESS_DEFERRED_SAMPLE;
	d->pid = key->pid;
	d->tid = key->tid;
	d->cpu = key->cpu;
	d->window = window;
	d->generation = generation;
	d->time_ns = bpf_ktime_get_ns();
	d->go_labels = key->go_labels;
	d->pc = st->pc;
	d->sp = st->sp;
	d->bp = st->bp;
	d->exact_pc = st->exact_pc;
	d->trusted_pc = st->trusted_pc;
	__builtin_memcpy(d->comm, key->comm, COMM_LEN);
	long kernel = bpf_get_stack(ctx, d->kernel, sizeof(d->kernel), 0);
	d->kernel_len = kernel > 0 ? (__u64)kernel / 8 : 0;
	bpf_probe_read_kernel(&d->user, sizeof(d->user), &st->stack);
	d->interp_words = interp_words;
	d->reserved = 0;
	d->stack_bytes = copy_user_stack(d->stack, st->sp);
	bpf_ringbuf_submit(d, wakeup_if_asleep());
	return 1;
}

/* Walks the user stack into the window's user_stacks map; its key, 0 when
 * there is no user stack, or USER_STACK_DEFERRED when the whole sample went
 * to user space as a struct deferred_sample. */
#define USER_STACK_DEFERRED ((__u64)-1)
static __always_inline __u64 unwind_user(void *ctx, struct pt_regs *at_event, void *user_stacks,
					 struct sample_key *sample, __u32 window, __u32 mode,
					 __u32 generation, __u32 *slot,
					 struct process_unwind_info *proc)
{
	struct unwind_state *st = bpf_map_lookup_elem(&unwind_scratch, slot);
	if (!st || !user_registers(at_event, &st->regs))
		return 0;
	st->pc = st->regs.rip;
	st->sp = st->regs.rsp;
	st->bp = st->regs.rbp;
	st->sample_r14 = st->regs.r14;
	st->sample_r15 = st->regs.r15;
	copy_stack_window(st, st->sp);
	st->hash = 0xcbf29ce484222325ULL;
	st->pid = sample->pid;
	st->tid = sample->tid;
	st->generation = generation;
	st->interp_state = INTERP_UNSTARTED;
	st->interp_frame = 0;
	st->interp_end = 0;
	st->run_frames = 0;
	st->pc_recorded = 0;
	/* The first frame's mapping, from the entry the caller read: a plain
	 * process's walk then reads it no more. */
	st->mapping.start = 0;
	st->mapping.end = 0;
	st->plain_process = 0;
	if (proc && proc->generation == generation)
		keep_mapping(st, proc, st->pc);
	st->mode = mode;
	/* An off-CPU walk is finished here: its time is only known later. */
	st->can_defer = mode != UNWIND_FRAME_POINTERS && *slot == SCRATCH_SAMPLE;
	st->exact_pc = 1;
	st->trusted_pc = 1;
	st->stack.len = 0;
	st->stack.status = STACK_TRUNCATED;
	/* Interpreter runs take an extra step each (the loop frame's own). */
	bpf_loop(2 * MAX_STACK_DEPTH + 1, unwind_frame, slot, 0);
	if (st->stack.status == STACK_DEFERRED) {
		/* Past the walked frames, kept only in the sample sent. */
		__u32 len = st->stack.len;
		__u64 hash = st->hash, interp_frame = st->interp_frame;
		__u32 interp_state = st->interp_state, run_frames = st->run_frames;
		bpf_loop(MAX_STACK_DEPTH, collect_interp_frame, slot, 0);
		__u32 interp_words = st->stack.len - len;
		st->stack.len = len;
		int sent = send_deferred(ctx, st, sample, window, generation, interp_words);
		if (sent) {
			count(STAT_WALKS_DEFERRED);
			return USER_STACK_DEFERRED;
		}
		st->hash = hash;
		st->interp_frame = interp_frame;
		st->interp_state = interp_state;
		st->run_frames = run_frames;
		/* No room: finish here, with frame pointers where tables are missing. */
		count(STAT_DEFER_RING_FULL);
		st->can_defer = 0;
		st->stack.status = STACK_TRUNCATED;
		bpf_loop(2 * MAX_STACK_DEPTH + 1, unwind_frame, slot, 0);
	}
	__u64 key = (st->hash ^ st->stack.status) * 0x100000001b3ULL;
	if (key == 0 || key == USER_STACK_DEFERRED)
		key = 1;
	/* Most stacks are stored already: a lookup (lock-free) spares the
	 * update's bucket lock. */
	if (bpf_map_lookup_elem(user_stacks, &key))
		return key;
	long err = bpf_map_update_elem(user_stacks, &key, &st->stack, BPF_NOEXIST);
	if (err != 0 && err != -17 /* EEXIST: the same stack, stored meanwhile */) {
		count(STAT_USER_STACKS_FULL);
		return 0;
	}
	return key;
}

/* Walks the current task's stacks into key (user stack, kernel stack id,
 * goroutine labels), the stacks into the given maps, the kernel's without
 * its first skip frames; 0 when the sample went to user space whole (a
 * deferred walk). */
static __always_inline int walk_stacks(void *ctx, struct pt_regs *at_event, void *stacks,
				       void *user_stacks, struct sample_key *key, __u32 window,
				       __u32 mode, __u32 generation, __u32 slot, __u32 skip)
{
	if (key->pid != 0) {
		struct process_unwind_info *proc = bpf_map_lookup_elem(&unwind_processes, &key->pid);
		if (proc && proc->go.labels_kind != GO_LABELS_NONE)
			key->go_labels = go_current_labels(&proc->go);
		key->user_stack = unwind_user(ctx, at_event, user_stacks, key, window, mode,
					      generation, &slot, proc);
		if (key->user_stack == USER_STACK_DEFERRED)
			return 0;
		if (key->user_stack == 0)
			count(STAT_USER_STACK_ERRORS);
	}
	/* An event in user mode has no kernel stack: what the helper would
	 * say (EFAULT, no frames), without its call. */
	if (at_event && (at_event->cs & 3) == 3) {
		key->kernel_stack_id = -14;
		return 1;
	}
	/* No BPF_F_REUSE_STACKID: a different stack in a taken bucket is a
	 * counted collision, never a silently wrong stack. */
	key->kernel_stack_id = bpf_get_stackid(ctx, stacks, skip & BPF_F_SKIP_FIELD_MASK);
	if (key->kernel_stack_id == -17)
		count(STAT_KERNEL_STACK_COLLISIONS);
	return 1;
}

/* Adds value to the key's count in counts (a sample: 1; off CPU: the
 * nanoseconds). */
static __always_inline void add_count(void *counts, struct sample_key *key, __u64 value)
{
	__u64 *n = bpf_map_lookup_elem(counts, key);
	if (n) {
		__sync_fetch_and_add(n, value);
	} else if (bpf_map_update_elem(counts, key, &value, BPF_NOEXIST) != 0) {
		/* Lost a race with another CPU for the same key, or the map is full. */
		n = bpf_map_lookup_elem(counts, key);
		if (n)
			__sync_fetch_and_add(n, value);
		else
			count(STAT_COUNTS_FULL);
	}
}

/* The current process's exec generation; announces it to user space when
 * it is new (or new under an exited one's pid). */
static __always_inline __u32 process_generation(__u32 pid)
{
	if (pid == 0)
		return 0;
	__u32 generation = 0;
	__u32 *known = bpf_map_lookup_elem(&known_processes, &pid);
	if (known && !(*known & GENERATION_EXITED))
		return *known;
	if (current_exiting())
		/* The exited process itself, not a new one under its pid:
		 * announced, it would be read in vain and its entry never
		 * dropped. */
		return known ? *known & ~GENERATION_EXITED : 0;
	if (known)
		generation = (*known & ~GENERATION_EXITED) + 1;
	bpf_map_update_elem(&known_processes, &pid, &generation, BPF_ANY);
	send_event(PROCESS_FIRST_SEEN, pid);
	return generation;
}

/* The current thread's key, as far as the event knows it. */
static __always_inline void current_key(struct sample_key *key)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	key->pid = pid_tgid >> 32;
	key->tid = (__u32)pid_tgid;
	key->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(&key->comm, sizeof(key->comm));
}

SEC("perf_event")
int sample_cpu(struct bpf_perf_event_data *ctx)
{
	__u32 zero = 0;
	struct sampler_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (pid == 0 && !cfg->include_idle)
		return 0;
	if (cfg->targeted && !bpf_map_lookup_elem(&targets, &pid)) {
		count(STAT_UNTARGETED);
		return 0;
	}
	struct sample_key key = {};
	current_key(&key);
	count(STAT_SAMPLES);
	__u32 generation = process_generation(key.pid);

	__u32 window = cfg->window;
	struct pt_regs *regs = (struct pt_regs *)&ctx->regs;
	if (window & 1) {
		if (walk_stacks(ctx, regs, &stacks_1, &user_stacks_1, &key, window,
				cfg->unwind_mode, generation, SCRATCH_SAMPLE, 0))
			add_count(&counts_1, &key, 1);
	} else {
		if (walk_stacks(ctx, regs, &stacks_0, &user_stacks_0, &key, window,
				cfg->unwind_mode, generation, SCRATCH_SAMPLE, 0))
			add_count(&counts_0, &key, 1);
	}
	return 0;
}

/* Off-CPU profiling, at sched_switch: the one hook that sees both sides of
 * a switch without a kprobe or a BPF trampoline (kernels may be built
 * without either; this project's CI machine is). A task going off
 * CPU (the current one) is timed with probability off_cpu_threshold: its
 * stacks are walked there, where it blocks, into off_cpu_stacks and
 * off_cpu_user_stacks, which are not per window, and its key is kept in
 * off_cpu_pending. When a switch brings it back (`next`), the time it was
 * away is added to the key in the current window's off_cpu_counts: the
 * sample lands in the window it ends in, however many windows it slept
 * through; user space frees a stack once no count or pending key needs
 * it. The pending map is an LRU: a task that never runs again (or whose
 * exit was missed) is pushed out, never leaks. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PROCESSES); /* resized by user space */
	__type(key, __u32);
	__type(value, struct off_cpu_pending);
} off_cpu_pending SEC(".maps");

STACKS_MAP(off_cpu_stacks);
USER_STACKS_MAP(off_cpu_user_stacks);

struct task_struct___switch {
	int pid;
} __attribute__((preserve_access_index));

/* The frames of this program and of the tracepoint's BPF glue
 * (bpf_trace_run4) on top of a kernel stack taken at sched_switch. */
#define OFF_CPU_SKIP_FRAMES 2

/* Arguments: preempt, prev (the current task), next, prev_state. */
SEC("raw_tracepoint/sched_switch")
int off_cpu_switch(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	struct sampler_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	__u64 now = bpf_ktime_get_ns();

	/* The task switched in: back from off CPU if it was timed. */
	struct task_struct___switch *next = (void *)ctx->args[2];
	int next_tid = 0;
	bpf_probe_read_kernel(&next_tid, sizeof(next_tid), &next->pid);
	__u32 back = next_tid;
	struct off_cpu_pending *pending =
		back ? bpf_map_lookup_elem(&off_cpu_pending, &back) : 0;
	if (pending) {
		struct sample_key key = pending->key;
		__u64 off = now - pending->since;
		bpf_map_delete_elem(&off_cpu_pending, &back);
		count(STAT_OFF_CPU);
		if (cfg->window & 1)
			add_count(&off_cpu_counts_1, &key, off);
		else
			add_count(&off_cpu_counts_0, &key, off);
	}

	/* The task switched out. */
	if ((__u64)bpf_get_prandom_u32() >= cfg->off_cpu_threshold)
		return 0;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (pid == 0) /* the idle task */
		return 0;
	if (cfg->targeted && !bpf_map_lookup_elem(&targets, &pid))
		return 0;
	if (current_exiting()) /* its last switch: it never comes back */
		return 0;
	struct off_cpu_pending away = {};
	current_key(&away.key);
	__u32 generation = process_generation(away.key.pid);
	walk_stacks(ctx, 0, &off_cpu_stacks, &off_cpu_user_stacks, &away.key, cfg->window,
		    cfg->unwind_mode, generation, SCRATCH_OFF_CPU, OFF_CPU_SKIP_FRAMES);
	/* The walk's own time is not time off CPU. */
	away.since = bpf_ktime_get_ns();
	bpf_map_update_elem(&off_cpu_pending, &away.key.tid, &away, BPF_ANY);
	return 0;
}

SEC("raw_tracepoint/sched_process_exec")
int process_exec(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u32 *known = bpf_map_lookup_elem(&known_processes, &pid);
	__u32 generation = known ? (*known & ~GENERATION_EXITED) + 1 : 1;
	bpf_map_update_elem(&known_processes, &pid, &generation, BPF_ANY);
	/* The old image's mappings must not unwind the new one. */
	bpf_map_delete_elem(&unwind_processes, &pid);
	/* A target's new image is judged anew by user space: not sampled
	 * until then (its forks meanwhile are adopted if it matches). */
	bpf_map_delete_elem(&targets, &pid);
	send_event(PROCESS_EXEC, pid);
	return 0;
}

/* After mmap: a known process mapped a file executable (the loader bringing
 * in libc, a dlopen). Reported at once, so user space reads the mapping and
 * loads its table while the process lives, however short its life.
 * Arguments: file, addr, len, prot, flags, pgoff; then the return value. */
#define PROT_EXEC 4
SEC("fexit/vm_mmap_pgoff")
int process_mmap_exec(__u64 *ctx)
{
	if (ctx[0] == 0 || !(ctx[3] & PROT_EXEC) || ctx[6] >= (__u64)-4095)
		return 0;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (bpf_map_lookup_elem(&known_processes, &pid))
		send_event(PROCESS_MMAP_EXEC, pid);
	return 0;
}

struct task_struct___fork {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

/* Attached only when targeting: a process a targeted one forks is
 * targeted too, until its exec is judged by user space (a new thread needs
 * nothing: samples are keyed by process). Arguments: parent, child; the
 * parent is the current task. */
SEC("raw_tracepoint/sched_process_fork")
int process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	if (!bpf_map_lookup_elem(&targets, &parent))
		return 0;
	struct task_struct___fork *child = (void *)ctx->args[1];
	int pid = 0, tgid = 0;
	bpf_probe_read_kernel(&pid, sizeof(pid), &child->pid);
	bpf_probe_read_kernel(&tgid, sizeof(tgid), &child->tgid);
	if (tgid <= 0 || pid != tgid)
		return 0;
	__u32 key = tgid;
	__u8 targeted = 1;
	bpf_map_update_elem(&targets, &key, &targeted, BPF_ANY);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	/* A thread timed off CPU whose return was missed. */
	bpf_map_delete_elem(&off_cpu_pending, &tid);
	/* Threads exit too; the process is gone when its leader exits. Its
	 * generation stays, marked, until user space forgets the process after
	 * the window: walks deferred before the exit are still finished as its
	 * own, and a new process under the same pid is told apart. */
	if (pid != tid)
		return 0;
	bpf_map_delete_elem(&targets, &pid);
	__u32 *known = bpf_map_lookup_elem(&known_processes, &pid);
	if (!known || (*known & GENERATION_EXITED))
		return 0;
	*known |= GENERATION_EXITED;
	bpf_map_delete_elem(&unwind_processes, &pid);
	/* Nothing waits on an exit: it never wakes the reader (see
	 * reader_asleep), it is read with the next record woken for, or at
	 * the reader's next timeout. */
	send_event_flags(PROCESS_EXIT, pid, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
