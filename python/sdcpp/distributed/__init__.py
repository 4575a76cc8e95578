"""Scale out on Ray (`pip install sdcpp[ray]`): `generate_batch` maps rows over a Ray Data actor pool (each actor
loads the model once), `serve` runs the HTTP server of `sdcpp serve` as a Ray Serve deployment."""

from .batch import BatchResult, generate_batch
from .serving import deployment, serve

__all__ = ["BatchResult", "deployment", "generate_batch", "serve"]
