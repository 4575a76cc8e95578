"""Run an sdcpp server app on 127.0.0.1 in a background thread for the length of a test (uvicorn on a free port)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import uvicorn

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


@contextmanager
def running(app, limit: float = 300.0):
    """Yields (base URL, uvicorn.Server); the server is stopped (and its worker closed) on exit, or after `limit`
    seconds at the latest: then open connections are closed, so a client waiting on a hung server fails instead of
    hanging the test run."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    watchdog = threading.Timer(limit, lambda: setattr(server, "should_exit", True))
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        timed_out = not watchdog.is_alive()
        watchdog.cancel()
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive(), "the test server did not stop"
        assert not timed_out, f"the test server ran past its {limit} s limit and was stopped"


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
