"""Bad inputs and faults on every surface: how many get a clear answer.

Tries each bad input on the Python API, the CLI (in-process) and the REST API (real HTTP), and
counts the clear answers: a ValueError/TypeError raised by mobile_sam itself (Python); exit
code 1 or 2 with one line on stderr and no traceback (CLI); a JSON 4xx (or the documented
503/504) with a ``detail`` naming the problem (REST). Then the faults: a client that
disconnects, a job that runs out of time, SIGTERM during two "everything" jobs, temporary files
of a killed writer. A small random model is used: the answers, not the speed, are measured.
With --load, also runs `bench_serve.py --with-everything` at a small size.

    python benchmarks/bench_reliability.py [--load]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

import mobile_sam
from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
from mobile_sam.build import SamConfig, build_sam, config_to_dict, load_sam
from mobile_sam.cli import main as cli_main
from mobile_sam.modeling import TinyViTConfig
from mobile_sam.serve import BackgroundServer, create_app

PACKAGE_DIR = str(Path(mobile_sam.__file__).resolve().parent)
Row = tuple[str, str, str, bool]  # surface, input, answer, clear


def small_model() -> torch.nn.Module:
    """A TinyViT SAM with a 256-pixel input: the real code paths, fast on any CPU."""
    torch.manual_seed(0)
    encoder = TinyViTConfig(img_size=256, embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1),
                            num_heads=(1, 2, 3, 4), window_sizes=(7, 7, 7, 7), num_classes=10,
                            out_chans=32)
    return build_sam(SamConfig("bench-small", encoder, prompt_embed_dim=32, image_size=256,
                               embedding_size=16, decoder_heads=2, decoder_mlp_dim=64))


def png(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(shape, 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG announcing width x height pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------ Python API


def python_rows(model: Any, work: Path) -> list[Row]:
    predictor = SamPredictor(model)
    predictor.set_image(np.zeros((40, 60, 3), np.uint8))
    bad_pickle = work / "evil.pt"  # a checkpoint that would call os.system when loaded
    torch.save({"model": _Evil()}, bad_pickle)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("SamPredictor(None)", lambda: SamPredictor(None)),
        ("set_image(5000x1)", lambda: predictor.set_image(np.zeros((1, 5000, 3), np.uint8))),
        ("set_image(float image)", lambda: predictor.set_image(np.zeros((9, 9, 3), np.float32))),
        ("set_image(empty)", lambda: predictor.set_image(np.zeros((0, 9, 3), np.uint8))),
        ("predict(NaN point)", lambda: predictor.predict(np.array([[np.nan, 1.0]]),
                                                         np.array([1]))),
        ("predict(label 7)", lambda: predictor.predict(np.array([[1.0, 1.0]]), np.array([7]))),
        ("predict(box x1 < x0)", lambda: predictor.predict(box=np.array([10, 0, 0, 10]))),
        ("generator(points_per_side=100000)",
         lambda: SamAutomaticMaskGenerator(model, points_per_side=100000)),
        ("generator(crop_n_layers=40)", lambda: SamAutomaticMaskGenerator(model, crop_n_layers=40)),
        ("generator(points_per_batch=0)",
         lambda: SamAutomaticMaskGenerator(model, points_per_batch=0)),
        ("generator(pred_iou_thresh=inf)",
         lambda: SamAutomaticMaskGenerator(model, pred_iou_thresh=float("inf"))),
        ("load_sam(malicious pickle)", lambda: load_sam(bad_pickle)),
    ]
    rows = []
    for name, call in cases:
        try:
            call()
        except (ValueError, TypeError, OSError) as exc:
            message = str(exc)
            clear = (type(exc).__module__.startswith("mobile_sam") or "must" in message) \
                and "weights_only=False" not in message and bool(message)
            if name.startswith("load_sam"):
                clear = clear and "is not a plain weights file" in message
            rows.append(("python", name, f"{type(exc).__name__}: {_short(message)}", clear))
        except Exception as exc:  # noqa: BLE001 - counted as unclear
            rows.append(("python", name, f"{type(exc).__name__}: {_short(str(exc))}", False))
        else:
            rows.append(("python", name, "accepted", False))
    return rows


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _short(text: str, limit: int = 90) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ CLI


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, err.getvalue()


def cli_rows(checkpoint: Path, work: Path) -> list[Row]:
    thin = work / "thin.png"
    thin.write_bytes(png((1, 5000, 3)))
    image = work / "ok.png"
    image.write_bytes(png((40, 60, 3)))
    model = ["--model", str(checkpoint)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        cases = [
            ("everything --points-per-side 100000",
             ["everything", str(image), "--points-per-side", "100000", *model], 2),
            ("everything --crop-n-layers 40",
             ["everything", str(image), "--crop-n-layers", "40", *model], 2),
            ("everything --points-per-batch 0",
             ["everything", str(image), "--points-per-batch", "0", *model], 2),
            ("everything on a 5000x1 image",
             ["everything", str(thin), "--out", str(work / "out"), *model], 1),
            ("segment a 5000x1 image", ["segment", str(thin), "--point", "10,0",
                                        "--out", str(work / "out"), *model], 1),
            ("segment --point outside", ["segment", str(image), "--point", "999,999",
                                         "--out", str(work / "out"), *model], 1),
            ("serve --max-upload-mb inf", ["serve", "--max-upload-mb", "inf"], 2),
            ("serve --cache-mb inf", ["serve", "--cache-mb", "inf"], 2),
            ("serve --workers 0", ["serve", "--workers", "0"], 2),
            ("serve --everything-timeout -1", ["serve", "--everything-timeout", "-1"], 2),
            ("serve --port 70000", ["serve", "--port", "70000"], 2),
            ("serve on a busy port", ["serve", "--port", busy, *model], 1),
        ]
        rows = []
        for name, argv, want in cases:
            code, err = run_cli(argv)
            lines = [line for line in err.splitlines() if line.strip()]
            last = lines[-1] if lines else ""
            one_line = len(lines) == 1 or (code == 2 and last.startswith("mobile-sam")
                                            and lines[0].startswith("usage:"))
            clear = code == want and one_line and "Traceback" not in err
            rows.append(("cli", name, f"exit {code}: {_short(last)}", clear))
    return rows


# ------------------------------------------------------------------------------ REST


def rest_rows(model: Any) -> list[Row]:
    app = create_app(model, token="t0ken", max_pixels=10_000_000)
    auth = {"Authorization": "Bearer t0ken"}
    rows: list[Row] = []
    with BackgroundServer(app) as server, \
            httpx.Client(base_url=server.url, timeout=60, headers=auth) as http:
        image_id = http.post("/v1/images", files={"file": ("a.png", png((40, 60, 3)))}
                             ).json()["id"]
        predict = f"/v1/images/{image_id}/predict"
        everything = f"/v1/images/{image_id}/everything"

        def upload(data: bytes) -> httpx.Response:
            return http.post("/v1/images", files={"file": ("x.png", data)})

        cases: list[tuple[str, Callable[[], httpx.Response], tuple[int, ...]]] = [
            ("upload a 5000x1 image", lambda: upload(png((1, 5000, 3))), (422,)),
            ("upload a 1x5000 image", lambda: upload(png((5000, 1, 3))), (422,)),
            ("upload text", lambda: upload(b"hello"), (415,)),
            ("upload nothing", lambda: upload(b""), (422,)),
            ("upload a 100000x100000 header", lambda: upload(png_header(100000, 100000)),
             (413,)),
            ("upload as JSON", lambda: http.post("/v1/images", json={"file": "x"}), (415,)),
            ("predict outside the image",
             lambda: http.post(predict, json={"point_coords": [[999, 9]], "point_labels": [1]}),
             (422,)),
            ("predict NaN", lambda: http.post(
                predict, content=b'{"point_coords": [[NaN, 1]], "point_labels": [1]}',
                headers={"Content-Type": "application/json"}), (400, 422)),
            ("predict label 7",
             lambda: http.post(predict, json={"point_coords": [[9, 9]], "point_labels": [7]}),
             (422,)),
            ("predict malformed JSON", lambda: http.post(
                predict, content=b"{", headers={"Content-Type": "application/json"}), (400,)),
            ("predict 2 MB of JSON", lambda: http.post(
                predict, content=b" " * 2**21, headers={"Content-Type": "application/json"}),
             (413,)),
            ("predict unknown id", lambda: http.post("/v1/images/nope/predict",
                                                     json={"box": [0, 0, 1, 1]}), (404,)),
            ("everything points_per_side=100000",
             lambda: http.post(everything, json={"points_per_side": 100000}), (422,)),
            ("everything crop_n_layers=40",
             lambda: http.post(everything, json={"crop_n_layers": 40}), (422,)),
            ("everything points_per_batch=0",
             lambda: http.post(everything, json={"points_per_batch": 0}), (422,)),
            ("everything unknown option",
             lambda: http.post(everything, json={"points": 3}), (422,)),
            ("no token", lambda: httpx.get(server.url + f"v1/images/{image_id}/embedding"),
             (401,)),
        ]
        for name, call, want in cases:
            try:
                response = call()
            except httpx.HTTPError as exc:
                rows.append(("rest", name, f"{type(exc).__name__}", False))
                continue
            try:
                detail = response.json().get("detail", "")
            except ValueError:
                detail = ""
            clear = response.status_code in want and bool(detail) \
                and PACKAGE_DIR not in response.text
            rows.append(("rest", name, f"{response.status_code}: {_short(str(detail))}", clear))
    return rows


# ------------------------------------------------------------------------------ faults


def fault_rows(model: Any, checkpoint: Path, work: Path) -> list[Row]:
    rows: list[Row] = []
    slow_job = {"points_per_side": 64, "points_per_batch": 1, "crop_n_layers": 2}
    # A disconnecting client and a time limit, in one server.
    app = create_app(model, everything_timeout=2)
    with BackgroundServer(app) as server:
        image_id = httpx.post(server.url + "v1/images",
                              files={"file": ("a.png", png((40, 60, 3)))}).json()["id"]
        url = f"{server.url}v1/images/{image_id}/everything"
        httpx.post(url, json={"points_per_side": 2})  # warm-up: backends compile on first use
        try:
            httpx.post(url, json=slow_job, timeout=0.5)
        except httpx.TimeoutException:
            pass
        start = time.monotonic()
        while len(app.state.jobs) and time.monotonic() - start < 10:
            time.sleep(0.02)
        stopped = time.monotonic() - start
        rows.append(("fault", "client disconnects during everything",
                     f"job stopped {stopped:.2f} s after", not len(app.state.jobs)))
        start = time.monotonic()
        response = httpx.post(url, json=slow_job, timeout=30)
        took = time.monotonic() - start
        while len(app.state.jobs) and time.monotonic() - start < 10:
            time.sleep(0.02)
        ended = time.monotonic() - start
        rows.append(("fault", "everything past its 2 s limit",
                     f"{response.status_code} after {took:.1f} s, job ended at {ended:.1f} s",
                     response.status_code == 504 and ended < 4))
    # SIGTERM while two jobs run, on a real `mobile-sam serve` process.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "MOBILE_SAM_EVERYTHING_WORKERS": "2"}
    server = subprocess.Popen([sys.executable, "-m", "mobile_sam", "serve", "--model",
                               str(checkpoint), "--port", str(port), "--backend", "torch",
                               "--log-level", "critical"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        image_id = httpx.post(base + "v1/images",
                              files={"file": ("a.png", png((40, 60, 3)))}).json()["id"]
        threads = [threading.Thread(target=_ignore_errors, args=(
            base + f"v1/images/{image_id}/everything", slow_job)) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        server.send_signal(signal.SIGTERM)
        start = time.monotonic()
        server.wait(timeout=30)
        took = time.monotonic() - start
        rows.append(("fault", "SIGTERM during 2 everything jobs", f"exited in {took:.2f} s",
                     took < 5))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # Temporary files of a killed writer.
    out = work / "killed"
    out.mkdir()
    code = ("import sys, time\nfrom mobile_sam.io import atomic_write\n"
            "atomic_write(sys.argv[1], lambda f: (f.write(b'x'), f.flush(), print('w', "
            "flush=True), time.sleep(60)))\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(out / "a.json")],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    writer.stdout.readline()
    writer.kill()
    writer.wait()
    writer.stdout.close()
    image = work / "ok.png"
    run_cli(["everything", str(image), "--out", str(out), "--points-per-side", "2",
             "--model", str(checkpoint)])
    left = list(out.glob("*.tmp")) + list(out.glob(".*.tmp"))
    rows.append(("fault", "everything rerun after a SIGKILLed write",
                 f"{len(left)} temporary file(s) left", not left))
    return rows


def _ignore_errors(url: str, body: dict) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=60)


# ------------------------------------------------------------------------------ report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", action="store_true",
                        help="also run bench_serve.py --with-everything at a small size")
    args = parser.parse_args(argv)
    model = small_model()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        checkpoint = work / "small.pt"
        torch.save({"config": config_to_dict(model.config), "model": model.state_dict()},
                   checkpoint)
        rows = python_rows(model, work) + cli_rows(checkpoint, work) + rest_rows(model)
        faults = fault_rows(model, checkpoint, work)
    print("| surface | bad input | answer | clear |")
    print("|---|---|---|:-:|")
    for surface, name, answer, clear in rows + faults:
        print(f"| {surface} | {name} | {answer.replace('|', '/')} | {'yes' if clear else 'NO'} |")
    print()
    for surface in ("python", "cli", "rest"):
        part = [r for r in rows if r[0] == surface]
        print(f"{surface}: {sum(r[3] for r in part)} / {len(part)} bad inputs answered clearly")
    print(f"faults: {sum(r[3] for r in faults)} / {len(faults)} survived as specified")
    if args.load:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_serve

        print()
        bench_serve.main(["--with-everything", "--clients", "2", "--requests", "15",
                          "--images", "1", "--everything-points", "16"])
    return 0 if all(r[3] for r in rows + faults) else 1


if __name__ == "__main__":
    sys.exit(main())
