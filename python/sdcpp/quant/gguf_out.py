"""GGUF output of `quantize()`: written with the `gguf` package's writer, streamed one tensor at a time,
to a temporary file that is renamed into place only when complete."""

from __future__ import annotations

import json
import os

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter

from .. import ggml_types
from ..index import CONFIG_KEY
from ..plan import POLICY_VERSION, QuantPlan
from ..progress import track
from .materialize import stream_planned

ARCHITECTURE = "sdcpp"
FORMAT_VERSION = 1


def _stored_shape(entry) -> tuple[int, ...]:
    rows, n = entry.rows
    return (n,) if len(entry.shape) <= 1 else (rows, n)


def _dominant_types(plan: QuantPlan) -> dict[str, str]:
    """Per component, the type holding most matrix bytes: a one-word summary for file browsers."""
    out = {}
    for comp, types in plan.summary().items():
        out[comp] = max(types.items(), key=lambda kv: kv[1]["bytes_after"])[0]
    return out


def _add_metadata(w: GGUFWriter, plan: QuantPlan, source_files: list[str], configs: dict, extra: dict[str, str]):
    w.add_quantization_version(GGML_QUANT_VERSION)
    if source_files:
        w.add_name(os.path.splitext(os.path.basename(source_files[0].rstrip("/")))[0])
    w.add_uint32("sdcpp.format_version", FORMAT_VERSION)
    w.add_uint32("sdcpp.policy_version", POLICY_VERSION)
    w.add_string("sdcpp.family", plan.spec.family)
    w.add_string("sdcpp.variant", plan.spec.variant)
    w.add_string("sdcpp.prediction", plan.spec.prediction)
    w.add_string("sdcpp.request", json.dumps(plan.request.to_dict()))
    w.add_array("sdcpp.source_files", [os.path.basename(p.rstrip("/")) for p in source_files])
    for comp, t in _dominant_types(plan).items():
        w.add_string(f"sdcpp.type.{comp}", t)
    for comp, cfg in configs.items():
        w.add_string(f"{CONFIG_KEY}{comp}", json.dumps(cfg, sort_keys=True))
    for key, value in extra.items():
        w.add_string(key, value)
    for e in plan:
        if _stored_shape(e) != e.shape and e.shape:
            w.add_array(f"sdcpp.orig_shape.{e.name}", np.asarray(e.shape, dtype=np.int32).tolist())


def write_gguf(dst, index, plan: QuantPlan, n_threads: int = 0, progress=True, extra_metadata: dict | None = None):
    """`extra_metadata`: more string keys (e.g. sdcpp.budget: the choice of a budget quantization)."""
    dst = os.fspath(dst)
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)), f".{os.path.basename(dst)}.{os.getpid()}.partial")
    w = None
    try:
        w = GGUFWriter(tmp, ARCHITECTURE)
        _add_metadata(w, plan, [s.path for s in index.sources], index.configs, extra_metadata or {})
        for e in plan:
            w.add_tensor_info(e.name, _stored_shape(e), np.dtype(np.float32), e.bytes_after,
                              raw_dtype=GGMLQuantizationType(ggml_types.get(e.type).id))
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, data in track(stream_planned(index, plan, n_threads), len(plan), "quantizing", progress):
            w.write_tensor_data(data)  # written at once: the source pages may be released after this
        w.close()
        os.replace(tmp, dst)
    except BaseException:
        # KeyboardInterrupt included: a partial GGUF must never be left where a user would load it.
        if w is not None:
            try:
                w.close()
            except Exception:
                pass
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
