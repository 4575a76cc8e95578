"""Detection (families, variants, prediction type, unsupported models) and the `sdcpp` command."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import sdcpp
from sdcpp.cli import main as cli


def _checkpoint(path, names):
    save_file({n: np.ones((4, 4), np.float32) for n in names}, str(path))
    return path


@pytest.mark.parametrize("name,what", [
    ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "Stable Diffusion 3"),
    ("double_blocks.0.img_attn.qkv.weight", "Flux"),
    ("model.diffusion_model.input_blocks.1.0.time_stack.0.in_layers.0.weight", "Stable Video Diffusion"),
    ("control_model.input_hint_block.0.weight", "ControlNet"),
    ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "LoRA"),
])
def test_unsupported_families_are_named(tmp_path, name, what):
    path = _checkpoint(tmp_path / "m.safetensors", [name])
    with pytest.raises(sdcpp.UnsupportedModelError) as e:
        sdcpp.inspect(path)
    assert what in str(e.value) and str(path) in str(e.value) and name in str(e.value)


def test_families_and_variants(fixtures_dir):
    expect = {"sd1": ("sd1", "base", "epsilon"), "sd2": ("sd2", "base", "v_prediction"),
              "sdxl": ("sdxl", "base", "epsilon"), "sd1_inpaint": ("sd1", "inpaint", "epsilon"),
              "sdxl_refiner": ("sdxl_refiner", "base", "epsilon")}
    for fam, (family, variant, prediction) in expect.items():
        for form in ("single.safetensors", "sdcpp_convert.gguf", "diffusers"):
            spec = sdcpp.inspect(fixtures_dir / fam / form).spec
            assert (spec.family, spec.variant, spec.prediction) == (family, variant, prediction), (fam, form)


def test_prediction_sources(fixtures_dir):
    assert "scheduler_config" in sdcpp.inspect(fixtures_dir / "sd2" / "diffusers").spec.prediction_source
    assert sdcpp.inspect(fixtures_dir / "sd2" / "single.safetensors").spec.prediction_source.startswith("default")
    forced = sdcpp.inspect(fixtures_dir / "sd2" / "diffusers", prediction="eps").spec
    assert forced.prediction == "epsilon" and forced.prediction_source == "requested"
    with pytest.raises(ValueError):
        sdcpp.inspect(fixtures_dir / "sd2" / "diffusers", prediction="x0")


def test_pix2pix_unet_is_refused(fixtures_dir, tmp_path):
    from safetensors.numpy import load_file

    tensors = load_file(str(fixtures_dir / "sd1" / "single.safetensors"))
    w = tensors["model.diffusion_model.input_blocks.0.0.weight"]
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = np.concatenate([w, w], axis=1)  # 8 channels
    save_file(tensors, str(tmp_path / "p2p.safetensors"))
    with pytest.raises(sdcpp.UnsupportedModelError, match="InstructPix2Pix"):
        sdcpp.inspect(tmp_path / "p2p.safetensors")


def test_cli_inspect_prints_a_readable_table(fixtures_dir, capsys):
    assert cli(["inspect", str(fixtures_dir / "sdxl" / "single.safetensors"), "--type", "q4_K"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("family:") and "sdxl (base)" in lines[1] and "request:    type=q4_K" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("component"))
    assert lines[header].split() == ["component", "type", "tensors", "before", "after"]
    rows = [line for line in lines[header + 2:] if line.strip() and not line.startswith("-")]
    assert rows[0].startswith("text_encoder ")
    assert any(line.startswith("text_encoder_2 ") for line in rows)
    assert any(line.startswith("total") for line in lines)
    assert max(len(line) for line in lines[1:header + 20]) <= 100  # fits a terminal (line 0 holds the path)
    assert "differs from the request" in out and "SDXL VAE kept f32" in out


def test_cli_json_and_quantize(fixtures_dir, tmp_path, capsys):
    assert cli(["inspect", str(fixtures_dir / "sd1" / "diffusers"), "--type", "q8_0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "sd1" and report["components"]["unet"]["q8_0"]["count"] > 50
    out = tmp_path / "q.gguf"
    assert cli(["quantize", str(fixtures_dir / "sd1" / "single.safetensors"), "-o", str(out), "--type", "q4_0"]) == 0
    assert out.exists() and sdcpp.inspect(out).plan["unet.down_blocks.0.resnets.0.conv1.weight"].type == "q4_0"


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert cli(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdcpp: error:") and str(bad) in err
    assert cli(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert cli(["inspect", str(bad), "--type", "q3_0"]) == 2
