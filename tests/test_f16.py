"""precision="f16": the AVX512-FP16 product kernel (csrc/runtime/f16_gemm.cpp) against numpy, including the inputs
its scaling and overflow fallback exist for, and the UNet / VAE / text encoder graphs that use it against f32
compute; without AVX512-FP16, precision="f16" must be exactly the f32 graph.

The kernel tests and the graph bounds need a CPU with AVX512-FP16 (`sdcpp system-info` says whether this one has
it); elsewhere they are skipped, and the fallback test runs instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sdcpp
from parity import rel_l2
from sdcpp._native import core
from sdcpp.models.clip import TextEncoder
from sdcpp.models.unet import UNet
from sdcpp.models.vae import VAE

F16 = core().f16_available()
needs_f16 = pytest.mark.skipif(not F16, reason=f"no AVX512-FP16 here: {core().f16_unavailable_reason()}")

# One product of N(0, 1) activations and N(0, 1/K) weights measured 4e-4 .. 9e-4 rel-L2 against f64 (activations
# rounded to f16, sums of 32 f16 terms); a bf16 product is ~3e-3.
KERNEL_MAX_ERR = 2e-3
# Graphs, measured on the tiny fixtures against the same weights in f32 compute: UNet 3.7e-3 .. 4.2e-3 (sd1, sd2,
# sdxl; f32, f16 and q8_0 weights), VAE decode 2.7e-3, text encoder 1.9e-3 (the random tiny models amplify each
# product's rounding through their layers). The bounds leave ~2.5x; an f32-exact graph is ~1e-6, so each test also
# checks that the f16 kernel really ran.
UNET_MAX_ERR = 1e-2
VAE_MAX_ERR = 7e-3
TEXT_MAX_ERR = 5e-3
SAW_F16 = 1e-4


def _case(R, K, M, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((R, K)) * scale).astype(np.float32)
    w = (rng.standard_normal((M, K)) / np.sqrt(K)).astype(np.float16)
    b = rng.standard_normal(M).astype(np.float32)
    return x, w, b


def _exact(x, w, b=None):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y if b is None else y + b


@needs_f16
@pytest.mark.parametrize("R, K, M", [(1, 1, 1), (3, 5, 7), (64, 64, 12), (65, 333, 13), (100, 320, 320),
                                     (130, 77, 25), (31, 1000, 40)])
def test_f16_gemm_matches_numpy(R, K, M):
    """Every tail: tokens past a 32/64 block, an odd K (a pair with one value), weight rows past a 12-row tile."""
    x, w, b = _case(R, K, M, seed=R * 7 + K + M)
    y = core().f16_gemm(x, w, b)
    assert y.shape == (R, M) and y.dtype == np.float32
    assert rel_l2(y, _exact(x, w, b)) <= KERNEL_MAX_ERR
    assert rel_l2(core().f16_gemm(x, w), _exact(x, w)) <= KERNEL_MAX_ERR


@needs_f16
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e6, 1e30])
def test_f16_gemm_scales_each_token(scale):
    """Activations far outside f16's range (6e-8 .. 65504) keep their accuracy: each token is scaled by a power of
    two before rounding. Without it 1e-30 would round to zero and 1e6 overflow."""
    x, w, _ = _case(70, 256, 24, seed=1, scale=scale)
    x[3] *= 1e-3  # tokens of different magnitudes in one block
    assert rel_l2(core().f16_gemm(x, w), _exact(x, w)) <= KERNEL_MAX_ERR


@needs_f16
def test_f16_gemm_recomputes_overflowing_tiles_in_f32():
    """Weights of 6e4 make the f16 partial sums overflow: those tiles are recomputed from the f32 activations, so
    the result is f32-accurate (not inf, and not only f16-accurate)."""
    x, w, b = _case(40, 96, 30, seed=2)
    big = np.full((30, 96), 6e4, np.float16) * np.sign(w).astype(np.float16)
    big[:, ::2] = 6e4  # same-sign halves: sums of 32 such products exceed 65504 whatever x's signs
    x = np.abs(x)
    y = core().f16_gemm(x, big, b)
    assert np.isfinite(y).all()
    assert rel_l2(y, _exact(x, big, b)) <= 1e-5


@needs_f16
def test_f16_gemm_propagates_non_finite_inputs():
    x, w, b = _case(50, 64, 20, seed=3)
    x[7, 5] = np.inf
    x[9, 0] = np.nan
    y = core().f16_gemm(x, w, b)
    assert not np.isfinite(y[[7, 9]]).any()
    rest = np.delete(np.arange(50), [7, 9])
    assert rel_l2(y[rest], _exact(x[rest], w, b)) <= KERNEL_MAX_ERR
    x[:] = 0.0
    assert np.array_equal(core().f16_gemm(x, w, b), np.broadcast_to(b, (50, 20)))


@needs_f16
def test_f16_gemm_rejects_bad_operands():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="float16"):
        core().f16_gemm(x, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="x \\[R, K\\]"):
        core().f16_gemm(x, np.zeros((3, 6), np.float16))
    with pytest.raises(ValueError, match="bias"):
        core().f16_gemm(x, np.zeros((3, 5), np.float16), np.zeros(4, np.float32))


def _unet_inputs(fixtures_dir, family):
    from test_unet import make_inputs

    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UNet2DConditionModel.from_pretrained(fixtures_dir / family / "diffusers", subfolder="unet")
    return make_inputs(family, ref)


@needs_f16
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("stored", ["f32", "f16", "q8_0"])
def test_unet_f16_matches_f32_compute(fixtures_dir, family, stored):
    """Every stored type: f16 weights are read as stored, f32 ones rounded, quantized ones dequantized first; the
    reference is the same weights in f32 compute with every product dequantized (f32_matmul_min_cols=1)."""
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", unet_type=stored, progress=False)
    inputs = _unet_inputs(fixtures_dir, family)
    f32 = UNet(weights, n_threads=2, f32_matmul_min_cols=1).predict(**inputs)
    f16 = UNet(weights, n_threads=2, precision="f16").predict(**inputs)
    err = rel_l2(f16, f32)
    assert SAW_F16 < err <= UNET_MAX_ERR, err


@needs_f16
def test_vae_and_text_encoder_f16_match_f32_compute(fixtures_dir):
    folder = fixtures_dir / "sd1" / "diffusers"
    weights = sdcpp.load_weights(folder, progress=False)
    z = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    f32 = VAE(weights, n_threads=2).decode(z)
    assert SAW_F16 < rel_l2(VAE(weights, n_threads=2, precision="f16").decode(z), f32) <= VAE_MAX_ERR

    ids = np.random.default_rng(1).integers(0, 1000, (2, 77))
    f32 = TextEncoder(weights, n_threads=2).encode(ids)["hidden"]
    f16 = TextEncoder(weights, n_threads=2, precision="f16").encode(ids)["hidden"]
    assert SAW_F16 < rel_l2(f16, f32) <= TEXT_MAX_ERR


FALLBACK = """
import sys, numpy as np, sdcpp
sys.path.insert(0, {tests!r})
from sdcpp._native import core
from sdcpp.models.unet import UNet
from test_unet import make_inputs
import diffusers
assert not core().f16_available()
assert core().f16_unavailable_reason() == "disabled by SDCPP_NO_F16"
folder = {folder!r}
ref = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
inputs = make_inputs("sd1", ref)
w = sdcpp.load_weights(folder, progress=False)
a = UNet(w, n_threads=1).predict(**inputs)
b = UNet(w, n_threads=1, precision="f16").predict(**inputs)
assert np.array_equal(a, b), float(np.abs(a - b).max())
print("ok")
"""


def test_f16_without_avx512_fp16_is_the_f32_graph(fixtures_dir):
    """SDCPP_NO_F16=1 stands in for a CPU without AVX512-FP16: precision="f16" then changes nothing."""
    pytest.importorskip("diffusers")
    tests = os.path.dirname(__file__)
    code = FALLBACK.format(tests=tests, folder=str(fixtures_dir / "sd1" / "diffusers"))
    env = {**os.environ, "SDCPP_NO_F16": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_system_info_names_the_f16_kernel():
    run = subprocess.run([sys.executable, "-m", "sdcpp.cli", "system-info"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    kernel = json.loads(run.stdout)["cpu_products"]["f16"]
    assert kernel.startswith("avx512-fp16") == F16, kernel
    if not F16:
        assert core().f16_unavailable_reason() in kernel


def test_model_generate_with_f16(fixtures_dir):
    """The option reaches every graph of a Model; the image stays close to the f32 one (or equal without the
    kernel)."""
    single = fixtures_dir / "sd1" / "single.safetensors"
    args = dict(steps=2, width=64, height=64, seed=3)
    f32 = sdcpp.Model(single, n_threads=2, progress=False).generate("a cat", **args)
    model = sdcpp.Model(single, n_threads=2, precision="f16", progress=False)
    assert model.precision == "f16"
    f16 = model.generate("a cat", **args)
    a, b = np.asarray(f32[0], np.float64), np.asarray(f16[0], np.float64)
    print("mean / max abs difference (0..255):", np.abs(a - b).mean(), np.abs(a - b).max())
    assert np.abs(a - b).mean() <= (2.0 if F16 else 0.0)


def _conv_exact(x, w, b=None):
    """3x3, stride 1, padding 1, in f64 (torch, the reference of every conv test here)."""
    torch = pytest.importorskip("torch")
    y = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                                   None if b is None else torch.from_numpy(b.astype(np.float64)), padding=1)
    return y.numpy()


@needs_f16
@pytest.mark.parametrize("N, C, H, W, OC", [(1, 4, 3, 16, 5), (2, 5, 7, 32, 13), (3, 32, 2, 16, 40),
                                            (1, 17, 5, 48, 24)])
def test_f16_conv3x3_matches_torch(N, C, H, W, OC):
    """Patches read from the padded planes in place: images and rows across a block, an odd K (C odd), channel
    counts past a tile, and a scale per output pixel from its own patch."""
    rng = np.random.default_rng(N * 100 + C + H + W + OC)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    x[0, :, 0, :3] *= 1e4  # pixels of other magnitudes in the same block
    w = (rng.standard_normal((OC, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float16)
    b = rng.standard_normal(OC).astype(np.float32)
    y = core().f16_conv3x3(x, w, b)
    assert y.shape == (N, OC, H, W)
    assert rel_l2(y, _conv_exact(x, w, b)) <= KERNEL_MAX_ERR
    # the pixel next to the large ones keeps its own accuracy (its patch, not the block, sets its scale)
    far = _conv_exact(x, w, b)[0, :, 1, 8:]
    assert rel_l2(y[0, :, 1, 8:], far) <= KERNEL_MAX_ERR


@needs_f16
def test_f16_conv3x3_rejects_widths_off_the_vector():
    with pytest.raises(ValueError, match="multiple of 16"):
        core().f16_conv3x3(np.zeros((1, 2, 4, 8), np.float32), np.zeros((3, 2, 3, 3), np.float16))
