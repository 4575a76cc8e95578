"""TAESD (diffusers AutoencoderTiny): the graph against diffusers in every form sdcpp reads, the names that route
it, its architecture checks, generation with vae=TAESD against diffusers' pipelines given vae=AutoencoderTiny,
its tiling against AutoencoderTiny's enable_tiling(), and per-step previews in the progress callback.

    pytest -q -s tests/test_taesd.py   # -s prints every error
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

import sdcpp
from fixtures import taesd
from sdcpp.errors import ModelFormatError
from sdcpp.models.taesd import TinyVAE
from sdcpp.models.vae import vae_graph
from sdcpp.pipeline.tiling import decode_latents, encode_image

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.usefixtures("single_threaded_torch"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

THREADS = 1
# The graph against AutoencoderTiny in f32, max abs on outputs of std 0.2 .. 1.1: measured 3.6e-7 .. 2.6e-6 (decode
# and encode, both layouts, every form, OpenBLAS or ggml's kernels), against the 1e-4 (a 40x margin).
F32_MAX_ERR = 1e-4
# Generation with vae=TAESD against diffusers' pipeline with vae=AutoencoderTiny, max abs of the [0, 1] images:
# the UNet and samplers are test_generate.py's (there measured 7e-7 .. 7.1e-6, bound 5e-5); the same bound here.
GEN_MAX_ERR = 5e-5
FORMS = ("diffusers", "single", "comfy", "halves")
W, H = 48, 32  # as test_generate.py: 24 x 16 latents for the tiny SD models and the "sd" layout TAESD (2x)
PROMPT = "a lovely cat sitting on a wooden table, photograph"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("taesd")
    return {layout: taesd.build(root / layout, layout) for layout in taesd.LAYOUTS}


@pytest.fixture(scope="module")
def reference():
    return {layout: taesd.make(layout) for layout in taesd.LAYOUTS}


def load(files, layout, form, **kw):
    f = files[layout]
    if form == "halves":  # the original two files, given together as the model's VAE
        return sdcpp.load_weights(f["decoder"], vae=[f["encoder"], f["decoder"]], n_threads=THREADS,
                                  progress=False, strict=True, **kw)
    return sdcpp.load_weights(f[form], n_threads=THREADS, progress=False, strict=True, **kw)


def inputs(factor, seed=0, latent=(6, 10)):
    rng = np.random.default_rng(seed)
    z = 2 * rng.standard_normal((2, 4, *latent)).astype(np.float32)
    x = np.tanh(rng.standard_normal((2, 3, latent[0] * factor, latent[1] * factor))).astype(np.float32)
    return z, x


def ref_decode(ref, z):
    with torch.no_grad():
        return ref.decode(torch.from_numpy(z)).sample.numpy()


def ref_encode(ref, x):
    with torch.no_grad():
        return ref.encode(torch.from_numpy(x)).latents.numpy()


def max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max())


@pytest.mark.parametrize("layout", list(taesd.LAYOUTS))
@pytest.mark.parametrize("form", FORMS)
def test_every_form_matches_autoencoder_tiny(files, reference, layout, form):
    weights = load(files, layout, form)
    arch = weights.config.vae.arch
    assert weights.spec.components == ("vae",) and arch.kind == "tiny" and arch.has_encoder
    assert arch.factor == (2 if layout == "sd" else 8) and weights.config.vae.scaling_factor == 1.0
    vae = vae_graph(weights, n_threads=THREADS)
    assert isinstance(vae, TinyVAE)
    z, x = inputs(arch.factor)
    errs = (max_err(vae.decode(z), ref_decode(reference[layout], z)),
            max_err(vae.encode(x), ref_encode(reference[layout], x)))
    print(f"\n{layout} {form}: decode {errs[0]:.2e}, encode {errs[1]:.2e}")
    assert max(errs) <= F32_MAX_ERR
    assert vae.used_weights() == set(weights.names())  # every layer read, none left over


def test_ggml_kernels_match_too(files, reference):
    """Every product and conv on ggml's own kernels (no OpenBLAS, no f32 weight copies)."""
    weights = load(files, "real", "diffusers")
    vae = TinyVAE(weights, n_threads=THREADS, f32_matmul_min_cols=0, max_im2col_mib=0.05)  # and conv bands
    z, x = inputs(8, seed=1)
    assert max_err(vae.decode(z), ref_decode(reference["real"], z)) <= F32_MAX_ERR
    assert max_err(vae.encode(x), ref_encode(reference["real"], x)) <= F32_MAX_ERR


def test_forms_give_the_same_canonical_weights(files):
    """One canonical index: diffusers' names, whatever the file called them (diffusers' conversion of the
    originals shifts the decoder's indices down by one)."""
    by_form = {form: load(files, "real", form) for form in FORMS}
    names = by_form["diffusers"].names()
    assert "vae.decoder.layers.0.weight" in names and "vae.decoder.layers.1.weight" not in names  # the ReLU
    for form, w in by_form.items():
        assert w.names() == names, form
        for n in names:
            assert np.array_equal(w.numpy(n), by_form["diffusers"].numpy(n)), (form, n)


def test_taesd_is_not_taken_for_a_text_encoder(files, tmp_path):
    """`encoder.layers.N` is also a bare text encoder's prefix (transformers 5 without text_model.): a TAESD's
    leaves route it to the VAE, a text encoder's leaves still to the text encoder."""
    report = sdcpp.inspect(files["sd"]["single"])
    assert report.spec.components == ("vae",)
    clip = {"encoder.layers.0.self_attn.q_proj.weight": np.zeros((8, 8), np.float32)}
    save_file(clip, tmp_path / "te.safetensors")
    from sdcpp.index import open_model

    index = open_model(tmp_path / "te.safetensors")
    assert [t.component for t in index] == ["text_encoder"]


def _write_broken(files, tmp_path, change):
    state = load_file(files["sd"]["single"])
    change(state)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    return path


def test_contradicting_shapes_are_refused_naming_the_tensor(files, tmp_path):
    def narrow(state):  # a block whose second conv reads 6 channels where the first gives 8
        state["decoder.layers.3.conv.2.weight"] = state["decoder.layers.3.conv.2.weight"][:, :6].copy()

    with pytest.raises(ModelFormatError, match=r"decoder\.layers\.3\.conv\.2\.weight.*\[8, 6, 3, 3\]"):
        sdcpp.load_weights(_write_broken(files, tmp_path, narrow), progress=False, strict=True)

    def relu_with_weights(state):  # index 1 is the decoder's ReLU
        state["decoder.layers.1.weight"] = state["decoder.layers.0.weight"]

    with pytest.raises(ModelFormatError, match=r"decoder\.layers\.1\.weight.*ReLU"):
        sdcpp.load_weights(_write_broken(files, tmp_path, relu_with_weights), progress=False, strict=True)


def test_unsupported_config_is_refused(files, tmp_path):
    import shutil

    folder = tmp_path / "silu"
    shutil.copytree(files["sd"]["diffusers"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "act_fn": "silu"}))
    with pytest.raises(ModelFormatError, match="act_fn='silu'"):
        sdcpp.load_weights(folder, progress=False, strict=True)


def test_decoder_only_file_decodes_and_refuses_to_encode(files, reference):
    weights = sdcpp.load_weights(files["sd"]["decoder"], n_threads=THREADS, progress=False, strict=True)
    vae = vae_graph(weights, n_threads=THREADS)
    z, x = inputs(2)
    assert not vae.has_encoder
    assert max_err(vae.decode(z), ref_decode(reference["sd"], z)) <= F32_MAX_ERR
    with pytest.raises(ValueError, match="no encoder"):
        vae.encode(x)
    with pytest.raises(ValueError, match="deterministic"):
        TinyVAE(load(files, "sd", "single"), n_threads=THREADS).encode(x, noise=z)


# --- generation ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def taesd_models(fixtures_dir, files):
    cache = {}

    def get(family, form="diffusers"):
        if (family, form) not in cache:
            f = files["sd"]
            vae = [f["encoder"], f["decoder"]] if form == "halves" else f[form]
            cache[family, form] = sdcpp.Model(fixtures_dir / family / "diffusers", vae=vae, n_threads=THREADS,
                                              progress=False)
        return cache[family, form]

    return get


def _pipe(fixtures_dir, family, cls, vae):
    absent = dict(tokenizer=None, feature_extractor=None, image_encoder=None)
    absent.update(dict(tokenizer_2=None) if family == "sdxl" else dict(safety_checker=None))
    pipe = getattr(diffusers, cls).from_pretrained(fixtures_dir / family / "diffusers", vae=vae, **absent)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_txt2img_with_taesd_matches_diffusers(taesd_models, reference, fixtures_dir, family):
    """diffusers' pipelines divide the latents by the pipeline VAE's scaling_factor, AutoencoderTiny's 1.0: TAESD
    decodes the UNet's latents as they are."""
    from test_generate import diffusers_latents, first_sigma, reference_embeds

    model = taesd_models(family)
    assert isinstance(model.vae, TinyVAE) and model.vae.scaling_factor == 1.0
    encoders = {c: (transformers.CLIPTextModelWithProjection if c == "text_encoder_2" else transformers.CLIPTextModel)
                .from_pretrained(fixtures_dir / family / "diffusers", subfolder=c).eval()
                for c in (["text_encoder", "text_encoder_2"] if family == "sdxl" else ["text_encoder"])}
    noise = np.random.default_rng(7).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=3, guidance_scale=5.0, sampler="euler",
                          latents=noise, progress=False)
    cls = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    pipe = _pipe(fixtures_dir, family, cls, reference["sd"])
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    ref = pipe(**reference_embeds(model, lambda _f, c: encoders[c], family, PROMPT, "blurry"), height=H, width=W,
               num_inference_steps=3, guidance_scale=5.0, output_type="np",
               latents=diffusers_latents(noise, first_sigma("euler", 3, family))).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} txt2img with TAESD: max abs {err:.2e}")
    assert ours.arrays.shape == ref.shape == (1, H, W, 3)
    assert err <= GEN_MAX_ERR
    assert ours.arrays.std() > 0.05  # an image, not a constant


def test_img2img_with_taesd_matches_diffusers(taesd_models, reference, fixtures_dir):
    """TAESD's encoder is deterministic: diffusers' retrieve_latents draws no posterior noise, so with rng="cpu"
    the start noise is the generator's first draw on both sides."""
    from test_generate import reference_embeds

    model = taesd_models("sd1", "halves")  # the original taesd_encoder + taesd_decoder files
    te = transformers.CLIPTextModel.from_pretrained(fixtures_dir / "sd1" / "diffusers",
                                                    subfolder="text_encoder").eval()
    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=5, guidance_scale=6.0, sampler="euler",
                          init_image=init, strength=0.6, rng="cpu", seed=11, progress=False)
    pipe = _pipe(fixtures_dir, "sd1", "StableDiffusionImg2ImgPipeline", reference["sd"])
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    ref = pipe(**reference_embeds(model, lambda _f, _c: te, "sd1", PROMPT, "blurry"), image=init, strength=0.6,
               num_inference_steps=5, guidance_scale=6.0, output_type="np",
               generator=torch.Generator().manual_seed(11)).images
    err = max_err(ours.arrays, ref)
    print(f"\nimg2img with TAESD: max abs {err:.2e}")
    assert err <= GEN_MAX_ERR


def test_decoder_only_vae_refuses_img2img_before_work(fixtures_dir, files):
    model = sdcpp.Model(fixtures_dir / "sd1" / "diffusers", vae=files["sd"]["decoder"], n_threads=THREADS,
                        progress=False)
    model.prompt_encoder.encode = model.prompt_encoder.encode_texts = None  # any work would fail differently
    init = Image.new("RGB", (W, H))
    with pytest.raises(ValueError, match="has no encoder"):
        model.generate(PROMPT, width=W, height=H, steps=2, init_image=init, progress=False)


def test_quantized_gguf_keeps_the_taesd(fixtures_dir, files, tmp_path, taesd_models):
    out = tmp_path / "sd1-taesd.gguf"
    sdcpp.quantize(fixtures_dir / "sd1" / "diffusers", out, vae=files["sd"]["diffusers"], type="f16", progress=False)
    model = sdcpp.Model(out, n_threads=THREADS, progress=False, vae_type="f32")
    assert isinstance(model.vae, TinyVAE)
    ref = taesd_models("sd1")
    z = np.random.default_rng(3).standard_normal((1, 4, 8, 12)).astype(np.float32)
    assert max_err(model.vae.decode(z), ref.vae.decode(z)) <= 1e-2  # f16 weights stored, f32 loaded


# --- tiling --------------------------------------------------------------------------------------------------------

def test_tiled_taesd_matches_autoencoder_tiny_tiling(files, reference):
    """AutoencoderTiny's enable_tiling() rules (tiles every 7/8, masked ramps, no crop) at 128-pixel tiles on the
    real (8x) layout: 2 x 3 tiles decoding and encoding."""
    vae = vae_graph(load(files, "real", "diffusers"), n_threads=THREADS)
    z, x = inputs(8, seed=2, latent=(20, 36))
    ref = reference["real"]
    ref.enable_tiling()
    ref.tile_sample_min_size, ref.tile_latent_min_size = 128, 16
    try:
        ours_d, ours_e = decode_latents(vae, z[:1], True, 128), encode_image(vae, x[:1], None, True, 128)
        ref_d, ref_e = ref_decode(ref, z[:1]), ref_encode(ref, x[:1])
    finally:
        ref.disable_tiling()
    errs = max_err(ours_d, ref_d), max_err(ours_e, ref_e)
    print(f"\ntiled TAESD: decode {errs[0]:.2e}, encode {errs[1]:.2e}")
    assert max(errs) <= F32_MAX_ERR
    assert np.isfinite(ours_d).all() and np.isfinite(ours_e).all()
    assert max_err(ours_d, vae.decode(z[:1])) > 1e-2  # the tiles did change something (per-tile receptive field)
    assert max_err(ours_e, vae.encode(x[:1])) > 1e-2


def test_taesd_tile_size_must_blend_whole_latents(taesd_models):
    with pytest.raises(ValueError, match="multiple of 16 pixels and at least 32 with a TAESD"):
        taesd_models("sd1").generate(PROMPT, width=W, height=H, steps=1, vae_tiling=True, tile_size=24,
                                     progress=False)


# --- previews ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1(fixtures_dir):
    return sdcpp.Model(fixtures_dir / "sd1" / "diffusers", n_threads=THREADS, progress=False)


def _collect():
    seen = []

    def callback(step, total, info):
        seen.append((step, info.get("preview", "absent"), info["denoised"]))

    return seen, callback


def test_preview_with_a_taesd_decodes_each_steps_denoised(sd1, files):
    opts = dict(width=W, height=H, steps=3, sampler="euler", seed=5, num_images=2)
    plain = sd1.generate(PROMPT, progress=False, **opts)
    seen, callback = _collect()
    out = sd1.generate(PROMPT, progress=callback, preview=files["sd"]["decoder"], **opts)
    assert np.array_equal(out.arrays, plain.arrays)  # previews change nothing
    assert [s for s, _, _ in seen] == [0, 1, 2, 3] and seen[0][1] is None
    decoder = vae_graph(sdcpp.load_weights(files["sd"]["decoder"], n_threads=THREADS, progress=False),
                        n_threads=THREADS)
    for _, preview, denoised in seen[1:]:
        assert len(preview) == 2 and preview[0].size == (W, H)
        want = np.clip(decoder.decode(denoised) / 2 + 0.5, 0, 1) * 255
        got = np.stack([np.asarray(p, np.float32) for p in preview]).transpose(0, 3, 1, 2)
        assert np.abs(got - want).max() <= 0.5 + 1e-3  # rounding to 8 bits only
    assert out.report.timings["preview"] > 0
    # kept: preview=True now decodes with it
    seen2, callback = _collect()
    sd1.generate(PROMPT, progress=callback, preview=True, **opts)
    for (_, p, _), (_, q, _) in zip(seen[1:], seen2[1:], strict=True):
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(p, q, strict=True))
    sd1.set_preview(None)


def test_preview_without_a_taesd_uses_the_models_vae(sd1):
    """The last Euler step lands on its denoised estimate, so the last preview is the image itself."""
    seen, callback = _collect()
    out = sd1.generate(PROMPT, width=W, height=H, steps=2, sampler="euler", seed=6, progress=callback, preview=True)
    last = np.asarray(seen[-1][1][0], np.int16)
    assert np.abs(last - np.asarray(out[0], np.int16)).max() <= 1
    assert sd1.preview_decoder is sd1.vae


def test_no_preview_unless_asked(sd1):
    seen, callback = _collect()
    sd1.generate(PROMPT, width=W, height=H, steps=1, progress=callback)
    assert [p for _, p, _ in seen] == ["absent", "absent"]


@pytest.mark.parametrize("preview,error,match", [
    (123, TypeError, "preview must be True, False or the path"),
    ("no/such/taesd.safetensors", FileNotFoundError, "preview: no/such"),
])
def test_preview_arguments_are_checked_before_work(sd1, monkeypatch, preview, error, match):
    def encode(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(sd1.prompt_encoder, "encode", encode)
    monkeypatch.setattr(sd1.prompt_encoder, "encode_texts", encode)
    with pytest.raises(error, match=match):
        sd1.generate(PROMPT, width=W, height=H, steps=1, progress=lambda *a: None, preview=preview)
    with pytest.raises(ValueError, match="progress callback"):
        sd1.generate(PROMPT, width=W, height=H, steps=1, progress=False, preview=True)


def test_preview_refuses_what_is_not_a_lone_vae(sd1, fixtures_dir):
    with pytest.raises(ValueError, match="preview= takes a VAE alone"):
        sd1.set_preview(fixtures_dir / "sd1" / "single.safetensors")
    assert sd1.preview_decoder is sd1.vae
