/* Off-CPU workloads of the end-to-end tests; each prints what its own
 * clocks measured, "wall_ns off_ns cpu_ns", when done (cpu_ns: the
 * process's CPU time; wall - cpu is its time off CPU in all, preempted
 * included).
 *   off_cpu nap SECONDS   spins 2 ms of CPU time, then sleeps 8 ms in
 *                         nanosleep, over and over: off_ns is the time
 *                         inside nanosleep.
 *   off_cpu pipe SECONDS  reads a pipe a child writes a byte into every
 *                         50 ms: off_ns is the time inside read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ns(clockid_t clock)
{
	struct timespec t;
	clock_gettime(clock, &t);
	return t.tv_sec * 1000000000ULL + t.tv_nsec;
}

__attribute__((noinline)) void spin_cpu(unsigned long long ns)
{
	unsigned long long start = now_ns(CLOCK_THREAD_CPUTIME_ID);
	volatile unsigned long sink = 0;
	while (now_ns(CLOCK_THREAD_CPUTIME_ID) - start < ns)
		for (int i = 0; i < 1000; i++)
			sink += i;
}

__attribute__((noinline)) unsigned long long nap(long ns)
{
	struct timespec t = {0, ns};
	unsigned long long start = now_ns(CLOCK_MONOTONIC);
	nanosleep(&t, NULL);
	return now_ns(CLOCK_MONOTONIC) - start;
}

__attribute__((noinline)) unsigned long long read_pipe(int fd, int *done)
{
	char c;
	unsigned long long start = now_ns(CLOCK_MONOTONIC);
	*done = read(fd, &c, 1) != 1;
	return now_ns(CLOCK_MONOTONIC) - start;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	unsigned long long seconds = strtoull(argv[2], NULL, 10);
	unsigned long long start = now_ns(CLOCK_MONOTONIC), end = start + seconds * 1000000000ULL;
	unsigned long long off = 0;
	if (strcmp(argv[1], "nap") == 0) {
		while (now_ns(CLOCK_MONOTONIC) < end) {
			spin_cpu(2000000);
			off += nap(8000000);
		}
	} else if (strcmp(argv[1], "pipe") == 0) {
		int fds[2];
		if (pipe(fds) != 0)
			return 1;
		pid_t writer = fork();
		if (writer == 0) {
			close(fds[0]);
			while (now_ns(CLOCK_MONOTONIC) < end) {
				usleep(50000);
				if (write(fds[1], "x", 1) != 1)
					return 1;
			}
			return 0;
		}
		close(fds[1]);
		int done = 0;
		while (!done)
			off += read_pipe(fds[0], &done);
		waitpid(writer, NULL, 0);
	} else {
		return 2;
	}
	printf("%llu %llu %llu\n", now_ns(CLOCK_MONOTONIC) - start, off,
	       now_ns(CLOCK_PROCESS_CPUTIME_ID));
	return 0;
}
