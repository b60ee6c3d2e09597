/* HotSpot's Java frames (the JVM), for the walker of cpu.bpf.c (included
 * there, after the helpers it uses). The layout comes from user space
 * (receivers/ebpf-cpu/src/runtimes/jvm.rs), which reads it from the tables
 * the JVM describes itself with (gHotSpotVMStructs).
 *
 * Code the JVM generates lies in its code cache: code heaps carved into
 * segments, a byte map telling for each segment how far back its block
 * starts. A block holds a CodeBlob: the template interpreter, an nmethod
 * (a method compiled by C1 or C2), or a stub. Interpreted frames keep a
 * frame pointer and their Method* and bytecode pointer in slots below it;
 * compiled code uses rbp as any register, so its frames are stepped by the
 * frame size its blob records. */
#ifndef AGENT_RUNTIMES_JVM_H
#define AGENT_RUNTIMES_JVM_H

/* An interpreted frame's slots, in words from its frame pointer (x86-64's
 * frame layout, the same from JDK 8 to 25): the sender's sp below it, the
 * Method* at -3, the bytecode pointer at -8; the return address above. */
#define JVM_SLOT_BELOW 9 /* words read below the frame pointer */
#define JVM_SLOT(buf, word) FIELD(buf, __u64, 8 * (JVM_SLOT_BELOW + (word)))
#define JVM_SENDER_SP (-1)
#define JVM_METHOD (-3)
#define JVM_BCP (-8)
/* Segment map hops to a block's start (each hop at most 254 segments of
 * 128 bytes: a megabyte). */
#define JVM_SEGMAP_HOPS 32
/* Bytes of a method's bytecode an offset may reach (u2 code size). */
#define JVM_MAX_BCI 0xffff

/* The CodeBlob holding pc in the code heaps, or 0. */
static __always_inline __u64 jvm_blob(struct jvm_layout *j, __u64 pc)
{
	for (int h = 0; h < JVM_MAX_HEAPS; h++) {
		if (h >= j->heap_count)
			return 0;
		if (pc < j->heap_low[h] || pc >= j->heap_high[h])
			continue;
		__u32 shift = j->heap_log2_segment[h] & 31;
		__u64 segment = (pc - j->heap_low[h]) >> shift;
		for (int i = 0; i < JVM_SEGMAP_HOPS; i++) {
			__u8 hop = 0;
			if (bpf_probe_read_user(&hop, 1, (const void *)(j->heap_segmap[h] + segment)) ||
			    hop == 0xff || hop > segment)
				return 0; /* unreadable, or a free block */
			if (hop == 0)
				return j->heap_low[h] + (segment << shift) + j->block_header;
			segment -= hop;
		}
		return 0;
	}
	return 0;
}

/* Emits the interpreted frame at st->pc (its Method* and bytecode index)
 * and steps to its caller by its frame pointer. */
static __always_inline long jvm_interpreted(struct unwind_state *st, struct jvm_layout *j)
{
	__u64 fp = st->bp;
	/* The caller's frame and the sender's sp lie above this frame (at a
	 * codelet's entry or exit, rbp may still be the caller's own). */
	if (fp < 8 * JVM_SLOT_BELOW ||
	    read_object(st->frame_buf, 8 * (JVM_SLOT_BELOW + 2), fp - 8 * JVM_SLOT_BELOW) ||
	    JVM_SLOT(st->frame_buf, 0) <= fp || JVM_SLOT(st->frame_buf, JVM_SENDER_SP) <= fp) {
		push_word(st, st->pc);
		st->stack.status = STACK_FRAME_POINTER_FAILED;
		return 1;
	}
	__u64 method = JVM_SLOT(st->frame_buf, JVM_METHOD), bcp = JVM_SLOT(st->frame_buf, JVM_BCP);
	__u64 const_method = 0;
	if (!method || read_user(&const_method, method + j->method_const) || !const_method) {
		count(STAT_INTERP_READ_FAILED);
		push_word(st, st->pc);
	} else {
		__u64 bytecodes = const_method + j->const_method_size;
		__u32 bci = bcp >= bytecodes && bcp - bytecodes <= JVM_MAX_BCI ? (__u32)(bcp - bytecodes) :
										   INTERP_OFFSET_UNKNOWN;
		__u32 validation = pair_validation(method, const_method);
		push_word(st, ((__u64)(INTERP_FRAME_TAG | INTERP_JVM) << 56) | ((__u64)bci << 32) | validation);
		push_word(st, method);
		announce_object(st->pid, INTERP_JVM, validation, method);
		count(STAT_INTERP_FRAMES);
	}
	st->pc = JVM_SLOT(st->frame_buf, 1);
	st->sp = JVM_SLOT(st->frame_buf, JVM_SENDER_SP);
	st->bp = JVM_SLOT(st->frame_buf, 0);
	st->exact_pc = 0;
	st->trusted_pc = 0;
	return 0;
}

/* Steps over the frame at st->pc if it is in the JVM's code cache: an
 * interpreted or compiled Java frame is emitted as such (two words), a
 * stub as its pc. 0 to go on, 1 when the walk ends, -1 when the code is
 * not the JVM's (the caller walks it as native code). Global, so the
 * verifier checks it once on its own; it takes its pointers as possibly
 * null. */
__noinline long jvm_step(struct unwind_state *st, struct process_unwind_info *proc)
{
	if (!st || !proc)
		return -1;
	struct jvm_layout *j = &proc->interp.jvm;
	__u64 pc = st->pc;
	if (pc < j->code_start || pc >= j->code_end)
		return -1;
	if (st->stack.len + 2 > MAX_STACK_DEPTH)
		return 1; /* status stays STACK_TRUNCATED */
	if (in_interp_loop(&proc->interp, pc))
		return jvm_interpreted(st, j);
	__u64 blob = jvm_blob(j, pc);
	if (!blob || read_object(st->code_buf, j->blob_size, blob)) {
		push_word(st, pc);
		return frame_pointer_step(st, STACK_UNKNOWN_CODE);
	}
	__u64 code = j->code_is_offset ? blob + FIELD(st->code_buf, __s32, j->blob_code) :
					 FIELD(st->code_buf, __u64, j->blob_code);
	__s32 frame_size = FIELD(st->code_buf, __s32, j->blob_frame_size);
	__s32 complete = j->frame_complete_size == 2 ? FIELD(st->code_buf, __s16, j->blob_frame_complete) :
						       FIELD(st->code_buf, __s32, j->blob_frame_complete);
	__u32 kind = j->kind_size == 1 ? FIELD(st->code_buf, __u8, j->blob_kind) :
					 FIELD(st->code_buf, __u32, j->blob_kind);
	/* A return address is past its call: never at the code's start. */
	if (kind == j->kind_nmethod && pc - code < INTERP_OFFSET_UNKNOWN &&
	    (st->exact_pc ? pc >= code : pc > code)) {
		__u64 method = FIELD(st->code_buf, __u64, j->nmethod_method);
		__u64 compile_id = 0; /* past the bytes read of the blob on JDK 17 */
		read_user(&compile_id, blob + j->nmethod_compile_id);
		compile_id = (__u32)compile_id;
		__u32 offset = pc - code - (st->exact_pc ? 0 : 1);
		__u32 validation = pair_validation(method, compile_id);
		push_word(st, ((__u64)(INTERP_FRAME_TAG | INTERP_JVM_COMPILED) << 56) | ((__u64)offset << 32) |
				      validation);
		push_word(st, blob);
		announce_object(st->pid, INTERP_JVM_COMPILED, validation, blob);
		count(STAT_INTERP_FRAMES);
	} else {
		push_word(st, pc);
	}
	/* Stubs without a frame size of their own (adapters, the call stub)
	 * keep rbp as a frame pointer, or leave it alone. */
	if (frame_size <= 0)
		return frame_pointer_step(st, STACK_FRAME_POINTER_FAILED);
	/* Code of this size is called from code of the code cache only (Java
	 * code, the interpreter, the call stub): a return address elsewhere
	 * says the frame is not (or no longer) as its size says. */
	__u64 sp = st->sp, frame[2]; /* the saved rbp, then the return address */
	int built = !st->exact_pc || complete <= 0 || pc >= code + complete;
	if (built && !read_stack_pair(st, frame, sp + 8 * (__u64)frame_size - 16) &&
	    frame[1] >= j->code_start && frame[1] < j->code_end) {
		st->sp = sp + 8 * (__u64)frame_size;
		st->bp = frame[0];
	} else if (st->exact_pc && !read_stack_pair(st, frame, sp - 8) && frame[1] >= j->code_start &&
		   frame[1] < j->code_end) {
		/* In the prologue before anything is pushed, or at the return:
		 * the return address is on top. */
		st->sp = sp + 8;
	} else if (st->exact_pc && !read_stack_pair(st, frame, sp) && frame[1] >= j->code_start &&
		   frame[1] < j->code_end) {
		/* rbp pushed (or not popped yet) above the return address. */
		st->sp = sp + 16;
		st->bp = frame[0];
	} else {
		st->stack.status = STACK_FRAME_POINTER_FAILED;
		return 1;
	}
	st->pc = frame[1];
	st->exact_pc = 0;
	st->trusted_pc = 0;
	return 0;
}

#endif
