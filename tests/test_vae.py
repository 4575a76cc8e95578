"""VAE graph parity against diffusers' AutoencoderKL (decoder and encoder) on the tiny SD1 and SDXL VAEs, in
f32 and in each stored weight type (quantized runs are compared with diffusers on the dequantized weights)."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest

import sdcpp
from parity import rel_l2
from sdcpp.models.vae import VAE
from sdcpp.plan import K_FALLBACK

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

FAMILIES = ("sd1", "sdxl")
TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_K")
F32_MAX_ERR = 1e-4
# One thread: the tiny graphs gain nothing from two, and ggml's spinning thread barriers slow to a crawl
# when other processes share the cores.
THREADS = 1
# See tests/test_unet.py: what remains against the dequantized reference is ggml rounding activations to the
# weight's dot-product type (f16, bf16, or 8-bit blocks for quantized weights).
QUANT_MAX_ERR = {"f16": 1e-2, "bf16": 1e-2, "q8_0": 5e-2, "q4_0": 5e-2, "q4_K": 5e-2}


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


@pytest.mark.parametrize("flash_attn", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_f32_matches_diffusers(fixtures_dir, reference, family, flash_attn):
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    vae = VAE(weights, n_threads=THREADS, flash_attn=flash_attn)
    check_all(vae, reference(family), F32_MAX_ERR)
    assert vae.used_weights() == vae_names(weights)


def test_convs_in_bands_match(fixtures_dir, reference):
    """A tiny im2col budget makes every 3x3 conv run one output row at a time, written in place."""
    weights = sdcpp.load_weights(fixtures_dir / "sd1" / "diffusers", progress=False)
    banded = VAE(weights, n_threads=THREADS, max_im2col_mib=0.01)
    check_all(banded, reference("sd1"), F32_MAX_ERR)
    whole = VAE(weights, n_threads=THREADS, max_im2col_mib=0)
    latents, _ = inputs()
    assert rel_l2(banded.decode(latents), whole.decode(latents)) <= 1e-6
    assert banded.compute_buffer_size() < whole.compute_buffer_size()


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


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_stored_types_match_dequantized_reference(fixtures_dir, reference, family, qtype):
    weights = sdcpp.load_weights(fixtures_dir / family / "diffusers", vae_type=qtype, progress=False)
    names = vae_names(weights)
    # The tiny VAE has no row length that is a multiple of 256: q4_K falls back to q4_0 everywhere.
    assert any(weights.info(n)["type"] in (qtype, K_FALLBACK.get(qtype)) for n in names)
    deq = copy.deepcopy(reference(family))
    deq.load_state_dict({n[len("vae."):]: torch.from_numpy(weights.numpy(n)) for n in names})
    vae = VAE(weights, n_threads=THREADS)
    check_all(vae, deq, QUANT_MAX_ERR[qtype], f"vae {family} {qtype} vs dequantized reference")
    check_all(vae, reference(family), 1.0, f"vae {family} {qtype} vs f32 original")
    assert vae.used_weights() == names


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
