"""Per-core multiply-add throughput of the instructions a CPU product kernel can use, and the kernels sdcpp chose.

    python benchmarks/bench_cpu_peaks.py [--seconds 0.2] [--rounds 3] [--matmul]

Prints GFLOP/s of one core for f32 FMA (AVX2, AVX-512), vdpbf16ps (AVX512-BF16) and vfmadd231ph (AVX512-FP16):
register-only loops (csrc/runtime/peaks.cpp), the ceiling any kernel built on that instruction can reach. With
--matmul it adds one-thread numpy sgemm (OpenBLAS) on a UNet-sized product, i.e. how much of the f32 ceiling a
tuned kernel with real operands gets. Then the kernel `precision="bf16"` runs here (`sdcpp system-info`).

Why: CPUs that report the same features differ in what the instructions deliver. On the AMX-less Xeon of this
project's machines, vdpbf16ps ran at half the f32 FMA rate (so a bf16 dot-product kernel cannot beat the f32 path
and sdcpp does not use one) and f16 FMA at 2.0x (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_matmul import numpy_seconds  # this folder is sys.path[0] when run as a script

LABELS = {
    "f32_fma_avx2": "f32 FMA, AVX2 (vfmadd231ps ymm)",
    "f32_fma_avx512": "f32 FMA, AVX-512 (vfmadd231ps zmm)",
    "bf16_dot_avx512": "bf16 dot, AVX512-BF16 (vdpbf16ps)",
    "f16_fma_avx512": "f16 FMA, AVX512-FP16 (vfmadd231ph)",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=0.2, help="per instruction and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--matmul", action="store_true", help="add one-thread numpy sgemm 2048x1280x1280")
    args = ap.parse_args()
    if args.matmul:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"

    from sdcpp._native import core
    from sdcpp.cli import cpu_products

    c = core()
    rounds = [c.instruction_peaks(args.seconds) for _ in range(args.rounds)]
    if args.matmul:
        for r in rounds:
            r["numpy_sgemm"] = 2.0 * 2048 * 1280 * 1280 / numpy_seconds(2048, 1280, 1280, 3) / 1e9
    f32 = statistics.median(r["f32_fma_avx512"] for r in rounds) if "f32_fma_avx512" in rounds[0] else None
    print(f"one core, GFLOP/s over {args.rounds} rounds")
    print(f"{'instruction':<42} {'median':>8} {'best':>8} {'vs f32 FMA':>11}")
    labels = {**LABELS, "numpy_sgemm": "numpy f32 sgemm 2048x1280x1280, 1 thread"}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        med = statistics.median(values)
        ratio = f"{med / f32:.2f}x" if f32 else "-"
        print(f"{labels.get(key, key):<42} {med:8.0f} {max(values):8.0f} {ratio:>11}")
    kernels = cpu_products(c)
    print(f"precision='bf16' products here: {kernels['bf16']}; precision='f16': {kernels['f16']}")


if __name__ == "__main__":
    main()
