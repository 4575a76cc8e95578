"""The ASGI app (FastAPI) around one loaded model, and `serve()` (uvicorn)."""

from __future__ import annotations

import ipaddress
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import a1111, openai_images
from .guard import Guard, Limits
from .state import ServerState
from .worker import Worker

log = logging.getLogger("sdcpp.server")


def _validation_message(errors) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        text = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            text = f"invalid JSON at character {where}: {(e.get('ctx') or {}).get('error', '')}"
            where = "body"
        parts.append(f"{where}: {text}")
    return "; ".join(parts)[:2000]


def _without_inputs(errors) -> list[dict]:
    """Pydantic's errors minus the offending values (which may be megabytes of base64) and exception objects."""
    return [{k: v for k, v in e.items() if k not in ("input", "url", "ctx")} for e in errors]


def create_app(model, *, path: str | None = None, limits: Limits | None = None, token: str | None = None,
               rng: str = "philox") -> FastAPI:
    """`model`: a loaded sdcpp.Model, served by one worker thread until the app shuts down."""
    limits = limits or Limits()
    worker = Worker(model, max_queue=limits.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.close()

    app = FastAPI(title="sdcpp", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.sdcpp = ServerState(model, worker, limits, os.fspath(path or model.name), rng=rng)
    app.include_router(a1111.router)
    app.include_router(openai_images.router)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if request.url.path.startswith("/v1/"):
            param = next((str(e["loc"][-1]) for e in errors if e.get("loc")), None)
            return openai_images.openai_error(400, _validation_message(errors), param)
        return JSONResponse({"detail": _without_inputs(errors), "error": _validation_message(errors)}, 422)

    app.add_middleware(Guard, token=token, max_body=limits.max_body)
    app.state.worker = worker
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model, *, path=None, host: str = "127.0.0.1", port: int = 7860, token: str | None = None,
          limits: Limits | None = None, rng: str = "philox", log_level: str = "info"):
    """Serve `model` until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    if not _is_loopback(host) and not token:
        log.warning("serving on %s without --token: anyone who can reach this port can use the model", host)
    app = create_app(model, path=path, limits=limits, token=token, rng=rng)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
