"""instruction_peaks (csrc/runtime/peaks.cpp): one entry per multiply-add instruction the CPU supports, each a
plausible per-core rate; what benchmarks/bench_cpu_peaks.py and the bf16 kernel choice rest on."""

from __future__ import annotations

import pytest

from sdcpp._native import core

KNOWN = {"f32_fma_avx2", "f32_fma_avx512", "bf16_dot_avx512", "f16_fma_avx512"}
# ggml's own feature list names what this CPU and OS run; each instruction measured must be one of them.
NEEDS = {"f32_fma_avx2": ("AVX2", "FMA"), "f32_fma_avx512": ("AVX512",), "bf16_dot_avx512": ("AVX512_BF16",),
         "f16_fma_avx512": ()}  # ggml 0.20.2 does not report AVX512-FP16


def test_peaks_measure_each_supported_instruction():
    peaks = core().instruction_peaks(0.02)
    features = {k for k, v in core().system_info()["cpu_features"].items() if v == "1"}
    assert set(peaks) <= KNOWN
    for name, gflops in peaks.items():
        assert all(f in features for f in NEEDS[name]), (name, features)
        # 1 GFLOP/s is below any core that has these instructions; 10 TFLOP/s above any vector unit per core.
        assert 1.0 < gflops < 10_000.0, (name, gflops)
    if {"AVX2", "FMA"} <= features:
        assert "f32_fma_avx2" in peaks
    if "AVX512" in features:
        assert "f32_fma_avx512" in peaks
        # Twice the lanes of the AVX2 loop: 2x its rate on Intel, ~1x where zmm is split in two (Zen 4); half of it
        # would mean a broken loop (a register-only loop cannot be memory bound), with room for a noisy neighbour.
        assert peaks["f32_fma_avx512"] > 0.5 * peaks["f32_fma_avx2"]
    if "AVX512_BF16" in features:
        assert "bf16_dot_avx512" in peaks


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), 11.0])
def test_peaks_reject_bad_durations(seconds):
    with pytest.raises(ValueError, match="seconds"):
        core().instruction_peaks(seconds)
