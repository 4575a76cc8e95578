"""Diffusers folders: one safetensors file (or shard set) per component folder, next to its config.json.
Tensor names get the folder name as prefix, which is exactly sdcpp's canonical form."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from ..errors import ModelFormatError
from .raw import RawSource
from .safetensors_reader import read_safetensors

COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


# A lone component folder (config.json next to its weights, e.g. madebyollin/taesd or an sdxl-vae repo): which
# component its config's _class_name is; text encoders need the caller's hint (text_encoder= or text_encoder_2=).
COMPONENT_CLASSES = {"AutoencoderKL": "vae", "AutoencoderTiny": "vae", "UNet2DConditionModel": "unet"}


def is_diffusers_folder(path) -> bool:
    return os.path.isdir(path) and any(os.path.isdir(os.path.join(path, c)) for c in COMPONENT_FOLDERS)


def is_component_folder(path) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and bool(_weight_files(path))


def _weight_files(folder):
    """The safetensors file(s) of one component folder: plain, fp16 variant, or a sharded index."""
    for stem in WEIGHT_STEMS:
        for variant in ("", ".fp16"):
            single = os.path.join(folder, f"{stem}{variant}.safetensors")
            if os.path.isfile(single):
                return [single]
            index = single + ".index.json"
            if os.path.isfile(index):
                try:
                    with open(index) as f:
                        weight_map = json.load(f)["weight_map"]
                    shards = sorted(set(weight_map.values()))
                except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
                    raise ModelFormatError(index, f"unreadable shard index: {e}") from e
                for shard in shards:
                    # A shard is a file next to the index: no paths into other folders.
                    if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
                        raise ModelFormatError(index, f"shard {shard!r:.200} is not a file name in {folder}")
                return [os.path.join(folder, s) for s in shards]
    if any(f.endswith((".bin", ".ckpt", ".pt")) for f in os.listdir(folder)):
        raise ModelFormatError(folder, "only pickled weights found; sdcpp reads .safetensors here")
    return []


def _read_json(path):
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested 100k levels deep
        raise ModelFormatError(path, f"unreadable JSON: {e}") from e
    if not isinstance(value, dict):  # configs are read with .get() and `in` downstream
        raise ModelFormatError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def _prefixed(comp: str, files: list[str]) -> tuple[list, dict[str, str]]:
    tensors, component_of = [], {}
    for file in files:
        for t in read_safetensors(file).tensors:
            name = f"{comp}.{t.name}"
            if name in component_of:
                raise ModelFormatError(file, "tensor appears in two shards", tensor=t.name, rule="duplicate")
            component_of[name] = comp
            tensors.append(replace(t, name=name))
    return tensors, component_of


def read_component_folder(path, hint: str | None = None) -> RawSource:
    """One component's folder: `hint` (the argument it was passed as), else its config's _class_name, says
    which component it is."""
    path = os.fspath(path)
    config = _read_json(os.path.join(path, "config.json")) or {}
    comp = hint or COMPONENT_CLASSES.get(config.get("_class_name"))
    if comp not in COMPONENT_FOLDERS:
        raise ModelFormatError(path, f"component folder of class {config.get('_class_name')!r}: pass it as "
                               "vae=, unet=, text_encoder= or text_encoder_2=")
    tensors, component_of = _prefixed(comp, _weight_files(path))
    return RawSource(path=path, format="diffusers", tensors=tensors, configs={comp: config},
                     component_of=component_of)


def read_diffusers_folder(path) -> RawSource:
    path = os.fspath(path)
    tensors, configs, component_of, metadata = [], {}, {}, {}
    for comp in COMPONENT_FOLDERS:
        folder = os.path.join(path, comp)
        if not os.path.isdir(folder):
            continue
        files = _weight_files(folder)
        if not files:
            raise ModelFormatError(folder, "component folder holds no weights")
        configs[comp] = _read_json(os.path.join(folder, "config.json")) or {}
        found, owners = _prefixed(comp, files)
        tensors += found
        component_of.update(owners)
    if not tensors:
        raise ModelFormatError(path, "no component folders with weights (unet/, vae/, text_encoder/, ...)")
    scheduler = _read_json(os.path.join(path, "scheduler", "scheduler_config.json"))
    if scheduler:
        configs["scheduler"] = scheduler
    model_index = _read_json(os.path.join(path, "model_index.json"))
    if model_index:
        metadata["model_index"] = model_index
    return RawSource(path=path, format="diffusers", tensors=tensors, metadata=metadata, configs=configs,
                     component_of=component_of)
