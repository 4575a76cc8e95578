"""The A1111 "parameters" text sdcpp writes into PNGs, read back by an independent parser (the `sd-parsers` package,
what image browsers use): the same prompt, negative prompt, seed, steps, sampler, schedule, CFG scale and size."""

import pytest
from PIL import Image

sd_parsers = pytest.importorskip("sd_parsers")

import sdcpp  # noqa: E402
from sdcpp.cli import main  # noqa: E402
from sdcpp.pipeline.images import A1111_SCHEDULE_NAMES, a1111_parameters, save_png  # noqa: E402
from sdcpp.sampling import SAMPLERS  # noqa: E402

PROMPTS = [
    ("a lovely cat, (watercolor:1.2), [blurry]", "lowres, bad anatomy"),
    ("first line\nsecond line, with: a colon", ""),
    ("ünïcode prompt 猫", "negative\nover two lines"),
]


def parse(path):
    info = sd_parsers.ParserManager().parse(path)
    assert info is not None and info.generator == sd_parsers.data.Generators.AUTOMATIC1111
    return info


def check(info, *, prompt, negative, seed, steps, sampler, cfg, width, height, schedule=None):
    assert info.full_prompt == prompt
    assert info.full_negative_prompt == negative
    (s,) = info.samplers
    assert s.name == sampler
    assert int(s.parameters["seed"]) == seed and int(s.parameters["steps"]) == steps
    assert float(s.parameters["cfg_scale"]) == cfg
    assert s.parameters.get("scheduler") == schedule
    assert info.metadata["Size"] == f"{width}x{height}"


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("schedule", ["discrete", *A1111_SCHEDULE_NAMES])
def test_every_sampler_and_schedule_round_trips(tmp_path, sampler, schedule):
    for i, (prompt, negative) in enumerate(PROMPTS):
        text = a1111_parameters(prompt, negative, steps=17 + i, sampler=sampler, schedule=schedule,
                                guidance_scale=6.5, seed=2**32 + i, width=320, height=448, model="tiny",
                                extra={"RNG": "philox", "Clip skip": 2})
        path = tmp_path / f"{i}.png"
        save_png(Image.new("RGB", (8, 8)), path, text)
        check(parse(path), prompt=prompt, negative=negative, seed=2**32 + i, steps=17 + i,
              sampler=SAMPLERS[sampler].a1111, cfg=6.5, width=320, height=448,
              schedule=A1111_SCHEDULE_NAMES.get(schedule))


def test_generated_images_round_trip(fixtures_dir, tmp_path):
    model = sdcpp.Model(fixtures_dir / "sd1" / "single.safetensors", n_threads=1, progress=False)
    prompt, negative = PROMPTS[0]
    images = model.generate(prompt, negative, steps=2, width=32, height=24, seed=41, num_images=2,
                            guidance_scale=7.5, sampler="dpm++_2m", schedule="karras", progress=False)
    for k, img in enumerate(images):
        save_png(img, tmp_path / f"{k}.png")
        check(parse(tmp_path / f"{k}.png"), prompt=prompt, negative=negative, seed=41 + k, steps=2,
              sampler="DPM++ 2M", cfg=7.5, width=32, height=24, schedule="Karras")
    # the command line writes the same text
    out = tmp_path / "cli.png"
    assert main(["generate", "-m", str(fixtures_dir / "sd1" / "single.safetensors"), "-p", prompt, "-n", negative,
                 "-o", str(out), "--steps", "2", "-W", "32", "-H", "32", "--seed", "9", "--cfg", "5",
                 "--sampler", "euler", "-t", "1"]) == 0
    check(parse(out), prompt=prompt, negative=negative, seed=9, steps=2, sampler="Euler", cfg=5.0, width=32,
          height=32)
