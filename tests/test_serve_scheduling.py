"""Scheduling of the web service: clicks go before "everything" jobs, jobs are bounded, and a
job stops when its client disconnects, its time limit passes or the server gets SIGTERM."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from mobile_sam.serve import BackgroundServer, create_app
from mobile_sam.serve.scheduler import JobCancelled, JobPool, PoolFull, PriorityLock

SRC = str(Path(__file__).resolve().parents[1] / "src")
# One prompt per batch on a 16 x 16 grid: 256 model calls, each slowed below.
SLOW_JOB = {"points_per_side": 16, "points_per_batch": 1}
DECODE_S = 0.01
PROMPT_S = 0.01  # per prompt of an ONNX decoder call


def png_bytes(h: int = 60, w: int = 80) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 3, yy * 4, (xx + yy) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class SlowDecoder:
    """Counts mask-decoder calls and makes each take at least DECODE_S seconds, so that a
    job of SLOW_JOB lasts seconds on the tiny model."""

    def __init__(self, model) -> None:
        self.calls = 0
        # The IoU head runs once per decode whichever decoder path is taken.
        self._handle = model.mask_decoder.iou_prediction_head.register_forward_pre_hook(
            self._enter)

    def _enter(self, module, args) -> None:
        self.calls += 1
        time.sleep(DECODE_S)

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def slow(tiny_sam):
    hook = SlowDecoder(tiny_sam)
    yield hook
    hook.remove()


def start_job(url: str, image_id: str, results: dict, timeout: float = 60.0) -> threading.Thread:
    def run() -> None:
        start = time.monotonic()
        try:
            response = httpx.post(f"{url}v1/images/{image_id}/everything", json=SLOW_JOB,
                                  timeout=timeout)
            results["everything"] = response
        except httpx.TimeoutException:
            results["everything"] = "client timeout"
        results["everything_end"] = time.monotonic()
        results["everything_s"] = results["everything_end"] - start

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def upload(url: str) -> str:
    response = httpx.post(f"{url}v1/images", files={"file": ("a.png", png_bytes())})
    assert response.status_code == 200, response.text
    return response.json()["id"]


# ------------------------------------------------------------------------------ the lock


def test_priority_lock_serves_interactive_waiters_first():
    lock = PriorityLock()
    order = []
    lock._acquire(interactive=True)  # held by this thread: both others must wait

    def background():
        with lock.background():
            order.append("background")

    def interactive():
        with lock:
            order.append("interactive")

    first = threading.Thread(target=background)
    first.start()
    time.sleep(0.05)  # the background caller waits first ...
    second = threading.Thread(target=interactive)
    second.start()
    wait_until(lambda: lock._interactive_waiting == 1)
    with lock:  # reentrant for its holder
        pass
    lock.release()
    first.join(5)
    second.join(5)
    assert order == ["interactive", "background"]  # ... yet goes second


def test_background_caller_waits_while_an_interactive_one_waits():
    lock = PriorityLock()
    acquired = threading.Event()

    def background():
        with lock.background():
            acquired.set()

    with lock._condition:
        lock._interactive_waiting = 1  # as while a click waits for the lock
    thread = threading.Thread(target=background)
    thread.start()
    assert not acquired.wait(0.2)  # the lock is free, but a click is waiting
    with lock._condition:
        lock._interactive_waiting = 0
        lock._condition.notify_all()
    assert acquired.wait(5)
    thread.join(5)


def test_job_pool_is_bounded_and_cancels_waiting_jobs():
    pool = JobPool(workers=1, queue=1)
    gate = threading.Event()
    running, fut = pool.submit(lambda job: gate.wait(5))
    waiting, waited = pool.submit(lambda job: "ran")
    with pytest.raises(PoolFull, match="1 running plus 1 waiting"):
        pool.submit(lambda job: None)
    waiting.cancel("the client disconnected")
    gate.set()
    assert fut.result(5) is True
    with pytest.raises(JobCancelled, match="the client disconnected"):
        waited.result(5)
    wait_until(lambda: len(pool) == 0)
    pool.close()
    with pytest.raises(PoolFull, match="shutting down"):
        pool.submit(lambda job: None)


# ------------------------------------------------------------------------------ over HTTP


def test_click_during_everything_finishes_first(tiny_sam, slow):
    with BackgroundServer(create_app(tiny_sam)) as server:
        image_id = upload(server.url)
        results: dict = {}
        thread = start_job(server.url, image_id, results)
        wait_until(lambda: slow.calls >= 5)  # the job is running its batches
        start = time.monotonic()
        click = httpx.post(f"{server.url}v1/images/{image_id}/predict", timeout=30,
                           json={"point_coords": [[40, 30]], "point_labels": [1]})
        clicked = time.monotonic()
        thread.join(60)
    assert click.status_code == 200, click.text
    assert results["everything"].status_code == 200, results["everything"].text
    assert slow.calls >= 256  # the job went on to the end
    # The click waited for at most a batch or two, not for the job (>= 2.5 s of batches).
    assert clicked < results["everything_end"]
    assert clicked - start < 1.5, clicked - start
    assert results["everything_s"] > 256 * DECODE_S


class SlowSession:
    """An onnxruntime decoder session whose calls take PROMPT_S seconds per prompt and are
    logged as (thread name, start, prompts)."""

    def __init__(self, session, calls: list) -> None:
        self._session, self.calls = session, calls

    def get_inputs(self):
        return self._session.get_inputs()

    def get_outputs(self):
        return self._session.get_outputs()

    def run(self, names, feeds):
        start = time.monotonic()
        if "point_coords" in feeds:
            prompts = len(feeds["point_coords"])
            self.calls.append((threading.current_thread().name, start, prompts))
            time.sleep(PROMPT_S * prompts)
        return self._session.run(names, feeds)


class WaitLog(PriorityLock):
    """A PriorityLock logging when each interactive caller starts and stops waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[float, float]] = []

    def _acquire(self, interactive: bool) -> None:
        start, reentered = time.monotonic(), self._owner == threading.get_ident()
        super()._acquire(interactive)
        if interactive and not reentered:
            self.waits.append((start, time.monotonic()))


def test_click_during_an_onnx_everything_job_waits_for_one_step(tiny_sam, tmp_path):
    pytest.importorskip("onnxruntime")
    from mobile_sam.onnx.export import export_onnx
    from mobile_sam.onnx.runtime import OnnxPredictor, create_session

    export_onnx(tiny_sam, tmp_path / "bundle")
    calls: list = []
    model = OnnxPredictor(tmp_path / "bundle",
                          session_factory=lambda path, threads: SlowSession(
                              create_session(path, threads), calls))
    app = create_app(model)
    app.state.engine.lock = lock = WaitLog()
    with BackgroundServer(app) as server:
        image_id = upload(server.url)
        results: dict = {}
        # 256 prompts in batches of 64 (the default): seconds of decoder calls.
        thread = threading.Thread(target=lambda: results.update(everything=httpx.post(
            f"{server.url}v1/images/{image_id}/everything", json={"points_per_side": 16},
            timeout=60), everything_end=time.monotonic()))
        thread.start()
        wait_until(lambda: sum(n for _, _, n in calls) >= 24)  # inside the job's first batch
        lock.waits.clear()
        click = httpx.post(f"{server.url}v1/images/{image_id}/predict", timeout=30,
                           json={"point_coords": [[40, 30]], "point_labels": [1]})
        clicked = time.monotonic()
        thread.join(60)
    assert click.status_code == 200, click.text
    assert results["everything"].status_code == 200, results["everything"].text
    job_calls = [(start, n) for name, start, n in calls if name.startswith("mobile-sam-job")]
    assert sum(n for _, n in job_calls) == 256  # the job went on to the end
    assert clicked < results["everything_end"]
    # The job yields the lock after every decoder step: while the click waits, at most the
    # step that took the lock just as the click arrived starts (its session call is timed
    # after it took the lock); holding the lock for a whole batch, the job would start the
    # rest of the batch's dozens of steps.
    [(waited_from, waited_to)] = lock.waits
    assert len([n for start, n in job_calls if waited_from <= start < waited_to]) <= 1
    assert max(n for _, n in job_calls) == 1


def test_disconnect_cancels_the_job(tiny_sam, slow):
    app = create_app(tiny_sam)
    with BackgroundServer(app) as server:
        image_id = upload(server.url)
        results: dict = {}
        start_job(server.url, image_id, results, timeout=0.5).join(30)
        assert results["everything"] == "client timeout"
        wait_until(lambda: len(app.state.jobs) == 0, timeout=5)
        stopped_at = slow.calls
        time.sleep(0.3)
        assert slow.calls == stopped_at  # no batch runs after the job ended
    assert 5 < stopped_at < 200  # it had started, and stopped long before its 256 batches


def test_time_limit_stops_the_job(tiny_sam, slow):
    app = create_app(tiny_sam, everything_timeout=1)
    with BackgroundServer(app) as server:
        image_id = upload(server.url)
        results: dict = {}
        start_job(server.url, image_id, results).join(30)
        response = results["everything"]
        assert response.status_code == 504
        body = response.json()
        assert body["detail"].startswith("everything: the job did not finish within the "
                                         "server's limit of 1 s and was stopped")
        assert 1.0 <= results["everything_s"] < 4.0
        wait_until(lambda: len(app.state.jobs) == 0, timeout=5)
    assert slow.calls < 200


def test_full_pool_answers_503_with_retry_after(tiny_sam, slow):
    app = create_app(tiny_sam, everything_workers=1, everything_queue=0)
    with BackgroundServer(app) as server:
        image_id = upload(server.url)
        results: dict = {}
        thread = start_job(server.url, image_id, results)
        wait_until(lambda: slow.calls >= 2)
        refused = httpx.post(f"{server.url}v1/images/{image_id}/everything", json=SLOW_JOB)
        app.state.jobs.cancel_all("test over")
        thread.join(30)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "the server is busy: 1 jobs are running or waiting" in refused.json()["detail"]
    assert results["everything"].status_code == 503
    assert "the job was stopped: test over" in results["everything"].json()["detail"]


# ------------------------------------------------------------------------------ SIGTERM


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_checkpoint_with_config(tiny_sam, tmp_path_factory) -> Path:
    """`tiny_sam` as a file `mobile-sam serve --model` loads (its config stored with it)."""
    import torch

    from mobile_sam.build import config_to_dict

    path = tmp_path_factory.mktemp("tiny") / "tiny_with_config.pt"
    torch.save({"config": config_to_dict(tiny_sam.config), "model": tiny_sam.state_dict()}, path)
    return path


def test_sigterm_stops_running_jobs_and_exits_quickly(tiny_checkpoint_with_config):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "PYTHONPATH": SRC, "MOBILE_SAM_EVERYTHING_WORKERS": "2"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mobile_sam", "serve", "--model", str(tiny_checkpoint_with_config),
         "--port", str(port), "--backend", "torch", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()[1].decode()
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        image_id = upload(url)
        results: list = []

        def job() -> None:  # 86,016 model calls: many minutes of work
            try:
                results.append(httpx.post(
                    f"{url}v1/images/{image_id}/everything", timeout=60,
                    json={"points_per_side": 64, "crop_n_layers": 2, "points_per_batch": 1}))
            except httpx.TransportError as exc:
                results.append(exc)

        threads = [threading.Thread(target=job) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        assert not results  # both still running
        server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        code = server.wait(timeout=15)
        took = time.monotonic() - start
    finally:
        if server.poll() is None:
            server.kill()
        errors = server.communicate()[1].decode()
    for thread in threads:
        thread.join(10)
    assert took < 5.0, took
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has stopped
    assert len(results) == 2
    for result in results:  # told why, or the connection closed at exit
        if isinstance(result, httpx.Response):
            assert result.status_code == 503, (result.text, errors)
            assert "the server is stopping" in result.json()["detail"]


def test_background_server_stops_promptly_during_a_job(tiny_sam, slow):
    app = create_app(tiny_sam)
    server = BackgroundServer(app)
    server.start()
    image_id = upload(server.url)
    results: dict = {}
    thread = start_job(server.url, image_id, results)
    wait_until(lambda: slow.calls >= 2)
    start = time.monotonic()
    server.stop()
    took = time.monotonic() - start
    thread.join(10)
    assert took < 2.0, took
    wait_until(lambda: len(app.state.jobs) == 0, timeout=5)
    assert slow.calls < 200
