"""What every request passes before any route: the bearer token (when the server has one) and the body size limit.
A plain ASGI middleware, so nothing (not even a 404) answers an unauthenticated client, and a body is never read
past the limit."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from starlette.responses import JSONResponse


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests are refused (4xx), never attempted."""

    max_size: int = 2048  # width and height, pixels
    max_steps: int = 150  # A1111's UI maximum
    max_images: int = 8  # per request: A1111 batch_size x n_iter, OpenAI n
    max_queue: int = 16  # jobs waiting behind the running one
    max_body: int = 64 << 20  # bytes of one request body (base64 init images included)
    max_prompt: int = 20_000  # characters of a prompt or negative prompt
    max_input_pixels: int = 4096 * 4096  # of a decoded init image or mask

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"server limit {name} must be a positive integer, got {value!r}")
        if self.max_size < 8:
            raise ValueError(f"max_size must be at least 8 pixels, got {self.max_size}")


def _error(status: int, message: str, code: str, headers=None) -> JSONResponse:
    # "detail" is what FastAPI/A1111 clients read, "error" what OpenAI clients read.
    return JSONResponse({"detail": message, "error": {"message": message, "type": "invalid_request_error",
                                                      "param": None, "code": code}}, status, headers=headers)


def token_matches(header: str, token: str) -> bool:
    """`Authorization: Bearer T`, or HTTP Basic with T as the password (A1111 clients speak Basic)."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return secrets.compare_digest(value.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(password.encode(), token.encode())
    return False


class Guard:
    def __init__(self, app, token: str | None, max_body: int):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token and not token_matches(headers.get("authorization", ""), self.token):
            return await _error(401, "missing or wrong token (send 'Authorization: Bearer <token>')",
                                "invalid_api_key", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = _error(413, f"request body over the server's limit of {self.max_body} bytes", "body_too_large")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await too_big(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await too_big(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
