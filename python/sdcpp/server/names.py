"""A1111 sampler and scheduler names <-> sdcpp's (sampler, schedule), from the SAMPLERS records' `a1111` names.

A1111 1.9+ names a sampler and a scheduler separately ("DPM++ 2M" + "karras"); older clients send the pair as one
name ("DPM++ 2M Karras"), still accepted: the suffix gives the schedule unless `scheduler` names another one."""

from __future__ import annotations

from ..sampling import SAMPLERS

# A1111 scheduler name -> (label, sdcpp schedule). "automatic" is the sampler's default: sdcpp's discrete table.
SCHEDULERS = {
    "automatic": ("Automatic", "discrete"),
    "karras": ("Karras", "karras"),
    "exponential": ("Exponential", "exponential"),
    "align_your_steps": ("Align Your Steps", "ays"),
}
# k-diffusion / A1111 aliases of each sampler (modules/sd_samplers_kdiffusion.py), besides sdcpp's own name.
ALIASES = {
    "euler_a": ("k_euler_a", "k_euler_ancestral"),
    "euler": ("k_euler",),
    "heun": ("k_heun",),
    "dpm2": ("k_dpm_2",),
    "dpm++_2m": ("k_dpmpp_2m",),
    "dpm++_2s_a": ("k_dpmpp_2s_a",),
    "lcm": ("k_lcm",),
    "ddim": (),
}


def _key(text: str) -> str:
    return " ".join(text.lower().split())


_SAMPLER_KEYS = {}
for _name, _rec in SAMPLERS.items():
    for _alias in (_rec.a1111, _name, *ALIASES.get(_name, ())):
        _SAMPLER_KEYS[_key(_alias)] = _name
_SCHEDULER_KEYS = {}
for _name, (_label, _schedule) in SCHEDULERS.items():
    _SCHEDULER_KEYS[_key(_name)] = _name
    _SCHEDULER_KEYS[_key(_label)] = _name


def sampler_list() -> list[dict]:
    """GET /sdapi/v1/samplers."""
    return [dict(name=r.a1111, aliases=[n, *ALIASES.get(n, ())], options={}) for n, r in SAMPLERS.items()]


def scheduler_list() -> list[dict]:
    """GET /sdapi/v1/schedulers."""
    return [dict(name=n, label=label, aliases=[schedule] if schedule != n else None, default_rho=-1,
                 need_inner_model=False) for n, (label, schedule) in SCHEDULERS.items()]


def resolve(sampler: str | None, scheduler: str | None) -> tuple[str, str]:
    """(sdcpp sampler, sdcpp schedule); ValueError listing the choices for a name sdcpp does not have."""
    name = _key(sampler or "Euler")
    suffix = None
    if name not in _SAMPLER_KEYS:
        for sched_key, sched in _SCHEDULER_KEYS.items():
            if name.endswith(" " + sched_key) and name[: -len(sched_key) - 1] in _SAMPLER_KEYS:
                name, suffix = name[: -len(sched_key) - 1], sched
                break
    if name not in _SAMPLER_KEYS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {[r.a1111 for r in SAMPLERS.values()]} "
                         f"(optionally followed by a scheduler label, e.g. 'DPM++ 2M Karras')")
    chosen = _SCHEDULER_KEYS.get(_key(scheduler or "automatic"))
    if chosen is None:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {list(SCHEDULERS)}")
    if chosen == "automatic" and suffix is not None:
        chosen = suffix
    return _SAMPLER_KEYS[name], SCHEDULERS[chosen][1]
