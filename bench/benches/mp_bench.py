"""CPython multiprocessing: Process start + join of a trivial function.

Usage: mp_bench.py METHOD[:BUSY_MS] HEAP_MIB THREADS ITERS
Prints "p50_us p99_us n" on one line. With ":BUSY_MS" the target computes
for that many milliseconds and only `start()` is timed.
"""
import multiprocessing as mp
import sys
import threading
import time


def inc(x):
    return x + 1


def busy(ms):
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        x += 1
    return x


def spin(stop):
    while not stop.is_set():
        pass


def main():
    method, heap_mib, threads, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    method, _, busy_ms = method.partition(":")
    ctx = mp.get_context(method)
    heap = None
    if heap_mib:
        heap = bytearray(heap_mib << 20)
        # Write every 4 KiB page so each has a page-table entry.
        heap[::4096] = b"\x01" * len(range(0, len(heap), 4096))
    stop = threading.Event()
    spinners = [threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(threads)]
    for t in spinners:
        t.start()
    # Warm-up (starts the fork server for "forkserver").
    p = ctx.Process(target=inc, args=(41,))
    p.start()
    p.join()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        if busy_ms:
            p = ctx.Process(target=busy, args=(int(busy_ms),))
            p.start()
            samples.append(time.perf_counter() - t0)
            p.join()
        else:
            p = ctx.Process(target=inc, args=(41,))
            p.start()
            p.join()
            samples.append(time.perf_counter() - t0)
        assert p.exitcode == 0
    stop.set()
    samples.sort()
    n = len(samples)
    p50 = samples[min(n * 50 // 100, n - 1)] * 1e6
    p99 = samples[min(n * 99 // 100, n - 1)] * 1e6
    print(f"{p50:.0f} {p99:.0f} {n}")
    del heap


if __name__ == "__main__":
    main()
