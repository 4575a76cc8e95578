"""Readers: valid files parse to the right byte ranges; malformed ones raise ModelFormatError naming the
file, the tensor and the rule broken."""

import json
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from safetensors.numpy import save_file

from sdcpp.errors import ModelFormatError
from sdcpp.io.gguf_reader import read_gguf
from sdcpp.io.open import read_source
from sdcpp.io.raw import MappedFiles
from sdcpp.io.safetensors_reader import read_safetensors

LONG = "model.diffusion_model.output_blocks.5.1.transformer_blocks.0.attn1.to_q.weight"  # > 64 chars


def _write_st(path, tensors):
    save_file(tensors, str(path))
    return path


def _raw_st(path, header: dict, data: bytes):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_safetensors_roundtrip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(6, dtype=np.float16)
    src = read_safetensors(_write_st(tmp_path / "m.safetensors", {"a": a, LONG: b}))
    by = {t.name: t for t in src.tensors}
    assert by["a"].shape == (3, 4) and by["a"].dtype == "f32" and by[LONG].dtype == "f16"
    files = MappedFiles()
    assert np.array_equal(files.view(by["a"]).view(np.float32).reshape(3, 4), a)
    assert np.array_equal(files.view(by[LONG]).view(np.float16), b)


def test_safetensors_truncated(tmp_path):
    p = _write_st(tmp_path / "m.safetensors", {"w": np.ones((64, 64), np.float32)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFormatError) as e:
        read_safetensors(p)
    assert str(p) in str(e.value) and "'w'" in str(e.value)


def test_safetensors_offset_past_end(tmp_path):
    p = _raw_st(tmp_path / "m.safetensors",
                {"ok": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "bad": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 16)
    with pytest.raises(ModelFormatError) as e:
        read_safetensors(p)
    assert e.value.tensor == "bad" and e.value.path == str(p) and e.value.rule == "offsets"


@pytest.mark.parametrize("entry,rule", [
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "size"),
    ({"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}, "dtype"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "offsets"),
    ({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}, "shape"),
])
def test_safetensors_bad_entries(tmp_path, entry, rule):
    p = _raw_st(tmp_path / "m.safetensors", {"t": entry}, b"\0" * 16)
    with pytest.raises(ModelFormatError) as e:
        read_safetensors(p)
    assert e.value.tensor == "t" and e.value.rule == rule


def test_safetensors_overlap_and_duplicates(tmp_path):
    p = _raw_st(tmp_path / "o.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 16)
    with pytest.raises(ModelFormatError, match="overlaps"):
        read_safetensors(p)
    blob = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
           b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    d = tmp_path / "d.safetensors"
    d.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 8)
    with pytest.raises(ModelFormatError, match="duplicate"):
        read_safetensors(d)


def test_safetensors_bad_header(tmp_path):
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(ModelFormatError, match="JSON"):
        read_safetensors(p)
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelFormatError, match="header length"):
        read_safetensors(p)
    p.write_bytes(b"abc")
    with pytest.raises(ModelFormatError, match="too short"):
        read_safetensors(p)


def _write_gguf(path, tensors: dict, kv=None):
    w = GGUFWriter(str(path), "test")
    for k, v in (kv or {}).items():
        w.add_string(k, v)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_roundtrip_long_names(tmp_path):
    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    p = _write_gguf(tmp_path / "m.gguf", {LONG: a, "b": np.ones(32, np.float16)}, {"general.name": "x"})
    src = read_source(p)
    assert src.format == "gguf" and src.metadata["general.name"] == "x"
    by = {t.name: t for t in src.tensors}
    assert by[LONG].shape == (2, 32) and by[LONG].dtype == "f32" and by["b"].dtype == "f16"
    assert np.array_equal(MappedFiles().view(by[LONG]).view(np.float32).reshape(2, 32), a)


def _patch_type(path, name, new_type):
    data = bytearray(path.read_bytes())
    pos = data.index(name.encode()) + len(name)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    struct.pack_into("<I", data, pos + 4 + 8 * n_dims, new_type)
    path.write_bytes(bytes(data))


def test_gguf_wrong_type(tmp_path):
    p = _write_gguf(tmp_path / "m.gguf", {"good": np.ones(32, np.float32), "victim": np.ones(32, np.float32)})
    _patch_type(p, "victim", 99)
    with pytest.raises(ModelFormatError) as e:
        read_gguf(p)
    assert e.value.tensor == "victim" and e.value.rule == "type" and str(p) in str(e.value)
    # a real type whose size disagrees with the data: q8_0 needs 34 bytes per 32 values, f32 has 128
    p2 = _write_gguf(tmp_path / "m2.gguf", {"x": np.ones((1, 32), np.float32)})
    _patch_type(p2, "x", int(GGMLQuantizationType.Q4_K))
    with pytest.raises(ModelFormatError) as e:
        read_gguf(p2)
    assert e.value.tensor == "x" and e.value.rule == "block"


def test_gguf_truncated_and_bad_magic(tmp_path):
    p = _write_gguf(tmp_path / "m.gguf", {"w": np.ones((64, 64), np.float32)})
    data = p.read_bytes()
    p.write_bytes(data[:-1000])
    with pytest.raises(ModelFormatError) as e:
        read_gguf(p)
    assert e.value.tensor == "w"
    p.write_bytes(data[:40])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_gguf(p)
    p.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(ModelFormatError, match="magic"):
        read_gguf(p)


def test_empty_tensors_are_ignored_not_fatal(tmp_path):
    from sdcpp.index import open_model

    tensors = {"first_stage_model.encoder.conv_in.weight": np.ones((4, 3, 3, 3), np.float32),
               "first_stage_model.encoder.conv_in.bias": np.zeros((0,), np.float32)}
    p = _write_st(tmp_path / "m.safetensors", tensors)
    index = open_model(p)
    assert list(index.tensors) == ["vae.encoder.conv_in.weight"]
    assert index.notes.ignored[0][2] == "empty tensor"
