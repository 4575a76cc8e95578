"""A1111's txt2img / img2img request bodies (stable-diffusion-webui 1.10, modules/api/models.py field names and
defaults). Every field a client may send is declared with its JSON type; fields for features sdcpp does not have are
accepted at their neutral values and refused otherwise (`unsupported`), never silently ignored."""

from __future__ import annotations

from typing import Any

from .fields import Bool, Float, Int, RequestBody, Str


class Txt2Img(RequestBody):
    prompt: Str = ""
    negative_prompt: Str = ""
    styles: list[Str] | None = None
    seed: Int = -1
    subseed: Int = -1
    subseed_strength: Float = 0.0
    seed_resize_from_h: Int = -1
    seed_resize_from_w: Int = -1
    sampler_name: Str | None = None
    sampler_index: Str | None = "Euler"
    scheduler: Str | None = None
    batch_size: Int = 1
    n_iter: Int = 1
    steps: Int = 50
    cfg_scale: Float = 7.0
    distilled_cfg_scale: Float | None = None
    width: Int = 512
    height: Int = 512
    restore_faces: Bool | None = None
    tiling: Bool | None = None
    do_not_save_samples: Bool = False
    do_not_save_grid: Bool = False
    eta: Float | None = None
    denoising_strength: Float | None = None
    s_min_uncond: Float | None = None
    s_churn: Float | None = None
    s_tmax: Float | None = None
    s_tmin: Float | None = None
    s_noise: Float | None = None
    override_settings: dict[Str, Any] | None = None
    override_settings_restore_afterwards: Bool = True
    refiner_checkpoint: Str | None = None
    refiner_switch_at: Float | None = None
    disable_extra_networks: Bool = False
    firstpass_image: Str | None = None
    comments: dict[Str, Any] | None = None
    enable_hr: Bool = False
    firstphase_width: Int = 0
    firstphase_height: Int = 0
    hr_scale: Float = 2.0
    hr_upscaler: Str | None = None
    hr_second_pass_steps: Int = 0
    hr_resize_x: Int = 0
    hr_resize_y: Int = 0
    hr_checkpoint_name: Str | None = None
    hr_additional_modules: list[Any] | None = None
    hr_sampler_name: Str | None = None
    hr_scheduler: Str | None = None
    hr_prompt: Str = ""
    hr_negative_prompt: Str = ""
    hr_cfg: Float | None = None
    hr_distilled_cfg: Float | None = None
    force_task_id: Str | None = None
    script_name: Str | None = None
    script_args: list[Any] = []
    send_images: Bool = True
    save_images: Bool = False
    alwayson_scripts: dict[Str, Any] = {}
    infotext: Str | None = None


class Img2Img(Txt2Img):
    init_images: list[Str] | None = None
    resize_mode: Int = 0
    image_cfg_scale: Float | None = None
    mask: Str | None = None
    mask_blur_x: Int = 4
    mask_blur_y: Int = 4
    mask_blur: Int | None = None
    mask_round: Bool = True
    inpainting_fill: Int = 0
    inpaint_full_res: Bool = True
    inpaint_full_res_padding: Int = 0
    inpainting_mask_invert: Int = 0
    initial_noise_multiplier: Float | None = None
    latent_mask: Str | None = None
    include_init_images: Bool = False
    denoising_strength: Float | None = 0.75


# override_settings / POST /options keys sdcpp honours (A1111 setting names).
OVERRIDES = ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "randn_source", "eta_noise_seed_delta",
             "samples_format")
RANDN_SOURCES = {"GPU": "philox", "NV": "philox", "CPU": "cpu"}  # A1111's GPU noise is CUDA's philox


def unsupported(r: Txt2Img) -> list[str]:
    """What the request asks that sdcpp cannot do, one message per feature."""
    out = []

    def no(cond, what):
        if cond:
            out.append(what)

    no(r.styles, "styles (saved prompt styles)")
    no(r.subseed_strength, "subseed_strength (variation seeds)")
    no(r.seed_resize_from_h > 0 or r.seed_resize_from_w > 0, "seed_resize_from_h/w")
    no(r.restore_faces, "restore_faces")
    no(r.tiling, "tiling")
    no(r.s_churn, "s_churn")
    no(r.s_noise is not None and r.s_noise != 1.0, "s_noise other than 1")
    no(r.s_min_uncond, "s_min_uncond")
    no(r.distilled_cfg_scale is not None and r.distilled_cfg_scale != 3.5, "distilled_cfg_scale")
    no(r.refiner_checkpoint not in (None, "", "None"), "refiner_checkpoint")
    no(r.firstpass_image, "firstpass_image")
    no(r.enable_hr, "enable_hr (hires fix)")
    no(r.script_name not in (None, "", "None"), f"script_name {r.script_name!r}")
    no(r.script_name in (None, "", "None") and r.script_args, "script_args without a script")
    no(r.save_images, "save_images (the server keeps no files; images come back in the response)")
    no(bool(r.alwayson_scripts), f"alwayson_scripts (extensions: {', '.join(map(repr, r.alwayson_scripts))})")
    no(r.infotext, "infotext")
    if isinstance(r, Img2Img):
        no(r.resize_mode not in (0, 1), f"resize_mode {r.resize_mode} (0: just resize and 1: crop and resize are)")
        no(r.initial_noise_multiplier is not None and r.initial_noise_multiplier != 1.0,
           "initial_noise_multiplier other than 1")
        no(r.latent_mask, "latent_mask")
        no(r.init_images is not None and len(r.init_images) > 1, "more than one init image")
        if r.mask:
            no(r.inpainting_fill != 1, f"inpainting_fill {r.inpainting_fill} (send 1: start from the original)")
            no(r.inpaint_full_res, "inpaint_full_res (only masked); send false: the whole picture is inpainted")
            no(r.inpainting_mask_invert not in (0, 1), "inpainting_mask_invert other than 0 or 1")
    for key in (r.override_settings or {}):
        no(key not in OVERRIDES, f"override_settings {key!r} (supported: {', '.join(OVERRIDES)})")
    return out
