"""What each model family is, as data: the one place a family's facts live. Adding a family means a row here
plus its graph (detection of the family from shapes is in sdcpp/detect.py).

Sources of the numbers: the released models' diffusers configs (scheduler_config.json, model_index.json, vae and
unet config.json) and diffusers' pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from ..text.tokenizer import EOS_ID, OPEN_CLIP_PAD_ID


@dataclass(frozen=True)
class Encoder:
    """One text encoder of a family, as the family uses it."""

    component: str  # "text_encoder" | "text_encoder_2"
    pad_id: int  # CLIP-L pads prompts with its end token; OpenCLIP towers (SD2's, every text_encoder_2) with 0
    activation: str  # hidden_act where the weights carry no config: quick_gelu (OpenAI CLIP), gelu (OpenCLIP)


CLIP_L = Encoder("text_encoder", EOS_ID, "quick_gelu")
OPEN_CLIP_H = Encoder("text_encoder", OPEN_CLIP_PAD_ID, "gelu")
OPEN_CLIP_G = Encoder("text_encoder_2", OPEN_CLIP_PAD_ID, "gelu")


@dataclass(frozen=True)
class Family:
    name: str
    default_size: int  # pixels, when neither the call nor a UNet config (sample_size) says
    prediction: str  # when nothing in the files declares one
    prediction_reason: str
    vae_scaling_factor: float  # latent scaling when the VAE has no config
    vae_keeps_f32: bool  # the VAE stays f32 under a plain `type=` request (SDXL: decoder activations overflow f16)
    encoders: tuple[Encoder, ...]  # in the order their hidden states are concatenated into the context
    # Which hidden state conditions the UNet: "last" (final-LayerNorm'd last layer, A1111 clip_skip moves back
    # from it) or "penultimate" (hidden_states[-2] without the final LayerNorm; clip_skip moves further back).
    hidden_state: str
    pooled_from: str | None  # the encoder whose projected pooled output feeds add_embedding (SDXL)
    time_ids: str  # "" | "size" (original size, crop, target size: SDXL base) | "aesthetic" (refiner)
    zeros_for_empty_negative: bool  # diffusers' force_zeros_for_empty_prompt
    unet_heads: int | None  # heads of every block without a config (SD1: 8); None: block channels / 64
    ays_model: str  # which Align-Your-Steps table (sampling.schedules.AYS_TIMESTEPS)
    epsilon_default_size: int | None = None  # default_size of the family's epsilon variant, if it differs

    @property
    def xl(self) -> bool:
        return self.pooled_from is not None

    def size_for(self, prediction: str) -> int:
        if prediction == "epsilon" and self.epsilon_default_size:
            return self.epsilon_default_size
        return self.default_size


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd1", 512, "epsilon", "default", 0.18215, False, (CLIP_L,), "last", None, "", False, 8, "sd1"),
    Family("sd2", 768, "v_prediction", "default for SD 2.x (768-v); pass prediction='epsilon' for 512-base",
           0.18215, False, (OPEN_CLIP_H,), "last", None, "", False, None, "sd1", epsilon_default_size=512),
    Family("sdxl", 1024, "epsilon", "default", 0.13025, True, (CLIP_L, OPEN_CLIP_G), "penultimate",
           "text_encoder_2", "size", True, None, "sdxl"),
    Family("sdxl_refiner", 1024, "epsilon", "default", 0.13025, True, (OPEN_CLIP_G,), "penultimate",
           "text_encoder_2", "aesthetic", False, None, "sdxl"),
)}

# What no family row decides, and no config overrides: the released models' values.
# The graphs (csrc/) have no defaults of their own: every value below reaches them through config/model_config.py.
HEAD_DIM = 64  # UNet heads = channels / 64 (SD2, SDXL); CLIP heads = hidden / 64 (768/12, 1024/16, 1280/20)
NORM_GROUPS = 32  # GroupNorm groups of every UNet and VAE
UNET_NORM_EPS = 1e-5  # resnets and conv_norm_out (diffusers norm_eps)
# diffusers' Transformer2DModel inside the UNet: its GroupNorm has a fixed eps of 1e-6, its LayerNorms take
# Transformer2DModel's norm_eps (1e-5), which UNet2DConditionModel never sets from its own norm_eps.
UNET_TRANSFORMER_GROUP_NORM_EPS = 1e-6
UNET_TRANSFORMER_LAYER_NORM_EPS = 1e-5
VAE_NORM_EPS = 1e-6  # every GroupNorm of diffusers' Encoder/Decoder (fixed there; no config key)
# TAESD (AutoencoderTiny) works on the UNet's latents as they are: madebyollin/taesd's and taesdxl's configs say
# scaling_factor 1.0, diffusers' default; its pipelines divide by the pipeline VAE's factor, so by 1 with TAESD.
TINY_VAE_SCALING_FACTOR = 1.0
TINY_VAE_UPSCALE = 2  # AutoencoderTiny's upsampling_scaling_factor default (every released TAESD)
TEXT_LAYER_NORM_EPS = 1e-5
TIME_ID_WIDTH = 256  # SDXL addition_time_embed_dim
N_TIME_IDS = {"size": 6, "aesthetic": 5}


def encoder_defaults(component: str, family: Family | None, hidden_size: int) -> Encoder:
    """The family's encoder for `component`; for a lone text-encoder file (no family), guessed from its width:
    1024 is OpenCLIP ViT-H (SD2), anything else in text_encoder is CLIP-L, text_encoder_2 is bigG."""
    if family is not None:
        for enc in family.encoders:
            if enc.component == component:
                return enc
    if component == "text_encoder_2":
        return OPEN_CLIP_G
    return OPEN_CLIP_H if hidden_size == 1024 else CLIP_L
