"""One worker thread per served model: jobs run one at a time in arrival order (FIFO), so no two generations ever
share the model's graphs, while HTTP handlers read progress and interrupt from the event loop.

Interrupt (A1111 semantics): the running job stops within a step (the UNet pass is stopped through
`Model.cancel()`), its remaining iterations are skipped, and it returns the images decoded from the last step's
denoised estimate (what A1111 returns); a job interrupted before its first step returns no image. Queued jobs are
not affected.

Preview: a /progress request that wants one sets a flag; the worker decodes the latest denoised latent of the
first image with the VAE at the next step boundary (at most one decode per asking request, none otherwise)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..errors import Cancelled
from ..pipeline.images import a1111_parameters, to_pil
from .encode import png_b64

log = logging.getLogger("sdcpp.server")


class QueueFull(Exception):
    """More jobs are waiting than the server accepts."""


@dataclass
class Call:
    """One Model.generate call of a job (A1111's n_iter makes several)."""

    prompt: str
    negative_prompt: str
    options: dict


@dataclass
class Result:
    images: list[str]  # base64 PNGs with their "parameters" text
    infotexts: list[str]
    seeds: list[int]
    interrupted: bool
    steps_done: int  # sampling steps of the last call that ran
    started: float
    finished: float


@dataclass
class Job:
    kind: str
    calls: list[Call]
    id: int = 0
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.time)
    interrupted: bool = False


@dataclass
class _Progress:
    job: Job | None = None
    started: float = 0.0
    call_no: int = 0
    step: int = 0
    steps: int = 0
    denoised: np.ndarray | None = None
    preview_wanted: bool = False
    preview: str | None = None  # base64 PNG of the current job's latest decoded preview
    preview_step: int = -1


class Worker:
    def __init__(self, model, max_queue: int = 16):
        self.model = model
        self.max_queue = max_queue
        self.previews_decoded = 0  # how many preview decodes ran (tests check "only when asked")
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[Job] = collections.deque()
        self._next_id = 1
        self._closed = False
        self._p = _Progress()
        self._thread = threading.Thread(target=self._loop, name="sdcpp-server-worker", daemon=True)
        self._thread.start()

    # --- called from the event loop -----------------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} jobs are waiting (the server's limit); retry later")
            job.id = self._next_id
            self._next_id += 1
            self._queue.append(job)
            self._wake.notify()
        return job.future

    def interrupt(self) -> bool:
        """Stop the running job (it returns what it has); False when none runs."""
        with self._lock:  # held: the worker cannot move on to the next job, whose pass cancel() would stop
            job = self._p.job
            if job is None:
                return False
            job.interrupted = True
            self.model.cancel()  # stops a running UNet/VAE pass; the step callback stops a job between passes
        return True

    def progress(self, want_image: bool) -> dict:
        with self._lock:
            p = self._p
            if p.job is not None and want_image and p.preview_step != p.step:
                p.preview_wanted = True
            return dict(job=p.job, started=p.started, call_no=p.call_no, step=p.step, steps=p.steps,
                        preview=p.preview if want_image else None, queued=len(self._queue))

    def close(self, timeout: float = 10.0):
        with self._lock:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._wake.notify()
        for job in waiting:
            job.future.set_exception(QueueFull("the server shut down before this job ran"))
        self.interrupt()
        self._thread.join(timeout)

    # --- the worker thread ---------------------------------------------------------------------------------------
    def _loop(self):
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._p = _Progress(job=job, started=time.time())
            if not job.future.set_running_or_notify_cancel():
                continue
            result = error = None
            try:
                result = self._run(job)
            except BaseException as e:  # every failure goes to the waiting request; the worker keeps serving
                if not isinstance(e, Exception):
                    log.error("job %d stopped by %r", job.id, e)
                error = e if isinstance(e, Exception) else RuntimeError(repr(e))
            with self._lock:  # idle before the client hears back: its next /progress or /interrupt sees no job
                self._p = _Progress()
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)

    def _callback(self, job: Job):
        def on_step(step, total, info):
            denoised = info.get("denoised")
            with self._lock:
                p = self._p
                p.step, p.steps = step, total
                if denoised is not None:
                    p.denoised = denoised
                want = p.preview_wanted and denoised is not None
                p.preview_wanted = False if want else p.preview_wanted
            if want:
                preview = png_b64(self.model.preview_images(denoised[:1])[0])  # a TAESD when the model has one
                with self._lock:
                    self._p.preview, self._p.preview_step = preview, step
                    self.previews_decoded += 1
            return not job.interrupted
        return on_step

    def _decode(self, latents: np.ndarray) -> list:
        """An interrupted job's images: decoded by the model's own VAE, as its finished images are."""
        vae = self.model.vae
        x = latents / np.float32(vae.scaling_factor)
        return to_pil(np.concatenate([vae.decode(x[i:i + 1]) for i in range(len(x))]))

    def _run(self, job: Job) -> Result:
        images, texts, seeds = [], [], []
        started = time.time()
        steps_done = 0
        for i, call in enumerate(job.calls):
            with self._lock:
                self._p.call_no, self._p.step, self._p.steps, self._p.denoised = i, 0, 0, None
            if job.interrupted:
                break
            try:
                out = self.model.generate(call.prompt, call.negative_prompt, progress=self._callback(job),
                                          **call.options)
            except Cancelled:
                if not job.interrupted:
                    raise
                with self._lock:
                    denoised, steps_done = self._p.denoised, self._p.step
                if denoised is not None:
                    self._partial(call, denoised, images, texts, seeds)
                break
            steps_done = len(out.report.step_times)
            for img, info in zip(out, out.info, strict=True):
                images.append(png_b64(img, info["parameters"]))
                texts.append(info["parameters"])
                seeds.append(info["seed"])
        return Result(images, texts, seeds, job.interrupted, steps_done, started, time.time())

    def _partial(self, call: Call, denoised, images, texts, seeds):
        """A1111's interrupt result: the last step's denoised estimate, decoded (the Model is idle again here)."""
        o = call.options
        extra = dict(o.get("extra") or {})  # the fields generate() adds to its own images' text
        if o.get("init_image") is not None:
            extra["Denoising strength"] = f"{o['strength']:g}"
        if (o.get("clip_skip") or 1) > 1:
            extra["Clip skip"] = o["clip_skip"]
        extra["RNG"] = o.get("rng", "numpy")
        for k, img in enumerate(self._decode(denoised)):
            seed = o["seed"] + k
            text = a1111_parameters(call.prompt, call.negative_prompt, steps=o["steps"], sampler=o["sampler"],
                                    schedule=o["schedule"], guidance_scale=o["guidance_scale"], seed=seed,
                                    width=img.width, height=img.height, model=self.model.name, extra=extra)
            images.append(png_b64(img, text))
            texts.append(text)
            seeds.append(seed)
