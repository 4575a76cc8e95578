"""Text encoders in both key layouts: with `text_model.` (every published SD text encoder, old transformers) and
without it (transformers 5 saves CLIPTextModel that way; CLIPTextModelWithProjection keeps it). Both must load
to the same canonical tensors, from diffusers folders and from single-component files."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

import sdcpp

FAMILIES_WITH_CURRENT = ("sd1", "sd2", "sdxl")


def _same_weights(a, b, components=None):
    names = [n for n in a.names() if components is None or n.split(".", 1)[0] in components]
    assert names and names == [n for n in b.names() if components is None or n.split(".", 1)[0] in components]
    for n in names:
        assert a.info(n)["type"] == b.info(n)["type"], n
        assert np.array_equal(a.bytes(n), b.bytes(n)), n


def _unnested(state: dict) -> dict:
    """The transformers-5 CLIPTextModel layout: the `text_model.` level dropped."""
    return {k.removeprefix("text_model."): v for k, v in state.items()}


@pytest.mark.parametrize("family", FAMILIES_WITH_CURRENT)
def test_folder_saved_by_current_save_pretrained_loads_every_encoder(fixtures_dir, family):
    ref = sdcpp.load_weights(fixtures_dir / family / "diffusers", progress=False)
    current = sdcpp.load_weights(fixtures_dir / family / "diffusers_current", progress=False)
    assert current.spec.components == ref.spec.components
    assert "text_encoder" in current.spec.components
    _same_weights(current, ref)


def test_current_layout_folder_generates_like_the_published_layout(fixtures_dir):
    opts = dict(steps=2, width=32, height=32, seed=3, guidance_scale=5.0, progress=False)
    ref = sdcpp.Model(fixtures_dir / "sdxl" / "diffusers", n_threads=1, progress=False).generate("a cat", **opts)
    cur = sdcpp.Model(fixtures_dir / "sdxl" / "diffusers_current", n_threads=1, progress=False).generate("a cat",
                                                                                                       **opts)
    assert np.array_equal(cur.arrays, ref.arrays)


@pytest.mark.parametrize("layout", ["nested", "unnested"])
def test_text_encoder_component_files_in_both_layouts(fixtures_dir, tmp_path, reference_state_dicts, layout):
    """SDXL single file with both encoders replaced by component files (the same values) of either layout."""
    sdxl = fixtures_dir / "sdxl"
    ref_sd = reference_state_dicts("sdxl")
    files = {}
    for comp in ("text_encoder", "text_encoder_2"):
        state = ref_sd[comp] if layout == "nested" else _unnested(ref_sd[comp])
        assert any(k.startswith("text_model.") for k in state) == (layout == "nested")
        files[comp] = tmp_path / f"{comp}.safetensors"
        safetensors.numpy.save_file(state, str(files[comp]))
    ref = sdcpp.load_weights(sdxl / "diffusers", progress=False)
    index = sdcpp.open_model(sdxl / "single.safetensors", **files)
    try:
        # Each encoder file replaced the single file's copy, and nothing in it went unread.
        assert sorted(c for c, _, _ in index.overridden) == ["text_encoder", "text_encoder_2"]
        assert not index.notes.unknown
    finally:
        index.close()
    loaded = sdcpp.load_weights(sdxl / "single.safetensors", progress=False, **files)
    _same_weights(loaded, ref, {"text_encoder", "text_encoder_2"})


def test_unnested_sd1_encoder_file_without_hint_is_a_text_encoder(fixtures_dir, tmp_path, reference_state_dicts):
    """A bare CLIP file given as the model itself: `encoder.layers.*` is a text encoder, not a VAE encoder."""
    path = tmp_path / "clip_l.safetensors"
    safetensors.numpy.save_file(_unnested(reference_state_dicts("sd1")["text_encoder"]), str(path))
    report = sdcpp.inspect(path)
    assert report.spec.components == ("text_encoder",)
    index = sdcpp.open_model(path)
    try:
        assert not index.notes.unknown
        assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight" in index
    finally:
        index.close()


def test_both_layouts_in_one_file_is_a_duplicate(fixtures_dir, tmp_path, reference_state_dicts):
    state = reference_state_dicts("sd1")["text_encoder"]
    both = dict(state)
    both["embeddings.token_embedding.weight"] = state["text_model.embeddings.token_embedding.weight"]
    path = tmp_path / "both.safetensors"
    safetensors.numpy.save_file(both, str(path))
    with pytest.raises(sdcpp.ModelFormatError, match="already provides"):
        sdcpp.inspect(path)
