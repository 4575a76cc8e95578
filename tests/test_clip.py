"""CLIP text encoders against transformers on the tiny fixtures: f32 parity; quantized weights against the
reference running on the same dequantized weights (with and without ggml's rounding of the activations); every
weight read; batching; bit-identical results from every fixture form.

    pytest -q -s tests/test_clip.py -k quantized   # -s prints each type's errors, also against the f32 original
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest

import sdcpp
from parity import ggml_kernels_only, with_ggml_activation_rounding
from sdcpp.errors import UnsupportedModelError
from sdcpp.models.clip import TextEncoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# (family, component): CLIP-L (sd1, sdxl), OpenCLIP-H (sd2), OpenCLIP-bigG with projection (sdxl, refiner)
MODELS = [("sd1", "text_encoder"), ("sd2", "text_encoder"), ("sdxl", "text_encoder"), ("sdxl", "text_encoder_2"),
          ("sdxl_refiner", "text_encoder_2")]
QUANT_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_K")
OUTPUTS = ("hidden", "penultimate", "pooled", "text_embeds")
# f32 against transformers in f64: measured 1.9e-7 .. 3.1e-7 (rel. L2) for every encoder and output, either
# attention; 2e-6 leaves a 6x margin.
F32_MAX_ERR = 2e-6
TINY_HEADS = 2  # the fixtures' num_attention_heads; config-less forms (single file, sd.cpp GGUF) need it given


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def _tokens(vocab: int, batch: int = 2, n: int = 77, seed: int = 0) -> np.ndarray:
    """Random ids with the end token (the largest id) where the two usual paddings put it."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab - 1, (batch, n))
    ids[:, 0] = 0  # BOS
    eos = vocab - 1
    ids[0, 20:] = eos  # CLIP-L tokenizer: padded with the end token; pooling takes the first
    if batch > 1:
        ids[1, 60], ids[1, 61:] = eos, 0  # open_clip tokenizer: padded with 0
    return ids.astype(np.int32)


def _ours(te: TextEncoder, ids) -> dict:
    full = te.encode(ids)  # last_hidden_state, pooled, text_embeds
    pen = te.encode(ids, layer=-2, final_norm=False, pooled=False)
    out = {"hidden": full["hidden"], "penultimate": pen["hidden"], "pooled": full["pooled"]}
    if "text_embeds" in full:
        out["text_embeds"] = full["text_embeds"]
    return out


def _reference_outputs(model, ids) -> dict:
    x = torch.from_numpy(ids).long()
    with torch.no_grad():
        text = model.text_model if hasattr(model, "text_projection") else model  # 5.x: no text_model level
        o = text(x, output_hidden_states=True)
        out = {"hidden": o.last_hidden_state, "penultimate": o.hidden_states[-2], "pooled": o.pooler_output}
        if hasattr(model, "text_projection"):
            out["text_embeds"] = model(x).text_embeds
    return {k: v.numpy() for k, v in out.items()}


def _state_dict_from(weights, component: str, model) -> dict:
    """Our canonical names carry transformers' published `text_model.` level; 5.x's CLIPTextModel lacks it."""
    keys = set(model.state_dict())
    prefix = component + "."
    sd = {}
    for name in weights.names():
        if name.startswith(prefix):
            leaf = name[len(prefix):]
            key = leaf if leaf in keys else leaf.removeprefix("text_model.")
            sd[key] = torch.from_numpy(weights.numpy(name)).to(torch.float64)
    return sd


class _Cache:
    def __init__(self, root):
        self.root = root
        self._weights, self._refs = {}, {}

    def weights(self, family, te_type=None, form="diffusers"):
        key = (family, te_type, form)
        if key not in self._weights:
            self._weights[key] = sdcpp.load_weights(self.root / family / form, te_type=te_type, progress=False,
                                                    n_threads=1)
        return self._weights[key]

    def reference(self, family, component):
        """transformers' own loader on the diffusers folder, in float64."""
        if (family, component) not in self._refs:
            folder = self.root / family / "diffusers"
            cfg = transformers.CLIPTextConfig.from_pretrained(folder, subfolder=component)
            cls = transformers.CLIPTextModelWithProjection if cfg.architectures[0].endswith("WithProjection") \
                else transformers.CLIPTextModel
            model = cls.from_pretrained(folder, subfolder=component, attn_implementation="eager")
            self._refs[family, component] = model.to(torch.float64).eval()
        return self._refs[family, component]

    def dequantized_reference(self, family, component, weights):
        model = copy.deepcopy(self.reference(family, component))
        model.load_state_dict(_state_dict_from(weights, component, model), strict=True)
        return model


@pytest.fixture(scope="module")
def cache(fixtures_dir):
    return _Cache(fixtures_dir)


@pytest.mark.parametrize("flash", [False, True], ids=["plain", "flash"])
@pytest.mark.parametrize("family,component", MODELS)
def test_f32_parity(cache, family, component, flash):
    w = cache.weights(family)
    te = TextEncoder(w, component, flash_attn=flash, n_threads=1)
    assert te.n_heads == TINY_HEADS and te.n_layers == 2  # from the diffusers config
    ids = _tokens(te.vocab_size)
    ours = _ours(te, ids)
    ref = _reference_outputs(cache.reference(family, component), ids)
    assert set(ours) == set(ref) == ({*OUTPUTS} if te.projection_dim else {*OUTPUTS} - {"text_embeds"})
    for k in ref:
        assert ours[k].dtype == np.float32 and ours[k].shape == ref[k].shape, k
        assert _rel(ours[k], ref[k]) <= F32_MAX_ERR, (k, _rel(ours[k], ref[k]))
    # The f32 store reads back exactly what transformers loaded: the dequantized reference is the same model.
    deq = _reference_outputs(cache.dequantized_reference(family, component, w), ids)
    for k in ref:
        assert np.array_equal(deq[k], ref[k]), k


def _with_ggml_activation_rounding(model, weights, component):
    """The reference rounding each Linear's input as ggml's mul_mat does for that layer's stored weight type
    (tests/parity.py). Module names lack the `text_model.` level our canonical names keep (transformers 5.x)."""
    def weight_name(module):
        canonical = module if module.startswith("text_model.") or module == "text_projection" \
            else f"text_model.{module}"
        return f"{component}.{canonical}.weight"

    return with_ggml_activation_rounding(model, weights, weight_name)


@pytest.mark.parametrize("te_type", QUANT_TYPES)
@pytest.mark.parametrize("family,component", MODELS[:4])
def test_quantized_parity(cache, family, component, te_type):
    w = cache.weights(family, te_type)
    names = [n for n in w.names() if n.startswith(component + ".")]
    stored = sorted({w.info(n)["type"] for n in names})
    assert te_type in stored  # the request reached the text encoder (tiny rows also fall back, see `stored`)
    te = TextEncoder(w, component, n_threads=1)
    ids = _tokens(te.vocab_size)
    ours = _ours(te, ids)
    emulated = _reference_outputs(
        _with_ggml_activation_rounding(cache.dequantized_reference(family, component, w), w, component), ids)
    deq = _reference_outputs(cache.dequantized_reference(family, component, w), ids)
    orig = _reference_outputs(cache.reference(family, component), ids)
    errors = {k: (_rel(ours[k], emulated[k]), _rel(ours[k], deq[k]), _rel(ours[k], orig[k])) for k in deq}
    print(f"\n{family}/{component} te_type={te_type} (stored: {', '.join(stored)})"
          "\n  output       vs dequantized+act.rounding  vs dequantized  vs f32 original")
    for k, (e_emu, e_deq, e_orig) in errors.items():
        print(f"  {k:12s} {e_emu:26.2e} {e_deq:14.2e} {e_orig:16.2e}")
    for k, (e_emu, e_deq, _) in errors.items():
        assert e_emu <= 1e-2, (k, e_emu)  # graph error (measured <= 3.1e-3: an occasional rounding tie flips)
        assert e_deq <= 2.5e-2, (k, e_deq)  # plus ggml's activation rounding (measured 1.0e-2 .. 1.5e-2)


@pytest.mark.parametrize("products", ["openblas", "ggml"])
@pytest.mark.parametrize("te_type", ("f16", "q8_0", "q4_K"))
@pytest.mark.parametrize("family,component", MODELS[:4])
def test_f32_products(cache, family, component, te_type, products):
    """f32_matmul_min_cols=1: every weight is converted to f32 before its product (then OpenBLAS's sgemm when
    loaded) and no activation is rounded, so the graph is held to the f32 bound against the reference on the same
    dequantized weights (measured 1.8e-7 .. 5.1e-7). The default (the CPU's 256 columns) takes this path from 4 rows
    of 77 tokens on."""
    w = cache.weights(family, te_type)
    te = TextEncoder(w, component, f32_matmul_min_cols=1, n_threads=1)
    ids = _tokens(te.vocab_size)
    with contextlib.nullcontext() if products == "openblas" else ggml_kernels_only():
        ours = _ours(te, ids)
        four = np.concatenate([ids, ids])
        wide = TextEncoder(w, component, n_threads=1).encode(four, pooled=False)["hidden"]
        assert np.array_equal(wide, te.encode(four, pooled=False)["hidden"])
    deq = _reference_outputs(cache.dequantized_reference(family, component, w), ids)
    for k in deq:
        assert _rel(ours[k], deq[k]) <= F32_MAX_ERR, (k, _rel(ours[k], deq[k]))


@pytest.mark.parametrize("family,component", MODELS)
def test_every_weight_is_read(cache, family, component):
    w = cache.weights(family, "q8_0")
    te = TextEncoder(w, component, n_threads=1)
    assert te.used_weights() == set()
    te.encode(_tokens(te.vocab_size, batch=1))
    expected = {n for n in w.names() if n.startswith(component + ".")}
    assert te.weight_names() == expected
    assert te.used_weights() == expected


@pytest.mark.parametrize("te_type", [None, "q4_0"])
@pytest.mark.parametrize("family,component", MODELS[1:4])
def test_batch_rows_are_independent(cache, family, component, te_type):
    te = TextEncoder(cache.weights(family, te_type), component, n_threads=1)
    ids = _tokens(te.vocab_size, batch=2)
    two = te.encode(ids)
    one = te.encode(ids[:1])
    assert two["hidden"].shape == (2, 77, te.hidden_size) and one["hidden"].shape == (1, 77, te.hidden_size)
    for k in two:
        # Bit-identical on the stock CPU build; a tolerance leaves room for kernels that tile over the batch.
        assert _rel(one[k][0], two[k][0]) <= 1e-6, k
    # A shorter sequence works too (causal attention: its states equal the prefix of the long one's).
    short = te.encode(ids[:, :30], eos=[20, 29], pooled=False)
    assert _rel(short["hidden"], two["hidden"][:, :30]) <= 1e-5
    # Skipping the layers after the requested one changes nothing.
    pen = te.encode(ids, layer=-2, final_norm=False, pooled=False)["hidden"]
    assert np.array_equal(pen, te.encode(ids, layer=-2, final_norm=False)["hidden"])


def test_default_eos_is_first_largest_id(cache):
    te = TextEncoder(cache.weights("sdxl"), "text_encoder_2", n_threads=1)
    ids = _tokens(te.vocab_size)
    default = te.encode(ids)
    explicit = te.encode(ids, eos=[20, 60])
    for k in default:
        assert np.array_equal(default[k], explicit[k]), k
    other = te.encode(ids, eos=[5, 6])["pooled"]
    assert not np.allclose(other, default["pooled"])
    embeds = te.encode(ids, layer=0, final_norm=False)["hidden"]  # hidden_states[0]: the embeddings
    ref = cache.reference("sdxl", "text_encoder_2")
    with torch.no_grad():
        want = ref.text_model(torch.from_numpy(ids).long(), output_hidden_states=True).hidden_states[0].numpy()
    assert _rel(embeds, want) <= 1e-6


FORMS = ("single.safetensors", "diffusers", "sdcpp_convert.gguf")


@pytest.mark.parametrize("te_type", [None, "q4_K"])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_same_result_from_every_form(cache, tmp_path, family, te_type):
    written = tmp_path / f"{family}.gguf"
    sdcpp.quantize(cache.root / family / "diffusers", written, te_type=te_type, progress=False)
    loads = {form: cache.weights(family, te_type, form) for form in FORMS}
    loads["gguf from quantize()"] = sdcpp.load_weights(written, progress=False)
    components = [c for c in ("text_encoder", "text_encoder_2") if c in loads["diffusers"].spec.components]
    for component in components:
        results = {}
        for form, w in loads.items():
            # Config-less forms get the heads given; activation and eps come from the family defaults.
            heads = None if w.configs.get(component) else TINY_HEADS
            te = TextEncoder(w, component, n_heads=heads, n_threads=1)
            assert te.n_heads == TINY_HEADS, form
            results[form] = _ours(te, _tokens(te.vocab_size))
        base = results["diffusers"]
        for form, res in results.items():
            for k in base:
                assert np.array_equal(res[k], base[k]), (component, form, k)


def test_family_defaults_and_errors(cache):
    w = cache.weights("sd2", form="single.safetensors")
    te = TextEncoder(w, n_threads=1)
    assert (te.hidden_act, te.layer_norm_eps, te.projection_dim) == ("gelu", 1e-5, 0)  # SD2: OpenCLIP-H
    assert te.n_heads == 1  # 64-wide heads by default; the tiny model's real 2 needs a config or n_heads=
    assert TextEncoder(cache.weights("sd1", form="single.safetensors")).hidden_act == "quick_gelu"
    assert TextEncoder(cache.weights("sdxl", form="single.safetensors"), "text_encoder_2").hidden_act == "gelu"

    with pytest.raises(UnsupportedModelError, match="text_encoder_2"):
        TextEncoder(cache.weights("sd1"), "text_encoder_2")
    with pytest.raises(UnsupportedModelError, match="heads"):
        TextEncoder(w, n_heads=3)
    with pytest.raises(ValueError, match="component"):
        TextEncoder(w, "unet")
    ok = _tokens(te.vocab_size, batch=1)
    with pytest.raises(ValueError, match="token ids"):
        te.encode(np.full((1, 5), te.vocab_size))
    with pytest.raises(ValueError, match="positions"):
        te.encode(np.zeros((1, te.max_positions + 1), np.int32))
    with pytest.raises(ValueError, match="layer"):
        te.encode(ok, layer=3)
    with pytest.raises(ValueError, match="eos"):
        te.encode(ok, eos=[77])
    with pytest.raises(TypeError):
        te.encode(ok.astype(np.float32))
    assert te.encode(ok[0])["hidden"].shape == (1, 77, 64)  # 1-D tokens: one row
    assert te.encode(ok, layer=-3)["hidden"].shape == (1, 77, 64)  # hidden_states[0], final LN applied


def test_concurrent_calls(cache):
    """compute() releases the GIL and serialises on the model: threads get the same results as serial calls."""
    from concurrent.futures import ThreadPoolExecutor

    te = TextEncoder(cache.weights("sdxl", "q8_0"), "text_encoder_2", n_threads=1)
    batches = [_tokens(te.vocab_size, seed=s) for s in range(4)]
    serial = [te.encode(ids)["text_embeds"] for ids in batches]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ids: te.encode(ids)["text_embeds"], batches))
    for a, b in zip(serial, threaded, strict=True):
        assert np.array_equal(a, b)
