"""An A1111- and OpenAI-compatible HTTP server for one loaded model (`sdcpp serve`; needs `pip install sdcpp[server]`).

    app = sdcpp.server.create_app(sdcpp.Model("model.safetensors"))   # an ASGI app (FastAPI)
    sdcpp.server.serve(model, host="127.0.0.1", port=7860, token=None)  # uvicorn, until Ctrl-C

Endpoints (README "Serve"): /sdapi/v1/{txt2img,img2img,progress,interrupt,sd-models,samplers,schedulers,options,
scripts}, /v1/images/generations, /v1/models."""

from .app import create_app, serve
from .guard import Limits

__all__ = ["Limits", "create_app", "serve"]
