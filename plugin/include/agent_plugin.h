/*
 * agent_plugin.h — the C ABI of runtime-loaded processors.
 *
 * A plugin is a shared library that exports one symbol,
 *
 *     const struct agent_plugin_vtable *agent_plugin_entry(void);
 *
 * returning a pointer to a vtable that lives as long as the library. The
 * agent loads the library when it starts, calls agent_plugin_entry, and
 * refuses the plugin (with an error naming the library) when the symbol is
 * missing, when abi_version is not AGENT_PLUGIN_ABI_VERSION, or when create
 * fails.
 *
 * Data crosses the boundary as OpenTelemetry profiles: the serialized
 * protobuf message opentelemetry.proto.profiles.v1development.ProfilesData
 * (OTLP profiles proto v1.10), so a plugin can be written in any language
 * with a protobuf library — or, for plugins that only pass or drop whole
 * batches, none. An empty output (length 0) is a valid, empty ProfilesData:
 * the batch is dropped.
 *
 * Memory: bytes a plugin returns (output and error messages) are allocated
 * by the plugin and given back to it with free_bytes. Input bytes belong to
 * the agent and are valid only during the call.
 *
 * Threads: each pipeline that names the plugin gets its own handle. The
 * agent never calls process on one handle from two threads at once, but
 * different handles may be used concurrently.
 */
#ifndef AGENT_PLUGIN_H
#define AGENT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes. Changed on any incompatible change. */
#define AGENT_PLUGIN_ABI_VERSION 1

/* Name of the one symbol a plugin exports. */
#define AGENT_PLUGIN_ENTRY "agent_plugin_entry"

/* A byte buffer owned by the plugin. */
struct agent_bytes {
	uint8_t *ptr;
	size_t len;
};

/* Status codes of create and process. */
#define AGENT_PLUGIN_OK 0
#define AGENT_PLUGIN_ERROR 1

struct agent_plugin_vtable {
	/* Must be AGENT_PLUGIN_ABI_VERSION. */
	uint32_t abi_version;

	/* The plugin's name, NUL-terminated, static. */
	const char *name;

	/* Creates an instance from its config: UTF-8 JSON of the `config` key of
	 * the processor in the agent's pipeline (`{}` when absent), not
	 * NUL-terminated. On success returns AGENT_PLUGIN_OK and sets *handle.
	 * On failure returns AGENT_PLUGIN_ERROR and sets *error to a UTF-8
	 * message (released with free_bytes). */
	int32_t (*create)(const uint8_t *config_json, size_t config_len, void **handle,
			  struct agent_bytes *error);

	/* Processes one batch: input is a serialized ProfilesData. On success
	 * returns AGENT_PLUGIN_OK and sets *output to the serialized result. On
	 * failure returns AGENT_PLUGIN_ERROR and sets *output to a UTF-8
	 * message; the agent drops the batch, counts it, and goes on. */
	int32_t (*process)(void *handle, const uint8_t *input, size_t input_len,
			   struct agent_bytes *output);

	/* Releases bytes this plugin returned. */
	void (*free_bytes)(struct agent_bytes bytes);

	/* Destroys an instance; called once per successful create. */
	void (*destroy)(void *handle);
};

/* The entry point every plugin exports. */
const struct agent_plugin_vtable *agent_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* AGENT_PLUGIN_H */
