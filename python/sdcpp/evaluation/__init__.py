"""Measuring what quantization does: `evaluate()` (bytes, speed, memory, error per type, component and image),
`sensitivity()` (which tensor groups the error comes from) and the budget quantizer built on it."""

from .compare import evaluate
from .report import EvaluationReport, Row

__all__ = ["EvaluationReport", "Row", "evaluate"]
