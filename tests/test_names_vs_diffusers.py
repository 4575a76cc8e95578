"""The canonical names (and values) sdcpp derives from original single-file checkpoints equal what
diffusers' own converters (diffusers.loaders.single_file_utils) produce from the same file."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sfu = pytest.importorskip("diffusers.loaders.single_file_utils")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from sdcpp.index import open_model  # noqa: E402
from sdcpp.io.raw import NUMPY_DTYPE  # noqa: E402

# family -> (text encoder prefixes for diffusers' converters: component -> (kind, prefix))
TEXT_ENCODERS = {
    "sd1": {"text_encoder": ("clip", "cond_stage_model.transformer.")},
    "sd1_inpaint": {"text_encoder": ("clip", "cond_stage_model.transformer.")},
    "sd2": {"text_encoder": ("open_clip", "cond_stage_model.model.")},
    "sdxl": {"text_encoder": ("clip", "conditioner.embedders.0.transformer."),
             "text_encoder_2": ("open_clip", "conditioner.embedders.1.model.")},
    "sdxl_refiner": {"text_encoder_2": ("open_clip", "conditioner.embedders.0.model.")},
}


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def diffusers_conversion(family_dir, family) -> dict[str, np.ndarray]:
    ckpt = safetensors_torch.load_file(str(family_dir / "single.safetensors"))
    folder = family_dir / "diffusers"
    out = {}
    unet = sfu.convert_ldm_unet_checkpoint(ckpt, _config(folder / "unet"))
    vae = sfu.convert_ldm_vae_checkpoint(ckpt, _config(folder / "vae"))
    parts = {"unet": unet, "vae": vae}
    for comp, (kind, prefix) in TEXT_ENCODERS[family].items():
        cfg = transformers.CLIPTextConfig(**_config(folder / comp))
        if kind == "clip":
            sd = sfu.convert_ldm_clip_checkpoint(ckpt, remove_prefix=prefix)
        else:
            cls = transformers.CLIPTextModelWithProjection if comp == "text_encoder_2" else transformers.CLIPTextModel
            with torch.device("meta"):
                model = cls(cfg)
            sd = sfu.convert_open_clip_checkpoint(model, ckpt, prefix=prefix)
        parts[comp] = sd
    for comp, sd in parts.items():
        for k, v in sd.items():
            if not k.endswith("position_ids"):
                out[f"{comp}.{k}"] = v.float().numpy()
    return out


def canonical_values(index) -> dict[str, np.ndarray]:
    out = {}
    for t in index:
        a = index.files.view(t.source).view(NUMPY_DTYPE[t.dtype]).reshape(t.source.shape).astype(np.float32)
        if t.split:
            part, parts = t.split
            k = a.shape[0] // parts
            a = a[part * k:(part + 1) * k]
        out[t.name] = (a.T if t.transpose else a).reshape(t.shape)
    return out


@pytest.mark.parametrize("family", sorted(TEXT_ENCODERS))
def test_single_file_names_match_diffusers_converters(fixtures_dir, family):
    expected = diffusers_conversion(fixtures_dir / family, family)
    index = open_model(fixtures_dir / family / "single.safetensors")
    got = canonical_values(index)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        assert np.array_equal(got[name], value), name
    assert not index.notes.unknown
