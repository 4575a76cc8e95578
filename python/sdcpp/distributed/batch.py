"""Batch generation on Ray Data: a pool of actors, each loading the model once, maps over the rows.

The driver prepares everything that must be the same for every actor: the rows with their seeds and file names,
and, when a weight type is asked for, one quantized GGUF that every actor loads (quantized once, not per actor).
Each row writes its PNG atomically (temporary file + rename) and returns a record; the driver writes the manifest
when the job ends. A row whose PNG exists is skipped, so re-running a killed job completes only what is missing.
A failing row is recorded with its error and the job goes on."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .. import checks
from ..pipeline.images import save_png
from .rows import OPTION_FIELDS, prepare_rows

log = logging.getLogger("sdcpp")

REQUEST_FIELDS = ("type", "unet_type", "te_type", "vae_type", "rules")
LOAD_FIELDS = ("unet", "vae", "text_encoder", "text_encoder_2", "prediction")
MANIFEST = "manifest.jsonl"


@dataclass
class BatchResult:
    out: str
    records: list[dict] = field(default_factory=list)  # one per row of this run (skipped rows included)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "failed"]

    @property
    def generated(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    @property
    def skipped(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "skipped"]


def run_row(model, row: dict, options: dict, out: str) -> dict:
    """Generate one row into `out`; a record of what happened (never raises for the row's own errors)."""
    opts = dict(options, **{k: row[k] for k in OPTION_FIELDS if k in row})
    start = time.perf_counter()
    record = dict(id=row["id"], file=row["file"], seed=row["seed"], prompt=row["prompt"])
    try:
        images = model.generate(row["prompt"], row["negative_prompt"], seed=row["seed"], progress=False, **opts)
        stem = os.path.splitext(row["file"])[0]
        files = [row["file"]] if len(images) == 1 else [f"{stem}-{i}.png" for i in range(len(images))]
        for name, img in zip(files, images, strict=True):
            save_png(img, os.path.join(out, name))
        record.update(status="ok", files=files, seconds=time.perf_counter() - start,
                      step_seconds=images.report.step_times and sum(images.report.step_times))
    except Exception as e:  # a bad row is recorded; the job goes on
        record.update(status="failed", error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - start)
    return record


class _Actor:
    """One Ray actor: the model loaded once, then one row per call."""

    def __init__(self, model, load: dict, n_threads: int, options: dict, out: str):
        from ..pipeline import Model

        self.model = Model(model, n_threads=n_threads, progress=False, **load)
        self.options, self.out = options, out

    def __call__(self, batch):
        records = [run_row(self.model, json.loads(r), self.options, self.out) for r in batch["row"]]
        return {"record": [json.dumps(r) for r in records]}


def _shared_model(model, request: dict, load: dict, out: str, n_threads: int):
    """(what actors load, with what): the source as is, or one GGUF quantized by the driver for all of them."""
    if not any(v is not None for v in request.values()):
        return model, load
    from ..api import quantize

    key = hashlib.sha256(json.dumps([os.fspath(model) if isinstance(model, os.PathLike) else model, request,
                                     {k: os.fspath(v) if isinstance(v, os.PathLike) else v
                                      for k, v in load.items()}], sort_keys=True, default=str).encode())
    path = os.path.join(out, f".model-{key.hexdigest()[:12]}.gguf")
    if not os.path.exists(path):
        log.info("quantizing once for every actor: %s", path)
        quantize(model, path, n_threads=n_threads, progress=False, **request, **load)
    return path, {"prediction": load["prediction"]} if load.get("prediction") else {}


def _init_ray(address: str, cpus: int):
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


def _write_manifest(out: str, records: list[dict]) -> None:
    """Merge this run's records into the manifest (a row's latest record wins), written atomically."""
    path = os.path.join(out, MANIFEST)
    merged: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    merged[rec["id"]] = rec
    for rec in records:
        if rec["status"] != "skipped":
            merged[rec["id"]] = rec
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        for rec in merged.values():
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, path)


def generate_batch(prompts_or_dataset, model, out, *, concurrency: int = 1, threads_per_actor: int = 1,
                   address: str = "local", base_seed: int = 0, progress=True, **options) -> BatchResult:
    """Generate every row into the folder `out` on a Ray Data actor pool (the `sdcpp[ray]` extra).

    `prompts_or_dataset`: a list of prompt strings or row dicts (prompt, negative_prompt, seed, id, width,
    height, steps, guidance_scale, sampler, schedule, clip_skip, eta, num_images, timestep_spacing), or a JSONL
    file of them. Rows without a seed get `base_seed + index`, so results equal sequential `generate()` calls with
    the same options whatever actor runs them. `options`: generate() options for every row (rows override them),
    plus load options (type, unet_type, te_type, vae_type, rules, unet, vae, text_encoder, text_encoder_2,
    prediction). `address`: "local" starts Ray on this machine with concurrency x threads_per_actor CPUs, "auto"
    or "ray://host:port" joins a cluster. Writes out/<id>.png (A1111 parameters inside) and out/manifest.jsonl
    (row -> file, seed, seconds, status, error); rows whose PNG exists are skipped."""
    import ray.data

    concurrency = checks.integer("concurrency", concurrency, minimum=1)
    threads_per_actor = checks.threads(threads_per_actor) or 1
    rows = prepare_rows(prompts_or_dataset, base_seed)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    request = {k: options.pop(k) for k in REQUEST_FIELDS if k in options}
    load = {k: options.pop(k) for k in LOAD_FIELDS if k in options}
    records = [dict(id=r["id"], file=r["file"], seed=r["seed"], prompt=r["prompt"], status="skipped")
               for r in rows if os.path.exists(os.path.join(out, r["file"]))]
    done = {r["id"] for r in records}
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        source, actor_load = _shared_model(model, request, load, out, threads_per_actor)
        started = _init_ray(address, concurrency * threads_per_actor)
        try:
            ds = ray.data.from_items([{"row": json.dumps(r)} for r in todo])
            results = ds.map_batches(_Actor, batch_size=1, concurrency=min(concurrency, len(todo)),
                                     num_cpus=threads_per_actor,
                                     fn_constructor_kwargs=dict(model=os.fspath(source), load=actor_load,
                                                                n_threads=threads_per_actor, options=options,
                                                                out=os.path.abspath(out)))
            bar = tqdm(total=len(todo), desc="batch", unit="row", disable=None if progress else True)
            try:
                for item in results.iter_rows():
                    records.append(json.loads(item["record"]))
                    bar.update(1)
            finally:
                bar.close()
        finally:
            _write_manifest(out, records)
            if started:
                ray.shutdown()
    else:
        _write_manifest(out, records)
    order = {r["id"]: i for i, r in enumerate(rows)}
    records.sort(key=lambda r: order[r["id"]])
    return BatchResult(out, records)
