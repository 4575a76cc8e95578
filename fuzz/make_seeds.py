"""Write the fuzzers' seed corpora: small valid files (each well under 10 KB), one folder per parser.

    python fuzz/make_seeds.py [OUT_DIR]     # default: fuzz/seeds/{safetensors,gguf,ckpt,ckpt_pickle}

Built with the writers of tests/malformed/make_corpus.py from a narrow version of its mini SD1 model, plus
variants that exercise more of each format (metadata, other dtypes, shared storages, padding). When torch
is installed, files written by torch.save itself are added too (its zip layout has data descriptors and
alignment padding that Python's zipfile does not write)."""

from __future__ import annotations

import io
import os
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "malformed"))
import make_corpus as mc  # noqa: E402

SEED_WIDTH = 8
MAX_SEED = 10 * 1024


def safetensors_seeds(tensors):
    header, data = mc.st_header(tensors)
    yield "mini", mc.st_bytes(header, data)
    yield "metadata", mc.st_bytes({"__metadata__": {"sdcpp.prediction": "v", "modelspec.title": "x"}, **header},
                                  data)
    extra = {"a": np.arange(6, dtype=np.float64), "b": np.zeros(4, np.uint8), "c": np.ones(3, np.int32)}
    h, d = {}, b""
    for name, arr in extra.items():
        raw = arr.tobytes()
        h[name] = {"dtype": {"float64": "F64", "uint8": "U8", "int32": "I32"}[arr.dtype.name],
                   "shape": list(arr.shape), "data_offsets": [len(d), len(d) + len(raw)]}
        d += raw
    h["bf"] = {"dtype": "BF16", "shape": [2, 2], "data_offsets": [len(d), len(d) + 8]}
    h["bool"] = {"dtype": "BOOL", "shape": [0], "data_offsets": [len(d) + 8, len(d) + 8]}
    yield "dtypes", mc.st_bytes(h, d + b"\0" * 8)
    yield "empty", mc.st_bytes({}, b"")


def gguf_seeds(tensors):
    kvs, infos, data = mc.gguf_parts(tensors)
    yield "mini", mc.gguf_bytes(kvs, infos, data)
    kvs2 = kvs + [mc.g_kv("names", mc.GGUF_ARRAY, (mc.GGUF_STRING, ["a", "bc"])),
                  mc.g_kv("flag", mc.GGUF_BOOL, True), mc.g_kv("sdcpp.config.unet", mc.GGUF_STRING, "{}")]
    yield "kv_types", mc.gguf_bytes(kvs2, infos, data)
    kvs64, infos64, data64 = mc.gguf_parts(tensors, alignment=64)
    yield "align64_v2", mc.gguf_bytes(kvs64, infos64, data64, alignment=64, version=2)
    yield "empty", mc.gguf_bytes([], [], b"")


def ckpt_seeds(tensors):
    items, storages = mc.ckpt_parts(tensors)
    yield "wrapped", mc.torch_zip(mc.state_dict_pickle(items), storages)
    yield "plain", mc.torch_zip(mc.state_dict_pickle(items, wrap=False), storages, prefix="model")
    # Two views of one storage, a parameter, an OrderedDict state dict, a numpy scalar next to it.
    base = np.arange(16, dtype=np.float32)
    storage = mc.p_storage("0", "FloatStorage", 16)
    views = [(mc.p_str("a"), mc.p_tensor(storage, 0, (2, 4), (4, 1))),
             (mc.p_str("b"), mc.p_call(mc.p_global("torch._utils", "_rebuild_parameter"),
                                       mc.p_tensor(storage, 8, (8,), (1,)), b"\x88", b"N"))]
    ordered = mc.p_call(mc.p_global("collections", "OrderedDict")) + b"(" + b"".join(k + v for k, v in views) + b"u"
    scalar = mc.p_call(mc.p_global("numpy.core.multiarray", "scalar"),
                       mc.p_call(mc.p_global("numpy", "dtype"), mc.p_str("i8"), b"\x89", b"\x88"),
                       mc.p_call(mc.p_global("_codecs", "encode"), mc.p_str("\x07" + "\0" * 7), mc.p_str("latin1")))
    top = mc.p_dict([(mc.p_str("state_dict"), ordered), (mc.p_str("global_step"), scalar)])
    yield "views", mc.torch_zip(b"\x80\x02" + top + b".", {"0": base.tobytes()})
    try:
        import torch
    except ImportError:
        return
    buf = io.BytesIO()
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in tensors.items() if v.size < 600}}, buf)
    yield "torch_save", buf.getvalue()


def write(out_dir=None):
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    tensors = mc.mini_model(0, width=SEED_WIDTH)
    counts = {}
    for kind, gen, suffix in (("safetensors", safetensors_seeds, ".safetensors"), ("gguf", gguf_seeds, ".gguf"),
                              ("ckpt", ckpt_seeds, ".ckpt")):
        folder = os.path.join(out_dir, kind)
        os.makedirs(folder, exist_ok=True)
        for name, data in gen(tensors):
            assert len(data) <= MAX_SEED, (kind, name, len(data))
            with open(os.path.join(folder, name + suffix), "wb") as f:
                f.write(data)
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "ckpt":  # the pickle alone seeds the pickle-mode fuzzer
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
                    os.makedirs(os.path.join(out_dir, "ckpt_pickle"), exist_ok=True)
                    with open(os.path.join(out_dir, "ckpt_pickle", name + ".pkl"), "wb") as f:
                        f.write(z.read(pkl))
    return counts


if __name__ == "__main__":
    print(write(sys.argv[1] if len(sys.argv) > 1 else None))
