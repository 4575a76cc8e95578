"""Independent check of the fixtures: diffusers' OWN single-file converters must turn each
single.safetensors back into exactly the diffusers folder it was written from, and the GGUF
files must hold the same values in the layouts their converters produce."""

from __future__ import annotations

import json
import math
import struct

import gguf
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig

from fixtures.gguf_files import SDCPP_UNUSED

UNET, VAE = "model.diffusion_model.", "first_stage_model."
# (diffusers component, converter, prefix in the original file): written out here, not taken from
# the builder, so a wrong prefix in the builder fails this test.
TEXT_ENCODERS = {
    "sd1": [("text_encoder", "clip", "cond_stage_model.transformer.")],
    "sd1_inpaint": [("text_encoder", "clip", "cond_stage_model.transformer.")],
    "sd2": [("text_encoder", "open_clip", "cond_stage_model.model.")],
    "sdxl": [
        ("text_encoder", "clip", "conditioner.embedders.0.transformer."),
        ("text_encoder_2", "open_clip", "conditioner.embedders.1.model."),
    ],
    "sdxl_refiner": [("text_encoder_2", "open_clip", "conditioner.embedders.0.model.")],
}
SCHEDULE = {"sd1": {"alphas_cumprod", "betas"}}
# Tensors in the original files that no diffusers component takes.
FILE_ONLY = ("text_model.embeddings.position_ids", "logit_scale")
FAMILIES = list(TEXT_ENCODERS)


def _config(fixture_files, family, component):
    return json.loads((fixture_files[family]["diffusers"] / component / "config.json").read_text())


def _assert_exact(converted, reference, what):
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}  # non-persistent
    missing, extra = sorted(set(reference) - set(converted)), sorted(set(converted) - set(reference))
    assert not missing and not extra, f"{what}: missing {missing[:5]}, unexpected {extra[:5]}"
    for key, ref in reference.items():
        got = converted[key].numpy()
        assert got.dtype == ref.dtype and got.shape == ref.shape, f"{what}: {key} {got.shape} vs {ref.shape}"
        assert np.array_equal(got, ref), f"{what}: {key} values differ"


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_converts_back_to_diffusers(fixture_files, reference_state_dicts, family):
    ckpt = safetensors.torch.load_file(fixture_files[family]["single"])
    ref = reference_state_dicts(family)
    unet = sfu.convert_ldm_unet_checkpoint(ckpt, _config(fixture_files, family, "unet"))
    _assert_exact(unet, ref["unet"], f"{family} unet")
    vae = sfu.convert_ldm_vae_checkpoint(ckpt, _config(fixture_files, family, "vae"))
    _assert_exact(vae, ref["vae"], f"{family} vae")
    for component, kind, prefix in TEXT_ENCODERS[family]:
        if kind == "clip":  # strips both known CLIP-L prefixes, so it takes no prefix argument
            te = sfu.convert_ldm_clip_checkpoint(ckpt)
        else:
            cfg = CLIPTextConfig(**_config(fixture_files, family, component))
            te = sfu.convert_open_clip_checkpoint(_ConfigOnly(cfg), ckpt, prefix=prefix)
        _assert_exact(te, ref[component], f"{family} {component}")
    assert set(ref) == {c for c, _, _ in TEXT_ENCODERS[family]} | {"unet", "vae"}


class _ConfigOnly:
    """convert_open_clip_checkpoint reads only `text_model.config` (hidden_size, when no projection)."""

    def __init__(self, config):
        self.config = config


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_has_nothing_else(fixture_files, reference_state_dicts, family):
    """Same element count per component as the reference: no stray or duplicated tensors."""
    ckpt = safetensors.numpy.load_file(fixture_files[family]["single"])
    ref = reference_state_dicts(family)
    groups = {UNET: "unet", VAE: "vae"} | {p: c for c, _, p in TEXT_ENCODERS[family]}
    counted = dict.fromkeys(groups.values(), 0)
    for name, arr in ckpt.items():
        prefix = next((p for p in groups if name.startswith(p)), None)
        if prefix is None:
            assert name in SCHEDULE.get(family, set()), f"unexpected tensor {name}"
        elif not name.endswith(FILE_ONLY) and not (family == "sd2" and name.endswith("text_projection")):
            counted[groups[prefix]] += arr.size
    assert counted == {c: sum(a.size for a in sd.values()) for c, sd in ref.items()}
    assert SCHEDULE.get(family, set()) <= set(ckpt)


def test_original_layout_details(fixture_files):
    sd1 = safetensors.numpy.load_file(fixture_files["sd1"]["single"])
    assert sd1["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 4  # SD1: 1x1 conv
    assert sd1["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    pos = sd1["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert pos.dtype == np.int64 and pos.tolist() == [list(range(77))]
    assert np.all(np.diff(sd1["alphas_cumprod"]) < 0) and sd1["betas"].shape == (1000,)
    sd2 = safetensors.numpy.load_file(fixture_files["sd2"]["single"])
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # SD2: linear
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (192, 64)
    assert sd2["cond_stage_model.model.logit_scale"].shape == ()
    xl = safetensors.numpy.load_file(fixture_files["sdxl"]["single"])
    ref = safetensors.numpy.load_file(fixture_files["sdxl"]["diffusers"] / "text_encoder_2/model.safetensors")
    proj = xl["conditioner.embedders.1.model.text_projection"]
    assert np.array_equal(proj, ref["text_projection.weight"].T)
    assert xl["model.diffusion_model.label_emb.0.0.weight"].shape == (32 * 4, 64 + 6 * 8)
    refiner = safetensors.numpy.load_file(fixture_files["sdxl_refiner"]["single"])
    assert refiner["model.diffusion_model.label_emb.0.0.weight"].shape[1] == 64 + 5 * 8
    inpaint = safetensors.numpy.load_file(fixture_files["sd1_inpaint"]["single"])
    assert inpaint["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9


def _all_fixture_arrays(fixture_files):
    for files in fixture_files.values():
        for path in sorted(files["dir"].rglob("*")):
            if path.suffix == ".safetensors":
                yield from ((f"{path}:{k}", v) for k, v in safetensors.numpy.load_file(path).items())
            elif path.suffix == ".gguf":
                yield from ((f"{path}:{t.name}", t.data) for t in gguf.GGUFReader(path).tensors)


def test_every_tensor_is_nonzero(fixture_files):
    zero = [name for name, arr in _all_fixture_arrays(fixture_files) if not np.any(arr)]
    assert not zero, zero[:10]


@pytest.mark.parametrize("family", FAMILIES)
def test_sdcpp_gguf_matches_single(fixture_files, family):
    single = safetensors.numpy.load_file(fixture_files[family]["single"])
    reader = gguf.GGUFReader(fixture_files[family]["gguf"])
    assert [f for f in reader.fields if not f.startswith("GGUF.")] == []  # no KV metadata at all
    expected = {k for k, v in single.items() if v.dtype != np.int64 and not k.startswith(SDCPP_UNUSED)}
    assert {t.name for t in reader.tensors} == expected
    for t in reader.tensors:
        ref = single[t.name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == list(reversed(ref.shape))  # ggml `ne` order
        assert np.array_equal(t.data.reshape(ref.shape), ref), t.name


def test_comfy_gguf(fixture_files):
    single = safetensors.numpy.load_file(fixture_files["sdxl"]["single"])
    unet = {k[len(UNET):]: v for k, v in single.items() if k.startswith(UNET)}
    reader = gguf.GGUFReader(fixture_files["sdxl"]["comfy_gguf"])
    assert reader.fields["general.architecture"].contents() == "sdxl"
    assert {t.name for t in reader.tensors} == set(unet)
    reshaped = 0
    for t in reader.tensors:
        ref = unet[t.name]
        field = reader.fields.get(f"comfy.gguf.orig_shape.{t.name}")
        fix = ref.ndim > 1 and ref.size >= 512 and ref.size % 256 == 0 and ref.shape[-1] % 256 != 0
        assert (field is not None) == fix, t.name
        if fix:  # ComfyUI's loader insists on an INT32 array in torch order
            assert field.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
            assert tuple(field.contents()) == ref.shape
            assert list(t.shape) == [256, ref.size // 256]
            reshaped += 1
        else:
            assert list(t.shape) == list(reversed(ref.shape))
        small = ref.ndim == 1 or ref.size <= 1024
        want = gguf.GGMLQuantizationType.F32 if small else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == want, t.name
        assert np.array_equal(t.data.reshape(ref.shape), ref.astype(t.data.dtype)), t.name
    assert reshaped > 10


def test_vae_override(fixture_files):
    files = fixture_files["sdxl"]
    diff = safetensors.torch.load_file(files["vae_override"])
    ldm = safetensors.torch.load_file(files["vae_override_ldm"])
    vae_cfg = _config(fixture_files, "sdxl", "vae")
    converted = sfu.convert_ldm_vae_checkpoint(ldm, vae_cfg)  # no prefix: diffusers accepts that too
    _assert_exact(converted, {k: v.numpy() for k, v in diff.items()}, "vae_override")
    folder = safetensors.numpy.load_file(files["diffusers"] / "vae/diffusion_pytorch_model.safetensors")
    assert not np.array_equal(folder["decoder.conv_out.weight"], diff["decoder.conv_out.weight"].numpy())


def test_scheduler_and_index(fixture_files):
    for family in FAMILIES:
        root = fixture_files[family]["diffusers"]
        sched = json.loads((root / "scheduler/scheduler_config.json").read_text())
        index = json.loads((root / "model_index.json").read_text())
        assert sched["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")
        assert math.isclose(sched["beta_end"], 0.012)
        assert index["unet"] == ["diffusers", "UNet2DConditionModel"]


# ---- full-size header-only checkpoints -------------------------------------------------------------

# Per-part tensor counts of the published files (UNet, VAE, CLIP-L, OpenCLIP), known independently.
FULLSIZE_COUNTS = {
    "sd15": {UNET: 686, VAE: 248, "cond_stage_model.transformer.": 197},
    "sd21": {UNET: 686, VAE: 248, "cond_stage_model.model.": 24 * 12 + 6},
    "sdxl_base": {UNET: 1680, VAE: 248, "conditioner.embedders.0.": 197, "conditioner.embedders.1.": 390},
}
FULLSIZE_TYPES = {"sd15": "v1", "sd21": "v2", "sdxl_base": "xl_base"}


@pytest.fixture(scope="module")
def fullsize_files(tmp_path_factory):
    from fixtures.fullsize import build_header_only

    root = tmp_path_factory.mktemp("fullsize")
    return {fam: build_header_only(root / f"{fam}.safetensors", fam) for fam in FULLSIZE_TYPES}


def _meta_checkpoint(path):
    """Header only: meta tensors carry names, dtypes and shapes without touching the data."""
    dtypes = {"F16": torch.float16, "I64": torch.int64}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    ckpt = {k: torch.empty(v["shape"], dtype=dtypes[v["dtype"]], device="meta") for k, v in header.items()}
    return ckpt, header, 8 + n


@pytest.mark.parametrize("family", list(FULLSIZE_TYPES))
def test_fullsize_header(fullsize_files, family):
    from fixtures.models import build_modules, on_disk_state_dict
    from fixtures.real_configs import FULLSIZE

    path = fullsize_files[family]
    ckpt, header, data_start = _meta_checkpoint(path)
    end = max(v["data_offsets"][1] for v in header.values())
    assert path.stat().st_size == data_start + end
    assert path.stat().st_blocks * 512 < 64 << 20  # sparse: the data region was never written
    assert sfu.infer_diffusers_model_type(ckpt) == FULLSIZE_TYPES[family]
    for prefix, count in FULLSIZE_COUNTS[family].items():
        assert sum(k.startswith(prefix) for k in ckpt) == count, prefix
    # diffusers' converters, run on shapes only, must give exactly the diffusers models' names and shapes.
    spec = FULLSIZE[family]
    ref = {name: on_disk_state_dict(m) for name, m in build_modules(spec, seed=0, meta=True).items()}
    got = {
        "unet": sfu.convert_ldm_unet_checkpoint(ckpt, spec.unet),
        "vae": sfu.convert_ldm_vae_checkpoint(ckpt, spec.vae),
    }
    for te in spec.text_encoders:
        if te.layout == "hf":
            got[te.folder] = sfu.convert_ldm_clip_checkpoint(ckpt)
        else:
            # With `text_projection` in the file its rows give the q/k/v split; the config goes unread.
            got[te.folder] = sfu.convert_open_clip_checkpoint(_ConfigOnly(None), ckpt, prefix=te.prefix)
    if family == "sd21":  # diffusers' SD2 encoder stops at the penultimate block: layer 23 is dropped
        assert not any(".layers.23." in k for k in got["text_encoder"])
        ref["text_encoder"] = {k: v for k, v in ref["text_encoder"].items() if ".layers.23." not in k}
    for component, sd in ref.items():
        shapes = {k: tuple(v.shape) for k, v in got[component].items() if not k.endswith("position_ids")}
        assert shapes == {k: tuple(v.shape) for k, v in sd.items()}, component
