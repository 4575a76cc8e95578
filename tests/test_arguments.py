"""Bad arguments are refused before any work, with an error naming the argument; inputs a user would expect to
work (paths for images, whole floats for sizes, seed -1, masks as arrays) do."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

import sdcpp

SIZE = dict(width=32, height=32)
FAST = dict(steps=2, seed=7, progress=False, **SIZE)


@pytest.fixture(scope="module")
def sd1(fixtures_dir):
    return sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=1, progress=False)


@pytest.fixture(scope="module")
def inpaint(fixtures_dir):
    return sdcpp.Model(fixtures_dir / "sd1_inpaint" / "diffusers", n_threads=1, progress=False)


@pytest.fixture
def no_work(sd1, monkeypatch):
    """Fails the test if text encoding (the first piece of work) starts."""
    def encode(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(sd1.prompt_encoder, "encode", encode)
    monkeypatch.setattr(sd1.prompt_encoder, "encode_texts", encode)
    return sd1


def _image(seed=0, size=(32, 32)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB")


BAD = [
    (dict(width=0), ValueError, "width must be >= 1"),
    (dict(height=-32), ValueError, "height must be >= 1"),
    (dict(width=31), ValueError, "multiple of 2"),
    (dict(width=32.5), ValueError, "width must be an integer"),
    (dict(width="32"), TypeError, "width must be an integer"),
    (dict(width=True), TypeError, "width must be an integer"),
    (dict(steps=2.5), ValueError, "steps must be an integer"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(num_images=1.5), ValueError, "num_images"),
    (dict(seed=1.5), ValueError, "seed must be an integer"),
    (dict(seed=-5), ValueError, "seed must be >= 0"),
    (dict(seed="1"), TypeError, "seed must be an integer"),
    (dict(seed=2**64), ValueError, "seed must be <="),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale must be finite"),
    (dict(guidance_scale=float("inf")), ValueError, "guidance_scale must be finite"),
    (dict(guidance_scale="7"), TypeError, "guidance_scale must be a number"),
    (dict(strength=1.5, init_image=np.zeros((1, 3, 32, 32), np.float32)), ValueError, "strength must be <= 1"),
    (dict(eta=-0.5), ValueError, "eta must be >= 0"),
    (dict(eta=float("nan")), ValueError, "eta must be finite"),
    (dict(clip_skip=0), ValueError, "clip_skip must be >= 1"),
    (dict(clip_skip=100), ValueError, "clip_skip must be <= 2"),  # the tiny CLIP has 2 layers
    (dict(latents=np.full((1, 4, 16, 16), np.nan, np.float32)), ValueError, "latents holds NaN"),
    (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), ValueError, r"latents must be .* shape \(1, 4, 16, 16\)"),
    (dict(latents=np.zeros((2, 4, 16, 16), np.float32)), ValueError, "latents must be"),
    (dict(init_image=np.zeros((3, 4, 16, 16), np.float32), num_images=2), ValueError, "latents must be"),
    (dict(init_image=np.zeros((1, 4, 8, 8), np.float32)), ValueError, "latents must be"),
    (dict(init_image=np.zeros((1, 3, 16, 16), np.float32)), ValueError, "init_image array must be"),
    (dict(init_image=np.full((1, 3, 32, 32), np.inf, np.float32)), ValueError, "init_image holds NaN"),
    (dict(init_image=Image.new("RGB", (0, 0))), ValueError, "0x0: an empty image"),
    (dict(init_image="/no/such/image.png"), FileNotFoundError, "/no/such/image.png"),
    (dict(mask_image=np.ones((32, 32))), ValueError, "mask_image needs init_image"),
    (dict(init_image=_image(), mask_image=np.full((32, 32), 2.0)), ValueError, r"must be in \[0, 1\]"),
    (dict(init_image=_image(), mask_image=np.full((32, 32), 300)), ValueError, r"must be in \[0, 255\]"),
    (dict(init_image=_image(), mask_image=np.ones((2, 32, 32))), ValueError, "mask_image array must be"),
    (dict(sampler="eular"), ValueError, "unknown sampler"),
    (dict(rng="mersenne"), ValueError, "unknown RNG"),
    (dict(timestep_spacing="even"), ValueError, "timestep_spacing"),
    (dict(original_size=(512,)), TypeError, "original_size must be"),
    (dict(progress="yes"), TypeError, "progress must be"),
]


@pytest.mark.parametrize("options,error,match", BAD, ids=[repr(b[0])[:60] for b in BAD])
def test_bad_arguments_are_refused_before_any_work(no_work, options, error, match):
    opts = dict(FAST, **options)
    with pytest.raises(error, match=match):
        no_work.generate("a cat", **opts)


def test_bad_prompts_are_refused_before_any_work(no_work):
    with pytest.raises(TypeError, match="prompt must be a string"):
        no_work.generate(None, **FAST)
    with pytest.raises(TypeError, match="negative_prompt must be a string"):
        no_work.generate("a cat", ["blurry"], **FAST)


def test_overflowing_prompt_weight_is_refused(sd1):
    with pytest.raises(ValueError, match="emphasis weight .* of 'cat' is not a finite float32"):
        sd1.generate("(" * 5000 + "cat", **FAST)
    assert np.isfinite(sd1.generate("(" * 20 + "cat", **FAST).arrays).all()  # deep but finite is fine


def test_flash_attn_must_be_a_bool(fixtures_dir, sd1):
    with pytest.raises(TypeError, match="flash_attn must be True, False or None"):
        sdcpp.Model(fixtures_dir / "sd1" / "diffusers", flash_attn="no", progress=False)
    with pytest.raises(TypeError, match="flash_attn"):
        sdcpp.models.unet.UNet(sd1.weights, flash_attn="no")


def test_thread_counts(fixtures_dir, caplog):
    path = fixtures_dir / "sd1" / "single.safetensors"
    for bad, error in ((-1, ValueError), (2.5, ValueError), ("2", TypeError)):
        with pytest.raises(error, match="n_threads"):
            sdcpp.load_weights(path, n_threads=bad, progress=False)
    with caplog.at_level(logging.WARNING, logger="sdcpp"):
        w = sdcpp.load_weights(path, n_threads=10**6, type="q8_0", progress=False)  # capped, not hung
    assert "more than the" in caplog.text
    ref = sdcpp.load_weights(path, n_threads=1, type="q8_0", progress=False)
    name = "unet.down_blocks.0.resnets.0.conv1.weight"
    assert np.array_equal(w.bytes(name), ref.bytes(name))


def test_whole_floats_and_seed_minus_one_are_accepted(sd1):
    a = sd1.generate("a cat", **dict(FAST, width=32.0, height=np.int64(32), steps=2.0))
    b = sd1.generate("a cat", **FAST)
    assert np.array_equal(a.arrays, b.arrays)
    r = sd1.generate("a cat", **dict(FAST, seed=-1))
    assert 0 <= r.info[0]["seed"] < 2**32 and f"Seed: {r.info[0]['seed']}" in r.info[0]["parameters"]


def test_init_image_path_equals_the_image(sd1, tmp_path):
    img = _image(1)
    img.save(tmp_path / "init.png")
    opts = dict(FAST, strength=0.5)
    by_path = sd1.generate("a cat", init_image=str(tmp_path / "init.png"), **opts)
    by_pathlike = sd1.generate("a cat", init_image=tmp_path / "init.png", **opts)
    by_image = sd1.generate("a cat", init_image=img, **opts)
    assert np.array_equal(by_path.arrays, by_image.arrays) and np.array_equal(by_pathlike.arrays, by_image.arrays)


def test_init_latents_of_batch_one_are_repeated(sd1):
    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    two = sd1.generate("a cat", init_image=latents, num_images=2, strength=0.5, **FAST)
    assert two.arrays.shape[0] == 2


@pytest.mark.parametrize("model_name", ["sd1", "inpaint"])
def test_masks_as_pil_or_array_give_the_same_image(request, model_name, tmp_path):
    model = request.getfixturevalue(model_name)
    init = _image(2)
    white = np.zeros((32, 32), bool)
    white[8:24, 4:20] = True
    pil = Image.fromarray(white.astype(np.uint8) * 255, "L")
    pil.save(tmp_path / "mask.png")
    big = np.kron(white, np.ones((2, 2), bool))  # another size: resized like a PIL mask
    forms = {"bool": white, "uint8": white.astype(np.uint8) * 255, "float": white.astype(np.float32),
             "4d": white[None, None].astype(np.float32), "path": tmp_path / "mask.png", "2x": big}
    opts = dict(FAST, strength=0.8)
    ref = model.generate("a cat", init_image=init, mask_image=pil, **opts).arrays
    for name, mask in forms.items():
        out = model.generate("a cat", init_image=init, mask_image=mask, **opts).arrays
        assert np.array_equal(out, ref), name
