"""Sampling: noise schedules, denoiser wrappers, samplers and seeded noise (numpy only).

    from sdcpp.sampling import TrainSchedule, step_table, Denoiser, CFGDenoiser, sample, make_rng

    train = TrainSchedule.sd()
    table = step_table(train, 20, "karras", style="dpmsolver")
    rng = make_rng("numpy", seed)
    x = rng.randn((1, 4, 64, 64)) * table.sigmas[0]
    guided = CFGDenoiser(Denoiser(unet, train, "epsilon"), cond, uncond, scale=7.5)
    result = sample("dpm++_2m", guided, x, table.sigmas, rng=rng, callback=progress)
"""

from .denoiser import PREDICTIONS, CFGDenoiser, Denoiser
from .rng import NumpyRNG, PhiloxRNG, TorchCpuRNG, make_rng
from .samplers import SAMPLERS, Sampled, Sampler, ancestral_step, get_sampler, sample
from .schedules import (
    AYS_TIMESTEPS,
    KINDS,
    SPACINGS,
    STYLES,
    StepTable,
    TrainSchedule,
    ays_sigmas,
    beta_ppf,
    beta_sigmas,
    diffusers_init_noise_sigma,
    exponential_sigmas,
    karras_sigmas,
    lcm_timesteps,
    scaled_linear_alphas_cumprod,
    sgm_uniform_sigmas,
    simple_timesteps,
    spaced_timesteps,
    step_table,
)

__all__ = [
    "AYS_TIMESTEPS", "KINDS", "PREDICTIONS", "SAMPLERS", "SPACINGS", "STYLES", "CFGDenoiser", "Denoiser",
    "NumpyRNG", "PhiloxRNG", "Sampled", "Sampler", "StepTable", "TorchCpuRNG", "TrainSchedule", "ancestral_step",
    "ays_sigmas", "beta_ppf", "beta_sigmas", "diffusers_init_noise_sigma", "exponential_sigmas", "get_sampler",
    "karras_sigmas",
    "lcm_timesteps", "make_rng", "sample", "scaled_linear_alphas_cumprod", "sgm_uniform_sigmas", "simple_timesteps",
    "spaced_timesteps", "step_table",
]
