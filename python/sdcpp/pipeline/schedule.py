"""Which sigma table a sampler walks: each sampler follows its diffusers scheduler's table, so that a run
equals diffusers with that scheduler swapped in (timestep spacing "leading", offset 1: every SD release's
scheduler_config.json)."""

from __future__ import annotations

from ..sampling import KINDS, SAMPLERS, StepTable, TrainSchedule, step_table

# sampler -> diffusers scheduler family whose table it reproduces (see sampling.schedules.STYLES)
SAMPLER_STYLES = {"euler": "euler", "euler_a": "euler", "heun": "euler", "dpm2": "euler", "lcm": "euler",
                  "dpm++_2m": "dpmsolver", "dpm++_2s_a": "dpmsolver", "ddim": "ddim"}
# How the DPM-Solver family turns karras/exponential sigmas into the integer timesteps the model sees.
DPM_ROUNDING = {"karras": "round", "exponential": "floor"}


def check(sampler: str, schedule: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
    if schedule not in KINDS:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {list(KINDS)}")


def make_table(train: TrainSchedule, steps: int, sampler: str, schedule: str, family: str,
               spacing: str = "leading", steps_offset: int = 1) -> tuple[StepTable, str | None]:
    """(table, timestep rounding for the Denoiser)."""
    check(sampler, schedule)
    style = SAMPLER_STYLES[sampler]
    rounding = DPM_ROUNDING.get(schedule) if style == "dpmsolver" else None
    table = step_table(train, steps, schedule, spacing=spacing, steps_offset=steps_offset, style=style,
                       final="sigma_min" if sampler == "ddim" else "zero", timestep_rounding=rounding,
                       ays_model="sdxl" if family.startswith("sdxl") else "sd1")
    return table, rounding


def img2img_start(steps: int, strength: float) -> int:
    """Index of the first step run for img2img: diffusers' init_timestep = int(steps * strength)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return steps - min(int(steps * strength), steps)
