"""Tests of the compiled extension sdcpp._core (fast; numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcpp._native import core

ROWS, N_PER_ROW = 8, 512
# Types whose layout sdcpp relies on; checked against the gguf package.
CHECKED = [
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_K",
    "q3_K",
    "q4_K",
    "q5_K",
    "q6_K",
]


@pytest.fixture(scope="module")
def c():
    return core()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((ROWS, N_PER_ROW)).astype(np.float32)


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_core_is_cached_and_reports_versions(c):
    assert core() is c
    assert c.ggml_version().startswith("0.")
    assert c.ggml_commit()


def test_system_info_lists_cpu(c):
    info = c.system_info()
    cpu = [d for d in info["devices"] if d["type"] == "cpu"]
    assert cpu and set(cpu[0]) == {"name", "description", "type", "memory_total", "memory_free"}
    assert "CPU" in info["registries"]
    assert all(isinstance(v, str) for v in info["cpu_features"].values())


@pytest.mark.parametrize(
    "dst, bound", [("f16", 1e-3), ("bf16", 1e-2), ("q8_0", 2e-2), ("q4_0", 0.15), ("q4_K", 0.15)]
)
def test_convert_round_trip(c, x, dst, bound):
    q = c.convert(x, "f32", ROWS, N_PER_ROW, dst)
    assert q.dtype == np.uint8 and q.size == c.row_size(dst, N_PER_ROW) * ROWS
    y = c.dequantize(q, dst, x.size)
    assert y.dtype == np.float32
    assert rel_err(y.reshape(x.shape), x) < bound


@pytest.mark.parametrize("dst", ["f16", "q8_0", "q4_K", "q6_K"])
def test_convert_is_thread_count_independent(c, x, dst):
    assert np.array_equal(
        c.convert(x, "f32", ROWS, N_PER_ROW, dst, n_threads=1),
        c.convert(x, "f32", ROWS, N_PER_ROW, dst, n_threads=2),
    )


def test_same_type_is_a_byte_copy(c, x):
    q = c.convert(x, "f32", ROWS, N_PER_ROW, "q8_0")
    assert np.array_equal(c.convert(q.tobytes(), "q8_0", ROWS, N_PER_ROW, "q8_0"), q)
    assert np.array_equal(c.convert(x, "f32", ROWS, N_PER_ROW, "f32"), x.view(np.uint8).ravel())


def test_f16_source_matches_f32_source(c, x):
    h = x.astype(np.float16)
    from_f16 = c.convert(h, "f16", ROWS, N_PER_ROW, "q8_0")
    from_f32 = c.convert(h.astype(np.float32), "f32", ROWS, N_PER_ROW, "q8_0")
    assert np.array_equal(from_f16, from_f32)


def test_accepts_any_buffer_kind(c, x):
    ref = c.convert(x, "f32", ROWS, N_PER_ROW, "q4_0")
    for src in (x.tobytes(), memoryview(x.tobytes()), bytearray(x.tobytes())):
        assert np.array_equal(c.convert(src, "f32", ROWS, N_PER_ROW, "q4_0"), ref)
    misaligned = memoryview(b"\0" + x.tobytes())[1:]
    assert np.array_equal(c.convert(misaligned, "f32", ROWS, N_PER_ROW, "q4_0"), ref)


def test_convert_rejects_bad_arguments(c, x):
    with pytest.raises(ValueError, match="bytes"):
        c.convert(x[:-1], "f32", ROWS, N_PER_ROW, "q8_0")  # one row short
    with pytest.raises(ValueError, match="expected"):
        c.convert(x.tobytes()[:-4], "f32", ROWS, N_PER_ROW, "q8_0")
    with pytest.raises(ValueError, match="block size"):
        c.convert(x, "f32", ROWS * 16, 32, "q4_K")
    with pytest.raises(ValueError, match="unknown ggml type"):
        c.convert(x, "f32", ROWS, N_PER_ROW, "q9_9")
    with pytest.raises(ValueError, match="importance matrix"):
        c.convert(x, "f32", ROWS, N_PER_ROW, "iq2_xxs")
    with pytest.raises(ValueError):
        c.convert(x, "f32", ROWS, N_PER_ROW, "q8_1")  # activation-only type
    with pytest.raises(ValueError):
        c.convert(x, "f32", ROWS, N_PER_ROW, "f16", n_threads=-1)
    with pytest.raises(ValueError):
        c.convert(x[:, ::2], "f32", ROWS, N_PER_ROW // 2, "f16")  # strided view
    with pytest.raises(TypeError):
        c.convert([1.0, 2.0], "f32", 1, 2, "f16")


def test_iq_quantizer_input_guard(c, x):
    # ggml's grid-search iq quantizers abort the process on NaN; we must raise instead.
    # iq3_xxs builds its lookup tables in 0.1 s (iq2_s: 5 s, iq1_m: 11 s on first use).
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        c.convert(bad, "f32", ROWS, N_PER_ROW, "iq3_xxs")
    assert c.convert(x, "f32", ROWS, N_PER_ROW, "iq3_xxs").size == c.row_size("iq3_xxs", N_PER_ROW) * ROWS


def test_dequantize_rejects_bad_arguments(c, x):
    q = c.convert(x, "f32", ROWS, N_PER_ROW, "q8_0")
    with pytest.raises(ValueError, match="block size"):
        c.dequantize(q, "q8_0", x.size - 1)
    with pytest.raises(ValueError, match="expected"):
        c.dequantize(q, "q8_0", x.size - 32)
    with pytest.raises(ValueError):
        c.dequantize(q, "i32", q.size // 4)


def test_type_info_matches_gguf(c):
    gguf = pytest.importorskip("gguf")
    for name in CHECKED:
        info = c.type_info(name)
        assert (info["blck_size"], info["type_size"]) == gguf.GGML_QUANT_SIZES[
            gguf.GGMLQuantizationType[name.upper()]
        ]
        assert info["can_quantize"] and info["has_to_float"]
        assert info["is_quantized"] == (name not in ("f32", "f16", "bf16"))
        assert name in c.type_names()
        assert c.row_size(name, 256) == 256 // info["blck_size"] * info["type_size"]
    assert not c.type_info("q8_K")["can_quantize"]
    assert not c.type_info("iq2_xxs")["can_quantize"]  # needs an importance matrix
    with pytest.raises(ValueError):
        c.type_info("nope")
    with pytest.raises(ValueError):
        c.row_size("q4_0", 33)


def test_weight_store_round_trip(c, x):
    long_name = "model.diffusion_model." + "x" * 78
    assert len(long_name) == 100
    s = c.WeightStore("cpu", 1)
    s.add(long_name, "q8_0", [N_PER_ROW, ROWS])
    s.add("bias", "f32", [3, 2, 1, 1])
    assert s.names() == [long_name, "bias"]
    assert s.nbytes(long_name) == c.row_size("q8_0", N_PER_ROW) * ROWS
    with pytest.raises(ValueError, match="before allocate"):
        s.set("bias", np.zeros(6, np.float32))
    s.allocate()
    assert s.buffer_size() >= s.nbytes(long_name) + s.nbytes("bias")
    q = c.convert(x, "f32", ROWS, N_PER_ROW, "q8_0")
    s.set(long_name, q)
    s.set("bias", np.arange(6, dtype=np.float32))
    assert np.array_equal(s.get(long_name), q)
    assert np.array_equal(s.get("bias").view(np.float32), np.arange(6, dtype=np.float32))
    assert (
        s.type(long_name) == "q8_0" and s.ne(long_name) == [N_PER_ROW, ROWS] and s.ne("bias") == [3, 2, 1, 1]
    )
    assert s.device() == "CPU"


def test_weight_store_errors(c):
    s = c.WeightStore()
    s.add("w", "f16", [64, 2])
    with pytest.raises(ValueError, match="duplicate"):
        s.add("w", "f16", [64, 2])
    with pytest.raises(ValueError, match="block size"):
        s.add("k", "q4_K", [32])
    with pytest.raises(ValueError):
        s.add("five", "f32", [1, 1, 1, 1, 1])
    with pytest.raises(ValueError):
        s.add("zero", "f32", [0])
    with pytest.raises(ValueError):
        s.buffer_size()
    s.allocate()
    with pytest.raises(ValueError, match="unknown tensor"):
        s.set("nope", b"")
    with pytest.raises(ValueError, match="unknown tensor"):
        s.get("nope")
    with pytest.raises(ValueError, match="bytes"):
        s.set("w", np.zeros(64 * 2 - 1, np.float16))
    with pytest.raises(ValueError, match="after allocate"):
        s.add("late", "f32", [1])
    with pytest.raises(ValueError):
        s.allocate()
    with pytest.raises(ValueError, match="unknown device"):
        c.WeightStore("no-such-device")


def test_weight_store_auto_device(c):
    s = c.WeightStore("auto")
    gpus = [d["name"] for d in c.system_info()["devices"] if d["type"] == "gpu"]
    assert s.device() == (gpus[0] if gpus else "CPU")


def test_bench_mul_mat_runs(c):
    t = c.bench_mul_mat("q8_0", 64, 8, 256, iters=2, n_threads=1)
    assert 0 < t < 10
    with pytest.raises(ValueError):
        c.bench_mul_mat("q4_K", 64, 8, 32)
    with pytest.raises(ValueError):
        c.bench_mul_mat("f16", 0, 8, 32)


def test_default_threads_are_physical_cores():
    import glob
    import os

    cores = core().physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    pattern = "/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list"
    siblings = {open(p).read().strip() for p in glob.glob(pattern)}
    if siblings:  # Linux: one thread per distinct sibling set
        assert cores == len(siblings)
