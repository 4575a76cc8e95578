"""Run an sdcpp server app on 127.0.0.1 in a background thread for the length of a test (uvicorn on a free port)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import uvicorn

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


@contextmanager
def running(app):
    """Yields (base URL, uvicorn.Server); the server is stopped (and its worker closed) on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "the test server did not stop"


def wait_for(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `condition()` until it returns a truthy value (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
