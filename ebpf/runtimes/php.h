/* PHP's frames (the Zend engine's zend_execute_data chain), for the walker
 * of cpu.bpf.c (included there, after the helpers it uses). The offsets
 * come from user space (receivers/ebpf-cpu/src/runtimes/php.rs), per PHP
 * version. */
#ifndef AGENT_RUNTIMES_PHP_H
#define AGENT_RUNTIMES_PHP_H

/* Call flags in the top 16 bits of zend_execute_data.This.u1.type_info
 * (Zend/zend_compile.h): ZEND_CALL_TOP marks a frame called from C (the
 * script's main frame, a callback). A user function's such frame is the one
 * an execute_ex activation started with; an internal function called from
 * C (array_map('strrev', …)) runs without one. */
#define PHP_CALL_TOP (1U << 17)
/* zend_function.type: user code (ZEND_USER_FUNCTION, ZEND_EVAL_CODE) has
 * opcodes with line numbers; internal functions do not. */
#define PHP_USER_FUNCTION 2
#define PHP_EVAL_CODE 4

/* The validation value of a zend_function: its name, class, file and first
 * line (addresses of interned strings, set once per function). Another
 * function allocated where a freed one was tells itself apart unless all of
 * these are the same. */
static __always_inline __u32 php_validation(__u64 name, __u64 scope, __u64 filename, __u32 line_start,
					    __u8 type)
{
	const __u64 k = 0x9e3779b97f4a7c15ULL;
	__u64 h = (name ^ ((__u64)line_start << 8 | type)) * k;
	h = (h ^ scope) * k;
	h = (h ^ filename) * k;
	return (__u32)(h >> 32);
}

/* zend_function.common: type, …, function_name, scope: what an internal
 * function is sure to have (a user function's op_array is read further). */
#define PHP_FUNC_COMMON 24

/* The frame PHP executes now (EG(current_execute_data)); 0 if none. PHP
 * runs one script per thread in the builds we read (NTS), so the global is
 * the sampled thread's. */
static __always_inline __u64 php_current_frame(struct php_layout *php)
{
	__u64 frame = 0;
	if (read_user(&frame, php->current_execute_data))
		return 0;
	return frame;
}

/* Emits the PHP frame at st->interp_frame (two words) and moves to its
 * caller; 1 when the run of the execute_ex frame at pc ends there. */
static __always_inline long php_frame(struct unwind_state *st, struct interp_info *interp)
{
	struct php_layout *php = &interp->php;
	__u64 frame = st->interp_frame;
	if (read_object(st->frame_buf, php->data_size, frame)) {
		count(STAT_INTERP_READ_FAILED);
		st->interp_state = INTERP_DONE;
		return 1;
	}
	__u64 prev = FIELD(st->frame_buf, __u64, php->data_prev);
	__u32 call_info = FIELD(st->frame_buf, __u32, php->data_call_info);
	__u64 func = FIELD(st->frame_buf, __u64, php->data_func);
	st->interp_frame = prev;
	int user = 0;
	if (func) {
		/* An internal function is shorter than a user function's
		 * op_array: read as much as it surely has if the whole fails. */
		int whole = !read_object(st->code_buf, php->func_size, func);
		if (!whole && read_object(st->code_buf, PHP_FUNC_COMMON, func)) {
			count(STAT_INTERP_READ_FAILED);
			st->interp_state = INTERP_DONE;
			return 1;
		}
		__u8 type = FIELD(st->code_buf, __u8, 0);
		user = type == PHP_USER_FUNCTION || type == PHP_EVAL_CODE;
		if (user && !whole) {
			count(STAT_INTERP_READ_FAILED);
			st->interp_state = INTERP_DONE;
			return 1;
		}
		__u64 filename = user ? FIELD(st->code_buf, __u64, php->func_filename) : 0;
		__u32 line_start = user ? FIELD(st->code_buf, __u32, php->func_line_start) : 0;
		__u32 validation = php_validation(FIELD(st->code_buf, __u64, php->func_name),
						  FIELD(st->code_buf, __u64, php->func_scope), filename,
						  line_start, type);
		/* The line of the frame's current opline. The engine saves it in
		 * the frame before each call out of it; while the sample is in
		 * execute_ex itself, the hybrid VM (GCC builds on x86-64) keeps
		 * the frame in r14 and its current opline in r15 — taken only if
		 * that opline's handler is code of execute_ex, as a hybrid VM's
		 * handlers are. */
		__u32 line = INTERP_OFFSET_UNKNOWN;
		__u64 opline = FIELD(st->frame_buf, __u64, php->data_opline), handler = 0;
		if (st->stack.len == 0 && st->sample_r14 == frame && st->sample_r15 &&
		    !read_user(&handler, st->sample_r15) && in_interp_loop(interp, handler))
			opline = st->sample_r15;
		if (user && opline &&
		    bpf_probe_read_user(&line, sizeof(line), (const void *)(opline + php->op_lineno)))
			line = INTERP_OFFSET_UNKNOWN;
		if (line >= INTERP_OFFSET_UNKNOWN)
			line = INTERP_OFFSET_UNKNOWN;
		push_word(st, ((__u64)(INTERP_FRAME_TAG | INTERP_PHP) << 56) | ((__u64)line << 32) |
				      validation);
		push_word(st, func);
		announce_object(st->pid, INTERP_PHP, validation, func);
		count(STAT_INTERP_FRAMES);
		st->run_frames += 1;
	}
	if (!prev) {
		st->interp_state = INTERP_DONE;
		return 1;
	}
	return user && (call_info & PHP_CALL_TOP) != 0;
}

#endif
