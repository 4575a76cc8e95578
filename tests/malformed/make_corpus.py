"""A deterministic corpus of malformed model files for sdcpp's readers (safetensors, GGUF, PyTorch zip).

    python tests/malformed/make_corpus.py OUT_DIR [--seed 0]

Writes OUT_DIR/<case>.<ext> plus OUT_DIR/manifest.json ({file name: "refuse" | "any"}): "refuse" files
must be rejected with a typed error; "any" files (random damage that may leave a file valid) must either
load or be rejected with a typed error. The three base files are one tiny SD1-shaped model (a few UNet,
VAE and text-encoder tensors, 13 KB) that passes `sdcpp.inspect` and `sdcpp.load_weights`, so damage can
reach every stage. Files are written by the small writers below, not by torch or the gguf package, so
every field can be set to a wrong value. Nothing here needs torch or the native extension."""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import struct
import warnings
import zipfile

import numpy as np
from gguf import GGML_QUANT_SIZES

# ----------------------------------------------------------------------------------------------- model

UNET = "model.diffusion_model."
TE = "cond_stage_model.transformer.text_model."
CONV_IN = UNET + "input_blocks.0.0.weight"


def mini_model(seed: int = 0, width: int = 32) -> dict[str, np.ndarray]:
    """Raw LDM names -> arrays: enough for detection as SD1 and for a plan with quantized tensors."""
    rng = np.random.default_rng(seed)

    def normal(shape, dtype):
        return (0.1 * rng.standard_normal(shape)).astype(dtype)

    return {
        CONV_IN: normal((width, 4, 3, 3), np.float16),
        UNET + "input_blocks.0.0.bias": normal((width,), np.float32),
        UNET + "input_blocks.1.1.proj_in.weight": normal((width, width, 1, 1), np.float16),
        UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": normal((width, 64), np.float16),
        "first_stage_model.decoder.conv_in.weight": normal((8, 4, 3, 3), np.float32),
        TE + "encoder.layers.0.self_attn.q_proj.weight": normal((width, width), np.float16),
        TE + "embeddings.position_ids": np.arange(77, dtype=np.int64).reshape(1, 77),
    }


# ------------------------------------------------------------------------------------------ safetensors

ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def st_header(tensors) -> tuple[dict, bytes]:
    header, data = {}, b""
    for name, arr in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": ST_DTYPES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data


def st_bytes(header, data: bytes, length: int | None = None) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


# ------------------------------------------------------------------------------------------------- GGUF

GGUF_U32, GGUF_I32, GGUF_F32, GGUF_BOOL, GGUF_STRING, GGUF_ARRAY, GGUF_U64 = 4, 5, 6, 7, 8, 9, 10
GGML_F32, GGML_F16, GGML_Q8_0, GGML_I64 = 0, 1, 8, 27
_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def g_str(s) -> bytes:
    b = s if isinstance(s, bytes) else s.encode()
    return struct.pack("<Q", len(b)) + b


def g_value(vtype, value) -> bytes:
    if vtype == GGUF_STRING:
        return g_str(value)
    if vtype == GGUF_ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(g_value(itype, v) for v in items)
    return struct.pack(_GGUF_SCALAR[vtype], value)


def g_kv(key, vtype, value) -> bytes:
    return g_str(key) + struct.pack("<I", vtype) + g_value(vtype, value)


def g_info(name, ne, type_id, offset) -> bytes:
    return g_str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + \
        struct.pack("<IQ", type_id, offset)


def q8_0_bytes(arr: np.ndarray) -> bytes:
    """Rows of 32-value blocks: f16 scale then 32 int8 (what ggml's q8_0 stores)."""
    out = b""
    for block in arr.astype(np.float32).reshape(-1, 32):
        scale = float(np.abs(block).max()) / 127 or 1.0
        out += np.float16(scale).tobytes() + np.round(block / scale).astype(np.int8).tobytes()
    return out


def gguf_parts(tensors, alignment=32):
    """(key/values, tensor infos, data) of the mini model: f16/f32 kept, the attention matrix as q8_0,
    conv kernels stored flattened to 2-D with their shape recorded the way sdcpp's writer does."""
    kvs = [g_kv("general.architecture", GGUF_STRING, "sdcpp"), g_kv("sdcpp.family", GGUF_STRING, "sd1"),
           g_kv("general.alignment", GGUF_U32, alignment)]
    infos, data = [], b""
    for name, arr in tensors.items():
        if name.endswith("to_k.weight"):
            raw, type_id = q8_0_bytes(arr), GGML_Q8_0
        else:
            raw, type_id = arr.tobytes(), {np.float32: GGML_F32, np.float16: GGML_F16, np.int64: GGML_I64}[
                arr.dtype.type]
        shape = arr.shape
        if len(shape) == 4:
            kvs.append(g_kv("sdcpp.orig_shape." + name, GGUF_ARRAY, (GGUF_I32, list(shape))))
            shape = (shape[0], int(np.prod(shape[1:])))
        infos.append((name, list(reversed(shape)), type_id, len(data)))
        data += raw + b"\0" * (-len(raw) % alignment)
    return kvs, infos, data


def gguf_bytes(kvs, infos, data, alignment=32, version=3, n_tensors=None, n_kv=None, info_blobs=None) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + (b"".join(g_info(*i) for i in infos) if info_blobs is None else info_blobs)
    return body + b"\0" * (-len(body) % alignment) + data


# ------------------------------------------------------------------------------- pickle and torch zip

def p_str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def p_int(i: int) -> bytes:
    if -(1 << 31) <= i < (1 << 31):
        return b"J" + struct.pack("<i", i)
    raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_dict(pairs) -> bytes:
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def p_call(fn: bytes, *args: bytes) -> bytes:
    return fn + p_tuple(*args) + b"R"


STORAGE_OF = {np.float32: "FloatStorage", np.float16: "HalfStorage", np.int64: "LongStorage",
              np.float64: "DoubleStorage"}


def p_storage(key: str, storage_type: str, numel: int) -> bytes:
    return p_tuple(p_str("storage"), p_global("torch", storage_type), p_str(key), p_str("cpu"), p_int(numel)) + b"Q"


def p_tensor(storage: bytes, offset: int, shape, stride, rebuild="_rebuild_tensor_v2") -> bytes:
    hooks = p_call(p_global("collections", "OrderedDict"))
    return p_call(p_global("torch._utils", rebuild), storage, p_int(offset), p_tuple(*map(p_int, shape)),
                  p_tuple(*map(p_int, stride)), b"\x89", hooks)


def contiguous_stride(shape):
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= d
    return tuple(reversed(stride))


def ckpt_parts(tensors):
    """(pickle item per tensor, storages {key: bytes}) with one storage per tensor, keys "0", "1", ..."""
    items, storages = [], {}
    for i, (name, arr) in enumerate(tensors.items()):
        key = str(i)
        storages[key] = arr.tobytes()
        storage = p_storage(key, STORAGE_OF[arr.dtype.type], arr.size)
        items.append((p_str(name), p_tensor(storage, 0, arr.shape, contiguous_stride(arr.shape))))
    return items, storages


def state_dict_pickle(items, wrap=True) -> bytes:
    sd = p_dict(items)
    top = p_dict([(p_str("state_dict"), sd), (p_str("global_step"), p_int(7))]) if wrap else sd
    return b"\x80\x02" + top + b"."


def torch_zip(pkl: bytes, storages: dict[str, bytes], prefix="archive", extra=None,
              compression=zipfile.ZIP_STORED) -> bytes:
    """The layout torch.save writes (entries stored uncompressed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression) as z:
        warnings.simplefilter("ignore")  # some cases add a duplicate entry on purpose
        entries = [(f"{prefix}/data.pkl", pkl), (f"{prefix}/byteorder", b"little")]
        entries += [(f"{prefix}/data/{key}", raw) for key, raw in storages.items()]
        entries += [(f"{prefix}/version", b"3\n"), *(extra or {}).items()]
        for name, raw in entries:
            z.writestr(_entry(name), raw, compress_type=compression)
    return buf.getvalue()


def _entry(name) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed time: the same bytes every run


# ------------------------------------------------------------------------------------------- mutations

def truncations(data: bytes, rng: random.Random, n: int):
    """Cut points: every byte of the first 16, evenly spread ones, random ones; never the full length."""
    points = set(range(min(16, len(data))))
    points |= {len(data) * k // n for k in range(n)}
    points |= {rng.randrange(len(data)) for _ in range(n)}
    points |= {len(data) - 1}
    return sorted(p for p in points if p < len(data))


def bit_flips(data: bytes, rng: random.Random, region: int, n: int):
    for _ in range(n):
        out = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            pos = rng.randrange(min(region, len(out)))
            out[pos] ^= 1 << rng.randrange(8)
        yield bytes(out)


def overwrite(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


# ------------------------------------------------------------------------------------------------ cases

def safetensors_cases(tensors, rng):
    header, data = st_header(tensors)
    base = st_bytes(header, data)
    yield "st_valid", base, "any"
    for p in truncations(base, rng, 40):
        yield f"st_trunc_{p}", base[:p], "refuse"
    hlen = 8 + len(json.dumps(header).encode())
    for i, flipped in enumerate(bit_flips(base, rng, hlen, 40)):
        yield f"st_flip_{i}", flipped, "any"

    def edited(tag, edit, expect="refuse"):
        h = json.loads(json.dumps(header))
        edit(h)
        return f"st_{tag}", st_bytes(h, data), expect

    name = CONV_IN
    for tag, value in [("F8_E4M3", "dtype_fp8"), ("Q9", "dtype_unknown"), ("f32", "dtype_lower"),
                       (None, "dtype_null"), (7, "dtype_int")]:
        yield edited(value, lambda h, v=tag: h[name].__setitem__("dtype", v))
    yield edited("dtype_size_mismatch", lambda h: h[name].__setitem__("dtype", "F32"))
    for tag, shape in [("neg", [-32, 4, 3, 3]), ("float", [32.0, 4, 3, 3]), ("bool", [True, 4, 3, 3]),
                       ("str", "32"), ("huge", [1 << 62, 1 << 62]), ("ninedims", [1] * 9), ("null", None),
                       ("nested", [[32], 4, 3, 3]), ("wrong_numel", [32, 4, 3, 4]), ("zero", [0, 4, 3, 3])]:
        yield edited(f"shape_{tag}", lambda h, s=shape: h[name].__setitem__("shape", s))
    begin, end = header[name]["data_offsets"]
    for tag, offs in [("reversed", [end, begin]), ("neg", [-8, end - begin - 8]), ("past_end", [begin, len(data) + 1]),
                      ("float", [float(begin), float(end)]), ("three", [begin, end, end]), ("str", "0,8"),
                      ("huge", [1 << 70, (1 << 70) + end - begin]), ("bool", [False, True])]:
        yield edited(f"offsets_{tag}", lambda h, o=offs: h[name].__setitem__("data_offsets", o))
    other = UNET + "input_blocks.0.0.bias"
    yield edited("overlap", lambda h: h[other].__setitem__(
        "data_offsets", [begin + 4, begin + 4 + h[other]["data_offsets"][1] - h[other]["data_offsets"][0]]))
    yield edited("entry_list", lambda h: h.__setitem__(name, [1, 2]))
    yield edited("entry_missing_dtype", lambda h: h[name].pop("dtype"))
    yield edited("metadata_list", lambda h: h.__setitem__("__metadata__", ["a"]))
    yield edited("metadata_int_value", lambda h: h.__setitem__("__metadata__", {"a": 1}))
    # Metadata that sdcpp interprets: shapes recorded for flattened kernels, the prediction type, configs.
    for tag, value in [("letters", "abc"), ("product", "[1, 2]"), ("digits", "1152"), ("empty", ""),
                       ("json_list", "[32, 4, 3, 3]")]:
        yield edited(f"orig_shape_{tag}", lambda h, v=value: h.__setitem__(
            "__metadata__", {"sdcpp.orig_shape." + name: v}), "any")
    for tag, value in [("bogus", "x0"), ("empty", ""), ("json", "{}")]:
        yield edited(f"prediction_{tag}", lambda h, v=value: h.__setitem__("__metadata__", {"sdcpp.prediction": v}),
                     "any")
    for tag, value in [("bad_json", "{"), ("list", "[1]"), ("deep", "[" * 100000), ("str", '"x"')]:
        yield edited(f"config_{tag}", lambda h, v=value: h.__setitem__("__metadata__", {"sdcpp.config.unet": v}),
                     "any")
    # Whole-header damage.
    blob = json.dumps(header).encode()
    for tag, raw in [("list", b"[]"), ("number", b"1"), ("string", b'"x"'), ("null", b"null"), ("empty", b""),
                     ("not_json", b"{not json}"), ("bad_utf8", b'{"\xff": 1}'), ("deep_array", b"[" * 100000),
                     ("deep_object", b'{"a":' * 100000), ("nan", b'{"a": NaN}'),
                     ("big_int", b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'),
                     ("trailing", blob + b" x"), ("bom", b"\xef\xbb\xbf" + blob), ("nul", blob[:-1] + b"\0}")]:
        yield f"st_header_{tag}", st_bytes(raw, data), "refuse"
    dup = blob[:-1] + b", " + json.dumps(name).encode() + b": " + json.dumps(header[name]).encode() + b"}"
    yield "st_header_duplicate_key", st_bytes(dup, data), "refuse"
    for tag, length in [("huge", 1 << 62), ("max", (1 << 64) - 1), ("past_end", len(blob) + len(data) + 1),
                        ("zero", 0), ("short", len(blob) - 1), ("over_limit", 100 * 1024 * 1024 + 1)]:
        yield f"st_hlen_{tag}", st_bytes(blob, data, length=length), "refuse"
    yield "st_empty_file", b"", "refuse"
    yield "st_only_length", struct.pack("<Q", 2), "refuse"
    yield "st_no_tensors", st_bytes({}, b""), "any"  # valid and empty


def gguf_cases(tensors, rng):
    kvs, infos, data = gguf_parts(tensors)
    base = gguf_bytes(kvs, infos, data)
    yield "gguf_valid", base, "any"
    last_end = len(base) - len(data) + infos[-1][3] + len(list(tensors.values())[-1].tobytes())
    for p in truncations(base, rng, 40):
        yield f"gguf_trunc_{p}", base[:p], "refuse" if p < last_end else "any"  # the tail is padding
    header_len = len(base) - len(data)
    for i, flipped in enumerate(bit_flips(base, rng, header_len, 40)):
        yield f"gguf_flip_{i}", flipped, "any"

    def case(tag, expect="refuse", **kw):
        parts = dict(kvs=kvs, infos=infos, data=data)
        parts.update(kw)
        return f"gguf_{tag}", gguf_bytes(**parts), expect

    big = (1 << 64) - 1
    yield case("version_1", version=1)
    yield case("version_99", version=99)
    yield case("n_tensors_huge", n_tensors=big)
    yield case("n_tensors_more", n_tensors=len(infos) + 1)
    yield case("n_kv_huge", n_kv=big)
    yield case("n_kv_more", n_kv=len(kvs) + 1)
    yield case("n_kv_fewer", n_kv=len(kvs) - 1)
    yield "gguf_magic", b"GGUX" + base[4:], "refuse"
    yield "gguf_only_magic", b"GGUF", "refuse"
    # Key/value damage.
    bad_kvs = {
        "string_len_huge": struct.pack("<Q", big) + b"key",
        "string_len_past_end": struct.pack("<Q", 1 << 20) + b"key",
        "key_bad_utf8": g_str(b"\xff\xfe") + struct.pack("<I", GGUF_U32) + struct.pack("<I", 1),
        "value_type_unknown": g_str("k") + struct.pack("<I", 99) + b"\0" * 8,
        "array_of_arrays": g_str("k") + struct.pack("<IIQ", GGUF_ARRAY, GGUF_ARRAY, 1) + struct.pack("<IQ", 4, 0),
        "array_count_huge": g_str("k") + struct.pack("<IIQ", GGUF_ARRAY, GGUF_U32, big),
        "array_count_past_end": g_str("k") + struct.pack("<IIQ", GGUF_ARRAY, GGUF_U32, 1 << 20),
        "array_type_unknown": g_str("k") + struct.pack("<IIQ", GGUF_ARRAY, 77, 2) + b"\0" * 16,
        "array_of_strings_bad": g_str("k") + struct.pack("<IIQ", GGUF_ARRAY, GGUF_STRING, 2) + g_str("a") +
        struct.pack("<Q", big),
        "duplicate_key": kvs[0],
    }
    for tag, blob in bad_kvs.items():
        yield case(f"kv_{tag}", kvs=kvs + [blob])
    for tag, alignment_kv in [("zero", g_kv("general.alignment", GGUF_U32, 0)),
                              ("three", g_kv("general.alignment", GGUF_U32, 3)),
                              ("string", g_kv("general.alignment", GGUF_STRING, "32")),
                              ("float", g_kv("general.alignment", GGUF_F32, 32.0)),
                              ("huge", g_kv("general.alignment", GGUF_U64, 1 << 63)),
                              ("bool", g_kv("general.alignment", GGUF_BOOL, True))]:
        yield case(f"alignment_{tag}", kvs=[k for k in kvs if b"general.alignment" not in k] + [alignment_kv])
    yield case("alignment_64_but_data_at_32", kvs=[k for k in kvs if b"general.alignment" not in k] +
               [g_kv("general.alignment", GGUF_U32, 64)], expect="any")
    # Metadata sdcpp interprets.
    conv = CONV_IN
    for tag, kv in [("string", g_kv("sdcpp.orig_shape." + conv, GGUF_STRING, "32,4,3,3")),
                    ("int", g_kv("sdcpp.orig_shape." + conv, GGUF_U32, 5)),
                    ("product", g_kv("sdcpp.orig_shape." + conv, GGUF_ARRAY, (GGUF_I32, [32, 4, 3, 4]))),
                    ("negative", g_kv("sdcpp.orig_shape." + conv, GGUF_ARRAY, (GGUF_I32, [-32, -4, 3, 3]))),
                    ("floats", g_kv("sdcpp.orig_shape." + conv, GGUF_ARRAY, (GGUF_F32, [32.5, 4, 3, 3]))),
                    ("strings", g_kv("sdcpp.orig_shape." + conv, GGUF_ARRAY, (GGUF_STRING, ["32", "36"]))),
                    ("empty", g_kv("sdcpp.orig_shape." + conv, GGUF_ARRAY, (GGUF_I32, []))),
                    ("comfy_huge", g_kv("comfy.gguf.orig_shape." + conv, GGUF_ARRAY, (GGUF_U64, [big, big]))),
                    ("prediction_int", g_kv("sdcpp.prediction", GGUF_U32, 1)),
                    ("prediction_bogus", g_kv("sdcpp.prediction", GGUF_STRING, "x0")),
                    ("prediction_list", g_kv("sdcpp.prediction", GGUF_ARRAY, (GGUF_STRING, ["v"]))),
                    ("config_bad_json", g_kv("sdcpp.config.unet", GGUF_STRING, "{")),
                    ("config_list", g_kv("sdcpp.config.unet", GGUF_STRING, "[1, 2]")),
                    ("config_deep", g_kv("sdcpp.config.unet", GGUF_STRING, "[" * 100000)),
                    ("config_int", g_kv("sdcpp.config.unet", GGUF_U32, 3))]:
        yield case(f"meta_{tag}", kvs=[k for k in kvs if conv.encode() not in k] + [kv], expect="any")
    # Tensor info damage.
    name0, ne0, type0, off0 = infos[0]

    def with_info(tag, info, expect="refuse"):
        return case(f"info_{tag}", infos=[info] + infos[1:], expect=expect)

    yield with_info("dims_zero", (name0, [], type0, off0))
    yield with_info("dims_five", (name0, [1, 1, 1, 1, ne0[0] * ne0[1]], type0, off0))
    yield with_info("dims_huge", (name0, [1 << 40, 1 << 40], type0, off0))
    yield with_info("dims_wrap", (name0, [1 << 63, 2], type0, off0))
    yield with_info("dim_zero", (name0, [0, ne0[1]], type0, off0), expect="any")
    for type_id in (2, 9, 15, 16, 19, 24, 28, 30, 34, 39, 40, 41, 99, 1 << 31):
        yield with_info(f"type_{type_id}", (name0, ne0, type_id, off0), expect="any")
    yield with_info("offset_misaligned", (name0, ne0, type0, off0 + 1))
    yield with_info("offset_past_end", (name0, ne0, type0, len(data)))
    yield with_info("offset_huge", (name0, ne0, type0, big - 31))
    yield with_info("overlap", (name0, ne0, type0, infos[1][3]))
    yield with_info("name_bad_utf8", (b"\xc3\x28", ne0, type0, off0))
    yield with_info("name_empty", ("", ne0, type0, off0), expect="any")
    yield case("info_duplicate_name", infos=infos + [infos[0]])
    yield case("info_bytes_garbage", info_blobs=bytes(rng.randrange(256) for _ in range(200)))
    yield case("no_tensors", infos=[], data=b"", expect="any")  # valid and empty
    yield case("kv_array_of_bool", kvs=kvs + [g_kv("k", GGUF_ARRAY, (GGUF_BOOL, [True, False]))], expect="any")
    # Every ggml type on a tensor whose rows fit any block size, sized by the gguf package's table: the
    # bytes reach the loader, which must dequantize them or refuse the type.
    victim = TE + "encoder.layers.0.self_attn.q_proj.weight"
    for type_id, (blck, size) in sorted(GGML_QUANT_SIZES.items()):
        ne = [256, 2]
        raw = bytes(rng.randrange(256) for _ in range(2 * 256 // blck * size))
        exotic = [i for i in infos if i[0] != victim]
        stored = exotic + [(victim, ne, int(type_id), len(data))]
        yield case(f"loadtype_{int(type_id)}", infos=stored, data=data + raw + b"\0" * (-len(raw) % 32),
                   expect="any")


def ckpt_cases(tensors, rng):
    items, storages = ckpt_parts(tensors)
    pkl = state_dict_pickle(items)
    base = torch_zip(pkl, storages)
    yield "ckpt_valid", base, "any"
    yield "ckpt_valid_unwrapped", torch_zip(state_dict_pickle(items, wrap=False), storages), "any"
    for p in truncations(base, rng, 40):
        yield f"ckpt_trunc_{p}", base[:p], "refuse"
    for i, flipped in enumerate(bit_flips(base, rng, len(base), 30)):  # the zip's metadata is everywhere
        yield f"ckpt_flip_{i}", flipped, "any"
    for i, flipped in enumerate(bit_flips(pkl, rng, len(pkl), 30)):
        yield f"ckpt_pklflip_{i}", torch_zip(flipped, storages), "any"
    for p in sorted({rng.randrange(len(pkl)) for _ in range(15)}):
        yield f"ckpt_pkltrunc_{p}", torch_zip(pkl[:p], storages), "refuse"

    def zipped(tag, pickle_bytes, stores=None, expect="refuse", **kw):
        return f"ckpt_{tag}", torch_zip(pickle_bytes, storages if stores is None else stores, **kw), expect

    # Code execution attempts: every one must be refused by name.
    for module, fn in [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("__builtin__", "exec"),
                       ("subprocess", "Popen"), ("torch", "load"), ("numpy", "load"), ("collections", "Counter"),
                       ("torch._utils", "_rebuild_tensor"), ("torch.serialization", "_get_layout")]:
        evil = p_call(p_global(module, fn), p_str("touch pwned"))
        yield zipped(f"global_{module}_{fn}", b"\x80\x02" + p_dict([(p_str("x"), evil)]) + b".")
    storage0 = p_storage("0", "HalfStorage", tensors[CONV_IN].size)
    nested = p_tensor(p_call(p_global("os", "system"), p_str("touch pwned")), 0, [1], [1])
    yield zipped("global_nested_in_tensor", state_dict_pickle([(p_str("w"), nested)]))
    stack_global = b"\x80\x04" + b"\x8c\x02os\x8c\x06system\x93" + p_tuple(p_str("true")) + b"R."
    yield zipped("global_stack_global", stack_global)
    # Pickle-level attacks on the unpickler itself.
    yield zipped("memo_bomb", b"\x80\x02N" + b"r\xff\xff\xff\x3f" + b".")
    yield zipped("memo_put_far", b"\x80\x02N" + b"q\x05" + b".")
    yield zipped("binbytes8_huge", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx.")
    yield zipped("binunicode8_huge", b"\x80\x04\x8d" + struct.pack("<Q", (1 << 63) - 1) + b"xx.")
    yield zipped("frame_huge", b"\x80\x04\x95" + struct.pack("<Q", 1 << 50) + b"N.")
    yield zipped("long4_huge", b"\x80\x02\x8b" + struct.pack("<i", 1 << 30) + b"\x01.")
    yield zipped("long_text_digits", b"\x80\x02L" + b"9" * 100000 + b"L\n.")
    yield zipped("next_buffer", b"\x80\x05\x97.")
    yield zipped("ext1", b"\x80\x02\x82\x01.")
    yield zipped("persid_text", b"\x80\x02P0\n.")
    yield zipped("deep_tuple_key", b"\x80\x02}N" + b"\x85" * 300000 + b"Ns.")  # hashing it overflowed the C stack
    yield zipped("deep_tuple_in_set", b"\x80\x04\x8f(N" + b"\x85" * 300000 + b"\x90.")
    yield zipped("deep_tuple_memo", b"\x80\x02N" + b"\x85q\x00" * 60 + b"h\x00" + b"\x85" * 60 + b".")
    yield zipped("deep_lists", b"\x80\x02" + b"]" * 200000 + b"a" * 199999 + b".")
    yield zipped("deep_marks", b"\x80\x02" + b"(" * 200000 + b".")
    yield zipped("build_on_standin", b"\x80\x02" + p_global("torch._utils", "_rebuild_tensor_v2") +
                 p_dict([(p_str("fn"), p_str("x"))]) + b"b.")
    yield zipped("build_slots_on_storage_type", b"\x80\x02" + p_global("torch", "FloatStorage") +
                 b"N" + p_dict([(p_str("dtype"), p_str("f64"))]) + b"\x86b.")
    yield zipped("append_on_dict", b"\x80\x02}Na.")
    yield zipped("ordered_dict_args", b"\x80\x02" + p_call(p_global("collections", "OrderedDict"),
                                                           p_str("ab")) + b".")
    yield zipped("empty_pickle", b"")
    yield zipped("not_pickle", b"hello world")
    yield zipped("stop_only", b".")
    yield zipped("protocol_9", b"\x80\x09N.")
    # Structure: what holds the tensors.
    yield zipped("top_list", b"\x80\x02]" + b"(" + items[0][1] + b"e.")
    yield zipped("top_tensor", b"\x80\x02" + items[0][1] + b".")
    yield zipped("state_dict_not_dict", b"\x80\x02" + p_dict([(p_str("state_dict"), p_int(3))]) + b".")
    yield zipped("state_dict_empty", b"\x80\x02" + p_dict([(p_str("state_dict"), b"}")]) + b".")
    yield zipped("key_int", state_dict_pickle([(p_int(1), items[0][1])]))
    yield zipped("key_none", state_dict_pickle([(b"N", items[0][1])]))
    yield zipped("values_not_tensors", state_dict_pickle([(p_str("a"), p_int(1)), (p_str("b"), b"N")]))
    # Persistent ids and rebuild arguments.
    shape, numel = tensors[CONV_IN].shape, tensors[CONV_IN].size

    def one_tensor(tag, tensor_pickle, expect="refuse"):
        return zipped(tag, state_dict_pickle([(p_str(CONV_IN), tensor_pickle)] + items[1:]), expect=expect)

    stride = contiguous_stride(shape)
    yield one_tensor("pid_short", p_tensor(p_tuple(p_str("storage")) + b"Q", 0, shape, stride))
    yield one_tensor("pid_not_storage", p_tensor(p_tuple(p_str("module"), p_global("torch", "HalfStorage"),
                                                         p_str("0"), p_str("cpu"), p_int(numel)) + b"Q", 0, shape,
                                                 stride))
    yield one_tensor("pid_type_is_string", p_tensor(p_tuple(p_str("storage"), p_str("HalfStorage"), p_str("0"),
                                                            p_str("cpu"), p_int(numel)) + b"Q", 0, shape, stride))
    yield one_tensor("pid_key_int", p_tensor(p_tuple(p_str("storage"), p_global("torch", "HalfStorage"),
                                                     p_int(0), p_str("cpu"), p_int(numel)) + b"Q", 0, shape, stride))
    yield one_tensor("pid_numel_negative", p_tensor(p_storage("0", "HalfStorage", -1), 0, shape, stride))
    yield one_tensor("pid_numel_huge", p_tensor(p_storage("0", "HalfStorage", 1 << 70), 0, shape, stride))
    yield one_tensor("pid_numel_wrong", p_tensor(p_storage("0", "HalfStorage", numel + 1), 0, shape, stride))
    yield one_tensor("pid_type_wrong", p_tensor(p_storage("0", "FloatStorage", numel), 0, shape, stride))
    yield one_tensor("pid_key_missing", p_tensor(p_storage("99", "HalfStorage", numel), 0, shape, stride))
    yield one_tensor("pid_key_traversal", p_tensor(p_storage("../data.pkl", "HalfStorage", numel), 0, shape, stride))
    yield one_tensor("pid_key_reused_other_type", p_tensor(p_storage("1", "HalfStorage", numel), 0, shape, stride))
    yield one_tensor("offset_past_storage", p_tensor(storage0, 1, shape, stride))
    yield one_tensor("offset_negative", p_tensor(storage0, -1, shape, stride))
    yield one_tensor("offset_huge", p_tensor(storage0, 1 << 80, shape, stride))
    yield one_tensor("shape_bigger", p_tensor(storage0, 0, (64,) + shape[1:], stride))
    yield one_tensor("shape_negative", p_tensor(storage0, 0, (-32,) + shape[1:], stride))
    yield one_tensor("shape_huge", p_tensor(storage0, 0, (1 << 40, 1 << 40), (1 << 40, 1)))
    yield one_tensor("shape_ninedims", p_tensor(storage0, 0, (1,) * 9, (1,) * 9))
    yield one_tensor("shape_not_tuple", p_call(p_global("torch._utils", "_rebuild_tensor_v2"), storage0, p_int(0),
                                               p_int(5), p_tuple(p_int(1)), b"\x89", b"N"))
    yield one_tensor("stride_transposed", p_tensor(storage0, 0, shape, stride[::-1]))
    yield one_tensor("stride_zero", p_tensor(storage0, 0, shape, (0,) * len(shape)))
    yield one_tensor("stride_length", p_tensor(storage0, 0, shape, stride[:2]))
    yield one_tensor("rebuild_few_args", p_call(p_global("torch._utils", "_rebuild_tensor_v2"), storage0))
    yield one_tensor("rebuild_storage_int", p_tensor(p_int(3), 0, shape, stride))
    yield one_tensor("parameter_of_int", p_call(p_global("torch._utils", "_rebuild_parameter"), p_int(1), b"\x89",
                                                b"N"))
    yield one_tensor("parameter_ok", p_call(p_global("torch._utils", "_rebuild_parameter"),
                                            p_tensor(storage0, 0, shape, stride), b"\x89", b"N"), expect="any")
    yield one_tensor("empty_tensor_past_storage", p_tensor(storage0, numel + 5, (0,), (1,)))
    # The archive around the pickle.
    yield zipped("compressed", pkl, compression=zipfile.ZIP_DEFLATED)
    yield zipped("no_archive_dir", pkl, prefix="")
    yield zipped("nested_archive_dir", pkl, prefix="a/b")
    yield zipped("two_pickles", pkl, extra={"other/data.pkl": pkl})
    yield zipped("duplicate_entry", pkl, extra={"archive/data/0": storages["0"]})
    yield zipped("storage_too_short", pkl, stores={**storages, "0": storages["0"][:-2]})
    yield zipped("storage_too_long", pkl, stores={**storages, "0": storages["0"] + b"\0\0"})
    yield zipped("storage_missing", pkl, stores={k: v for k, v in storages.items() if k != "0"})
    for tag, order in [("big", b"big"), ("junk", b"middle"), ("long", b"little" * 100)]:
        yield f"ckpt_byteorder_{tag}", _replace_entry(pkl, storages, "archive/byteorder", order), "refuse"
    yield "ckpt_version_junk", _replace_entry(pkl, storages, "archive/version", b"x"), "refuse"
    yield "ckpt_version_zero", _replace_entry(pkl, storages, "archive/version", b"0"), "refuse"
    # Raw zip structure edits on the valid file.
    z = base
    cd = z.rindex(b"PK\x01\x02", 0, len(z))  # last central directory entry
    eocd = z.rindex(b"PK\x05\x06")
    yield "ckpt_local_sig", overwrite(z, 0, b"PK\x09\x09"), "refuse"
    yield "ckpt_local_method_deflate", overwrite(z, 8, b"\x08\x00"), "refuse"
    yield "ckpt_local_name_len", overwrite(z, 26, b"\xff\xff"), "refuse"
    yield "ckpt_local_extra_len", overwrite(z, 28, b"\xff\xff"), "refuse"
    yield "ckpt_cd_encrypted", overwrite(z, z.index(b"PK\x01\x02") + 8, b"\x01\x00"), "refuse"
    yield "ckpt_cd_offset_huge", overwrite(z, cd + 42, b"\xff\xff\xff\x7f"), "refuse"
    yield "ckpt_cd_size_huge", overwrite(z, cd + 20, b"\xff\xff\xff\x7f" * 2), "refuse"
    yield "ckpt_eocd_count_huge", overwrite(z, eocd + 8, b"\xff\xff\xff\xff"), "any"  # zipfile reads by size
    yield "ckpt_eocd_cd_offset", overwrite(z, eocd + 16, b"\xff\xff\xff\x7f"), "refuse"
    yield "ckpt_eocd_cd_size", overwrite(z, eocd + 12, b"\x00\x00\x00\x00"), "any"
    yield "ckpt_zip64_marker", overwrite(z, eocd + 16, b"\xff\xff\xff\xff"), "refuse"
    yield "ckpt_not_zip_pickle", pkl, "refuse"
    yield "ckpt_empty", b"", "refuse"
    yield "ckpt_only_local_sig", b"PK\x03\x04", "refuse"


def _replace_entry(pkl, storages, name, raw):
    with zipfile.ZipFile(io.BytesIO(torch_zip(pkl, storages))) as src:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as dst:
            for info in src.infolist():
                dst.writestr(_entry(info.filename), raw if info.filename == name else src.read(info.filename))
    return buf.getvalue()


DIFFUSERS_NAMES = {
    CONV_IN: "unet/conv_in.weight", UNET + "input_blocks.0.0.bias": "unet/conv_in.bias",
    UNET + "input_blocks.1.1.proj_in.weight": "unet/down_blocks.0.attentions.0.proj_in.weight",
    UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
        "unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
    "first_stage_model.decoder.conv_in.weight": "vae/decoder.conv_in.weight",
    TE + "encoder.layers.0.self_attn.q_proj.weight": "text_encoder/text_model.encoder.layers.0.self_attn.q_proj.weight",
}


def diffusers_cases(tensors, rng):
    """Folders: {relative path: bytes} per case."""
    parts: dict[str, dict] = {}
    for raw, name in DIFFUSERS_NAMES.items():
        comp, inner = name.split("/")
        parts.setdefault(comp, {})[inner] = tensors[raw]
    weights = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
    base = {"model_index.json": b"{}", "scheduler/scheduler_config.json": b'{"prediction_type": "epsilon"}'}
    for comp, ts in parts.items():
        base[f"{comp}/{weights[comp]}.safetensors"] = st_bytes(*st_header(ts))
        base[f"{comp}/config.json"] = b"{}"
    unet_st = "unet/diffusion_pytorch_model.safetensors"
    index = "unet/diffusion_pytorch_model.safetensors.index.json"
    yield "diffusers_valid", base, "any"

    def edit(tag, expect="refuse", drop=(), **files):
        out = {k: v for k, v in base.items() if k not in drop}
        out.update({k.replace("__", "/").replace("_DOT_", "."): v for k, v in files.items()})
        return f"diffusers_{tag}", out, expect

    for tag, raw in [("deep", b"[" * 100000), ("list", b"[1]"), ("bad", b"{"), ("int", b"5"), ("bad_utf8", b"\xff")]:
        yield edit(f"unet_config_{tag}", unet__config_DOT_json=raw)
        yield edit(f"scheduler_{tag}", scheduler__scheduler_config_DOT_json=raw)
        yield edit(f"model_index_{tag}", model_index_DOT_json=raw)
    yield edit("scheduler_prediction_bogus", "any", scheduler__scheduler_config_DOT_json=b'{"prediction_type": "x0"}')
    yield edit("scheduler_prediction_list", "any", scheduler__scheduler_config_DOT_json=b'{"prediction_type": []}')
    shard = base[unet_st]
    for tag, weight_map in [("absolute", '{"a": "/etc/passwd"}'), ("traversal", '{"a": "../vae/x.safetensors"}'),
                            ("int", '{"a": 1}'), ("list_value", '{"a": ["x"]}'), ("missing", '{"a": "no.safetensors"}'),
                            ("empty_name", '{"a": ""}'), ("dotdot", '{"a": ".."}'), ("not_object", "[1]"),
                            ("deep", "[" * 100000)]:
        blob = ('{"weight_map": ' + weight_map + "}").encode()
        yield edit(f"index_{tag}", drop=(unet_st,), unet__part_DOT_safetensors=shard, **{
            "unet__diffusion_pytorch_model_DOT_safetensors_DOT_index_DOT_json": blob})
    yield edit("index_two_shards_same_tensor", drop=(unet_st,), unet__a_DOT_safetensors=shard,
               unet__b_DOT_safetensors=shard,
               **{index.replace("/", "__").replace(".", "_DOT_"):
                  b'{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}'})
    yield edit("unet_weights_truncated", **{unet_st.replace("/", "__").replace(".", "_DOT_"): shard[:-7]})
    yield edit("unet_only_pickle", drop=(unet_st,), unet__diffusion_pytorch_model_DOT_bin=b"PK")
    yield edit("unet_no_weights", drop=(unet_st,))


SUFFIX = {"st": ".safetensors", "gguf": ".gguf", "ckpt": ".ckpt", "diffusers": ""}


def cases(seed: int = 0):
    """(name, bytes or {relative path: bytes} for a folder, expect); the same seed gives the same bytes."""
    tensors = mini_model(seed)
    out = {}
    for gen in (safetensors_cases, gguf_cases, ckpt_cases, diffusers_cases):
        for tag, data, expect in gen(tensors, random.Random(f"{gen.__name__}:{seed}")):
            name = tag + SUFFIX[tag.split("_", 1)[0]]
            assert name not in out, name
            out[name] = (data, expect)
    return [(name, data, expect) for name, (data, expect) in out.items()]


def generate(out_dir, seed: int = 0) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    manifest = {}
    for name, data, expect in cases(seed):
        files = data if isinstance(data, dict) else {"": data}  # a dict is a folder
        for rel, blob in files.items():
            path = os.path.join(out_dir, name, rel) if rel else os.path.join(out_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(blob)
        manifest[name] = expect
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    manifest = generate(a.out_dir, a.seed)
    print(f"wrote {len(manifest)} files to {a.out_dir}")


if __name__ == "__main__":
    main()
