/* CPython's frames, for the walker of cpu.bpf.c (included there, after
 * the helpers it uses). The offsets come from user space
 * (receivers/ebpf-cpu/src/runtimes/python.rs), per CPython version. */
#ifndef AGENT_RUNTIMES_PYTHON_H
#define AGENT_RUNTIMES_PYTHON_H

/* Thread id -> its CPython thread state, found once by a search of the
 * interpreter's thread list (checked against the thread's fs base on use). */
struct python_thread {
	__u64 tstate;
	__u32 pid;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct python_thread);
} python_threads SEC(".maps");

/* The validation value of a CPython code object: its name's hash (names
 * are interned, so the hash is set and stable), first line, argument
 * count, file name (address and length) and a word set once per code
 * object (its size from 3.11, its bytecode object before). Another code
 * object allocated where a freed one was tells itself apart unless all of
 * these are the same. */
static __always_inline __u32 python_validation(__u64 name_hash, __u32 firstlineno, __u32 argcount,
					       __u64 filename, __u64 filename_length, __u64 identity)
{
	const __u64 k = 0x9e3779b97f4a7c15ULL;
	__u64 h = (name_hash ^ (((__u64)firstlineno << 32) | argcount)) * k;
	h = (h ^ filename) * k;
	h = (h ^ filename_length) * k;
	h = (h ^ identity) * k;
	return (__u32)(h >> 32);
}

#define PY_MAX_THREADS 256

/* The frame the sampled thread's CPython thread state is at; 0 if none. */
static __always_inline __u64 python_current_frame(struct unwind_state *st, struct python_layout *py)
{
	struct task_struct___agent *task = (void *)bpf_get_current_task();
	__u64 fsbase = 0, tstate = 0, id = 0;
	if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), &task->thread.fsbase))
		return 0;
	struct python_thread *cached = bpf_map_lookup_elem(&python_threads, &st->tid);
	if (cached && cached->pid == st->pid && !read_user(&id, cached->tstate + py->tstate_thread_id) &&
	    id == fsbase) {
		tstate = cached->tstate;
	} else {
		__u64 interp = 0, t = 0;
		if (read_user(&interp, py->interp_head) || !interp ||
		    read_user(&t, interp + py->interp_threads))
			return 0;
		for (int i = 0; i < PY_MAX_THREADS && t; i++) {
			if (read_user(&id, t + py->tstate_thread_id))
				return 0;
			if (id == fsbase) {
				tstate = t;
				break;
			}
			if (read_user(&t, t + py->tstate_next))
				return 0;
		}
		if (!tstate)
			return 0;
		struct python_thread found = {.tstate = tstate, .pid = st->pid};
		bpf_map_update_elem(&python_threads, &st->tid, &found, BPF_ANY);
	}
	__u64 frame = 0;
	if (read_user(&frame, tstate + py->tstate_frame))
		return 0;
	if (py->cframe_frame != 0xffff && frame && read_user(&frame, frame + py->cframe_frame))
		return 0;
	return frame;
}

/* Emits the CPython frame at st->interp_frame (two words) and moves to the
 * one below; 1 when the run of the loop frame at pc ends there. */
static __always_inline long python_frame(struct unwind_state *st, struct python_layout *py)
{
	__u64 frame = st->interp_frame;
	if (read_object(st->frame_buf, py->frame_size, frame)) {
		count(STAT_INTERP_READ_FAILED);
		st->interp_state = INTERP_DONE;
		return 1;
	}
	__u64 back = FIELD(st->frame_buf, __u64, py->frame_back);
	__u8 entry = FIELD(st->frame_buf, __u8, py->frame_entry);
	if (py->entry_rule == PY_ENTRY_SHIM && entry == py->entry_shim) {
		/* The shim below a run: the run is over, the next one starts below. */
		st->interp_frame = back;
		return 1;
	}
	__u64 code = FIELD(st->frame_buf, __u64, py->frame_code);
	if (read_object(st->code_buf, py->code_size, code)) {
		count(STAT_INTERP_READ_FAILED);
		st->interp_state = INTERP_DONE;
		return 1;
	}
	if (FIELD(st->code_buf, __u64, 8) != py->code_type) {
		/* ob_type: not a code object, so not a frame we can trust. */
		count(STAT_INTERP_NOT_CODE);
		st->interp_state = INTERP_DONE;
		return 1;
	}
	__u64 name = FIELD(st->code_buf, __u64, py->code_name), name_hash = 0;
	__u64 filename = FIELD(st->code_buf, __u64, py->code_filename), filename_length = 0;
	if (read_user(&name_hash, name + 24)) /* PyASCIIObject.hash */
		name_hash = 0;
	if (read_user(&filename_length, filename + 16)) /* PyASCIIObject.length */
		filename_length = 0;
	__u32 validation = python_validation(name_hash, FIELD(st->code_buf, __u32, py->code_firstlineno),
					     FIELD(st->code_buf, __u32, py->code_argcount), filename,
					     filename_length, FIELD(st->code_buf, __u64, py->code_identity));
	__s64 offset;
	if (py->instr_is_pointer)
		offset = (__s64)(FIELD(st->frame_buf, __u64, py->frame_instr) - (code + py->code_bytecode));
	else
		offset = FIELD(st->frame_buf, __s32, py->frame_instr);
	if (offset < 0 || offset >= INTERP_OFFSET_UNKNOWN)
		offset = INTERP_OFFSET_UNKNOWN;
	push_word(st, ((__u64)(INTERP_FRAME_TAG | INTERP_CPYTHON) << 56) | ((__u64)offset << 32) |
			      validation);
	push_word(st, code);
	announce_object(st->pid, INTERP_CPYTHON, validation, code);
	count(STAT_INTERP_FRAMES);
	st->run_frames += 1;
	st->interp_frame = back;
	if (!back) {
		st->interp_state = INTERP_DONE;
		return 1;
	}
	switch (py->entry_rule) {
	case PY_ENTRY_EACH_FRAME:
		return 1;
	case PY_ENTRY_FLAG:
		return entry != 0;
	default:
		return 0;
	}
}

#endif
