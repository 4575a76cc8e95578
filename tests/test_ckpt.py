"""PyTorch checkpoints (.ckpt/.pt): read without torch through the restricted unpickler, same plan and same
bytes as the safetensors file they were made from; code in a pickle is refused by name and never runs."""

import io
import os
import pickle
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sdcpp
from sdcpp.errors import ModelFormatError
from sdcpp.io.ckpt_reader import read_ckpt
from sdcpp.io.open import read_source
from sdcpp.io.raw import MappedFiles

sys.path.insert(0, str(Path(__file__).resolve().parent / "malformed"))
import make_corpus as mc  # noqa: E402


def _ckpt_from_safetensors(src, dst, **extra):
    torch.save({"state_dict": load_file(str(src)), **extra}, dst)
    return dst


def _bytes_of(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _raw_bytes(source):
    files = MappedFiles()
    try:
        return {t.name: files.view(t).tobytes() for t in source.tensors}
    finally:
        files.close()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ckpt_same_plan_and_bytes_as_safetensors(fixtures_dir, tmp_path, family):
    st = fixtures_dir / family / "single.safetensors"
    ckpt = _ckpt_from_safetensors(st, tmp_path / "model.ckpt", global_step=np.int64(470000), epoch=3)
    a, b = sdcpp.inspect(st, type="q8_0"), sdcpp.inspect(ckpt, type="q8_0")
    assert b.formats == ["ckpt"]
    assert a.plan.key() == b.plan.key()
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        del d["paths"], d["formats"]
        for note in d["ignored"] + d["unknown"]:
            del note["file"]
    assert da == db
    wa = sdcpp.load_weights(st, type="q8_0", progress=False, n_threads=2)
    wb = sdcpp.load_weights(ckpt, type="q8_0", progress=False, n_threads=2)
    assert wa.names() == wb.names() and len(wa.names()) > 100
    for name in wa.names():
        assert wb.info(name) == wa.info(name), name
        assert np.array_equal(wa.bytes(name), wb.bytes(name)), name


def test_ckpt_tensors_point_into_the_zip(fixtures_dir, tmp_path):
    st = fixtures_dir / "sd1" / "single.safetensors"
    ckpt = _ckpt_from_safetensors(st, tmp_path / "model.ckpt")
    src = read_ckpt(ckpt)
    size = os.path.getsize(ckpt)
    ref = load_file(str(st))
    assert {t.name for t in src.tensors} == set(ref)
    raw = _raw_bytes(src)
    for t in src.tensors:
        assert t.path == str(ckpt) and 0 < t.offset and t.offset + t.nbytes <= size
        assert t.shape == tuple(ref[t.name].shape)
        assert raw[t.name] == _bytes_of(ref[t.name]), t.name


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".weights"])
def test_dtypes_parameters_views_and_extras(tmp_path, suffix):
    base = torch.arange(24, dtype=torch.float32)
    sd = OrderedDict([
        ("f32", torch.randn(3, 5)), ("f16", torch.randn(4, 2).half()), ("bf16", torch.randn(6).bfloat16()),
        ("f64", torch.randn(2, 2).double()), ("i64", torch.arange(5)), ("i32", torch.arange(3, dtype=torch.int32)),
        ("i16", torch.arange(3, dtype=torch.int16)), ("i8", torch.arange(3, dtype=torch.int8)),
        ("u8", torch.arange(3, dtype=torch.uint8)), ("bool", torch.tensor([True, False])),
        ("scalar", torch.tensor(2.5)), ("empty", torch.zeros(0, 3)),
        ("param", torch.nn.Parameter(torch.randn(2, 3))),
        ("view_head", base[:8].view(2, 4)), ("view_tail", base[8:]),  # one storage, two offsets
        ("row_of_matrix", torch.randn(4, 6)[2]),  # contiguous slice at an offset
        ("size1_dims", torch.randn(1, 3, 1)),
    ])
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": sd, "global_step": np.int64(7), "lr": np.float64(1e-4), "hparams": {"a": [1, 2]}},
               path)
    src = read_source(path)
    assert src.format == "ckpt"
    by = {t.name: t for t in src.tensors}
    assert set(by) == set(sd)
    assert by["bf16"].dtype == "bf16" and by["i16"].dtype == "i16" and by["bool"].dtype == "bool"
    assert by["scalar"].shape == () and by["empty"].nbytes == 0
    raw = _raw_bytes(src)
    for name, t in sd.items():
        assert by[name].shape == tuple(t.shape), name
        assert raw[name] == _bytes_of(t.detach()), name


def test_unwrapped_state_dict_and_module(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    torch.save(module.state_dict(), tmp_path / "m.pt")
    src = read_ckpt(tmp_path / "m.pt")
    raw = _raw_bytes(src)
    assert set(raw) == set(module.state_dict())
    for name, t in module.state_dict().items():
        assert raw[name] == _bytes_of(t), name


def test_corpus_writer_agrees_with_torch(tmp_path):
    """make_corpus writes checkpoints without torch; torch.load must read them as the same tensors."""
    tensors = mc.mini_model(0)
    items, storages = mc.ckpt_parts(tensors)
    path = tmp_path / "hand.ckpt"
    path.write_bytes(mc.torch_zip(mc.state_dict_pickle(items), storages))
    loaded = torch.load(path, weights_only=True)["state_dict"]
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        assert np.array_equal(loaded[name].numpy(), arr), name
    raw = _raw_bytes(read_ckpt(path))
    assert all(raw[name] == arr.tobytes() for name, arr in tensors.items())


# ---------------------------------------------------------------------------------------- malicious


class _Shell:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


class _FakeTensor:
    """Looks like a tensor in the pickle (_rebuild_tensor_v2 with a storage), but the storage runs code."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.payload, 0, (1,), (1,), False, OrderedDict())


def _payloads(marker):
    import builtins
    import subprocess

    touch = f"touch {marker}"
    py_touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (_Shell(os.system, touch), 2, os.system.__module__ + ".system"),
        "builtins.exec": (_Shell(builtins.exec, py_touch), 2, "builtins.exec"),
        "builtins.eval/protocol4": (_Shell(builtins.eval, py_touch), 4, "builtins.eval"),
        "subprocess.call": (_Shell(subprocess.call, ["touch", str(marker)]), 2, "subprocess.call"),
        "subprocess.Popen/protocol5": (_Shell(subprocess.Popen, ["touch", str(marker)]), 5, "subprocess.Popen"),
        "nested in tensor": (_FakeTensor(_Shell(os.system, touch)), 2, os.system.__module__ + ".system"),
    }


@pytest.mark.parametrize("kind", list(_payloads("x")))
@pytest.mark.parametrize("where", ["value", "top", "extra"])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    evil, protocol, named = _payloads(marker)[kind]
    sd = {"model.diffusion_model.input_blocks.0.0.bias": torch.zeros(4)}
    obj = {"value": {"state_dict": {**sd, "evil": evil}},
           "top": evil,
           "extra": {"state_dict": sd, "callbacks": [evil]}}[where]
    path = tmp_path / "evil.ckpt"
    torch.save(obj, path, pickle_protocol=protocol)
    for call in (sdcpp.inspect, read_source):
        with pytest.raises(ModelFormatError) as e:
            call(path)
        assert e.value.rule == "pickle-global" and e.value.path == str(path)
        assert named in str(e.value)
    assert not marker.exists()


def test_payload_is_live(tmp_path):
    """Control for the test above: the same file run by an unrestricted loader does create the marker."""
    marker = tmp_path / "control"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": _payloads(marker)["os.system"][0]}}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def _hand_zip(tmp_path, pkl, name="hand.ckpt", storages=None):
    path = tmp_path / name
    path.write_bytes(mc.torch_zip(pkl, storages or {}))
    return path


@pytest.mark.parametrize("pkl,why", [
    (b"\x80\x02" + mc.p_global("torch._utils", "_rebuild_tensor_v2") + mc.p_dict([(mc.p_str("fn"), b"N")]) + b"b.",
     "BUILD"),
    (b"\x80\x02" + mc.p_global("torch", "FloatStorage") + b"N" + mc.p_dict([(mc.p_str("dtype"), b"N")]) + b"\x86b.",
     "BUILD"),
    (b"\x80\x02" + mc.p_call(mc.p_global("collections", "OrderedDict"), mc.p_str("ab")) + b".", "OrderedDict"),
    (b"\x80\x02N" + b"r\xff\xff\xff\x3f" + b".", "memo index"),
    (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"xx.", "BINBYTES8"),
    (b"\x80\x05\x97.", "NEXT_BUFFER"),
    (b"\x80\x02}N" + b"\x85" * 1_000_000 + b"Ns.", "nest"),  # plain pickle: segfault (tuple hash recursion)
    (b"\x80\x02P0\n.", "PERSID"),
])
def test_unpickler_attacks(tmp_path, pkl, why):
    path = _hand_zip(tmp_path, pkl)
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match=why) as e:
        read_ckpt(path)
    assert e.value.rule == "pickle" and time.monotonic() - t0 < 1.0
    # A stand-in the attack tried to edit still works for an honest file afterwards.
    items, storages = mc.ckpt_parts(mc.mini_model(0, width=8))
    good = _hand_zip(tmp_path, mc.state_dict_pickle(items), "good.ckpt", storages)
    assert len(read_ckpt(good).tensors) == len(items)


# -------------------------------------------------------------------------------- refused layouts


def test_legacy_torch_files_are_refused(tmp_path):
    sd = {"w": torch.zeros(3)}
    torch.save(sd, tmp_path / "old.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFormatError, match="legacy") as e:
        sdcpp.inspect(tmp_path / "old.ckpt")
    assert e.value.path == str(tmp_path / "old.ckpt")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(sd["w"].numpy().tolist(), protocol=2))
    with pytest.raises(ModelFormatError, match="legacy"):
        read_source(tmp_path / "raw.pt")


def test_compressed_entries_are_refused(tmp_path):
    torch.save({"w": torch.zeros(64)}, tmp_path / "a.pt")
    with zipfile.ZipFile(tmp_path / "a.pt") as src, zipfile.ZipFile(tmp_path / "b.pt", "w",
                                                                     zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(ModelFormatError, match="compressed"):
        read_source(tmp_path / "b.pt")


@pytest.mark.parametrize("tensor", [torch.ones(4, 8).t(), torch.arange(8.0)[::2], torch.ones(2, 3, 4).permute(2, 0, 1)])
def test_non_contiguous_tensors_are_refused(tmp_path, tensor):
    assert not tensor.is_contiguous()
    torch.save({"w": tensor}, tmp_path / "s.pt")
    with pytest.raises(ModelFormatError, match="non-contiguous") as e:
        read_source(tmp_path / "s.pt")
    assert e.value.tensor == "w" and e.value.rule == "strided"


def test_big_endian_and_missing_pickle(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "a.pt")
    with zipfile.ZipFile(tmp_path / "a.pt") as src:
        entries = {i.filename: src.read(i.filename) for i in src.infolist()}
    for name, edit, match in [("big.pt", lambda n, d: b"big" if n.endswith("/byteorder") else d, "big-endian"),
                              ("nopkl.pt", lambda n, d: None if n.endswith("data.pkl") else d, "data.pkl")]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as dst:
            for n, d in entries.items():
                if edit(n, d) is not None:
                    dst.writestr(n, edit(n, d))
        (tmp_path / name).write_bytes(buf.getvalue())
        with pytest.raises(ModelFormatError, match=match):
            read_source(tmp_path / name)


def test_safetensors_named_ckpt_still_reads(fixtures_dir, tmp_path):
    renamed = tmp_path / "model.ckpt"
    renamed.write_bytes((fixtures_dir / "sd1" / "single.safetensors").read_bytes())
    assert read_source(renamed).format == "safetensors"
