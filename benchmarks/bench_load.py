"""Quantize-on-load: time and peak memory against the final weight bytes.

    python benchmarks/bench_load.py MODEL [--types f16 q8_0 q4_0] [--threads 2]
    python benchmarks/bench_load.py --fullsize sd15      # a header-only SD1.5 (sparse file, zeros)

Peak memory should be about the weight bytes plus one tensor in flight. Columns (MiB, Linux
/proc/self/status, each type in a fresh process so peaks don't mix; `base` is the process after
importing sdcpp and its extension, before the load, and every other memory column is above it):

  peak RSS   VmHWM during the load (kernel-tracked, exact): anonymous + file-backed resident pages
  peak anon  highest RssAnon sampled every 5 ms: the weight buffer and conversion scratch
  peak file  highest RssFile sampled every 5 ms: pages of the memory-mapped source still mapped

A loader that keeps every source page mapped shows the source size under `peak file`; one that
materialises the whole f32 model first shows it under `peak anon`. Target: peak RSS ~ weights +
largest source tensor. The source is read once before the runs, so every row sees a warm page cache
(load times then compare; a fresh --fullsize file would otherwise charge its first row for that)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def status_kib() -> dict[str, int]:
    out = dict.fromkeys(FIELDS, 0)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in out:
                    out[key] = int(line.split()[1])
    except OSError:
        pass  # not Linux: memory columns read 0
    return out


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the load's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(model: str, qtype: str, threads: int) -> None:
    import sdcpp
    from sdcpp._native import core

    core()  # the extension and ggml libraries belong to the baseline, not to the load
    base = status_kib()
    hwm_ok = reset_hwm()
    peak = {"RssAnon": base["RssAnon"], "RssFile": base["RssFile"]}
    done = threading.Event()

    def sample():
        while not done.is_set():
            s = status_kib()
            for k in peak:
                peak[k] = max(peak[k], s[k])
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    w = sdcpp.load_weights(model, type=qtype, n_threads=threads, progress=False)
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    end = status_kib()
    largest = max(e.bytes_before for e in w.plan)
    hwm = (end["VmHWM"] - base["VmRSS"]) / 1024 if hwm_ok else float("nan")
    anon = (peak["RssAnon"] - base["RssAnon"]) / 1024
    file = (peak["RssFile"] - base["RssFile"]) / 1024
    print(f"{qtype:<6}{seconds:>7.1f}s{w.nbytes / 2**20:>9.0f}{largest / 2**20:>9.0f}{base['VmRSS'] / 1024:>7.0f}"
          f"{hwm:>10.0f}{anon:>10.0f}{file:>10.0f}", flush=True)


def source_files(model: str) -> list[Path]:
    p = Path(model)
    return sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]


def warm_page_cache(files: list[Path]):
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


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
        files = source_files(model)
        warm_page_cache(files)
        print(f"{'type':<6}{'load':>8}{'weights':>9}{'largest':>9}{'base':>7}{'peak RSS':>10}{'peak anon':>10}"
              f"{'peak file':>10}   (MiB; source {sum(f.stat().st_size for f in files) / 2**20:.0f} MiB)", flush=True)
        for qtype in a.types:
            subprocess.run([sys.executable, __file__, model, "--one", qtype, "--threads", str(a.threads)], check=True)


if __name__ == "__main__":
    main()
