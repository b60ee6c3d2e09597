/* Syscall-heavy workload: reads /dev/zero in 64 KiB chunks, so most of its
 * time is spent in the kernel. Usage: syscalls SECONDS */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static char buf[65536];

int main(int argc, char **argv)
{
	int fd = open("/dev/zero", O_RDONLY);
	if (fd < 0)
		return 1;
	time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);
	while (time(NULL) < end)
		for (int i = 0; i < 1000; i++)
			if (read(fd, buf, sizeof(buf)) < 0)
				return 1;
	return 0;
}
