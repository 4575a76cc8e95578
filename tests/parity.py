"""Helpers shared by the parity tests against diffusers/transformers."""

import contextlib
import types

import numpy as np
import pytest


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.fixture(scope="module")
def single_threaded_torch():
    """The tiny reference models run fastest on one thread, and torch's spinning workers fight ggml's for the
    cores; restored afterwards so other test modules keep their setting. Use it with
    `pytestmark = pytest.mark.usefixtures("single_threaded_torch")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ggml's CPU mul_mat converts the activations (src1) to the weight's vec_dot type before the dot products: f16 or
# bf16 rows for float weights, blocks of 8-bit ints with one scale for quantized ones (q8_0: 32 values, f16 scale,
# for q4_0/q5_0/q8_0 weights; q8_K: 256 values, f32 scale, for the K-quants). Nothing else in our graphs rounds:
# norms, activations, attention (f32 Q/K/V) and weights converted to f32 (UNet/VAE f32_matmul_min_cols) stay f32.
# On the tiny random models that rounding alone moves the outputs by ~1e-2 (relative L2), as much as q8_0's own
# weight rounding, so the reference that isolates graph errors runs the dequantized weights *and* rounds each
# product's activation rows the way ggml does. The functions take f32 arrays whose last dimension is the product's
# row (the weight's row length).
#
# The emulation reproduces ggml's rounding only while its inputs agree with ggml's to f32 precision: a ~1e-7
# difference flips an occasional value across a rounding boundary, that flip's full quantum (1/254 of a block's
# peak) moves the next product's inputs, which flips more, and so on. Two text-encoder layers stay in step
# (tests/test_clip.py), but through the UNet's and VAE's dozens of quantized products in sequence the emulated
# reference in f32 and the same reference in f64 already differ as much as either differs from the plain
# dequantized one (tests/test_unet.py, tests/test_vae.py), so there the emulation is checked one quantized layer
# at a time.
def _act_q8_0(x):
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)  # stored as f16
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, 0).astype(np.float32)
    return (np.rint(b * inv) * d).reshape(x.shape)  # rint: round half to even, as ggml


def _act_q8_k(x):
    b = x.reshape(-1, 256)
    peak = b[np.arange(len(b)), np.abs(b).argmax(axis=1)][:, None]  # signed value of largest magnitude
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(peak != 0, np.float32(-127) / peak, 0).astype(np.float32)
        d = np.where(peak != 0, np.float32(1) / inv, 0).astype(np.float32)
    return (np.minimum(np.rint(inv * b), 127) * d).reshape(x.shape)


def _act_bf16(x):
    u = np.ascontiguousarray(x).view(np.uint32)
    return (((u + (0x7FFF + ((u >> 16) & 1))) >> 16) << 16).astype(np.uint32).view(np.float32)


def _act_f16(x):
    return x.astype(np.float16).astype(np.float32)


# stored weight type -> (rounding of the activation rows, block length the rows must divide into)
VEC_DOT_ROUNDING = {
    "f32": None, "f16": (_act_f16, 1), "bf16": (_act_bf16, 1),
    "q8_0": (_act_q8_0, 32), "q4_0": (_act_q8_0, 32), "q5_0": (_act_q8_0, 32),
    "q2_K": (_act_q8_k, 256), "q3_K": (_act_q8_k, 256), "q4_K": (_act_q8_k, 256), "q5_K": (_act_q8_k, 256),
    "q6_K": (_act_q8_k, 256),
}


def round_activations(rows, stored_type: str):
    """A torch tensor [..., K] of activation rows, rounded as ggml rounds src1 for a `stored_type` weight (the
    rounding itself in f32, as ggml; the result in the input's dtype)."""
    import torch

    rounding = VEC_DOT_ROUNDING[stored_type]
    if rounding is None:
        return rows
    f, block = rounding
    if rows.shape[-1] % block:
        raise ValueError(f"rows of {rows.shape[-1]} values cannot hold {stored_type}'s {block}-value blocks")
    x = np.ascontiguousarray(rows.detach().cpu().numpy(), dtype=np.float32)
    return torch.from_numpy(f(x)).to(rows.dtype)


def _conv_as_ggml(self, x, *args, **kwargs):
    """Conv2d.forward as ggml runs it: im2col (rows of C*k*k values per output pixel, channel-major then ky, kx:
    torch's unfold order), each row rounded for the weight's stored type, then one product with the weight as
    [OC, C*k*k]. A 1x1 conv is the same product over rows of C channels (ggml: a linear over channels)."""
    import torch

    (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
    n, _, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    cols = torch.nn.functional.unfold(x, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # [N, C*k*k, OH*OW]
    rows = round_activations(cols.transpose(1, 2), self.ggml_stored_type)
    y = rows @ self.weight.reshape(self.out_channels, -1).T
    if self.bias is not None:
        y = y + self.bias
    return y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)


def _install_rounding(model, weights, weight_name) -> list:
    import torch

    undo = []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        stored = weights.info(weight_name(name))["type"]
        if VEC_DOT_ROUNDING[stored] is None:
            continue
        if isinstance(module, torch.nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros" or \
                    isinstance(module.padding, str):
                raise NotImplementedError(f"ggml conv emulation: {name}: {module}")
            module.ggml_stored_type = stored
            module.forward = types.MethodType(_conv_as_ggml, module)  # a bound method: deepcopy rebinds it
            undo.append(lambda m=module: (delattr(m, "forward"), delattr(m, "ggml_stored_type")))
        else:
            handle = module.register_forward_pre_hook(
                lambda _m, args, t=stored: (round_activations(args[0], t), *args[1:]))
            undo.append(handle.remove)
    return undo


def with_ggml_activation_rounding(model, weights, weight_name):
    """`model` (changed in place and returned) with each Linear's input and each Conv2d's im2col rows rounded as
    ggml's mul_mat rounds them for the stored type of that layer's weight (f32 weights: left alone).
    weight_name(module_name) -> the canonical name of the module's weight in `weights` (e.g. `unet.` + the
    diffusers module name + `.weight`)."""
    _install_rounding(model, weights, weight_name)
    return model


@contextlib.contextmanager
def ggml_activation_rounding(model, weights, weight_name):
    """with_ggml_activation_rounding for the duration of a `with` block."""
    undo = _install_rounding(model, weights, weight_name)
    try:
        yield model
    finally:
        for f in undo:
            f()


@contextlib.contextmanager
def dequantized_weights(model, weights, prefix: str, names):
    """`model` with the parameters `names` (canonical: `prefix` + state-dict name) replaced by `weights`'
    dequantized values for the duration of a `with` block; cheaper than a copy when few change."""
    import torch

    saved = {}
    try:
        for n in names:
            param = model.get_parameter(n[len(prefix):])
            saved[param] = param.data
            param.data = torch.from_numpy(weights.numpy(n)).to(param.dtype).reshape(param.shape)
        yield model
    finally:
        for param, data in saved.items():
            param.data = data


def dequantized_copy(model, weights, prefix: str):
    """A copy of the diffusers/transformers `model` holding `weights`' dequantized values, for every name
    `prefix` + state-dict name (e.g. `unet.`); strict, so every parameter must be there."""
    import copy

    import torch

    out = copy.deepcopy(model)
    out.load_state_dict({n[len(prefix):]: torch.from_numpy(weights.numpy(n)) for n in weights.names()
                         if n.startswith(prefix)}, strict=True)
    return out


@contextlib.contextmanager
def ggml_kernels_only():
    """Products and attention on ggml's own kernels, as without OpenBLAS (sdcpp.models use it when loaded)."""
    from sdcpp._native import core

    core().set_blas_enabled(False)
    try:
        yield
    finally:
        core().set_blas_enabled(True)


def scaled_diffusers_copy(src, dst, component: str, names, scale: float):
    """A copy of the diffusers folder `src` at `dst` with the parameters `names` (state-dict names) of
    `component` multiplied by `scale`; returns `dst`. Scaling a conv's weight and bias makes the activations after
    it small, so the GroupNorm that follows sees a variance near its epsilon and the epsilon shows in the output."""
    import shutil

    import safetensors.numpy

    shutil.copytree(src, dst)
    path = dst / component / "diffusion_pytorch_model.safetensors"
    tensors = safetensors.numpy.load_file(str(path))
    for n in names:
        tensors[n] = tensors[n] * np.float32(scale)  # KeyError: a name the fixture doesn't have
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
    return dst
