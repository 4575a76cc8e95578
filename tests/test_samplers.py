"""Schedules, denoisers and samplers against diffusers' schedulers (tables and whole sampling loops)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from sdcpp.sampling import (
    AYS_TIMESTEPS,
    SAMPLERS,
    CFGDenoiser,
    Denoiser,
    TorchCpuRNG,
    TrainSchedule,
    ancestral_step,
    ays_sigmas,
    sample,
    spaced_timesteps,
    step_table,
)
from sdcpp.sampling.samplers import sample_dpmpp_2s_ancestral

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# diffusers' schedulers feed torch tensors to numpy, which numpy 2 flags thousands of times; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TRAIN = TrainSchedule.sd()
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# The schedule settings of the SD checkpoints' scheduler_config.json; they differ only in prediction type.
CONFIGS = {
    "sd1": dict(SD_BETAS, timestep_spacing="leading", steps_offset=1, prediction_type="epsilon"),
    "sd2v": dict(SD_BETAS, timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction"),
    "sdxl": dict(SD_BETAS, timestep_spacing="leading", steps_offset=1, prediction_type="epsilon"),
}
STEPS = [1, 4, 10, 25, 30]
SPACING_OFFSETS = [("leading", 1), ("leading", 0), ("trailing", 0), ("linspace", 0)]


def assert_close(got, want, rtol=1e-6, atol=1e-7, what=""):
    """<= 1e-6 relative where values are large, absolute near 0."""
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol,
                               err_msg=what)


def scheduler(name, config="sd1", **options):
    """A diffusers scheduler with an SD config (keys the class does not take are left out)."""
    cls = getattr(diffusers, name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in {**CONFIGS[config], **options}.items() if k in accepted})


# ---------------------------------------------------------------------------------------------------------------
# Training schedule


def test_training_schedule_matches_diffusers():
    s = scheduler("EulerDiscreteScheduler")
    assert_close(TRAIN.alphas_cumprod, s.alphas_cumprod.numpy())
    assert_close(TRAIN.sigmas, ((1 - s.alphas_cumprod) / s.alphas_cumprod).sqrt().numpy())
    # The float64 (CompVis) variant differs by ~1e-5: only diffusers' arithmetic reaches 1e-6.
    exact = TrainSchedule.sd(exact=True)
    assert np.max(np.abs(exact.sigmas / TRAIN.sigmas - 1)) < 3e-5


def test_sigma_to_t_matches_diffusers():
    s = scheduler("EulerDiscreteScheduler")
    log_sigmas = np.log(np.array(((1 - s.alphas_cumprod) / s.alphas_cumprod) ** 0.5))
    sigmas = np.concatenate([np.geomspace(0.01, 20.0, 257), TRAIN.sigmas[::37].astype(np.float64)])
    want = np.array([s._sigma_to_t(np.float64(x), log_sigmas) for x in sigmas])
    assert_close(TRAIN.sigma_to_t(sigmas), want, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Tables: our plain n + 1 sigma chain against each scheduler's tables.


def euler_family_view(name, s):
    """(sigmas, timesteps) in plain form; Heun and KDPM2 interleave their second-stage entries."""
    sig, ts = s.sigmas.numpy(), s.timesteps.numpy()
    if name == "HeunDiscreteScheduler":  # s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0
        return np.concatenate([sig[:1], sig[1:-1:2], sig[-1:]]), np.concatenate([ts[:1], ts[1::2]])
    if name == "KDPM2DiscreteScheduler":  # s0, s1, s1, ..., 0, 0 and t0, t_mid1, t1, t_mid2, t2, ...
        return np.concatenate([sig[:1], sig[1:-1:2]]), np.concatenate([ts[:1], ts[2::2]])
    return sig, ts


EULER_FAMILY = {  # name -> (kinds it supports, how it rounds karras/exponential timesteps)
    "EulerDiscreteScheduler": (("discrete", "karras", "exponential"), {}),
    "EulerAncestralDiscreteScheduler": (("discrete",), {}),
    "HeunDiscreteScheduler": (("discrete", "karras", "exponential"), {}),
    "KDPM2DiscreteScheduler": (("discrete", "karras", "exponential"), {"karras": "round"}),
}


@pytest.mark.parametrize("name", sorted(EULER_FAMILY))
@pytest.mark.parametrize("spacing,offset", SPACING_OFFSETS)
def test_euler_family_tables(name, spacing, offset):
    kinds, rounding = EULER_FAMILY[name]
    for kind in kinds:
        options = {"use_karras_sigmas": kind == "karras", "use_exponential_sigmas": kind == "exponential"}
        if name == "EulerAncestralDiscreteScheduler":
            options = {}
        s = scheduler(name, "sd1", timestep_spacing=spacing, steps_offset=offset, **options)
        for n in STEPS:
            if n == 1 and (kind != "discrete" or name == "KDPM2DiscreteScheduler"):
                continue  # diffusers divides by zero building a 1-step karras table / KDPM2 midpoints
            if n == 30 and name == "KDPM2DiscreteScheduler":
                continue  # slow to build (a numpy call per sigma on torch tensors); 25 covers the same ground
            s.set_timesteps(n)
            table = step_table(TRAIN, n, kind, spacing=spacing, steps_offset=offset, style="euler",
                               timestep_rounding=rounding.get(kind))
            sigmas, timesteps = euler_family_view(name, s)
            what = f"{name} {kind} {spacing}+{offset} n={n}"
            assert_close(table.sigmas, sigmas, what=what)
            assert_close(table.timesteps.astype(np.float32), timesteps, atol=1e-4, what=what)
            if name == "KDPM2DiscreteScheduler" and n > 1:  # its second-stage points: log-midpoints of sigma
                mid = np.sqrt(table.sigmas[:-2].astype(np.float64) * table.sigmas[1:-1])
                assert_close(mid, s.sigmas_interpol.numpy()[1:2 * n - 1:2], what=what)
                assert_close(TRAIN.sigma_to_t(mid), s.timesteps.numpy()[1::2], atol=1e-4, what=what)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["discrete", "karras"])
def test_tables_for_each_checkpoint_config(config, kind):
    """SD1, SD2-v and SDXL share the training schedule; the prediction type does not change a table."""
    for name, style, rounding in [("EulerDiscreteScheduler", "euler", None),
                                  ("DPMSolverMultistepScheduler", "dpmsolver", "round")]:
        s = scheduler(name, config, use_karras_sigmas=kind == "karras")
        s.set_timesteps(20)
        table = step_table(TRAIN, 20, kind, style=style, timestep_rounding=rounding if kind == "karras" else None)
        assert_close(table.sigmas, s.sigmas.numpy(), what=f"{name} {config}")
        assert_close(table.timesteps.astype(np.float32), s.timesteps.numpy(), atol=1e-4, what=f"{name} {config}")


DPM_ROUNDING = {"karras": "round", "exponential": "floor", "beta": "floor"}  # diffusers: .round() / int64 cast


@pytest.mark.parametrize("spacing,offset", SPACING_OFFSETS)
@pytest.mark.parametrize("kind", ["discrete", "karras", "exponential"])
def test_dpmsolver_multistep_tables(spacing, offset, kind):
    s = scheduler("DPMSolverMultistepScheduler", timestep_spacing=spacing, steps_offset=offset,
                  use_karras_sigmas=kind == "karras", use_exponential_sigmas=kind == "exponential")
    for n in STEPS:
        s.set_timesteps(n)
        table = step_table(TRAIN, n, kind, spacing=spacing, steps_offset=offset, style="dpmsolver",
                           timestep_rounding=DPM_ROUNDING.get(kind))
        assert_close(table.sigmas, s.sigmas.numpy(), what=f"{kind} {spacing} n={n}")
        np.testing.assert_array_equal(table.timesteps, s.timesteps.numpy())


@pytest.mark.parametrize("kind", ["discrete", "karras", "exponential"])
def test_dpmsolver_singlestep_tables(kind):
    """Singlestep always spaces like "linspace" (it has no timestep_spacing option)."""
    s = scheduler("DPMSolverSinglestepScheduler", use_karras_sigmas=kind == "karras",
                  use_exponential_sigmas=kind == "exponential")
    for n in STEPS[1:]:
        s.set_timesteps(n)
        table = step_table(TRAIN, n, kind, spacing="linspace", style="dpmsolver",
                           timestep_rounding=DPM_ROUNDING.get(kind))
        assert_close(table.sigmas, s.sigmas.numpy(), what=f"{kind} n={n}")
        np.testing.assert_array_equal(table.timesteps, s.timesteps.numpy())


@pytest.mark.parametrize("spacing,offset", SPACING_OFFSETS)
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_tables(spacing, offset, set_alpha_to_one):
    """DDIM has no sigma table; ours is the training sigmas at its timesteps, ending at its final alpha."""
    s = scheduler("DDIMScheduler", timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=set_alpha_to_one)
    for n in STEPS:
        s.set_timesteps(n)
        table = step_table(TRAIN, n, spacing=spacing, steps_offset=offset, style="ddim",
                           final="zero" if set_alpha_to_one else "sigma_min")
        np.testing.assert_array_equal(table.timesteps, s.timesteps.numpy())
        alphas = np.append(s.alphas_cumprod.numpy()[s.timesteps.numpy()], float(s.final_alpha_cumprod))
        assert_close(table.sigmas, np.sqrt((1 - alphas) / alphas), what=f"{spacing} n={n}")


def test_lcm_tables():
    s = diffusers.LCMScheduler(**SD_BETAS)
    for n in [1, 2, 4, 6, 8, 50]:
        s.set_timesteps(n)
        table = step_table(TRAIN, n, "lcm")
        np.testing.assert_array_equal(table.timesteps, s.timesteps.numpy())
        alphas = s.alphas_cumprod.numpy()[s.timesteps.numpy()]
        assert_close(table.sigmas[:-1], np.sqrt((1 - alphas) / alphas))
        assert table.sigmas[-1] == 0


@pytest.mark.parametrize("model,key", [("sd1", "StableDiffusion"), ("sdxl", "StableDiffusionXL")])
def test_ays_tables(model, key):
    from diffusers.schedulers import AysSchedules as ays
    # diffusers' Euler fed NVIDIA's published timesteps builds exactly our 10-step table.
    s = scheduler("EulerDiscreteScheduler")
    s.set_timesteps(timesteps=ays[f"{key}Timesteps"])
    table = step_table(TRAIN, 10, "ays", ays_model=model)
    assert_close(table.sigmas, s.sigmas.numpy())
    assert_close(table.timesteps, AYS_TIMESTEPS[model][:-1], atol=1e-3)
    # NVIDIA also publish 3-decimal sigma lists (diffusers' *Sigmas). They are not exactly the training sigmas at
    # the published timesteps (up to 0.3% off for SD1, 1.4% for SDXL); we follow the timesteps, as ComfyUI and
    # stable-diffusion.cpp do.
    assert_close(table.sigmas, ays[f"{key}Sigmas"], rtol=1.5e-2, atol=5e-4)
    # ComfyUI / stable-diffusion.cpp print the table to 10 digits, computed from float64 (CompVis) alphas; ours
    # follow diffusers' float32 alphas, ~1e-5 away.
    published = {"sd1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                         0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662],
                 "sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
                          0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177]}[model]
    assert_close(TrainSchedule.sd(exact=True).sigmas[list(AYS_TIMESTEPS[model][:-1])], published, rtol=2e-7)
    assert_close(table.sigmas[:-1], published, rtol=3e-5)


def test_ays_interpolates_log_linearly():
    ten = ays_sigmas(10, "sd1", TRAIN)
    for n in (5, 20, 32):
        sig = ays_sigmas(n, "sd1", TRAIN)
        assert len(sig) == n + 1 and sig[-1] == 0 and np.all(np.diff(sig) < 0)
        # Interior points sit on the piecewise-linear curve through the 11 published log-sigmas, placed by
        # relative position (sigma_min's log stands in for the final 0 while interpolating).
        anchors = np.log(np.append(ten[:-1], TRAIN.sigma_min))
        pos = np.linspace(0, 10, n + 1)
        want = np.exp(np.interp(pos, np.arange(11), anchors))
        assert_close(sig[:-1], want[:-1], rtol=1e-12)
    np.testing.assert_array_equal(ays_sigmas(10, "sd1", TRAIN)[:-1], TRAIN.sigmas[list(AYS_TIMESTEPS["sd1"][:-1])])


def test_step_table_rejects_bad_options():
    for kwargs in ({"kind": "cosine"}, {"spacing": "middle"}, {"style": "pndm"}, {"final": "one"}):
        with pytest.raises(ValueError):
            step_table(TRAIN, 10, **kwargs)
    with pytest.raises(ValueError):
        step_table(TRAIN, 0)
    with pytest.raises(ValueError):
        step_table(TRAIN, 51, "lcm")


def test_spacings_by_family():
    """The three families space "leading" and "linspace" differently (SD default: leading, offset 1)."""
    assert list(spaced_timesteps(10)) == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert list(spaced_timesteps(10, style="dpmsolver")) == [901, 811, 721, 631, 541, 451, 361, 271, 181, 91]
    assert spaced_timesteps(7, "linspace", 0)[1] == pytest.approx(832.5)  # Euler keeps fractions
    assert spaced_timesteps(7, "linspace", 0, style="ddim")[1] == 832  # DDIM rounds (half to even)
    assert list(spaced_timesteps(4, "trailing", 0)) == [999, 749, 499, 249]


# ---------------------------------------------------------------------------------------------------------------
# Whole sampling runs against diffusers' scheduler loops, with a stub model: a fixed linear map of x and t.

MIX = np.array([[0.55, 0.05, -0.03, 0.02], [0.04, 0.6, 0.02, -0.05], [-0.02, 0.03, 0.5, 0.04],
                [0.01, -0.04, 0.05, 0.58]], dtype=np.float32)
BIAS = np.array([0.1, -0.2, 0.05, 0.15], dtype=np.float32)
SHAPE = (1, 4, 6, 6)


def stub_np(x, t, cond=None):
    """Per-pixel channel mix plus a timestep-dependent bias; the same map for a batch of any size."""
    out = np.einsum("ij,bjhw->bihw", MIX, x) + BIAS[None, :, None, None] * (np.asarray(t, np.float32) / 1000)[
        :, None, None, None]
    return out.astype(np.float32)


def stub_torch(x, t):
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[0]
    out = torch.einsum("ij,bjhw->bihw", torch.from_numpy(MIX), x.float())
    return out + torch.from_numpy(BIAS)[None, :, None, None] * (t / 1000)


def run_diffusers(s, x, generator=None, steps=None, **step_kwargs):
    """diffusers' pipeline loop: scale the input, call the model at the scheduler's timestep, step (the first
    `steps` only, if given: the scheduler still sees its whole table)."""
    x = torch.from_numpy(x)
    for t in s.timesteps[:steps]:
        out = stub_torch(s.scale_model_input(x, t), t)
        if generator is not None:
            step_kwargs["generator"] = generator
        x = s.step(out, t, x, **step_kwargs).prev_sample
    return x.numpy()


def vp_scale(sigma):
    """VE latent -> VP latent (diffusers' DDIM, DPM-Solver and LCM work on x / sqrt(sigma^2 + 1))."""
    return np.float32(1 / np.sqrt(float(sigma) ** 2 + 1))


def noise(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def torch_rng(seed):
    kernel = "avx2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "scalar"
    return TorchCpuRNG(seed, kernel=kernel)


KARRAS_EULER = dict(use_karras_sigmas=True)

EULER_LIKE = [  # sampler, scheduler, config, scheduler options, step_table options, steps
    ("euler", "EulerDiscreteScheduler", "sd1", {}, {}, 10),
    ("euler", "EulerDiscreteScheduler", "sd2v", {"timestep_spacing": "trailing"}, {}, 7),
    ("euler", "EulerDiscreteScheduler", "sdxl", KARRAS_EULER, {"kind": "karras"}, 12),
    ("heun", "HeunDiscreteScheduler", "sd1", {}, {}, 8),
    ("heun", "HeunDiscreteScheduler", "sd2v", KARRAS_EULER, {"kind": "karras"}, 6),
    ("dpm2", "KDPM2DiscreteScheduler", "sd1", {}, {}, 8),
    ("dpm2", "KDPM2DiscreteScheduler", "sd2v", {"timestep_spacing": "linspace"}, {}, 9),
]


@pytest.mark.parametrize("name,sched,config,options,table_options,n", EULER_LIKE)
def test_deterministic_k_samplers_match_diffusers(name, sched, config, options, table_options, n):
    s = scheduler(sched, config, **options)
    s.set_timesteps(n)
    table = step_table(TRAIN, n, spacing=s.config.timestep_spacing, **table_options)
    x = noise() * np.float32(table.sigmas[0])
    want = run_diffusers(s, x)
    got = sample(name, Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"]), x, table.sigmas)
    assert got.steps == n and not got.cancelled
    assert_close(got.x, want, rtol=1e-5, atol=1e-5, what=f"{name} {config} {options}")


@pytest.mark.parametrize("config,spacing,n,seed", [("sd1", "leading", 10, 0), ("sd2v", "trailing", 6, 123)])
def test_euler_ancestral_matches_diffusers(config, spacing, n, seed):
    """Same ancestral noise on both sides: diffusers draws from a torch CPU generator, we from TorchCpuRNG."""
    s = scheduler("EulerAncestralDiscreteScheduler", config, timestep_spacing=spacing)
    s.set_timesteps(n)
    table = step_table(TRAIN, n, spacing=spacing)
    x = noise(1) * np.float32(table.sigmas[0])
    want = run_diffusers(s, x, generator=torch.Generator().manual_seed(seed))
    got = sample("euler_a", Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"]), x, table.sigmas,
                 rng=torch_rng(seed))
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,kind,n", [("sd1", "discrete", 10), ("sd2v", "discrete", 16), ("sdxl", "karras", 9),
                                           ("sd1", "exponential", 7)])
def test_dpmpp_2m_matches_diffusers(config, kind, n):
    s = scheduler("DPMSolverMultistepScheduler", config, use_karras_sigmas=kind == "karras",
                  use_exponential_sigmas=kind == "exponential")
    s.set_timesteps(n)
    table = step_table(TRAIN, n, kind, style="dpmsolver", timestep_rounding=DPM_ROUNDING.get(kind))
    z = noise(2)
    want = run_diffusers(s, z)  # VP latent; the final sigma is 0, where VP and VE coincide
    # diffusers calls the model at its integer timesteps (rounded for karras, truncated for exponential).
    denoiser = Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"],
                        timestep_rounding=DPM_ROUNDING.get(kind), table=table)
    got = sample("dpm++_2m", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas)
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)


def singlestep_chain(sigmas):
    """DPM-Solver++(2S) as a DPMSolverSinglestep table: each interval's log-midpoint inserted, then the
    solver's order list [1, 2, 1, 2, ..., 1] (the last interval, into sigma = 0, is first order)."""
    chain = []
    for a, b in zip(sigmas[:-2], sigmas[1:-1], strict=True):
        chain += [a, np.sqrt(float(a) * float(b))]
    return np.array(chain + [sigmas[-2], sigmas[-1]], dtype=np.float64)


def run_singlestep(s, chain, x_vp, orders):
    s.sigmas = torch.tensor(chain, dtype=torch.float32)
    s.timesteps = torch.tensor(TRAIN.sigma_to_t(chain[:-1]), dtype=torch.float32)
    s.order_list = orders
    s.model_outputs = [None] * s.config.solver_order
    s.sample, s._step_index, s._begin_index = None, None, None
    return run_diffusers(s, x_vp)


@pytest.mark.parametrize("config,n", [("sd1", 8), ("sd2v", 5)])
def test_dpmpp_2s_eta0_matches_diffusers_singlestep(config, n):
    s = scheduler("DPMSolverSinglestepScheduler", config)
    table = step_table(TRAIN, n, style="dpmsolver", spacing="linspace")
    chain = singlestep_chain(table.sigmas)
    s.set_timesteps(len(chain) - 1)
    z = noise(3)
    want = run_singlestep(s, chain, z, [1, 2] * (n - 1) + [1])
    got = sample("dpm++_2s_a", Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"]),
                 z / vp_scale(table.sigmas[0]), table.sigmas, eta=0.0)
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)


def test_dpmpp_2s_ancestral_matches_diffusers_steps_plus_noise():
    """No diffusers scheduler is DPM++ 2S ancestral; rebuild it step by step from diffusers' 2S solve to
    sigma_down plus our ancestral noise."""
    n, eta, seed = 6, 1.0, 5
    table = step_table(TRAIN, n)
    denoiser = Denoiser(stub_np, TRAIN)
    x = noise(4) * np.float32(table.sigmas[0])
    noise_source = torch_rng(seed)
    s = scheduler("DPMSolverSinglestepScheduler", final_sigmas_type="sigma_min", lower_order_final=False)
    s.set_timesteps(2)
    want = x
    for sigma, sigma_next in zip(table.sigmas[:-1].astype(np.float64), table.sigmas[1:], strict=True):
        down, up = ancestral_step(float(sigma), float(sigma_next), eta)
        if down == 0:  # last step: straight to the denoised estimate
            want = denoiser(want, sigma)
        else:
            chain = np.array([sigma, np.sqrt(sigma * down), down])
            want = run_singlestep(s, chain, want * vp_scale(sigma), [1, 2]) / vp_scale(down)
        if up > 0:
            want = want + noise_source.randn(want.shape) * np.float32(up)
    got = sample_dpmpp_2s_ancestral(denoiser, x, table.sigmas, rng=torch_rng(seed), eta=eta)
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,spacing,eta,n", [("sd1", "leading", 0.0, 10), ("sd1", "leading", 0.7, 7),
                                                  ("sd2v", "trailing", 1.0, 8), ("sdxl", "leading", 0.3, 25)])
def test_ddim_matches_diffusers(config, spacing, eta, n):
    """Spacings where diffusers' DDIM steps to its next timestep (see sample_ddim for the others)."""
    seed = 11
    s = scheduler("DDIMScheduler", config, timestep_spacing=spacing, set_alpha_to_one=False, clip_sample=False)
    s.set_timesteps(n)
    table = step_table(TRAIN, n, spacing=spacing, style="ddim", final="sigma_min")
    z = noise(6)
    want = run_diffusers(s, z, generator=torch.Generator().manual_seed(seed), eta=eta)
    got = sample("ddim", Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"]),
                 z / vp_scale(table.sigmas[0]), table.sigmas, rng=torch_rng(seed), eta=eta)
    assert_close(got.x * vp_scale(table.sigmas[-1]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,n", [("sd1", 4), ("sd2v", 6), ("sdxl", 1)])
def test_lcm_matches_diffusers(config, n):
    seed = 21
    s = diffusers.LCMScheduler(**SD_BETAS, prediction_type=CONFIGS[config]["prediction_type"])
    s.set_timesteps(n)
    table = step_table(TRAIN, n, "lcm")
    z = noise(7)
    want = run_diffusers(s, z, generator=torch.Generator().manual_seed(seed))
    denoiser = Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"], lcm_boundary=True)
    got = sample("lcm", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas, rng=torch_rng(seed))
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)
    # Without the boundary condition (A1111/ComfyUI's LCM) the result moves only at the 1e-5 level.
    plain = sample("lcm", Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"]),
                   z / vp_scale(table.sigmas[0]), table.sigmas, rng=torch_rng(seed))
    assert np.max(np.abs(plain.x - want)) < 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Denoiser and classifier-free guidance


def test_v_prediction_denoised_matches_diffusers_formula():
    sigma = float(TRAIN.sigmas[600])
    a = float(TRAIN.alphas_cumprod[600])
    x = noise(8) * np.float32(sigma)
    v = stub_np(x * vp_scale(sigma), np.array([600.0]))
    x_vp = x * vp_scale(sigma)
    want = np.sqrt(a) * x_vp - np.sqrt(1 - a) * v  # diffusers: x0 = sqrt(a) x_t - sqrt(1 - a) v
    assert_close(Denoiser(stub_np, TRAIN, "v_prediction")(x, sigma), want, rtol=1e-5, atol=1e-5)
    eps_want = (x_vp - np.sqrt(1 - a) * v) / np.sqrt(a)  # epsilon: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    assert_close(Denoiser(stub_np, TRAIN, "epsilon")(x, sigma), eps_want, rtol=1e-5, atol=1e-5)


class RecordingModel:
    """A stub whose output depends on the conditioning, recording every call's batch."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append((x.shape[0], np.array(t), cond))
        context = cond["context"] if isinstance(cond, dict) else cond
        return stub_np(x, t) + context.mean(axis=(1, 2))[:, None, None, None].astype(np.float32)


@pytest.mark.parametrize("dict_cond", [False, True])
def test_cfg_batches_cond_and_uncond_in_one_call(dict_cond):
    rng = np.random.default_rng(9)
    batch, scale, sigma = 2, 7.5, float(TRAIN.sigmas[700])
    x = rng.standard_normal((batch, 4, 6, 6)).astype(np.float32)
    ctx_c, ctx_u = (rng.standard_normal((batch, 3, 8)).astype(np.float32) for _ in range(2))
    cond, uncond = ctx_c, ctx_u
    if dict_cond:  # SDXL-style: context plus pooled vector, each batch first
        pooled = rng.standard_normal((batch, 5)).astype(np.float32)
        cond, uncond = {"context": ctx_c, "y": pooled}, {"context": ctx_u, "y": pooled * 0}
    model = RecordingModel()
    denoiser = Denoiser(model, TRAIN)
    got = CFGDenoiser(denoiser, cond, uncond, scale)(x, sigma)
    assert len(model.calls) == 1
    size, t, sent = model.calls[0]
    assert size == 2 * batch and np.all(t == t[0]) and t.dtype == np.float32
    context = sent["context"] if dict_cond else sent
    np.testing.assert_array_equal(context, np.concatenate([ctx_u, ctx_c]))  # [uncond, cond], as diffusers
    if dict_cond:
        assert sent["y"].shape == (2 * batch, 5)
    d_cond, d_uncond = denoiser(x, sigma, cond), denoiser(x, sigma, uncond)
    assert_close(got, d_uncond + scale * (d_cond - d_uncond), rtol=1e-5, atol=1e-5)


def test_cfg_scale_one_runs_cond_only():
    model = RecordingModel()
    x = noise(10)
    ctx = np.ones((1, 3, 8), np.float32)
    out = CFGDenoiser(Denoiser(model, TRAIN), ctx, ctx * 0, scale=1.0)(x, 3.0)
    assert [c[0] for c in model.calls] == [1]
    assert_close(out, Denoiser(RecordingModel(), TRAIN)(x, 3.0, ctx))


def test_timestep_rounding():
    sigma = float(np.sqrt(TRAIN.sigmas[400] * TRAIN.sigmas[401]))
    assert 400 < Denoiser(stub_np, TRAIN).timestep(sigma) < 401
    assert Denoiser(stub_np, TRAIN, timestep_rounding="round").timestep(sigma) in (400.0, 401.0)
    assert Denoiser(stub_np, TRAIN, timestep_rounding="floor").timestep(sigma) == 400.0
    with pytest.raises(ValueError):
        Denoiser(stub_np, TRAIN, timestep_rounding="ceil")
    with pytest.raises(ValueError):
        Denoiser(stub_np, TRAIN, prediction="sample")


# ---------------------------------------------------------------------------------------------------------------
# Callbacks, cancellation, arguments


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_reports_every_step_and_can_stop(name):
    n = 5
    table = step_table(TRAIN, n, "lcm" if name == "lcm" else "discrete")
    x = noise(12) * np.float32(table.sigmas[0])
    seen = []

    def record(step, total, latent, denoised):
        seen.append((step, total, latent.copy()))
        assert denoised.shape == latent.shape

    full = sample(name, Denoiser(stub_np, TRAIN), x, table.sigmas, rng=torch_rng(1), callback=record)
    assert [(s, t) for s, t, _ in seen] == [(i, n) for i in range(1, n + 1)]
    np.testing.assert_array_equal(seen[-1][2], full.x)

    stopped = sample(name, Denoiser(stub_np, TRAIN), x, table.sigmas, rng=torch_rng(1),
                     callback=lambda step, total, latent, denoised: step < 3)
    assert stopped.cancelled and stopped.steps == 3
    np.testing.assert_array_equal(stopped.x, seen[2][2])  # the latent reached after step 3


def test_noisy_samplers_need_an_rng_and_unknown_names_fail():
    table = step_table(TRAIN, 4)
    with pytest.raises(ValueError, match="rng"):
        sample("euler_a", Denoiser(stub_np, TRAIN), noise(), table.sigmas)
    sample("ddim", Denoiser(stub_np, TRAIN), noise(), table.sigmas)  # eta = 0: no noise needed
    with pytest.raises(ValueError, match="unknown sampler"):
        sample("plms", Denoiser(stub_np, TRAIN), noise(), table.sigmas)


def test_ancestral_step_splits_the_variance():
    down, up = ancestral_step(5.0, 2.0, 1.0)
    assert down**2 + up**2 == pytest.approx(4.0) and 0 < down < 2
    assert ancestral_step(5.0, 2.0, 0.0) == (2.0, 0.0)
    assert ancestral_step(5.0, 0.0, 1.0) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Beta, SGM uniform and simple schedules; SDE, UniPC and CFG++ samplers


def test_beta_ppf_matches_scipy():
    from scipy import stats

    from sdcpp.sampling import beta_ppf

    for a, b in [(0.6, 0.6), (0.5, 0.7), (2.0, 3.0)]:
        for q in [0.0, 1e-9, 0.01, 0.137, 0.5, 0.9, 0.999999, 1.0]:
            assert beta_ppf(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("spacing,offset", SPACING_OFFSETS)
def test_beta_tables(spacing, offset):
    """diffusers' use_beta_sigmas: the Euler family spans its spaced discrete sigmas, DPM-Solver and UniPC the whole
    training range with timesteps truncated (an int64 cast)."""
    for name, style, rounding in [("EulerDiscreteScheduler", "euler", None),
                                  ("DPMSolverMultistepScheduler", "dpmsolver", "floor"),
                                  ("UniPCMultistepScheduler", "dpmsolver", "floor")]:
        s = scheduler(name, timestep_spacing=spacing, steps_offset=offset, use_beta_sigmas=True)
        for n in [4, 10, 25]:
            s.set_timesteps(n)
            table = step_table(TRAIN, n, "beta", spacing=spacing, steps_offset=offset, style=style,
                               timestep_rounding=rounding)
            what = f"{name} {spacing}+{offset} n={n}"
            assert_close(table.sigmas, s.sigmas.numpy(), what=what)
            assert_close(table.timesteps.astype(np.float32), s.timesteps.numpy(), atol=1e-4, what=what)


def test_sgm_uniform_and_simple_tables():
    """A1111 (modules/sd_schedulers.py) and ComfyUI build these on k-diffusion's discrete schedule: sgm_uniform at
    timesteps torch.linspace(999, 0, n + 1)[:-1] with log-sigma interpolation, simple at the training sigmas
    sigmas[-(1 + int(k * 1000 / n))]; both end at 0. Restated in torch on diffusers' training sigmas."""
    log_sigmas = torch.from_numpy(TRAIN.log_sigmas)
    for n in [1, 3, 7, 10, 20, 33]:
        t = torch.linspace(999, 0, n + 1)[:-1]
        low, w = t.floor().long(), t.frac()
        high = t.ceil().long()
        want = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
        table = step_table(TRAIN, n, "sgm_uniform")
        assert_close(table.sigmas[:-1], want.numpy(), rtol=2e-6, what=f"sgm_uniform n={n}")
        assert table.sigmas[-1] == 0 and table.sigmas[0] == pytest.approx(TRAIN.sigma_max, rel=1e-6)
        assert_close(table.timesteps, t.numpy(), atol=2e-3)
        simple = step_table(TRAIN, n, "simple")
        idx = [1000 - 1 - int(k * 1000 / n) for k in range(n)]
        np.testing.assert_array_equal(simple.timesteps, idx)
        np.testing.assert_array_equal(simple.sigmas, np.append(TRAIN.sigmas[idx], 0).astype(np.float32))
    # Where n divides 1000, "simple" is diffusers' trailing spacing.
    s = scheduler("EulerDiscreteScheduler", timestep_spacing="trailing", steps_offset=0)
    for n in [4, 10, 20, 25]:
        s.set_timesteps(n)
        assert_close(step_table(TRAIN, n, "simple").sigmas, s.sigmas.numpy())


def dpm_noise_run(s, z, seed):
    """diffusers' loop with the scheduler's own torch CPU noise (one draw per step)."""
    return run_diffusers(s, z, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config,kind,n", [("sd1", "discrete", 10), ("sd2v", "karras", 7), ("sdxl", "beta", 12)])
def test_dpmpp_2m_sde_matches_diffusers(config, kind, n):
    seed = 31
    s = scheduler("DPMSolverMultistepScheduler", config, algorithm_type="sde-dpmsolver++",
                  use_karras_sigmas=kind == "karras", use_beta_sigmas=kind == "beta")
    s.set_timesteps(n)
    rounding = DPM_ROUNDING.get(kind)
    table = step_table(TRAIN, n, kind, style="dpmsolver", timestep_rounding=rounding)
    z = noise(13)
    want = dpm_noise_run(s, z, seed)
    denoiser = Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"], timestep_rounding=rounding, table=table)
    got = sample("dpm++_2m_sde", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas, rng=torch_rng(seed))
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)
    # eta = 0 is DPM++ 2M, and draws nothing
    ode = sample("dpm++_2m_sde", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas, eta=0.0)
    assert_close(ode.x, sample("dpm++_2m", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas).x, rtol=1e-5,
                 atol=1e-6)


@pytest.mark.parametrize("config,n", [("sd1", 10), ("sd2v", 16)])
def test_dpmpp_3m_sde_matches_diffusers(config, n):
    """eta = 0 against diffusers' third-order DPM-Solver++ (the D1/D2 combination); eta = 1 against diffusers' SDE
    solver for the first two steps (first and second order: k-diffusion and diffusers agree there; their third-order
    SDE updates differ in one constant, see sample_dpmpp_3m_sde)."""
    prediction = CONFIGS[config]["prediction_type"]
    denoiser = Denoiser(stub_np, TRAIN, prediction)
    z = noise(14)
    # k-diffusion's second-order step (the second one) is diffusers' "heun" solver_type, not its default midpoint
    s = scheduler("DPMSolverMultistepScheduler", config, solver_order=3, lower_order_final=False, solver_type="heun")
    s.set_timesteps(n)
    table = step_table(TRAIN, n, style="dpmsolver")
    want = run_diffusers(s, z)
    got = sample("dpm++_3m_sde", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas, eta=0.0)
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)

    seed = 8
    s = scheduler("DPMSolverMultistepScheduler", config, algorithm_type="sde-dpmsolver++", solver_order=3,
                  lower_order_final=False, solver_type="heun")
    s.set_timesteps(n)
    want = run_diffusers(s, z, generator=torch.Generator().manual_seed(seed), steps=2)  # sigmas[0] -> sigmas[2]
    got = sample("dpm++_3m_sde", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas[:3], rng=torch_rng(seed))
    assert_close(got.x * vp_scale(table.sigmas[2]), want, rtol=1e-5, atol=1e-5)
    # from the third step on the third-order term acts: the full run leaves the second-order SDE solver
    full = sample("dpm++_3m_sde", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas, rng=torch_rng(seed))
    second = sample("dpm++_2m_sde", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas, rng=torch_rng(seed))
    assert np.abs(full.x - second.x).max() > 1e-4


@pytest.mark.parametrize("config,kind,spacing,n", [
    ("sd1", "discrete", "leading", 10), ("sd2v", "discrete", "trailing", 6), ("sdxl", "karras", "leading", 9),
    ("sd1", "beta", "linspace", 5)])
def test_uni_pc_matches_diffusers(config, kind, spacing, n):
    s = scheduler("UniPCMultistepScheduler", config, timestep_spacing=spacing,
                  use_karras_sigmas=kind == "karras", use_beta_sigmas=kind == "beta")
    s.set_timesteps(n)
    rounding = DPM_ROUNDING.get(kind)
    table = step_table(TRAIN, n, kind, spacing=spacing, style="dpmsolver", timestep_rounding=rounding,
                       steps_offset=s.config.steps_offset)
    assert_close(table.sigmas, s.sigmas.numpy())
    z = noise(15)
    want = run_diffusers(s, z)
    denoiser = Denoiser(stub_np, TRAIN, CONFIGS[config]["prediction_type"], timestep_rounding=rounding, table=table)
    got = sample("uni_pc", denoiser, z / vp_scale(table.sigmas[0]), table.sigmas)
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order,variant", [(1, "bh2"), (3, "bh2"), (3, "bh1"), (2, "bh1")])
def test_uni_pc_orders_and_variants_match_diffusers(order, variant):
    """Stopped one step early (at sigma > 0): diffusers' bh1 turns the final step into sigma = 0 into NaN (its B(h)
    is -inf there); ours takes the plain first-order step into 0 (the denoised estimate) for both variants."""
    from sdcpp.sampling.samplers import sample_uni_pc

    n = 12
    s = scheduler("UniPCMultistepScheduler", "sd1", solver_order=order, solver_type=variant)
    s.set_timesteps(n)
    s.timesteps = s.timesteps[:-1]
    table = step_table(TRAIN, n, style="dpmsolver", steps_offset=1)
    z = noise(16)
    want = run_diffusers(s, z)
    got = sample_uni_pc(Denoiser(stub_np, TRAIN), z / vp_scale(table.sigmas[0]), table.sigmas[:-1], order=order,
                        variant=variant)
    assert_close(got.x * vp_scale(table.sigmas[-2]), want, rtol=1e-5, atol=1e-5)
    full = sample_uni_pc(Denoiser(stub_np, TRAIN), z, table.sigmas, order=order, variant=variant)
    assert np.isfinite(full.x).all()


def test_euler_cfg_pp_steps_along_the_unconditional_estimate():
    """CFG++ (ComfyUI's euler_cfg_pp): x_next = denoised + sigma_next * (x - uncond_denoised) / sigma; without
    guidance the two estimates coincide and it is Euler."""
    n = 6
    table = step_table(TRAIN, n)
    x = noise(17) * np.float32(table.sigmas[0])
    ctx_c, ctx_u = np.ones((1, 3, 8), np.float32), np.zeros((1, 3, 8), np.float32)
    plain = sample("euler_cfg++", CFGDenoiser(Denoiser(RecordingModel(), TRAIN), ctx_c, ctx_u, 1.0), x, table.sigmas)
    euler = sample("euler", CFGDenoiser(Denoiser(RecordingModel(), TRAIN), ctx_c, ctx_u, 1.0), x, table.sigmas)
    assert_close(plain.x, euler.x, rtol=1e-5, atol=1e-5)
    guided = CFGDenoiser(Denoiser(RecordingModel(), TRAIN), ctx_c, ctx_u, 2.0)
    got = sample("euler_cfg++", guided, x, table.sigmas)
    want = x
    d = Denoiser(RecordingModel(), TRAIN)
    for sigma, nxt in zip(table.sigmas[:-1], table.sigmas[1:], strict=True):
        dc, du = d(want, sigma, ctx_c), d(want, sigma, ctx_u)
        den = du + np.float32(2.0) * (dc - du)
        want = den + (want - du) * np.float32(nxt / sigma)
    assert_close(got.x, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got.x, sample("euler", guided, x, table.sigmas).x, atol=1e-3)
