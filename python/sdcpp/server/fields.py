"""JSON field types of the request models: integers (whole floats such as 512.0 accepted, as sdcpp.checks does),
finite numbers, strings and booleans, none of them converted from another JSON type ("512", true, 1 for a bool
are refused with 422 naming the field)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictStr


def _integer(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be an integer, got {type(v).__name__}")
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        raise ValueError(f"must be an integer, got {v!r}")
    return int(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not math.isfinite(f):
        raise ValueError(f"must be finite, got {v!r}")
    return f


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_number)]
Str = StrictStr
Bool = StrictBool


class RequestBody(BaseModel):
    """Unknown fields are refused (a typo would otherwise be ignored silently)."""

    model_config = ConfigDict(extra="forbid")
