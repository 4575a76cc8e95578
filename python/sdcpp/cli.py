"""The `sdcpp` command: generate, inspect, quantize, build-ggml, system-info, tiny-model."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import SdcppError


def _add_request_args(p: argparse.ArgumentParser):
    p.add_argument("model", nargs="+", help="checkpoint file(s) or diffusers folder; later ones override "
                                              "the components they hold")
    p.add_argument("--vae", help="a VAE file replacing the model's VAE")
    p.add_argument("--unet", help="a UNet file replacing the model's UNet")
    p.add_argument("--text-encoder", help="a CLIP-L (or SD2 OpenCLIP) text encoder file")
    p.add_argument("--text-encoder-2", help="an SDXL OpenCLIP-bigG text encoder file")
    p.add_argument("--type", help="weight type for every component (f32 f16 bf16 q8_0 q5_0 q5_1 q4_0 q4_1 "
                                  "q2_K q3_K q4_K q5_K q6_K); default: keep stored types")
    p.add_argument("--unet-type")
    p.add_argument("--te-type", help="type of the text encoder(s)")
    p.add_argument("--vae-type")
    p.add_argument("--rule", action="append", default=[], metavar="REGEX=TYPE",
                   help="type for canonical names matching REGEX (first match wins); repeatable")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"], help="override the prediction type")


def _request(a) -> dict:
    model = a.model[0] if len(a.model) == 1 else a.model
    return dict(model=model, unet=a.unet, vae=a.vae, text_encoder=a.text_encoder, text_encoder_2=a.text_encoder_2,
                prediction=a.prediction, type=a.type, unet_type=a.unet_type, te_type=a.te_type,
                vae_type=a.vae_type, rules=a.rule or None)


def _add_generate_args(p: argparse.ArgumentParser):
    p.add_argument("-m", "--model", required=True, help="checkpoint file (.safetensors / .gguf) or diffusers folder")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--negative-prompt", default="")
    p.add_argument("-o", "--output", default="out.png", help="PNG to write; with --num-images N, NAME-i.png")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale")
    p.add_argument("--sampler", default="euler_a",
                   help="euler_a, euler, heun, dpm2, dpm++_2m, dpm++_2s_a, lcm, ddim")
    p.add_argument("--schedule", default="discrete", help="discrete, karras, exponential, ays, lcm")
    p.add_argument("--seed", type=int, help="default: random (printed)")
    p.add_argument("-W", "--width", type=int, help="default: the family's native size")
    p.add_argument("-H", "--height", type=int)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--rng", default="numpy", help="numpy, philox (A1111/sd.cpp GPU noise), cpu (torch CPU)")
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--init-image", help="img2img / inpainting source image")
    p.add_argument("--mask", help="inpainting mask (white = repaint)")
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--vae", help="a VAE file replacing the model's VAE")
    p.add_argument("--type", help="weight type for every component (quantize on load), e.g. q8_0")
    p.add_argument("--unet-type")
    p.add_argument("--te-type")
    p.add_argument("--vae-type")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"])
    p.add_argument("-t", "--threads", type=int, default=0)


def _generate(a) -> int:
    import os

    from PIL import Image

    from .destination import check_destination
    from .pipeline import Model
    from .pipeline.images import save_png

    stem, ext = os.path.splitext(a.output)
    outputs = [a.output] if a.num_images == 1 else [f"{stem}-{i}{ext or '.png'}" for i in range(a.num_images)]
    inputs = [p for p in (a.model, a.vae, a.init_image, a.mask) if p]
    for path in outputs:  # before loading: a typo must not cost a load, or overwrite an input
        check_destination(path, inputs)
    load = dict(vae=a.vae, type=a.type, unet_type=a.unet_type, te_type=a.te_type, vae_type=a.vae_type)
    model = Model(a.model, n_threads=a.threads, prediction=a.prediction,
                  **{k: v for k, v in load.items() if v is not None})
    images = model.generate(a.prompt, a.negative_prompt, steps=a.steps, guidance_scale=a.cfg, sampler=a.sampler,
                            schedule=a.schedule, seed=a.seed, width=a.width, height=a.height,
                            num_images=a.num_images, rng=a.rng, clip_skip=a.clip_skip, strength=a.strength,
                            init_image=Image.open(a.init_image) if a.init_image else None,
                            mask_image=Image.open(a.mask) if a.mask else None)
    for path, img, info in zip(outputs, images, images.info, strict=True):
        save_png(img, path)
        print(f"wrote {path} (seed {info['seed']})")
    logging.getLogger("sdcpp").info("%s", images.report)
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sdcpp", description="Stable Diffusion on ggml")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show the detected model and what a type request would store "
                                       "(reads headers only)")
    _add_request_args(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")

    p = sub.add_parser("quantize", help="write a GGUF with every tensor in its planned type")
    _add_request_args(p)
    p.add_argument("-o", "--output", required=True, help="the GGUF file to write")
    p.add_argument("-t", "--threads", type=int, default=0)

    p = sub.add_parser("generate", help="text to image; img2img with --init-image, inpainting with --mask")
    _add_generate_args(p)

    p = sub.add_parser("build-ggml", help="rebuild ggml (libggml-python) natively for this CPU, or for CUDA")
    p.add_argument("--cuda", metavar="ARCHS", help="CUDA architectures, e.g. 86 or '80;90'")
    p.add_argument("--dry-run", action="store_true", help="print the command only")

    sub.add_parser("system-info", help="ggml version, devices and CPU features")

    p = sub.add_parser("tiny-model", help="write a tiny random-weight model with the real tensor layout")
    p.add_argument("output", help="a .safetensors file (original single-file layout)")
    p.add_argument("--family", default="sdxl", choices=["sd1", "sd2", "sdxl"])
    p.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if a.command == "generate":
            return _generate(a)
        if a.command == "inspect":
            from .api import inspect

            r = inspect(**_request(a))
            print(json.dumps(r.to_dict(), indent=1) if a.json else r)
        elif a.command == "quantize":
            from .api import quantize

            req = _request(a)
            r = quantize(req.pop("model"), a.output, n_threads=a.threads, **req)
            print(r)
            print(f"\nwrote {a.output}")
        elif a.command == "build-ggml":
            from .build_ggml import run

            return run(cuda=a.cuda, dry_run=a.dry_run)
        elif a.command == "system-info":
            from ._native import core

            c = core()
            print(json.dumps(dict(ggml_version=c.ggml_version(), ggml_commit=c.ggml_commit(),
                                  openblas=c.blas_library() or None, **c.system_info()), indent=1))
        elif a.command == "tiny-model":
            from .tiny import write_tiny_model

            write_tiny_model(a.output, a.family, seed=a.seed)
            print(f"wrote {a.output} (tiny random {a.family} checkpoint)")
    except (SdcppError, FileNotFoundError, ValueError) as e:
        print(f"sdcpp: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
