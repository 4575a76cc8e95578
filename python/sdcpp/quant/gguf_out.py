"""GGUF output of `quantize()`: written with the `gguf` package's writer, streamed one tensor at a time,
to a temporary file that is renamed into place only when complete.

Two layouts (plan.layout): "sdcpp" (canonical names, conv kernels as [out, in*kh*kw] rows, their shapes in
`sdcpp.orig_shape.*`) and "stable-diffusion.cpp" (the original single-file names and shapes, as that project's
`--mode convert` writes them; see names/original.py and plan._for_sd_cpp for what it cannot hold)."""

from __future__ import annotations

import json
import os

import numpy as np
from gguf import GGML_QUANT_VERSION, GGMLQuantizationType, GGUFWriter

from .. import ggml_types
from ..index import CONFIG_KEY
from ..io.raw import PageReleaser
from ..names.original import original_layout
from ..plan import POLICY_VERSION, SD_CPP, QuantPlan
from ..progress import track
from .materialize import planned_bytes, stream_planned

ARCHITECTURE = "sdcpp"
FORMAT_VERSION = 1
MAX_NAME = 127  # stable-diffusion.cpp's ggml build raises GGML_MAX_NAME to 128 (with the terminating zero)


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
    """stable-diffusion.cpp reads no metadata (only tensor names); sdcpp reads these keys back from either layout."""
    w.add_quantization_version(GGML_QUANT_VERSION)
    if source_files:
        w.add_name(os.path.splitext(os.path.basename(source_files[0].rstrip("/")))[0])
    w.add_uint32("sdcpp.format_version", FORMAT_VERSION)
    w.add_uint32("sdcpp.policy_version", POLICY_VERSION)
    w.add_string("sdcpp.layout", plan.layout)
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
    if plan.layout == SD_CPP:
        return
    for e in plan:
        if _stored_shape(e) != e.shape and e.shape:
            w.add_array(f"sdcpp.orig_shape.{e.name}", np.asarray(e.shape, dtype=np.int32).tolist())


def _sdcpp_tensors(index, plan: QuantPlan, n_threads: int):
    """[(name, shape, type, nbytes)], and the bytes of each in that order."""
    infos = [(e.name, _stored_shape(e), e.type, e.bytes_after) for e in plan]
    return infos, (data for _, data in stream_planned(index, plan, n_threads))


def _transposed(data: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw elements of a float type, stored [a, b] -> [b, a] (element-wise: any 2- or 4-byte float)."""
    size = ggml_types.get(type_name).type_size
    elements = data.view({2: np.uint16, 4: np.uint32}[size]).reshape(shape[::-1])
    return np.ascontiguousarray(elements.T).reshape(-1).view(np.uint8)


def _sd_cpp_tensors(index, plan: QuantPlan, n_threads: int):
    """Original names and shapes, sorted by name as stable-diffusion.cpp's convert writes a safetensors source; the
    parts of a fused tensor are concatenated row-wise (rows are whole blocks, so quantized bytes concatenate)."""
    layout = original_layout({e.name: e.shape for e in plan}, plan.spec.family)
    tensors = [layout[name] for name in sorted(layout)]
    infos = []
    for o in tensors:
        if len(o.name.encode()) > MAX_NAME:
            raise ValueError(f"tensor name '{o.name}' is longer than stable-diffusion.cpp's {MAX_NAME} bytes")
        types = {plan[p].type for p in o.parts}
        assert len(types) == 1, (o.name, types)  # plan._for_sd_cpp gave fused parts one type
        infos.append((o.name, o.shape, types.pop(), sum(plan[p].bytes_after for p in o.parts)))

    def data():
        releaser = PageReleaser(index.files, [index[p].source for o in tensors for p in o.parts])
        for o in tensors:
            parts = [planned_bytes(index.files, index[p], plan[p], n_threads, index.merges.get(p)) for p in o.parts]
            out = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if o.transpose:
                out = _transposed(out, plan[o.parts[0]].type, o.shape)
            yield out
            for p in o.parts:
                releaser.done(index[p].source)

    return infos, data()


def write_gguf(dst, index, plan: QuantPlan, n_threads: int = 0, progress=True, extra_metadata: dict | None = None):
    """`extra_metadata`: more string keys (e.g. sdcpp.budget: the choice of a budget quantization)."""
    dst = os.fspath(dst)
    tmp = os.path.join(os.path.dirname(os.path.abspath(dst)), f".{os.path.basename(dst)}.{os.getpid()}.partial")
    w = None
    try:
        w = GGUFWriter(tmp, ARCHITECTURE)
        _add_metadata(w, plan, [s.path for s in index.sources], index.configs, extra_metadata or {})
        infos, datas = (_sd_cpp_tensors if plan.layout == SD_CPP else _sdcpp_tensors)(index, plan, n_threads)
        for name, shape, type_name, nbytes in infos:
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes,
                              raw_dtype=GGMLQuantizationType(ggml_types.get(type_name).id))
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for data in track(datas, len(infos), "quantizing", progress):
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
