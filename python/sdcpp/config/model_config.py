"""ModelConfig: everything the plan, the pipeline, the memory check and the graphs need to know about one model,
computed once at load from the detected spec, the family table, the tensor shapes and the configs the files carry
(diffusers config.json or what an sdcpp GGUF recorded). Every default lives in config/families.py; the graph
bindings take every value from here and have none of their own."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..detect import ModelSpec
from ..errors import ModelFormatError
from .arch import TextEncoderArch, UNetArch, VaeArch, text_encoder_arch, tiny_vae_arch, unet_arch, vae_arch
from .families import (
    FAMILIES,
    HEAD_DIM,
    N_TIME_IDS,
    NORM_GROUPS,
    TEXT_LAYER_NORM_EPS,
    TIME_ID_WIDTH,
    TINY_VAE_SCALING_FACTOR,
    TINY_VAE_UPSCALE,
    UNET_NORM_EPS,
    UNET_TRANSFORMER_GROUP_NORM_EPS,
    UNET_TRANSFORMER_LAYER_NORM_EPS,
    VAE_NORM_EPS,
    Family,
    encoder_defaults,
)
from .shapes import Shapes

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class TextEncoderConfig:
    component: str
    arch: TextEncoderArch
    heads: int
    activation: str
    layer_norm_eps: float
    pad_id: int


@dataclass(frozen=True)
class UNetConfig:
    arch: UNetArch
    heads: tuple[int, ...]  # per down block
    groups: int
    norm_eps: float  # resnets, conv_norm_out
    transformer_group_norm_eps: float  # the GroupNorm in front of each transformer
    transformer_layer_norm_eps: float  # the transformers' LayerNorms
    addition_time_embed_dim: int  # SDXL: sinusoidal width of each time id; 0 without add_embedding
    n_time_ids: int  # SDXL: 6 (base) or 5 (refiner); 0 without add_embedding
    sample_size: int | None  # latent size of the diffusers config, where there is one


@dataclass(frozen=True)
class VaeConfig:
    arch: VaeArch  # arch.kind: "kl" (AutoencoderKL) or "tiny" (TAESD)
    groups: int  # 0 for TAESD, which has no GroupNorm
    norm_eps: float  # every GroupNorm
    scaling_factor: float

    @property
    def tiny(self) -> bool:
        return self.arch.kind == "tiny"


@dataclass(frozen=True)
class ModelConfig:
    spec: ModelSpec
    family: Family | None  # None for files without a UNet (a lone VAE or text encoder)
    unet: UNetConfig | None = None
    vae: VaeConfig | None = None
    text_encoders: dict[str, TextEncoderConfig] = field(default_factory=dict)
    # Components whose tensors contradict each other (or are incomplete): reported by inspect(), refused by
    # quantize() and by anything that runs them (sdcpp.Model, the graph wrappers).
    problems: dict[str, ModelFormatError] = field(default_factory=dict)

    def component(self, name: str):
        """The config of a component that can run: raises its recorded ModelFormatError, or ValueError when the
        model holds no such component."""
        self.check([name])
        found = self.text_encoders.get(name) if name in TEXT_ENCODERS else getattr(self, name, None)
        if found is None:
            raise ValueError(f"the model holds no {name} (components: {', '.join(self.spec.components) or 'none'})")
        return found

    def check(self, components=None) -> None:
        """Raise the ModelFormatError of the first listed (default: every) component that cannot run."""
        for comp in components or self.problems:
            if comp in self.problems:
                raise self.problems[comp]

    @property
    def default_size(self) -> int:
        """Pixels: diffusers' rule where the UNet config has a sample_size (sample_size x VAE factor), else the
        family's native size."""
        factor = self.vae.arch.factor if self.vae else 8
        if self.unet and self.unet.sample_size:
            return self.unet.sample_size * factor
        return self.family.size_for(self.spec.prediction) if self.family else 512

    @property
    def vae_factor(self) -> int:
        return self.vae.arch.factor if self.vae else 8


def _heads_list(value, n_blocks: int, what: str) -> list[int] | None:
    if value is None:
        return None
    heads = [value] * n_blocks if isinstance(value, int) else list(value)
    if len(heads) < n_blocks or not all(isinstance(h, int) and h > 0 for h in heads):
        raise ValueError(f"{what}: heads {value!r} for {n_blocks} blocks")
    return heads


def _text_encoder(s: Shapes, component: str, cfg: dict, family: Family | None) -> TextEncoderConfig:
    hidden = s.need(f"{component}.text_model.embeddings.token_embedding.weight")[-1]
    defaults = encoder_defaults(component, family, hidden)
    heads = int(cfg.get("num_attention_heads") or max(hidden // HEAD_DIM, 1))
    activation = cfg.get("hidden_act") or defaults.activation
    if activation not in ACTIVATIONS:
        s.fail(f"{component}.text_model.embeddings.token_embedding.weight",
               f"activation {activation!r} (config hidden_act) is not one of {ACTIVATIONS}")
    arch = text_encoder_arch(s, component, heads=heads)
    eps = float(cfg.get("layer_norm_eps") or TEXT_LAYER_NORM_EPS)
    return TextEncoderConfig(component, arch, heads, activation, eps, defaults.pad_id)


def _unet(s: Shapes, cfg: dict, family: Family | None, encoders: dict[str, TextEncoderConfig]) -> UNetConfig:
    first_convs = []
    while s.has(f"unet.down_blocks.{len(first_convs)}.resnets.0.conv1.weight"):
        first_convs.append(s.shapes[f"unet.down_blocks.{len(first_convs)}.resnets.0.conv1.weight"][0])
    # diffusers configs of SD models store the head *count* in attention_head_dim (diffusers reads
    # `num_attention_heads or attention_head_dim`).
    configured = cfg.get("num_attention_heads") or cfg.get("attention_head_dim")
    try:
        heads = _heads_list(configured, len(first_convs), "UNet config")
    except ValueError as e:
        s.fail("unet.conv_in.weight", str(e))
    if heads is None:
        if family is not None and family.unet_heads:
            heads = [family.unet_heads] * len(first_convs)
        else:
            heads = [max(1, c // HEAD_DIM) for c in first_convs]
    groups = int(cfg.get("norm_num_groups") or NORM_GROUPS)
    context = None
    if family is not None and all(e.component in encoders for e in family.encoders):
        context = sum(encoders[e.component].arch.hidden_size for e in family.encoders)
    arch = unet_arch(s, heads=heads, groups=groups, context_dim=context)
    width, n_ids = 0, 0
    if arch.adm_in_channels:
        n_ids = N_TIME_IDS.get(family.time_ids if family else "", N_TIME_IDS["size"])
        width = _time_id_width(s, cfg, family, encoders, arch.adm_in_channels, n_ids)
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    return UNetConfig(arch, tuple(heads), groups, float(cfg.get("norm_eps") or UNET_NORM_EPS),
                      UNET_TRANSFORMER_GROUP_NORM_EPS, UNET_TRANSFORMER_LAYER_NORM_EPS, width, n_ids,
                      int(size) if size else None)


def _time_id_width(s, cfg, family, encoders, adm: int, n_ids: int) -> int:
    """add_embedding reads pooled text (the pooled encoder's projection) + n_ids sinusoids of this width."""
    name = "unet.add_embedding.linear_1.weight"
    pooled = encoders.get(family.pooled_from) if family and family.pooled_from else None
    pooled_dim = pooled.arch.projection_dim if pooled else None
    width = int(cfg.get("addition_time_embed_dim") or 0)
    if pooled_dim is None:
        return width or TIME_ID_WIDTH
    extra = adm - pooled_dim
    if width:
        if extra != n_ids * width:
            s.fail(name, f"takes {adm} inputs, but pooled text ({pooled_dim}) + {n_ids} time ids x {width} "
                         f"(config addition_time_embed_dim) give {pooled_dim + n_ids * width}")
        return width
    if extra <= 0 or extra % n_ids:
        s.fail(name, f"takes {adm} inputs: pooled text is {pooled_dim} wide, which leaves {extra} for "
                     f"{n_ids} time ids")
    return extra // n_ids


def _tiny_vae(s: Shapes, cfg: dict) -> VaeConfig:
    """TAESD: what the graph implements of AutoencoderTiny's config (ReLU, nearest upsampling), checked."""
    for key, want in (("act_fn", "relu"), ("upsample_fn", "nearest")):
        if cfg.get(key, want) != want:
            s.fail("vae.decoder.layers.0.weight", f"AutoencoderTiny with {key}={cfg[key]!r}: sdcpp runs {want!r}")
    upscale = cfg.get("upsampling_scaling_factor", TINY_VAE_UPSCALE)
    if not isinstance(upscale, int) or isinstance(upscale, bool) or not 1 <= upscale <= 8:
        s.fail("vae.decoder.layers.0.weight", f"upsampling_scaling_factor {upscale!r} is not an integer in 1..8")
    scaling = float(cfg.get("scaling_factor") or TINY_VAE_SCALING_FACTOR)
    return VaeConfig(tiny_vae_arch(s, upscale=upscale), 0, 0.0, scaling)


def _vae(s: Shapes, cfg: dict, family: Family | None) -> VaeConfig:
    if any(n.startswith(("vae.decoder.layers.", "vae.encoder.layers.")) for n in s.shapes):
        return _tiny_vae(s, cfg)
    groups = int(cfg.get("norm_num_groups") or NORM_GROUPS)
    scaling = float(cfg.get("scaling_factor") or (family.vae_scaling_factor if family else 0.18215))
    return VaeConfig(vae_arch(s, groups=groups), groups, VAE_NORM_EPS, scaling)


def _cross_checks(s: Shapes, unet: UNetConfig, vae: VaeConfig):
    latent = vae.arch.latent_channels
    if unet.arch.in_channels not in (latent, 2 * latent + 1):  # + mask + masked-image latents for inpainting
        s.fail("unet.conv_in.weight", f"reads {unet.arch.in_channels} channels, but the VAE's latents have {latent} "
                                      f"(inpainting UNets read {2 * latent + 1})")
    if unet.arch.out_channels != latent:
        s.fail("unet.conv_out.weight", f"gives {unet.arch.out_channels} channels, but the VAE's latents have {latent}")


def model_config(s: Shapes, configs: dict[str, dict], spec: ModelSpec) -> ModelConfig:
    """A component whose shapes contradict each other gets its ModelFormatError (rule "architecture", naming the
    tensor and both shapes) in `problems` instead of a config."""
    family = FAMILIES.get(spec.family)
    comps = set(spec.components)
    problems: dict[str, ModelFormatError] = {}

    def attempt(component, build):
        try:
            return build()
        except ModelFormatError as e:
            problems[component] = e
            return None

    encoders = {c: attempt(c, lambda c=c: _text_encoder(s, c, configs.get(c) or {}, family))
                for c in TEXT_ENCODERS if c in comps}
    encoders = {c: e for c, e in encoders.items() if e is not None}
    unet = attempt("unet", lambda: _unet(s, configs.get("unet") or {}, family, encoders)) if "unet" in comps else None
    vae = attempt("vae", lambda: _vae(s, configs.get("vae") or {}, family)) if "vae" in comps else None
    if unet is not None and vae is not None:
        attempt("unet", lambda: _cross_checks(s, unet, vae))
        unet = None if "unet" in problems else unet
    return ModelConfig(spec, family, unet, vae, encoders, problems)
