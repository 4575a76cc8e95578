"""Budget quantization: per-group weight types chosen from the sensitivity data, to minimise the error under a
size budget (or the size under an error bound). The choice is written as ordinary rules ("regex=type", one per
group, most specific first), so the plan stays the only place that decides a tensor's type.

Model of the error: a group's squared relative error at its component's output (sensitivity.py) adds up across
groups, and across components. The greedy walk over that model (best error saved per byte, Lagrangian-style) is
then checked by measuring the chosen assignment at once, and against the uniform type of the nearest size below the
budget: the measured better of the two is kept."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import QuantRequestError
from .sensitivity import SensitivityReport

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value) -> int:
    """1200000000, "1.2GB" (decimal), "1.1GiB" (binary), "800MB", "800 MiB" -> bytes."""
    if isinstance(value, bool):
        raise QuantRequestError(f"budget must be a size, got {value!r}")
    if isinstance(value, (int, float)):
        n = value
    else:
        m = _SIZE.match(str(value))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise QuantRequestError(f"budget {value!r} is not a size like 1.2GB, 800MiB or a byte count")
        n = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(n) or n <= 0:
        raise QuantRequestError(f"budget must be a positive size, got {value!r}")
    return int(n)


@dataclass
class BudgetChoice:
    assignment: dict[str, str]  # group -> type ("f32": left at full precision)
    bytes: int  # of every tensor (grouped or not)
    predicted_error: float  # root of the summed squared group errors
    budget: int | None = None
    max_error: float | None = None
    measured: dict = field(default_factory=dict)  # filled by the caller: this and the uniform alternative

    def rules(self, report: SensitivityReport) -> list[str]:
        return [f"{report.groups[g].rule}={t}" for g, t in self.assignment.items()]


def _options(report: SensitivityReport, group) -> list[tuple[int, float, str]]:
    """(bytes, error, type) of a group, without dominated options (no smaller and no better one exists)."""
    opts = sorted({(group.bytes[t], group.error.get(t, 0.0), t) for t in [*report.types, "f32"]})
    kept: list[tuple[int, float, str]] = []
    for b, e, t in opts:  # ascending bytes: keep an option only if it is better than every smaller one
        if not kept or e < kept[-1][1]:
            if kept and b == kept[-1][0]:
                kept[-1] = (b, e, t)
            else:
                kept.append((b, e, t))
    return kept


def choose(report: SensitivityReport, *, budget: int | None = None, max_error: float | None = None) -> BudgetChoice:
    """The assignment with the least predicted error within `budget` bytes, or the fewest bytes with a predicted
    error (rel-L2, root of summed squares) within `max_error`; exactly one of the two."""
    if (budget is None) == (max_error is None):
        raise QuantRequestError("give exactly one of budget= and max_error=")
    options = {g: _options(report, grp) for g, grp in report.groups.items()}
    level = {g: 0 for g in options}  # index into the group's options (ascending bytes)

    def total_bytes():
        return report.fixed_bytes + sum(options[g][level[g]][0] for g in options)

    def total_error():
        return sum(options[g][level[g]][1] for g in options)

    if budget is not None:
        if total_bytes() > budget:
            raise QuantRequestError(f"budget {budget} bytes is below the smallest assignment of these types, "
                                    f"{total_bytes()} bytes")
        while True:  # upgrade the group that saves the most error per byte and still fits
            best, best_gain = None, 0.0
            for g, opts in options.items():
                if level[g] + 1 < len(opts):
                    b0, e0, _ = opts[level[g]]
                    b1, e1, _ = opts[level[g] + 1]
                    if total_bytes() - b0 + b1 <= budget and (e0 - e1) / max(b1 - b0, 1) > best_gain:
                        best, best_gain = g, (e0 - e1) / max(b1 - b0, 1)
            if best is None:
                break
            level[best] += 1
    else:
        bound = max_error**2
        level = {g: len(opts) - 1 for g, opts in options.items()}  # the most precise option of each group
        while True:  # downgrade the group that saves the most bytes per error added and stays within the bound
            best, best_gain = None, -1.0
            for g, opts in options.items():
                if level[g] > 0:
                    b1, e1, _ = opts[level[g]]
                    b0, e0, _ = opts[level[g] - 1]
                    if total_error() - e1 + e0 <= bound:
                        gain = (b1 - b0) / max(e0 - e1, 1e-30)
                        if gain > best_gain:
                            best, best_gain = g, gain
            if best is None:
                break
            level[best] -= 1
    assignment = {g: options[g][level[g]][2] for g in options}
    return BudgetChoice(assignment, total_bytes(), math.sqrt(total_error()), budget, max_error)


def uniform(report: SensitivityReport, qtype: str) -> BudgetChoice:
    """Every group at `qtype`: the plain request it stands for, measured the same way."""
    assignment = {g: qtype for g in report.groups}
    nbytes = report.fixed_bytes + sum(grp.bytes[qtype] for grp in report.groups.values())
    error = sum(grp.error.get(qtype, 0.0) for grp in report.groups.values())
    return BudgetChoice(assignment, nbytes, math.sqrt(error))


def measured_total(errors: dict[str, float]) -> float:
    """Root of the summed squared errors of every part (text encoders, UNet, VAE)."""
    return math.sqrt(sum(errors.values()))


DEFAULT_TYPES = ("f16", "q8_0", "q5_K", "q4_K")


def budget_rules(model, *, budget=None, max_error=None, types=None, prompts=None, n_threads: int = 0, progress=True,
                 prediction=None, **load) -> tuple[list[str], dict]:
    """(rules, metadata) of a budget quantization of `model`: measure sensitivity, choose, then measure the choice
    and the uniform type nearest below it at once; keep the measured better. The metadata records both."""
    from .sensitivity import SensitivityRun

    budget = None if budget is None else parse_bytes(budget)
    if max_error is not None and not (isinstance(max_error, (int, float)) and 0 < max_error < math.inf):
        raise QuantRequestError(f"max_error must be a positive relative error, got {max_error!r}")
    run = SensitivityRun(model, types or DEFAULT_TYPES, list(prompts or ("a photograph of a cat on a sofa",)), 0, 8,
                         None, None, "euler", "all", n_threads, prediction, load)
    report = run.run(progress)
    choice = choose(report, budget=budget, max_error=max_error)
    choice.measured = run.measure_assignment(choice.assignment)
    fitting = [uniform(report, t) for t in report.types]
    fitting = [u for u in fitting if u.bytes <= choice.bytes]
    alternative = max(fitting, key=lambda u: u.bytes, default=None)
    kept = choice
    if alternative is not None:
        alternative.measured = run.measure_assignment(alternative.assignment)
        if measured_total(alternative.measured) < measured_total(choice.measured):
            kept = alternative
    uniform_type = next(iter(alternative.assignment.values())) if alternative else None
    meta = dict(budget=budget, max_error=max_error, types=report.types, probe=report.probe, bytes=kept.bytes,
                chosen="uniform " + uniform_type if kept is alternative else "per group",
                predicted_error=kept.predicted_error, measured_error=measured_total(kept.measured),
                measured_by_part={k: math.sqrt(v) for k, v in kept.measured.items()},
                per_group_measured_error=measured_total(choice.measured), per_group_bytes=choice.bytes,
                uniform=None if alternative is None else dict(type=uniform_type, bytes=alternative.bytes,
                                                               measured_error=measured_total(alternative.measured)),
                assignment=kept.assignment)
    return kept.rules(report), meta
