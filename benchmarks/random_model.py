"""A full-size random-weight model as a diffusers folder (f16), for benchmarks and docs/quantization.md.

    python benchmarks/random_model.py sd15 /tmp/sd15-random        # ~2.1 GB, ~2 min
    python benchmarks/random_model.py sdxl_base /tmp/sdxl-random   # ~7 GB, needs ~11 GB of RAM while it builds

The architectures are the released models' (tests/fixtures/real_configs.py); every weight is random (the tests'
`randomize_`: 1/sqrt(fan_in) normals, norms at 1 + noise), so sizes, speed and memory are those of the real models
while images are noise. Each component is built, converted to f16 and written on its own, to bound memory."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(family: str, out: Path, seed: int = 0) -> None:
    import safetensors.torch
    import torch

    from fixtures.diffusers_folder import model_index, scheduler
    from fixtures.models import randomize_, text_encoder
    from fixtures.real_configs import FULLSIZE

    spec = FULLSIZE[family]
    if (out / "model_index.json").exists():
        print(f"{out} exists", flush=True)
        return
    tmp = out.parent / f".{out.name}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    names = ["unet", "vae"] + [te.folder for te in spec.text_encoders]
    for i, name in enumerate(names):
        print(f"building {family} {name} ...", flush=True)
        if name in ("unet", "vae"):
            from diffusers import AutoencoderKL, UNet2DConditionModel

            module = (UNet2DConditionModel(**spec.unet) if name == "unet" else AutoencoderKL(**spec.vae))
        else:
            module = text_encoder(next(te for te in spec.text_encoders if te.folder == name))
        randomize_(module, seed * 100 + i)
        module = module.to(torch.float16)
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        if name.startswith("text_encoder") and not any(k.startswith("text_model.") for k in state) and \
                type(module).__name__ == "CLIPTextModel":
            state = {f"text_model.{k}": v for k, v in state.items()}  # the published layout
        weights = "model.safetensors" if name.startswith("text_encoder") else "diffusion_pytorch_model.safetensors"
        safetensors.torch.save_file(state, str(folder / weights), metadata={"format": "pt"})
        config = dict(module.config) if name in ("unet", "vae") else module.config.to_dict()
        (folder / "config.json").write_text(json.dumps(config, default=list, indent=1))
        del module, state
        gc.collect()
    scheduler(spec.prediction_type).save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text(json.dumps(model_index(spec), indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["sd15", "sd21", "sdxl_base"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    build(a.family, a.out, a.seed)


if __name__ == "__main__":
    main()
