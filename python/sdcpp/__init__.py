"""sdcpp: Stable Diffusion (SD 1.x, 2.x, SDXL) on ggml, with one loading path for every model format and
one quantization policy."""

from .api import inspect, load_weights, quantize
from .detect import ModelSpec, detect
from .errors import (
    Cancelled,
    DestinationError,
    ModelFormatError,
    QuantRequestError,
    ResourceError,
    SdcppError,
    UnsupportedModelError,
)
from .evaluation import EvaluationReport, evaluate
from .index import TensorIndex, open_model
from .pipeline import Model, generate
from .plan import QuantPlan, make_plan
from .request import QuantRequest

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "DestinationError", "EvaluationReport", "Model", "ModelFormatError", "ModelSpec", "QuantPlan",
    "QuantRequest", "QuantRequestError", "ResourceError", "SdcppError", "TensorIndex", "UnsupportedModelError",
    "detect", "evaluate", "generate", "inspect", "load_weights", "make_plan", "open_model", "quantize",
]
