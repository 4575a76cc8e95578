"""GGUF files stable-diffusion.cpp loads (`quantize(layout="stable-diffusion.cpp")`): the same tensor names, shapes
and (at f32) bytes as its `--mode convert` output (the sdcpp_convert.gguf fixture, written from the test-side
naming in fixtures/ldm_names.py), only types it can run, and what the layout cannot hold reported by inspect()."""

import gguf
import numpy as np
import pytest

import sdcpp
from sdcpp.cli import main
from sdcpp.names.original import TEXT_PREFIXES
from sdcpp.names.tables import PREFIXES
from sdcpp.plan import SD_CPP, SD_CPP_FUSED_REASON, SD_CPP_GET_ROWS, SD_CPP_KERNEL_REASON

# What sdcpp's ingest drops from the fixtures (so an export cannot write it back): stable-diffusion.cpp computes the
# schedule itself and has no use for SD2's OpenCLIP projection either.
NOT_EXPORTED = {"sd1": {"alphas_cumprod"}, "sd2": {"cond_stage_model.model.text_projection"}, "sdxl": set(),
                "sdxl_refiner": set()}
# Types stable-diffusion.cpp's loader converts from (ggml's type traits with to_float): the plan's whole list.
SD_CPP_TYPES = {gguf.GGMLQuantizationType[t.upper()] for t in
                ("f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K")}


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _export(src, out, **request):
    sdcpp.quantize(src, out, layout=SD_CPP, progress=False, n_threads=1, **request)
    return _tensors(out)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_f32_export_is_what_sd_cpp_convert_writes(fixtures_dir, tmp_path, family):
    ref = _tensors(fixtures_dir / family / "sdcpp_convert.gguf")
    # from the diffusers folder: every name, fusion, transpose and kernel shape is rebuilt, none copied
    mine = _export(fixtures_dir / family / "diffusers", tmp_path / "out.gguf", type="f32")
    assert set(mine) == set(ref) - NOT_EXPORTED[family]
    for name, t in mine.items():
        r = ref[name]
        assert list(t.shape) == list(r.shape), name  # ggml ne order
        assert t.tensor_type == r.tensor_type == gguf.GGMLQuantizationType.F32, name
        assert np.array_equal(t.data, r.data), name
    assert any(len(t.shape) == 4 for t in mine.values())  # conv kernels keep their 4-D shape
    if family != "sd1":  # OpenCLIP towers: fused in_proj, transposed projection (SDXL bigG)
        assert any(n.endswith("attn.in_proj_weight") for n in mine)


@pytest.mark.parametrize("qtype", ["q4_K", "q8_0"])
def test_quantized_export_holds_only_what_sd_cpp_runs(fixtures_dir, tmp_path, qtype):
    src = fixtures_dir / "sdxl" / "single.safetensors"
    out = tmp_path / "out.gguf"
    mine = _export(src, out, type=qtype)
    ref = _tensors(fixtures_dir / "sdxl" / "sdcpp_convert.gguf")
    assert {n: list(t.shape) for n, t in mine.items()} == {n: list(t.shape) for n, t in ref.items()}
    quantized = 0
    for name, t in mine.items():
        assert t.tensor_type in SD_CPP_TYPES, name
        blck, _ = gguf.GGML_QUANT_SIZES[t.tensor_type]
        assert int(t.shape[0]) % blck == 0, name  # ggml needs whole blocks along ne0
        if len(t.shape) == 4:
            assert t.tensor_type in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32), name
        if name.endswith("token_embedding.weight"):
            assert t.tensor_type.name.lower() in SD_CPP_GET_ROWS, name
        quantized += blck > 1
    assert quantized > 100

    # read back by sdcpp: every tensor the layout did not change has the bytes of sdcpp's own plan
    back = sdcpp.load_weights(out, progress=False, n_threads=1)
    own = sdcpp.load_weights(src, type=qtype, progress=False, n_threads=1)
    layout_plan = sdcpp.inspect(src, type=qtype, layout=SD_CPP).plan
    assert back.names() == own.names()
    same = [n for n in own.names() if layout_plan[n].type == own.plan[n].type]
    assert len(same) > 300
    for n in same:
        assert np.array_equal(back.bytes(n), own.bytes(n)), n
    for n in set(own.names()) - set(same):  # the kernels: f16 in this layout
        assert back.info(n)["type"] == "f16" and layout_plan[n].reason, n
        assert np.allclose(back.numpy(n), own.numpy(n), atol=0.25 * np.abs(own.numpy(n)).max()), n


def test_f16_export_reads_back_as_the_same_weights(fixtures_dir, tmp_path):
    """At f16 both layouts store every tensor in the same type: the round trip through original names (fused q/k/v,
    transposed projection, 1x1 VAE kernels) must give sdcpp the same bytes, so the same images."""
    src = fixtures_dir / "sdxl" / "diffusers"
    _export(src, tmp_path / "out.gguf", type="f16")
    back = sdcpp.load_weights(tmp_path / "out.gguf", progress=False, n_threads=1)
    own = sdcpp.load_weights(src, type="f16", progress=False, n_threads=1)
    assert back.names() == own.names() and len(own.names()) > 600
    for n in own.names():
        assert np.array_equal(back.bytes(n), own.bytes(n)), n
    assert back.spec.prediction == own.spec.prediction and back.configs.keys() == own.configs.keys()


def test_inspect_names_what_the_layout_cannot_hold(fixtures_dir):
    src = fixtures_dir / "sd1" / "single.safetensors"
    own = sdcpp.inspect(src, type="q4_0")
    sd = sdcpp.inspect(src, type="q4_0", layout=SD_CPP)
    assert own.plan.layout == "sdcpp" and sd.to_dict()["layout"] == SD_CPP and "layout:" in str(sd)
    kernels = [e for e in own.plan if len(e.shape) == 4 and e.type == "q4_0"]
    assert len(kernels) > 20  # sdcpp quantizes conv kernels as rows ...
    for e in kernels:  # ... the stable-diffusion.cpp layout cannot
        assert sd.plan[e.name].type == "f16" and sd.plan[e.name].reason == SD_CPP_KERNEL_REASON, e.name
    assert sd.totals()[1] > own.totals()[1]
    vae_attn = sd.plan["vae.decoder.mid_block.attentions.0.to_q.weight"]  # linear here, a 1x1 kernel there
    assert len(vae_attn.shape) == 2 and vae_attn.reason == SD_CPP_KERNEL_REASON
    assert SD_CPP_KERNEL_REASON in str(sd)


def test_fused_qkv_share_one_type(fixtures_dir, tmp_path):
    src = fixtures_dir / "sd2" / "single.safetensors"
    rules = [r"self_attn\.q_proj=q8_0"]
    plan = sdcpp.inspect(src, type="q4_0", rules=rules, layout=SD_CPP).plan
    for part in ("q_proj", "k_proj", "v_proj"):
        e = plan[f"text_encoder.text_model.encoder.layers.0.self_attn.{part}.weight"]
        assert e.type == "q8_0", part
        assert (e.reason == SD_CPP_FUSED_REASON) == (part != "q_proj"), part
    mine = _export(src, tmp_path / "out.gguf", type="q4_0", rules=rules)
    fused = mine["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.tensor_type == gguf.GGMLQuantizationType.Q8_0
    back = sdcpp.load_weights(tmp_path / "out.gguf", progress=False, n_threads=1)
    f32 = sdcpp.load_weights(src, progress=False, n_threads=1)
    for part in ("q_proj", "k_proj", "v_proj"):
        name = f"text_encoder.text_model.encoder.layers.0.self_attn.{part}.weight"
        assert np.allclose(back.numpy(name), f32.numpy(name), atol=0.02), part


def test_text_prefixes_are_the_forward_tables_reversed():
    for (_, component, _), (prefix, layout) in TEXT_PREFIXES.items():
        comp, forward = PREFIXES[prefix]
        assert comp == component and forward.startswith(layout), prefix


def test_cli_layout(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(fixtures_dir / "sd1" / "single.safetensors"), "-o", str(out), "--type", "q8_0",
                 "--layout", "stable-diffusion.cpp", "-t", "1"]) == 0
    assert "model.diffusion_model.input_blocks.0.0.weight" in _tensors(out)
    assert main(["inspect", str(out), "--layout", "stable-diffusion.cpp"]) == 0
    assert "stable-diffusion.cpp" in capsys.readouterr().out
    with pytest.raises(sdcpp.QuantRequestError, match="layout"):
        sdcpp.inspect(out, layout="comfy")
    with pytest.raises(sdcpp.QuantRequestError, match="budget"):
        sdcpp.quantize(out, tmp_path / "b.gguf", budget="1MB", layout=SD_CPP)
