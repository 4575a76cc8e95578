"""Each component's architecture read once from the canonical tensor shapes, walking the tensors in the order the
graphs (csrc/models/*.cpp) read them and checking every shape against what the walk implies.

A weight whose shape contradicts the rest of the model (a cross-attention key whose input width is not the text
context, a resnet whose channels do not follow from the previous block) is refused here, at load and before any
weight is read, with a ModelFormatError naming the file, the tensor and both shapes; without this check the first
generation fails with a message about `context`, or ggml aborts the process while building the graph.

What shapes cannot tell (attention heads, GroupNorm groups, the width of SDXL's time-id embedding) comes in as
arguments, from a config or the family defaults (sdcpp.config.families)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .shapes import Shapes

U = "unet"


@dataclass(frozen=True)
class UNetArch:
    in_channels: int
    out_channels: int
    base_channels: int  # conv_in's output: the widest full-resolution activation
    block_channels: tuple[int, ...]  # output channels of each down block
    attention: tuple[bool, ...]  # whether each down block has transformer blocks
    context_dim: int  # input width of every cross-attention key/value (0: no attention at all)
    time_embed_dim: int  # width of the timestep embedding every resnet projects from
    adm_in_channels: int  # add_embedding input width (SDXL: pooled + time ids), 0 without one

    @property
    def n_down(self) -> int:
        return len(self.block_channels)


@dataclass(frozen=True)
class VaeArch:
    latent_channels: int
    factor: int  # pixels per latent: 2 ** decoder upsamplers
    has_encoder: bool
    decoder_out_channels: int  # channels at full resolution, into the decoder's conv_out
    mid_attention: bool  # the decoder's mid block has attention (over every latent pixel)
    kind: str = "kl"  # "kl": AutoencoderKL; "tiny": AutoencoderTiny (TAESD)
    # tiny: how many indices encoder.layers / decoder.layers span (weightless ReLU / upsampling layers included;
    # encoder_layers 0 without an encoder), and the decoder's nearest-upsampling factor
    encoder_layers: int = 0
    decoder_layers: int = 0
    upscale: int = 0


@dataclass(frozen=True)
class TextEncoderArch:
    hidden_size: int
    n_layers: int
    vocab_size: int
    max_positions: int
    projection_dim: int  # 0 without text_projection


def _count(s: Shapes, fmt: str) -> int:
    n = 0
    while s.has(fmt.format(n)):
        n += 1
    return n


# --- UNet ----------------------------------------------------------------------------------------------------------

def _resnet(s: Shapes, p: str, cin: int, temb: int | None, groups: int) -> int:
    cout = s.out_channels(p + ".conv1")
    s.norm(p + ".norm1", cin, f"{p} takes {cin} channels", groups)
    s.conv(p + ".conv1", cin, cout, 3, f"{p} takes {cin} channels")
    if temb is not None:
        s.linear(p + ".time_emb_proj", temb, cout, f"time embedding width {temb} -> {cout} channels")
    s.norm(p + ".norm2", cout, f"{p}.conv1 gives {cout} channels", groups)
    s.conv(p + ".conv2", cout, cout, 3, f"{p}.conv1 gives {cout} channels")
    if s.has(p + ".conv_shortcut.weight"):
        s.conv(p + ".conv_shortcut", cin, cout, 1, f"{p} maps {cin} to {cout} channels")
    elif cin != cout:
        s.need(p + ".conv_shortcut.weight", f"{p} maps {cin} to {cout} channels")
    return cout


def _attention(s: Shapes, p: str, q_in: int, kv_in: int | None, heads: int, what: str) -> int:
    """diffusers Attention: to_q/to_k/to_v (biases optional), to_out.0 back to q_in. Returns kv_in as found."""
    _, inner = s.linear(p + ".to_q", q_in, None, f"{what}: queries read {q_in} channels")
    reads = f"read {kv_in} channels and " if kv_in else ""
    kv_in, _ = s.linear(p + ".to_k", kv_in, inner, f"{what}: keys {reads}are {inner} wide like the queries")
    s.linear(p + ".to_v", kv_in, inner, f"{what}: values read what the keys read")
    s.linear(p + ".to_out.0", inner, q_in, f"{what} output back to {q_in} channels")
    if inner % heads:
        s.fail(p + ".to_q.weight", f"{inner} channels do not split into {heads} attention heads")
    return kv_in


def _transformer(s: Shapes, p: str, c: int, heads: int, context: int | None, groups: int) -> int | None:
    """Transformer2DModel; returns the context width its cross-attention reads (None: no blocks)."""
    s.norm(p + ".norm", c, f"{p} wraps {c} channels", groups)
    _, inner = s.linear(p + ".proj_in", c, None, f"{p} wraps {c} channels", as_1x1=True)
    n = _count(s, p + ".transformer_blocks.{}.norm1.weight")
    if n == 0:
        s.need(p + ".transformer_blocks.0.norm1.weight", "a spatial transformer has at least one block")
    for k in range(n):
        tb = f"{p}.transformer_blocks.{k}"
        for norm in ("norm1", "norm2", "norm3"):
            s.norm(f"{tb}.{norm}", inner, f"the transformer is {inner} wide")
        _attention(s, tb + ".attn1", inner, inner, heads, "self-attention")
        over = f"cross-attention over the {context}-wide text context" if context else "cross-attention"
        context = _attention(s, tb + ".attn2", inner, context, heads, over)
        _, two_ff = s.linear(tb + ".ff.net.0.proj", inner, None, f"the transformer is {inner} wide")
        if two_ff % 2:
            s.fail(tb + ".ff.net.0.proj.weight", f"GEGLU needs an even output width, got {two_ff}")
        s.linear(tb + ".ff.net.2", two_ff // 2, inner, f"GEGLU halves {two_ff} to {two_ff // 2}")
    s.linear(p + ".proj_out", inner, c, f"back to the block's {c} channels", as_1x1=True)
    return context


def unet_arch(s: Shapes, *, heads: list[int], groups: int, context_dim: int | None = None) -> UNetArch:
    """`heads`: attention heads per down block (up blocks mirror them, the mid block takes the last);
    `context_dim`: the text context width when known from the text encoders (checked against every key)."""
    conv_in = s.need(f"{U}.conv_in.weight")
    if len(conv_in) not in (2, 4):
        s.fail(f"{U}.conv_in.weight", f"has shape {list(conv_in)}, expected a 3x3 conv kernel")
    in_ch = conv_in[1] if len(conv_in) == 4 else conv_in[1] // 9
    h = base = s.conv(f"{U}.conv_in", in_ch, None, 3, "the UNet's input conv")
    t_in, temb = s.linear(f"{U}.time_embedding.linear_1", None, None, "timestep embedding")
    s.linear(f"{U}.time_embedding.linear_2", temb, temb, f"timestep embedding is {temb} wide")
    adm = 0
    if s.has(f"{U}.add_embedding.linear_1.weight"):
        adm, _ = s.linear(f"{U}.add_embedding.linear_1", None, temb, f"added to the {temb}-wide time embedding")
        s.linear(f"{U}.add_embedding.linear_2", temb, temb, f"timestep embedding is {temb} wide")

    context = context_dim
    skips = [h]
    channels, attention = [], []
    n_down = _count(s, U + ".down_blocks.{}.resnets.0.conv1.weight")
    if n_down == 0:
        s.need(f"{U}.down_blocks.0.resnets.0.conv1.weight", "a UNet has down blocks")
    if len(heads) < n_down:
        s.fail(f"{U}.down_blocks.0.resnets.0.conv1.weight",
               f"the UNet has {n_down} down blocks but heads are given for {len(heads)}")
    for i in range(n_down):
        b = f"{U}.down_blocks.{i}"
        has_attn = False
        for j in range(_count(s, b + ".resnets.{}.conv1.weight")):
            h = _resnet(s, f"{b}.resnets.{j}", h, temb, groups)
            if s.has(f"{b}.attentions.{j}.norm.weight"):
                context = _transformer(s, f"{b}.attentions.{j}", h, heads[i], context, groups)
                has_attn = True
            skips.append(h)
        if s.has(b + ".downsamplers.0.conv.weight"):
            s.conv(b + ".downsamplers.0.conv", h, h, 3, f"downsampling keeps {h} channels")
            skips.append(h)
        channels.append(h)
        attention.append(has_attn)

    mid = f"{U}.mid_block"
    h = _resnet(s, mid + ".resnets.0", h, temb, groups)
    for i in range(_count(s, mid + ".attentions.{}.norm.weight")):
        context = _transformer(s, f"{mid}.attentions.{i}", h, heads[n_down - 1], context, groups)
        h = _resnet(s, f"{mid}.resnets.{i + 1}", h, temb, groups)

    n_up = _count(s, U + ".up_blocks.{}.resnets.0.conv1.weight")
    if n_up != n_down:
        s.fail(f"{U}.up_blocks.0.resnets.0.conv1.weight", f"{n_up} up blocks mirror {n_down} down blocks")
    for i in range(n_up):
        b = f"{U}.up_blocks.{i}"
        for j in range(_count(s, b + ".resnets.{}.conv1.weight")):
            if not skips:
                s.fail(f"{b}.resnets.{j}.conv1.weight", "needs more skip connections than the down blocks made")
            h = _resnet(s, f"{b}.resnets.{j}", h + skips.pop(), temb, groups)
            if s.has(f"{b}.attentions.{j}.norm.weight"):
                context = _transformer(s, f"{b}.attentions.{j}", h, heads[n_down - 1 - i], context, groups)
        if s.has(b + ".upsamplers.0.conv.weight"):
            s.conv(b + ".upsamplers.0.conv", h, h, 3, f"upsampling keeps {h} channels")
    s.norm(f"{U}.conv_norm_out", h, f"the last up block gives {h} channels", groups)
    out_ch = s.conv(f"{U}.conv_out", h, None, 3, f"the last up block gives {h} channels")
    return UNetArch(in_ch, out_ch, base, tuple(channels), tuple(attention), context or 0, temb, adm)


# --- VAE -----------------------------------------------------------------------------------------------------------

def _vae_mid(s: Shapes, p: str, h: int, groups: int) -> int:
    h = _resnet(s, p + ".resnets.0", h, None, groups)
    for i in range(_count(s, p + ".attentions.{}.to_q.weight")):
        a = f"{p}.attentions.{i}"
        s.norm(a + ".group_norm", h, f"the mid block is {h} wide", groups)
        _attention(s, a, h, h, 1, "VAE attention")
        h = _resnet(s, f"{p}.resnets.{i + 1}", h, None, groups)
    return h


def _vae_stage(s: Shapes, blocks: str, resampler: str, h: int, groups: int) -> tuple[int, int]:
    """The encoder's down blocks or the decoder's up blocks: resnets, then a resampling conv that keeps the channels.
    Returns (channels after the stage, number of resampling convs)."""
    n = 0
    for i in range(_count(s, blocks + ".{}.resnets.0.conv1.weight")):
        b = f"{blocks}.{i}"
        for j in range(_count(s, b + ".resnets.{}.conv1.weight")):
            h = _resnet(s, f"{b}.resnets.{j}", h, None, groups)
        if s.has(f"{b}.{resampler}.0.conv.weight"):
            s.conv(f"{b}.{resampler}.0.conv", h, h, 3, f"{resampler} keep {h} channels")
            n += 1
    return h, n


def vae_arch(s: Shapes, *, groups: int) -> VaeArch:
    dec = "vae.decoder"
    conv_in = s.need(dec + ".conv_in.weight")
    latent = conv_in[1] if len(conv_in) == 4 else conv_in[1] // 9
    if s.has("vae.post_quant_conv.weight"):
        latent = s.out_channels("vae.post_quant_conv")
        s.conv("vae.post_quant_conv", latent, latent, 1, f"{latent} latent channels")
    h = s.conv(dec + ".conv_in", latent, None, 3, f"{latent} latent channels")
    mid_attention = s.has(dec + ".mid_block.attentions.0.to_q.weight")
    h = _vae_mid(s, dec + ".mid_block", h, groups)
    h, ups = _vae_stage(s, dec + ".up_blocks", "upsamplers", h, groups)
    s.norm(dec + ".conv_norm_out", h, f"the decoder's last block gives {h} channels", groups)
    s.conv(dec + ".conv_out", h, 3, 3, "the decoder's RGB output")
    full_res = h

    enc = "vae.encoder"
    has_encoder = s.has(enc + ".conv_in.weight")
    if has_encoder:
        h = s.conv(enc + ".conv_in", 3, None, 3, "the encoder reads RGB")
        h, _ = _vae_stage(s, enc + ".down_blocks", "downsamplers", h, groups)
        h = _vae_mid(s, enc + ".mid_block", h, groups)
        s.norm(enc + ".conv_norm_out", h, f"the encoder's last block gives {h} channels", groups)
        s.conv(enc + ".conv_out", h, 2 * latent, 3, f"mean and log-variance of {latent} latent channels")
        if s.has("vae.quant_conv.weight"):
            s.conv("vae.quant_conv", 2 * latent, 2 * latent, 1, f"mean and log-variance of {latent} channels")
    return VaeArch(latent, 2**ups, has_encoder, full_res, mid_attention)


# --- TAESD (AutoencoderTiny) ----------------------------------------------------------------------------------------
# diffusers' EncoderTiny: conv(3 -> C), then per stage [conv(C -> C, stride 2, no bias) unless the first]
# + AutoencoderTinyBlocks, then conv(C -> latent). DecoderTiny: conv(latent -> C), ReLU, then per stage
# AutoencoderTinyBlocks + [nearest upsampling, conv(C -> C, no bias)] unless the last, which ends in conv(C -> 3).
# The graph (csrc/models/taesd.cpp) reads each index the same way: a block, a conv, or (decoder, weightless) the
# ReLU at index 1 and an upsampling anywhere else.

def _tiny_span(s: Shapes, p: str) -> int:
    found = {int(m.group(1)) for n in s.shapes if (m := re.match(re.escape(p) + r"\.(\d+)\.", n))}
    return max(found) + 1 if found else 0


def _tiny_block(s: Shapes, p: str, c: int) -> int:
    """AutoencoderTinyBlock: relu(conv.4(relu(conv.2(relu(conv.0(x))))) + skip(x)); returns its channels."""
    out = s.conv(p + ".conv.0", c, None, 3, f"{p} takes {c} channels")
    s.conv(p + ".conv.2", out, out, 3, f"{p}.conv.0 gives {out} channels")
    s.conv(p + ".conv.4", out, out, 3, f"{p}.conv.0 gives {out} channels")
    if s.has(p + ".skip.weight"):
        s.conv(p + ".skip", c, out, 1, f"{p} maps {c} to {out} channels", bias=False)
    elif c != out:
        s.need(p + ".skip.weight", f"{p} maps {c} to {out} channels")
    return out


def tiny_vae_arch(s: Shapes, *, upscale: int) -> VaeArch:
    """`upscale`: the decoder's nearest-upsampling factor (config upsampling_scaling_factor)."""
    dec = "vae.decoder.layers"
    n_dec = _tiny_span(s, dec)
    conv_in = s.need(dec + ".0.weight", "TAESD's decoder starts with its input conv")
    latent = conv_in[1] if len(conv_in) == 4 else conv_in[1] // 9
    h = s.conv(dec + ".0", latent, None, 3, f"{latent} latent channels")
    if n_dec < 3:
        s.need(f"{dec}.2.conv.0.weight", "TAESD's decoder has blocks after its input conv and ReLU")
    ups, full_res = 0, h
    for i in range(1, n_dec):
        p = f"{dec}.{i}"
        last = i == n_dec - 1
        held = next((n for n in s.shapes if n.startswith(p + ".")), None)
        if i == 1 and held:
            s.fail(held, "is where TAESD's decoder has its ReLU (no weights)")
        if s.has(p + ".conv.0.weight") and not last:
            h = _tiny_block(s, p, h)
        elif s.has(p + ".weight"):
            full_res = h
            h = s.conv(p, h, 3 if last else h, 3, "the decoder's RGB output" if last else f"keeps {h} channels",
                       bias=True if last else None)
        elif last or held:
            s.fail(held or p + ".weight", "is not the conv where TAESD's decoder ends" if last
                   else "is neither a conv nor an AutoencoderTinyBlock")
        elif i > 1:
            ups += 1  # nearest upsampling
    enc = "vae.encoder.layers"
    n_enc = _tiny_span(s, enc)
    if n_enc:
        h = s.conv(enc + ".0", 3, None, 3, "the encoder reads RGB")
        downs = 0
        for i in range(1, n_enc):
            p = f"{enc}.{i}"
            last = i == n_enc - 1
            if s.has(p + ".conv.0.weight") and not last:
                h = _tiny_block(s, p, h)
            elif s.has(p + ".weight"):
                h = s.conv(p, h, latent if last else h, 3, f"{latent} latent channels" if last
                           else f"downsampling keeps {h} channels", bias=True if last else None)
                downs += 0 if last else 1
            else:
                s.need(p + ".weight", "TAESD's encoder layers are convs and blocks, without gaps")
        if upscale**ups != 2**downs:
            s.fail(enc + ".0.weight", f"the encoder downsamples {2**downs}x, the decoder upsamples {upscale**ups}x")
    return VaeArch(latent, upscale**ups, n_enc > 0, full_res, False, "tiny", n_enc, n_dec, upscale)


# --- text encoders -------------------------------------------------------------------------------------------------

def text_encoder_arch(s: Shapes, component: str, *, heads: int) -> TextEncoderArch:
    p = f"{component}.text_model"
    vocab, c = s.need(p + ".embeddings.token_embedding.weight")
    n_pos, _ = s.expect(p + ".embeddings.position_embedding.weight", (None, c), f"token embeddings are {c} wide")
    if c % heads:
        s.fail(p + ".embeddings.token_embedding.weight", f"hidden size {c} does not split into {heads} heads")
    n_layers = _count(s, p + ".encoder.layers.{}.layer_norm1.weight")
    if n_layers == 0:
        s.need(p + ".encoder.layers.0.layer_norm1.weight", "a text encoder has layers")
    for i in range(n_layers):
        lp = f"{p}.encoder.layers.{i}"
        for norm in ("layer_norm1", "layer_norm2"):
            s.norm(f"{lp}.{norm}", c, f"hidden size {c}")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.linear(f"{lp}.self_attn.{proj}", c, c, f"hidden size {c}", bias=True)
        _, ff = s.linear(lp + ".mlp.fc1", c, None, f"hidden size {c}", bias=True)
        s.linear(lp + ".mlp.fc2", ff, c, f"fc1 gives {ff}", bias=True)
    s.norm(p + ".final_layer_norm", c, f"hidden size {c}")
    proj = 0
    if s.has(f"{component}.text_projection.weight"):
        _, proj = s.linear(f"{component}.text_projection", c, None, f"pooled output is {c} wide", bias=False)
    return TextEncoderArch(c, n_layers, vocab, n_pos, proj)
