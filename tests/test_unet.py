"""UNet graph parity against diffusers' UNet2DConditionModel on the tiny fixtures (every family), in f32 and
in each stored weight type (quantized runs are compared with diffusers running the dequantized weights, with and
without ggml's rounding of the activations).

    pytest -q -s tests/test_unet.py -k "stored or f32_products or one_quantized"   # -s prints every error
"""

from __future__ import annotations

import contextlib
import functools
import re

import numpy as np
import pytest

import sdcpp
from parity import (
    dequantized_copy,
    dequantized_weights,
    ggml_activation_rounding,
    ggml_kernels_only,
    rel_l2,
    scaled_diffusers_copy,
    with_ggml_activation_rounding,
)
from sdcpp.models.unet import UNet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

FAMILIES = ("sd1", "sd2", "sdxl", "sd1_inpaint", "sdxl_refiner")
TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_K")
# f32 against diffusers: measured 7.4e-7 .. 1.5e-6 (rel. L2) on every family and path (OpenBLAS or ggml products,
# either attention, odd sizes, bands, low-variance activations), so 1e-5 leaves a 6.7x margin for other CPUs' summation
# orders. A GroupNorm epsilon of 1e-5 instead of diffusers' 1e-6 in front of each transformer measured 2.2e-6 .. 9.1e-6
# here, too close to f32 noise for any bound: test_group_norm_eps_on_low_variance_activations catches it (3.8e-2).
F32_MAX_ERR = 1e-5
# One thread: the tiny graphs gain nothing from two, and ggml's spinning thread barriers slow to a crawl
# when other processes share the cores.
THREADS = 1
# Quantized weights (f16 .. q4_K) are compared with diffusers running the same weights dequantized, so the weights'
# own rounding is not counted (against the f32 original it is: q8_0 ~3e-2, q4_0/q4_K ~3e-1 on these random models).
#
# f32_matmul_min_cols=1 (the CPU default's path for products of >= 256 columns): every weight is converted to f32
# before its product and nothing else rounds, so the graph is held to F32_MAX_ERR (measured 8e-7 .. 1.2e-6 for
# every type, as the f32 graph).
#
# f32_matmul_min_cols=0 (every product on the stored type): ggml also rounds each product's activations to the
# weight's dot-product type (tests/parity.py: f16 or bf16 values; 8-bit blocks of 32, or of 256 for q4_K rows).
# Against the dequantized reference: f16 1.0e-3, bf16 7.6e-3 .. 8.7e-3, q8_0/q4_0/q4_K 2.4e-2 .. 3.2e-2, following
# the activation precision (2^-11, 2^-8, ~1/254 of a block's peak) rather than the weight type. A reference that
# rounds every product's activations as ggml does is no closer over the whole UNet (2.2e-2 .. 3.5e-2), and no
# reference can be: through dozens of rounded products in sequence, a 1e-7 difference flips a value across a
# rounding boundary, which moves the next product's inputs by a full quantum and flips more. That emulating
# reference run in f64 differs from itself in f32 by 2.2e-2 .. 3.0e-2 (8-bit types), 7e-3 (bf16), 1e-3 (f16), and
# a 1e-7 relative nudge of its latents moves it by 2e-2. So the whole UNet is held to ROUNDED_ACT_MAX_ERR (the
# emulating reference's error is printed too), and the rounding itself is checked per kind of product with one
# layer quantized (ONE_LAYER_CASES), where the emulating reference stays in step with ggml.
ROUNDED_ACT_MAX_ERR = {"f16": 1e-2, "bf16": 1e-2, "q8_0": 5e-2, "q4_0": 5e-2, "q4_K": 5e-2}
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


@pytest.mark.parametrize("flash_attn", [False, True])
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ggml_attention_paths(fixtures_dir, reference, family, flash_attn):
    """Without OpenBLAS attention is ggml's: the fused kernel (flash_attn, the CPU default; head width zero-padded
    to 16, and these tiny heads are 4 and 8 wide) or QK^T, soft_max and the product with V as separate ops."""
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    assert UNet(weights, n_threads=THREADS).flash_attn  # the default on the CPU
    unet = UNet(weights, n_threads=THREADS, flash_attn=flash_attn)
    inputs = make_inputs(family, reference(family))
    with ggml_kernels_only():
        out = unet.predict(**inputs)
    assert rel_l2(out, run_reference(reference(family), inputs)) <= F32_MAX_ERR


def test_wide_products_run_on_openblas_and_match_ggml(fixtures_dir, reference):
    """scipy-openblas32 is a dependency: the core must have loaded it, and wide f32 products (a custom op) must
    agree with ggml's own f32 mul_mat. Every product is made wide (f32_matmul_min_cols=1): with f16 products in
    between, summation-order differences of 1e-7 flip f16 roundings of later activations and the tiny random
    model amplifies those to ~3e-4 (measured), which would hide what this test is about."""
    from sdcpp._native import core

    assert core().blas_library().endswith(".so") and core().blas_enabled()
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", unet_type="f16", progress=False)
    unet = UNet(weights, n_threads=2, f32_matmul_min_cols=1)
    inputs = make_inputs("sd1", reference("sd1"))
    ops, out = {}, {}
    try:
        for on in (True, False):
            core().set_blas_enabled(on)
            unet.set_profiling(True)
            out[on] = unet.predict(**inputs)
            unet.set_profiling(False)
            ops[on] = {(op, name) for op, name, *_ in unet.last_profile()}
    finally:
        core().set_blas_enabled(True)
        unet.set_profiling(False)
    on_blas = {("CUSTOM", "linear.matmul"), ("CUSTOM", "conv.matmul"), ("CUSTOM", "attn.blas")}
    assert on_blas <= ops[True] and not on_blas & ops[False]
    assert rel_l2(out[True], out[False]) <= 1e-5


def test_openblas_products_from_two_threads(fixtures_dir, reference):
    """Two UNets computing at once call OpenBLAS from four ggml threads: each result equals its solo run."""
    import threading

    jobs = []
    for family in ("sd1", "sdxl"):
        weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", unet_type="q8_0", progress=False)
        unet = UNet(weights, n_threads=2, f32_matmul_min_cols=1)
        inputs = make_inputs(family, reference(family))
        jobs.append((unet, inputs, unet.predict(**inputs)))
    results = {i: [] for i in range(len(jobs))}

    def work(i):
        unet, inputs, _ = jobs[i]
        for _ in range(2):
            results[i].append(unet.predict(**inputs))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (_, _, solo) in enumerate(jobs):
        assert len(results[i]) == 2 and all(np.array_equal(r, solo) for r in results[i])


def test_default_f32_products_start_at_256_columns(fixtures_dir, reference):
    """On the CPU, f32_matmul_min_cols=-1 means 256: at 16x16 latents x batch 2 the first level's products have
    512 columns (converted to f32), the deeper ones 128 or fewer (stored type)."""
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", unet_type="q8_0", progress=False)
    inputs = make_inputs("sd1", reference("sd1"), size=(16, 16))
    out = {cols: UNet(weights, n_threads=THREADS, f32_matmul_min_cols=cols).predict(**inputs)
           for cols in (-1, 256, 0, 1)}
    assert np.array_equal(out[-1], out[256])
    assert not np.array_equal(out[256], out[0]) and not np.array_equal(out[256], out[1])


def test_convs_in_bands_match(fixtures_dir, reference):
    weights = sdcpp.load_weights(fixtures_dir / "sdxl" / "diffusers", progress=False)
    unet = UNet(weights, n_threads=THREADS, max_im2col_mib=0.02)
    inputs = make_inputs("sdxl", reference("sdxl"), size=(7, 10))
    with ggml_kernels_only():  # bands are ggml's im2col route
        out = unet.predict(**inputs)
    assert rel_l2(out, run_reference(reference("sdxl"), inputs)) <= F32_MAX_ERR


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


# conv_in and the first resnet's conv2 scaled by 1e-2: the activations entering down_blocks.0's first resnet norm1
# and its transformer's GroupNorm have a per-group variance of ~1e-4 (measured median 8e-5, 1.2e-4), near the
# epsilons (resnets 1e-5 from norm_eps, transformer GroupNorm 1e-6), so each epsilon moves the output by percents.
LOW_VARIANCE = ("conv_in.weight", "conv_in.bias", "down_blocks.0.resnets.0.conv2.weight",
                "down_blocks.0.resnets.0.conv2.bias")


@pytest.mark.parametrize("products", ["openblas", "ggml"])
def test_group_norm_eps_on_low_variance_activations(fixtures_dir, tmp_path, products):
    """On the fixtures' O(1) activations a GroupNorm epsilon off by 10x moves the output by ~1e-6, within f32
    noise. Here the activations are small enough for the epsilons to matter, and diffusers' own model with the
    transformer GroupNorm's eps changed shows how far a wrong one lands (measured 3.8e-2; resnet norm1 at 1e-6
    instead of 1e-5: 1.7e-2; ours: 1.0e-6 .. 1.1e-6)."""
    folder = scaled_diffusers_copy(fixtures_dir / "sd1" / "diffusers", tmp_path / "sd1", "unet", LOW_VARIANCE, 1e-2)
    ref = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    inputs = make_inputs("sd1", ref)
    want = run_reference(ref, inputs)
    unet = UNet(sdcpp.load_weights(folder, progress=False), n_threads=THREADS)
    with contextlib.nullcontext() if products == "openblas" else ggml_kernels_only():
        out = unet.predict(**inputs)
    assert rel_l2(out, want) <= F32_MAX_ERR
    block = ref.down_blocks[0]
    for norm, wrong in ((block.attentions[0].norm, 1e-5), (block.resnets[0].norm1, 1e-6)):
        right, norm.eps = norm.eps, wrong
        try:
            assert rel_l2(run_reference(ref, inputs), want) >= 100 * F32_MAX_ERR, (norm, wrong)
        finally:
            norm.eps = right


@pytest.fixture(scope="module")
def stored(fixtures_dir, reference):
    """(family, qtype) -> (weights, inputs, {reference: output}), loaded and run once per module."""
    @functools.cache
    def get(family, qtype):
        weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", unet_type=qtype, progress=False)
        assert any(weights.info(n)["type"] == qtype for n in unet_names(weights))  # the request reached the UNet
        ref32 = reference(family)
        deq = dequantized_copy(ref32, weights, "unet.")
        inputs = make_inputs(family, ref32)
        refs = {"dequantized": run_reference(deq, inputs), "f32": run_reference(ref32, inputs)}
        refs["emulated"] = run_reference(with_ggml_activation_rounding(deq, weights, _unet_weight), inputs)
        return weights, inputs, refs

    return get


def _unet_weight(module: str) -> str:
    return f"unet.{module}.weight"


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_stored_types_match_dequantized_reference(stored, family, qtype):
    """Every product on the stored type (f32_matmul_min_cols=0): ggml rounds every product's activations."""
    weights, inputs, refs = stored(family, qtype)
    unet = UNet(weights, n_threads=THREADS, f32_matmul_min_cols=0)
    out = unet.predict(**inputs)
    err = {k: rel_l2(out, ref) for k, ref in refs.items()}
    print(f"\nunet {family} {qtype} min_cols=0: vs dequantized+act.rounding {err['emulated']:.2e}, "
          f"vs dequantized {err['dequantized']:.2e}, vs f32 original {err['f32']:.2e}")
    assert err["dequantized"] <= ROUNDED_ACT_MAX_ERR[qtype], err
    assert err["emulated"] <= ROUNDED_ACT_MAX_ERR[qtype], err  # no closer end to end: see ROUNDED_ACT_MAX_ERR
    assert unet.used_weights() == unet_names(weights)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_f32_products_match_dequantized_reference(stored, family, qtype):
    """f32_matmul_min_cols=1: every weight converted to f32 before its product, the CPU default's path for
    products with many columns; nothing but the weights' own rounding separates it from the f32 graph."""
    weights, inputs, refs = stored(family, qtype)
    unet = UNet(weights, n_threads=THREADS, f32_matmul_min_cols=1)
    out = unet.predict(**inputs)
    err = rel_l2(out, refs["dequantized"])
    print(f"\nunet {family} {qtype} min_cols=1: vs dequantized {err:.2e}, vs f32 original "
          f"{rel_l2(out, refs['f32']):.2e}")
    assert err <= F32_MAX_ERR
    assert unet.used_weights() == unet_names(weights)


# (family, layers quantized together, type): one of each kind of product, alone in an otherwise f32 UNet (layers
# listed together share one input or feed none of the others). Type f16: rows that fit no 32-block. Blocks whose
# channels equal the 32 groups are avoided: GroupNorm erases a per-channel time embedding there.
_TB = "mid_block.attentions.0.transformer_blocks.0."
ONE_LAYER_CASES = [
    ("sdxl", ["conv_in"], "f16"),  # 3x3 conv over 4 channels: rows of 36
    ("sdxl", ["time_embedding.linear_1"], "q8_0"),  # batch columns
    ("sdxl", ["add_embedding.linear_1"], "f16"),  # pooled text + time ids: rows of 112
    ("sdxl", ["add_embedding.linear_2"], "q8_0"),
    ("sdxl", ["mid_block.resnets.0.time_emb_proj"], "q8_0"),
    ("sdxl", ["mid_block.resnets.0.conv1"], "q8_0"),  # 3x3 conv: im2col rows of 9 * 64
    ("sdxl", ["mid_block.resnets.0.conv2"], "bf16"),
    ("sdxl", ["down_blocks.1.resnets.0.conv_shortcut"], "q8_0"),  # 1x1 conv: a linear over channels
    ("sdxl", ["down_blocks.0.downsamplers.0.conv"], "q8_0"),  # stride 2, padding 1
    ("sdxl", ["up_blocks.0.upsamplers.0.conv"], "q8_0"),  # after the nearest 2x resize
    ("sdxl", ["mid_block.attentions.0.proj_in"], "q8_0"),  # Linear (SD2/SDXL)
    ("sd1", ["mid_block.attentions.0.proj_in"], "q8_0"),  # 1x1 Conv2d (SD1)
    ("sd1", ["mid_block.attentions.0.proj_out"], "q8_0"),
    ("sdxl", [_TB + "attn1.to_q", _TB + "attn1.to_k", _TB + "attn1.to_v"], "q8_0"),
    ("sdxl", [_TB + "attn1.to_out.0"], "q8_0"),
    ("sdxl", [_TB + "attn2.to_q", _TB + "attn2.to_k", _TB + "attn2.to_v"], "q8_0"),  # k, v: the text context
    ("sdxl", [_TB + "ff.net.0.proj"], "q8_0"),
    ("sdxl", [_TB + "ff.net.2"], "q4_K"),  # rows of 256: q8_K activation blocks
    ("sdxl", ["conv_out"], "q8_0"),
]
# Measured: the emulating reference is 6e-7 .. 1.4e-4 from ours (mostly ~1e-6, f32 noise: no value flips), the
# plain dequantized one 4e-5 .. 7e-3, a ratio of at most 0.09 (ff.net.0.proj, one flip). Rounding the wrong rows
# (im2col rows in (ky, kx, c) order, or 32-blocks shifted by 16) gives ratios of 1.2 .. 1.4.
ONE_LAYER_MAX_RATIO = 0.25


@pytest.mark.parametrize("family, layers, qtype", ONE_LAYER_CASES,
                         ids=[f"{f}-{'+'.join(x.removeprefix(_TB) for x in ls)}-{t}" for f, ls, t in ONE_LAYER_CASES])
def test_one_quantized_layer_matches_activation_rounding(fixtures_dir, reference, family, layers, qtype):
    names = {_unet_weight(layer) for layer in layers}
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False,
                                 rules=[f"^({'|'.join(map(re.escape, names))})$={qtype}"])
    assert {n for n in unet_names(weights) if weights.info(n)["type"] != "f32"} == names
    assert {weights.info(n)["type"] for n in names} == {qtype}
    ref32 = reference(family)
    inputs = make_inputs(family, ref32)
    with dequantized_weights(ref32, weights, "unet.", names) as deq:  # restored afterwards: no copy
        want_deq = run_reference(deq, inputs)
        with ggml_activation_rounding(deq, weights, _unet_weight) as emulated:
            want_emulated = run_reference(emulated, inputs)
    out = UNet(weights, n_threads=THREADS, f32_matmul_min_cols=0).predict(**inputs)
    err_emu, err_deq = rel_l2(out, want_emulated), rel_l2(out, want_deq)
    print(f"\nunet {family} {'+'.join(layers)} {qtype}: vs dequantized+act.rounding {err_emu:.2e}, "
          f"vs dequantized {err_deq:.2e}")
    assert err_deq >= 2e-5, "the layer's activation rounding should show in the output"
    assert err_emu <= ONE_LAYER_MAX_RATIO * err_deq


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
