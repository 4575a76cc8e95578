"""The canonical tensor index: every source, whatever its format, ends up as one of these."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import ModelFormatError
from .io.open import read_source
from .io.raw import MappedFiles, RawSource
from .names.canonicalize import CanonicalTensor, IngestNotes, canonicalize
from .names.tables import COMPONENTS

CONFIG_KEY = "sdcpp.config."  # GGUF key prefix holding a component's config as JSON


@dataclass
class TensorIndex:
    tensors: dict[str, CanonicalTensor]
    sources: list[RawSource]
    notes: IngestNotes
    overridden: list[tuple[str, str, str]] = field(default_factory=list)  # (component, replaced file, by file)
    files: MappedFiles = field(default_factory=MappedFiles, repr=False)
    # LoRAs of this load (sdcpp.lora.LoraSet, or None) and the merges they add at ingest: canonical name ->
    # f(float32 source weight) -> adapted weight, applied before the plan's type conversion.
    loras: object = None
    merges: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.tensors.values())

    def __len__(self):
        return len(self.tensors)

    def __getitem__(self, name) -> CanonicalTensor:
        return self.tensors[name]

    def __contains__(self, name):
        return name in self.tensors

    def components(self) -> list[str]:
        present = {t.component for t in self}
        return [c for c in COMPONENTS if c in present]

    def of(self, component) -> list[CanonicalTensor]:
        return [t for t in self if t.component == component]

    @property
    def metadata(self) -> dict:
        """Metadata of the main source (the first one)."""
        return self.sources[0].metadata if self.sources else {}

    @property
    def configs(self) -> dict[str, dict]:
        """component -> architecture config (diffusers config.json, or what sdcpp's GGUF recorded of it).
        Shapes fix most hyper-parameters; configs add what shapes cannot tell, like attention head counts."""
        out: dict[str, dict] = {}
        for source in self.sources:
            # Only for the components whose tensors came from this source: a config describes those tensors, not
            # the ones of a later file that replaced the component (a config-less TAESD given as vae= over a
            # diffusers folder's AutoencoderKL).
            held = self._held_by(source)
            out.update({c: cfg for c, cfg in source.configs.items() if c in held})
            for key, value in source.metadata.items():
                if key.startswith(CONFIG_KEY) and isinstance(value, str) and key[len(CONFIG_KEY):] in held:
                    try:
                        config = json.loads(value)
                    except (ValueError, RecursionError):
                        continue  # a damaged optional hint: shapes and family defaults still apply
                    if isinstance(config, dict):
                        out[key[len(CONFIG_KEY):]] = config
        return out

    def _held_by(self, source) -> set[str]:
        """Components whose tensors come from `source` (a file, or a folder holding them)."""
        root = os.path.join(os.path.abspath(source.path), "")
        return {t.component for t in self
                if t.source.path == source.path or os.path.abspath(t.source.path).startswith(root)}

    def close(self):
        self.files.close()
        if self.loras is not None:
            self.loras.close()


def model_paths(model) -> list:
    """`model` as a list of paths: one path, or a list of them."""
    return [model] if isinstance(model, (str, os.PathLike)) else list(model)


def open_model(model, *, unet=None, vae=None, text_encoder=None, text_encoder_2=None) -> TensorIndex:
    """Read headers of `model` (a path or a list of paths, later ones overriding the components they
    hold) plus optional single-component files, e.g. `vae="sdxl_vae.safetensors"`. A single component may be a
    list of files that together hold it (TAESD's `taesd_encoder` and `taesd_decoder` halves)."""
    paths = model_paths(model)
    if not paths:
        raise ValueError("no model path given")
    jobs = [(p, None, i) for i, p in enumerate(paths)]  # (path, component hint, group: files merged together)
    singles = zip(COMPONENTS, (text_encoder, text_encoder_2, unet, vae), strict=True)
    for comp, value in singles:
        if value is not None:
            jobs += [(p, comp, comp) for p in model_paths(value)]

    tensors: dict[str, CanonicalTensor] = {}
    owner: dict[str, object] = {}  # component -> the group its tensors come from
    sources, overridden = [], []
    notes = IngestNotes([], [])
    for path, hint, group in jobs:
        source = read_source(path, hint)
        canon, n = canonicalize(source, hint)
        sources.append(source)
        notes.ignored += n.ignored
        notes.unknown += n.unknown
        # A later file replaces whole components: mixing two VAEs tensor by tensor is never intended. Files given
        # together for one component (a list) add up instead, each tensor from one of them.
        for comp in sorted({t.component for t in canon}):
            old = [name for name, t in tensors.items() if t.component == comp]
            if old and owner[comp] != group:
                overridden.append((comp, tensors[old[0]].source.path, source.path))
                for name in old:
                    del tensors[name]
            owner[comp] = group
        for t in canon:
            if t.name in tensors:
                raise ModelFormatError(source.path, f"maps to '{t.name}', which {tensors[t.name].source.path} "
                                       "already provides", tensor=t.source.name, rule="duplicate")
            tensors[t.name] = t
    return TensorIndex(tensors, sources, notes, overridden)
