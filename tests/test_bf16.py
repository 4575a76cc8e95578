"""precision="bf16": the AMX bf16 kernel (csrc/runtime/amx.cpp) against numpy, and the UNet / VAE / text encoder
graphs that use it against diffusers f32; without AMX, precision="bf16" must be exactly the f32 graph.

The kernel tests and the graph bounds need a CPU with AMX-BF16 (`sdcpp system-info` says whether this one has it);
elsewhere they are skipped, and the fallback test runs instead.
"""

from __future__ import annotations

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

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

AMX = core().amx_available()
needs_amx = pytest.mark.skipif(not AMX, reason=f"no AMX bf16 here: {core().amx_unavailable_reason()}")

# Graph errors with every product wide (f32_matmul_min_cols=1, so the tiny models' products all take the bf16
# kernel), measured on the tiny fixtures against the same weights in f32 compute: UNet 1.02e-2 .. 1.23e-2 (sd1, sd2,
# sdxl; f32, f16 and q8_0 weights), VAE decode 7.8e-3, text encoder 5.3e-3. A bf16 operand keeps 8 significant bits
# (2^-9 relative rounding) and these random tiny models amplify it through their layers; the SD1.5-sized UNet of
# benchmarks/compare.py measured 7.5e-3. The bounds leave ~2.5x for other inputs and CPUs. An f32-exact graph is
# ~1e-6, so each test also checks that the bf16 kernel really ran.
UNET_MAX_ERR = 3e-2
VAE_MAX_ERR = 2e-2
TEXT_MAX_ERR = 1.5e-2
SAW_BF16 = 1e-4  # below this the graph cannot have rounded its operands to bf16


def bf16_round(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bf16 (finite values), back in f32: what the kernel's packing does."""
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


@needs_amx
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (5, 7, 3), (33, 65, 70), (64, 64, 64), (100, 300, 320),
                                     (31, 17, 1000)])
@pytest.mark.parametrize("trans_b", [False, True])
def test_amx_gemm_is_the_product_of_bf16_operands(M, N, K, trans_b):
    """Exact up to f32 accumulation: the product of the bf16-rounded operands in f64 (padding of every dimension
    to 32 must add nothing), and within bf16 rounding of the f32 product."""
    rng = np.random.default_rng(M * 1000 + N + K)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    out = core().amx_gemm(a, b.T.copy() if trans_b else b, trans_b=trans_b)
    exact = bf16_round(a).astype(np.float64) @ bf16_round(b).astype(np.float64)
    assert out.shape == (M, N) and out.dtype == np.float32
    assert rel_l2(out, exact) <= 1e-6
    assert rel_l2(out, a.astype(np.float64) @ b) <= 8e-3


@needs_amx
def test_amx_gemm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="inner dimensions"):
        core().amx_gemm(np.zeros((4, 5), np.float32), np.zeros((6, 3), np.float32))


def _unet_case(fixtures_dir, family="sd1"):
    from test_unet import make_inputs, run_reference

    ref = diffusers.UNet2DConditionModel.from_pretrained(fixtures_dir / family / "diffusers", subfolder="unet").eval()
    inputs = make_inputs(family, ref)
    return inputs, run_reference(ref, inputs)


@needs_amx
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("stored", ["f32", "f16", "q8_0"])
def test_unet_bf16_matches_diffusers(fixtures_dir, single_threaded_torch, family, stored):
    """Every stored type: f32/f16 weights are packed straight to bf16, quantized ones dequantized first."""
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", unet_type=stored, progress=False)
    inputs, expected = _unet_case(fixtures_dir, family)
    f32 = UNet(weights, n_threads=2, f32_matmul_min_cols=1).predict(**inputs)
    bf16 = UNet(weights, n_threads=2, f32_matmul_min_cols=1, precision="bf16").predict(**inputs)
    reference = expected if stored == "f32" else f32  # quantized weights: against the same weights in f32 compute
    err = rel_l2(bf16, reference)
    assert SAW_BF16 < err <= UNET_MAX_ERR, err


@needs_amx
def test_vae_and_text_encoder_bf16_match_diffusers(fixtures_dir, single_threaded_torch):
    import transformers

    folder = fixtures_dir / "sd1" / "diffusers"
    weights = sdcpp.load_weights(folder, progress=False)
    ref = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    z = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = ref.decode(torch.from_numpy(z)).sample.numpy()
    out = VAE(weights, n_threads=2, f32_matmul_min_cols=1, precision="bf16").decode(z)
    assert SAW_BF16 < rel_l2(out, expected) <= VAE_MAX_ERR

    te_ref = transformers.CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    ids = np.random.default_rng(1).integers(0, te_ref.config.vocab_size, (2, 77))
    with torch.no_grad():
        expected = te_ref(torch.from_numpy(ids)).last_hidden_state.numpy()
    te = TextEncoder(weights, n_threads=2, f32_matmul_min_cols=1, precision="bf16")
    assert SAW_BF16 < rel_l2(te.encode(ids)["hidden"], expected) <= TEXT_MAX_ERR


FALLBACK = """
import sys, numpy as np, sdcpp
sys.path.insert(0, {tests!r})
from sdcpp._native import core
from sdcpp.models.unet import UNet
from test_unet import make_inputs
import diffusers
assert not core().amx_available()
folder = {folder!r}
ref = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
inputs = make_inputs("sd1", ref)
w = sdcpp.load_weights(folder, progress=False)
a = UNet(w, n_threads=1, f32_matmul_min_cols=1).predict(**inputs)
b = UNet(w, n_threads=1, f32_matmul_min_cols=1, precision="bf16").predict(**inputs)
assert np.array_equal(a, b), float(np.abs(a - b).max())
print("ok")
"""


def test_bf16_without_amx_is_the_f32_graph(fixtures_dir):
    """SDCPP_NO_AMX=1 stands in for a CPU without AMX: precision="bf16" then changes nothing."""
    tests = os.path.dirname(__file__)
    code = FALLBACK.format(tests=tests, folder=str(fixtures_dir / "sd1" / "diffusers"))
    env = {**os.environ, "SDCPP_NO_AMX": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_precision_is_checked(fixtures_dir):
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False)
    with pytest.raises(ValueError, match="precision"):
        UNet(weights, precision="fp8")


def test_system_info_names_the_bf16_kernel():
    run = subprocess.run([sys.executable, "-m", "sdcpp.cli", "system-info"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    import json

    kernels = json.loads(run.stdout)["cpu_products"]
    assert (kernels["bf16"] == "amx") == AMX


def test_model_generate_with_bf16(fixtures_dir):
    """The option reaches every graph of a Model; the image stays close to the f32 one (on AMX) or equal (without)."""
    single = fixtures_dir / "sd1" / "single.safetensors"
    args = dict(steps=2, width=64, height=64, seed=3)
    f32 = sdcpp.Model(single, n_threads=2, progress=False).generate("a cat", **args)
    model = sdcpp.Model(single, n_threads=2, precision="bf16", progress=False)
    assert model.unet._graph is not None and model.precision == "bf16"
    bf16 = model.generate("a cat", **args)
    a, b = np.asarray(f32[0], np.float64), np.asarray(bf16[0], np.float64)
    print("mean / max abs difference (0..255):", np.abs(a - b).mean(), np.abs(a - b).max())
    # Measured on AMX: mean 1.6, max 12 levels (the tiny random VAE amplifies its rounding); exact without AMX.
    assert np.abs(a - b).mean() <= (4.0 if AMX else 0.0)
