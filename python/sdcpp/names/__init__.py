"""Canonical names: every source's raw names become diffusers/transformers state-dict names behind a
component prefix (`unet.`, `vae.`, `text_encoder.`, `text_encoder_2.`) once, at ingest.

Why diffusers names: diffusers' own single-file converters are then an independent oracle for our
mapping, and diffusers folders need no mapping at all."""
