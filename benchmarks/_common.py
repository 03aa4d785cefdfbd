"""Shared helpers for the benchmark scripts: timing, peak memory, machine description.

Benchmarks print medians and ratios measured side by side in one run; absolute times on a
shared 2-core machine are noisy, ratios much less so.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The golden fixture's folder, as for the tests: tests/data (fixture_a with its checkpoint
# packed), or a full reference folder given by MOBILE_SAM_REFERENCE.
REFERENCE = Path(os.environ.get("MOBILE_SAM_REFERENCE", REPO / "tests" / "data"))
BUS_PHOTO = REPO / "examples" / "bus_480x640.png"


def fixture_checkpoint(reference: Path = REFERENCE) -> Path:
    """fixture_a's vit_t checkpoint.pt (random weights, official layout): the file itself in
    a full reference folder, else rebuilt once from tests/data's packed form by the tests'
    reader (tests/conftest.py) into the temporary folder, where later runs find it."""
    recorded = reference / "fixture_a" / "checkpoint.pt"
    if recorded.is_file():
        return recorded
    environ = dict(os.environ)  # conftest sets test defaults (backend, cache folder) on import
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from conftest import CHECKPOINT_PACKED, rebuild_checkpoint
    finally:
        sys.path.remove(str(REPO / "tests"))
        os.environ.clear()
        os.environ.update(environ)
    packed = reference / "fixture_a" / CHECKPOINT_PACKED
    if not packed.is_file():
        raise FileNotFoundError(f"{recorded} and {packed} not found: set MOBILE_SAM_REFERENCE "
                                f"to a folder holding fixture_a/ (default tests/data)")
    digest = hashlib.sha256(packed.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"mobile_sam_fixture_a_{digest}.pt"
    if not out.is_file():
        partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
        rebuild_checkpoint(packed, partial)
        os.replace(partial, out)
    return out


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def _child(target: Callable[..., dict], args: tuple, queue: mp.Queue) -> None:
    try:
        result = target(*args)
        result["peak_rss_mb"] = peak_rss_mb()
        queue.put(json.dumps(result))
    except BaseException as exc:  # report, don't hang the parent
        queue.put(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


def run_isolated(target: Callable[..., dict], *args: object) -> dict:
    """Run `target(*args)` in a fresh process so that its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    result = json.loads(queue.get())
    proc.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


class Worker:
    """One benchmark path set up in its own process, then timed call by call on request.

    Several workers are alive at once and the caller alternates between them, so calls of
    different paths run seconds apart (the machine's speed drifts over tens of seconds), while
    each path keeps its own process (its own peak RSS, no other path's thread pools).
    `factory(*args)` runs in the child and returns an object with `timed()` (run the measured
    work once, return its seconds) and `result()` (a JSON-able dict, sent at `finish`).
    """

    def __init__(self, factory: Callable[..., object], *args: object) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker_main, args=(factory, args, child))
        self._proc.start()
        child.close()
        self._receive()  # set up (exports, compilation, warm-up) before any timing

    def timed(self) -> float:
        self._conn.send("timed")
        return self._receive()

    def finish(self) -> dict:
        """The job's result with the process's peak RSS; the process then exits."""
        self._conn.send("finish")
        result = self._receive()
        self._proc.join()
        return result

    def _receive(self):
        kind, value = self._conn.recv()
        if kind == "error":
            self._proc.join()
            raise RuntimeError(value)
        return value


def _worker_main(factory: Callable[..., object], args: tuple, conn) -> None:
    try:
        job = factory(*args)
        conn.send(("ok", None))
        while conn.recv() == "timed":
            conn.send(("ok", job.timed()))
        result = job.result()
        result["peak_rss_mb"] = peak_rss_mb()
        conn.send(("ok", result))
    except BaseException as exc:  # report, don't hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])
