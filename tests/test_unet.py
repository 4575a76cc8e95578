"""UNet graph parity against diffusers' UNet2DConditionModel on the tiny fixtures (every family), in f32 and
in each stored weight type (quantized runs are compared with diffusers running the dequantized weights)."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

import sdcpp
from parity import rel_l2
from sdcpp.models.unet import UNet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

FAMILIES = ("sd1", "sd2", "sdxl", "sd1_inpaint", "sdxl_refiner")
TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_K")
F32_MAX_ERR = 1e-4
# One thread: the tiny graphs gain nothing from two, and ggml's spinning thread barriers slow to a crawl
# when other processes share the cores.
THREADS = 1
# Against diffusers on the same (dequantized) weights, so weight rounding is not counted. What remains is
# ggml rounding the activations to the weight's dot-product type: f16 / bf16 for float weights, q8_0 / q8_K
# (8-bit blocks) for quantized ones. Measured: f16 1e-3, bf16 9e-3, q8_0/q4_0/q4_K 2.4e-2 to 3.2e-2; the
# ratios follow the activation precision (2^-11, 2^-8, ~1/254 of a block's max), not the weight type.
QUANT_MAX_ERR = {"f16": 1e-2, "bf16": 1e-2, "q8_0": 5e-2, "q4_0": 5e-2, "q4_K": 5e-2}
N_TIME_IDS = {"sdxl": 6, "sdxl_refiner": 5}


pytestmark = pytest.mark.usefixtures("single_threaded_torch")


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    """family -> the diffusers model, each loaded once per module."""
    return functools.cache(lambda family: diffusers.UNet2DConditionModel.from_pretrained(
        fixtures_dir / family / "diffusers", subfolder="unet").eval())


def make_inputs(family, ref, batch=2, size=(8, 12), seed=0) -> dict:
    cfg = ref.config
    rng = np.random.default_rng(seed)
    inputs = dict(
        latents=rng.standard_normal((batch, cfg.in_channels, *size)).astype(np.float32),
        timesteps=np.linspace(999, 1, batch).astype(np.float32),
        context=rng.standard_normal((batch, 7, cfg.cross_attention_dim)).astype(np.float32),
    )
    if family in N_TIME_IDS:
        k = N_TIME_IDS[family]
        pooled = cfg.projection_class_embeddings_input_dim - k * cfg.addition_time_embed_dim
        inputs["text_embeds"] = rng.standard_normal((batch, pooled)).astype(np.float32)
        ids = np.tile(np.array([1024, 768, 16, 32, 1024, 768], np.float32)[:k], (batch, 1))
        inputs["time_ids"] = ids + np.arange(batch, dtype=np.float32)[:, None] * 64
    return inputs


def run_reference(ref, inputs) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    added = None
    if "text_embeds" in t:
        added = dict(text_embeds=t["text_embeds"], time_ids=t["time_ids"])
    with torch.no_grad():
        return ref(t["latents"], t["timesteps"], t["context"], added_cond_kwargs=added).sample.numpy()


def unet_names(weights) -> set[str]:
    return {n for n in weights.names() if n.startswith("unet.")}


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_matches_diffusers(fixtures_dir, reference, family):
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    unet = UNet(weights, n_threads=THREADS)
    ref = reference(family)
    inputs = make_inputs(family, ref)
    out = unet.predict(**inputs)
    assert out.shape == inputs["latents"][:, :4].shape and out.dtype == np.float32
    assert rel_l2(out, run_reference(ref, inputs)) <= F32_MAX_ERR
    assert unet.used_weights() == unet_names(weights)


@pytest.mark.parametrize("family, size", [("sd1", (7, 9)), ("sdxl", (5, 3)), ("sd2", (16, 8))])
def test_odd_and_non_square_sizes(fixtures_dir, reference, family, size):
    """Sizes that don't halve evenly make diffusers resize to the skip connection's size."""
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    unet = UNet(weights, n_threads=THREADS)
    inputs = make_inputs(family, reference(family), batch=1, size=size, seed=1)
    assert rel_l2(unet.predict(**inputs), run_reference(reference(family), inputs)) <= F32_MAX_ERR


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_flash_attention_path(fixtures_dir, reference, family):
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    unet = UNet(weights, n_threads=THREADS, flash_attn=True)
    inputs = make_inputs(family, reference(family))
    assert rel_l2(unet.predict(**inputs), run_reference(reference(family), inputs)) <= F32_MAX_ERR


def test_convs_in_bands_match(fixtures_dir, reference):
    weights = sdcpp.load_weights(fixtures_dir / "sdxl" / "diffusers", progress=False)
    unet = UNet(weights, n_threads=THREADS, max_im2col_mib=0.02)
    inputs = make_inputs("sdxl", reference("sdxl"), size=(7, 10))
    assert rel_l2(unet.predict(**inputs), run_reference(reference("sdxl"), inputs)) <= F32_MAX_ERR


def test_repeated_calls_reuse_the_graph_buffer_and_threads_agree(fixtures_dir, reference):
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False)
    unet = UNet(weights, n_threads=THREADS)
    inputs = make_inputs("sd1", reference("sd1"))
    first = unet.predict(**inputs)
    size = unet.compute_buffer_size()
    assert np.array_equal(unet.predict(**inputs), first)
    assert unet.compute_buffer_size() == size
    two = UNet(weights, n_threads=2).predict(**inputs)
    assert rel_l2(two, first) <= 1e-6


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_stored_types_match_dequantized_reference(fixtures_dir, reference, family, qtype):
    folder = fixtures_dir / family / "diffusers"
    weights = sdcpp.load_weights(folder, unet_type=qtype, progress=False)
    names = unet_names(weights)
    assert any(weights.info(n)["type"] == qtype for n in names)
    ref32 = reference(family)
    deq = copy.deepcopy(ref32)
    deq.load_state_dict({n[len("unet."):]: torch.from_numpy(weights.numpy(n)) for n in names})
    unet = UNet(weights, n_threads=THREADS)
    inputs = make_inputs(family, ref32)
    out = unet.predict(**inputs)
    err = rel_l2(out, run_reference(deq, inputs))
    err_f32 = rel_l2(out, run_reference(ref32, inputs))
    print(f"\nunet {family} {qtype}: vs dequantized reference {err:.2e}, vs f32 original {err_f32:.2e}")
    assert err <= QUANT_MAX_ERR[qtype]
    assert unet.used_weights() == names


def test_input_errors(fixtures_dir, reference):
    sdxl = UNet(sdcpp.load_weights(fixtures_dir / "sdxl" / "diffusers", progress=False), n_threads=THREADS)
    inputs = make_inputs("sdxl", reference("sdxl"), batch=1)
    with pytest.raises(ValueError, match="text_embeds"):
        sdxl.predict(inputs["latents"], inputs["timesteps"], inputs["context"])
    with pytest.raises(ValueError, match="add_embedding"):
        sdxl.predict(**{**inputs, "time_ids": inputs["time_ids"][:, :5]})
    with pytest.raises(ValueError, match="channels"):
        sdxl.predict(**{**inputs, "latents": np.zeros((1, 9, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="context"):
        sdxl.predict(**{**inputs, "context": np.zeros((1, 7, 3), np.float32)})
    with pytest.raises(ValueError, match="batch"):
        sdxl.predict(**{**inputs, "timesteps": np.zeros(3, np.float32)})
    sd1 = UNet(sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False), n_threads=THREADS)
    s = make_inputs("sd1", reference("sd1"), batch=1)
    with pytest.raises(ValueError, match="SDXL"):
        sd1.predict(**s, text_embeds=np.zeros((1, 4), np.float32), time_ids=np.zeros((1, 6), np.float32))
