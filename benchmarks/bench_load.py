"""Quantize-on-load: time and peak anonymous memory against the final weight bytes.

    python benchmarks/bench_load.py MODEL [--types f16 q8_0 q4_0] [--threads 2]
    python benchmarks/bench_load.py --fullsize sd15      # a header-only SD1.5 (sparse file, zeros)

Peak memory should be about the weight bytes plus one tensor in flight; a loader that materialises the
whole f32 model first would show the source size instead. RssAnon excludes the page cache that the
memory-mapped source occupies. Each type runs in a fresh process so peaks don't mix."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def measure(model: str, qtype: str, threads: int) -> None:
    import sdcpp

    peak = [rss_anon_kib()]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_kib())
            time.sleep(0.005)

    base = rss_anon_kib()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    w = sdcpp.load_weights(model, type=qtype, n_threads=threads, progress=False)
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    largest = max(e.bytes_before for e in w.plan)
    peak_mib = (peak[0] - base) / 1024
    print(f"{qtype:<6}{seconds:>8.1f}s{w.nbytes / 2**20:>12.0f}{peak_mib:>12.0f}{largest / 2**20:>17.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?")
    ap.add_argument("--fullsize", choices=["sd15", "sd21", "sdxl_base"])
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_0"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        measure(a.model, a.one, a.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model
        if a.fullsize:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from fixtures.fullsize import build_header_only

            model = str(build_header_only(Path(tmp) / f"{a.fullsize}.safetensors", a.fullsize))
        print(f"{'type':<6}{'load':>9}{'weights MiB':>12}{'peak MiB':>12}{'largest src MiB':>17}")
        for qtype in a.types:
            subprocess.run([sys.executable, __file__, model, "--one", qtype, "--threads", str(a.threads)], check=True)


if __name__ == "__main__":
    main()
