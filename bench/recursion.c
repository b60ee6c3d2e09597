/* CPU-bound workload at a chosen stack depth: main -> rec x DEPTH -> leaf.
 * Build: clang -O2 -fno-omit-frame-pointer -fno-optimize-sibling-calls.
 * Usage: recursion SECONDS DEPTH */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

volatile uint64_t sink;

__attribute__((noinline)) void leaf(void)
{
	for (uint64_t i = 0; i < 2000000; i++)
		sink += i * i;
}

__attribute__((noinline)) void rec(int depth)
{
	if (depth == 0)
		leaf();
	else
		rec(depth - 1);
	sink++; /* not a tail call */
}

int main(int argc, char **argv)
{
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);
	int depth = argc > 2 ? atoi(argv[2]) : 40;
	while (time(NULL) < end)
		rec(depth);
	return 0;
}
