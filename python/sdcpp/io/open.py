"""Format dispatch: look at what a path is, not at its extension alone."""

from __future__ import annotations

import os
import zipfile

from ..errors import ModelFormatError
from .ckpt_reader import read_ckpt
from .diffusers_reader import is_component_folder, is_diffusers_folder, read_component_folder, read_diffusers_folder
from .gguf_reader import read_gguf
from .raw import RawSource
from .safetensors_reader import read_safetensors

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_source(path, hint: str | None = None) -> RawSource:
    """`hint`: the component a lone component folder holds (the argument it came in as)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if is_diffusers_folder(path):
            return read_diffusers_folder(path)
        if is_component_folder(path):
            return read_component_folder(path, hint)
        raise ModelFormatError(path, "folder is not a diffusers model (no unet/, vae/ or text_encoder/) nor one "
                               "component's folder (config.json and diffusion_pytorch_model.safetensors)")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with open(path, "rb") as f:
        magic = f.read(9)
    if magic[:4] == b"GGUF":
        return read_gguf(path)
    if magic[:4] == b"PK\x03\x04" or (path.lower().endswith(TORCH_SUFFIXES) and zipfile.is_zipfile(path)):
        return read_ckpt(path)
    if path.lower().endswith(TORCH_SUFFIXES) and magic[8:9] != b"{":
        # Not a zip and not safetensors (whose 8-byte length is followed by a JSON object).
        raise ModelFormatError(path, "not a zip-format PyTorch checkpoint: legacy torch.save files (torch < 1.6, "
                               "a bare pickle or a tar archive) are not supported; re-save with a current torch "
                               "or convert to .safetensors", rule="format")
    return read_safetensors(path)
