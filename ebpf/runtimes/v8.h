/* V8's JavaScript frames (Node.js), for the walker of cpu.bpf.c (included
 * there, after the helpers it uses). The offsets come from user space
 * (receivers/ebpf-cpu/src/runtimes/v8.rs), which reads them from the
 * build's own v8dbg_ symbols.
 *
 * V8 keeps a frame pointer in every frame it generates. A JavaScript
 * frame holds its context and its JSFunction in slots below the frame
 * pointer; a frame of V8's own kinds (entry, exit, stub…) holds a marker
 * (a small integer) where the context would be. An interpreted frame also
 * holds its BytecodeArray and the current bytecode offset. So each frame
 * whose code is V8's (its builtins, or code it generated) is read here:
 * a JavaScript frame becomes a V8 frame naming its SharedFunctionInfo (or
 * the optimized Code it runs), the rest stay native frames; either way the
 * walk goes on by frame pointer. */
#ifndef AGENT_RUNTIMES_V8_H
#define AGENT_RUNTIMES_V8_H

/* x86-64 without pointer compression (Node's builds): a tagged word is a
 * heap object's address + 1 (low bits 01) or a small integer (Smi, low bit
 * 0) whose value is the word's upper half. */
#define V8_TAG_MASK 3
#define V8_HEAP_OBJECT_TAG 1
#define V8_SMI_SHIFT 32
/* Bytes of a frame read below its frame pointer (past every slot used). */
#define V8_FRAME_SLOTS 64

static __always_inline int v8_is_object(__u64 word)
{
	return (word & V8_TAG_MASK) == V8_HEAP_OBJECT_TAG;
}

/* The types whose maps a walk keeps (unwind_state.v8_maps). */
enum v8_map_slot {
	V8_MAP_SFI = 0,
	V8_MAP_CODE = 1,
	V8_MAP_BYTECODE = 2,
};

/* Whether the heap object `object` (tagged) is of instance type `type`:
 * its map is the one found of that type before in this process image, or
 * the map says so (and is kept for the next time). */
static __always_inline int v8_is(struct unwind_state *st, struct v8_layout *v8, __u64 object,
				 __u16 type, enum v8_map_slot slot)
{
	__u64 map = 0;
	__u16 found = 0;
	if (!v8_is_object(object) || read_user(&map, object - V8_HEAP_OBJECT_TAG) || !v8_is_object(map))
		return 0;
	if (st->v8_maps_pid != st->pid || st->v8_maps_generation != st->generation) {
		__builtin_memset(st->v8_maps, 0, sizeof(st->v8_maps));
		st->v8_maps_pid = st->pid;
		st->v8_maps_generation = st->generation;
	}
	if (map == st->v8_maps[slot & 3])
		return 1;
	if (bpf_probe_read_user(&found, sizeof(found),
				(const void *)(map - V8_HEAP_OBJECT_TAG + v8->map_instance_type)) ||
	    found != type)
		return 0;
	st->v8_maps[slot & 3] = map;
	return 1;
}

/* What a JavaScript frame's compiled code is to its pc. */
enum v8_code_fit {
	V8_CODE_OPTIMIZED = 0,   /* the function's optimized code holds pc */
	V8_CODE_UNOPTIMIZED = 1, /* other code of its holds pc (baseline, a builtin), or none is known */
	V8_CODE_ELSEWHERE = 2,   /* pc is in no code the function points to */
};

/* What the compiled code `code` (tagged) of a frame's function is to
 * st->pc; for optimized code holding pc (which has source positions and
 * inlining of its own), sets *offset (pc's, or the call's for a return
 * address) and *validation. `unreadable`: the fit when `code` is no Code. */
static __always_inline enum v8_code_fit v8_code_at(struct unwind_state *st, struct v8_layout *v8,
						   __u64 code, enum v8_code_fit unreadable,
						   __u32 *offset, __u32 *validation)
{
	if (!v8->code_size || !v8_is(st, v8, code, v8->type_code, V8_MAP_CODE) ||
	    read_object(st->code_buf, v8->code_size, code - V8_HEAP_OBJECT_TAG))
		return unreadable;
	__u64 start = v8->code_start_is_pointer ?
			      FIELD(st->code_buf, __u64, v8->code_instruction_start) :
			      code - V8_HEAP_OBJECT_TAG + v8->code_instruction_start;
	__u32 size = FIELD(st->code_buf, __u32, v8->code_instruction_size);
	__u32 kind = (FIELD(st->code_buf, __u32, v8->code_flags) >> v8->code_kind_shift) & v8->code_kind_mask;
	__u64 pc = st->pc;
	if (pc < start || pc - start >= size || pc - start >= INTERP_OFFSET_UNKNOWN)
		return V8_CODE_ELSEWHERE;
	/* Optimizing tiers (Maglev, TurboFan) come after baseline. */
	if (kind <= v8->code_kind_baseline)
		return V8_CODE_UNOPTIMIZED;
	*offset = pc - start - (st->exact_pc ? 0 : 1);
	*validation = pair_validation(start, size);
	return V8_CODE_OPTIMIZED;
}

/* Whether st->pc may run a V8 frame: in V8's builtins (the interpreter's
 * trampoline and bytecode handlers, or their copy), in anonymous memory
 * (code V8 generated), or in no mapping user space has read yet (code
 * generated since, or the builtins' copy: user space is asked to read the
 * mappings again, at most once a second). Keeps the mapping found. */
static __always_inline int v8_code(struct unwind_state *st, struct process_unwind_info *proc)
{
	__u64 pc = st->pc;
	if (in_interp_loop(&proc->interp, pc))
		return 1;
	struct unwind_mapping *m = in_kept_mapping(st, pc) ? &st->mapping : keep_mapping(st, proc, pc);
	if (!m)
		request_refresh(proc, st->pid);
	return !m || m->table_id == TABLE_ANONYMOUS;
}

/* Emits the frame at st->pc if it is a JavaScript frame: 1 if it is, 0
 * if it is another of V8's frames (or unreadable as one). */
static __always_inline long v8_frame(struct unwind_state *st, struct process_unwind_info *proc)
{
	struct v8_layout *v8 = &proc->interp.v8;
	__u64 fp = st->bp;
	if (fp < V8_FRAME_SLOTS || read_object(st->frame_buf, V8_FRAME_SLOTS, fp - V8_FRAME_SLOTS))
		return 0;
#define V8_SLOT(below) FIELD(st->frame_buf, __u64, V8_FRAME_SLOTS - (below))
	__u64 context = V8_SLOT(v8->fp_context), function = V8_SLOT(v8->fp_function);
	/* A marker in the context slot: a frame of V8's own, not JavaScript. */
	if (!v8_is_object(context) || !v8_is_object(function))
		return 0;
	__u64 sfi = 0;
	if (read_user(&sfi, function - V8_HEAP_OBJECT_TAG + v8->function_shared) || !v8_is_object(sfi))
		return 0;
	if (read_object(st->code_buf, v8->sfi_size, sfi - V8_HEAP_OBJECT_TAG)) {
		count(STAT_INTERP_READ_FAILED);
		return 0;
	}
	if (!v8_is(st, v8, sfi, v8->type_sfi, V8_MAP_SFI)) {
		count(STAT_INTERP_NOT_CODE);
		return 0;
	}
	/* Interpreted: pc is in the interpreter (the builtins), the frame's
	 * bytecode is the function's (or at least a BytecodeArray) and its
	 * offset slot a Smi. Code compiled on-stack from an interpreted frame
	 * keeps that frame's slots, so pc tells it apart; other compiled frames
	 * keep other values there. A compiled frame's offset is its pc's. */
	__u32 offset = INTERP_OFFSET_UNKNOWN;
	__u64 bytecode = V8_SLOT(v8->fp_bytecode_array), at = V8_SLOT(v8->fp_bytecode_offset);
	if (in_interp_loop(&proc->interp, st->pc) && (at & 1) == 0 && v8_is_object(bytecode) &&
	    (bytecode == FIELD(st->code_buf, __u64, v8->sfi_function_data) ||
	     v8_is(st, v8, bytecode, v8->type_bytecode_array, V8_MAP_BYTECODE)) &&
	    (at >> V8_SMI_SHIFT) < INTERP_OFFSET_UNKNOWN)
		offset = at >> V8_SMI_SHIFT;
#undef V8_SLOT
	/* The frame names its function (and bytecode offset), or the
	 * optimized code it runs (and the pc's offset in it): what user space
	 * finds the functions inlined there by. */
	__u64 object = sfi;
	__u32 kind = INTERP_V8;
	__u32 validation = pair_validation(FIELD(st->code_buf, __u64, v8->sfi_name),
					 FIELD(st->code_buf, __u64, v8->sfi_script));
	if (offset == INTERP_OFFSET_UNKNOWN) {
		/* The function's current code; since V8 13 only its baseline
		 * code (the SharedFunctionInfo's data) is in reach, optimized
		 * code being behind a dispatch table: a pc in none of the two
		 * is in optimized code. */
		__u64 code = FIELD(st->code_buf, __u64, v8->sfi_function_data);
		enum v8_code_fit unreadable = V8_CODE_ELSEWHERE;
		if (v8->function_code) {
			unreadable = V8_CODE_UNOPTIMIZED;
			if (read_user(&code, function - V8_HEAP_OBJECT_TAG + v8->function_code))
				code = 0;
		}
		__u32 code_offset = 0, code_validation = 0;
		enum v8_code_fit fit = v8_code_at(st, v8, code, unreadable, &code_offset, &code_validation);
		if (fit == V8_CODE_OPTIMIZED) {
			object = code;
			offset = code_offset;
			validation = code_validation;
		} else if (fit == V8_CODE_ELSEWHERE && v8->code_size &&
			   !in_interp_loop(&proc->interp, st->pc)) {
			/* Generated code the function no longer points to (on-stack
			 * replacement, deoptimized code, or any optimized code since
			 * V8 13): user space finds it from its address (going back
			 * to the header before its instructions), checked against
			 * the function's validation. */
			kind = INTERP_V8_CODE_ADDRESS;
			object = st->pc - (st->exact_pc ? 0 : 1);
			offset = 0;
		}
	}
	push_word(st, ((__u64)(INTERP_FRAME_TAG | kind) << 56) | ((__u64)offset << 32) | validation);
	push_word(st, object);
	announce_object(st->pid, kind, validation, object);
	count(STAT_INTERP_FRAMES);
	return 1;
}

/* Steps over the frame at st->pc if its code is V8's: a JavaScript frame
 * is emitted as such (two words), any other as its pc; V8 keeps a frame
 * pointer in all of them (and its builtins have no unwind tables). 0 to go
 * on, 1 when the walk ends, -1 when the code is not V8's (the caller walks
 * it as native code). Global, so the verifier checks it once on its own;
 * it takes its pointers as possibly null. */
__noinline long v8_step(struct unwind_state *st, struct process_unwind_info *proc)
{
	if (!st || !proc || !v8_code(st, proc))
		return -1;
	if (st->stack.len + 2 > MAX_STACK_DEPTH)
		return 1; /* status stays STACK_TRUNCATED */
	if (!v8_frame(st, proc))
		push_word(st, st->pc);
	return frame_pointer_step(st, STACK_FRAME_POINTER_FAILED);
}

#endif
