"""The `sdcpp` command: generate, batch, serve, inspect, quantize, evaluate, build-ggml, system-info, tiny-model."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .checks import PRECISIONS
from .errors import SdcppError


def cpu_products(c) -> dict:
    """The kernels wide CPU products take, for the extension `c`: f32 on OpenBLAS (else ggml's), precision="bf16" on
    AMX when here, precision="f16" on AVX512-FP16 when here (else the f32 ones)."""
    return dict(f32="openblas" if c.blas_library() else "ggml",
                bf16="amx" if c.amx_available() else f"f32 kernels ({c.amx_unavailable_reason()})",
                f16="avx512-fp16" if c.f16_available()
                else f"f32 kernels ({c.f16_unavailable_reason()})")


def _types(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _pair(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH, got {text!r}") from None
    return h, w


def _embeds_file(path) -> dict:
    import numpy as np

    keys = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    with np.load(path, allow_pickle=False) as data:
        unknown = set(data.files) - set(keys)
        if unknown:
            raise ValueError(f"{path}: unknown arrays {sorted(unknown)}; expected some of {keys}")
        return {k: data[k] for k in data.files}


def _lora(text: str) -> tuple[str, float]:
    """FILE or FILE:STRENGTH (the strength after the last ':', so Windows drive letters stay in the path)."""
    path, sep, strength = text.rpartition(":")
    if sep and path:
        try:
            return path, float(strength)
        except ValueError:
            pass
    return text, 1.0


def _add_lora_args(p: argparse.ArgumentParser, modes=True):
    p.add_argument("--lora", action="append", default=[], type=_lora, metavar="FILE[:STRENGTH]",
                   help="a LoRA / LyCORIS file (repeatable); strength default 1")
    if modes:
        p.add_argument("--lora-mode", default="auto", choices=["auto", "merge", "runtime"],
                       help="merge into the weights at load, add in the graph at run time, or auto: run time for a "
                            "LoRA on quantized layers, merged when they are all float (docs/lora.md)")


def _add_request_args(p: argparse.ArgumentParser):
    p.add_argument("model", nargs="+", help="checkpoint file(s) or diffusers folder; later ones override "
                                              "the components they hold")
    _add_lora_args(p, modes=False)
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
    p.add_argument("--layout", default="sdcpp", choices=["sdcpp", "stable-diffusion.cpp"],
                   help="GGUF layout: sdcpp's own (canonical names, quantized conv kernels) or stable-diffusion.cpp's "
                        "(original single-file names and shapes; conv kernels stay f16)")


def _request(a) -> dict:
    model = a.model[0] if len(a.model) == 1 else a.model
    return dict(model=model, unet=a.unet, vae=a.vae, text_encoder=a.text_encoder, text_encoder_2=a.text_encoder_2,
                prediction=a.prediction, type=a.type, unet_type=a.unet_type, te_type=a.te_type,
                vae_type=a.vae_type, rules=a.rule or None, layout=a.layout, loras=a.lora or None)


def _add_precision_arg(p: argparse.ArgumentParser):
    p.add_argument("--precision", choices=PRECISIONS, default="f32",
                   help="product precision: bf16 runs on AMX where the CPU has it (faster, ~1e-2 rel. error), f16 on "
                        "AVX512-FP16 (see `sdcpp system-info`)")


def _add_device_arg(p: argparse.ArgumentParser):
    p.add_argument("--device", default="cpu",
                   help="cpu, auto (the GPU when ggml has one: sdcpp build-ggml --cuda) or a device from system-info")


def _add_generate_args(p: argparse.ArgumentParser):
    p.add_argument("-m", "--model", required=True, help="checkpoint file (.safetensors / .gguf) or diffusers folder")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--negative-prompt", default="")
    p.add_argument("-o", "--output", default="out.png", help="PNG to write; with --num-images N, NAME-i.png")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale")
    p.add_argument("--sampler", default="euler_a",
                   help="euler_a, euler, heun, dpm2, dpm++_2m, dpm++_2s_a, dpm++_2m_sde, dpm++_3m_sde, uni_pc, "
                        "euler_cfg++, lcm, ddim")
    p.add_argument("--schedule", default="discrete",
                   help="discrete, karras, exponential, beta, sgm_uniform, simple, ays, lcm")
    p.add_argument("--start-noise", default="sdcpp", choices=["sdcpp", "diffusers"],
                   help="txt2img start noise scaling: sdcpp (noise * sigma_0, as A1111) or diffusers' (with --rng cpu "
                        "and a diffusers seed: the same image)")
    p.add_argument("--seed", type=int, help="default: random (printed)")
    p.add_argument("-W", "--width", type=int, help="default: the family's native size")
    p.add_argument("-H", "--height", type=int)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--rng", default="numpy", help="numpy, philox (A1111/sd.cpp GPU noise), cpu (torch CPU)")
    p.add_argument("--clip-skip", type=int)
    p.add_argument("--embeddings-dir", help="textual-inversion embeddings (A1111 .pt / .safetensors), used by "
                                            "file name in the prompt")
    p.add_argument("--embeds", help="an .npz of prompt_embeds / negative_prompt_embeds (SDXL: also "
                                    "pooled_prompt_embeds / negative_pooled_prompt_embeds) used instead of the prompts")
    p.add_argument("--hr-scale", type=float, help="hires fix: upscale the first pass by this and run a second pass")
    p.add_argument("--hr-upscaler", default="latent", choices=["latent", "latent_nearest", "lanczos"])
    p.add_argument("--hr-denoising-strength", type=float, default=0.7)
    p.add_argument("--hr-steps", type=int, help="steps of the hires pass (default: --steps)")
    p.add_argument("--refiner", help="an SDXL refiner: base -> refiner in one run (diffusers' ensemble of experts)")
    p.add_argument("--denoising-end", type=float, help="the fraction the base model denoises before the refiner "
                                                       "(default 0.8 with --refiner)")
    p.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=None,
                   help="decode/encode in tiles (default: only when the whole image would not fit in memory)")
    p.add_argument("--tile-size", type=int, help="VAE tile size in pixels (default 512)")
    p.add_argument("--original-size", type=_pair, metavar="H,W", help="SDXL size conditioning")
    p.add_argument("--target-size", type=_pair, metavar="H,W")
    p.add_argument("--negative-original-size", type=_pair, metavar="H,W")
    p.add_argument("--negative-target-size", type=_pair, metavar="H,W")
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
    _add_device_arg(p)
    _add_precision_arg(p)
    _add_lora_args(p)
    p.add_argument("--lora-dir", help="folder where <lora:name:strength> prompt tags find NAME.safetensors")


def _generate(a) -> int:
    from PIL import Image

    from .destination import check_destination
    from .pipeline import Model
    from .pipeline.images import save_png

    stem, ext = os.path.splitext(a.output)
    outputs = [a.output] if a.num_images == 1 else [f"{stem}-{i}{ext or '.png'}" for i in range(a.num_images)]
    inputs = [p for p in (a.model, a.vae, a.init_image, a.mask, a.refiner, a.embeddings_dir, a.embeds, a.lora_dir,
                          *(path for path, _ in a.lora)) if p]
    for path in outputs:  # before loading: a typo must not cost a load, or overwrite an input
        check_destination(path, inputs)
    load = dict(vae=a.vae, type=a.type, unet_type=a.unet_type, te_type=a.te_type, vae_type=a.vae_type)
    sizes = {k: getattr(a, k) for k in ("original_size", "target_size", "negative_original_size",
                                        "negative_target_size") if getattr(a, k) is not None}
    model = Model(a.model, device=a.device, n_threads=a.threads, prediction=a.prediction, loras=a.lora or None,
                  lora_mode=a.lora_mode, lora_dir=a.lora_dir, precision=a.precision,
                  **{k: v for k, v in load.items() if v is not None})
    images = model.generate(a.prompt, a.negative_prompt, steps=a.steps, guidance_scale=a.cfg, sampler=a.sampler,
                            schedule=a.schedule, seed=a.seed, width=a.width, height=a.height,
                            num_images=a.num_images, rng=a.rng, start_noise=a.start_noise, clip_skip=a.clip_skip,
                            strength=a.strength,
                            init_image=Image.open(a.init_image) if a.init_image else None,
                            mask_image=Image.open(a.mask) if a.mask else None, embeddings_dir=a.embeddings_dir,
                            **(_embeds_file(a.embeds) if a.embeds else {}), **sizes, hr_scale=a.hr_scale,
                            hr_upscaler=a.hr_upscaler, hr_denoising_strength=a.hr_denoising_strength,
                            hr_steps=a.hr_steps, vae_tiling=a.vae_tiling, tile_size=a.tile_size,
                            refiner=Model(a.refiner, device=a.device, n_threads=a.threads) if a.refiner else None,
                            denoising_end=a.denoising_end)
    for path, img, info in zip(outputs, images, images.info, strict=True):
        save_png(img, path)
        print(f"wrote {path} (seed {info['seed']})")
    logging.getLogger("sdcpp").info("%s", images.report)
    return 0


def _batch(a) -> int:
    try:
        from .distributed import generate_batch
    except ImportError as e:
        print(f"sdcpp: error: `sdcpp batch` needs the ray extra: pip install 'sdcpp[ray]' ({e})", file=sys.stderr)
        return 2
    opts = {k: v for k, v in dict(type=a.type, width=a.width, height=a.height).items() if v is not None}
    result = generate_batch(a.rows, a.model, a.output, concurrency=a.concurrency,
                            threads_per_actor=a.threads_per_actor, address=a.address, base_seed=a.seed,
                            steps=a.steps, guidance_scale=a.cfg, sampler=a.sampler, **opts)
    print(f"{len(result.generated)} generated, {len(result.skipped)} already there, {len(result.failed)} failed "
          f"-> {a.output}/manifest.jsonl")
    for rec in result.failed:
        print(f"  {rec['id']}: {rec['error']}", file=sys.stderr)
    return 1 if result.failed else 0


def _serve(a) -> int:
    try:
        from .server import Limits, serve
    except ImportError as e:
        print(f"sdcpp: error: `sdcpp serve` needs the server extra: pip install 'sdcpp[server]' ({e})",
              file=sys.stderr)
        return 2
    from .pipeline import Model

    token = a.token or os.environ.get("SDCPP_TOKEN") or None
    limits = Limits(max_size=a.max_size, max_steps=a.max_steps, max_images=a.max_images, max_queue=a.max_queue)
    load = dict(vae=a.vae, type=a.type)
    model = Model(a.model, device=a.device, n_threads=a.threads, prediction=a.prediction, loras=a.lora or None,
                  lora_mode=a.lora_mode, lora_dir=a.lora_dir, precision=a.precision,
                  **{k: v for k, v in load.items() if v is not None})
    serve(model, path=a.model, host=a.host, port=a.port, token=token, limits=limits, rng=a.rng,
          log_level="info" if a.verbose else "warning")
    return 0


def _add_serve_args(p: argparse.ArgumentParser):
    p.add_argument("model", help="checkpoint file (.safetensors / .gguf) or diffusers folder, kept loaded")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (or Basic auth with it as the password); "
                                   "default: $SDCPP_TOKEN, else none")
    p.add_argument("--type", help="weight type (quantize on load), e.g. q8_0")
    p.add_argument("--vae", help="a VAE file replacing the model's VAE")
    p.add_argument("--prediction", choices=["epsilon", "v_prediction"])
    p.add_argument("--rng", default="philox", help="default noise: philox (A1111's GPU noise), cpu, numpy")
    p.add_argument("-t", "--threads", type=int, default=0)
    _add_device_arg(p)
    _add_precision_arg(p)
    _add_lora_args(p)
    p.add_argument("--lora-dir", help="folder where <lora:name:strength> prompt tags find NAME.safetensors")
    p.add_argument("--max-size", type=int, default=2048, help="largest width or height accepted")
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--max-images", type=int, default=8, help="images per request (batch_size x n_iter, n)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs waiting behind the running one")


def _evaluate(a) -> int:
    from .evaluation import evaluate
    from .evaluation.outputs import check_output_dir, write_report
    from .evaluation.sensitivity import sensitivity

    if a.output:
        check_output_dir(a.output)  # before an evaluation that may take minutes
    prompts = None
    if a.prompts:
        with open(a.prompts) as f:
            prompts = [line.strip() for line in f if line.strip()]
    model = a.model[0] if len(a.model) == 1 else a.model
    opts = dict(steps=a.steps, width=a.width, height=a.height, sampler=a.sampler, n_threads=a.threads)
    report = evaluate(model, a.types, **({"prompts": prompts} if prompts else {}), seeds=a.seeds,
                      guidance_scale=a.cfg, reference=a.reference, attribution=not a.no_attribution, **opts)
    print(report)
    sens = None
    if a.sensitivity:
        sens = sensitivity(model, [t for t in a.types if t not in ("f32", "f16", "bf16")] or a.types,
                           **({"prompts": prompts} if prompts else {}), seed=a.seeds[0], **opts)
        print(sens)
    if a.output:
        names = write_report(report, a.output, sens)
        print(f"\nwrote {a.output}/: {', '.join(names)}")
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
    p.add_argument("--budget", help="choose types per tensor group to fit this size (1.2GB, 900MiB), from "
                                    "measured sensitivity")
    p.add_argument("--max-error", type=float, help="the smallest file whose error (relative L2 at the components' "
                                                   "outputs) stays below this")
    p.add_argument("--budget-types", type=_types, help="types to choose from (default f16,q8_0,q5_K,q4_K)")

    p = sub.add_parser("evaluate", help="bytes, speed, memory and error of each weight type against f32")
    p.add_argument("model", nargs="+", help="checkpoint file(s) or diffusers folder")
    p.add_argument("--types", type=_types, default=["f16", "q8_0", "q4_K"], help="comma-separated, e.g. f16,q8_0")
    p.add_argument("--prompts", help="a text file, one prompt per line (default: one built-in prompt)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0], help="e.g. 0,1,2")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("-W", "--width", type=int)
    p.add_argument("-H", "--height", type=int)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--reference", default="f32", choices=["f32", "source"])
    p.add_argument("--no-attribution", action="store_true", help="skip the one-component-quantized runs")
    p.add_argument("--sensitivity", action="store_true", help="also rank tensor groups by the error they cause")
    p.add_argument("-o", "--output", help="a new folder for report.json, report.md, grid.png and plots")
    p.add_argument("-t", "--threads", type=int, default=0)

    p = sub.add_parser("generate", help="text to image; img2img with --init-image, inpainting with --mask")
    _add_generate_args(p)

    p = sub.add_parser("batch", help="generate a JSONL file of rows on a Ray actor pool (sdcpp[ray])")
    p.add_argument("rows", help="JSONL: one {\"prompt\": ..., \"seed\": ..., ...} object (or string) per line")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-o", "--output", required=True, help="folder for <id>.png and manifest.jsonl")
    p.add_argument("--address", default="local", help="local (start Ray here), auto, or ray://host:port")
    p.add_argument("--concurrency", type=int, default=1, help="actors, each with the model loaded once")
    p.add_argument("--threads-per-actor", type=int, default=1)
    p.add_argument("--type", help="weight type (quantized once by the driver for every actor)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="euler_a")
    p.add_argument("-W", "--width", type=int)
    p.add_argument("-H", "--height", type=int)
    p.add_argument("--seed", type=int, default=0, help="seed of row 0 when rows carry none (row i: seed + i)")

    p = sub.add_parser("serve", help="an A1111- and OpenAI-compatible HTTP server for one model (sdcpp[server])")
    _add_serve_args(p)

    p = sub.add_parser("build-ggml", help="build ggml for CUDA, Metal or exactly this CPU, beside the bundled one")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--cuda", metavar="ARCHS", help="CUDA architectures, e.g. 86 or '80;90' (libggml-cuda)")
    g.add_argument("--metal", action="store_true", help="the Metal backend (macOS)")
    g.add_argument("--restore", action="store_true", help="undo a native CPU build: back to the bundled variants")
    p.add_argument("--lib-dir", help="where the module goes (default: the folder the installed sdcpp loads ggml from)")
    p.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: all cores)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")

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
        if a.command == "serve":
            return _serve(a)
        if a.command == "batch":
            return _batch(a)
        if a.command == "inspect":
            from .api import inspect

            r = inspect(**_request(a))
            print(json.dumps(r.to_dict(), indent=1) if a.json else r)
        elif a.command == "quantize":
            from .api import quantize

            req = _request(a)
            r = quantize(req.pop("model"), a.output, n_threads=a.threads, budget=a.budget, max_error=a.max_error,
                         budget_types=a.budget_types, **req)
            print(r)
            print(f"\nwrote {a.output}")
        elif a.command == "evaluate":
            return _evaluate(a)
        elif a.command == "build-ggml":
            from .build_ggml import run

            return run(cuda=a.cuda, metal=a.metal, dry_run=a.dry_run, restore_variants=a.restore, lib_dir=a.lib_dir,
                       jobs=a.jobs)
        elif a.command == "system-info":
            from ._native import core

            c = core()
            print(json.dumps(dict(ggml_version=c.ggml_version(), ggml_commit=c.ggml_commit(),
                                  openblas=c.blas_library() or None, cpu_products=cpu_products(c),
                                  **c.system_info()),
                             indent=1))
        elif a.command == "tiny-model":
            from .tiny import write_tiny_model

            write_tiny_model(a.output, a.family, seed=a.seed)
            print(f"wrote {a.output} (tiny random {a.family} checkpoint)")
    except BrokenPipeError:  # `sdcpp inspect ... | head`: the reader left; no traceback, no flush error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SdcppError, FileNotFoundError, FileExistsError, IsADirectoryError, ValueError) as e:
        print(f"sdcpp: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
