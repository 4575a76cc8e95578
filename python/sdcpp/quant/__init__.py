"""Turning planned tensors into stored bytes (shared by quantize-on-load and the GGUF writer)."""
