"""End-to-end generation on the tiny fixtures against diffusers' pipelines, plus formats, cancellation, PNG text.

The tiny text encoders have a 1000-token vocabulary, so sdcpp folds CLIP's ids into it
(`conditioning.fold_token_ids`). The reference side takes the same folded ids (from the model's own
`prompt_encoder.tokens`), runs transformers' encoders on them and hands diffusers `prompt_embeds`: everything
after the tokenizer is compared, the tokenizer itself is tested against transformers in test_tokenizer.py.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

import sdcpp
from sdcpp.pipeline.images import save_png
from sdcpp.pipeline.latents import BatchRNG
from sdcpp.pipeline.schedule import make_table
from sdcpp.sampling import TrainSchedule

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

THREADS = 1  # two loaded cores: ggml's spinning workers gain nothing on these graphs
# Max abs difference of the final images in [0, 1]: measured 7e-7 .. 7.1e-6 over every case here (the largest: SD2
# euler_a), so 5e-5 leaves a 7x margin.
MAX_ERR = 5e-5
W, H = 48, 32  # non-square; the tiny VAEs downsample by 2 -> 24 x 16 latents
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline", "sd1_inpaint": "StableDiffusionInpaintPipeline",
             "sdxl_refiner": "StableDiffusionXLImg2ImgPipeline"}
SCHEDULERS = {"euler": "EulerDiscreteScheduler", "dpm++_2m": "DPMSolverMultistepScheduler",
              "euler_a": "EulerAncestralDiscreteScheduler", "uni_pc": "UniPCMultistepScheduler",
              "dpm++_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"})}
PROMPT = "a lovely cat sitting on a wooden table, photograph"
LONG_PROMPT = ", ".join(["a lovely cat on a windowsill in the morning sun"] * 12)  # 3 chunks


@pytest.fixture(scope="module", autouse=True)
def single_threaded_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(fixtures_dir):
    cache = {}

    def get(family, form="diffusers"):
        if (family, form) not in cache:
            cache[family, form] = sdcpp.Model(fixtures_dir / family / form, n_threads=THREADS, progress=False)
        return cache[family, form]

    return get


@pytest.fixture(scope="module")
def pipes(fixtures_dir):
    cache = {}

    def get(family):
        if family not in cache:
            cls = getattr(diffusers, PIPELINES[family])
            # No tokenizers (tiny vocab) and no safety checker: the pipelines take prompt_embeds.
            absent = dict(tokenizer=None, feature_extractor=None, image_encoder=None)
            xl = family.startswith("sdxl")
            absent.update(dict(tokenizer_2=None, text_encoder=None) if xl else dict(safety_checker=None))
            if family == "sdxl":
                del absent["text_encoder"]
            cache[family] = cls.from_pretrained(fixtures_dir / family / "diffusers", **absent)
            cache[family].set_progress_bar_config(disable=True)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def encoders(fixtures_dir):
    cache = {}

    def get(family, component):
        if (family, component) not in cache:
            folder = fixtures_dir / family / "diffusers"
            cls = transformers.CLIPTextModelWithProjection if component == "text_encoder_2" \
                else transformers.CLIPTextModel
            cache[family, component] = cls.from_pretrained(folder, subfolder=component).eval()
        return cache[family, component]

    return get


def reference_embeds(model, encoders, family, prompt, negative) -> dict:
    """diffusers' prompt_embeds (and SDXL pooled) from transformers' encoders on sdcpp's token ids."""
    comps = {"sdxl": ["text_encoder", "text_encoder_2"], "sdxl_refiner": ["text_encoder_2"]}.get(family,
                                                                                                ["text_encoder"])
    xl = family.startswith("sdxl")
    hidden = {"prompt_embeds": [], "negative_prompt_embeds": []}
    out = {}
    with torch.no_grad():
        for comp, (pi, _, ni, _) in zip(comps, model.prompt_encoder.tokens(prompt, negative), strict=True):
            te = encoders(family, comp)
            for key, ids in (("prompt_embeds", pi), ("negative_prompt_embeds", ni)):
                o = te(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
                # SDXL: penultimate layer without final LN (diffusers' encode_prompt); SD1/SD2: last_hidden_state.
                h = o.hidden_states[-2] if xl else o.last_hidden_state
                hidden[key].append(h.reshape(1, -1, h.shape[-1]))
                if comp == "text_encoder_2":
                    out[key.replace("prompt", "pooled_prompt")] = o.text_embeds[:1]
    out.update({k: torch.cat(v, dim=-1) for k, v in hidden.items()})
    if family == "sdxl" and not negative:  # force_zeros_for_empty_prompt
        out["negative_prompt_embeds"] = torch.zeros_like(out["negative_prompt_embeds"])
        out["negative_pooled_prompt_embeds"] = torch.zeros_like(out["negative_pooled_prompt_embeds"])
    return out


def first_sigma(sampler, steps, family="sd1") -> float:
    return float(make_table(TrainSchedule.sd(), steps, sampler, "discrete", family)[0].sigmas[0])


def diffusers_latents(noise, sigma0) -> torch.Tensor:
    """Our start x = noise * sigma0 (k-diffusion); diffusers multiplies its latents by init_noise_sigma
    (Euler, leading spacing: sqrt(sigma0^2 + 1)) or works on the VP latent x / sqrt(sigma0^2 + 1) (DPM-Solver):
    the same tensor in both cases."""
    return torch.from_numpy(noise * np.float32(sigma0 / np.sqrt(sigma0**2 + 1)))


def with_scheduler(pipe, sampler):
    name, options = SCHEDULERS[sampler] if isinstance(SCHEDULERS[sampler], tuple) else (SCHEDULERS[sampler], {})
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **options)
    return pipe


def max_err(ours, ref) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max())


CASES = [(f, s, g) for f in ("sd1", "sd2", "sdxl") for s in ("euler", "dpm++_2m") for g in (2.5, 7.5)]


@pytest.mark.parametrize("family,sampler,cfg", CASES)
def test_txt2img_matches_diffusers(models, pipes, encoders, family, sampler, cfg):
    steps = 4
    model = models(family)
    negative = "" if cfg == 7.5 else "blurry, low quality"  # SDXL: "" is all zeros (force_zeros_for_empty_prompt)
    noise = np.random.default_rng(7).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, negative, width=W, height=H, steps=steps, guidance_scale=cfg, sampler=sampler,
                          latents=noise, seed=3, progress=False)
    pipe = with_scheduler(pipes(family), sampler)
    ref = pipe(**reference_embeds(model, encoders, family, PROMPT, negative), height=H, width=W,
               num_inference_steps=steps, guidance_scale=cfg, output_type="np",
               latents=diffusers_latents(noise, first_sigma(sampler, steps, family))).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} {sampler} cfg {cfg}: max abs {err:.2e}")
    assert ours.arrays.shape == ref.shape == (1, H, W, 3)
    assert err <= MAX_ERR
    assert ours[0].size == (W, H) and len(ours.report.step_times) == steps


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_euler_ancestral_with_torch_noise_matches_diffusers(models, pipes, encoders, family):
    """rng="cpu" draws the ancestral noise as diffusers' torch CPU generator does."""
    model = models(family)
    noise = np.random.default_rng(12).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=4, guidance_scale=6.0, sampler="euler_a",
                          latents=noise, rng="cpu", seed=77, progress=False)
    ref = with_scheduler(pipes(family), "euler_a")(
        **reference_embeds(model, encoders, family, PROMPT, "blurry"), height=H, width=W, num_inference_steps=4,
        guidance_scale=6.0, output_type="np", latents=diffusers_latents(noise, first_sigma("euler_a", 4)),
        generator=torch.Generator().manual_seed(77)).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} euler_a: max abs {err:.2e}")
    assert err <= MAX_ERR


# Head counts a config-less single file gets (sdcpp.models): 8 in every block of an SD1 UNet; heads 64 wide in an SD2
# UNet and every CLIP tower, so one head on the tiny 32/64 channels. The fixtures' diffusers configs say 8 and 2.
SINGLE_FILE_HEADS = {"sd1": ([8, 8], 1), "sd2": ([1, 1], 1)}  # (UNet heads per down block, text encoder heads)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_single_file_txt2img_matches_diffusers(models, pipes, fixtures_dir, family):
    """The single file holds the diffusers folder's values but no configs, so everything a config would say comes
    from the family's defaults: the VAE scaling factor, the prediction type (SD2: v), the schedule, the head counts.
    The reference is diffusers' pipeline on the folder with only the head counts changed to the single file's."""
    model = models(family, "single.safetensors")
    unet_heads, te_heads = SINGLE_FILE_HEADS[family]
    assert model.unet.heads == unet_heads and [e.n_heads for e in model.prompt_encoder.encoders] == [te_heads]
    folder = fixtures_dir / family / "diffusers"
    te = transformers.CLIPTextModel.from_pretrained(folder, subfolder="text_encoder",
                                                    num_attention_heads=te_heads).eval()
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet",
                                                          attention_head_dim=tuple(unet_heads)).eval()
    pipe = with_scheduler(diffusers.StableDiffusionPipeline(**{**pipes(family).components, "unet": unet}), "euler")
    noise = np.random.default_rng(13).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=4, guidance_scale=6.0, sampler="euler",
                          latents=noise, progress=False)
    ref = pipe(**reference_embeds(model, lambda _f, _c: te, family, PROMPT, "blurry"), height=H, width=W,
               num_inference_steps=4, guidance_scale=6.0, output_type="np",
               latents=diffusers_latents(noise, first_sigma("euler", 4, family))).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} single file: max abs {err:.2e}")
    assert err <= MAX_ERR


def test_emphasis_scales_each_encoders_hidden_states(models):
    """A1111 weights per token, mean restored per chunk, on each SDXL encoder before concatenation."""
    from sdcpp.text import apply_weights

    enc = models("sdxl").prompt_encoder
    plain, _ = enc.encode("a lovely cat on a table", "")
    weighted, _ = enc.encode("a (lovely cat:1.3) on a table", "")
    assert weighted["context"].shape == plain["context"].shape == (1, 77, 128)
    tokens = enc.tokens("a (lovely cat:1.3) on a table", "")
    assert sorted(set(tokens[0][1].ravel().tolist())) == pytest.approx([1.0, 1.3])
    offset = 0
    for e, (_, w, _, _) in zip(enc.encoders, tokens, strict=True):
        part = plain["context"][0, :, offset:offset + e.hidden_size]
        want = apply_weights(part, w.ravel())
        assert np.allclose(weighted["context"][0, :, offset:offset + e.hidden_size], want, atol=1e-5)
        offset += e.hidden_size
    assert np.array_equal(weighted["pooled"], plain["pooled"])  # the pooled vector is not weighted


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_long_prompt_chunks_match_diffusers(models, pipes, encoders, family):
    model = models(family)
    cond, _ = model.prompt_encoder.encode(LONG_PROMPT, "")
    assert cond["context"].shape[1] == 3 * 77
    noise = np.random.default_rng(8).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(LONG_PROMPT, "", width=W, height=H, steps=3, guidance_scale=5.0, sampler="euler",
                          latents=noise, progress=False)
    ref = with_scheduler(pipes(family), "euler")(
        **reference_embeds(model, encoders, family, LONG_PROMPT, ""), height=H, width=W, num_inference_steps=3,
        guidance_scale=5.0, output_type="np", latents=diffusers_latents(noise, first_sigma("euler", 3))).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} 3-chunk prompt: max abs {err:.2e}")
    assert err <= MAX_ERR


def test_sdxl_size_conditioning_matches_diffusers(models, pipes, encoders):
    model = models("sdxl")
    sizes = dict(original_size=(96, 64), crops_coords_top_left=(8, 4), target_size=(40, 56))
    noise = np.random.default_rng(10).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=3, guidance_scale=5.0, sampler="euler",
                          latents=noise, progress=False, **sizes)
    ref = with_scheduler(pipes("sdxl"), "euler")(
        **reference_embeds(model, encoders, "sdxl", PROMPT, "blurry"), height=H, width=W, num_inference_steps=3,
        guidance_scale=5.0, output_type="np", latents=diffusers_latents(noise, first_sigma("euler", 3)),
        **sizes).images
    err = max_err(ours.arrays, ref)
    print(f"\nsdxl original/crop/target size: max abs {err:.2e}")
    assert err <= MAX_ERR


@pytest.mark.parametrize("sampler", ["euler", "dpm++_2m"])
def test_refiner_on_base_latents_matches_diffusers(models, pipes, encoders, sampler):
    """The SDXL hand-off: base latents in as init_image; refiner time ids carry the aesthetic scores."""
    base = models("sdxl").generate(PROMPT, width=W, height=H, steps=2, sampler="euler", seed=1, progress=False)
    model = models("sdxl_refiner")
    opts = dict(original_size=(64, 96), crops_coords_top_left=(2, 4), aesthetic_score=7.0,
                negative_aesthetic_score=2.0)
    ours = model.generate(PROMPT, "", width=W, height=H, steps=5, guidance_scale=5.0, sampler=sampler,
                          init_image=base.latents, strength=0.4, rng="cpu", seed=21, progress=False, **opts)
    assert len(ours.report.step_times) == 2
    ref = with_scheduler(pipes("sdxl_refiner"), sampler)(
        **reference_embeds(model, encoders, "sdxl_refiner", PROMPT, ""), image=torch.from_numpy(base.latents),
        strength=0.4, num_inference_steps=5, guidance_scale=5.0, output_type="np",
        generator=torch.Generator().manual_seed(21), **opts).images
    err = max_err(ours.arrays, ref)
    print(f"\nrefiner {sampler}: max abs {err:.2e}")
    assert err <= MAX_ERR


def test_clip_skip_matches_diffusers(models, pipes, encoders):
    """A1111's clip skip 2 is diffusers' clip_skip=1: the penultimate layer, then the final LayerNorm."""
    model = models("sd1")
    (pi, _, ni, _), = model.prompt_encoder.tokens(PROMPT, "")
    te = encoders("sd1", "text_encoder")
    with torch.no_grad():
        norm = te.final_layer_norm if hasattr(te, "final_layer_norm") else te.text_model.final_layer_norm
        embeds = [norm(te(torch.from_numpy(i.astype(np.int64)), output_hidden_states=True).hidden_states[-2])
                  for i in (pi, ni)]
    noise = np.random.default_rng(9).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, width=W, height=H, steps=3, guidance_scale=4.0, sampler="euler", clip_skip=2,
                          latents=noise, progress=False)
    ref = with_scheduler(pipes("sd1"), "euler")(
        prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], height=H, width=W, num_inference_steps=3,
        guidance_scale=4.0, output_type="np", latents=diffusers_latents(noise, first_sigma("euler", 3))).images
    assert max_err(ours.arrays, ref) <= MAX_ERR
    assert "Clip skip: 2" in ours[0].info["parameters"]


def test_img2img_matches_diffusers(models, pipes, encoders):
    """Same noise on both sides: rng="cpu" is torch's CPU generator, drawn in diffusers' order (posterior
    sample of the init image, then the start noise)."""
    model = models("sd1")
    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=5, guidance_scale=6.0, sampler="euler",
                          init_image=init, strength=0.6, rng="cpu", seed=11, progress=False)
    assert len(ours.report.step_times) == 3  # int(5 * 0.6)
    pipe = with_scheduler(diffusers.StableDiffusionImg2ImgPipeline(**pipes("sd1").components), "euler")
    ref = pipe(**reference_embeds(model, encoders, "sd1", PROMPT, "blurry"), image=init, strength=0.6,
               num_inference_steps=5, guidance_scale=6.0, output_type="np",
               generator=torch.Generator().manual_seed(11)).images
    err = max_err(ours.arrays, ref)
    print(f"\nimg2img: max abs {err:.2e}")
    assert err <= MAX_ERR
    assert "Denoising strength: 0.6" in ours[0].info["parameters"]


def _inpaint_inputs():
    rng = np.random.default_rng(2)
    init = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    mask = np.zeros((H, W), np.uint8)
    mask[4:28, 20:44] = 255
    return init, Image.fromarray(mask)


@pytest.mark.parametrize("sampler", ["euler", "dpm++_2m"])
def test_inpaint_unet_matches_diffusers(models, pipes, encoders, sampler):
    model = models("sd1_inpaint")
    assert model.unet.in_channels == 9
    init, mask = _inpaint_inputs()
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=4, guidance_scale=5.0, sampler=sampler,
                          init_image=init, mask_image=mask, strength=0.75, rng="cpu", seed=5, progress=False)
    pipe = with_scheduler(pipes("sd1_inpaint"), sampler)
    ref = pipe(**reference_embeds(model, encoders, "sd1_inpaint", PROMPT, "blurry"), image=init,
               mask_image=mask, strength=0.75, height=H, width=W, num_inference_steps=4, guidance_scale=5.0,
               output_type="np", generator=torch.Generator().manual_seed(5)).images
    err = max_err(ours.arrays, ref)
    print(f"\ninpaint (9 channels) {sampler}: max abs {err:.2e}")
    assert err <= MAX_ERR


def test_inpaint_with_ordinary_unet_keeps_the_unmasked_latents(models):
    model = models("sd1")
    init, mask = _inpaint_inputs()
    r = model.generate(PROMPT, width=W, height=H, steps=4, init_image=init, mask_image=mask, strength=1.0,
                       seed=4, progress=False)
    # The init latent is the VAE's posterior sample with the first draw of the image's generator.
    noise = BatchRNG("numpy", [4]).randn((1, 4, H // 2, W // 2))
    pixels = np.asarray(init, np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
    init_latent = model.vae.encode(pixels, noise) * np.float32(model.vae.scaling_factor)
    keep = np.asarray(mask)[::2, ::2] < 128
    assert np.array_equal(r.latents[0][:, keep], init_latent[0][:, keep])
    assert not np.allclose(r.latents[0][:, ~keep], init_latent[0][:, ~keep])


def test_safetensors_and_quantized_gguf_give_identical_images(fixtures_dir, tmp_path):
    single = fixtures_dir / "sdxl" / "single.safetensors"
    gguf = tmp_path / "sdxl-q8_0.gguf"
    sdcpp.quantize(single, gguf, type="q8_0", progress=False)
    kwargs = dict(width=W, height=H, steps=3, sampler="euler_a", seed=42, progress=False)
    a = sdcpp.generate(single, PROMPT, "ugly", type="q8_0", n_threads=THREADS, **kwargs)
    b = sdcpp.Model(gguf, n_threads=THREADS, progress=False).generate(PROMPT, "ugly", **kwargs)
    assert a.report.weights == b.report.weights and "q8_0" in a.report.weights["text_encoder_2"]
    assert np.array_equal(a.arrays, b.arrays)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_batch_uses_seed_plus_i_per_image(models):
    model = models("sd1")
    kwargs = dict(width=32, height=32, steps=2, sampler="euler_a", progress=False)
    batch = model.generate(PROMPT, num_images=2, seed=100, **kwargs)
    second = model.generate(PROMPT, seed=101, **kwargs)
    assert [i["seed"] for i in batch.info] == [100, 101] and "Seed: 101" in batch[1].info["parameters"]
    assert max_err(batch.arrays[1], second.arrays[0]) <= 1e-5  # batch-size-independent noise
    assert not np.array_equal(batch.arrays[0], batch.arrays[1])


def test_cancel_returns_promptly_and_the_model_stays_usable(models):
    model = models("sd1")
    kwargs = dict(width=32, height=32, steps=6, sampler="dpm++_2m", seed=9)
    seen = []

    def stop_at_two(step, total, info):
        seen.append(step)
        return step < 2

    with pytest.raises(sdcpp.Cancelled):
        model.generate(PROMPT, progress=stop_at_two, **kwargs)
    assert seen == [0, 1, 2]

    def interrupt(step, total, info):
        if step == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        model.generate(PROMPT, progress=interrupt, **kwargs)

    done = model.generate(PROMPT, progress=False, **kwargs)
    again = model.generate(PROMPT, progress=False, **kwargs)
    assert np.array_equal(done.arrays, again.arrays) and len(done.report.step_times) == 6


def test_two_threads_share_one_model(models):
    model = models("sd1")
    kwargs = dict(width=32, height=32, steps=2, sampler="euler", progress=False)
    want = {s: model.generate(PROMPT, seed=s, **kwargs).arrays for s in (1, 2)}
    got = {}
    active, overlap = [0], [False]

    def hook(step, total, info):
        active[0] += 1
        overlap[0] |= active[0] > 1
        time.sleep(0.01)
        active[0] -= 1

    def work(seed):
        got[seed] = model.generate(PROMPT, seed=seed, **{**kwargs, "progress": hook}).arrays

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap[0]
    assert all(np.array_equal(got[s], want[s]) for s in (1, 2))


def test_png_parameters_and_report(models, tmp_path):
    r = models("sdxl").generate(PROMPT, "ugly", width=32, height=32, steps=2, sampler="dpm++_2m",
                                schedule="karras", guidance_scale=5.5, seed=1234, progress=False)
    text = r[0].info["parameters"]
    assert text.splitlines()[0] == PROMPT and text.splitlines()[1] == "Negative prompt: ugly"
    for field in ("Steps: 2", "Sampler: DPM++ 2M", "Schedule type: Karras", "CFG scale: 5.5", "Seed: 1234",
                  "Size: 32x32"):
        assert field in text
    path = tmp_path / "out.png"
    save_png(r[0], path)
    with Image.open(path) as png:
        assert png.info["parameters"] == text
    rep = r.report
    assert set(rep.timings) >= {"load", "text_encode", "sampling", "decode"} and len(rep.step_times) == 2
    assert rep.peak_rss > 0 and set(rep.weights) == {"text_encoder", "text_encoder_2", "unet", "vae"}
    assert "seed 1234" in str(rep)


def test_random_seed_is_reported_and_defaults_come_from_the_family(models):
    model = models("sd1")
    r = model.generate(PROMPT, width=16, height=16, steps=1, progress=False)
    assert 0 <= r.report.seed < 2**32 and f"Seed: {r.report.seed}" in r[0].info["parameters"]
    assert model.default_size == 16  # diffusers: the config's sample_size (8) x the VAE factor (2)
    # Without a UNet config (single files) the family's size, in latents of the VAE's factor.
    assert models("sd1", "single.safetensors").default_size == 512
    assert models("sd2", "single.safetensors").default_size == 768  # v-prediction (SD2's default without a config)
    from sdcpp.config.families import FAMILIES
    assert FAMILIES["sdxl"].size_for("epsilon") == 1024 and FAMILIES["sd2"].size_for("epsilon") == 512
    with pytest.raises(TypeError, match="stepz"):
        model.generate(PROMPT, stepz=3)
    with pytest.raises(ValueError, match="multiple of 2"):
        model.generate(PROMPT, width=33, height=32)
    with pytest.raises(ValueError, match="sampler"):
        model.generate(PROMPT, width=32, height=32, sampler="nope")


def test_cli_generate_writes_a_png_with_parameters(tmp_path):
    """The README's main command, smaller: a tiny single-file SDXL made by `sdcpp tiny-model`."""
    from sdcpp.cli import main

    model, out = tmp_path / "tiny-sdxl.safetensors", tmp_path / "out.png"
    assert main(["tiny-model", str(model), "--family", "sdxl"]) == 0
    assert main(["generate", "-m", str(model), "-p", "a lovely cat", "-o", str(out), "--steps", "2", "-W", "32",
                 "-H", "32", "--seed", "5", "--sampler", "dpm++_2m", "--type", "q8_0", "-t", "1"]) == 0
    with Image.open(out) as png:
        assert png.size == (32, 32)
        assert "Seed: 5" in png.info["parameters"] and "Sampler: DPM++ 2M" in png.info["parameters"]


@pytest.mark.parametrize("family,sampler", [("sd1", "euler"), ("sd1", "dpm++_2m"), ("sdxl", "euler_a"),
                                            ("sd2", "uni_pc"), ("sd1", "dpm++_2m_sde")])
def test_start_noise_diffusers_reproduces_a_seeded_diffusers_run(models, pipes, encoders, family, sampler):
    """start_noise="diffusers" with rng="cpu": the same seed gives diffusers' image with no latents handed over
    (its Euler schedulers start at noise * sqrt(sigma_0^2 + 1) for "leading" spacing, DPM-Solver at unit noise on the
    VP latent); sdcpp's own start (noise * sigma_0, k-diffusion / A1111) gives another image."""
    model = models(family)
    kwargs = dict(width=W, height=H, steps=4, guidance_scale=5.0, sampler=sampler, rng="cpu", seed=123, progress=False)
    ours = model.generate(PROMPT, "blurry", start_noise="diffusers", **kwargs)
    ref = with_scheduler(pipes(family), sampler)(
        **reference_embeds(model, encoders, family, PROMPT, "blurry"), height=H, width=W, num_inference_steps=4,
        guidance_scale=5.0, output_type="np", generator=torch.Generator().manual_seed(123)).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} {sampler} diffusers start noise: max abs {err:.2e}")
    assert err <= MAX_ERR
    own = model.generate(PROMPT, "blurry", **kwargs)
    assert max_err(own.arrays, ref) > 100 * MAX_ERR
    with pytest.raises(ValueError, match="start_noise"):
        model.generate(PROMPT, start_noise="comfy", **kwargs)
