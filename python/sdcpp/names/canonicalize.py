"""Raw tensors of one source -> canonical tensors. The only place raw names are looked at."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from ..errors import ModelFormatError, UnsupportedModelError
from ..io.raw import NON_FLOAT_ITEMSIZE, RawSource, RawTensor
from . import clip, taesd, unet, vae
from .tables import BARE_HEADS, COMPONENTS, IGNORED, PREFIXES, TAESD_DIFFUSERS, TAESD_LAYER, UNSUPPORTED
from .target import Ignore, Target

_PREFIXES_LONGEST_FIRST = sorted(PREFIXES.items(), key=lambda kv: -len(kv[0]))
# Keys under which GGUF writers record the shape a tensor had before being stored flattened.
ORIG_SHAPE_KEYS = ("sdcpp.orig_shape.", "comfy.gguf.orig_shape.")


@dataclass(frozen=True)
class CanonicalTensor:
    name: str  # e.g. "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.weight"
    component: str
    shape: tuple[int, ...]  # canonical (torch) shape
    source: RawTensor  # where the bytes are; its shape is the stored logical shape
    split: tuple[int, int] | None = None
    transpose: bool = False

    @property
    def dtype(self) -> str:
        return self.source.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def rows(self) -> tuple[int, int]:
        """(rows, elements per row) as stored for compute: conv kernels are [out, in*kh*kw] matrices."""
        if len(self.shape) <= 1:
            return 1, self.numel
        return self.shape[0], self.numel // self.shape[0]


@dataclass
class IngestNotes:
    ignored: list[tuple[str, str, str]]  # (file, raw name, reason)
    unknown: list[tuple[str, str]]  # (file, raw name)


def check_supported(source: RawSource):
    for t in source.tensors:
        for pattern, what in UNSUPPORTED:
            if pattern.search(t.name):
                raise UnsupportedModelError(
                    f"{source.path}: this looks like {what} (tensor '{t.name}'); sdcpp runs Stable Diffusion "
                    "1.x, 2.x and SDXL")


def _route(source: RawSource, t: RawTensor, hint: str | None):
    """(component, layout, name inside the layout) or None for a name no table knows."""
    if source.component_of:
        comp = source.component_of[t.name]
        return comp, PREFIXES[comp + "."][1], t.name[len(comp) + 1:]
    for prefix, (comp, layout) in _PREFIXES_LONGEST_FIRST:
        if t.name.startswith(prefix):
            return comp, layout, t.name[len(prefix):]
    if TAESD_LAYER.match(t.name):  # an original TAESD half: bare layer indices (which half: names.taesd)
        return "vae", "taesd_bare", t.name
    if TAESD_DIFFUSERS.match(t.name):  # AutoencoderTiny's layers, not a text encoder's `encoder.layers`
        return "vae", "auto", t.name
    parts = t.name.split(".", 2)
    comp = BARE_HEADS.get(".".join(parts[:2])) or BARE_HEADS.get(parts[0])
    if comp is None:
        return None
    # Bare text-model names can't tell which encoder they are; the caller's hint can.
    if hint is not None and {comp, hint} <= {"text_encoder", "text_encoder_2"}:
        comp = hint
    return comp, PREFIXES[comp + "."][1], t.name


def _translate(layout, names):
    if layout == "ldm" or (layout == "auto" and unet.is_ldm(names)):
        return unet.translate(names)
    if layout == "hf_clip":
        return clip.translate_hf(names)
    if layout == "openclip_h":
        return clip.translate_openclip(names, has_projection=False, sd2=True)
    if layout == "openclip_g":
        return clip.translate_openclip(names, has_projection=True, sd2=False)
    raise AssertionError(layout)


def _with_orig_shape(source: RawSource, t: RawTensor) -> RawTensor:
    for key in ORIG_SHAPE_KEYS:
        shape = source.metadata.get(key + t.name)
        if shape is None:
            continue
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise ModelFormatError(source.path, f"{key}{t.name} must be a list of integers, got {shape!r:.80}",
                                   tensor=t.name, rule="orig-shape")
        shape = tuple(shape)
        n = 1
        for d in shape:
            n *= d
        if n != t.numel or any(d <= 0 for d in shape):
            raise ModelFormatError(source.path, f"{key}{t.name} = {list(shape)} does not hold the stored "
                                   f"{t.numel} elements", tensor=t.name, rule="orig-shape")
        return replace(t, shape=shape)
    return t


def _canonical_shape(source, t: RawTensor, target: Target) -> tuple[int, ...]:
    shape = t.shape
    if target.split:
        part, parts = target.split
        if not shape or shape[0] % parts:
            raise ModelFormatError(source.path, f"cannot split shape {list(shape)} into {parts} along dim 0",
                                   tensor=t.name, rule="split")
        shape = (shape[0] // parts,) + shape[1:]
    if target.transpose:
        if len(shape) != 2:
            raise ModelFormatError(source.path, f"expected a matrix, got shape {list(shape)}", tensor=t.name,
                                   rule="shape")
        shape = shape[::-1]
    if target.squeeze:
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
    return shape


def canonicalize(source: RawSource, hint: str | None = None) -> tuple[list[CanonicalTensor], IngestNotes]:
    """`hint`: the component a bare-named file holds (e.g. a standalone VAE passed as vae=...)."""
    check_supported(source)
    notes = IngestNotes([], [])
    groups: dict[tuple[str, str], list[RawTensor]] = defaultdict(list)
    inner_names: dict[int, str] = {}
    for t in source.tensors:
        reason = next((why for pattern, why in IGNORED if pattern.search(t.name)), None)
        if reason:
            notes.ignored.append((source.path, t.name, reason))
            continue
        if t.numel == 0:  # e.g. marker tensors; nothing to load, and row maths would divide by zero
            notes.ignored.append((source.path, t.name, "empty tensor"))
            continue
        routed = _route(source, t, hint)
        if routed is None or (hint is not None and routed[0] != hint):
            notes.unknown.append((source.path, t.name))
            continue
        comp, layout, inner = routed
        if layout == "auto":
            layout = "ldm"  # the UNet and VAE translators both accept LDM and diffusers names
        groups[(comp, layout)].append(t)
        inner_names[id(t)] = inner

    out: dict[str, CanonicalTensor] = {}
    for (comp, layout), tensors in groups.items():
        names = [inner_names[id(t)] for t in tensors]
        if layout in taesd.LAYOUTS:
            table = taesd.translate(names, layout)
        else:
            table = vae.translate(names) if comp == "vae" else _translate(layout, names)
        for t, inner in zip(tensors, names, strict=True):
            result = table.get(inner)
            if isinstance(result, Ignore):
                notes.ignored.append((source.path, t.name, str(result)))
                continue
            if result is None:
                notes.unknown.append((source.path, t.name))
                continue
            if t.dtype in NON_FLOAT_ITEMSIZE:
                notes.ignored.append((source.path, t.name, f"non-float {t.dtype} tensor"))
                continue
            stored = _with_orig_shape(source, t)
            for target in result if isinstance(result, list) else [result]:
                name = f"{comp}.{target.name}"
                if name in out:
                    raise ModelFormatError(source.path, f"maps to '{name}', which tensor "
                                           f"'{out[name].source.name}' already provides", tensor=t.name,
                                           rule="duplicate")
                out[name] = CanonicalTensor(name, comp, _canonical_shape(source, stored, target), stored,
                                            target.split, target.transpose)
    assert all(c.component in COMPONENTS for c in out.values())
    return list(out.values()), notes
