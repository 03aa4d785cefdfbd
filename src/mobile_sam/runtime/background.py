"""Fast from the first call: converted models made in a background thread.

Exporting the encoder to ONNX and converting the decoder for OpenVINO take 10-20 s the first
time (then they are cached on disk, `mobile_sam.runtime.cache`); eager torch answers the
first call in about a second. With `conversion="background"` (the default) a cache miss is
served by eager torch, and once the first mask is out the conversion runs in one worker
thread; each later call uses the converted model as soon as it is ready. The choices:

| conversion | converted model cached | not cached |
|---|---|---|
| "background" | used | eager torch now; converted in the background, used when ready |
| "wait" | used | converted first (a progress bar on a terminal), then used |
| "cached" | used | eager torch, nothing converted (one-shot runs: `mobile-sam segment` on one image) |

`SamPredictor(..., conversion=None)` (the default) reads the environment variable
`MOBILE_SAM_CONVERSION`, else uses "background".

The worker is one non-daemon thread running the conversions one after the other; it ends when
it has nothing left, and a process that finishes its work while a conversion runs waits for it
at exit, so the cache is complete for the next run. Its priority is left alone: threads it
starts (OpenVINO's thread pool among them) would inherit a lower one and keep it for every
later inference. `conversion="wait"` runs the conversion in the calling thread. Each conversion logs one line per stage (`logging`, logger
`mobile_sam.runtime`, level INFO).

The worker converts a copy of the model's module tree that shares its weight tensors: export
switches modules' modes and traces them, which must not disturb the eager calls running at
the same time on the model itself.
"""
from __future__ import annotations

import copy
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

import numpy as np
import torch

from ..modeling import Sam
from ..modeling.fast_decoder import DecoderImageCache
from .decoders import DecoderRunner
from .encoders import Encoder

CONVERSIONS = ("background", "wait", "cached")

T = TypeVar("T")
log = logging.getLogger(__name__)


def check_conversion(conversion: str | None) -> str:
    """A valid conversion mode; None means the environment variable `MOBILE_SAM_CONVERSION`,
    else "background"."""
    if conversion is None:
        conversion = os.environ.get("MOBILE_SAM_CONVERSION", "background")
        if conversion not in CONVERSIONS:
            raise ValueError(f"MOBILE_SAM_CONVERSION must be one of {CONVERSIONS}, "
                             f"got {conversion!r}")
    if conversion not in CONVERSIONS:
        raise ValueError(f"conversion must be one of {CONVERSIONS}, got {conversion!r}")
    return conversion


def shared_weights_copy(model: Sam) -> Sam:
    """A copy of `model`'s module tree holding the same parameter and buffer tensors (no
    weight is copied): a worker can export it while `model` serves eager calls."""
    memo: dict[int, object] = {id(t): t for t in itertools.chain(model.parameters(),
                                                                 model.buffers())}
    return copy.deepcopy(model, memo)


class Job(Generic[T]):
    """A conversion run by the worker thread: `start()` queues it (once), `get()` is its
    result when finished (None before, or if it failed: the failure is logged and the eager
    path keeps serving), `wait()` blocks for it."""

    def __init__(self, name: str, build: Callable[[], T]) -> None:
        self.name = name
        self._build = build
        self._done = threading.Event()
        self._started = False
        self._result: T | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        if not self._started:
            self._started = True
            _submit(self)

    def run(self) -> None:
        try:
            self._result = self._build()
        except Exception as exc:  # noqa: BLE001 - the eager path keeps serving
            self.error = exc
            log.warning("%s failed; the eager torch path keeps serving: %s", self.name, exc)
        finally:
            self._build = _nothing  # the worker no longer holds the model copy
            self._done.set()

    def get(self) -> T | None:
        return self._result if self._done.is_set() else None

    def wait(self) -> T | None:
        """The result, with a progress bar on a terminal meanwhile: the job runs in this
        thread unless the worker has it already."""
        if not self._done.is_set():
            with _ticking_bar(self.name):
                if self._started:
                    self._done.wait()
                else:
                    self._started = True
                    self.run()
        return self._result


def _nothing() -> None:
    return None


# ------------------------------------------------------------------ the worker thread
_QUEUE: deque[Job] = deque()
_QUEUE_LOCK = threading.Lock()
_WORKER: threading.Thread | None = None


def _submit(job: Job) -> None:
    global _WORKER
    with _QUEUE_LOCK:
        _QUEUE.append(job)
        if _WORKER is None or not _WORKER.is_alive():
            _WORKER = threading.Thread(target=_work, name="mobile_sam-conversion")
            _WORKER.start()


def finish_conversions() -> None:
    """Wait for the conversions running in the background, with a bar on a terminal: for a
    command line that has written its outputs (the process would wait for them silently at
    exit otherwise)."""
    worker = _WORKER
    if worker is not None and worker.is_alive():
        with _ticking_bar("finishing the one-time conversion (cached for the next runs)"):
            worker.join()


def _work() -> None:
    while True:
        with _QUEUE_LOCK:
            if not _QUEUE:
                return
            job = _QUEUE.popleft()
        job.run()


@contextmanager
def _ticking_bar(what: str) -> Iterator[None]:
    """A tqdm bar showing the elapsed time of a step with no measurable progress, on a
    terminal only (refreshed twice a second by a timer thread)."""
    from tqdm import tqdm

    bar = tqdm(desc=what, total=None, unit="s", disable=None, leave=False,
               bar_format="{desc}: {elapsed}")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()


# ------------------------------------------------------------------ switching runners
class BackgroundEncoder(Encoder):
    """Eager torch until the job's converted encoder is ready, then that."""

    def __init__(self, eager: Encoder, job: Job[Encoder]) -> None:
        super().__init__(eager)
        self.job = job

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return (self.job.get() or self._run)(image)

    def release_memory(self) -> None:
        converted = self.job.get()
        if converted is not None:
            converted.release_memory()


class BackgroundDecoder:
    """`DecoderRunner`: the eager runner until the job's converted runner is ready, then that
    (checked at each call: a generator's image switches between two batches)."""

    def __init__(self, eager: DecoderRunner, job: Job[DecoderRunner]) -> None:
        self.eager = eager
        self.job = job

    def _runner(self) -> DecoderRunner:
        return self.job.get() or self.eager

    def prompt(self, points: torch.Tensor, labels: torch.Tensor, cache: DecoderImageCache
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._runner().prompt(points, labels, cache)

    def masks(self, src: torch.Tensor, hyper: torch.Tensor, extent: torch.Tensor
              ) -> torch.Tensor:
        return self._runner().masks(src, hyper, extent)

    def full(self, points: torch.Tensor, labels: torch.Tensor, cache: DecoderImageCache
             ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._runner().full(points, labels, cache)
