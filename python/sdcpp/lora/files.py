"""LoRA / LyCORIS files -> adapter modules on canonical weight names.

A LoRA file is read like a model file (the same safetensors reader, .ckpt through the restricted unpickler); its
keys are `<module key>.<part>`. Module keys come in two spellings, both resolved by one table built from the
canonical names of the model being loaded (names/ is the only naming authority):
  - kohya / A1111: `lora_unet_` / `lora_te_` (SDXL: `lora_te1_`, `lora_te2_`) + a module name with `.` -> `_`;
    UNet modules in diffusers names (kohya's SD1/SD2) or in the original LDM / SGM names (kohya's SDXL), which
    names.original derives from the canonical ones;
  - diffusers / PEFT: `unet.` / `text_encoder.` / `text_encoder_2.` + the canonical module name (also diffusers'
    older attention-processor spelling `….processor.to_q_lora.down.weight`); ComfyUI's `diffusion_model.` + the
    dotted LDM name.
Parts: `lora_down` / `lora_up` (+ `lora_mid`, LoCon's CP form), `lora_A` / `lora_B`, `lora.down` / `lora.up`,
`alpha`, `dora_scale` (kohya/LyCORIS DoRA), `lora_magnitude_vector` (PEFT DoRA), LoHa `hada_w{1,2}_{a,b}`, LoKr
`lokr_w1`, `lokr_w2` and their `_a` / `_b` factors, `diff` (a full weight difference)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..io.raw import NUMPY_DTYPE, MappedFiles, RawTensor
from ..names.original import _unet_layout, unet_name

log = logging.getLogger("sdcpp")

# Part name (end of a key) -> our part name. Longest first where one ends another.
PARTS = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
    "lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
    "alpha": "alpha", "dora_scale": "dora_scale",
    "lora_magnitude_vector.weight": "magnitude", "lora_magnitude_vector": "magnitude",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b",
    "diff": "diff",
}
# Known parts no sdcpp graph takes yet (reported with the unmatched keys).
UNSUPPORTED_PARTS = ("hada_t1", "hada_t2", "lokr_t2", "diff_b", "bias")
_PART_RE = re.compile(r"^(.+?)\.(" + "|".join(re.escape(p) for p in sorted(
    [*PARTS, *UNSUPPORTED_PARTS], key=len, reverse=True)) + r")$")
# PEFT keys may carry the adapter's name: `lora_A.default.weight`.
_PEFT_ADAPTER = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.[A-Za-z0-9_]+\.weight$")
# diffusers' attention-processor LoRA (before PEFT): `attn1.processor.to_q_lora.down.weight`.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")

KOHYA_UNET = "lora_unet_"
KOHYA_TE = {"text_encoder": ("lora_te_",), "text_encoder_2": ()}
KOHYA_TE_SDXL = {"text_encoder": ("lora_te1_",), "text_encoder_2": ("lora_te2_",)}
KOHYA_TE_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")
DOTTED = ("unet.", "text_encoder.", "text_encoder_2.")
ADAPTED = ("unet", "text_encoder", "text_encoder_2")


class LoraMismatchError(UnsupportedModelError):
    """A well-formed LoRA that does not fit the model being loaded (another family, other shapes)."""

    def __init__(self, path, message: str, tensor: str | None = None):
        self.path, self.tensor = str(path), tensor
        where = self.path + (f", tensor '{tensor}'" if tensor else "")
        self._init_args = (path, message, tensor)
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        return type(self), self._init_args


@dataclass
class LoraModule:
    key: str  # the module key as the file spells it
    target: str  # canonical weight name ("unet.down_blocks.0.attentions.0.proj_in.weight")
    kind: str  # "lora" | "loha" | "lokr" | "full"
    parts: dict[str, RawTensor]  # our part name -> raw tensor (alpha, dora_scale, magnitude included)

    @property
    def dora(self) -> str | None:
        """"kohya" (dora_scale: strength blends to the decomposed weight), "peft" (magnitude vector) or None."""
        return "kohya" if "dora_scale" in self.parts else "peft" if "magnitude" in self.parts else None

    @property
    def rank(self) -> int | None:
        for part in ("down", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
            if part in self.parts:
                return self.parts[part].shape[0]
        return None


@dataclass
class LoraFile:
    path: str
    name: str  # file name without its extension (A1111's <lora:name:...>)
    modules: list[LoraModule]
    unmatched: list[str]  # keys whose module is not a layer of this model (or whose part sdcpp does not take)
    metadata: dict = field(default_factory=dict)
    format: str = "safetensors"  # or "ckpt"
    files: MappedFiles = field(default_factory=MappedFiles, repr=False)
    _sha256: str | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        """A1111's LoRA hash: the `sshs_model_hash` its metadata records (kohya writes it), else the sha256 of a
        .safetensors file's bytes after its header (kohya's / sd-webui-additional-networks' "addnet" hash, which
        metadata edits leave unchanged), else of the whole file (.ckpt / .pt)."""
        if self._sha256 is None:
            recorded = self.metadata.get("sshs_model_hash")
            if isinstance(recorded, str) and recorded:
                self._sha256 = recorded
                return recorded
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                if self.format == "safetensors":
                    f.seek(8 + int.from_bytes(f.read(8), "little"))
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def short_hash(self) -> str:
        """A1111's `Lora hashes` value: the first 12 hex digits of `sha256`."""
        return self.sha256[:12]

    def targets(self) -> list[str]:
        return sorted({m.target for m in self.modules})

    def array(self, module: LoraModule, part: str) -> np.ndarray:
        return read_f32(self.files, self.path, module.parts[part])

    def close(self):
        self.files.close()


def read_f32(files: MappedFiles, path: str, t: RawTensor) -> np.ndarray:
    if t.dtype not in NUMPY_DTYPE:
        raise ModelFormatError(path, f"LoRA tensors must be floats, got {t.dtype}", tensor=t.name, rule="lora-dtype")
    raw = files.view(t).view(NUMPY_DTYPE[t.dtype])
    if t.dtype == "bf16":
        arr = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        arr = raw.astype(np.float32)
    arr = arr.reshape(t.shape)
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(path, "holds NaN or infinite values", tensor=t.name, rule="lora-finite")
    return arr


def module_table(shapes: dict[str, tuple[int, ...]], family: str | None) -> dict[str, str]:
    """Every spelling of every adaptable layer's module key -> its canonical weight name, from the canonical
    names of the model being loaded (`shapes`: canonical name -> shape)."""
    table: dict[str, str] = {}
    te_prefixes = KOHYA_TE_SDXL if family in ("sdxl", "sdxl_refiner") else KOHYA_TE
    unet_inner = [n[len("unet."):] for n in shapes if n.startswith("unet.")]
    try:
        layout = _unet_layout(unet_inner) if unet_inner else None
    except UnsupportedModelError:
        layout = None

    def add(key, name):
        old = table.setdefault(key, name)
        assert old == name, (key, old, name)

    for name, shape in shapes.items():
        comp, _, inner = name.partition(".")
        # Embedding tables are looked up, not multiplied: no LoRA adapts them (nor could a graph add one).
        if comp not in ADAPTED or not inner.endswith(".weight") or len(shape) < 2 or ".embeddings." in name:
            continue
        module = inner[:-len(".weight")]
        add(f"{comp}.{module}", name)
        if comp == "unet":
            add(KOHYA_UNET + module.replace(".", "_"), name)
            ldm = unet_name(inner, *layout) if layout else None
            if ldm is not None:
                ldm_module = ldm[:-len(".weight")]
                add(KOHYA_UNET + ldm_module.replace(".", "_"), name)
                add(f"diffusion_model.{ldm_module}", name)  # ComfyUI's saved LoRAs: dotted LDM names
        else:
            # with and without `text_model.`: transformers 5's CLIPTextModel names its layers without it
            bare = module[len("text_model."):] if module.startswith("text_model.") else None
            if bare:
                add(f"{comp}.{bare}", name)
            for prefix in te_prefixes[comp]:
                add(prefix + module.replace(".", "_"), name)
                if bare:
                    add(prefix + bare.replace(".", "_"), name)
    return table


def split_key(key: str) -> tuple[str, str] | None:
    """A LoRA key -> (module key, our part name or the unsupported part), or None when no part ends it."""
    key = _PEFT_ADAPTER.sub(lambda m: f".{m.group(1)}.weight", key)
    if m := _PROCESSOR.search(key):
        leaf = "to_out.0" if m.group(1) == "to_out" else m.group(1)
        key = key[:m.start()] + f".{leaf}.lora.{m.group(2)}.weight"
    m = _PART_RE.match(key)
    if m is None:
        return None
    return m.group(1), PARTS.get(m.group(2), m.group(2))


def _kind(parts: dict) -> str | None:
    if "down" in parts or "up" in parts:
        return "lora"
    if any(p.startswith("hada_") for p in parts):
        return "loha"
    if any(p.startswith("lokr_") for p in parts):
        return "lokr"
    if "diff" in parts:
        return "full"
    return None


def _foreign(key: str, family: str | None, components: set[str]) -> str | None:
    """Why a module key cannot belong to this model, where its spelling says so."""
    sdxl = family in ("sdxl", "sdxl_refiner")
    if key.startswith(("lora_te1_", "lora_te2_")) and not sdxl:
        return "an SDXL LoRA (lora_te1_/lora_te2_ text encoder keys)"
    if key.startswith("lora_te_") and sdxl:
        return "an SD1/SD2 LoRA (lora_te_ text encoder keys)"
    if key.startswith("text_encoder_2.") and "text_encoder_2" not in components:
        return "a LoRA for a model with a second text encoder (SDXL)"
    return None


def read_lora(path, shapes: dict[str, tuple[int, ...]], family: str | None) -> LoraFile:
    """Read a LoRA file's header and resolve its modules on the model whose canonical {name: shape} is `shapes`.
    Raises ModelFormatError (a damaged file: names the file and tensor) or LoraMismatchError (a LoRA for another
    model)."""
    from ..io.open import read_source

    path = os.fspath(path)
    source = read_source(path)
    if source.format not in ("safetensors", "ckpt"):
        raise ModelFormatError(path, f"LoRA files are .safetensors or torch .ckpt/.pt, not {source.format}",
                               rule="lora-format")
    table = module_table(shapes, family)
    components = {n.partition(".")[0] for n in shapes}
    groups: dict[str, dict[str, RawTensor]] = {}
    unmatched: list[str] = []
    for t in source.tensors:
        split = split_key(t.name)
        if split is None:
            unmatched.append(t.name)
            continue
        key, part = split
        if part in UNSUPPORTED_PARTS:
            unmatched.append(t.name)
            continue
        parts = groups.setdefault(key, {})
        if part in parts:
            raise ModelFormatError(path, f"two tensors give the {part} of module '{key}' (also "
                                   f"'{parts[part].name}')", tensor=t.name, rule="lora-duplicate")
        parts[part] = t
    modules: list[LoraModule] = []
    foreign: list[tuple[str, str]] = []
    by_target: dict[str, str] = {}
    for key, parts in groups.items():
        kind = _kind(parts)
        target = table.get(key)
        if target is None or kind is None:
            why = _foreign(key, family, components)
            if why:
                foreign.append((key, why))
            unmatched += [t.name for t in parts.values()]
            continue
        if target in by_target:
            raise ModelFormatError(path, f"modules '{by_target[target]}' and '{key}' both adapt '{target}'",
                                   tensor=next(iter(parts.values())).name, rule="lora-duplicate")
        by_target[target] = key
        modules.append(LoraModule(key, target, kind, parts))
    if foreign:
        key, why = foreign[0]
        raise LoraMismatchError(path, f"this looks like {why}, not one for this {family or 'model'}; "
                                f"{len(foreign)} modules fit no layer (first: '{key}')")
    for module in modules:
        check_module(path, module, shapes[module.target])
    if not modules:
        first = source.tensors[0].name if source.tensors else None
        raise LoraMismatchError(path, f"none of its {len(source.tensors)} tensors adapts a layer of this "
                                f"{family or 'model'} (first: '{first}'): a LoRA for another model family?")
    lora = LoraFile(path, os.path.splitext(os.path.basename(path))[0], modules, unmatched, source.metadata,
                    source.format)
    for name in unmatched:
        log.warning("%s: LoRA tensor '%s' adapts no layer of this model; not applied", path, name)
    return lora


def check_module(path: str, m: LoraModule, shape: tuple[int, ...]):
    """The module's parts are consistent with each other and with the layer it adapts (shape: the layer's)."""
    out = shape[0]
    fan_in = int(np.prod(shape[1:]))
    p = m.parts

    def fail(part, message, mismatch=False):
        if mismatch:
            raise LoraMismatchError(path, f"{message}; it adapts '{m.target}' of shape {list(shape)}: a LoRA for "
                                    "another model?", tensor=p[part].name)
        raise ModelFormatError(path, message, tensor=p[part].name, rule="lora-shape")

    for part, t in p.items():
        if part == "alpha":
            if t.numel != 1:
                fail(part, f"alpha must be a scalar, got shape {list(t.shape)}")
            continue
        if len(t.shape) < 1 or any(d <= 0 for d in t.shape):
            fail(part, f"shape {list(t.shape)} is not a weight")
    if m.kind == "lora":
        for need in ("down", "up"):
            if need not in p:
                other = "up" if need == "down" else "down"
                fail(other, f"module '{m.key}' has no {need} matrix")
        down, up = p["down"].shape, p["up"].shape
        if len(down) < 2 or len(up) < 2:
            fail("down", f"down {list(down)} / up {list(up)} are not matrices")
        r = down[0]
        if up[1] != r or int(np.prod(up[2:])) != 1:
            fail("up", f"up {list(up)} does not take the down matrix's rank {r}")
        if "mid" in p:
            mid = p["mid"].shape
            if len(mid) != 4 or mid[:2] != (r, r) or int(np.prod(down[2:])) != 1:
                fail("mid", f"lora_mid {list(mid)} with down {list(down)} is not LoCon's CP form")
            n_in = down[1] * mid[2] * mid[3]
        else:
            n_in = int(np.prod(down[1:]))
        if up[0] != out or n_in != fan_in:
            fail("up" if up[0] != out else "down", f"LoRA of {n_in} inputs -> {up[0]} outputs", mismatch=True)
    elif m.kind == "loha":
        for need in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
            if need not in p:
                fail(next(iter(p)), f"LoHa module '{m.key}' has no {need}")
        for i in ("1", "2"):
            a, b = p[f"hada_w{i}_a"].shape, p[f"hada_w{i}_b"].shape
            if len(a) != 2 or a[1] != b[0]:
                fail(f"hada_w{i}_a", f"hada_w{i}_a {list(a)} and hada_w{i}_b {list(b)} do not multiply")
            if a[0] != out or int(np.prod(b[1:])) != fan_in:
                fail(f"hada_w{i}_b", f"LoHa factor of {int(np.prod(b[1:]))} inputs -> {a[0]} outputs", True)
    elif m.kind == "lokr":
        dims = []
        for i in ("1", "2"):
            if f"lokr_w{i}" in p:
                dims.append(p[f"lokr_w{i}"].shape)
            elif f"lokr_w{i}_a" in p and f"lokr_w{i}_b" in p:
                a, b = p[f"lokr_w{i}_a"].shape, p[f"lokr_w{i}_b"].shape
                if len(a) != 2 or a[1] != b[0]:
                    fail(f"lokr_w{i}_a", f"lokr_w{i}_a {list(a)} and lokr_w{i}_b {list(b)} do not multiply")
                dims.append((a[0], *b[1:]))
            else:
                fail(next(iter(p)), f"LoKr module '{m.key}' has neither lokr_w{i} nor lokr_w{i}_a/_b")
        (o1, *i1), (o2, *i2) = dims
        if o1 * o2 != out or int(np.prod(i1)) * int(np.prod(i2)) != fan_in:
            part = "lokr_w2" if "lokr_w2" in p else "lokr_w2_b"
            fail(part, f"kron of {list(dims[0])} and {list(dims[1])} does not give the layer's shape", True)
    elif m.kind == "full":
        if int(np.prod(p["diff"].shape)) != out * fan_in or p["diff"].shape[0] != out:
            fail("diff", f"diff {list(p['diff'].shape)} is not the layer's shape", True)
    if "dora_scale" in p:
        s = p["dora_scale"].shape
        if int(np.prod(s)) not in (out, int(np.prod(shape[1:2]))):
            fail("dora_scale", f"dora_scale {list(s)} fits neither the outputs nor the inputs", True)
    if "magnitude" in p and int(np.prod(p["magnitude"].shape)) != out:
        fail("magnitude", f"lora_magnitude_vector {list(p['magnitude'].shape)} does not have {out} outputs", True)
