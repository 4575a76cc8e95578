"""Expectations on canonical tensor shapes, each failure a ModelFormatError naming the file, the tensor, its shape
and the shape the rest of the model implies."""

from __future__ import annotations

from ..errors import ModelFormatError


def _fmt(shape) -> str:
    return "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"


class Shapes:
    """Canonical name -> torch-order shape of one model, with the file each tensor came from."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], path_of: dict[str, str], fallback_path: str = ""):
        self.shapes = shapes
        self.path_of = path_of
        self.fallback_path = fallback_path

    @classmethod
    def of_index(cls, index) -> Shapes:
        return cls({t.name: tuple(t.shape) for t in index}, {t.name: t.source.path for t in index},
                   index.sources[0].path if index.sources else "")

    def has(self, name: str) -> bool:
        return name in self.shapes

    def fail(self, name: str, message: str):
        raise ModelFormatError(self.path_of.get(name, self.fallback_path), message, tensor=name, rule="architecture")

    def need(self, name: str, why: str = "") -> tuple[int, ...]:
        if name not in self.shapes:
            self.fail(name, "is missing" + (f" ({why})" if why else ""))
        return self.shapes[name]

    def expect(self, name: str, want: tuple, why: str) -> tuple[int, ...]:
        """`want` may hold None for "any size"."""
        got = self.need(name, why)
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want, strict=False)):
            self.fail(name, f"has shape {_fmt(got)}, expected {_fmt(want)} ({why})")
        return got

    def vector(self, name: str, n: int, why: str):
        self.expect(name, (n,), why)

    def norm(self, prefix: str, channels: int, why: str, groups: int | None = None):
        self.vector(prefix + ".weight", channels, why)
        self.vector(prefix + ".bias", channels, why)
        if groups is not None and channels % groups:
            self.fail(prefix + ".weight", f"{channels} channels do not split into {groups} GroupNorm groups")

    def linear(self, prefix: str, n_in: int | None, n_out: int | None, why: str, *, bias: bool | None = None,
               as_1x1: bool = False) -> tuple[int, int]:
        """A linear layer [out, in] (as_1x1: also a 1x1 conv [out, in, 1, 1]) and its bias [out] (bias=None:
        optional; True: required). Returns (in, out)."""
        name = prefix + ".weight"
        got = self.need(name, why)
        if as_1x1 and len(got) == 4 and got[2:] == (1, 1):
            got = got[:2]
        if len(got) != 2 or (n_out is not None and got[0] != n_out) or (n_in is not None and got[1] != n_in):
            self.fail(name, f"has shape {_fmt(self.shapes[name])}, expected {_fmt((n_out, n_in))} ({why})")
        if bias or (bias is None and self.has(prefix + ".bias")):
            self.vector(prefix + ".bias", got[0], f"bias of {prefix}")
        return got[1], got[0]

    def conv(self, prefix: str, n_in: int, n_out: int | None, k: int, why: str, *, bias: bool | None = True) -> int:
        """A k x k conv kernel [out, in, k, k] (or stored as rows [out, in*k*k]) with its bias (bias=None:
        optional, checked when present). Returns out."""
        name = prefix + ".weight"
        got = self.need(name, why)
        ok = (len(got) == 4 and got[1:] == (n_in, k, k)) or (len(got) == 2 and got[1] == n_in * k * k)
        if not ok or (n_out is not None and got[0] != n_out):
            self.fail(name, f"has shape {_fmt(got)}, expected {_fmt((n_out, n_in, k, k))} ({why})")
        if bias or (bias is None and self.has(prefix + ".bias")):
            self.vector(prefix + ".bias", got[0], f"bias of {prefix}")
        return got[0]

    def out_channels(self, prefix: str) -> int:
        return self.need(prefix + ".weight")[0]
