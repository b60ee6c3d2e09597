/* Example runtime plugin in C, written against plugin/include/agent_plugin.h
 * alone (no protobuf library): passes one batch in every `pass_every`
 * (config, default 1) and drops the others by returning an empty
 * ProfilesData.
 *
 * Build: cc -shared -fPIC -O2 -I plugin/include -o libgate.so examples/plugins/c-gate/gate.c
 * (ABI_VERSION can be overridden with -DABI_VERSION=N to test the agent's check.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_plugin.h"

#ifndef ABI_VERSION
#define ABI_VERSION AGENT_PLUGIN_ABI_VERSION
#endif

struct gate {
	unsigned long pass_every;
	unsigned long seen;
};

static struct agent_bytes copy_bytes(const void *data, size_t len)
{
	struct agent_bytes b = { malloc(len ? len : 1), len };
	if (b.ptr && len)
		memcpy(b.ptr, data, len);
	return b;
}

static struct agent_bytes message(const char *text)
{
	return copy_bytes(text, strlen(text));
}

static int32_t gate_create(const uint8_t *config, size_t len, void **handle, struct agent_bytes *error)
{
	struct gate *g = calloc(1, sizeof(*g));
	if (!g) {
		*error = message("out of memory");
		return AGENT_PLUGIN_ERROR;
	}
	g->pass_every = 1;
	/* The config is a small JSON object; find "pass_every": N. */
	char *text = strndup((const char *)config, len);
	const char *key = text ? strstr(text, "\"pass_every\"") : NULL;
	if (key) {
		const char *colon = strchr(key, ':');
		char *end = NULL;
		long n = colon ? strtol(colon + 1, &end, 10) : 0;
		if (!colon || end == colon + 1 || n < 1) {
			free(text);
			free(g);
			*error = message("pass_every must be a positive integer");
			return AGENT_PLUGIN_ERROR;
		}
		g->pass_every = (unsigned long)n;
	}
	free(text);
	*handle = g;
	return AGENT_PLUGIN_OK;
}

static int32_t gate_process(void *handle, const uint8_t *input, size_t len, struct agent_bytes *output)
{
	struct gate *g = handle;
	int pass = g->seen++ % g->pass_every == 0;
	*output = pass ? copy_bytes(input, len) : copy_bytes(NULL, 0);
	return output->ptr ? AGENT_PLUGIN_OK : AGENT_PLUGIN_ERROR;
}

static void gate_free_bytes(struct agent_bytes bytes)
{
	free(bytes.ptr);
}

static void gate_destroy(void *handle)
{
	free(handle);
}

static const struct agent_plugin_vtable vtable = {
	.abi_version = ABI_VERSION,
	.name = "gate",
	.create = gate_create,
	.process = gate_process,
	.free_bytes = gate_free_bytes,
	.destroy = gate_destroy,
};

const struct agent_plugin_vtable *agent_plugin_entry(void)
{
	return &vtable;
}
