"""Argument checks shared by every entry point: run before any work, each error names the argument.

Integral values may come as Python or numpy integers, or as whole floats (JSON from web clients sends 512.0);
anything else that would be truncated (64.5, "64", True) is refused rather than silently changed."""

from __future__ import annotations

import logging
import math
import numbers
import os

import numpy as np

log = logging.getLogger("sdcpp")


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, numbers.Real)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r:.40}")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def real(name: str, value, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number (no NaN or inf), optionally bounded (inclusive)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r:.40}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {v:g}")
    return v


def optional_bool(name: str, value) -> bool | None:
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise TypeError(f"{name} must be True, False or None, got {type(value).__name__} {value!r:.40}")


def finite_array(name: str, value) -> np.ndarray:
    """A float32 array without NaN or inf."""
    a = np.asarray(value, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def size_pair(name: str, value) -> tuple[int, int]:
    """A (height, width) pair of positive integers."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a (height, width) pair, got {value!r:.40}")
    return integer(f"{name}[0]", value[0], minimum=0), integer(f"{name}[1]", value[1], minimum=0)


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


PRECISIONS = ("f32", "bf16", "f16")


def precision(value) -> str:
    """The compute precision of the products: "f32" (exact kernels, the default), "bf16" (operands rounded to bf16,
    accumulated in f32, on AMX where the CPU has it; norms, softmax and time embeddings stay f32; without AMX the
    f32 kernels run) or "f16" (linear products and convs on AVX512-FP16 where the CPU has it: f16 operands, f16
    partial sums of 32 terms, f32 totals; attention, norms and the rest as f32; without it the f32 kernels run).
    See docs/benchmarks.md for their speed and error, and `sdcpp system-info` for what this CPU runs."""
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
    return value


def threads(n_threads) -> int:
    """0 (one per physical core, decided by the core) or a count, capped at the CPUs this process may use:
    more threads than CPUs only slows ggml's spinning workers down (0.47 s at 2 vs 18 s at 8 threads on a
    2-core machine), and a huge count would hang creating them."""
    n = integer("n_threads", n_threads, minimum=0)
    cpus = available_cpus()
    if n > cpus:
        log.warning("n_threads=%d is more than the %d CPUs available; using %d", n, cpus, cpus)
        return cpus
    return n
