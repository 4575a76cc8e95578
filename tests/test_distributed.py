"""Batch generation on a local Ray (started and shut down here): images identical to sequential generate(), a
killed-and-resumed run completes only the missing rows, a bad row is recorded while the others complete, and the
server runs as a Ray Serve deployment."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import sdcpp

ray = pytest.importorskip("ray")
from sdcpp.distributed import generate_batch  # noqa: E402
from sdcpp.distributed.rows import prepare_rows  # noqa: E402

OPTS = dict(steps=2, width=32, height=32, sampler="euler", guidance_scale=5.0)
PROMPTS = [f"a lovely cat number {i}" for i in range(6)]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _pixels(path):
    with Image.open(path) as img:
        return np.asarray(img), img.info["parameters"]


def test_six_prompts_equal_sequential_generation(fixtures_dir, tmp_path, local_ray):
    model = fixtures_dir / "sd1" / "diffusers"
    result = generate_batch(PROMPTS, model, tmp_path / "out", concurrency=2, base_seed=100, progress=False, **OPTS)
    assert [r["status"] for r in result.records] == ["ok"] * 6
    seq = sdcpp.Model(model, n_threads=1, progress=False)
    for i, prompt in enumerate(PROMPTS):
        want = seq.generate(prompt, seed=100 + i, progress=False, **OPTS)
        got, text = _pixels(tmp_path / "out" / f"{i:06d}.png")
        assert np.array_equal(got, np.asarray(want[0])), i
        assert f"Seed: {100 + i}" in text and prompt in text
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["id"] for m in manifest) == [f"{i:06d}" for i in range(6)]
    assert all(m["status"] == "ok" and m["seconds"] > 0 for m in manifest)


def test_resume_runs_only_missing_rows_and_bad_rows_are_recorded(fixtures_dir, tmp_path, local_ray):
    model = fixtures_dir / "sd1" / "diffusers"
    rows = [{"prompt": p, "seed": i} for i, p in enumerate(PROMPTS[:4])] + [{"prompt": "bad", "width": -32}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    first = generate_batch(path, model, out, progress=False, **OPTS)
    assert [r["status"] for r in first.records] == ["ok"] * 4 + ["failed"]
    assert "width must be >= 1" in first.failed[0]["error"]
    # A run killed after two rows: the others' files are gone. Re-running makes exactly those.
    for rid in ("000002", "000003"):
        os.remove(out / f"{rid}.png")
    kept = {rid: (out / f"{rid}.png").stat().st_mtime_ns for rid in ("000000", "000001")}
    again = generate_batch(path, model, out, progress=False, **OPTS)
    status = {r["id"]: r["status"] for r in again.records}
    assert status == {"000000": "skipped", "000001": "skipped", "000002": "ok", "000003": "ok", "000004": "failed"}
    assert all((out / f"{rid}.png").stat().st_mtime_ns == t for rid, t in kept.items())
    manifest = {json.loads(line)["id"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert len(manifest) == 5 and manifest["000004"]["status"] == "failed" and manifest["000000"]["status"] == "ok"


def test_quantized_once_by_the_driver(fixtures_dir, tmp_path, local_ray):
    model = fixtures_dir / "sd1" / "diffusers"
    out = tmp_path / "out"
    result = generate_batch(PROMPTS[:2], model, out, concurrency=2, type="q8_0", progress=False, **OPTS)
    assert len(result.generated) == 2
    ggufs = [f for f in os.listdir(out) if f.endswith(".gguf")]
    assert len(ggufs) == 1
    want = sdcpp.Model(out / ggufs[0], n_threads=1, progress=False).generate(PROMPTS[1], seed=1, progress=False,
                                                                            **OPTS)
    assert np.array_equal(_pixels(out / "000001.png")[0], np.asarray(want[0]))


def test_rows_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown fields"):
        prepare_rows([{"prompt": "x", "stepz": 3}])
    with pytest.raises(ValueError, match="must be unique"):
        prepare_rows([{"prompt": "x", "id": "a"}, {"prompt": "y", "id": "a"}])
    with pytest.raises(ValueError, match="'prompt' must be a string"):
        prepare_rows([{"negative_prompt": "x"}])
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        prepare_rows(bad)
    rows = prepare_rows(["a", {"prompt": "b", "seed": 7}], base_seed=10)
    assert [r["seed"] for r in rows] == [10, 7] and rows[0]["file"] == "000000.png"


def test_serve_deployment_answers_the_a1111_api(fixtures_dir, local_ray):
    import socket

    import requests
    from ray import serve

    from sdcpp.distributed import serve as serve_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_model(fixtures_dir / "sd1" / "diffusers", host="127.0.0.1", port=port, blocking=False)
    try:
        r = requests.post(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", timeout=120,
                          json=dict(prompt="a cat", steps=2, width=32, height=32, seed=3, sampler_name="Euler"))
        assert r.status_code == 200, r.text
        assert len(r.json()["images"]) == 1 and "Seed: 3" in r.json()["info"]
    finally:
        serve.shutdown()
