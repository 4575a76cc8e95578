"""Textual-inversion embeddings (A1111 `embeddings/` files), used by name in prompts.

Formats (what A1111's `modules/textual_inversion/textual_inversion.py` accepts):
    .pt / .bin  {"string_to_param": {"*": [n, dim]}, "name", "step", ...}   (A1111, original textual inversion)
                {token: [dim] or [n, dim]}                                 (diffusers' learned_embeds.bin)
                {"clip_l": [n, 768], "clip_g": [n, 1280]}                   (SDXL)
    .safetensors  {"emb_params": [n, dim]}, {"clip_l", "clip_g"}, or one tensor
PyTorch files are read by sdcpp's restricted unpickler (nothing in them runs); tensors are f32, f16 or bf16.

The name is the file name without its extension, matched on CLIP tokens as A1111 does (so case and spacing follow
the tokenizer). Each embedding holds its vectors per text-encoder component: SD1/SD2 files fill "text_encoder";
SDXL files fill "text_encoder" (clip_l) and "text_encoder_2" (clip_g).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ModelFormatError

log = logging.getLogger("sdcpp")

EXTENSIONS = (".pt", ".bin", ".safetensors")
MAX_VECTORS = 75  # one chunk


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: dict  # component -> float32 [n, dim]
    path: str = ""

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def _read_array(t) -> np.ndarray:
    kinds = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}
    if t.dtype not in kinds:
        raise ModelFormatError(t.path, f"embedding tensor of type {t.dtype}; expected f32, f16 or bf16", tensor=t.name)
    a = np.fromfile(t.path, dtype=kinds[t.dtype], count=t.numel, offset=t.offset)
    if t.dtype == "bf16":
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32).reshape(t.shape)


def _pt_tensors(path) -> dict[str, np.ndarray]:
    """A torch.save zip: every tensor of the pickled object, nested dicts flattened to "a.b" names."""
    from ..io import ckpt_reader as ck
    from ..io.restricted_unpickler import TensorRef, load_restricted

    with open(path, "rb") as f:
        archive = ck._Archive(path, f, os.fstat(f.fileno()).st_size)
        prefix = ck._archive_prefix(archive)
        ck._check_small_records(archive, prefix)
        top = load_restricted(path, archive.record(f"{prefix}/data.pkl", ck.MAX_PICKLE_BYTES))
        out = {}

        def walk(obj, name):
            if isinstance(obj, TensorRef):
                out[name] = _read_array(ck._tensor(archive, prefix, name, obj))
            elif isinstance(obj, dict):
                for k, v in obj.items():
                    if isinstance(k, str):
                        walk(v, f"{name}.{k}" if name else k)

        walk(top, "")
    return out


def _safetensors_tensors(path) -> dict[str, np.ndarray]:
    from ..io.safetensors_reader import read_safetensors

    return {t.name: _read_array(t) for t in read_safetensors(path).tensors}


def load_embedding(path) -> Embedding:
    """One embedding file; ModelFormatError when it is none of the formats above."""
    path = os.fspath(path)
    name, ext = os.path.splitext(os.path.basename(path))
    if ext.lower() not in EXTENSIONS:
        raise ModelFormatError(path, f"not an embedding file (expected one of {', '.join(EXTENSIONS)})")
    tensors = _safetensors_tensors(path) if ext.lower() == ".safetensors" else _pt_tensors(path)
    params = {k: v for k, v in tensors.items() if k.startswith("string_to_param.")}
    if "clip_l" in tensors and "clip_g" in tensors:
        vectors = {"text_encoder": tensors["clip_l"], "text_encoder_2": tensors["clip_g"]}
    elif len(params) == 1:
        vectors = {"text_encoder": next(iter(params.values()))}
    elif "emb_params" in tensors:
        vectors = {"text_encoder": tensors["emb_params"]}
    elif len(tensors) == 1:
        vectors = {"text_encoder": next(iter(tensors.values()))}
    else:
        raise ModelFormatError(path, "no embedding in it: expected string_to_param, emb_params, clip_l + clip_g, "
                               f"or a single tensor; found {', '.join(sorted(tensors))[:200]}")
    out = {}
    for comp, v in vectors.items():
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2 or not 1 <= v.shape[0] <= MAX_VECTORS or v.shape[1] < 1:
            raise ModelFormatError(path, f"embedding vectors must be [n <= {MAX_VECTORS}, dim], got {list(v.shape)}")
        if not np.isfinite(v).all():
            raise ModelFormatError(path, "embedding vectors hold NaN or infinity")
        out[comp] = np.ascontiguousarray(v, dtype=np.float32)
    if len({v.shape[0] for v in out.values()}) != 1:
        raise ModelFormatError(path, "clip_l and clip_g hold different numbers of vectors")
    return Embedding(name, out, path)


def load_embeddings(source) -> dict[str, Embedding]:
    """A folder of embedding files (other files are ignored), one file, or a list of either -> {name: Embedding}."""
    if source is None:
        return {}
    items = source if isinstance(source, (list, tuple)) else [source]
    found: dict[str, Embedding] = {}
    for item in items:
        if isinstance(item, Embedding):
            found[item.name] = item
            continue
        path = os.fspath(item)
        if os.path.isdir(path):
            files = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if os.path.splitext(f)[1].lower() in EXTENSIONS and not f.startswith("."))
        elif os.path.exists(path):
            files = [path]
        else:
            raise FileNotFoundError(f"embeddings_dir {path}: no such file or folder")
        for f in files:
            emb = load_embedding(f)
            found[emb.name] = emb
    return found


def compatible(embeddings: dict[str, Embedding], widths: dict[str, int]) -> dict[str, Embedding]:
    """The embeddings with vectors of the right width for every text encoder of a model ({component: hidden size});
    the others are skipped with a warning, as A1111 skips them (their names stay plain text)."""
    out = {}
    for name, emb in embeddings.items():
        have = {c: v.shape[1] for c, v in emb.vectors.items()}
        if all(have.get(c) == w for c, w in widths.items()):
            out[name] = emb
        else:
            log.warning("embedding %s (%s) does not fit this model's text encoders %s; skipped", name, have, widths)
    return out
