"""Matmul speed of the installed ggml build per weight type, next to numpy's sgemm, on this machine.

    python benchmarks/bench_matmul.py [--threads 2] [--rounds 3]

Prints GFLOP/s (2*M*N*K / best time) for a 4096x4096 weight times 4096x256 activations: the shape of a
large UNet/CLIP linear layer. Rounds interleave the types so a noisy neighbour hurts them alike.
`sdcpp build-ggml` (native + llamafile sgemm) is expected to be ~3x the PyPI wheel at f16. On the AVX-512 Xeon
of this project's machines f32 was the fastest ggml type (253 vs 176 f16, 160 q8_0; numpy 290), which is why the
UNet/VAE graphs convert weights to f32 for products with many columns (f32_matmul_min_cols). "repack" rows place
the weight in ggml's CPU repack buffer (interleaved rows for its q4_0/q4_K GEMM kernels)."""

from __future__ import annotations

import argparse
import os
import statistics
import time

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_K")
REPACKED = ("q4_0", "q4_K")  # types ggml's CPU "repack" buffer takes on x86 (AVX2 and up)


def numpy_seconds(M, N, K, iters):
    import numpy as np

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
    # numpy's BLAS reads its thread count when numpy is first imported: pin it to --threads before that.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    from sdcpp._native import core

    c = core()
    flops = 2.0 * a.M * a.N * a.K
    rows = [(t, False) for t in TYPES] + [(t, True) for t in REPACKED]
    label = {(t, r): f"{t} repack" if r else t for t, r in rows}
    results = {name: [] for name in [*label.values(), "numpy f32"]}
    for _ in range(a.rounds):
        for t, repack in rows:
            seconds = c.bench_mul_mat(t, a.M, a.N, a.K, a.iters, a.threads, repack=repack)
            results[label[(t, repack)]].append(flops / seconds / 1e9)
        results["numpy f32"].append(flops / numpy_seconds(a.M, a.N, a.K, a.iters) / 1e9)
    feats = c.system_info().get("cpu_features", {})
    print(f"ggml {c.ggml_version()} ({c.ggml_commit()}), {a.threads} threads, "
          f"M={a.M} N={a.N} K={a.K}; CPU features: {' '.join(sorted(feats))}")
    print(f"{'type':<13}{'median GFLOP/s':>16}{'best':>8}{'worst':>8}")
    for t, v in results.items():
        print(f"{t:<13}{statistics.median(v):>16.0f}{max(v):>8.0f}{min(v):>8.0f}")


if __name__ == "__main__":
    main()
