"""What `sdcpp.evaluate` returns: one row per measured configuration, printable as a table, as a dict or JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

from ..report import human_bytes

MIB = 2**20


@dataclass
class Row:
    """One configuration against the reference. Errors are None where not measured (e.g. no VAE)."""

    label: str  # "q8_0", or "q8_0 unet only" for attribution runs
    request: dict  # the weight-type request it was loaded with
    bytes: dict[str, int]  # stored bytes per component (as inspect() reports them)
    load_s: float
    step_s: float | None  # median seconds per sampling step
    text_encode_s: float  # mean per prompt
    decode_s: float | None  # mean per image
    peak_rss: int  # of the configuration's own process
    te_rel_l2: float | None = None  # conditioning (context) of each prompt, mean over prompts
    te_cosine: float | None = None
    pooled_rel_l2: float | None = None  # SDXL's pooled text embedding
    unet_rel_l2: dict[str, float] = field(default_factory=dict)  # sigma -> one prediction's relative L2
    vae_psnr: float | None = None  # decoding the reference's final latents
    latent_rel_l2: float | None = None  # end to end: final latents, mean over images
    psnr: float | None = None  # end to end: images in [0, 1], mean over images
    ssim: float | None = None
    per_image: list[dict] = field(default_factory=list)  # prompt index, seed, latent_rel_l2, psnr, ssim

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def unet_mean(self) -> float | None:
        return sum(self.unet_rel_l2.values()) / len(self.unet_rel_l2) if self.unet_rel_l2 else None


def _num(v, fmt: str, width: int) -> str:
    if v is None:
        return f"{'-':>{width}}"
    if isinstance(v, float) and math.isinf(v):
        return f"{'inf':>{width}}"
    return f"{v:>{width}{fmt}}"


def _json_safe(value):
    """inf (a PSNR of identical images) as the string "inf": JSON has no infinity."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class EvaluationReport:
    model: str
    reference: str  # "f32" or "source"
    settings: dict  # prompts, seeds, steps, size, sampler, ...
    rows: list[Row]  # the reference first, then one per type
    attribution: dict[str, list[Row]] = field(default_factory=dict)  # type -> rows with one component quantized
    elapsed_s: float = 0.0
    images: dict[str, list] = field(default_factory=dict, repr=False)  # label -> [H, W, 3] arrays (not in JSON)

    def row(self, label: str) -> Row:
        return next(r for r in self.rows + [a for rows in self.attribution.values() for a in rows]
                    if r.label == label)

    def to_dict(self) -> dict:
        def flat(r):
            return dict(asdict(r), total_bytes=r.total_bytes)

        rows = [flat(r) for r in self.rows]
        attribution = {t: [flat(r) for r in rs] for t, rs in self.attribution.items()}
        return _json_safe(dict(model=self.model, reference=self.reference, settings=self.settings, rows=rows,
                               attribution=attribution, elapsed_s=self.elapsed_s))

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            tmp = f"{os.fspath(path)}.partial"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
        return text

    def table(self, markdown: bool = False) -> str:
        head = ["type", "size", "load s", "s/step", "TE s", "decode s", "peak RSS", "latent rel-L2", "PSNR dB",
                "SSIM", "TE rel-L2", "TE cos", "UNet rel-L2", "VAE PSNR"]
        widths = [14, 11, 8, 8, 7, 9, 12, 14, 8, 7, 10, 8, 12, 9]  # sizes and RSS read up to "1021.5 MiB"
        lines = []
        for r in self.rows:
            cells = [r.label, human_bytes(r.total_bytes), _num(r.load_s, ".2f", 7), _num(r.step_s, ".3f", 7),
                     _num(r.text_encode_s, ".3f", 6), _num(r.decode_s, ".3f", 9), human_bytes(r.peak_rss),
                     _num(r.latent_rel_l2, ".2e", 14), _num(r.psnr, ".2f", 8), _num(r.ssim, ".4f", 7),
                     _num(r.te_rel_l2, ".2e", 10), _num(r.te_cosine, ".5f", 8), _num(r.unet_mean, ".2e", 12),
                     _num(r.vae_psnr, ".2f", 9)]
            lines.append(cells)
        out = _render(head, widths, lines, markdown)
        if self.attribution:
            out += "\n\nwhere the error comes from (only this part quantized, the rest as the reference):\n"
            alines = [[t if i == 0 else "", r.label[len(t) + 1:].removesuffix(" only"),
                       _num(r.latent_rel_l2, ".2e", 14), _num(r.psnr, ".2f", 8), _num(r.ssim, ".4f", 7)]
                      for t, rs in self.attribution.items() for i, r in enumerate(rs)]
            out += _render(["type", "quantized", "latent rel-L2", "PSNR dB", "SSIM"], [14, 16, 14, 8, 7], alines,
                           markdown)
        return out

    def __str__(self) -> str:
        s = self.settings
        head = (f"{self.model}: {len(s['prompts'])} prompt(s) x {len(s['seeds'])} seed(s), {s['steps']} steps "
                f"{s['sampler']}, {s['width']}x{s['height']}, reference {self.reference}; "
                f"UNet probed at sigma {', '.join(f'{x:.3g}' for x in s['probe_sigmas'])}; {self.elapsed_s:.0f} s")
        return head + "\n" + self.table()


def _render(head, widths, lines, markdown: bool) -> str:
    if markdown:
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows += ["| " + " | ".join(str(c).strip() for c in cells) + " |" for cells in lines]
        return "\n".join(rows)
    rows = ["".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    rows.append("-" * sum(widths))
    for cells in lines:
        rows.append("".join(f"{str(c).strip():>{w}}" if i else f"{str(c).strip():<{w}}"
                            for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    return "\n".join(rows)
