"""The A1111 API of `sdcpp serve`, driven by a real client (the `webuiapi` package) against a server on 127.0.0.1:
images equal to Model.generate's for the same settings, progress with a preview while a job runs, interrupt
returning the partial image, several clients at once served one job at a time in arrival order."""

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("fastapi")
webuiapi = pytest.importorskip("webuiapi")
sd_parsers = pytest.importorskip("sd_parsers")

import sdcpp  # noqa: E402
from sdcpp.server import Limits, create_app  # noqa: E402
from serving import running, wait_for  # noqa: E402

S = 32  # image side of the quick requests (tiny model: ~0.05 s per step)


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return sdcpp.Model(fixtures_dir / "sd1" / "single.safetensors", n_threads=1, progress=False)


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, path="single.safetensors")
    with running(app) as (url, _):
        host, port = url.rsplit("//", 1)[1].split(":")
        yield dict(url=url, app=app, api=webuiapi.WebUIApi(host=host, port=int(port)))


def pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def reference(model, prompt, negative="", **options):
    options.setdefault("rng", "philox")  # the server's default noise, as A1111's
    return [pixels(i) for i in model.generate(prompt, negative, progress=False, **options)]


def test_txt2img_equals_generate(server, model):
    api = server["api"]
    r = api.txt2img(prompt="a lovely cat", negative_prompt="blurry", seed=7, steps=3, width=S, height=S,
                    cfg_scale=6.5, batch_size=2, sampler_name="DPM++ 2M", scheduler="karras")
    ref = reference(model, "a lovely cat", "blurry", seed=7, steps=3, width=S, height=S, guidance_scale=6.5,
                    num_images=2, sampler="dpm++_2m", schedule="karras")
    assert len(r.images) == 2
    for got, want in zip(r.images, ref, strict=True):
        assert np.array_equal(pixels(got), want)
    assert r.info["all_seeds"] == [7, 8] and r.info["sampler_name"] == "DPM++ 2M" and not r.info["interrupted"]
    assert r.parameters["prompt"] == "a lovely cat" and r.parameters["steps"] == 3
    assert r.images[0].info["parameters"] == r.info["infotexts"][0]
    assert "Schedule type: Karras" in r.info["infotexts"][0] and "Seed: 8" in r.info["infotexts"][1]
    parsed = sd_parsers.ParserManager().parse(r.images[1])  # what image browsers read from the PNG
    assert (parsed.full_prompt, parsed.full_negative_prompt) == ("a lovely cat", "blurry")
    assert parsed.samplers[0].name == "DPM++ 2M" and parsed.samplers[0].parameters["seed"] == "8"
    # the old one-name form of sampler + schedule, and n_iter (seeds continue after each batch)
    r2 = api.txt2img(prompt="a lovely cat", negative_prompt="blurry", seed=7, steps=3, width=S, height=S,
                     cfg_scale=6.5, n_iter=2, sampler_name="DPM++ 2M Karras", scheduler="automatic")
    assert [np.array_equal(pixels(a), b) for a, b in zip(r2.images, ref, strict=True)] == [True, True]


def test_lists_and_options(server):
    api = server["api"]
    assert api.util_get_model_names() == ["single.safetensors"]
    assert api.util_get_current_model() == "single.safetensors"
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(api.util_get_sampler_names())
    assert {"automatic", "karras", "exponential", "align_your_steps"} == set(api.util_get_scheduler_names())
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1
    api.set_options({"CLIP_stop_at_last_layers": 2})
    try:
        r = api.txt2img(prompt="x", seed=1, steps=1, width=S, height=S)
        assert "Clip skip: 2" in r.info["infotexts"][0] and r.info["clip_skip"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    bad = api.session.post(f"{server['url']}/sdapi/v1/options", json={"sd_model_checkpoint": "other.ckpt"})
    assert bad.status_code == 422 and "serves 'single.safetensors'" in bad.json()["detail"]


def test_img2img_and_inpainting_equal_generate(server, model):
    api = server["api"]
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
    r = api.img2img(images=[init], prompt="a house", seed=3, steps=4, width=S, height=S, denoising_strength=0.5,
                    sampler_name="Euler")
    ref = reference(model, "a house", seed=3, steps=4, width=S, height=S, strength=0.5, init_image=init,
                    sampler="euler")
    assert np.array_equal(pixels(r.image), ref[0])
    assert r.parameters["init_images"] is None and "Denoising strength: 0.5" in r.info["infotexts"][0]
    wide = Image.fromarray(rng.integers(0, 256, (S, 2 * S, 3), dtype=np.uint8))  # resize_mode 1: crop and resize
    r = api.img2img(images=[wide], resize_mode=1, prompt="a house", seed=3, steps=2, width=S, height=S,
                    denoising_strength=0.6, sampler_name="Euler")
    ref = reference(model, "a house", seed=3, steps=2, width=S, height=S, strength=0.6, sampler="euler",
                    init_image=ImageOps.fit(wide, (S, S), Image.LANCZOS))
    assert np.array_equal(pixels(r.image), ref[0])

    mask = Image.new("L", (S, S), 0)
    mask.paste(255, (8, 8, 24, 24))
    r = api.img2img(images=[init], mask_image=mask, prompt="a house", seed=3, steps=4, width=S, height=S,
                    denoising_strength=0.8, sampler_name="Euler", inpainting_fill=1, inpaint_full_res=False,
                    mask_blur=0)
    ref = reference(model, "a house", seed=3, steps=4, width=S, height=S, strength=0.8, init_image=init,
                    mask_image=mask, sampler="euler")
    assert np.array_equal(pixels(r.image), ref[0])
    # A1111's defaults (fill the masked area, inpaint only the masked region) are refused by name, not ignored
    with pytest.raises(RuntimeError) as e:
        api.img2img(images=[init], mask_image=mask, prompt="a house", steps=2, width=S, height=S)
    assert e.value.args[0] == 422 and "inpainting_fill" in e.value.args[1] and "inpaint_full_res" in e.value.args[1]


def _progress(url, session, image=True):
    return session.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": str(not image).lower()}).json()


def test_progress_preview_and_interrupt(server, model):
    api, url, worker = server["api"], server["url"], server["app"].state.worker
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    out = {}
    job = threading.Thread(target=lambda: out.update(r=api.txt2img(prompt="a cat", seed=11, steps=150, width=64,
                                                                   height=64, sampler_name="Euler a")))
    decoded_before = worker.previews_decoded
    job.start()
    try:
        p = wait_for(lambda: (q := _progress(url, api.session, image=False))["state"]["sampling_step"] >= 2 and q,
                     30, what="two sampling steps")
        assert p["state"]["sampling_steps"] == 150 and p["state"]["job_count"] == 1
        assert 0 < p["progress"] < 1 and p["eta_relative"] > 0 and p["current_image"] is None
        assert worker.previews_decoded == decoded_before  # nobody asked for a preview: none decoded
        t = time.monotonic()
        p = _progress(url, api.session)  # answered while the job runs (the worker is another thread)
        assert time.monotonic() - t < 2.0
        p = wait_for(lambda: (q := _progress(url, api.session))["current_image"] and q, 30, what="a preview")
        preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
        assert preview.size == (64, 64)
        assert worker.previews_decoded - decoded_before <= 3  # one per asking request at most
        step = p["state"]["sampling_step"]
    finally:
        t = time.monotonic()
        assert api.interrupt()["interrupted"] is True
        job.join(30)
    assert time.monotonic() - t < 5.0 and not job.is_alive()
    r = out["r"]
    assert r.info["interrupted"] is True and step <= r.info["steps_done"] < 150
    assert len(r.images) == 1 and r.images[0].size == (64, 64)  # A1111's partial result: the last denoised
    assert "Seed: 11" in r.images[0].info["parameters"]
    assert api.interrupt()["interrupted"] is False  # nothing runs now
    after = api.get_progress()
    assert after["progress"] == 0 and after["state"]["job_count"] == 0
    # the next job is not touched by the interrupt
    r = api.txt2img(prompt="a cat", seed=11, steps=2, width=S, height=S, sampler_name="Euler a")
    assert np.array_equal(pixels(r.image), reference(model, "a cat", seed=11, steps=2, width=S, height=S)[0])


def test_concurrent_clients_served_one_at_a_time_in_order(server, model):
    url, session = server["url"], server["api"].session
    n = 5
    refs = {seed: reference(model, f"prompt {seed}", seed=seed, steps=3, width=S, height=S)[0] for seed in range(n)}
    results, errors = {}, []

    def client(seed):
        try:
            r = session.post(f"{url}/sdapi/v1/txt2img", json=dict(prompt=f"prompt {seed}", seed=seed, steps=3,
                                                                  width=S, height=S, sampler_name="Euler a"))
            results[seed] = r
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == n
    infos = []
    for seed, r in results.items():
        assert r.status_code == 200, r.text
        body = r.json()
        img = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
        assert np.array_equal(pixels(img), refs[seed]), seed
        infos.append(json.loads(body["info"]))
    infos.sort(key=lambda i: i["job_id"])
    assert len({i["job_id"] for i in infos}) == n
    for a, b in zip(infos, infos[1:], strict=False):  # FIFO, never two at once
        assert a["finished"] <= b["started"]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    url, session = server["url"], server["api"].session
    post = f"{url}/sdapi/v1/txt2img"

    def expect(status, body=None, *, raw=None, contains=""):
        r = session.post(post, json=body) if raw is None else session.post(
            post, data=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body, raw and raw[:40], r.status_code, r.text[:300])
        assert contains in r.text, r.text[:300]

    expect(422, raw=b"{not json", contains="JSON")
    expect(422, raw=b'{"prompt": "x", "cfg_scale": NaN}', contains="cfg_scale")
    expect(422, raw=b'{"steps": 1e999}', contains="steps")
    expect(400, raw=b"[" * 100_000 + b"]" * 100_000)  # too deep for the JSON parser: a 4xx, not a 500
    expect(422, {"steps": "20"}, contains="steps")
    expect(422, {"width": 64.5}, contains="width")
    expect(422, {"restore_faces": "no"}, contains="restore_faces")
    expect(422, {"prompt": ["a", "b"]}, contains="prompt")
    expect(422, {"stepz": 20}, contains="stepz")
    expect(422, {"width": 10**12, "height": S}, contains="width must be between 8 and 2048")
    expect(422, {"width": 33, "height": S, "steps": 1}, contains="multiple of")  # the VAE factor (2 here)
    expect(422, {"steps": 10**6, "width": S, "height": S}, contains="steps must be between 1 and 150")
    expect(422, {"batch_size": 3, "n_iter": 3, "width": S, "height": S}, contains="1 to 8")
    expect(422, {"seed": 2**70, "width": S, "height": S, "steps": 1}, contains="seed")
    expect(422, {"seed": -5, "width": S, "height": S, "steps": 1}, contains="seed")
    expect(422, {"sampler_name": "Euler b", "width": S, "height": S}, contains="DPM++ 2M")
    expect(422, {"scheduler": "polyexponential", "width": S, "height": S}, contains="align_your_steps")
    expect(422, {"enable_hr": True, "width": S, "height": S}, contains="enable_hr")
    expect(422, {"alwayson_scripts": {"ControlNet": {"args": []}}}, contains="ControlNet")
    expect(422, {"override_settings": {"sd_vae": "x.vae"}}, contains="sd_vae")
    expect(422, {"prompt": "x" * 20_001, "width": S, "height": S}, contains="prompt")
    img2img = f"{url}/sdapi/v1/img2img"
    for init, why in (("@@@", "base64"), (base64.b64encode(b"not an image").decode(), "readable"),
                      (_png_header(5000, 5000), "limit"), (_png_header(100_000, 100_000), "limit")):
        r = session.post(img2img, json=dict(init_images=[init], width=S, height=S, steps=1))
        assert r.status_code == 422 and why in r.text, (why, r.text[:200])
    assert session.post(img2img, json=dict(width=S, height=S)).status_code == 422  # no init image
    r = session.post(post, json=dict(prompt="still here", width=S, height=S, steps=1, seed=1))
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def _png_header(width: int, height: int) -> str:
    """A PNG whose header claims width x height pixels (its data is tiny and broken): refused before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def test_token_body_limit_and_full_queue(model):
    app = create_app(model, path="single.safetensors", token="s3cret",
                     limits=Limits(max_body=20_000, max_queue=1))
    with running(app) as (url, _):
        import requests

        post = f"{url}/sdapi/v1/txt2img"
        quick = dict(prompt="x", width=S, height=S, steps=1, seed=1)
        assert requests.post(post, json=quick).status_code == 401
        assert requests.get(f"{url}/sdapi/v1/progress").status_code == 401
        assert requests.get(f"{url}/no-such-page").status_code == 401  # nothing answers without the token
        assert requests.post(post, json=quick, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert requests.post(post, json=quick, headers=ok).status_code == 200
        api = webuiapi.WebUIApi(baseurl=f"{url}/sdapi/v1", username="anyone", password="s3cret")  # HTTP Basic
        assert len(api.txt2img(**quick).images) == 1
        r = requests.post(post, json=dict(quick, prompt="x" * 30_000), headers=ok)
        assert r.status_code == 413

        out = {}
        long_job = threading.Thread(target=lambda: out.update(a=api.txt2img(**dict(quick, steps=150, width=64,
                                                                                   height=64))))
        long_job.start()
        wait_for(lambda: api.get_progress()["state"]["sampling_step"] >= 1, 30, what="the long job to run")
        queued = threading.Thread(target=lambda: out.update(b=api.txt2img(**quick)))
        queued.start()
        wait_for(lambda: api.get_progress()["state"]["queued"] == 1, 30, what="a queued job")
        full = requests.post(post, json=quick, headers=ok)
        assert full.status_code == 503 and "waiting" in full.json()["detail"]
        api.interrupt()
        long_job.join(30)
        queued.join(30)
        assert out["a"].info["interrupted"] and not out["b"].info["interrupted"] and len(out["b"].images) == 1
