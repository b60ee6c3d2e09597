/* Structs shared by the BPF program (cpu.bpf.c) and the receiver in Rust
 * (receivers/ebpf-cpu/src/bpf.rs holds #[repr(C)] twins; a test checks them
 * against this object's BTF). */
#ifndef AGENT_CPU_H
#define AGENT_CPU_H

#define COMM_LEN 16
/* The kernel's default perf_event_max_stack. */
#define MAX_STACK_DEPTH 127

/* Key of the sample counts: one entry per distinct (thread, CPU, stacks). */
struct sample_key {
	__u32 pid;             /* process (tgid) */
	__u32 tid;             /* thread */
	__u32 cpu;
	__s32 user_stack_id;   /* < 0: no user stack (the error code) */
	__s32 kernel_stack_id; /* < 0: no kernel stack (the error code) */
	char comm[COMM_LEN];   /* thread name */
};

/* Settings user space writes into the one-entry `config` array. */
struct sampler_config {
	__u32 window;          /* which counts/stacks maps samples go to: 0 or 1 */
	__u32 include_idle;    /* also sample the idle task (pid 0) */
};

enum process_event_kind {
	PROCESS_FIRST_SEEN = 1,
	PROCESS_EXEC = 2,
	PROCESS_EXIT = 3,
};

/* Sent through the `events` ring buffer. */
struct process_event {
	__u32 kind;            /* enum process_event_kind */
	__u32 pid;
};

/* Indices into the per-CPU `stats` array. */
enum stat_index {
	STAT_SAMPLES = 0,
	STAT_USER_STACK_COLLISIONS = 1,
	STAT_KERNEL_STACK_COLLISIONS = 2,
	STAT_USER_STACK_ERRORS = 3,
	STAT_COUNTS_FULL = 4,
	STAT_EVENTS_LOST = 5,
	STAT_COUNT = 6,
};

#endif
