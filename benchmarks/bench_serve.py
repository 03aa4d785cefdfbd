"""Load run of the web service: N clients predicting on a few images over real HTTP.

Starts the app with uvicorn on 127.0.0.1 (a free port) in this process, uploads the images,
then runs --clients threads, each sending up to --requests predict calls (one random positive
point, sometimes a box) on the images in turn. Prints latency percentiles, throughput and the
error count. Bounded: it stops after --requests per client or --max-seconds, whichever first.

With --with-everything the load runs twice in one process: alone, then while two
"everything" requests run without pause (each restarted when it ends); it prints both
predict p95 and their ratio, which fair scheduling keeps near 1 (target <= 2).

    python benchmarks/bench_serve.py                       # vit_t, random weights
    python benchmarks/bench_serve.py --model ~/.cache/mobile_sam/mobile_sam.pt --clients 4
    python benchmarks/bench_serve.py --with-everything --clients 2 --requests 20
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from mobile_sam.build import build_sam, load_sam
from mobile_sam.serve import BackgroundServer, create_app

REPO = Path(__file__).resolve().parents[1]
IMAGES = [REPO / "examples" / "bus_480x640.png",
          REPO.parent / "shared" / "reference" / "fixture_a" / "dog_517x333.png"]


def image_bytes(count: int) -> list[bytes]:
    """The example photos that exist, then generated images, as PNG bytes."""
    out = [p.read_bytes() for p in IMAGES if p.is_file()][:count]
    rng = np.random.default_rng(0)
    while len(out) < count:
        h, w = 480, 640
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, rng.uniform(0, 255, (h, w))], -1)
        buffer = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="checkpoint path (default: vit_t with random weights; same speed)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=100, help="predict calls per client")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--mask-format", choices=["png", "rle"], default="png")
    parser.add_argument("--max-seconds", type=float, default=180.0,
                        help="stop sending new requests after this long")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--backend", default="auto",
                        help="encoder/decoder backend, as for SamPredictor (default auto)")
    parser.add_argument("--with-everything", action="store_true",
                        help="run the load again while 'everything' jobs run; print the ratio")
    parser.add_argument("--everything-jobs", type=int, default=2,
                        help="'everything' requests kept running (default 2)")
    parser.add_argument("--everything-points", type=int, default=32,
                        help="points_per_side of those requests (default 32)")
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.images) < 1 or args.max_seconds <= 0:
        parser.error("--clients, --requests, --images and --max-seconds must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_sam(args.model) if args.model else build_sam("vit_t")
    datas = image_bytes(args.images)
    print(f"model: {args.model or 'vit_t (random weights)'}, torch threads: "
          f"{torch.get_num_threads()}, clients: {args.clients}, requests/client: "
          f"{args.requests}, images: {len(datas)}, masks as {args.mask_format}")

    app = create_app(model, backend=args.backend,
                     everything_workers=max(1, args.everything_jobs))
    # A long timeout: the first calls may compile the backend's graphs.
    with BackgroundServer(app) as server, \
            httpx.Client(base_url=server.url, timeout=600) as http:
        uploads = []
        infos = []
        for data in datas:
            start = time.perf_counter()
            response = http.post("/v1/images", files={"file": ("image.png", data)})
            response.raise_for_status()
            uploads.append(time.perf_counter() - start)
            infos.append(response.json())
        for info in infos:  # warm-up, not timed
            http.post(f"/v1/images/{info['id']}/predict",
                      json={"point_coords": [[1, 1]], "point_labels": [1]}).raise_for_status()

        phases = [("alone", 0)]
        if args.with_everything:
            phases.append((f"with {args.everything_jobs} everything jobs",
                           args.everything_jobs))
        def running_jobs() -> int:
            return len(app.state.jobs)

        # Unmeasured: every request variant once per client, so that first-call costs
        # (graph compilation, caches) fall on no phase.
        run_phase(server.url, infos, args, 0, running_jobs, requests=6)
        results = [run_phase(server.url, infos, args, jobs, running_jobs)
                   for _, jobs in phases]
        app.state.jobs.cancel_all("the benchmark is over")

    planned = args.clients * args.requests
    print()
    print("| metric | " + " | ".join(name for name, _ in phases) + " |")
    print("|---|" + "---:|" * len(phases))
    print(f"| upload + embedding, per image (s) | {statistics.median(uploads):.2f} |"
          + " |" * (len(phases) - 1))
    rows = [
        ("predict requests ok / planned", lambda r: f"{len(r.latencies)} / {planned}"),
        ("errors", lambda r: f"{len(r.errors)}"),
        ("latency p50 (ms)", lambda r: f"{percentile(r.ms, 50):.1f}"),
        ("latency p95 (ms)", lambda r: f"{percentile(r.ms, 95):.1f}"),
        ("latency max (ms)", lambda r: f"{max(r.ms, default=float('nan')):.1f}"),
        ("throughput (req/s)", lambda r: f"{len(r.latencies) / r.wall:.2f}"),
        ("wall time (s)", lambda r: f"{r.wall:.1f}"),
        ("everything jobs running (mean while predicting)",
         lambda r: f"{statistics.fmean(r.running or [0]):.1f}"),
        ("everything jobs finished", lambda r: f"{r.jobs_done}"),
    ]
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    if args.with_everything:
        ratio = percentile(results[1].ms, 95) / percentile(results[0].ms, 95)
        print(f"\npredict p95 with {args.everything_jobs} everything jobs / alone: "
              f"{ratio:.2f}x (target <= 2x)")
    errors = [e for r in results for e in r.errors]
    if any(len(r.latencies) < planned for r in results) and not errors:
        print(f"stopped at --max-seconds {args.max_seconds:g} before all requests were sent")
    for problem in errors[:5]:
        print("error:", problem, file=sys.stderr)
    return 1 if errors else 0


class Phase:
    """The predict latencies and errors of one load phase."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.wall = 0.0
        self.jobs_done = 0
        self.running: list[int] = []  # "everything" jobs running at each predict's end

    @property
    def ms(self) -> list[float]:
        return [v * 1000 for v in self.latencies]


def run_phase(url: str, infos: list[dict], args: argparse.Namespace, jobs: int,
              running_jobs: Callable[[], int], requests: int | None = None) -> Phase:
    """--clients threads sending ``requests`` (default --requests) predicts each, while
    ``jobs`` threads keep an "everything" request running each (restarted when it ends);
    ``running_jobs()`` tells how many jobs the server runs."""
    phase = Phase()
    deadline = time.monotonic() + args.max_seconds
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        with httpx.Client(base_url=url, timeout=120) as session:
            for i in range(requests or args.requests):
                if time.monotonic() > deadline:
                    return
                info = infos[(index + i) % len(infos)]
                w, h = info["width"], info["height"]
                x, y = rng.uniform(0, w), rng.uniform(0, h)
                body = {"point_coords": [[x, y]], "point_labels": [1],
                        "multimask_output": bool(i % 2), "mask_format": args.mask_format}
                if i % 3 == 0:
                    body["box"] = [max(0, x - w / 5), max(0, y - h / 5),
                                   min(w, x + w / 5), min(h, y + h / 5)]
                start = time.perf_counter()
                try:
                    response = session.post(f"/v1/images/{info['id']}/predict", json=body)
                    ok = response.status_code == 200 and len(response.json()["masks"]) > 0
                    problem = None if ok else \
                        f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    if problem:
                        phase.errors.append(problem)
                    else:
                        phase.latencies.append(elapsed)
                        phase.running.append(running_jobs())

    def everything(index: int) -> None:
        info = infos[index % len(infos)]
        body = {"points_per_side": args.everything_points}
        while not stop.is_set():
            try:  # a short timeout: the job is abandoned (and cancelled) at the end
                with httpx.Client(base_url=url, timeout=args.max_seconds) as session:
                    response = session.post(f"/v1/images/{info['id']}/everything", json=body)
                if response.status_code == 200:
                    with lock:
                        phase.jobs_done += 1
            except httpx.HTTPError:
                return

    runners = [threading.Thread(target=everything, args=(i,), daemon=True) for i in range(jobs)]
    for runner in runners:
        runner.start()
    if jobs:
        time.sleep(1.0)  # let the jobs start their batches
    wall_start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    phase.wall = time.perf_counter() - wall_start
    stop.set()
    return phase


if __name__ == "__main__":
    sys.exit(main())
