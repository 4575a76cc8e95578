"""Which model this is, from canonical tensor shapes (not file names) plus what the files declare."""

from __future__ import annotations

from dataclasses import dataclass

from .config.families import FAMILIES
from .errors import ModelFormatError, UnsupportedModelError
from .index import TensorIndex

PREDICTIONS = ("epsilon", "v_prediction")
_PREDICTION_SPELLINGS = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
                         "v-prediction": "v_prediction"}
# add_embedding input width of the real SDXL refiner: pooled 1280 + 5 time ids x 256 (base: 6 ids, 2816).
SDXL_REFINER_ADM = 2560


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "sd1" | "sd2" | "sdxl" | "sdxl_refiner" | "" for a file holding no UNet
    variant: str  # "base" | "inpaint"
    prediction: str  # "epsilon" | "v_prediction"
    prediction_source: str  # where the prediction type came from
    components: tuple[str, ...]
    unet_in_channels: int | None = None
    context_dim: int | None = None

    def to_dict(self) -> dict:
        return dict(family=self.family, variant=self.variant, prediction=self.prediction,
                    prediction_source=self.prediction_source, components=list(self.components),
                    unet_in_channels=self.unet_in_channels, context_dim=self.context_dim)


def normalize_prediction(value: str) -> str:
    p = _PREDICTION_SPELLINGS.get(str(value).strip().lower())
    if p is None:
        raise ValueError(f"unknown prediction type {value!r}; use 'epsilon' or 'v_prediction'")
    return p


def _family(index: TensorIndex) -> tuple[str, int | None, int | None]:
    conv_in = index.tensors.get("unet.conv_in.weight")
    if conv_in is None:
        return "", None, None
    in_ch = conv_in.shape[1] if len(conv_in.shape) == 4 else None
    to_k = next((t for t in index.of("unet") if t.name.endswith(".attn2.to_k.weight")), None)
    context = to_k.shape[1] if to_k is not None and len(to_k.shape) == 2 else None
    adm = index.tensors.get("unet.add_embedding.linear_1.weight")
    if adm is not None:
        comps = set(index.components())
        if "text_encoder_2" in comps:
            refiner = "text_encoder" not in comps
        else:
            refiner = adm.shape[1] == SDXL_REFINER_ADM
        return ("sdxl_refiner" if refiner else "sdxl"), in_ch, context
    proj_in = next((t for t in index.of("unet") if t.name.endswith(".proj_in.weight")), None)
    if proj_in is None:
        raise UnsupportedModelError(f"{index.sources[0].path}: a UNet without attention blocks is not a "
                                    "Stable Diffusion 1.x/2.x/SDXL UNet")
    # SD1 projects into its transformer blocks with 1x1 convs, SD2 with linear layers.
    return ("sd1" if len(proj_in.shape) == 4 else "sd2"), in_ch, context


def _declared_prediction(index: TensorIndex):
    for source in index.sources:
        meta, configs = source.metadata, source.configs
        if "sdcpp.prediction" in meta:
            return meta["sdcpp.prediction"], f"{source.path}: sdcpp.prediction"
        sched = configs.get("scheduler") or {}
        if "prediction_type" in sched:
            return sched["prediction_type"], f"{source.path}: scheduler_config.json"
        if "modelspec.prediction_type" in meta:
            return meta["modelspec.prediction_type"], f"{source.path}: modelspec.prediction_type"
    for path, raw, _ in index.notes.ignored:
        if raw == "v_pred":
            return "v_prediction", f"{path}: v_pred marker tensor"
    return None, None


def detect(index: TensorIndex, prediction: str | None = None) -> ModelSpec:
    family, in_ch, context = _family(index)
    variant = "base"
    if in_ch is not None and in_ch != 4:
        if in_ch == 9:
            variant = "inpaint"
        elif in_ch == 8:
            raise UnsupportedModelError(f"{index.sources[0].path}: an InstructPix2Pix UNet (8 input channels) "
                                        "is not supported")
        else:
            raise UnsupportedModelError(f"{index.sources[0].path}: UNet with {in_ch} input channels "
                                        "(4 = txt2img, 9 = inpainting) is not supported")
    if prediction is not None:
        pred, why = normalize_prediction(prediction), "requested"
    else:
        declared, why = _declared_prediction(index)
        if declared is not None:
            try:
                pred = normalize_prediction(declared)
            except ValueError as e:  # the file's word, not the user's: a format error naming the file
                path, _, key = why.partition(": ")
                raise ModelFormatError(path, f"{key} declares {e}", rule="prediction") from None
        elif family in FAMILIES:
            pred, why = FAMILIES[family].prediction, FAMILIES[family].prediction_reason
        else:
            pred, why = "epsilon", "default"
    return ModelSpec(family, variant, pred, why, tuple(index.components()), in_ch, context)
