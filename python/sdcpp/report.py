"""`inspect()`'s result: what was found and what the plan will store, readable at a glance."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from .index import TensorIndex
from .plan import QuantPlan


def _budget(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None  # a damaged optional record: the tensors' types are in the file either way
    return value if isinstance(value, dict) else None


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass
class Inspection:
    paths: list[str]
    formats: list[str]
    plan: QuantPlan
    ignored: list[tuple[str, str, str]]
    unknown: list[tuple[str, str]]
    overridden: list[tuple[str, str, str]]
    budget: dict | None = None  # what a budget quantization chose and measured (sdcpp.budget in our GGUFs)
    # Per LoRA given: path, name, strength, hash, kinds, merged / runtime module counts, the canonical layers it
    # adapts and its unmatched keys (sdcpp.lora.LoadedLora.summary).
    loras: list[dict] | None = None

    @classmethod
    def build(cls, index: TensorIndex, plan: QuantPlan, budget: dict | None = None) -> Inspection:
        if budget is None:
            budget = next((_budget(s.metadata["sdcpp.budget"]) for s in index.sources
                           if isinstance(s.metadata.get("sdcpp.budget"), str)), None)
        loras = [item.summary() for item in index.loras.items] if index.loras else []
        return cls([s.path for s in index.sources], [s.format for s in index.sources], plan,
                   list(index.notes.ignored), list(index.notes.unknown), list(index.overridden), budget, loras)

    @property
    def spec(self):
        return self.plan.spec

    @property
    def family(self) -> str:
        return self.spec.family

    def totals(self) -> tuple[int, int]:
        return (sum(e.bytes_before for e in self.plan), sum(e.bytes_after for e in self.plan))

    def fallback_groups(self) -> list[tuple[str, int, str]]:
        """(reason, count, first tensor) per distinct reason."""
        groups: dict[str, list[str]] = defaultdict(list)
        for e in self.plan.fallbacks():
            groups[re.sub(r"row length \d+", "row length N", e.reason)].append(e.name)
        return sorted(((r, len(n), n[0]) for r, n in groups.items()), key=lambda g: -g[1])

    def _budget_text(self) -> str:
        b = self.budget
        goal = (f"budget {human_bytes(b['budget'])}" if b.get("budget") else f"max error {b.get('max_error')}")
        text = (f"budget quantization ({goal}, types {', '.join(b.get('types', []))}): {b.get('chosen')}, "
                f"{human_bytes(b.get('bytes', 0))}; error at the components' outputs predicted "
                f"{b.get('predicted_error', 0):.3g}, measured {b.get('measured_error', 0):.3g}")
        u = b.get("uniform")
        if u:
            text += f"\n  (uniform {u['type']}: {human_bytes(u['bytes'])}, measured {u['measured_error']:.3g})"
        counts = Counter((b.get("assignment") or {}).values())
        if counts:
            text += "\n  groups: " + ", ".join(f"{t} x{n}" for t, n in counts.most_common())
        return text

    def to_dict(self) -> dict:
        before, after = self.totals()
        spec = self.spec.to_dict()
        spec["components_present"] = spec.pop("components")  # "components" is the per-type summary below
        return dict(
            paths=self.paths, formats=self.formats, **spec,
            request=self.plan.request.to_dict(), policy_version=self.plan.policy_version, layout=self.plan.layout,
            components=self.plan.summary(), bytes_before=before, bytes_after=after,
            fallbacks=[dict(name=e.name, requested=e.requested, type=e.type, reason=e.reason)
                       for e in self.plan.fallbacks()],
            tensors=[dict(name=e.name, shape=list(e.shape), source_type=e.source_type, type=e.type,
                          bytes_before=e.bytes_before, bytes_after=e.bytes_after) for e in self.plan],
            ignored=[dict(file=f, name=n, reason=r) for f, n, r in self.ignored],
            unknown=[dict(file=f, name=n) for f, n in self.unknown],
            overridden=[dict(component=c, replaced=a, by=b) for c, a, b in self.overridden],
            problems={c: str(e) for c, e in self.plan.config.problems.items()},
            budget=self.budget, loras=self.loras or [],
        )

    def __str__(self) -> str:
        s = self.spec
        req = {k: v for k, v in self.plan.request.to_dict().items() if v}
        if len(req.get("rules", [])) > 3:  # a budget quantization writes one rule per tensor group
            req["rules"] = f"{len(req['rules'])} rules (to_dict()['request'] lists them)"
        lines = [f"model:      {', '.join(f'{p} ({f})' for p, f in zip(self.paths, self.formats, strict=True))}",
                 f"family:     {s.family or 'components only'} ({s.variant}), prediction {s.prediction} "
                 f"[{s.prediction_source}]",
                 f"request:    {', '.join(f'{k}={v}' for k, v in req.items()) or 'keep stored types'}"]
        if self.plan.layout != "sdcpp":
            lines.append(f"layout:     {self.plan.layout} (original single-file names and shapes)")
        lines.append("")
        header = f"{'component':<16}{'type':<7}{'tensors':>8}{'before':>13}{'after':>13}"
        lines += [header, "-" * len(header)]
        for comp, types in self.plan.summary().items():
            first = True
            for t, st in sorted(types.items(), key=lambda kv: -kv[1]["bytes_after"]):
                lines.append(f"{comp if first else '':<16}{t:<7}{st['count']:>8}"
                             f"{human_bytes(st['bytes_before']):>13}{human_bytes(st['bytes_after']):>13}")
                first = False
        before, after = self.totals()
        lines += ["-" * len(header),
                  f"{'total':<16}{'':<7}{len(self.plan):>8}{human_bytes(before):>13}{human_bytes(after):>13}"
                  f"   ({after / before:.0%} of stored)" if before else "total: no tensors"]
        groups = self.fallback_groups()
        if groups:
            lines += ["", f"differs from the request ({len(self.plan.fallbacks())} tensors):"]
            lines += [f"  {n:>5} × {r}\n          e.g. {ex}" for r, n, ex in groups]
        for comp, old, new in self.overridden:
            lines.append(f"\n{comp}: taken from {new} (replaces the one in {old})")
        if self.ignored:
            reasons = Counter(r for _, _, r in self.ignored)
            lines += ["", f"ignored ({len(self.ignored)}): " + "; ".join(f"{r} ×{n}" for r, n in reasons.items())]
        if self.budget:
            lines += ["", self._budget_text()]
        for lo in self.loras or []:
            lines += ["", f"LoRA {lo['name']} ({lo['path']}, sha256 {lo['hash']}) at {lo['strength']:g}: "
                      f"{', '.join(lo['kinds'])}, {len(lo['layers'])} layers ({lo['merged']} merged, "
                      f"{lo['runtime']} at run time)"]
            comps = Counter(n.partition(".")[0] for n in lo["layers"])
            lines.append("  adapts: " + ", ".join(f"{c} ×{n}" for c, n in comps.items()))
            if lo["unmatched"]:
                lines.append(f"  UNMATCHED keys, not applied ({len(lo['unmatched'])}): "
                             + ", ".join(lo["unmatched"][:5]) + (" ..." if len(lo["unmatched"]) > 5 else ""))
        for comp, err in self.plan.config.problems.items():
            lines += ["", f"{comp} CANNOT RUN: {err}"]
        if self.unknown:
            lines += ["", f"UNKNOWN tensors, not loaded ({len(self.unknown)}):"]
            lines += [f"  {n}" for _, n in self.unknown[:20]]
            if len(self.unknown) > 20:
                lines.append(f"  ... and {len(self.unknown) - 20} more (see to_dict()['unknown'])")
        return "\n".join(lines)
