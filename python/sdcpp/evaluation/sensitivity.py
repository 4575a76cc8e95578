"""Per-layer sensitivity: quantize one group of tensors at a time and measure the error it causes at its
component's output, per type, ranked.

How it stays cheap: the model is loaded once in f32, and a group's weights are replaced by their quantized values
(quantized to the type the plan would choose for them, then dequantized back into the f32 tensors), measured,
and restored. That is the weight error of the type exactly; what it leaves out is the 8-bit rounding of the
activations in ggml's quantized products below f32_matmul_min_cols columns (small products: time embeddings, text
context, deep low-resolution blocks), so the ranking is of weight sensitivity. The probes are those of
`evaluate()`: the text encoders' conditioning per prompt, one UNet call at three sigmas (one batch), and the VAE
decoding the reference's final latents."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .. import checks, ggml_types
from .._native import core
from ..errors import Cancelled
from ..pipeline.conditioning import build_conditioning
from ..plan import decide
from ..request import QuantRequest
from . import metrics
from .groups import group_rule, groups, rank_of
from .run import decode_image, unet_predictions

COMPONENT_PARTS = {"unet": "unet", "text_encoder": "text encoders", "text_encoder_2": "text encoders", "vae": "vae"}


def part_of(name: str, component: str) -> str:
    """Which probe sees a tensor: the VAE's encoder half (img2img, inpainting) is probed apart from its decoder."""
    if component == "vae" and name.startswith(("vae.encoder.", "vae.quant_conv.")):
        return "vae encoder"
    return COMPONENT_PARTS[component]


@dataclass
class GroupResult:
    group: str
    component: str
    part: str  # the probe that measures it: "unet", "text encoders", "vae" (decoder) or "vae encoder"
    rule: str  # the group as a quantization rule regex
    tensors: int
    bytes: dict[str, int]  # stored bytes of the group per type (and "f32", the reference)
    types: dict[str, dict[str, str]]  # type -> tensor -> the type the plan chooses for it (fallbacks applied)
    error: dict[str, float] = field(default_factory=dict)  # type -> squared relative error at the component output


@dataclass
class SensitivityReport:
    model: str
    types: list[str]
    groups: dict[str, GroupResult]  # in rule order
    probe: dict  # prompts, seed, size, sigmas
    fixed_bytes: int = 0  # bytes of tensors in no quantizable group (norms, biases: f32 whatever the type)
    elapsed_s: float = 0.0

    def ranking(self, qtype: str) -> list[GroupResult]:
        return sorted((g for g in self.groups.values() if qtype in g.error), key=lambda g: -g.error[qtype])

    def to_dict(self) -> dict:
        return dict(model=self.model, types=self.types, probe=self.probe, fixed_bytes=self.fixed_bytes,
                    elapsed_s=self.elapsed_s,
                    groups=[dict(group=g.group, component=g.component, part=g.part, rule=g.rule, tensors=g.tensors,
                                 bytes=g.bytes, error=g.error) for g in self.groups.values()])

    def table(self, top: int = 10) -> str:
        """The `top` groups per type by the error they cause alone (rel-L2 at the component's output)."""
        lines = []
        for t in self.types:
            ranked = self.ranking(t)
            lines.append(f"{t}: {len(ranked)} groups; the {min(top, len(ranked))} that cost most")
            lines.append(f"  {'group':<64}{'rel-L2':>10}{'bytes':>12}")
            for g in ranked[:top]:
                lines.append(f"  {g.group:<64}{g.error[t] ** 0.5:>10.2e}{g.bytes[t]:>12}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"sensitivity of {self.model} ({self.elapsed_s:.0f} s)\n" + self.table()


class Probe:
    """The reference outputs of each component on fixed inputs, and the error of the current weights there."""

    def __init__(self, model, prompts, seed: int, width: int, height: int, sigmas, steps: int, sampler: str,
                 guidance_scale: float):
        self.model, self.prompts, self.seed, self.sigmas = model, list(prompts), seed, sigmas
        self.size = (height, width)
        latents = model.generate(self.prompts[0], seed=seed, steps=steps, sampler=sampler, width=width,
                                 height=height, guidance_scale=guidance_scale, progress=False).latents
        self.latents = latents[0]
        te = self.conditioning()
        image = decode_image(model, self.latents)
        self.image = image.transpose(2, 0, 1)[None] * np.float32(2) - np.float32(1)  # the VAE's [-1, 1] input
        self.reference = dict(te=te, unet=self.unet(te[0]), vae=image, vae_encoder=self.encode())

    def conditioning(self):
        h, w = self.size
        return [build_conditioning(self.model.prompt_encoder, p, "", height=h, width=w)[0] for p in self.prompts]

    def encode(self) -> np.ndarray | None:
        """The latent mean of the reference's own decoded image (None without a VAE encoder)."""
        if not self.model.weights.config.vae.arch.has_encoder:
            return None
        return self.model.vae.encode(self.image)

    def unet(self, cond) -> np.ndarray:
        h, w = self.size
        return unet_predictions(self.model, cond.as_dict(1), self.sigmas, self.seed, w, h)

    def error(self, part: str) -> float:
        """Squared relative L2 of `part`'s output against the reference (squares add up across groups)."""
        ref = self.reference
        if part == "unet":
            return metrics.rel_l2(self.unet(ref["te"][0]), ref["unet"]) ** 2
        if part == "vae":
            return metrics.rel_l2(decode_image(self.model, self.latents), ref["vae"]) ** 2
        if part == "vae encoder":
            return metrics.rel_l2(self.encode(), ref["vae_encoder"]) ** 2
        errs = []
        for got, want in zip(self.conditioning(), ref["te"], strict=True):
            errs.append(metrics.rel_l2(got.context, want.context) ** 2)
            if want.text_embeds is not None:
                errs.append(metrics.rel_l2(got.text_embeds, want.text_embeds) ** 2)
        return float(np.mean(errs))

    def total_error(self) -> dict[str, float]:
        """Every component's squared error at once (after several groups were replaced)."""
        parts = ["text encoders", "unet", "vae"]
        if self.reference["vae_encoder"] is not None:
            parts.append("vae encoder")
        return {part: self.error(part) for part in parts}


def _fake_quantized(weights, name: str, qtype: str) -> np.ndarray:
    """The f32 bytes of tensor `name` after a round trip through `qtype`."""
    e = weights.plan[name]
    data = weights.bytes(name).view(np.float32)
    rows, n = e.rows
    q = core().convert(data, "f32", rows, n, qtype, 0)
    return core().dequantize(q, qtype, rows * n).view(np.uint8)


def _row_bytes(entry, qtype: str) -> int:
    rows, n = entry.rows
    return rows * ggml_types.get(qtype).row_bytes(n)


class SensitivityRun:
    """The f32 model, its probe and its groups: measures groups one at a time, or any assignment of types to
    groups at once (for budget quantization)."""

    def __init__(self, model, types, prompts, seed: int, steps: int, width, height, sampler: str, components,
                 n_threads: int, prediction, load: dict, guidance_scale: float = 7.0):
        from ..index import open_model
        from ..pipeline import Model
        from .compare import _parts, probe_sigmas

        self.types = [QuantRequest.make(type=t).type for t in types]
        if not self.types or not prompts:
            raise ValueError("sensitivity needs at least one type and one prompt")
        self.source = model
        self.model = m = Model(model, type="f32", n_threads=n_threads, prediction=prediction, progress=False, **load)
        w, h = width or m.default_size, height or m.default_size
        sigmas = probe_sigmas(m.spec.family, steps, sampler, "discrete")
        self.probe = Probe(m, prompts, checks.integer("seed", seed, minimum=0), w, h, sigmas, steps, sampler,
                           guidance_scale)
        self.settings = dict(prompts=list(prompts), seed=seed, width=w, height=h, sigmas=list(sigmas), steps=steps,
                             sampler=sampler, guidance_scale=guidance_scale)
        index = open_model(model, **load)
        try:
            self.groups = _group_table(index, m.weights, self.types, _parts(components))
        finally:
            index.close()
        grouped = {n for g in self.groups.values() for n in g.types[self.types[0]]}
        self.fixed_bytes = sum(_row_bytes(e, "f32") for e in m.weights.plan if e.name not in grouped)

    def _replace(self, choice: dict[str, str]) -> dict[str, np.ndarray]:
        """Put the fake-quantized values of `choice` (tensor -> type) in place; returns the originals."""
        originals = {}
        for name, chosen in choice.items():
            if chosen != "f32":
                originals[name] = self.model.weights.bytes(name)
                self.model.weights._store.set(name, _fake_quantized(self.model.weights, name, chosen))
        return originals

    def _restore(self, originals: dict[str, np.ndarray]):
        for name, data in originals.items():
            self.model.weights._store.set(name, data)

    def measure_group(self, g: GroupResult, qtype: str) -> float:
        originals = self._replace(g.types[qtype])
        try:
            return self.probe.error(g.part)
        finally:
            self._restore(originals)

    def measure_assignment(self, assignment: dict[str, str]) -> dict[str, float]:
        """Every part's squared error with each group of `assignment` (group -> type, "f32" = untouched) at once."""
        choice = {}
        for gid, t in assignment.items():
            if t != "f32":
                choice.update(self.groups[gid].types[t])
        originals = self._replace(choice)
        try:
            return self.probe.total_error()
        finally:
            self._restore(originals)

    def run(self, progress=True) -> SensitivityReport:
        start = time.perf_counter()
        work = [(g, t) for g in self.groups.values() for t in self.types
                if any(v != "f32" for v in g.types[t].values())]
        bar = None if callable(progress) else tqdm(total=len(work), desc="sensitivity", unit="group",
                                                   disable=None if progress else True)
        try:
            for done, (g, t) in enumerate(work):
                if callable(progress) and progress(done, len(work), g.group) is False:
                    raise Cancelled(f"sensitivity cancelled after {done} of {len(work)} measurements")
                g.error[t] = self.measure_group(g, t)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        for g in self.groups.values():  # groups a type leaves f32 cause no error
            for t in self.types:
                g.error.setdefault(t, 0.0)
        from ..index import model_paths

        return SensitivityReport(str(model_paths(self.source)[0]), self.types, self.groups, self.settings,
                                 self.fixed_bytes, time.perf_counter() - start)


def sensitivity(model, types=("q8_0", "q4_K", "q4_0"), prompts=("a photograph of a cat on a sofa, sharp focus",),
                seed: int = 0, *, steps: int = 8, width: int | None = None, height: int | None = None,
                sampler: str = "euler", guidance_scale: float = 7.0, components="all", n_threads: int = 0,
                progress=True, unet=None, vae=None, text_encoder=None, text_encoder_2=None,
                prediction=None) -> SensitivityReport:
    """Quantize one tensor group at a time to each type and measure the error at its component's output (see
    the module docstring). Returns the groups with their bytes and errors per type, for `SensitivityReport.ranking`
    and for budget quantization (`sdcpp.quantize(..., budget=...)`)."""
    load = {k: v for k, v in dict(unet=unet, vae=vae, text_encoder=text_encoder,
                                  text_encoder_2=text_encoder_2).items() if v is not None}
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    run = SensitivityRun(model, types, prompts, seed, steps, width, height, sampler, components,
                         checks.threads(n_threads), prediction, load, guidance_scale)
    return run.run(progress)


def _group_table(index, weights, types, parts) -> dict[str, GroupResult]:
    """Every group of the selected components with its tensors' chosen type per request type."""
    config = weights.config
    out = {}
    for gid, names in groups(weights.names()).items():
        comp = weights.plan[names[0]].component
        if COMPONENT_PARTS[comp] not in parts:
            continue
        rule = group_rule(gid, rank_of(gid))
        per_type = {}
        for t in types:
            request = QuantRequest.make(type="f32", rules=[f"{rule}={t}"])
            per_type[t] = {n: decide(index[n], config, request)[1] for n in names}
        if all(v == "f32" for choice in per_type.values() for v in choice.values()):
            continue  # 1-D and small tensors only: nothing to choose
        nbytes = {t: sum(_row_bytes(weights.plan[n], per_type[t][n]) for n in names) for t in types}
        nbytes["f32"] = sum(_row_bytes(weights.plan[n], "f32") for n in names)
        out[gid] = GroupResult(gid, comp, part_of(names[0], comp), rule, len(names), nbytes, per_type)
    return out
