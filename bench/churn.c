/* Process churn: spawns RATE short-lived processes per second (/bin/true,
 * each waited for) until killed, paced in 10 ms steps, and keeps the count
 * spawned so far in COUNT_FILE (rewritten every second).
 * Usage: churn RATE COUNT_FILE */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: churn RATE COUNT_FILE\n");
		return 2;
	}
	long rate = atol(argv[1]);
	char *args[] = {"/bin/true", NULL};
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	unsigned long long spawned = 0;
	for (long step = 0;; step++) {
		/* Spread the second's spawns over its 100 steps. */
		long due = rate * (step % 100 + 1) / 100 - rate * (step % 100) / 100;
		for (long i = 0; i < due; i++) {
			pid_t pid;
			if (posix_spawn(&pid, args[0], NULL, NULL, args, environ) == 0) {
				waitpid(pid, NULL, 0);
				spawned++;
			}
		}
		if (step % 100 == 99) {
			FILE *f = fopen(argv[2], "w");
			if (f) {
				fprintf(f, "%llu\n", spawned);
				fclose(f);
			}
		}
		next.tv_nsec += 10 * 1000 * 1000;
		if (next.tv_nsec >= 1000000000) {
			next.tv_nsec -= 1000000000;
			next.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
	}
}
