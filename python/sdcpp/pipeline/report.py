"""What a generation returns: the images, per-image info, and a report of where time and memory went."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..report import human_bytes


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def weight_bytes(plan) -> dict[str, dict[str, int]]:
    """{component: {type: bytes as stored}} from a plan."""
    return {comp: {t: st["bytes_after"] for t, st in types.items()} for comp, types in plan.summary().items()}


@dataclass
class GenerationReport:
    """Seconds per stage (load is the Model's, paid once), per sampling step, peak RSS, weight bytes."""

    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    peak_rss: int = 0
    weights: dict[str, dict[str, int]] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def to_dict(self) -> dict:
        return dict(seed=self.seed, timings=dict(self.timings), step_times=list(self.step_times),
                    peak_rss=self.peak_rss, weights=self.weights)

    def __str__(self) -> str:
        lines = [f"seed {self.seed}"]
        lines += [f"{stage:<16}{sec:8.3f} s" for stage, sec in self.timings.items()]
        if self.step_times:
            n = len(self.step_times)
            lines.append(f"{'steps':<16}{sum(self.step_times):8.3f} s  ({n} x {sum(self.step_times) / n:.3f} s)")
        lines.append(f"{'peak RSS':<16}{human_bytes(self.peak_rss):>10}")
        for comp, types in self.weights.items():
            lines.append(f"{comp:<16}" + ", ".join(f"{t} {human_bytes(b)}" for t, b in types.items()))
        return "\n".join(lines)


class Images(list):
    """PIL images with `.info` (a dict per image: seed, parameters, ...), `.arrays` (float32 [B, H, W, 3] in
    [0, 1], before rounding to 8 bits), `.latents` (the sampler's final latents [B, 4, h, w], VAE-scaled: an
    `init_image` for another model, e.g. the SDXL refiner) and `.report`."""

    def __init__(self, images, info: list[dict], arrays, latents, report: GenerationReport):
        super().__init__(images)
        self.info = info
        self.arrays = arrays
        self.latents = latents
        self.report = report
