"""VAE graph parity against diffusers' AutoencoderKL (decoder and encoder) on the tiny SD1 and SDXL VAEs, in
f32 and in each stored weight type (quantized runs are compared with diffusers on the dequantized weights, with
and without ggml's rounding of the activations).

    pytest -q -s tests/test_vae.py -k "stored or f32_products or one_quantized"   # -s prints every error
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
from sdcpp.models.vae import VAE
from sdcpp.plan import K_FALLBACK

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

FAMILIES = ("sd1", "sdxl")
TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_K")
# f32 against diffusers: measured 4e-7 .. 1.6e-6 (rel. L2, each of decode, encode mean and encode sample) on both
# VAEs and every path (OpenBLAS or ggml products, either attention, bands, low-variance activations), so 1e-5
# leaves a 6x margin for other CPUs' summation orders. A GroupNorm epsilon of 1e-5 instead of diffusers' 1e-6
# measured 1.3e-5 .. 2.1e-5 here, and 3e-2 .. 7e-2 in test_group_norm_eps_on_low_variance_activations.
F32_MAX_ERR = 1e-5
# One thread: the tiny graphs gain nothing from two, and ggml's spinning thread barriers slow to a crawl
# when other processes share the cores.
THREADS = 1
# Quantized weights, against diffusers on the same weights dequantized (see tests/test_unet.py for what each
# reference isolates). f32_matmul_min_cols=1 (every weight converted to f32 before its product): F32_MAX_ERR,
# measured 4e-7 .. 1.2e-6 for every type. f32_matmul_min_cols=0 (every product on the stored type, its activations
# rounded by ggml): f16 3e-4 .. 8e-4, bf16 2.8e-3 .. 6e-3, q8_0/q4_0/q4_K 9e-3 .. 2.1e-2 (the tiny VAE has no row of
# 256, so q4_K is stored q4_0). The reference that rounds activations as ggml does is no closer end to end
# (7e-3 .. 1.9e-2; run in f64 it differs from itself in f32 by 1.2e-2 .. 1.8e-2 for the 8-bit types), so the
# rounding is checked per kind of product with one layer quantized (ONE_LAYER_CASES: measured at most 0.033 of the
# dequantized reference's error).
ROUNDED_ACT_MAX_ERR = {"f16": 1e-2, "bf16": 1e-2, "q8_0": 5e-2, "q4_0": 5e-2, "q4_K": 5e-2}
ONE_LAYER_MAX_RATIO = 0.25


pytestmark = pytest.mark.usefixtures("single_threaded_torch")


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    """family -> the diffusers model, each loaded once per module."""
    return functools.cache(lambda family: diffusers.AutoencoderKL.from_pretrained(
        fixtures_dir / family / "diffusers", subfolder="vae").eval())


def inputs(seed=0, batch=2, latent=(8, 12)):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((batch, 4, *latent)).astype(np.float32)
    images = np.tanh(rng.standard_normal((batch, 3, 2 * latent[0], 2 * latent[1]))).astype(np.float32)
    return latents, images


def ref_decode(ref, latents):
    with torch.no_grad():
        return ref.decode(torch.from_numpy(latents)).sample.numpy()


def ref_encode(ref, images, noise=None):
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(images)).latent_dist
        return (dist.mean if noise is None else dist.mean + dist.std * torch.from_numpy(noise)).numpy()


def vae_names(weights) -> set[str]:
    return {n for n in weights.names() if n.startswith("vae.")}


def check_all(vae, ref, max_err, label=""):
    latents, images = inputs()
    errs = {}
    decoded = vae.decode(latents)
    # The tiny VAEs have two levels: one 2x resize instead of the real VAE's 8x.
    assert decoded.shape == images.shape and decoded.dtype == np.float32
    errs["decode"] = rel_l2(decoded, ref_decode(ref, latents))
    mean = vae.encode(images)
    assert mean.shape == latents.shape
    errs["encode mean"] = rel_l2(mean, ref_encode(ref, images))
    noise = np.random.default_rng(5).standard_normal(latents.shape).astype(np.float32)
    errs["encode sample"] = rel_l2(vae.encode(images, noise), ref_encode(ref, images, noise))
    if label:
        print(f"\n{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= max_err, errs
    return errs


@pytest.mark.parametrize("attention", ["openblas", "ggml_mul_mat", "ggml_flash"])
@pytest.mark.parametrize("family", FAMILIES)
def test_f32_matches_diffusers(fixtures_dir, reference, family, attention):
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    vae = VAE(weights, n_threads=THREADS, flash_attn=attention == "ggml_flash")
    with contextlib.nullcontext() if attention == "openblas" else ggml_kernels_only():
        check_all(vae, reference(family), F32_MAX_ERR)
    assert vae.used_weights() == vae_names(weights)


def test_convs_in_bands_match(fixtures_dir, reference):
    """A tiny im2col budget makes every 3x3 conv run one output row at a time, written in place. Bands belong to
    ggml's im2col route; with OpenBLAS, wide 3x3 convs take shifted products without an im2col matrix."""
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False)
    banded = VAE(weights, n_threads=THREADS, max_im2col_mib=0.01)
    whole = VAE(weights, n_threads=THREADS, max_im2col_mib=0)
    latents, _ = inputs()
    with ggml_kernels_only():
        check_all(banded, reference("sd1"), F32_MAX_ERR)
        assert rel_l2(banded.decode(latents), whole.decode(latents)) <= 1e-6
        assert banded.compute_buffer_size() < whole.compute_buffer_size()
    openblas = VAE(weights, n_threads=THREADS)
    check_all(openblas, reference("sd1"), F32_MAX_ERR)
    assert openblas.compute_buffer_size() < whole.compute_buffer_size()


# Both conv_ins scaled by 1e-2: the first GroupNorm after each (decoder mid-block resnet norm1, encoder first resnet
# norm1) sees a per-group variance of ~5e-5 (measured medians 3.5e-5 .. 1e-4), near diffusers' epsilon of 1e-6.
LOW_VARIANCE = ("decoder.conv_in.weight", "decoder.conv_in.bias", "encoder.conv_in.weight", "encoder.conv_in.bias")


@pytest.mark.parametrize("products", ["openblas", "ggml"])
@pytest.mark.parametrize("family", FAMILIES)
def test_group_norm_eps_on_low_variance_activations(fixtures_dir, tmp_path, family, products):
    """Activations small enough for the GroupNorm epsilon to matter; diffusers' own model with every GroupNorm's
    eps at 1e-5 shows how far a wrong one lands (measured 3.0e-2 .. 6.9e-2; ours 4.8e-7 .. 1.6e-6)."""
    folder = scaled_diffusers_copy(fixtures_dir / family / "diffusers", tmp_path / family, "vae", LOW_VARIANCE, 1e-2)
    ref = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    vae = VAE(sdcpp.load_weights(folder, progress=False), n_threads=THREADS)
    with contextlib.nullcontext() if products == "openblas" else ggml_kernels_only():
        check_all(vae, ref, F32_MAX_ERR)
    want = reference_outputs(ref)
    norms = [m for m in ref.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) > 10 and {m.eps for m in norms} == {1e-6}
    for m in norms:
        m.eps = 1e-5
    wrong = reference_outputs(ref)
    assert min(rel_l2(wrong[k], want[k]) for k in want) >= 100 * F32_MAX_ERR


def test_scaling_factor(fixtures_dir):
    assert VAE(sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False)).scaling_factor == 0.18215
    # A single file carries no VAE config: the family's default applies.
    single = sdcpp.load_weights(fixtures_dir / "sdxl" / "single.safetensors", progress=False)
    assert VAE(single).scaling_factor == 0.13025


def test_non_square_single_image(fixtures_dir, reference):
    vae = VAE(sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False), n_threads=THREADS)
    latents, images = inputs(seed=3, batch=1, latent=(5, 9))
    assert rel_l2(vae.decode(latents), ref_decode(reference("sd1"), latents)) <= F32_MAX_ERR
    assert rel_l2(vae.encode(images), ref_encode(reference("sd1"), images)) <= F32_MAX_ERR


def _vae_weight(module: str) -> str:
    return f"vae.{module}.weight"


NOISE = np.random.default_rng(5).standard_normal(inputs()[0].shape).astype(np.float32)


def our_outputs(vae) -> dict:
    latents, images = inputs()
    return {"decode": vae.decode(latents), "encode mean": vae.encode(images),
            "encode sample": vae.encode(images, NOISE)}


def reference_outputs(ref) -> dict:
    latents, images = inputs()
    return {"decode": ref_decode(ref, latents), "encode mean": ref_encode(ref, images),
            "encode sample": ref_encode(ref, images, NOISE)}


@pytest.fixture(scope="module")
def stored(fixtures_dir, reference):
    """(family, qtype) -> (weights, {reference: {output: array}}), loaded and run once per module."""
    @functools.cache
    def get(family, qtype):
        weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", vae_type=qtype, progress=False)
        # The tiny VAE has no row length that is a multiple of 256: q4_K falls back to q4_0 everywhere.
        assert any(weights.info(n)["type"] in (qtype, K_FALLBACK.get(qtype)) for n in vae_names(weights))
        deq = dequantized_copy(reference(family), weights, "vae.")
        refs = {"dequantized": reference_outputs(deq), "f32": reference_outputs(reference(family))}
        refs["emulated"] = reference_outputs(with_ggml_activation_rounding(deq, weights, _vae_weight))
        return weights, refs

    return get


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_stored_types_match_dequantized_reference(stored, family, qtype):
    """Every product on the stored type (f32_matmul_min_cols=0): ggml rounds every product's activations."""
    weights, refs = stored(family, qtype)
    vae = VAE(weights, n_threads=THREADS, f32_matmul_min_cols=0)
    ours = our_outputs(vae)
    err = {k: {out: rel_l2(ours[out], want) for out, want in r.items()} for k, r in refs.items()}
    print(f"\nvae {family} {qtype} min_cols=0   vs dequantized+act.rounding  vs dequantized  vs f32 original")
    for out in ours:
        print(f"  {out:13s} {err['emulated'][out]:26.2e} {err['dequantized'][out]:14.2e} {err['f32'][out]:16.2e}")
    assert max(err["dequantized"].values()) <= ROUNDED_ACT_MAX_ERR[qtype], err
    assert max(err["emulated"].values()) <= ROUNDED_ACT_MAX_ERR[qtype], err  # no closer end to end
    assert vae.used_weights() == vae_names(weights)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_f32_products_match_dequantized_reference(stored, family, qtype):
    """f32_matmul_min_cols=1: every weight converted to f32 before its product (the CPU default's path for
    products with many columns): only the weights' own rounding separates it from the f32 graph."""
    weights, refs = stored(family, qtype)
    vae = VAE(weights, n_threads=THREADS, f32_matmul_min_cols=1)
    ours = our_outputs(vae)
    err = {out: rel_l2(ours[out], want) for out, want in refs["dequantized"].items()}
    print(f"\nvae {family} {qtype} min_cols=1: vs dequantized " + ", ".join(f"{k} {v:.2e}" for k, v in err.items()))
    assert max(err.values()) <= F32_MAX_ERR, err
    assert vae.used_weights() == vae_names(weights)


# (layers quantized together, type): one of each kind of product, alone in an otherwise f32 SD1 VAE (the SDXL VAE
# runs the same graph); layers listed together share one input. Type f16: rows that fit no 32-block.
ONE_LAYER_CASES = [
    (["decoder.conv_in"], "f16"),  # 3x3 conv over 4 latent channels: rows of 36
    (["decoder.mid_block.resnets.0.conv1"], "q8_0"),
    (["decoder.mid_block.attentions.0.to_q", "decoder.mid_block.attentions.0.to_k",
      "decoder.mid_block.attentions.0.to_v"], "q8_0"),  # one head over all channels
    (["decoder.mid_block.attentions.0.to_out.0"], "q8_0"),
    (["decoder.up_blocks.0.upsamplers.0.conv"], "q8_0"),  # after the nearest 2x resize
    (["decoder.up_blocks.1.resnets.0.conv_shortcut"], "q8_0"),  # 1x1 conv: a linear over channels
    (["decoder.up_blocks.1.resnets.1.conv2"], "bf16"),
    (["encoder.down_blocks.0.downsamplers.0.conv"], "q8_0"),  # padded right/bottom by one, stride 2, no padding
    (["encoder.down_blocks.1.resnets.0.conv_shortcut"], "q8_0"),
    (["encoder.mid_block.attentions.0.to_q", "encoder.mid_block.attentions.0.to_k",
      "encoder.mid_block.attentions.0.to_v"], "q8_0"),
    (["encoder.conv_out"], "q8_0"),
]


@pytest.mark.parametrize("layers, qtype", ONE_LAYER_CASES,
                         ids=[f"{'+'.join(ls)}-{t}" for ls, t in ONE_LAYER_CASES])
def test_one_quantized_layer_matches_activation_rounding(fixtures_dir, reference, layers, qtype):
    names = {_vae_weight(layer) for layer in layers}
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False,
                                 rules=[f"^({'|'.join(map(re.escape, names))})$={qtype}"])
    assert {n for n in vae_names(weights) if weights.info(n)["type"] != "f32"} == names
    assert {weights.info(n)["type"] for n in names} == {qtype}
    latents, images = inputs()
    if layers[0].startswith("decoder."):
        ours, run = VAE(weights, n_threads=THREADS, f32_matmul_min_cols=0).decode(latents), \
            lambda m: ref_decode(m, latents)
    else:
        ours, run = VAE(weights, n_threads=THREADS, f32_matmul_min_cols=0).encode(images), \
            lambda m: ref_encode(m, images)
    with dequantized_weights(reference("sd1"), weights, "vae.", names) as deq:  # restored afterwards: no copy
        want_deq = run(deq)
        with ggml_activation_rounding(deq, weights, _vae_weight) as emulated:
            want_emulated = run(emulated)
    err_emu, err_deq = rel_l2(ours, want_emulated), rel_l2(ours, want_deq)
    print(f"\nvae sd1 {'+'.join(layers)} {qtype}: vs dequantized+act.rounding {err_emu:.2e}, "
          f"vs dequantized {err_deq:.2e}")
    assert err_deq >= 2e-5, "the layer's activation rounding should show in the output"
    assert err_emu <= ONE_LAYER_MAX_RATIO * err_deq


def test_input_errors(fixtures_dir):
    vae = VAE(sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False), n_threads=THREADS)
    with pytest.raises(ValueError, match="channels"):
        vae.decode(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="channels"):
        vae.encode(np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="noise"):
        vae.encode(np.zeros((1, 3, 16, 16), np.float32), noise=np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="B, C, H, W"):
        vae.decode(np.zeros((4, 8, 8), np.float32))
