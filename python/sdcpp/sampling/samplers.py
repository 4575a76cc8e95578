"""Samplers: walk a descending sigma table from noise to a clean latent.

Each sampler is k-diffusion's (Katherine Crowson, k_diffusion/sampling.py) in numpy:
    sampler(denoiser, x, sigmas, *, rng=None, eta=..., callback=None) -> Sampled
- denoiser(x, sigma) -> denoised estimate (see denoiser.py; CFGDenoiser for guided runs)
- x: the starting latent at noise level sigmas[0], normally noise * sigmas[0]
- sigmas: float array, n + 1 entries, descending (schedules.step_table(...).sigmas)
- rng: object with randn(shape) -> float32 array, for the ancestral noise (rng.py)
- callback(step, total, x, denoised): called after each completed step (step = 1..total) with the latent after
  the step and that step's denoised estimate. Returning False stops the run: the sampler returns at once with
  `Sampled.cancelled = True` and the latent reached so far (no exception, so callers decide; the pipeline
  may raise sdcpp.Cancelled).

Ancestral noise is drawn only when it is used (sigma_up > 0), one rng.randn(x.shape) per such step, which is
also the order diffusers' schedulers draw in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Sampled:
    """A sampler's result: the final latent, how many steps ran, and whether the callback stopped the run."""

    x: np.ndarray
    steps: int
    cancelled: bool = False


def _stop(callback, step: int, total: int, x: np.ndarray, denoised: np.ndarray) -> bool:
    return callback is not None and callback(step, total, x, denoised) is False


def _sigmas(sigmas) -> list[float]:
    values = [float(s) for s in np.asarray(sigmas).reshape(-1)]
    if len(values) < 2:
        raise ValueError("a sigma table needs at least two entries (start and end level)")
    return values


def _need_rng(rng, name: str):
    if rng is None:
        raise ValueError(f"{name} draws noise: pass rng (e.g. sdcpp.sampling.NumpyRNG(seed))")
    return rng


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma -> sigma_next into a deterministic step to sigma_down plus fresh noise of sigma_up.

    sigma_down**2 + sigma_up**2 = sigma_next**2; eta = 1 is ancestral sampling (DDPM's posterior variance),
    eta = 0 deterministic. In VP terms this is exactly DDIM's sigma_t(eta) (Song et al. 2021, eq. 16).
    """
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _d(x, denoised, sigma):
    """dx/dsigma of the probability-flow ODE (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / np.float32(sigma)


def sample_euler(denoiser, x, sigmas, *, callback=None) -> Sampled:
    """Euler's method on the probability-flow ODE."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        x = x + _d(x, denoised, s[i]) * np.float32(s[i + 1] - s[i])
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_euler_ancestral(denoiser, x, sigmas, *, rng=None, eta=1.0, callback=None) -> Sampled:
    """Euler ancestral: an Euler step to sigma_down, then fresh noise of sigma_up."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        x = x + _d(x, denoised, s[i]) * np.float32(down - s[i])
        if up > 0:
            x = x + _need_rng(rng, "euler_a").randn(x.shape) * np.float32(up)
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_ddim(denoiser, x, sigmas, *, rng=None, eta=0.0, callback=None) -> Sampled:
    """DDIM (Song et al. 2021). In sigma space DDIM with eta is Euler ancestral with the same eta (eta = 0 is
    plain Euler); the usual DDIM table ends at the smallest training sigma (step_table(final="sigma_min")).

    Difference by design: diffusers' DDIMScheduler steps from t to t - 1000 // n whatever the next table entry
    is. That is the next entry for "leading" spacing (SD's default) and for "trailing" when n divides 1000, where
    the two agree to float precision; otherwise (all "linspace" tables) diffusers' latent drifts off its own
    schedule, while we always step to the next sigma of the table.
    """
    return sample_euler_ancestral(denoiser, x, sigmas, rng=rng, eta=eta, callback=callback)


def sample_heun(denoiser, x, sigmas, *, callback=None) -> Sampled:
    """Heun's second-order method (Karras et al. 2022, algorithm 1); a plain Euler step into sigma = 0."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        d = _d(x, denoised, s[i])
        dt = np.float32(s[i + 1] - s[i])
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _d(x_2, denoiser(x_2, s[i + 1]), s[i + 1])
            x = x + (d + d_2) * np.float32(0.5) * dt
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_dpm2(denoiser, x, sigmas, *, callback=None) -> Sampled:
    """DPM-Solver-2 (Lu et al. 2022) as k-diffusion writes it: the slope at the log-midpoint sigma drives the
    whole step; a plain Euler step into sigma = 0."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        d = _d(x, denoised, s[i])
        if s[i + 1] == 0:
            x = x + d * np.float32(-s[i])
        else:
            sigma_mid = math.sqrt(s[i] * s[i + 1])  # = exp(mean of the logs)
            x_2 = x + d * np.float32(sigma_mid - s[i])
            d_2 = _d(x_2, denoiser(x_2, sigma_mid), sigma_mid)
            x = x + d_2 * np.float32(s[i + 1] - s[i])
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_dpmpp_2m(denoiser, x, sigmas, *, callback=None) -> Sampled:
    """DPM-Solver++(2M) (Lu et al. 2022b, arXiv:2211.01095, algorithm 2) in lambda = -log(sigma).

    Linear multistep on the denoised estimates: the previous step's estimate extrapolates this one to the
    midpoint. First-order (DPM-Solver++ 1 = DDIM) on the first step and on the final step into sigma = 0.
    """
    s = _sigmas(sigmas)
    total = len(s) - 1
    old = None
    for i in range(total):
        denoised = denoiser(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])  # lambda_next - lambda
            target = denoised
            if old is not None:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h  # h_last / h
                target = denoised * np.float32(1 + 1 / (2 * r)) - old * np.float32(1 / (2 * r))
            x = x * np.float32(s[i + 1] / s[i]) - target * np.float32(math.expm1(-h))
        old = denoised
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, *, rng=None, eta=1.0, callback=None) -> Sampled:
    """DPM-Solver++(2S) ancestral: a single-step second-order solve to sigma_down with its extra evaluation at
    the log-midpoint (r = 1/2), then fresh noise of sigma_up. eta = 0 gives plain DPM-Solver++(2S)."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        if down == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(down)
            sigma_mid = math.sqrt(s[i] * down)
            x_2 = x * np.float32(sigma_mid / s[i]) - denoised * np.float32(math.expm1(-h / 2))
            denoised_2 = denoiser(x_2, sigma_mid)
            x = x * np.float32(down / s[i]) - denoised_2 * np.float32(math.expm1(-h))
        if up > 0:
            x = x + _need_rng(rng, "dpm++_2s_a").randn(x.shape) * np.float32(up)
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_lcm(denoiser, x, sigmas, *, rng=None, callback=None) -> Sampled:
    """Latent Consistency Model multistep sampling: jump to the denoised estimate, then re-noise to the next
    sigma with fresh noise (none after the last step)."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        x = denoised
        if s[i + 1] > 0:
            x = x + _need_rng(rng, "lcm").randn(x.shape) * np.float32(s[i + 1])
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


@dataclass(frozen=True)
class Sampler:
    """Everything a sampler name stands for: its function and how the pipeline must drive it."""

    name: str
    fn: Callable[..., Sampled]
    style: str  # the diffusers scheduler family whose sigma table it walks (schedules.STYLES)
    final: str  # where the table ends: "zero", or "sigma_min" (the smallest training sigma, DDIM)
    noisy: bool  # takes an rng (ddim uses it only when eta > 0)
    eta: float | None  # default eta; None: the sampler has no eta
    a1111: str  # A1111's name, written to the PNG "parameters" text


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("euler", sample_euler, "euler", "zero", False, None, "Euler"),
    Sampler("euler_a", sample_euler_ancestral, "euler", "zero", True, 1.0, "Euler a"),
    Sampler("heun", sample_heun, "euler", "zero", False, None, "Heun"),
    Sampler("dpm2", sample_dpm2, "euler", "zero", False, None, "DPM2"),
    Sampler("dpm++_2m", sample_dpmpp_2m, "dpmsolver", "zero", False, None, "DPM++ 2M"),
    Sampler("dpm++_2s_a", sample_dpmpp_2s_ancestral, "dpmsolver", "zero", True, 1.0, "DPM++ 2S a"),
    Sampler("lcm", sample_lcm, "euler", "zero", True, None, "LCM"),
    Sampler("ddim", sample_ddim, "ddim", "sigma_min", True, 0.0, "DDIM"),
)}


def get_sampler(name: str) -> Sampler:
    """The record of a sampler name; the one place names are validated."""
    record = SAMPLERS.get(name) if isinstance(name, str) else None
    if record is None:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return record


def sample(name: str, denoiser, x, sigmas, *, rng=None, eta: float | None = None, callback=None) -> Sampled:
    """Run sampler `name` (a key of SAMPLERS) on a float32 copy of x.

    eta: None for the sampler's default (Sampler.eta); ignored by samplers without an eta.
    """
    record = get_sampler(name)
    kwargs = {"callback": callback}
    if record.noisy:
        kwargs["rng"] = rng
    if record.eta is not None and eta is not None:
        kwargs["eta"] = eta
    return record.fn(denoiser, np.asarray(x, dtype=np.float32), sigmas, **kwargs)
