"""Generation glue: conditioning, sampling loop, decoding, images and reports."""

from .model import Model, generate

__all__ = ["Model", "generate"]
