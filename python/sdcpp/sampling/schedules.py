"""Noise schedules: SD's discrete training schedule and the sigma tables samplers walk.

Conventions (k-diffusion's "variance exploding" view of a VP model):
    x_t = x_0 + sigma * eps,   sigma(t) = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])
A sampler walks a descending float32 array `sigmas` of n + 1 entries; the last one is the level the run ends at
(0, or the smallest training sigma for DDIM-style "sigma_min" endings).

The tables reproduce diffusers 0.42's schedulers (`set_timesteps(n)` -> `.sigmas`, `.timesteps`), whose families
space timesteps differently (see `spaced_timesteps`). Where diffusers has quirks (float32 betas, rounding or
truncating timesteps) we copy them on purpose so that tables agree to float32 precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TRAIN_STEPS = 1000
SD_BETA_START = 0.00085  # "scaled_linear" schedule of SD1, SD2 and SDXL (their scheduler_config.json)
SD_BETA_END = 0.012

SPACINGS = ("leading", "trailing", "linspace")
# Which diffusers schedulers each style stands for; they differ in how they space discrete timesteps and in the
# sigma range their Karras/exponential tables span.
STYLES = {
    "euler": "EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete, KDPM2Discrete (k-diffusion ports)",
    "dpmsolver": "DPMSolverMultistep, DPMSolverSinglestep",
    "ddim": "DDIM (and DDPM)",
}


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)` as torch's CPU kernel computes it.

    The kernel runs forward from `start` for the first half and backward from `end` for the second, in float32;
    x86 builds (AVX2/AVX512) contract `start + step * i` into one fused multiply-add, which we emulate by doing
    the product and sum in float64 and rounding once. (Builds without FMA differ in the last bit only.)
    """
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    k = np.where(i < steps // 2, i, steps - 1 - i).astype(np.float64)
    forward = (np.float64(start32) + np.float64(step) * k).astype(np.float32)
    backward = (np.float64(end32) - np.float64(step) * k).astype(np.float32)
    return np.where(i < steps // 2, forward, backward)


def scaled_linear_alphas_cumprod(
    steps: int = TRAIN_STEPS, beta_start: float = SD_BETA_START, beta_end: float = SD_BETA_END, exact: bool = False
) -> np.ndarray:
    """alphas_cumprod (float32, t = 0..steps-1) of the "scaled_linear" betas: linspace(sqrt(b0), sqrt(b1))**2.

    exact=False: diffusers' arithmetic (float32 betas, product accumulated in double as torch.cumprod does).
    exact=True: float64 throughout, as the original CompVis/LDM code builds the buffer stored in checkpoints.
    The two differ by up to ~1e-5 relative in sigma; diffusers parity needs the former.
    """
    if exact:
        betas = np.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=np.float64) ** 2
        return np.cumprod(1.0 - betas).astype(np.float32)
    root = _torch_linspace_f32(beta_start**0.5, beta_end**0.5, steps)
    alphas = np.float32(1) - root * root
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


class TrainSchedule:
    """The discrete schedule a model was trained on, with conversions between timestep t and sigma."""

    def __init__(self, alphas_cumprod: np.ndarray):
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float32)
        a = self.alphas_cumprod
        self.sigmas = np.sqrt((np.float32(1) - a) / a)  # float32, ascending in t, like diffusers'
        self.log_sigmas = np.log(self.sigmas)

    @classmethod
    def sd(cls, exact: bool = False) -> TrainSchedule:
        """SD1 / SD2 / SDXL: scaled_linear 0.00085 -> 0.012 over 1000 steps."""
        return cls(scaled_linear_alphas_cumprod(exact=exact))

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_to_sigma(self, t) -> np.ndarray:
        """Linear interpolation of sigma between integer timesteps (diffusers' `interpolation_type="linear"`)."""
        return np.interp(t, np.arange(self.steps), self.sigmas)

    def t_to_sigma_log(self, t) -> np.ndarray:
        """Sigma at fractional timesteps by linear interpolation in log-sigma (k-diffusion's
        `DiscreteSchedule.t_to_sigma`, used by A1111's and ComfyUI's sgm_uniform)."""
        return np.exp(np.interp(t, np.arange(self.steps), self.log_sigmas.astype(np.float64)))

    def sigma_to_t(self, sigma) -> np.ndarray:
        """Fractional timestep of a sigma by linear interpolation in log-sigma, clamped to [0, steps - 1].

        Same arithmetic as diffusers' `EulerDiscreteScheduler._sigma_to_t` (float32 log table).
        """
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        low = np.clip(np.searchsorted(self.log_sigmas, log_sigma, side="right") - 1, 0, self.steps - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
        return (1 - w) * low + w * (low + 1)


# ---------------------------------------------------------------------------------------------------------------
# Discrete timestep spacings (Table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed",
# arXiv:2305.08891), in each diffusers family's variant.


def spaced_timesteps(
    n: int, spacing: str = "leading", steps_offset: int = 1, *, style: str = "euler", train_steps: int = TRAIN_STEPS
) -> np.ndarray:
    """n descending training timesteps (float64; integers except Euler-style "linspace").

    leading:  multiples of train_steps // n, plus steps_offset (SD's default: 901, 801, ..., 1 for n = 10)
    trailing: round(train_steps - k * train_steps / n) - 1 (starts at the last timestep, 999)
    linspace: evenly from 999 down to 0
    The DPM-Solver family spaces n + 1 points and drops the one at t = 0 for leading/linspace; DDIM and the
    DPM-Solver family round linspace to integers; the Euler family keeps it fractional.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"timestep spacing must be one of {SPACINGS}, not {spacing!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {tuple(STYLES)}, not {style!r}")
    if spacing == "trailing":
        return np.round(np.arange(train_steps, 0, -train_steps / n)) - 1.0
    points = n + 1 if style == "dpmsolver" else n
    if spacing == "leading":
        t = (np.arange(points) * (train_steps // points))[::-1] + float(steps_offset)
    elif style == "euler":
        t = np.linspace(0, train_steps - 1, points, dtype=np.float32)[::-1].astype(np.float64)
    else:
        t = np.linspace(0, train_steps - 1, points).round()[::-1]
    return t[:n]


def lcm_timesteps(n: int, original_steps: int = 50, train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """LCM's schedule (diffusers LCMScheduler): n of the `original_steps` distillation timesteps, evenly by index.

    Distillation timesteps are k*c - 1 for c = train_steps // original_steps (19, 39, ..., 999 for 50 steps).
    """
    if not 1 <= n <= original_steps:
        raise ValueError(f"LCM needs 1 <= steps <= original_steps ({original_steps}), got {n}")
    c = train_steps // original_steps
    origin = (np.arange(1, original_steps + 1) * c - 1)[::-1]
    picks = np.floor(np.linspace(0, original_steps, num=n, endpoint=False)).astype(np.int64)
    return origin[picks].astype(np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Continuous sigma tables (n values, no final entry).


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 (EDM, arXiv:2206.00364 eq. 5): uniform in sigma**(1/rho), rho = 7."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """Uniform in log-sigma (k-diffusion's get_sigmas_exponential)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b): the CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of `beta_cdf` (scipy.stats.beta.ppf) by bisection to float64 resolution."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def beta_sigmas(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """"Beta Sampling is All You Need" (Lee et al. 2024, arXiv:2407.12173): sigmas at the Beta(0.6, 0.6) quantiles
    of 1 - linspace(0, 1, n), mapped linearly onto [sigma_min, sigma_max] (diffusers' `use_beta_sigmas`, A1111's
    "Beta" schedule)."""
    q = 1.0 - np.linspace(0, 1, n)
    return np.array([sigma_min + beta_ppf(float(v), alpha, beta) * (sigma_max - sigma_min) for v in q])


def sgm_uniform_sigmas(n: int, train: TrainSchedule) -> np.ndarray:
    """SGM uniform (A1111 / ComfyUI "sgm_uniform"): n timesteps evenly from the last training timestep to 0 (the
    (n + 1)-th, t = 0, dropped), sigma by log-linear interpolation of the training table."""
    t = np.linspace(train.steps - 1, 0, n + 1, dtype=np.float32)[:-1].astype(np.float64)
    return train.t_to_sigma_log(t)


def simple_timesteps(n: int, train_steps: int = TRAIN_STEPS) -> np.ndarray:
    """A1111 / ComfyUI "simple": every (train_steps / n)-th training timestep from the last, index truncated."""
    return (train_steps - 1 - np.floor(np.arange(n) * (train_steps / n))).astype(np.float64)


# Align Your Steps (Sabour, Fidler, Kreis 2024, arXiv:2404.14507): NVIDIA's published 10-step schedules, as
# training timesteps (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html; also diffusers'
# `AysSchedules`). Sigmas are those of the training schedule at these timesteps; ComfyUI's and stable-diffusion.cpp's
# tables (14.6146412293, 6.4745760956, ...) are the same numbers.
AYS_TIMESTEPS = {
    "sd1": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0),
    "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13, 0),
}


def loglinear_interp(values: np.ndarray, count: int) -> np.ndarray:
    """Resample a decreasing positive sequence to `count` points, linearly in log and in relative position.

    The interpolation NVIDIA's AYS guide gives for step counts other than 10 (ComfyUI uses it as is).
    """
    values = np.asarray(values, dtype=np.float64)
    xs = np.linspace(0, 1, len(values))
    ys = np.log(values[::-1])
    return np.exp(np.interp(np.linspace(0, 1, count), xs, ys))[::-1].copy()


def ays_sigmas(n: int, model: str, train: TrainSchedule) -> np.ndarray:
    """AYS sigmas for n steps: n + 1 values, the last replaced by 0 (as NVIDIA's guide and ComfyUI do)."""
    if model not in AYS_TIMESTEPS:
        raise ValueError(f"AYS tables exist for {tuple(AYS_TIMESTEPS)}, not {model!r}")
    sigmas = train.sigmas[list(AYS_TIMESTEPS[model])].astype(np.float64)
    if n + 1 != len(sigmas):
        sigmas = loglinear_interp(sigmas, n + 1)
    sigmas[-1] = 0.0
    return sigmas


# ---------------------------------------------------------------------------------------------------------------
# Whole tables.


@dataclass(frozen=True)
class StepTable:
    """What a run walks: `sigmas` (float32, n + 1, descending, last = end level) and the model timestep of each
    of the first n sigmas (`timesteps`, float64) as the corresponding diffusers scheduler reports it."""

    sigmas: np.ndarray
    timesteps: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.timesteps)


KINDS = ("discrete", "karras", "exponential", "ays", "lcm", "beta", "sgm_uniform", "simple")


def step_table(
    train: TrainSchedule,
    n: int,
    kind: str = "discrete",
    *,
    spacing: str = "leading",
    steps_offset: int = 1,
    style: str = "euler",
    final: str = "zero",
    timestep_rounding: str | None = None,
    ays_model: str = "sd1",
    lcm_original_steps: int = 50,
) -> StepTable:
    """Sigmas and timesteps for an n-step run.

    kind: "discrete" (training sigmas at spaced timesteps), "karras", "exponential", "beta", "ays", "lcm",
        "sgm_uniform" or "simple" (the last two as A1111 and ComfyUI build them; they ignore style and spacing).
    style: which diffusers family to follow (see STYLES). It picks the spacing variant and, for karras,
        exponential and beta, the sigma range: the Euler family spans the spaced discrete sigmas (so it depends on
        `spacing`), the DPM-Solver family (and k-diffusion, A1111, stable-diffusion.cpp) the whole training range.
    final: "zero" or "sigma_min" (the smallest training sigma; diffusers' DDIM with set_alpha_to_one=False,
        final_sigmas_type="sigma_min").
    timestep_rounding: None, "round" or "floor": how the scheduler turns karras/exponential sigmas back into its
        reported timesteps (diffusers: Euler/Heun None, KDPM2 and DPM-Solver karras "round", DPM-Solver
        exponential and beta "floor" via an int64 cast). Sigmas are unaffected.
    """
    if kind not in KINDS:
        raise ValueError(f"sigma schedule must be one of {KINDS}, not {kind!r}")
    if n < 1:
        raise ValueError(f"need at least one step, got {n}")
    if kind in ("discrete", "karras", "exponential", "beta"):
        timesteps = spaced_timesteps(n, spacing, steps_offset, style=style, train_steps=train.steps)
        sigmas = train.t_to_sigma(timesteps)
        if kind != "discrete":
            if style == "euler":
                lo, hi = float(sigmas[-1]), float(sigmas[0])
            else:
                lo, hi = train.sigma_min, train.sigma_max
            make = {"karras": karras_sigmas, "exponential": exponential_sigmas, "beta": beta_sigmas}[kind]
            sigmas = make(n, lo, hi)
            timesteps = train.sigma_to_t(sigmas)
            if timestep_rounding == "round":
                timesteps = np.round(timesteps)
            elif timestep_rounding == "floor":
                timesteps = np.floor(timesteps)
            elif timestep_rounding is not None:
                raise ValueError(f"timestep_rounding must be None, 'round' or 'floor', not {timestep_rounding!r}")
    elif kind == "sgm_uniform":
        sigmas = sgm_uniform_sigmas(n, train)
        timesteps = train.sigma_to_t(sigmas)
    elif kind == "simple":
        timesteps = simple_timesteps(n, train.steps)
        sigmas = train.sigmas[timesteps.astype(np.int64)].astype(np.float64)
    elif kind == "lcm":
        timesteps = lcm_timesteps(n, lcm_original_steps, train.steps)
        sigmas = train.sigmas[timesteps.astype(np.int64)].astype(np.float64)
    else:  # ays: the table carries its own final 0
        sigmas = ays_sigmas(n, ays_model, train)[:-1]
        timesteps = train.sigma_to_t(sigmas)
    if final == "zero":
        end = 0.0
    elif final == "sigma_min":
        end = train.sigma_min
    else:
        raise ValueError(f"final must be 'zero' or 'sigma_min', not {final!r}")
    return StepTable(np.append(sigmas, end).astype(np.float32), np.asarray(timesteps, dtype=np.float64))


def diffusers_init_noise_sigma(sigmas: np.ndarray, spacing: str) -> float:
    """The factor diffusers' Euler-family pipelines scale the initial noise by.

    k-diffusion, A1111 and stable-diffusion.cpp start from noise * sigmas[0]; diffusers does so for "linspace"
    and "trailing" but uses sqrt(sigma_max**2 + 1) for "leading". Only needed to reproduce a diffusers run.
    """
    sigma_max = float(np.max(sigmas))
    return sigma_max if spacing in ("linspace", "trailing") else (sigma_max**2 + 1) ** 0.5
