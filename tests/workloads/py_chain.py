"""Python workload of the unwinder tests: a class method -> helper ->
callback from C (sorted's key) -> generator expression -> leaf, whose loop
takes nearly all the time. Runs for argv[1] seconds."""
import sys
import time


def leaf(n):
    total = 0
    for i in range(3000):  # LEAF LOOP START
        total += (i * n) % 7
    return total  # LEAF LOOP END


def by_weight(x):
    return sum(leaf(x + i) for i in range(3))


def helper(items):
    return sorted(items, key=by_weight)


class Worker:
    def run(self, seconds):
        # CPU seconds, not wall time: a loaded machine still gets every sample.
        deadline = time.process_time() + seconds
        rounds = 0
        while time.process_time() < deadline:
            helper(range(8))
            rounds += 1
        return rounds


if __name__ == "__main__":
    Worker().run(float(sys.argv[1]))
