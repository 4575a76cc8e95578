"""Each component's architecture is read once from shapes (sdcpp.config), and a weight whose shape contradicts the
rest of the model is refused at load, naming the tensor and both shapes, before any weight is read."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import safetensors.numpy

import sdcpp

FORMS = ("single.safetensors", "diffusers", "sdcpp_convert.gguf")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sd1_inpaint", "sdxl_refiner"])
@pytest.mark.parametrize("form", FORMS)
def test_every_fixture_form_has_a_consistent_architecture(fixtures_dir, family, form):
    config = sdcpp.inspect(fixtures_dir / family / form).plan.config
    assert config.problems == {}
    assert config.unet.arch.block_channels == (32, 64) and config.vae.arch.factor == 2
    hidden = {e: c.arch.hidden_size for e, c in config.text_encoders.items()}
    assert config.unet.arch.context_dim == sum(hidden.values())
    assert config.unet.arch.in_channels == (9 if family == "sd1_inpaint" else 4)
    assert all(c.arch.n_layers == 2 for c in config.text_encoders.values())
    if family.startswith("sdxl"):
        assert config.unet.addition_time_embed_dim == 8  # tiny_configs: addition_time_embed_dim
        assert config.unet.n_time_ids == (5 if family == "sdxl_refiner" else 6)


def test_full_size_architectures(tmp_path):
    from fixtures.fullsize import build_header_only

    want = {  # released models: heads (SD1: 8 everywhere; SD2/SDXL: channels / 64), context, ADM
        "sd15": ((8, 8, 8, 8), 768, 0, (320, 640, 1280, 1280)),
        "sd21": ((5, 10, 20, 20), 1024, 0, (320, 640, 1280, 1280)),
        "sdxl_base": ((5, 10, 20), 2048, 2816, (320, 640, 1280)),
    }
    for family, (heads, context, adm, channels) in want.items():
        config = sdcpp.inspect(build_header_only(tmp_path / f"{family}.safetensors", family)).plan.config
        assert config.problems == {}, family
        assert config.unet.heads == heads and config.unet.arch.context_dim == context, family
        assert config.unet.arch.adm_in_channels == adm and config.unet.arch.block_channels == channels, family
        assert config.vae.arch.factor == 8 and config.vae.arch.latent_channels == 4
        if adm:
            assert config.unet.addition_time_embed_dim == 256


def _edited_folder(fixtures_dir, tmp_path, family, component, edit):
    folder = tmp_path / f"{family}-edited"
    shutil.copytree(fixtures_dir / family / "diffusers", folder)
    weights = {"unet": "unet/diffusion_pytorch_model.safetensors", "vae": "vae/diffusion_pytorch_model.safetensors",
               "text_encoder": "text_encoder/model.safetensors", "text_encoder_2": "text_encoder_2/model.safetensors"}
    path = folder / weights[component]
    state = safetensors.numpy.load_file(str(path))
    edit(state)
    safetensors.numpy.save_file(state, str(path))
    return folder


def _widen_inputs(names, width):
    def edit(state):
        for n in [n for n in state if re.search(names, n)]:
            state[n] = np.zeros((state[n].shape[0], width), np.float32)
    return edit


def _reshape(name, shape):
    def edit(state):
        state[name] = np.zeros(shape, np.float32)
    return edit


def _eight_latent_channels(state):
    """A VAE consistent in itself, with 8 latent channels instead of the UNet's 4."""
    c_dec, c_enc = state["decoder.conv_in.weight"].shape[0], state["encoder.conv_out.weight"].shape[1]
    state["post_quant_conv.weight"], state["post_quant_conv.bias"] = np.zeros((8, 8, 1, 1)), np.zeros(8)
    state["decoder.conv_in.weight"] = np.zeros((c_dec, 8, 3, 3))
    state["encoder.conv_out.weight"], state["encoder.conv_out.bias"] = np.zeros((16, c_enc, 3, 3)), np.zeros(16)
    state["quant_conv.weight"], state["quant_conv.bias"] = np.zeros((16, 16, 1, 1)), np.zeros(16)


CASES = {
    # every cross-attention key/value reads 96 channels: the UNet agrees with itself, not with the text encoder
    "context": ("sd1", "unet", _widen_inputs(r"attn2\.to_[kv]\.weight$", 96),
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", r"\[32, 96\].*\[32, 64\]"),
    "resnet": ("sd1", "unet", _reshape("down_blocks.1.resnets.1.conv1.weight", (64, 48, 3, 3)),
               "down_blocks.1.resnets.1.conv1.weight", r"\[64, 48, 3, 3\].*\[64, 64, 3, 3\]"),
    "missing": ("sd2", "unet", lambda s: s.pop("up_blocks.1.resnets.0.norm2.bias"),
                "up_blocks.1.resnets.0.norm2.bias", "is missing"),
    "latents": ("sd1", "vae", _eight_latent_channels, "conv_in.weight",
                "reads 4 channels, but the VAE's latents have 8"),
    "adm": ("sdxl", "unet", _reshape("add_embedding.linear_1.weight", (128, 100)),
            "add_embedding.linear_1.weight", "takes 100 inputs"),
    "clip": ("sdxl", "text_encoder_2", _reshape("text_model.encoder.layers.1.mlp.fc2.weight", (64, 128)),
             "text_model.encoder.layers.1.mlp.fc2.weight", r"\[64, 128\].*\[64, 256\]"),
}


@pytest.mark.parametrize("case", CASES)
def test_contradicting_shapes_are_refused_at_load(fixtures_dir, tmp_path, case, monkeypatch):
    family, component, edit, tensor, message = CASES[case]
    folder = _edited_folder(fixtures_dir, tmp_path, family, component, edit)

    def no_reads(*a, **k):
        raise AssertionError("a weight was read before the architecture was checked")

    monkeypatch.setattr("sdcpp.weights.stream_planned", no_reads)
    owner = "unet" if case == "latents" else component
    with pytest.raises(sdcpp.ModelFormatError, match=message) as err:
        sdcpp.Model(folder, progress=False)
    assert err.value.tensor == f"{owner}.{tensor}" and err.value.rule == "architecture"
    assert str(folder) in err.value.path
    with pytest.raises(sdcpp.ModelFormatError, match=message):
        sdcpp.quantize(folder, tmp_path / "out.gguf", type="q8_0", progress=False)
    assert not (tmp_path / "out.gguf").exists()
    report = sdcpp.inspect(folder)  # inspection still works, and says what cannot run
    assert set(report.plan.config.problems) == {owner}
    assert f"{owner} CANNOT RUN" in str(report) and report.to_dict()["problems"][owner]


def test_every_model_value_reaches_the_graphs_from_the_config(fixtures_dir):
    """The graph bindings have no defaults: each wrapper passes every value of its sdcpp.config entry
    (config/families.py holds the defaults), the C++ side refuses the zeros of a value nobody set, and each value
    reaches its graph (the same values rebuild the wrapper's result bit for bit, a changed one moves it)."""
    from sdcpp._native import core
    from sdcpp.models.clip import TextEncoder
    from sdcpp.models.unet import UNet
    from sdcpp.models.vae import VAE

    w = sdcpp.load_weights(fixtures_dir / "sdxl" / "diffusers", progress=False)
    u, v, t = w.config.unet, w.config.vae, w.config.text_encoders["text_encoder"]
    assert (u.groups, u.norm_eps, u.transformer_group_norm_eps, u.transformer_layer_norm_eps) == (32, 1e-5, 1e-6, 1e-5)
    assert (v.groups, v.norm_eps, t.layer_norm_eps) == (32, 1e-6, 1e-5)
    kernels = dict(flash_attn=False, max_im2col_mib=0.0, f32_matmul_min_cols=0, precision="f32", n_threads=1)
    c = core()
    with pytest.raises(TypeError):
        c.UNet(w._store, list(u.heads))
    with pytest.raises(TypeError):
        c.VAE(w._store)
    with pytest.raises(TypeError):
        c.ClipTextModel(w._store, "text_encoder.", t.arch.n_layers, t.heads)
    with pytest.raises(TypeError):  # kernel options too: the wrappers document their defaults
        c.VAE(w._store, groups=v.groups, norm_eps=v.norm_eps)

    rng = np.random.default_rng(0)
    pooled = u.arch.adm_in_channels - u.n_time_ids * u.addition_time_embed_dim
    inputs = dict(latents=rng.standard_normal((1, 4, 8, 8)).astype(np.float32), timesteps=np.array([500.0], np.float32),
                  context=rng.standard_normal((1, 7, u.arch.context_dim)).astype(np.float32),
                  text_embeds=rng.standard_normal((1, pooled)).astype(np.float32),
                  time_ids=rng.uniform(0, 64, (1, u.n_time_ids)).astype(np.float32))
    unet_values = dict(groups=u.groups, norm_eps=u.norm_eps, transformer_group_norm_eps=u.transformer_group_norm_eps,
                       transformer_layer_norm_eps=u.transformer_layer_norm_eps,
                       addition_time_embed_dim=u.addition_time_embed_dim)

    def unet(**changed):
        return c.UNet(w._store, list(u.heads), **{**unet_values, **changed}, **kernels).predict(**inputs)

    want = UNet(w, flash_attn=False, f32_matmul_min_cols=0, n_threads=1).predict(**inputs)
    assert np.array_equal(unet(), want)
    for eps in ("norm_eps", "transformer_group_norm_eps", "transformer_layer_norm_eps"):
        assert not np.array_equal(unet(**{eps: 10 * unet_values[eps]}), want), eps
        with pytest.raises(ValueError, match="eps"):
            unet(**{eps: 0.0})
    with pytest.raises(ValueError, match="addition_time_embed_dim"):
        unet(addition_time_embed_dim=0)

    latents = inputs["latents"][:, :, :4, :4]
    want = VAE(w, flash_attn=False, f32_matmul_min_cols=0, n_threads=1).decode(latents)
    assert np.array_equal(c.VAE(w._store, groups=v.groups, norm_eps=v.norm_eps, **kernels).decode(latents), want)
    assert not np.array_equal(c.VAE(w._store, groups=v.groups, norm_eps=1e-5, **kernels).decode(latents), want)
    with pytest.raises(ValueError, match="eps"):
        c.VAE(w._store, groups=v.groups, norm_eps=0.0, **kernels)

    ids = rng.integers(0, t.arch.vocab_size, (1, 77)).astype(np.int32)
    eos = np.array([76], np.int32)
    want = TextEncoder(w, f32_matmul_min_cols=0, n_threads=1).encode(ids, eos=eos)["hidden"]

    def clip(eps, act=t.activation):
        return c.ClipTextModel(w._store, "text_encoder.", n_layers=t.arch.n_layers, n_heads=t.heads, hidden_act=act,
                               layer_norm_eps=eps, flash_attn=False, f32_matmul_min_cols=0, precision="f32",
                               n_threads=1)

    assert np.array_equal(clip(t.layer_norm_eps).compute(ids, eos, t.arch.n_layers)["hidden"], want)
    assert not np.array_equal(clip(10 * t.layer_norm_eps).compute(ids, eos, t.arch.n_layers)["hidden"], want)
    with pytest.raises(ValueError, match="eps"):
        clip(0.0)
