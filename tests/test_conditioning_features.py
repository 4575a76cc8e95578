# ruff: noqa: F811  (the fixtures imported from test_generate are test arguments of the same names)
"""Prompt editing / alternation in a generation, textual-inversion embeddings, SDXL negative size conditioning and
prompt_embeds input, on the tiny fixtures (references: transformers' encoders and diffusers' pipelines)."""

from __future__ import annotations

import numpy as np
import pytest

import sdcpp
from sdcpp.errors import ModelFormatError
from sdcpp.text import ClipTokenizer, tokenize_prompt
from sdcpp.text.embeddings import Embedding, load_embedding
from sdcpp.text.prompt import EMBEDDING_SLOT, embedding_index
from test_generate import (  # noqa: F401  (fixtures, used by name)
    MAX_ERR,
    PROMPT,
    H,
    W,
    encoders,
    max_err,
    models,
    pipes,
    reference_embeds,
    single_threaded_torch,
    with_scheduler,
)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def recording(model, monkeypatch):
    """Record the cond half of the context of every UNet call."""
    seen = []
    predict = model.unet.predict

    def record(latents, timesteps, context, *rest):
        seen.append(np.array(context[len(context) // 2:]))
        return predict(latents, timesteps, context, *rest)

    monkeypatch.setattr(model.unet, "predict", record)
    return seen


@pytest.mark.parametrize("prompt,texts", [
    ("a [cat:dog:0.5] on a table", ["a cat on a table"] * 3 + ["a dog on a table"]),  # end step int(0.5 * 4) = 2
    ("a [cat|dog] on a table", ["a cat on a table", "a cat on a table", "a dog on a table", "a cat on a table"]),
    ("a [cat:(dog:1.3):1] " + ", ".join(["on a table"] * 30), None),  # the second text is two chunks long
])
def test_prompt_editing_conditions_each_step_as_a1111(models, monkeypatch, prompt, texts):
    model = models("sd1")
    seen = recording(model, monkeypatch)
    out = model.generate(prompt, "blurry", width=32, height=32, steps=4, guidance_scale=5.0, sampler="euler",
                         seed=1, progress=False)
    if texts is None:
        long = prompt.replace("[cat:(dog:1.3):1]", "(dog:1.3)")
        texts = [prompt.replace("[cat:(dog:1.3):1]", "cat")] * 2 + [long] * 2
    assert len(seen) == 4
    # The generation encodes every text of the schedule and the negative in one batch; when that batch reaches the
    # f32-product threshold (256 columns) its products run on another kernel than a one-text encode, so the two
    # agree to kernel rounding (measured 2.3e-6), not bit for bit. Texts that differ differ by O(1).
    same = 2e-5
    for step, text in enumerate(texts):
        want = model.prompt_encoder.encode_texts([text])[0]["context"]
        got = seen[step][:, :want.shape[1]]
        assert np.abs(got - want).max() <= same, f"step {step}: not {text!r}"
        others = sorted({t for t in texts if t != text})
        for other in others:
            alt = model.prompt_encoder.encode_texts([other])[0]["context"]
            if alt.shape == want.shape:
                assert np.abs(got - alt).max() > 1e-2, f"step {step}: {other!r} instead of {text!r}"
        # the shorter side is padded with the empty chunk, as A1111 pads
        if seen[step].shape[1] > want.shape[1]:
            empty = model.prompt_encoder.encode_texts([""])[0]["context"]
            assert np.abs(seen[step][:, want.shape[1]:want.shape[1] + 77] - empty).max() <= same
    assert out[0].size == (32, 32)


def test_prompt_without_editing_is_unchanged_by_the_schedule_parser(models):
    model = models("sd1")
    kwargs = dict(width=32, height=32, steps=2, sampler="euler", seed=3, progress=False)
    a = model.generate("a (lovely:1.2) cat, [blurry] BREAK on a table", "ugly", **kwargs)
    enc = model.prompt_encoder
    cond, _ = enc.encode("a (lovely:1.2) cat, [blurry] BREAK on a table", "ugly")
    assert cond["context"].shape[1] == 2 * 77
    b = model.generate("a (lovely:1.2) cat, [blurry] BREAK on a table", "ugly", **kwargs)
    assert np.array_equal(a.arrays, b.arrays)


# ---------------------------------------------------------------------------------------------------------------
# Textual inversion


def _write(path, kind, vectors):
    if kind == "a1111.pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.from_numpy(vectors["text_encoder"])},
                    "name": "ignored", "step": 1000, "sd_checkpoint": None}, path)
    elif kind == "emb_params.safetensors":
        safetensors_numpy.save_file({"emb_params": vectors["text_encoder"]}, str(path))
    elif kind == "diffusers.bin":
        torch.save({"<token>": torch.from_numpy(vectors["text_encoder"]).half()}, path)
    elif kind == "sdxl.safetensors":
        safetensors_numpy.save_file({"clip_l": vectors["text_encoder"], "clip_g": vectors["text_encoder_2"]},
                                    str(path))
    return path


def reference_context(model, encoders, family, prompt, embedding: Embedding):
    """transformers' encoders with the embedding's vectors written into fresh rows of the token table, at the
    positions sdcpp's tokenizer gave the embedding (A1111 splices them into the embedding output there)."""
    xl = family == "sdxl"
    comps = ["text_encoder", "text_encoder_2"] if xl else ["text_encoder"]
    parts = []
    with torch.no_grad():
        for comp, (pi, _, _, _) in zip(comps, model.prompt_encoder.tokens(prompt, ""), strict=True):
            te = encoders(family, comp)
            table = te.get_input_embeddings()
            saved = table.weight.detach().clone()
            vec = torch.from_numpy(embedding.vectors[comp])
            free = [i for i in range(table.weight.shape[0] - 3, 0, -1) if i not in set(pi.ravel().tolist())]
            ids = pi.astype(np.int64).copy()
            slots = np.flatnonzero(ids.ravel() == EMBEDDING_SLOT)
            assert len(slots) == len(vec)
            ids.ravel()[slots] = free[:len(vec)]
            table.weight[free[:len(vec)]] = vec
            try:
                o = te(torch.from_numpy(ids), output_hidden_states=True)
            finally:
                table.weight.copy_(saved)
            h = o.hidden_states[-2] if xl else o.last_hidden_state
            parts.append(h.reshape(1, -1, h.shape[-1]).numpy())
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("family,kind", [("sd1", "a1111.pt"), ("sd1", "emb_params.safetensors"),
                                         ("sd1", "diffusers.bin"), ("sdxl", "sdxl.safetensors")])
def test_embedding_by_name_matches_transformers(models, encoders, tmp_path, family, kind):
    model = models(family)
    widths = {e.component: e.hidden_size for e in model.prompt_encoder.encoders}
    rng = np.random.default_rng(4)
    vectors = {c: rng.standard_normal((3, w)).astype(np.float32) for c, w in widths.items()}
    if kind == "diffusers.bin":
        vectors = {c: v.astype(np.float16).astype(np.float32) for c, v in vectors.items()}
    path = _write(tmp_path / f"fancystyle.{kind.split('.')[-1]}", kind, vectors)
    emb = load_embedding(path)
    assert emb.name == "fancystyle" and emb.n_vectors == 3
    for c in widths:
        np.testing.assert_array_equal(emb.vectors[c], vectors[c])
    assert model.prompt_encoder.set_embeddings({"fancystyle": emb}) == {"fancystyle": emb}
    try:
        prompt = "a photo in fancystyle of a cat"
        cond, _ = model.prompt_encoder.encode(prompt, "")
        want = reference_context(model, encoders, family, prompt, emb)
        err = max_err(cond["context"], want)
        print(f"\n{family} {kind}: max abs {err:.2e}")
        assert err <= 2e-5  # measured 1.9e-6 .. 3.8e-6 (f32 encoders)
        # the name spelled in the prompt is gone: the table rows were restored after the pass
        plain, _ = model.prompt_encoder.encode("a photo in fancy style of a cat", "")
        again, _ = model.prompt_encoder.encode("a photo in fancy style of a cat", "")
        assert np.array_equal(plain["context"], again["context"])
        assert not np.allclose(plain["context"], cond["context"], atol=1e-3)
        # the same through encode_texts (the prompt-editing path)
        got = model.prompt_encoder.encode_texts([prompt])[0]["context"]
        assert np.allclose(got, cond["context"], atol=1e-6)
    finally:
        model.prompt_encoder.set_embeddings({})


def test_generate_with_embeddings_dir(models, tmp_path):
    model = models("sd1")
    width = model.prompt_encoder.encoders[0].hidden_size
    rng = np.random.default_rng(5)
    _write(tmp_path / "fancystyle.pt", "a1111.pt", {"text_encoder": rng.standard_normal((2, width), np.float32)})
    _write(tmp_path / "wrongwidth.safetensors", "emb_params.safetensors",
           {"text_encoder": rng.standard_normal((1, width + 1), np.float32)})
    (tmp_path / "notes.txt").write_text("not an embedding")
    kwargs = dict(width=32, height=32, steps=2, sampler="euler", seed=3, progress=False)
    plain = model.generate("a cat, fancystyle, wrongwidth", **kwargs)
    used = model.generate("a cat, fancystyle, wrongwidth", embeddings_dir=tmp_path, **kwargs)
    assert not np.allclose(plain.arrays, used.arrays, atol=1e-4)
    # wrongwidth does not fit this model: skipped, its name stays text (A1111)
    assert set(model.prompt_encoder.embeddings) == {"fancystyle"}
    # embeddings are per call: without embeddings_dir the name is text again
    assert np.array_equal(model.generate("a cat, fancystyle, wrongwidth", **kwargs).arrays, plain.arrays)
    with pytest.raises(FileNotFoundError, match="embeddings_dir"):
        model.generate(PROMPT, embeddings_dir=tmp_path / "missing", **kwargs)


def test_embedding_tokens_follow_a1111_chunking():
    tok = ClipTokenizer()
    emb = Embedding("fancystyle", {"text_encoder": np.zeros((3, 8), np.float32)})
    index = embedding_index({"fancystyle": emb}, tok)
    t = tokenize_prompt("a (fancystyle:1.2) cat", tok, embeddings=index)
    (pos, e), = t.embeddings
    assert e is emb and pos == 2  # BOS, "a", then the three vectors
    assert t.ids[2:5].tolist() == [EMBEDDING_SLOT] * 3
    assert t.weights[2:5].tolist() == pytest.approx([1.2] * 3) and t.token_count == 5
    # 73 words then the embedding: 73 + 3 > 75, so it opens the next chunk (A1111's tokenize_line)
    t = tokenize_prompt(" ".join(["cat"] * 73) + " fancystyle dog", tok, embeddings=index)
    (pos, _), = t.embeddings
    assert t.n_chunks == 2 and pos == 77 + 1
    assert t.ids[73 + 1] == 49407  # the first chunk ends after its 73 tokens


def test_bad_embedding_files_are_named(tmp_path):
    bad = tmp_path / "two.safetensors"
    safetensors_numpy.save_file({"a": np.zeros((1, 4), np.float32), "b": np.zeros((1, 4), np.float32)}, str(bad))
    with pytest.raises(ModelFormatError, match="two.safetensors.*no embedding"):
        load_embedding(bad)
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "x": Boom()}, evil)
    with pytest.raises(ModelFormatError, match="refused global"):
        load_embedding(evil)
    nan = tmp_path / "nan.safetensors"
    safetensors_numpy.save_file({"emb_params": np.full((1, 4), np.nan, np.float32)}, str(nan))
    with pytest.raises(ModelFormatError, match="NaN"):
        load_embedding(nan)


# ---------------------------------------------------------------------------------------------------------------
# SDXL negative size conditioning, prompt_embeds


def test_sdxl_negative_sizes_match_diffusers(models, pipes, encoders):
    model = models("sdxl")
    sizes = dict(original_size=(96, 64), target_size=(40, 56), negative_original_size=(32, 48),
                 negative_crops_coords_top_left=(4, 2), negative_target_size=(64, 64))
    noise = np.random.default_rng(11).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    ours = model.generate(PROMPT, "blurry", width=W, height=H, steps=3, guidance_scale=5.0, sampler="euler",
                          latents=noise, start_noise="diffusers", progress=False, **sizes)
    ref = with_scheduler(pipes("sdxl"), "euler")(
        **reference_embeds(model, encoders, "sdxl", PROMPT, "blurry"), height=H, width=W, num_inference_steps=3,
        guidance_scale=5.0, output_type="np", latents=torch.from_numpy(noise), **sizes).images
    err = max_err(ours.arrays, ref)
    print(f"\nsdxl negative sizes: max abs {err:.2e}")
    assert err <= MAX_ERR
    plain = model.generate(PROMPT, "blurry", width=W, height=H, steps=3, guidance_scale=5.0, sampler="euler",
                           latents=noise, start_noise="diffusers", progress=False, original_size=(96, 64),
                           target_size=(40, 56))
    assert max_err(plain.arrays, ref) > 10 * MAX_ERR


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_prompt_embeds_match_diffusers(models, pipes, encoders, family):
    """diffusers' prompt_embeds (SDXL: with the pooled ones) given to both: the same image; a negative given as
    text is encoded by sdcpp."""
    model = models(family)
    embeds = {k: v.numpy() for k, v in reference_embeds(model, encoders, family, PROMPT, "blurry").items()}
    names = {"prompt_embeds": "prompt_embeds", "negative_prompt_embeds": "negative_prompt_embeds",
             "pooled_prompt_embeds": "pooled_prompt_embeds",
             "negative_pooled_prompt_embeds": "negative_pooled_prompt_embeds"}
    noise = np.random.default_rng(12).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    kwargs = dict(width=W, height=H, steps=3, guidance_scale=5.0, sampler="euler", latents=noise,
                  start_noise="diffusers", progress=False)
    ours = model.generate("", **{names[k]: v for k, v in embeds.items()}, **kwargs)
    ref = with_scheduler(pipes(family), "euler")(
        **{k: torch.from_numpy(v) for k, v in embeds.items()}, height=H, width=W, num_inference_steps=3,
        guidance_scale=5.0, output_type="np", latents=torch.from_numpy(noise)).images
    err = max_err(ours.arrays, ref)
    print(f"\n{family} prompt_embeds: max abs {err:.2e}")
    assert err <= MAX_ERR
    half = model.generate("", "blurry", **{k: v for k, v in embeds.items() if not k.startswith("negative")}, **kwargs)
    assert max_err(half.arrays, ref) <= MAX_ERR


def test_prompt_embeds_are_checked(models):
    sd1, sdxl = models("sd1"), models("sdxl")
    d = sd1.unet.context_dim
    with pytest.raises(ValueError, match=rf"prompt_embeds must be \[1, tokens, {d}\]"):
        sd1.generate("", prompt_embeds=np.zeros((1, 77, d + 1), np.float32), progress=False)
    with pytest.raises(ValueError, match="pooled"):
        sdxl.generate("", prompt_embeds=np.zeros((1, 77, sdxl.unet.context_dim), np.float32), progress=False)
    with pytest.raises(ValueError, match="same length"):
        sd1.generate("", prompt_embeds=np.zeros((1, 70, d), np.float32),
                     negative_prompt_embeds=np.zeros((1, 77, d), np.float32), progress=False)
    with pytest.raises(ValueError, match="finite"):
        sd1.generate("", prompt_embeds=np.full((1, 77, d), np.nan, np.float32), progress=False)
    with pytest.raises(TypeError):
        sdcpp.Model.generate(sd1, "", prompt_embedz=1)


# ---------------------------------------------------------------------------------------------------------------
# SDXL base -> refiner (diffusers' ensemble of experts)


@pytest.mark.parametrize("sampler,end", [("euler", 0.5), ("dpm++_2m", 0.7)])
def test_base_to_refiner_matches_diffusers_ensemble(models, pipes, encoders, sampler, end):
    base, refiner = models("sdxl"), models("sdxl_refiner")
    steps = 6
    noise = np.random.default_rng(13).standard_normal((1, 4, H // 2, W // 2)).astype(np.float32)
    opts = dict(aesthetic_score=7.0, negative_aesthetic_score=2.0)
    ours = base.generate(PROMPT, "blurry", width=W, height=H, steps=steps, guidance_scale=5.0, sampler=sampler,
                         latents=noise, start_noise="diffusers", refiner=refiner, denoising_end=end, progress=False,
                         **opts)
    assert len(ours.report.step_times) == steps  # base and refiner steps together
    latents = with_scheduler(pipes("sdxl"), sampler)(
        **reference_embeds(base, encoders, "sdxl", PROMPT, "blurry"), height=H, width=W, num_inference_steps=steps,
        guidance_scale=5.0, output_type="latent", latents=torch.from_numpy(noise), denoising_end=end).images
    ref = with_scheduler(pipes("sdxl_refiner"), sampler)(
        **reference_embeds(refiner, encoders, "sdxl_refiner", PROMPT, "blurry"), image=latents,
        num_inference_steps=steps, guidance_scale=5.0, output_type="np", denoising_start=end, **opts).images
    err = max_err(ours.arrays, ref)
    print(f"\nbase -> refiner {sampler} at {end}: max abs {err:.2e}")
    assert err <= MAX_ERR
    text = ours[0].info["parameters"]
    assert f"Refiner: {refiner.name}" in text and f"Refiner switch at: {end:g}" in text
    # the same in two calls: denoising_end on the base, denoising_start on the refiner
    half = base.generate(PROMPT, "blurry", width=W, height=H, steps=steps, guidance_scale=5.0, sampler=sampler,
                         latents=noise, start_noise="diffusers", denoising_end=end, progress=False)
    rest = refiner.generate(PROMPT, "blurry", width=W, height=H, steps=steps, guidance_scale=5.0, sampler=sampler,
                            init_image=half.latents, denoising_start=end, progress=False, **opts)
    assert len(half.report.step_times) + len(rest.report.step_times) == steps
    assert np.array_equal(rest.arrays, ours.arrays)


def test_refiner_arguments_are_checked(models):
    base = models("sdxl")
    with pytest.raises(ValueError, match="denoising_end"):
        base.generate(PROMPT, width=32, height=32, steps=2, denoising_end=1.0, progress=False)
    with pytest.raises(ValueError, match="denoising_start"):
        base.generate(PROMPT, width=32, height=32, steps=2, denoising_start=0.5, progress=False)
    with pytest.raises(ValueError, match="latents are not"):
        base.generate(PROMPT, width=32, height=32, steps=2, refiner=models("sd1_inpaint"), progress=False)
