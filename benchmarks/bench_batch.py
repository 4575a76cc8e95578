"""Batch throughput on a local Ray: the same rows with 1 and 2 actors (each loading the model once).

    python benchmarks/bench_batch.py MODEL [--rows 8] [--size 256] [--steps 8] [--threads-per-actor 1]

Prints rows per minute for each pool size; every run writes into a fresh temporary folder."""

from __future__ import annotations

import argparse
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads-per-actor", type=int, default=1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()

    import ray

    from sdcpp.distributed import generate_batch

    ray.init(num_cpus=max(a.concurrency) * a.threads_per_actor, include_dashboard=False, log_to_driver=False)
    prompts = [f"a photograph of a cat, number {i}" for i in range(a.rows)]
    print(f"{'actors':>7}{'rows':>6}{'seconds':>9}{'rows/min':>10}")
    for n in a.concurrency:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            r = generate_batch(prompts, a.model, out, concurrency=n, threads_per_actor=a.threads_per_actor,
                               steps=a.steps, width=a.size, height=a.size, progress=False)
            dt = time.perf_counter() - start
        assert len(r.generated) == a.rows, r.failed
        print(f"{n:>7}{a.rows:>6}{dt:>9.1f}{60 * a.rows / dt:>10.1f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
