// SPDX-License-Identifier: GPL-2.0
/* System-wide CPU sampling: counts (thread, CPU, user stack, kernel stack).
 *
 * Samples go to one of two map sets (counts_N, stacks_N) chosen by
 * config.window; user space flips the window, waits for programs in flight,
 * then drains the idle set, so no sample is lost or counted twice at a
 * window edge. New, exec'ing and exiting processes are reported through a
 * ring buffer so their mappings are read while they exist. */
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>

#include "cpu.h"

#define MAX_SAMPLE_KEYS 16384
#define MAX_STACKS 8192
#define MAX_PROCESSES 32768

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

COUNTS_MAP(counts_0);
COUNTS_MAP(counts_1);
STACKS_MAP(stacks_0);
STACKS_MAP(stacks_1);

/* Processes already announced to user space. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u8);
} known_processes SEC(".maps");

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

static __always_inline void count(__u32 index)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &index);
	if (v)
		*v += 1;
}

static __always_inline void send_event(__u32 kind, __u32 pid)
{
	struct process_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_EVENTS_LOST);
		return;
	}
	e->kind = kind;
	e->pid = pid;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void record(void *ctx, void *counts, void *stacks, struct sample_key *key)
{
	/* No BPF_F_REUSE_STACKID: a different stack in a taken bucket is a
	 * counted collision, never a silently wrong stack. */
	key->user_stack_id = bpf_get_stackid(ctx, stacks, BPF_F_USER_STACK);
	if (key->user_stack_id == -17 /* EEXIST */)
		count(STAT_USER_STACK_COLLISIONS);
	else if (key->user_stack_id < 0 && key->pid != 0)
		count(STAT_USER_STACK_ERRORS);
	key->kernel_stack_id = bpf_get_stackid(ctx, stacks, 0);
	if (key->kernel_stack_id == -17)
		count(STAT_KERNEL_STACK_COLLISIONS);

	__u64 one = 1;
	__u64 *n = bpf_map_lookup_elem(counts, key);
	if (n) {
		__sync_fetch_and_add(n, 1);
	} else if (bpf_map_update_elem(counts, key, &one, BPF_NOEXIST) != 0) {
		/* Lost a race with another CPU for the same key, or the map is full. */
		n = bpf_map_lookup_elem(counts, key);
		if (n)
			__sync_fetch_and_add(n, 1);
		else
			count(STAT_COUNTS_FULL);
	}
}

SEC("perf_event")
int sample_cpu(struct bpf_perf_event_data *ctx)
{
	__u32 zero = 0;
	struct sampler_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct sample_key key = {};
	key.pid = pid_tgid >> 32;
	key.tid = (__u32)pid_tgid;
	if (key.pid == 0 && !cfg->include_idle)
		return 0;
	key.cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	count(STAT_SAMPLES);

	if (key.pid != 0 && !bpf_map_lookup_elem(&known_processes, &key.pid)) {
		__u8 yes = 1;
		bpf_map_update_elem(&known_processes, &key.pid, &yes, BPF_ANY);
		send_event(PROCESS_FIRST_SEEN, key.pid);
	}

	if (cfg->window)
		record(ctx, &counts_1, &stacks_1, &key);
	else
		record(ctx, &counts_0, &stacks_0, &key);
	return 0;
}

SEC("raw_tracepoint/sched_process_exec")
int process_exec(void *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u8 yes = 1;
	bpf_map_update_elem(&known_processes, &pid, &yes, BPF_ANY);
	send_event(PROCESS_EXEC, pid);
	return 0;
}

SEC("raw_tracepoint/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 pid = pid_tgid >> 32;
	/* Threads exit too; the process is gone when its leader exits. */
	if (pid != (__u32)pid_tgid)
		return 0;
	if (bpf_map_delete_elem(&known_processes, &pid) == 0)
		send_event(PROCESS_EXIT, pid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
