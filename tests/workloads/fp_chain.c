/* CPU-bound workload whose hot path is main -> a -> b -> c.
 * Build: clang -O2 -fno-omit-frame-pointer -fno-optimize-sibling-calls.
 * Usage: fp_chain SECONDS; prints its own CPU time in ns when done. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

volatile uint64_t sink;

__attribute__((noinline)) void c(void)
{
	for (uint64_t i = 0; i < 2000000; i++)
		sink += i * i;
}

__attribute__((noinline)) void b(void) { c(); }
__attribute__((noinline)) void a(void) { b(); }

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);
	while (time(NULL) < end)
		for (int i = 0; i < 200; i++)
			a();
	struct timespec cpu;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
	printf("%lld\n", (long long)cpu.tv_sec * 1000000000LL + cpu.tv_nsec);
	return 0;
}
