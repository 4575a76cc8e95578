"""The OpenAI images API of `sdcpp serve` through the `openai` client, and `sdcpp serve` itself as a process:
started on 127.0.0.1 with a token, answering, stopped by a signal."""

import base64
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")

import sdcpp  # noqa: E402
from sdcpp.server import create_app  # noqa: E402
from sdcpp.server.app import _is_loopback  # noqa: E402
from serving import running, wait_for  # noqa: E402

S = 32


@pytest.fixture(scope="module")
def model(fixtures_dir):
    return sdcpp.Model(fixtures_dir / "sd1" / "single.safetensors", n_threads=1, progress=False)


@pytest.fixture(scope="module")
def client(model):
    with running(create_app(model, path="single.safetensors", token="k3y")) as (url, _):
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0, timeout=60)


def _image(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_images_generate_equals_generate(client, model):
    r = client.images.generate(prompt="a red fox", size=f"{S}x{S}", n=2, response_format="b64_json",
                               extra_body={"seed": 5, "steps": 3, "negative_prompt": "blurry",
                                           "sampler_name": "DPM++ 2M", "scheduler": "karras"})
    ref = model.generate("a red fox", "blurry", seed=5, steps=3, width=S, height=S, num_images=2, rng="philox",
                         sampler="dpm++_2m", schedule="karras", progress=False)
    assert len(r.data) == 2 and r.created > 0
    for got, want in zip(r.data, ref, strict=True):
        assert np.array_equal(_image(got.b64_json), np.asarray(want))
    assert [m.id for m in client.models.list()] == ["single.safetensors"]
    r = client.images.generate(prompt="a red fox", model="single.safetensors", size=f"{S}x{S}",
                               extra_body={"steps": 1})  # defaults: one image, b64_json
    assert len(r.data) == 1 and _image(r.data[0].b64_json).shape == (S, S, 3)


@pytest.mark.parametrize("kwargs, param", [
    (dict(response_format="url"), "response_format"),
    (dict(model="dall-e-3"), "model"),
    (dict(size="big"), "size"),
    (dict(size="100000x64"), None),
    (dict(n=50), None),
    (dict(output_format="jpeg"), "output_format"),
    (dict(extra_body={"steps": 0}), None),
    (dict(extra_body={"sampler_name": "Euler b"}), None),
    (dict(extra_body={"unknown_field": 1}), "unknown_field"),
    (dict(extra_body={"seed": "1"}), "seed"),
])
def test_bad_requests_are_openai_400s(client, kwargs, param):
    kwargs.setdefault("size", f"{S}x{S}")
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="x", **kwargs)
    body = e.value.body
    assert e.value.status_code == 400 and body["message"] and body["type"] == "invalid_request_error"
    if param:
        assert body["param"] == param, body


def test_wrong_key_is_refused(client):
    bad = openai.OpenAI(base_url=str(client.base_url), api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.images.generate(prompt="x", size=f"{S}x{S}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sdcpp_serve_process(fixtures_dir, tmp_path):
    """The CLI entry point: binds 127.0.0.1 by default, needs the token, stops cleanly on SIGINT / SIGTERM."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(sdcpp.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "sdcpp.cli", "serve", str(fixtures_dir / "sd1" / "diffusers"),
                             "--port", str(port), "--token", "t0k", "-t", "1", "--max-steps", "5"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/sdapi/v1"
    auth = {"Authorization": "Bearer t0k"}
    try:
        def up():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return requests.get(f"{url}/sd-models", headers=auth, timeout=2)
            except requests.ConnectionError:
                return None

        models = wait_for(up, 60, interval=0.2, what="sdcpp serve to answer").json()
        assert models[0]["model_name"] == "diffusers"
        assert requests.get(f"{url}/sd-models", timeout=5).status_code == 401
        r = requests.post(f"{url}/txt2img", json=dict(prompt="x", steps=6, width=S, height=S), headers=auth,
                          timeout=60)
        assert r.status_code == 422 and "between 1 and 5" in r.json()["detail"]  # --max-steps
        r = requests.post(f"{url}/txt2img", json=dict(prompt="x", steps=2, width=S, height=S), headers=auth,
                          timeout=60)
        assert r.status_code == 200 and len(r.json()["images"]) == 1
        listening = [c for c in _listening(proc.pid) if c[1] == port]
        assert listening and all(_is_loopback(host) for host, _ in listening), listening
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
    assert proc.returncode in (0, -signal.SIGINT), (tmp_path / "serve.log").read_text()


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets `pid` listens on, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr, port = local.split(":")
            raw = bytes.fromhex(addr)
            host = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6,
                                    raw[::-1] if width == 8 else b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.append((host, int(port, 16)))
    return out


def test_binding_beyond_localhost_without_token_warns(model, monkeypatch, caplog):
    import uvicorn

    from sdcpp.server import serve

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: (calls.append(kw), app.state.worker.close()))
    with caplog.at_level("WARNING", logger="sdcpp.server"):
        serve(model, host="0.0.0.0", port=1)
    assert calls[0]["host"] == "0.0.0.0" and "without --token" in caplog.text
    caplog.clear()
    serve(model, host="127.0.0.1", port=1)
    assert "without --token" not in caplog.text
    assert _is_loopback("::1") and _is_loopback("localhost") and not _is_loopback("0.0.0.0")
