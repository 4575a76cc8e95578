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


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, rng=None, eta=1.0, callback=None) -> Sampled:
    """DPM-Solver++(2M) SDE (k-diffusion's sample_dpmpp_2m_sde, midpoint variant; diffusers' DPMSolverMultistep
    with algorithm_type="sde-dpmsolver++"): the 2M update with the exp(-eta h) decay of x and fresh noise of
    sigma_next * sqrt(1 - exp(-2 eta h)) after each step but the last. eta = 0 is DPM++ 2M.

    Noise is one Gaussian draw per step from `rng`, as diffusers; A1111 and ComfyUI default to a Brownian-tree
    noise sampler, which draws other (equally distributed) noise, so their images differ from these."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    old = None
    h_last = None
    for i in range(total):
        denoised = denoiser(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            eta_h = eta * h
            x = x * np.float32(s[i + 1] / s[i] * math.exp(-eta_h)) + denoised * np.float32(-math.expm1(-h - eta_h))
            if old is not None:
                r = h_last / h
                x = x + (denoised - old) * np.float32(0.5 * -math.expm1(-h - eta_h) / r)
            if eta:
                noise = _need_rng(rng, "dpm++_2m_sde").randn(x.shape)
                x = x + noise * np.float32(s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)))
            h_last = h
        old = denoised
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, rng=None, eta=1.0, callback=None) -> Sampled:
    """DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde): third-order linear multistep on the denoised
    estimates (first and second order while the history fills up), with the 2M SDE's decay and noise; eta = 0 is
    the ODE solver DPM-Solver++(3M) (diffusers' DPMSolverMultistep, solver_order=3).

    diffusers' sde-dpmsolver++ third-order update weights D2 by (1 - e^{-2h} - 2h) / (2h)^2 - 1/2; k-diffusion (and
    the eta -> 0 limit, diffusers' own ODE update) has + 1/2, which we follow. Noise as in sample_dpmpp_2m_sde."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(total):
        denoised = denoiser(x, s[i])
        h = None
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            h_eta = h * (eta + 1)
            x = x * np.float32(math.exp(-h_eta)) + denoised * np.float32(-math.expm1(-h_eta))
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / np.float32(r0)
                d1_1 = (d_1 - d_2) / np.float32(r1)
                d1 = d1_0 + (d1_0 - d1_1) * np.float32(r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / np.float32(r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + d1 * np.float32(phi_2) - d2 * np.float32(phi_3)
            elif h_1 is not None:
                x = x + (denoised - d_1) * np.float32(phi_2 / (h_1 / h))
            if eta:
                noise = _need_rng(rng, "dpm++_3m_sde").randn(x.shape)
                x = x + noise * np.float32(s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)))
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def _unipc_coefficients(rks: list[float], hh: float, order: int, variant: str) -> tuple[float, float, np.ndarray]:
    """(h phi_1, B(h), R, b) of UniPC (Zhao et al. 2023, arXiv:2302.04867, algorithm 1) for data prediction."""
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial = 1
    R, b = [], []
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, np.array(R, np.float64), np.array(b, np.float64)


def sample_uni_pc(denoiser, x, sigmas, *, order: int = 2, variant: str = "bh2", callback=None) -> Sampled:
    """UniPC (Zhao et al. 2023): a multistep predictor (UniP) and, from the second step on, a corrector (UniC) that
    refines the previous step's result with the model output just computed at it, so one model call per step.
    Data prediction, as diffusers' UniPCMultistepScheduler defaults (order 2, "bh2", lower_order_final): the order
    ramps up over the first steps and drops to fit the steps left. Written in sigma (VE) space: lambda = -log(sigma),
    where diffusers' VP alpha_t factors cancel."""
    if order not in (1, 2, 3) or variant not in ("bh1", "bh2"):
        raise ValueError(f"uni_pc takes order 1-3 and variant 'bh1' or 'bh2', got {order}, {variant!r}")
    s = _sigmas(sigmas)
    total = len(s) - 1
    lam = [-math.log(v) if v > 0 else math.inf for v in s]
    outputs: list[np.ndarray] = []  # denoised estimates at s[0..i]
    last_x = None
    last_order = 0
    for i in range(total):
        denoised = denoiser(x, s[i])
        if last_x is not None:  # UniC: correct x at s[i] with the model output there
            h = lam[i] - lam[i - 1]
            m0 = outputs[-1]
            rks, d1s = [], []
            for k in range(1, last_order):
                rk = (lam[i - 1 - k] - lam[i - 1]) / h
                rks.append(rk)
                d1s.append((outputs[-1 - k] - m0) / np.float32(rk))
            h_phi_1, b_h, R, b = _unipc_coefficients(rks + [1.0], -h, last_order, variant)
            rhos = np.array([0.5]) if last_order == 1 else np.linalg.solve(R, b)
            corr = sum((d * np.float32(r) for d, r in zip(d1s, rhos[:-1], strict=True)), np.zeros_like(x))
            x = (last_x * np.float32(s[i] / s[i - 1]) - m0 * np.float32(h_phi_1)
                 - (corr + (denoised - m0) * np.float32(rhos[-1])) * np.float32(b_h))
        outputs.append(denoised)
        this_order = min(order, total - i, len(outputs))
        last_x, last_order = x, this_order
        # UniP: predict x at s[i + 1]
        h = lam[i + 1] - lam[i]
        rks, d1s = [], []
        for k in range(1, this_order):
            rk = (lam[i - k] - lam[i]) / h
            rks.append(rk)
            d1s.append((outputs[-1 - k] - denoised) / np.float32(rk))
        if math.isinf(h):  # into sigma = 0: h phi_1 = -1, B(h) = -1 (bh2) or -inf (bh1, only times zero terms)
            x = denoised if this_order == 1 else None
            if x is None:
                raise ValueError("uni_pc: a higher-order step into sigma = 0 (lower_order_final keeps it first order)")
        else:
            h_phi_1, b_h, R, b = _unipc_coefficients(rks + [1.0], -h, this_order, variant)
            x = x * np.float32(s[i + 1] / s[i]) - denoised * np.float32(h_phi_1)
            if d1s:
                rhos = np.array([0.5]) if this_order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
                pred = sum((d * np.float32(r) for d, r in zip(d1s, rhos, strict=True)), np.zeros_like(x))
                x = x - pred * np.float32(b_h)
        if _stop(callback, i + 1, total, x, denoised):
            return Sampled(x, i + 1, True)
    return Sampled(x, total)


def sample_euler_cfg_pp(denoiser, x, sigmas, *, callback=None) -> Sampled:
    """Euler with CFG++ (Chung et al. 2024, arXiv:2406.08070), as ComfyUI's euler_cfg_pp: step from the guided
    denoised estimate along the unconditional one's direction, x_next = denoised + sigma_next * (x - uncond) / sigma.
    The denoiser must expose `uncond_denoised` after each call (CFGDenoiser does); without guidance it is Euler.
    It takes the ordinary guidance scale, as ComfyUI's does; small scales (1-2) suit it."""
    s = _sigmas(sigmas)
    total = len(s) - 1
    for i in range(total):
        denoised = denoiser(x, s[i])
        uncond = getattr(denoiser, "uncond_denoised", None)
        uncond = denoised if uncond is None else uncond
        x = denoised + (x - uncond) * np.float32(s[i + 1] / s[i])
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
    # diffusers' scheduler for it works on the VP latent x / sqrt(sigma^2 + 1) (DPM-Solver, UniPC, DDIM, LCM), so a
    # diffusers txt2img run starts from noise * sqrt(sigma_0^2 + 1) in our frame (see Options.start_noise)
    diffusers_vp: bool = False


SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("euler", sample_euler, "euler", "zero", False, None, "Euler"),
    Sampler("euler_a", sample_euler_ancestral, "euler", "zero", True, 1.0, "Euler a"),
    Sampler("heun", sample_heun, "euler", "zero", False, None, "Heun"),
    Sampler("dpm2", sample_dpm2, "euler", "zero", False, None, "DPM2"),
    Sampler("euler_cfg++", sample_euler_cfg_pp, "euler", "zero", False, None, "Euler CFG++"),
    Sampler("dpm++_2m", sample_dpmpp_2m, "dpmsolver", "zero", False, None, "DPM++ 2M", True),
    Sampler("dpm++_2s_a", sample_dpmpp_2s_ancestral, "dpmsolver", "zero", True, 1.0, "DPM++ 2S a", True),
    Sampler("dpm++_2m_sde", sample_dpmpp_2m_sde, "dpmsolver", "zero", True, 1.0, "DPM++ 2M SDE", True),
    Sampler("dpm++_3m_sde", sample_dpmpp_3m_sde, "dpmsolver", "zero", True, 1.0, "DPM++ 3M SDE", True),
    Sampler("uni_pc", sample_uni_pc, "dpmsolver", "zero", False, None, "UniPC", True),
    Sampler("lcm", sample_lcm, "euler", "zero", True, None, "LCM", True),
    Sampler("ddim", sample_ddim, "ddim", "sigma_min", True, 0.0, "DDIM", True),
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
