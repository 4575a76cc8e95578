"""`sdcpp.Model`: a loaded model kept in memory for many generations; `sdcpp.generate`: load and run once."""

from __future__ import annotations

import logging
import os
import threading
import time

from .. import checks
from .._native import core
from ..lora.session import LoraSession
from ..models.unet import UNet
from ..models.vae import vae_graph
from ..sampling import TrainSchedule
from .conditioning import PromptEncoder
from .generate import decode_preview, run
from .images import to_pil
from .options import Options

log = logging.getLogger("sdcpp")

LOAD_OPTIONS = ("unet", "vae", "text_encoder", "text_encoder_2", "type", "unet_type", "te_type", "vae_type", "rules",
                "loras", "lora_mode")


def _name(path) -> str:
    if isinstance(path, (list, tuple)):
        path = path[0]
    base = os.path.basename(os.path.normpath(os.fspath(path)))
    return os.path.splitext(base)[0] if os.path.isfile(path) else base


class Model:
    """A Stable Diffusion 1.x / 2.x / SDXL model loaded once (weights in one ggml buffer) for many calls.

        model = sdcpp.Model("sd_xl_base_1.0.safetensors", type="q8_0")
        images = model.generate("a lovely cat", steps=20, seed=1)
        images[0].save("cat.png"); print(images.report)

    `path`: a .safetensors / .gguf / diffusers folder (or a list, as for `sdcpp.load_weights`); `vae=`,
    `unet=`, `text_encoder=`, `text_encoder_2=`: component files replacing the model's; `type=`, `unet_type=`,
    `te_type=`, `vae_type=`, `rules=`: the quantization request (quantize-on-load); `vae=` may be a TAESD
    (diffusers AutoencoderTiny folder or file, the original taesd_decoder / taesd_encoder files as a list, or
    ComfyUI's combined file), which then decodes and encodes. `preview=`: a VAE file (a TAESD) that decodes the
    per-step previews of `generate(preview=True)` and `preview_images`. `prediction`: override
    the detected "epsilon" / "v_prediction". `n_threads`: 0 = one per physical core. Calls from several threads are
    serialised (one lock per Model); `cancel()` from any thread stops the running one.
    `loras=[("style.safetensors", 0.8), ...]`: LoRA / LyCORIS files (kohya, diffusers/PEFT, LoCon, LoHa, LoKr, DoRA);
    `lora_mode`: "auto" (runtime for a LoRA on quantized layers, merged when all its layers are float), "merge"
    (fixed strength, free at run time) or "runtime" (strength per call, see generate(loras=)); `lora_dir`: where
    `<lora:name:0.8>` prompt tags and generate(loras={name: ...}) find files by name (docs/lora.md).
    `precision`: "f32" (default: exact f32 products), "bf16" (products with bf16 operands on AMX where the CPU has
    it, ~1.4x faster for the UNet there; norms, softmax and the timestep embedding stay f32) or "f16" (products and
    convs with f16 operands on AVX512-FP16 CPUs, for those without AMX; `sdcpp system-info` says which kernel each
    precision gets here; docs/benchmarks.md)."""

    def __init__(self, path, *, device: str = "cpu", n_threads: int = 0, prediction: str | None = None,
                 flash_attn: bool | None = None, precision: str = "f32", progress=True, preview=None, lora_dir=None,
                 **quant_request):
        from ..api import load_weights

        unknown = set(quant_request) - set(LOAD_OPTIONS)
        if unknown:
            raise TypeError(f"Model() got unexpected arguments: {', '.join(sorted(unknown))}")
        n_threads = checks.threads(n_threads)
        self.n_threads = n_threads
        flash_attn = checks.optional_bool("flash_attn", flash_attn)
        self.precision = checks.precision(precision)
        start = time.perf_counter()
        self.weights = load_weights(path, device=device, n_threads=n_threads, progress=progress,
                                    prediction=prediction, strict=True, **quant_request)
        spec = self.weights.spec
        if not spec.family:
            raise ValueError(f"{path}: no UNet in this model (components: {', '.join(spec.components)})")
        self.name = _name(path)
        self.unet = UNet(self.weights, n_threads=n_threads, flash_attn=flash_attn, precision=precision)
        # VAE or TinyVAE (TAESD)
        self.vae = vae_graph(self.weights, n_threads=n_threads, flash_attn=flash_attn, precision=precision)
        self.flash_attn = self.unet.flash_attn
        self.prompt_encoder = PromptEncoder(self.weights, n_threads=n_threads, precision=precision)
        self.loras = LoraSession(self.weights, lora_dir, n_threads)
        self.vae_factor = self.weights.config.vae_factor
        self.train = TrainSchedule.sd()
        self.default_size = self.weights.config.default_size
        self.load_seconds = time.perf_counter() - start
        self._lock = threading.Lock()
        # One token stops every graph of this model (UNet, VAE, text encoders): Model.cancel() and a progress
        # callback's False set it. _state guards it together with _running (see cancel()).
        self.cancel_token = core().CancelToken()
        for graph in (self.unet, self.vae, *self.prompt_encoder.encoders):
            graph.cancel_token = self.cancel_token
        self._state = threading.Lock()
        self._running = False
        self._preview, self._preview_path = None, None
        self._load_preview(preview)
        log.info("loaded %s: %s %s (%s) in %.1f s", self.name, spec.family, spec.variant, spec.prediction,
                 self.load_seconds)

    @property
    def spec(self):
        return self.weights.spec

    def lora_graphs(self) -> list:
        """The graphs runtime LoRAs adapt: the UNet and the text encoders."""
        return [self.unet._graph, *(e._graph for e in self.prompt_encoder.encoders)]

    def __repr__(self):
        s = self.spec
        return f"Model({self.name!r}: {s.family} {s.variant}, {s.prediction}, {self.weights.nbytes / 2**20:.1f} MiB)"

    def generate(self, prompt: str, negative_prompt: str = "", **options):
        """Generate images; returns a list of PIL images with `.info`, `.arrays` and `.report`.

        width, height: default the UNet config's sample_size x 8 where there is one (diffusers' rule), else the
            family's native size (SD1 512, SD2 768 (512-base: 512), SDXL 1024).
        steps (20), guidance_scale (7.0; 1 runs no unconditional pass), sampler: euler_a (default), euler,
            heun, dpm2, dpm++_2m, dpm++_2s_a, dpm++_2m_sde, dpm++_3m_sde, uni_pc, euler_cfg++, lcm, ddim;
            schedule: discrete (default), karras, exponential, beta, sgm_uniform, simple, ays, lcm;
            timestep_spacing: leading (default), trailing, linspace. Each sampler walks the table of its diffusers
            scheduler (Euler*, DPMSolver*, UniPC, DDIM); sgm_uniform and simple are A1111's / ComfyUI's.
        seed: None or -1 draws one (reported in .info and .report); image i uses seed + i. rng: "numpy" (default),
            "philox" (A1111 / stable-diffusion.cpp GPU noise), "cpu" (torch CPU noise, as diffusers on CPU).
        start_noise: "sdcpp" (default: txt2img starts at noise * sigma_0, as k-diffusion, A1111 and
            stable-diffusion.cpp) or "diffusers" (its Euler schedulers start at noise * sqrt(sigma_0^2 + 1) with
            "leading" spacing, DPM-Solver / UniPC / DDIM / LCM at unit noise on the VP latent): with rng="cpu" and the
            seed of a diffusers CPU run, the same image.
        latents: the start noise [num_images, 4, h, w] at unit variance (scaled as start_noise says).
        num_images, clip_skip (A1111: 1 = last layer, 2 = penultimate), eta (ancestral samplers, DDIM).
        init_image (PIL image, path, [1, 3, H, W] in [-1, 1], or scaled latents [1 or B, 4, h, w]) with strength
            (0.75): img2img as diffusers (the last int(steps * strength) steps run). mask_image (PIL image or path,
            white = repaint; or an [H, W] array: bool, 0..255 integers or 0..1 floats, resized like an image):
            inpainting; 9-channel UNets get mask + masked-image latents, others keep the init latent outside
            the mask at every step.
        SDXL: original_size, crops_coords_top_left, target_size ((height, width) pairs) and negative_original_size,
            negative_crops_coords_top_left, negative_target_size for the unconditional pass (diffusers' names and
            defaults); refiner: aesthetic_score, negative_aesthetic_score. An empty negative prompt is zeros on SDXL
            base.
        Prompts take A1111 syntax: (emphasis:1.2), [less], BREAK, prompt editing [from:to:when] / [add:when] /
            [remove::when] (when < 1 with a decimal point: a fraction of the steps, else a step) and alternation
            [a|b|c] (one per step), switching at A1111's steps; textual-inversion embeddings by file name with
            embeddings_dir= (a folder of A1111 .pt / .safetensors files, a file, or a list; SD1/SD2 string_to_param
            or emb_params, SDXL clip_l + clip_g; embeddings that do not fit the model are skipped, as in A1111).
        prompt_embeds [1, T, context_dim], negative_prompt_embeds (SDXL: pooled_prompt_embeds,
            negative_pooled_prompt_embeds [1, P]): conditioning computed elsewhere (diffusers' arguments), used
            instead of encoding the prompt / negative prompt.
        hr_scale (None: off): A1111's hires fix: the image is made at width x height, upscaled by hr_scale
            (hr_upscaler "latent" = bilinear latents (A1111 "Latent"), "latent_nearest", or "lanczos" = decode,
            8-bit Lanczos, encode), then hr_steps (default: steps) img2img steps at hr_denoising_strength (0.7) run
            at the new size, as A1111 sets them up (the last hr_steps of int(hr_steps / strength)); its "Hires ..."
            fields go to the PNG parameters. txt2img with 4-channel UNets only.
        vae_tiling: decode (and encode) in overlapping tiles of tile_size pixels (default 512) blended as diffusers'
            enable_tiling(); None (default): only when the whole image's VAE working set would not fit in memory.
            Tiles are normalized and attend on their own (as in diffusers), so the result is not the untiled one.
        refiner (a Model or a path): SDXL base -> refiner in one call, diffusers' ensemble of experts: this model
            runs the steps down to denoising_end (default 0.8 of the way: timesteps >= round(1000 - 800)), the
            refiner the rest of the same table with its own text conditioning (same prompts, aesthetic scores),
            and decodes. denoising_end alone stops early (Images.latents for a refiner); denoising_start with
            init_image=those latents continues them without adding noise (the refiner's half on its own).
        preview: with a progress callback, info["preview"] holds each step's denoised estimate as images (PIL, one
            per image in the batch; None before the first step): True decodes with `preview_decoder` (a TAESD given
            to Model(preview=) or set_preview, else the model's VAE), a path loads that TAESD (kept for later calls).
        progress: True (tqdm bar), False, or callback(step, total, info) -> bool | None, called with step 0
            before the first step and after each one (info: step_time, latents, denoised, preview); returning False
            cancels as `cancel()` does: sdcpp.Cancelled (the model stays usable). Ctrl-C stops a running graph
            within ~0.1 s on the CPU (KeyboardInterrupt). extra: more fields for the PNG parameters text.
        loras: {name or path: strength} for this call (runtime: any stored type, no reload; strength 0 turns a
            loaded one off); `<lora:name:strength>` tags in the prompt do the same (names from lora_dir) and are
            removed from the text before encoding. The PNG parameters record A1111's `Lora hashes`.
        """
        unknown = set(options) - Options.names()
        if unknown:
            raise TypeError(f"generate() got unexpected arguments: {', '.join(sorted(unknown))}")
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(text, str):
                raise TypeError(f"{name} must be a string, got {type(text).__name__}")
        opts = Options(**options)
        with self._lock:
            with self._state:
                self.cancel_token.reset()
                self._running = True
            try:
                return run(self, prompt, negative_prompt, opts)
            finally:
                with self._state:
                    self._running = False
                    self.cancel_token.reset()

    def set_preview(self, preview) -> None:
        """Load `preview` (the path of a VAE file or folder: a TAESD, a few MB that decodes in milliseconds) as the
        decoder of per-step previews; None: previews decode with the model's own VAE. Waits for a running
        generation."""
        with self._lock:
            self._load_preview(preview)

    def _load_preview(self, preview) -> None:
        if preview is None or preview is False:
            self._preview, self._preview_path = None, None
            return
        if not isinstance(preview, (str, os.PathLike)):
            raise TypeError(f"preview must be the path of a TAESD (or other VAE) file, got {preview!r:.60}")
        path = os.path.abspath(os.fspath(preview))
        if path == self._preview_path:
            return
        from ..api import load_weights

        weights = load_weights(path, device=self.weights.device, n_threads=self.n_threads, progress=False,
                               strict=True)
        if weights.spec.components != ("vae",):
            raise ValueError(f"preview: {path} holds {', '.join(weights.spec.components) or 'no weights'}; "
                             "preview= takes a VAE alone (a TAESD)")
        decoder = vae_graph(weights, n_threads=self.n_threads)
        unet_out = self.weights.config.unet.arch.out_channels
        if decoder.latent_channels != unet_out:
            raise ValueError(f"preview: {path} decodes {decoder.latent_channels}-channel latents, this UNet's "
                             f"have {unet_out}")
        decoder.cancel_token = self.cancel_token
        self._preview, self._preview_path = decoder, path

    @property
    def preview_decoder(self):
        """What previews decode with: the TAESD given as preview= (set_preview), else the model's VAE."""
        return self._preview or self.vae

    def preview_images(self, latents) -> list:
        """Latents as the UNet sees them ([B, 4, h, w], scaled: a progress callback's info["denoised"], or
        info["latents"]) -> PIL images, decoded with `preview_decoder`. The HTTP server's progress preview
        (`current_image`) can call this on the denoised latents of the running job."""
        return to_pil(decode_preview(self.preview_decoder, latents))

    def cancel(self) -> bool:
        """Stop the generation running now, from any thread: it raises sdcpp.Cancelled in its caller within ~0.1 s
        on the CPU (a running graph stops between nodes and inside sdcpp's own long ops; GPU backends finish the
        graph first), and the model stays usable. Returns whether a generation was running. Only that one is
        cancelled: a call while none runs does nothing, and generations waiting for this one (other threads'
        calls) run normally; each generation starts with the token clear, so a cancel() that loses the race with
        a starting generate() is not carried into it."""
        with self._state:
            if self._running:
                self.cancel_token.cancel()
            return self._running


def generate(model_path, prompt: str, negative_prompt: str = "", **options):
    """Load `model_path` and generate once (see `Model` and `Model.generate` for the arguments)."""
    load = {k: options.pop(k) for k in list(options)
            if k in (*LOAD_OPTIONS, "device", "n_threads", "prediction", "flash_attn", "precision",
                      "lora_dir")}
    progress = options.get("progress", True)
    # A callback's signature is the generation's (step, total, info); loading gets a plain bar or none.
    load_progress = progress if isinstance(progress, bool) else False
    return Model(model_path, progress=load_progress, **load).generate(prompt, negative_prompt, **options)
