/* Goroutine labels (runtime/pprof.Do, SetGoroutineLabels) of the sampled
 * thread's goroutine, for cpu.bpf.c (included there, after the helpers it
 * uses). The layout comes from user space
 * (receivers/ebpf-cpu/src/runtimes/go.rs): from the binary's DWARF, or a
 * table per Go release. */
#ifndef AGENT_RUNTIMES_GO_H
#define AGENT_RUNTIMES_GO_H

/* Labels by content hash, so each distinct set is stored once and samples
 * carry 8 bytes. User space reads them when the window is drained. A node's
 * distinct label sets per window are few: 1024 (0.8 MB) is ample. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct go_labels);
} go_labels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct go_labels);
} go_labels_scratch SEC(".maps");

/* A Go string header. */
struct go_string {
	__u64 data;
	__u64 len;
};

/* Copies label `key` = `value` into slot `n` of `out`; 0 on success. */
static __always_inline int go_copy_label(struct go_labels *out, __u32 n, struct go_string *key,
					 struct go_string *value)
{
	if (n >= GO_MAX_LABELS)
		return -1;
	struct go_label *l = &out->labels[n];
	__u32 klen = key->len, vlen = value->len;
	if (key->len > GO_LABEL_KEY_LEN)
		klen = GO_LABEL_KEY_LEN;
	if (value->len > GO_LABEL_VALUE_LEN)
		vlen = GO_LABEL_VALUE_LEN;
	if (bpf_probe_read_user(l->key, klen, (const void *)key->data) ||
	    bpf_probe_read_user(l->value, vlen, (const void *)value->data))
		return -1;
	l->key_len = klen;
	l->value_len = vlen;
	return 0;
}

/* Go 1.24+: `labels` points at a slice of {key, value} strings. */
static __always_inline int go_read_label_slice(struct go_labels *out, __u64 labels)
{
	struct go_string slice; /* data, len (cap not read) */
	if (bpf_probe_read_user(&slice, sizeof(slice), (const void *)labels))
		return -1;
	for (__u32 i = 0; i < GO_MAX_LABELS; i++) {
		if (i >= slice.len)
			break;
		struct go_string kv[2];
		if (bpf_probe_read_user(kv, sizeof(kv), (const void *)(slice.data + i * sizeof(kv))) ||
		    go_copy_label(out, i, &kv[0], &kv[1]))
			return -1;
		out->count = i + 1;
	}
	if (slice.len > GO_MAX_LABELS)
		out->truncated = slice.len - GO_MAX_LABELS;
	return 0;
}

/* Go 1.9-1.23: `labels` points at a map[string]string: an hmap whose
 * buckets hold 8 slots each (tophash[8], keys[8], values[8], overflow).
 * Label sets are small: the first two buckets are read, no overflow. */
#define GO_HMAP_B 9
#define GO_HMAP_BUCKETS 16
#define GO_BUCKET_SIZE (8 + 8 * 16 + 8 * 16 + 8)
#define GO_MIN_TOPHASH 5 /* below: an empty or evacuated slot */
static __always_inline int go_read_label_map(struct go_labels *out, __u64 labels)
{
	__u64 hmap = 0, count = 0, buckets = 0;
	__u8 b = 0;
	if (read_user(&hmap, labels) || hmap == 0)
		return hmap == 0 ? 0 : -1;
	if (read_user(&count, hmap) || bpf_probe_read_user(&b, 1, (const void *)(hmap + GO_HMAP_B)) ||
	    read_user(&buckets, hmap + GO_HMAP_BUCKETS))
		return -1;
	__u32 nbuckets = b == 0 ? 1 : 2;
	__u32 n = 0;
	for (__u32 bucket = 0; bucket < 2; bucket++) {
		if (bucket >= nbuckets)
			break;
		__u64 at = buckets + bucket * GO_BUCKET_SIZE;
		__u8 tophash[8];
		if (bpf_probe_read_user(tophash, sizeof(tophash), (const void *)at))
			return -1;
		for (__u32 slot = 0; slot < 8; slot++) {
			if (tophash[slot] < GO_MIN_TOPHASH)
				continue;
			struct go_string key, value;
			if (bpf_probe_read_user(&key, sizeof(key), (const void *)(at + 8 + slot * 16)) ||
			    bpf_probe_read_user(&value, sizeof(value),
						(const void *)(at + 8 + 128 + slot * 16)))
				return -1;
			if (go_copy_label(out, n, &key, &value))
				break;
			n++;
			out->count = n;
		}
	}
	if (count > n)
		out->truncated = count - n;
	return 0;
}

/* The key of the sampled goroutine's labels in `go_labels`; 0 when it has
 * none (or the thread runs no goroutine). Through g.m.curg, so the labels
 * of the goroutine stay on while its thread runs the scheduler's stack
 * (g0) or a cgo call on its behalf. Global, like native_step: checked
 * once, and its stack is not the sampling program's. */
__noinline __u64 go_current_labels(struct go_layout *go)
{
	if (!go)
		return 0;
	struct task_struct___agent *task = (void *)bpf_get_current_task();
	__u64 fsbase = 0, g = 0, m = 0, curg = 0, labels = 0;
	if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), &task->thread.fsbase) || fsbase == 0 ||
	    read_user(&g, fsbase + go->tls_g) || g == 0 || read_user(&m, g + go->g_m) || m == 0 ||
	    read_user(&curg, m + go->m_curg) || curg == 0 ||
	    read_user(&labels, curg + go->g_labels) || labels == 0)
		return 0;
	__u32 zero = 0;
	struct go_labels *out = bpf_map_lookup_elem(&go_labels_scratch, &zero);
	if (!out)
		return 0;
	__builtin_memset(out, 0, sizeof(*out));
	int err = go->labels_kind == GO_LABELS_SLICE ? go_read_label_slice(out, labels)
						      : go_read_label_map(out, labels);
	if (err) {
		count(STAT_GO_LABELS_FAILED);
		return 0;
	}
	if (out->count == 0)
		return 0;
	/* FNV-1a over the words of the set: equal sets share one entry. */
	__u64 hash = 0xcbf29ce484222325ULL;
	__u64 *words = (__u64 *)out;
	for (__u32 i = 0; i < sizeof(*out) / 8; i++)
		hash = (hash ^ words[i]) * 0x100000001b3ULL;
	if (hash == 0)
		hash = 1;
	bpf_map_update_elem(&go_labels, &hash, out, BPF_NOEXIST);
	count(STAT_GO_LABELS);
	return hash;
}

#endif
