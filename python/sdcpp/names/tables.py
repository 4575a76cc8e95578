"""Naming data: prefixes of each source layout, leaf renames, and names that are known and unused.
Keep logic out of this file; the translators in this package read these tables."""

from __future__ import annotations

import re

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")

# Raw prefix -> (component, layout). Matched longest first, so "cond_stage_model.1." never falls into
# "cond_stage_model." (an order bug that stable-diffusion.cpp's unordered prefix map allows).
PREFIXES: dict[str, tuple[str, str]] = {
    # original single-file checkpoints (CompVis LDM for SD1/SD2, Stability SGM for SDXL)
    "model.diffusion_model.": ("unet", "ldm"),
    "first_stage_model.": ("vae", "ldm"),
    "cond_stage_model.transformer.": ("text_encoder", "hf_clip"),  # SD1: HF CLIP-L layout
    "cond_stage_model.model.": ("text_encoder", "openclip_h"),  # SD2: OpenCLIP ViT-H
    "conditioner.embedders.0.transformer.": ("text_encoder", "hf_clip"),  # SDXL: CLIP-L
    "conditioner.embedders.1.model.": ("text_encoder_2", "openclip_g"),  # SDXL: OpenCLIP bigG
    "conditioner.embedders.0.model.": ("text_encoder_2", "openclip_g"),  # SDXL refiner: bigG only
    # stable-diffusion.cpp's internal names (GGUFs written with --convert-name)
    "cond_stage_model.1.transformer.": ("text_encoder_2", "hf_clip"),
    # diffusers component names (our canonical form; diffusers folders are read with these prefixes)
    "unet.": ("unet", "auto"),
    "vae.": ("vae", "auto"),
    "text_encoder.": ("text_encoder", "hf_clip"),
    "text_encoder_2.": ("text_encoder_2", "hf_clip"),
    # TAESD halves in their original numbering (madebyollin/taesd's taesd.py), as ComfyUI combines them
    "taesd_encoder.": ("vae", "taesd_encoder"),
    "taesd_decoder.": ("vae", "taesd_decoder"),
}

# First segment (or first two, which win) of a name without any prefix (component files, ComfyUI-GGUF UNets)
# -> component. "encoder.layers" is a text encoder saved without `text_model.` (transformers 5), unless the name
# has a TAESD layer's leaf (TAESD_LAYER below): a text encoder layer's leaves are self_attn / mlp / layer_norm*.
BARE_HEADS: dict[str, str] = {
    "encoder.layers": "text_encoder", "embeddings": "text_encoder", "final_layer_norm": "text_encoder",
    "text_projection": "text_encoder",
    "input_blocks": "unet", "middle_block": "unet", "output_blocks": "unet", "time_embed": "unet",
    "label_emb": "unet", "out": "unet", "down_blocks": "unet", "mid_block": "unet", "up_blocks": "unet",
    "conv_in": "unet", "conv_out": "unet", "conv_norm_out": "unet", "time_embedding": "unet",
    "add_embedding": "unet",
    "encoder": "vae", "decoder": "vae", "quant_conv": "vae", "post_quant_conv": "vae",
    "text_model": "text_encoder",
}

# --- TAESD (diffusers AutoencoderTiny) ---------------------------------------------------------
# A layer of AutoencoderTiny's `encoder.layers` / `decoder.layers` (nn.Sequential): a conv (`N.weight`, `N.bias`) or
# an AutoencoderTinyBlock (`N.conv.{0,2,4}.*`, `N.skip.weight`). The original files (taesd_encoder.safetensors,
# taesd_decoder.safetensors) hold the same layers under bare indices; the decoder's count from 1 there (its index 0
# is the input clamp, which has no weights), so diffusers' conversion subtracts one.
_TAESD_LEAF = r"(\d+)\.((?:conv\.[024]\.)?(?:weight|bias)|skip\.weight)$"
TAESD_LAYER = re.compile("^" + _TAESD_LEAF)  # original files: (index, leaf)
TAESD_DIFFUSERS = re.compile(r"^(encoder|decoder)\.layers\." + _TAESD_LEAF)  # (half, index, leaf)
TAESD_DECODER_OFFSET = 1  # original decoder index - diffusers decoder index

# Known tensors that no Stable Diffusion graph reads: (regex on the raw name, reason).
IGNORED: list[tuple[re.Pattern, str]] = [
    (re.compile(r"(^|\.)(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|"
                r"sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|"
                r"sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|"
                r"posterior_mean_coef1|posterior_mean_coef2|lvlb_weights)$"), "training schedule buffer"),
    (re.compile(r"^model_ema\."), "EMA copy of the weights (the non-EMA weights are used, as diffusers does)"),
    (re.compile(r"position_ids$"), "position id buffer (recomputed)"),
    (re.compile(r"logit_scale$"), "CLIP training temperature"),
    (re.compile(r"^v_pred$"), "marker of a v-prediction SDXL checkpoint (read by detection)"),
    (re.compile(r"^vae_(scale|shift)$"), "ComfyUI's TAESD latent scale / shift (1 and 0 for SD1/SD2/SDXL's TAESD)"),
    (re.compile(r"^(cond_stage_model|conditioner\.embedders\.\d)\.model\.attn_mask$"), "causal mask buffer"),
]

# Unsupported families recognised from raw names: (regex, what it is).
UNSUPPORTED: list[tuple[re.Pattern, str]] = [
    (re.compile(r"(^|\.)joint_blocks\.\d|(^|\.)joint_transformer_blocks\."), "Stable Diffusion 3 (MMDiT)"),
    (re.compile(r"(^|\.)double_blocks\.\d+\.|(^|\.)single_transformer_blocks\."), "Flux"),
    (re.compile(r"time_mixer|time_stack\."), "Stable Video Diffusion"),
    (re.compile(r"(^|\.)control_model\.|input_hint_block\."), "a ControlNet"),
    (re.compile(r"lora_up\.|lora_down\.|lora_A\.|lora_B\.|\.hada_w1|\.lokr_w1"),
     "a LoRA / LyCORIS adapter (load it with the model it adapts: loras=[...] / --lora)"),
    (re.compile(r"^edm_vpred\."), "an EDM v-prediction model (CosXL)"),
    (re.compile(r"^(model\.diffusion_model\.)?(blocks|layers)\.\d+\.(self_attn|cross_attn|attn)\."),
     "a diffusion transformer (PixArt/Wan/...)"),
]

# --- UNet: LDM (original) -> diffusers -----------------------------------------------------------
UNET_FIXED = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
UNET_RESNET_LEAVES = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut",
}
UNET_MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}

# --- VAE: LDM -> diffusers -----------------------------------------------------------------------
VAE_FIXED = {
    "encoder.norm_out": "encoder.conv_norm_out",
    "decoder.norm_out": "decoder.conv_norm_out",
    "encoder.mid.block_1": "encoder.mid_block.resnets.0",
    "encoder.mid.block_2": "encoder.mid_block.resnets.1",
    "decoder.mid.block_1": "decoder.mid_block.resnets.0",
    "decoder.mid.block_2": "decoder.mid_block.resnets.1",
}
VAE_RESNET_LEAVES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                     "nin_shortcut": "conv_shortcut", "conv_shortcut": "conv_shortcut"}
# Mid attention leaves; LDM stores q/k/v/proj_out as 1x1 convs, diffusers as linear layers.
# The query/key/value/proj_attn spellings are diffusers' own pre-0.14 names.
VAE_ATTN_LEAVES = {"norm": "group_norm", "group_norm": "group_norm",
                   "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0",
                   "query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0",
                   "to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "to_out.0"}

# --- OpenCLIP text tower -> transformers CLIP ----------------------------------------------------
OPENCLIP_FIXED = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
OPENCLIP_LAYER_LEAVES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
OPENCLIP_QKV = ("q_proj", "k_proj", "v_proj")  # order of the fused in_proj rows
