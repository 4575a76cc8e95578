"""Format dispatch: look at what a path is, not at its extension alone."""

from __future__ import annotations

import os
import zipfile

from ..errors import ModelFormatError
from .diffusers_reader import is_diffusers_folder, read_diffusers_folder
from .gguf_reader import read_gguf
from .raw import RawSource
from .safetensors_reader import read_safetensors


def read_source(path) -> RawSource:
    path = os.fspath(path)
    if os.path.isdir(path):
        if is_diffusers_folder(path):
            return read_diffusers_folder(path)
        raise ModelFormatError(path, "folder is not a diffusers model (no unet/, vae/ or text_encoder/)")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] == b"GGUF":
        return read_gguf(path)
    if zipfile.is_zipfile(path) or path.endswith((".ckpt", ".pt", ".pth", ".bin")):
        # The reader interface admits pickled checkpoints; a restricted unpickler is tracked separately.
        raise ModelFormatError(path, "PyTorch pickle checkpoints (.ckpt/.pt) are not supported yet; "
                               "convert to .safetensors", rule="format")
    return read_safetensors(path)
