/* Ruby's frames (CRuby's control frames), for the walker of cpu.bpf.c
 * (included there, after the helpers it uses). The offsets come from user
 * space (receivers/ebpf-cpu/src/runtimes/ruby.rs), per Ruby version. */
#ifndef AGENT_RUNTIMES_RUBY_H
#define AGENT_RUNTIMES_RUBY_H

/* ep[0] of a control frame (vm_core.h, the same from 2.6 to 3.4): the
 * frame's magic (its kind) and flags. */
#define RUBY_FRAME_MAGIC_MASK 0x7fff0001
#define RUBY_FRAME_MAGIC_CFUNC 0x55550001
/* The bottom frame of every VM stack, which runs nothing. */
#define RUBY_FRAME_MAGIC_DUMMY 0x79990001
/* The frame an rb_vm_exec activation started with: its run ends there. */
#define RUBY_FRAME_FLAG_FINISH 0x0020
/* Not a Ruby frame (C functions, ifuncs). */
#define RUBY_FRAME_FLAG_CFRAME 0x0080
/* ep[-2]: the method entry (or cref) of the frame. */
#define RUBY_EP_ME_CREF (-2 * 8)

/* The validation value of a frame's object: an iseq's body, encoded
 * instructions and size; a method entry's definition, called id and owner
 * (each set once per object). */
static __always_inline __u32 ruby_validation(__u64 a, __u64 b, __u64 c)
{
	const __u64 k = 0x9e3779b97f4a7c15ULL;
	__u64 h = (a ^ 0x7275627900000000ULL) * k;
	h = (h ^ b) * k;
	h = (h ^ c) * k;
	return (__u32)(h >> 32);
}

/* The sampled thread's current control frame (its execution context's
 * cfp); 0 if none. The frames run from there to the end of its VM stack,
 * which is left in st->interp_end. */
static __always_inline __u64 ruby_current_frame(struct unwind_state *st, struct ruby_layout *rb)
{
	__u64 ec = 0;
	if (rb->tls_module_got || rb->tls_static_offset) {
		/* ruby_current_ec is thread-local: found from the thread pointer
		 * (fs base), directly in static TLS or through the thread's
		 * dynamic thread vector (glibc: tcbhead_t.dtv at +8, 16-byte
		 * entries indexed by module id). */
		struct task_struct___agent *task = (void *)bpf_get_current_task();
		__u64 fsbase = 0, address = 0;
		if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), &task->thread.fsbase) || !fsbase)
			return 0;
		if (rb->tls_static_offset) {
			address = fsbase + rb->tls_static_offset;
		} else {
			__u64 module = 0, dtv = 0, block = 0;
			if (read_user(&module, rb->tls_module_got) || read_user(&dtv, fsbase + 8) ||
			    read_user(&block, dtv + module * 16) || !block || block == (__u64)-1)
				return 0;
			address = block + rb->tls_offset;
		}
		if (read_user(&ec, address))
			return 0;
	} else if (read_user(&ec, rb->ec_global)) {
		return 0;
	}
	__u64 cfp = 0, stack = 0, size = 0;
	if (!ec || read_user(&cfp, ec + rb->ec_cfp) || read_user(&stack, ec + rb->ec_vm_stack) ||
	    read_user(&size, ec + rb->ec_vm_stack_size))
		return 0;
	st->interp_end = stack + size * 8;
	return cfp < st->interp_end ? cfp : 0;
}

/* Emits the Ruby frame at st->interp_frame (two words; none for frames of
 * no method: dummy frames, ifuncs) and moves to its caller; 1 when the run
 * of the rb_vm_exec frame at pc ends there. */
static __always_inline long ruby_frame(struct unwind_state *st, struct ruby_layout *rb)
{
	__u64 frame = st->interp_frame;
	__u64 flags = 0;
	if (read_object(st->frame_buf, rb->cfp_size, frame)) {
		count(STAT_INTERP_READ_FAILED);
		st->interp_state = INTERP_DONE;
		return 1;
	}
	__u64 pc = FIELD(st->frame_buf, __u64, rb->cfp_pc);
	__u64 iseq = FIELD(st->frame_buf, __u64, rb->cfp_iseq);
	__u64 ep = FIELD(st->frame_buf, __u64, rb->cfp_ep);
	if (read_user(&flags, ep)) {
		count(STAT_INTERP_READ_FAILED);
		st->interp_state = INTERP_DONE;
		return 1;
	}
	__u64 object = 0;
	__u32 validation = 0, offset = INTERP_OFFSET_UNKNOWN;
	if ((flags & RUBY_FRAME_MAGIC_MASK) == RUBY_FRAME_MAGIC_CFUNC) {
		/* A C method: named by its method entry. */
		if (!read_user(&object, ep + RUBY_EP_ME_CREF) && object &&
		    !read_object(st->code_buf, rb->cme_owner + 8, object))
			validation = ruby_validation(FIELD(st->code_buf, __u64, rb->cme_def),
						     FIELD(st->code_buf, __u64, rb->cme_def + 8),
						     FIELD(st->code_buf, __u64, rb->cme_owner));
		else
			object = 0;
	} else if (iseq && !(flags & RUBY_FRAME_FLAG_CFRAME) &&
		   (flags & RUBY_FRAME_MAGIC_MASK) != RUBY_FRAME_MAGIC_DUMMY) {
		/* A Ruby frame: named by its instruction sequence; the offset
		 * is pc's, in VALUEs from the start of the encoded sequence. */
		__u64 body = 0;
		if (!read_user(&body, iseq + rb->iseq_body) && body &&
		    !read_object(st->code_buf, rb->body_encoded + 8, body)) {
			__u64 encoded = FIELD(st->code_buf, __u64, rb->body_encoded);
			__u32 size = FIELD(st->code_buf, __u32, rb->body_size);
			object = iseq;
			validation = ruby_validation(body, encoded, size);
			if (pc >= encoded && (pc - encoded) / 8 <= size && (pc - encoded) / 8 < INTERP_OFFSET_UNKNOWN)
				offset = (pc - encoded) / 8;
		}
	}
	if (object) {
		push_word(st, ((__u64)(INTERP_FRAME_TAG | INTERP_RUBY) << 56) | ((__u64)offset << 32) |
				      validation);
		push_word(st, object);
		announce_object(st->pid, INTERP_RUBY, validation, object);
		count(STAT_INTERP_FRAMES);
		st->run_frames += 1;
	}
	st->interp_frame = frame + rb->cfp_size;
	if (st->interp_frame >= st->interp_end) {
		st->interp_state = INTERP_DONE;
		return 1;
	}
	return (flags & RUBY_FRAME_FLAG_FINISH) != 0;
}

#endif
