"""Hires fix (A1111's two passes) and tiled VAE decode/encode (diffusers' enable_tiling rules) on the tiny fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sdcpp
from sdcpp.pipeline.generate import upscale_latents
from sdcpp.pipeline.memory import lower_bound
from sdcpp.pipeline.tiling import decode_latents, encode_image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

PROMPT = "a lovely cat sitting on a wooden table, photograph"


@pytest.fixture(scope="module")
def sd1(fixtures_dir):
    return sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=1, progress=False)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_latent_upscale_is_torch_interpolate(mode):
    x = np.random.default_rng(0).standard_normal((2, 4, 7, 9)).astype(np.float32)
    for size in [(14, 18), (10, 13), (21, 27), (7, 9)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode).numpy()
        # torch places source pixels in float32, we in float64: measured 1.7e-6 at most on values of O(1)
        np.testing.assert_allclose(upscale_latents(x, *size, mode), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_is_txt2img_then_img2img_as_a1111(sd1, upscaler):
    """First pass at the base size; upscale (latents: bilinear, or pixels: 8-bit Lanczos and encode); then the hires
    steps, the last hr_steps of a table of int(hr_steps / strength) steps, from fresh noise of the same seed: the
    same as an img2img call set up that way."""
    base = dict(width=32, height=24, steps=3, guidance_scale=5.0, sampler="euler", seed=9, progress=False)
    hr = dict(hr_scale=1.5, hr_steps=4, hr_denoising_strength=0.6, hr_upscaler=upscaler)
    out = sd1.generate(PROMPT, "blurry", **base, **hr)
    assert out[0].size == (48, 36) and out.latents.shape == (1, 4, 18, 24)
    first = sd1.generate(PROMPT, "blurry", **base)
    if upscaler == "latent":
        init = upscale_latents(first.latents, 18, 24)
    else:
        img = first[0].resize((48, 36), Image.LANCZOS)
        pixels = np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
        init = sd1.vae.encode(pixels) * np.float32(sd1.vae.scaling_factor)
    total = int(4 / 0.6)  # 6: A1111 runs the last 4 of 6
    second = sd1.generate(PROMPT, "blurry", **{**base, "width": 48, "height": 36, "steps": total},
                          init_image=init, strength=(4 + 0.5) / total)
    assert len(second.report.step_times) == 4 and len(out.report.step_times) == 3 + 4
    assert np.array_equal(out.latents, second.latents)
    text = out[0].info["parameters"]
    name = {"latent": "Latent", "lanczos": "Lanczos"}[upscaler]
    for field in ("Size: 32x24", "Denoising strength: 0.6", "Hires upscale: 1.5", "Hires steps: 4",
                  f"Hires upscaler: {name}"):
        assert field in text


def test_hires_arguments_are_checked(sd1):
    for bad, match in [(dict(hr_scale=0.5), "hr_scale"), (dict(hr_scale=2, hr_upscaler="esrgan"), "hr_upscaler"),
                       (dict(hr_scale=2, hr_denoising_strength=0), "hr_denoising_strength"),
                       (dict(hr_scale=2, hr_steps=0), "hr_steps")]:
        with pytest.raises(ValueError, match=match):
            sd1.generate(PROMPT, width=32, height=32, steps=2, progress=False, **bad)


# ---------------------------------------------------------------------------------------------------------------
# VAE tiling


@pytest.fixture(scope="module")
def tiny_vae(fixtures_dir):
    vae = diffusers.AutoencoderKL.from_pretrained(fixtures_dir / "sd1" / "diffusers", subfolder="vae").eval()
    return vae


def _diffusers_tiles(vae, tile: int, factor: int):
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor = tile, tile // factor, 0.25


def test_tiled_decode_matches_diffusers_and_is_seamless(sd1, tiny_vae):
    f = sd1.vae_factor
    z = np.random.default_rng(3).standard_normal((1, 4, 52, 44)).astype(np.float32)
    _diffusers_tiles(tiny_vae, 32, f)
    with torch.no_grad():
        want = tiny_vae.decode(torch.from_numpy(z)).sample.numpy()
    got = decode_latents(sd1.vae, z, True, 32)
    assert got.shape == want.shape == (1, 3, 104, 88)
    err = float(np.abs(got - want).max())
    full = sd1.vae.decode(z)
    untiled = float(np.abs(got - full).max())
    print(f"\ntiled decode vs diffusers tiled: {err:.2e}; vs untiled: max {untiled:.2e}, "
          f"mean {np.abs(got - full).mean():.2e}")
    assert err <= 5e-5  # measured 2.9e-6
    # Not close to the untiled decode on these random weights (measured max 1.0, mean 0.12 with 32-pixel tiles):
    # each tile normalizes (GroupNorm) and attends over itself only, as in diffusers.
    assert untiled > 1e-2
    # Seamless: across the seams (tile rows start every 24 pixels, blended over 8) the image changes no more than
    # between any two neighbouring rows (measured: seam rows 0.33 of the mean jump .. 1.2 x).
    jumps = np.abs(np.diff(got, axis=2)).mean(axis=(0, 1, 3))
    seams = [24 * k + 8 - 1 for k in range(1, 4)]
    print("row jumps at seams / mean:", [round(float(jumps[s] / jumps.mean()), 2) for s in seams])
    assert max(jumps[s] for s in seams) <= 2 * jumps.mean()


def test_tiled_encode_matches_diffusers(sd1, tiny_vae):
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 104, 88)).astype(np.float32)
    _diffusers_tiles(tiny_vae, 32, sd1.vae_factor)
    with torch.no_grad():
        dist = tiny_vae.encode(torch.from_numpy(x)).latent_dist
    noise = np.random.default_rng(5).standard_normal(dist.mean.shape).astype(np.float32)
    mean = encode_image(sd1.vae, x, None, True, 32)
    sample = encode_image(sd1.vae, x, noise, True, 32)
    want = (dist.mean + dist.std * torch.from_numpy(noise)).numpy()
    print(f"\ntiled encode vs diffusers: mean {np.abs(mean - dist.mean.numpy()).max():.2e}, "
          f"sample {np.abs(sample - want).max():.2e}")
    assert np.abs(mean - dist.mean.numpy()).max() <= 5e-5  # measured ~1e-6
    assert np.abs(sample - want).max() <= 5e-5


def test_tiled_decode_bounds_the_compute_buffer(fixtures_dir):
    """A tile's graph is all a tiled decode builds: its compute buffer is that of one tile, however large the image,
    while an untiled decode's grows with the pixels."""
    model = sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=1, progress=False)
    f = model.vae_factor
    sizes = {}
    for side in (32, 64, 128):  # latents; the tiny VAE doubles them
        z = np.zeros((1, 4, side, side), np.float32)
        model.vae.decode(z)
        sizes[side] = model.vae.compute_buffer_size()
    tiled = {}
    for side in (64, 128):
        vae = sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=1, progress=False).vae
        decode_latents(vae, np.zeros((1, 4, side, side), np.float32), True, 32 * f)
        tiled[side] = vae.compute_buffer_size()
    print(f"\nuntiled compute buffer by latent side {sizes}; tiled (32-latent tiles) {tiled}")
    assert sizes[128] > 3 * sizes[64] > 9 * sizes[32] / 1.5
    assert tiled[64] == tiled[128] <= sizes[32] * 1.01


def test_memory_bound_at_2048_on_sd15_shapes(fixtures_dir):
    """The memory check's VAE working set at 2048 x 2048 with SD1.5's decoder (128 channels at full resolution,
    factor 8): 4 GiB for the whole image, 256 MiB with 512-pixel tiles; tiling turns on by itself when the whole
    would not fit."""
    from dataclasses import replace

    from sdcpp.pipeline import tiling

    config = sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=1, progress=False).weights.config
    sd15 = replace(config, unet=None,
                   vae=replace(config.vae, arch=replace(config.vae.arch, decoder_out_channels=128, factor=8)))
    whole = lower_bound(sd15, width=2048, height=2048, batch=1, cfg=True, flash_attn=True)[0]
    tiles = lower_bound(sd15, width=2048, height=2048, batch=1, cfg=True, flash_attn=True, vae_tile=512)[0]
    assert whole == 2 * 128 * 2048 * 2048 * 4 == 4 << 30 and tiles == 256 << 20
    real = tiling.available_bytes
    try:
        tiling.available_bytes = lambda: 1 << 30
        assert tiling.resolve_tiling(sd15, None, width=2048, height=2048)
        assert not tiling.resolve_tiling(sd15, None, width=512, height=512)
        assert not tiling.resolve_tiling(sd15, False, width=2048, height=2048)
    finally:
        tiling.available_bytes = real


def test_generate_with_vae_tiling(sd1):
    kwargs = dict(width=96, height=64, steps=2, sampler="euler", seed=2, progress=False)
    plain = sd1.generate(PROMPT, **kwargs)
    tiled = sd1.generate(PROMPT, vae_tiling=True, tile_size=32, **kwargs)
    assert np.array_equal(plain.latents, tiled.latents)
    err = float(np.abs(plain.arrays - tiled.arrays).max())
    print(f"\ngenerate tiled vs untiled (images in [0, 1]): max {err:.2e}, "
          f"mean {np.abs(plain.arrays - tiled.arrays).mean():.2e}")
    assert err > 0  # the decode was tiled (same latents, different decode)
    with pytest.raises(ValueError, match="tile_size"):
        sd1.generate(PROMPT, vae_tiling=True, tile_size=30, **kwargs)


def test_cli_flags_of_the_new_features(fixtures_dir, tmp_path):
    from sdcpp.cli import main

    emb = tmp_path / "emb"
    emb.mkdir()
    width = sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=1, progress=False).prompt_encoder.encoders[0]
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file({"emb_params": np.ones((1, width.hidden_size), np.float32)},
                                str(emb / "fancystyle.safetensors"))
    out = tmp_path / "hires.png"
    assert main(["generate", "-m", str(fixtures_dir / "sd1" / "diffusers"), "-p", "a [cat|dog], fancystyle",
                 "-o", str(out), "--steps", "2", "-W", "32", "-H", "32", "--seed", "5", "--sampler", "uni_pc",
                 "--schedule", "beta", "--start-noise", "diffusers", "--rng", "cpu", "--embeddings-dir", str(emb),
                 "--hr-scale", "1.5", "--hr-steps", "2", "--hr-upscaler", "lanczos", "--vae-tiling",
                 "--tile-size", "32", "-t", "1"]) == 0
    with Image.open(out) as png:
        assert png.size == (48, 48)
        text = png.info["parameters"]
        assert "Sampler: UniPC" in text and "Schedule type: Beta" in text and "Hires upscaler: Lanczos" in text
    out = tmp_path / "refined.png"
    assert main(["generate", "-m", str(fixtures_dir / "sdxl" / "diffusers"), "-p", "a cat", "-o", str(out),
                 "--steps", "3", "-W", "32", "-H", "32", "--refiner", str(fixtures_dir / "sdxl_refiner" / "diffusers"),
                 "--denoising-end", "0.6", "--negative-original-size", "64,64", "-t", "1"]) == 0
    with Image.open(out) as png:
        assert "Refiner switch at: 0.6" in png.info["parameters"]
