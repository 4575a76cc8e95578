"""A loaded Model's LoRAs across calls: the ones merged at load (fixed), the runtime ones with their default
strengths, LoRAs a call adds (by path, by name from `lora_dir`, or by A1111 `<lora:name:strength>` tags in the
prompt), and the terms each call sets on the graphs."""

from __future__ import annotations

import json
import logging
import os
import re

from . import _strength, parse_loras
from .files import read_lora
from .runtime import RuntimeLora

log = logging.getLogger("sdcpp")

# A1111's extra-network tag: <lora:name>, <lora:name:multiplier> (a further ":..." field, A1111's separate unet
# multiplier, is not taken: one strength applies to every layer).
TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def strip_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:...>` tags, and the (name, strength) of each (A1111 removes them before the
    text is encoded; the multiplier defaults to 1)."""
    found = []

    def take(m):
        text = (m.group(2) or "").strip()
        try:
            strength = float(text) if text else 1.0
        except ValueError:
            raise ValueError(f"<lora:{m.group(1)}:{text}>: the multiplier is not a number") from None
        found.append((m.group(1).strip(), _strength(strength, m.group(0))))
        return ""

    return TAG.sub(take, prompt), found


class LoraSession:
    def __init__(self, weights, lora_dir=None, n_threads: int = 0):
        self.weights = weights
        self.lora_dir = None if lora_dir is None else os.fspath(lora_dir)
        if self.lora_dir is not None and not os.path.isdir(self.lora_dir):
            raise FileNotFoundError(f"lora_dir {self.lora_dir} is not a folder")
        self.n_threads = n_threads
        self.shapes = {e.name: e.shape for e in weights.plan}
        self.family = weights.spec.family
        self.merged: dict[str, tuple] = {}  # abs path -> (LoraFile, strength)
        self.runtime: dict[str, RuntimeLora] = {}  # abs path -> its store
        self.defaults: dict[str, float] = {}  # abs path -> strength given at load
        loaded = weights.loras
        for item in (loaded.items if loaded else []):
            path = os.path.abspath(item.file.path)
            if item.merged:
                self.merged[path] = (item.file, item.strength)
            if item.runtime:
                self.runtime[path] = RuntimeLora(weights, item.file, item.runtime, item.strength, n_threads)
                self.defaults[path] = item.strength

    def files(self) -> dict:
        return {**{p: f for p, (f, _) in self.merged.items()}, **{p: r.lora for p, r in self.runtime.items()}}

    def resolve(self, name) -> str:
        """A path, or a LoRA's name (file name without extension: loaded ones first, then `lora_dir`)."""
        name = os.fspath(name)
        if os.path.isfile(name):
            return os.path.abspath(name)
        for path, f in self.files().items():
            if f.name == name:
                return path
        if self.lora_dir is not None:
            for suffix in ("", *SUFFIXES):
                path = os.path.join(self.lora_dir, name + suffix)
                if os.path.isfile(path):
                    return os.path.abspath(path)
        where = f" nor in lora_dir {self.lora_dir}" if self.lora_dir else " (no lora_dir given)"
        raise FileNotFoundError(f"LoRA '{name}' is not a file, not a loaded LoRA's name{where}")

    def _runtime_lora(self, path: str) -> RuntimeLora:
        if path not in self.runtime:
            f = read_lora(path, self.shapes, self.family)
            self.runtime[path] = RuntimeLora(self.weights, f, f.modules, 1.0, self.n_threads)
        return self.runtime[path]

    def activate(self, graphs, loras=None, prompt_tags=()) -> list:
        """Set this call's terms on `graphs`: the load's runtime strengths, updated by `loras` ({name or path:
        strength}, a list of pairs) and the prompt's tags. Returns [(LoraFile, strength)] of every LoRA in effect
        (merged ones included) for the PNG parameters."""
        asked = dict(self.defaults)
        for name, strength in [*parse_loras(loras), *prompt_tags]:
            path = self.resolve(name)
            if path in self.merged:
                if strength != self.merged[path][1]:
                    raise ValueError(f"LoRA {path} was merged into the weights at strength {self.merged[path][1]}; "
                                     "load it with lora_mode='runtime' to change its strength per call")
                continue
            asked[path] = strength
        terms = []
        active = [(f, s) for f, s in self.merged.values()]
        for path, strength in asked.items():
            if strength == 0:
                continue
            rl = self._runtime_lora(path)
            terms += rl.graph_terms(strength)
            active.append((rl.lora, strength))
        for g in graphs:
            g.set_lora(terms)
        return active


def hashes_field(active) -> str | None:
    """A1111's `Lora hashes` value: "name: <first 12 hex of sha256>, ..." (quoted, as A1111 quotes values holding
    ':' or ',')."""
    if not active:
        return None
    return json.dumps(", ".join(f"{f.name}: {f.short_hash}" for f, _ in active), ensure_ascii=False)
