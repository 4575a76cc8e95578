"""Matmul speed of the installed ggml build per weight type, next to numpy's sgemm, on this machine.

    python benchmarks/bench_matmul.py [--threads 2] [--rounds 3]

Prints GFLOP/s (2*M*N*K / best time) for a 4096x4096 weight times 4096x256 activations: the shape of a
large UNet/CLIP linear layer. Rounds interleave the types so a noisy neighbour hurts them alike.
`sdcpp build-ggml` (native + llamafile sgemm) is expected to be ~3x the PyPI wheel at f16."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sdcpp._native import core

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_K")


def numpy_seconds(M, N, K, iters):
    a = np.random.default_rng(0).standard_normal((M, K), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((K, N), dtype=np.float32)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("-M", type=int, default=4096)
    ap.add_argument("-N", type=int, default=256)
    ap.add_argument("-K", type=int, default=4096)
    a = ap.parse_args()
    c = core()
    flops = 2.0 * a.M * a.N * a.K
    results = {t: [] for t in TYPES + ("numpy f32",)}
    for _ in range(a.rounds):
        for t in TYPES:
            results[t].append(flops / c.bench_mul_mat(t, a.M, a.N, a.K, a.iters, a.threads) / 1e9)
        results["numpy f32"].append(flops / numpy_seconds(a.M, a.N, a.K, a.iters) / 1e9)
    feats = c.system_info().get("cpu_features", {})
    print(f"ggml {c.ggml_version()} ({c.ggml_commit()}), {a.threads} threads, "
          f"M={a.M} N={a.N} K={a.K}; CPU features: {' '.join(sorted(feats))}")
    print(f"{'type':<11}{'median GFLOP/s':>16}{'best':>8}{'worst':>8}")
    for t, v in results.items():
        print(f"{t:<11}{statistics.median(v):>16.0f}{max(v):>8.0f}{min(v):>8.0f}")


if __name__ == "__main__":
    main()
