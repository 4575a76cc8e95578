"""Which sigma table a sampler walks: each sampler follows its diffusers scheduler's table, so that a run
equals diffusers with that scheduler swapped in (timestep spacing "leading", offset 1: every SD release's
scheduler_config.json)."""

from __future__ import annotations

from ..config.families import FAMILIES
from ..sampling import KINDS, StepTable, TrainSchedule, get_sampler, step_table

# How the DPM-Solver family turns karras/exponential sigmas into the integer timesteps the model sees.
DPM_ROUNDING = {"karras": "round", "exponential": "floor", "beta": "floor"}


def check(sampler: str, schedule: str) -> None:
    get_sampler(sampler)
    if schedule not in KINDS:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {list(KINDS)}")


def make_table(train: TrainSchedule, steps: int, sampler: str, schedule: str, family: str,
               spacing: str = "leading", steps_offset: int = 1) -> tuple[StepTable, str | None]:
    """(table, timestep rounding for the Denoiser)."""
    check(sampler, schedule)
    record = get_sampler(sampler)
    rounding = DPM_ROUNDING.get(schedule) if record.style == "dpmsolver" else None
    table = step_table(train, steps, schedule, spacing=spacing, steps_offset=steps_offset, style=record.style,
                       final=record.final, timestep_rounding=rounding,
                       ays_model=FAMILIES[family].ays_model if family in FAMILIES else "sd1")
    return table, rounding


def img2img_start(steps: int, strength: float) -> int:
    """Index of the first step run for img2img: diffusers' init_timestep = int(steps * strength)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return steps - min(int(steps * strength), steps)
