"""Typed exceptions. Every failure a user can cause names the file and, where there is one, the tensor."""

from __future__ import annotations


class SdcppError(Exception):
    """Base class of every error sdcpp raises on purpose."""


class ModelFormatError(SdcppError, ValueError):
    """A model file is malformed or inconsistent (header, offsets, dtypes, shapes)."""

    def __init__(self, path, message: str, tensor: str | None = None, rule: str | None = None):
        self.path = str(path)
        self.tensor = tensor
        self.rule = rule
        where = f"{self.path}"
        if tensor is not None:
            where += f", tensor '{tensor}'"
        text = f"{where}: {message}"
        if rule:
            text += f" [rule: {rule}]"
        self._init_args = (path, message, tensor, rule)
        super().__init__(text)

    def __reduce__(self):  # picklable (child processes, Ray workers): replay the constructor's own arguments
        return type(self), self._init_args


class UnsupportedModelError(SdcppError, ValueError):
    """A well-formed file of a model family or feature that sdcpp does not run."""


class QuantRequestError(SdcppError, ValueError):
    """A quantization request that cannot be understood (unknown type, bad rule)."""


class DestinationError(SdcppError, ValueError):
    """An output path that would overwrite or sit inside one of the inputs being read."""


class Cancelled(SdcppError):
    """A progress callback returned False; the work stopped and nothing partial was kept."""


class ResourceError(SdcppError, MemoryError):
    """A request that cannot fit in this machine's memory, refused before any work starts."""
