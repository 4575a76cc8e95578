"""The quantization plan: identical for the same model in every format, every decision that differs from
the request carries a reason, and the SDXL text encoders are quantized whatever the file format (the bug
sdcpp exists to rule out)."""

import pytest

import sdcpp
from sdcpp.plan import K_FALLBACK

FORMS = ("single.safetensors", "sdcpp_convert.gguf", "diffusers")
TYPES = ("q8_0", "q4_0", "q4_K", "f16")


def plan_for(path, **request):
    return sdcpp.inspect(path, **request).plan


def expected_matrix_type(entry, requested):
    """The documented policy for a text-encoder matrix, restated independently of plan.py's code path."""
    if requested == "f16":
        return "f16"
    if "position_embedding" in entry.name:
        return "f16"
    n = entry.rows[1]
    t = requested
    while t.endswith("_K") and n % 256:
        t = K_FALLBACK[t]
    if n % 32:
        return "f16"
    return t


@pytest.mark.parametrize("qtype", TYPES)
def test_sdxl_plan_identical_across_formats(fixtures_dir, qtype):
    plans = {form: plan_for(fixtures_dir / "sdxl" / form, type=qtype) for form in FORMS}
    keys = {form: p.key() for form, p in plans.items()}
    assert keys["single.safetensors"] == keys["diffusers"] == keys["sdcpp_convert.gguf"]
    assert len(plans["diffusers"]) > 600


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("qtype", TYPES)
def test_sdxl_text_encoders_get_requested_type(fixtures_dir, form, qtype):
    plan = plan_for(fixtures_dir / "sdxl" / form, type=qtype)
    matrices = [e for e in plan if e.component.startswith("text_encoder") and len(e.shape) == 2]
    assert {e.component for e in matrices} == {"text_encoder", "text_encoder_2"}
    # every q/k/v of the fused OpenCLIP in_proj is there and planned, as for every other matrix
    assert sum(".self_attn.q_proj.weight" in e.name for e in matrices) == 4
    for e in matrices:
        assert e.type == expected_matrix_type(e, qtype), e.name
        assert (e.type == qtype) == (e.reason is None), e.name
    if qtype in ("q8_0", "q4_0"):
        assert sum(e.type == qtype for e in matrices) >= 20
    if qtype == "q4_K":  # 256-wide rows (mlp.fc2) take q4_K, 64-wide rows fall back to q4_0 with a reason
        assert any(e.type == "q4_K" for e in matrices) and any(e.type == "q4_0" for e in matrices)


@pytest.mark.parametrize("form", FORMS)
def test_sdxl_vae_f32_by_default(fixtures_dir, form):
    plan = plan_for(fixtures_dir / "sdxl" / form, type="q8_0")
    vae = [e for e in plan if e.component == "vae"]
    assert vae and all(e.type == "f32" for e in vae)
    assert all("SDXL VAE" in e.reason for e in vae if len(e.shape) > 1)
    asked = plan_for(fixtures_dir / "sdxl" / form, type="q8_0", vae_type="f16")
    assert all(e.type == "f16" for e in asked if e.component == "vae" and len(e.shape) > 1)


def test_sd1_vae_follows_type_and_convs_quantize(fixtures_dir):
    plan = plan_for(fixtures_dir / "sd1" / "single.safetensors", type="q8_0")
    convs = [e for e in plan if len(e.shape) == 4 and e.type == "q8_0"]
    assert any(e.component == "vae" for e in convs) and any(e.component == "unet" for e in convs)
    for e in convs:
        assert e.rows == (e.shape[0], e.shape[1] * e.shape[2] * e.shape[3])
        assert e.bytes_after == e.rows[0] * e.rows[1] // 32 * 34


def test_one_dimensional_and_sensitive(fixtures_dir):
    plan = plan_for(fixtures_dir / "sd1" / "single.safetensors", type="q4_0")
    for e in plan:
        if len(e.shape) <= 1:
            assert e.type == "f32" and "1-D" in e.reason
    assert plan["unet.conv_in.weight"].type == "f16" and "sensitive" in plan["unet.conv_in.weight"].reason
    assert plan["unet.time_embedding.linear_1.weight"].type == "f16"


def test_rules_first_match_wins_and_beat_component_types(fixtures_dir):
    path = fixtures_dir / "sdxl" / "single.safetensors"
    plan = plan_for(path, type="q8_0", te_type="q4_0",
                    rules=[r"^text_encoder_2\..*mlp=f16", r"^text_encoder_2\.=q5_0", r"^unet\.time_embedding=q8_0"])
    assert plan["text_encoder_2.text_model.encoder.layers.0.mlp.fc1.weight"].type == "f16"
    assert plan["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.weight"].type == "q5_0"
    assert plan["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight"].type == "q4_0"
    # an explicit rule overrides the sensitive-layer policy
    assert plan["unet.time_embedding.linear_1.weight"].type == "q8_0"
    assert plan["unet.conv_in.weight"].type == "f16"  # 36-element rows fit no 32-block
    assert plan["unet.down_blocks.0.resnets.0.conv1.weight"].type == "q8_0"


def test_keep_stored_types_by_default(fixtures_dir):
    plan = plan_for(fixtures_dir / "sd1" / "diffusers")
    assert all(e.type == "f32" and e.reason is None for e in plan)


@pytest.mark.parametrize("bad", [dict(type="q4_3"), dict(unet_type="int8"), dict(rules=["nonsense"]),
                                 dict(rules=["(=q4_0"])])
def test_bad_requests(fixtures_dir, bad):
    with pytest.raises(sdcpp.QuantRequestError):
        sdcpp.inspect(fixtures_dir / "sd1" / "single.safetensors", **bad)


def test_type_spellings(fixtures_dir):
    a = plan_for(fixtures_dir / "sd1" / "single.safetensors", type="Q4_K")
    b = plan_for(fixtures_dir / "sd1" / "single.safetensors", type="q4_k")
    assert a.key() == b.key()


def test_sdxl_vae_quantized_on_purpose_loads_back_as_stored(fixtures_dir, tmp_path):
    out = tmp_path / "vae-q8.gguf"
    sdcpp.quantize(fixtures_dir / "sdxl" / "single.safetensors", out, vae_type="q8_0", progress=False)
    back = plan_for(out)  # no request: the stored types
    vae = [e for e in back if e.component == "vae" and len(e.shape) > 1 and e.source_type == "q8_0"]
    assert vae and all(e.type == "q8_0" for e in vae)
    f16 = plan_for(fixtures_dir / "sdxl" / "single.safetensors", type="f16")  # a plain type= still keeps it f32
    assert all(e.type == "f32" for e in f16 if e.component == "vae")
