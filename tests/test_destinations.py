"""quantize() and `sdcpp generate -o` never overwrite what they read, and name a bad destination."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

import sdcpp
from sdcpp.cli import main


def _digest(path) -> str:
    if os.path.isdir(path):
        h = hashlib.sha256()
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                h.update(name.encode() + open(os.path.join(root, name), "rb").read())
        return h.hexdigest()
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def sd1_copy(fixtures_dir, tmp_path):
    single = tmp_path / "m.safetensors"
    shutil.copy(fixtures_dir / "sd1" / "single.safetensors", single)
    folder = tmp_path / "folder"
    shutil.copytree(fixtures_dir / "sd1" / "diffusers", folder)
    return single, folder


def _refused(src, dst, **kw):
    before = _digest(src)
    with pytest.raises(sdcpp.DestinationError, match="input"):
        sdcpp.quantize(src, dst, type="q8_0", progress=False, **kw)
    assert _digest(src) == before
    assert not [f for f in os.listdir(os.path.dirname(os.path.abspath(dst))) if f.endswith(".partial")]


def test_quantize_onto_its_own_input_is_refused(sd1_copy, tmp_path):
    single, folder = sd1_copy
    _refused(single, single)
    _refused(single, tmp_path / "." / "m.safetensors")  # another spelling of the same path
    os.symlink(single, tmp_path / "link.gguf")
    _refused(single, tmp_path / "link.gguf")  # the destination is a symlink to the source
    os.symlink(single, tmp_path / "src_link.safetensors")
    _refused(tmp_path / "src_link.safetensors", single)  # the source is a symlink to the destination
    os.link(single, tmp_path / "hard.gguf")
    _refused(single, tmp_path / "hard.gguf")  # a hard link: the same inode under another name


def test_quantize_into_a_source_folder_is_refused(sd1_copy, tmp_path):
    single, folder = sd1_copy
    _refused(folder, folder / "unet" / "diffusion_pytorch_model.safetensors")
    _refused(folder, folder / "model.gguf")
    os.link(folder / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae_link.gguf")
    _refused(folder, tmp_path / "vae_link.gguf")
    # a component file is a source too
    _refused(single, tmp_path / "vae.safetensors",
             vae=shutil.copy(folder / "vae" / "diffusion_pytorch_model.safetensors", tmp_path / "vae.safetensors"))


def test_quantize_next_to_its_input_works(sd1_copy, tmp_path):
    single, folder = sd1_copy
    before = _digest(folder)
    sdcpp.quantize(folder, tmp_path / "out.gguf", type="q8_0", progress=False)
    assert _digest(folder) == before and (tmp_path / "out.gguf").stat().st_size > 0


def test_missing_destination_folder_names_the_destination(sd1_copy, tmp_path):
    single, _ = sd1_copy
    dst = tmp_path / "no" / "such" / "out.gguf"
    with pytest.raises(FileNotFoundError) as err:
        sdcpp.quantize(single, dst, type="q8_0", progress=False)
    assert str(dst) in str(err.value) and ".partial" not in str(err.value)
    with pytest.raises(IsADirectoryError, match="folder"):
        sdcpp.quantize(single, tmp_path, type="q8_0", progress=False)


def test_cli_refuses_outputs_onto_inputs(sd1_copy, tmp_path, capsys):
    single, _ = sd1_copy
    before = _digest(single)
    assert main(["quantize", str(single), "-o", str(single), "--type", "q8_0"]) == 2
    assert main(["generate", "-m", str(single), "-p", "x", "-o", str(single), "--steps", "1"]) == 2
    assert main(["generate", "-m", str(single), "-p", "x", "-o", str(tmp_path / "nope" / "x.png"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("is the input") == 2 and "does not exist" in err
    assert _digest(single) == before
