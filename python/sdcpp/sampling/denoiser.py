"""Denoiser wrappers: turn a UNet-like callable into `denoiser(x, sigma) -> denoised` for the samplers.

The model is any callable `model(x_in, t, cond) -> out` on numpy arrays, batch first: `x_in` the latent scaled
to unit variance, `t` a float32 array of discrete training timesteps (one per batch row), `cond` the conditioning
(an array, or a dict/tuple of arrays for SDXL's context + pooled vector, each batch first). `out` is the
predicted noise ("epsilon") or velocity ("v_prediction", SD2-v).

Scalings are k-diffusion's (Karras et al. 2022, table 1; k-diffusion `external.py`), with sigma_data = 1:
    c_in  = 1 / sqrt(sigma^2 + 1)       (model sees x / sqrt(sigma^2 + 1), the VP latent)
    epsilon:       c_skip = 1,                   c_out = -sigma
    v_prediction:  c_skip = 1 / (sigma^2 + 1),   c_out = -sigma / sqrt(sigma^2 + 1)
    denoised = c_skip * x + c_out * out
"""

from __future__ import annotations

import math

import numpy as np

from .schedules import TrainSchedule

PREDICTIONS = ("epsilon", "v_prediction")
ROUNDINGS = (None, "round", "floor")


class Denoiser:
    """x at noise level sigma -> estimate of the clean latent, for a discrete-time (VP) model.

    timestep_rounding: None (default) passes the model the fractional timestep of sigma (log-sigma
        interpolation, as diffusers' Euler and stable-diffusion.cpp do); "round" rounds it to the nearest
        integer, as diffusers' DPM-Solver and KDPM2 Karras tables do (k-diffusion's "quantize"); "floor"
        truncates, as diffusers' DPM-Solver exponential tables do (an int64 cast).
    lcm_boundary: apply Latent Consistency Models' boundary condition (Luo et al. 2023, arXiv:2310.04378;
        diffusers LCMScheduler: sigma_data = 0.5, timestep_scaling = 10) to the prediction. Use it for
        LCM-distilled checkpoints to match diffusers. A1111 and ComfyUI leave it out (LCM-LoRA); its skip
        weight 0.25 / ((10 t)^2 + 0.25) is under 7e-6 at LCM's smallest timestep (19), so that changes little.
    table: a StepTable whose sigmas get its own timesteps (other sigmas, e.g. second-order midpoints, are converted
        and rounded as above). diffusers truncates float64 timesteps of float64 sigmas, which the float32 table
        cannot always reproduce (an exponential table's first timestep is 998, a beta table's 999, both at sigma_max).
    """

    def __init__(
        self,
        model,
        train: TrainSchedule,
        prediction: str = "epsilon",
        *,
        timestep_rounding: str | None = None,
        lcm_boundary: bool = False,
        table=None,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        if timestep_rounding not in ROUNDINGS:
            raise ValueError(f"timestep_rounding must be one of {ROUNDINGS}, not {timestep_rounding!r}")
        self.model = model
        self.train = train
        self.prediction = prediction
        self.timestep_rounding = timestep_rounding
        self.lcm_boundary = lcm_boundary
        # the last sigma is the end level, which has no timestep
        self.table = None if table is None else {
            float(s): float(t) for s, t in zip(table.sigmas[:-1], table.timesteps, strict=True)}

    def timestep(self, sigma: float) -> float:
        """The discrete training timestep the model is called with at noise level sigma."""
        if self.table is not None and float(sigma) in self.table:
            return self.table[float(sigma)]
        t = float(self.train.sigma_to_t(sigma))
        if self.timestep_rounding == "round":
            return float(np.round(t))  # half to even, like numpy's .round() in diffusers
        return float(math.floor(t)) if self.timestep_rounding == "floor" else t

    def scalings(self, sigma: float) -> tuple[float, float, float]:
        """(c_skip, c_out, c_in) at sigma."""
        c_in = 1.0 / math.sqrt(sigma * sigma + 1.0)
        if self.prediction == "epsilon":
            return 1.0, -sigma, c_in
        return c_in * c_in, -sigma * c_in, c_in

    def predict(self, x: np.ndarray, sigma: float, cond) -> np.ndarray:
        """One model call on the whole batch: the raw prediction (epsilon or v) at noise level sigma."""
        sigma = float(sigma)
        c_in = self.scalings(sigma)[2]
        t = np.full(x.shape[0], self.timestep(sigma), dtype=np.float32)
        return self.model(x * np.float32(c_in), t, cond)

    def to_denoised(self, x: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
        """Combine a raw prediction with x into the denoised estimate."""
        sigma = float(sigma)
        c_skip, c_out, c_in = self.scalings(sigma)
        denoised = x * np.float32(c_skip) + out * np.float32(c_out)
        if self.lcm_boundary:
            # LCM's consistency function works on the VP latent x * c_in; it is ~identity on the prediction
            # except very close to t = 0.
            scaled_t = self.timestep(sigma) * 10.0
            lcm_skip = 0.25 / (scaled_t**2 + 0.25)
            lcm_out = scaled_t / math.sqrt(scaled_t**2 + 0.25)
            denoised = denoised * np.float32(lcm_out) + x * np.float32(lcm_skip * c_in)
        return denoised

    def __call__(self, x: np.ndarray, sigma: float, cond=None) -> np.ndarray:
        return self.to_denoised(x, sigma, self.predict(x, sigma, cond))


def _concat(uncond, cond):
    """Stack two conditionings along the batch axis, leaf by leaf (arrays, dicts, tuples/lists)."""
    if isinstance(cond, dict):
        return {k: _concat(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_concat(u, c) for u, c in zip(uncond, cond, strict=True))
    return np.concatenate([np.asarray(uncond), np.asarray(cond)], axis=0)


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022): out = uncond + scale * (cond - uncond).

    Conditional and unconditional rows go through the model in one call of batch 2B, ordered [uncond, cond] as
    diffusers' pipelines do. Guidance is applied to the raw prediction, which is equivalent to applying it to
    the denoised estimate because denoised is affine in the prediction. With scale == 1 or no uncond, only the
    conditional batch is run.

    After each call `uncond_denoised` holds the unconditional denoised estimate (the guided one without guidance),
    which CFG++ samplers step along.
    """

    def __init__(self, denoiser: Denoiser, cond, uncond=None, scale: float = 1.0):
        self.denoiser = denoiser
        self.cond = cond
        self.uncond = uncond
        self.scale = float(scale)
        self.uncond_denoised = None

    def conditioning(self):
        """(cond, uncond) for the call being made; subclasses may change them per step (prompt editing)."""
        return self.cond, self.uncond

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        cond, uncond = self.conditioning()
        if uncond is None or self.scale == 1.0:
            out = self.denoiser.predict(x, sigma, cond)
            denoised = self.denoiser.to_denoised(x, sigma, out)
            self.uncond_denoised = denoised
            return denoised
        both = self.denoiser.predict(np.concatenate([x, x], axis=0), sigma, _concat(uncond, cond))
        out_uncond, out_cond = np.split(both, 2, axis=0)
        out = out_uncond + np.float32(self.scale) * (out_cond - out_uncond)
        self.uncond_denoised = self.denoiser.to_denoised(x, sigma, out_uncond)
        return self.denoiser.to_denoised(x, sigma, out)
