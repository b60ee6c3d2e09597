/* CPU-bound workload built without frame pointers (gcc -O2
 * -fomit-frame-pointer): main -> a -> b -> c -> lib_d -> lib_e -> lib_f
 * (in libnofp.so) -> spin -> leaf, nine frames. Frames keep locals on the
 * stack and rbp holds data, so a frame-pointer walk cannot follow them.
 * Usage: nofp_chain SECONDS (fractions too: 0.1 runs for 100 ms) */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

void lib_d(uint64_t n);
volatile uint64_t sink;

__attribute__((noinline)) uint64_t leaf(uint64_t n)
{
	volatile uint64_t pad[8];
	uint64_t x = n;
	for (int i = 0; i < 200000; i++) {
		pad[i & 7] = x;
		x = x * 6364136223846793005ULL + pad[(i + 3) & 7];
	}
	return x;
}

__attribute__((noinline)) void spin(uint64_t n) { sink += leaf(n); __asm__ volatile("" ::: "memory"); }
__attribute__((noinline)) void c(uint64_t n) { volatile char buf[40]; buf[n & 31] = 1; lib_d(n + buf[3]); }
__attribute__((noinline)) void b(uint64_t n) { volatile char buf[72]; buf[n & 63] = 1; c(n + buf[5]); }
__attribute__((noinline)) void a(uint64_t n) { volatile char buf[24]; buf[n & 15] = 1; b(n + buf[7]); }

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double end = now() + (argc > 1 ? atof(argv[1]) : 5);
	uint64_t n = 0;
	while (now() < end)
		a(n++);
	return 0;
}
