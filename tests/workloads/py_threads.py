"""Python workload of the unwinder tests: two threads, each calling
functions of its own family that it creates with exec and discards (fresh
code objects all the time, at addresses freed ones had). Prints each
thread's family and native id, then runs for argv[1] seconds."""
import sys
import threading
import time

SOURCE = """
def {family}_fresh_{i}(deadline):
    total = 0
    while time.monotonic() < deadline:
        total += 1
    return total
"""


def churn(family, seconds, ready):
    # One write per line: print() writes its pieces separately, and the
    # two threads' lines would interleave.
    sys.stdout.write(f"{family} {threading.get_native_id()}\n")
    sys.stdout.flush()
    ready.wait()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        # The file name and the first line say which function it is.
        namespace = {"time": time}
        source = "\n" * (i % 50) + SOURCE.format(family=family, i=i)
        exec(compile(source, f"<{family} {i}>", "exec"), namespace)
        namespace[f"{family}_fresh_{i}"](time.monotonic() + 0.05)
        del namespace
        i += 1


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    ready = threading.Barrier(2)
    threads = [
        threading.Thread(target=churn, args=(family, seconds, ready))
        for family in ("alpha", "beta")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
