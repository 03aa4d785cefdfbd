"""Load run of the web service: N clients predicting on a few images over real HTTP.

Starts the app with uvicorn on 127.0.0.1 (a free port) in this process, uploads the images,
then runs --clients threads, each sending up to --requests predict calls (one random positive
point, sometimes a box) on the images in turn. Prints latency percentiles, throughput and the
error count. Bounded: it stops after --requests per client or --max-seconds, whichever first.

    python benchmarks/bench_serve.py                       # vit_t, random weights
    python benchmarks/bench_serve.py --model ~/.cache/mobile_sam/mobile_sam.pt --clients 4
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
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

    with BackgroundServer(create_app(model)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
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

        deadline = time.monotonic() + args.max_seconds
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            rng = np.random.default_rng(index)
            with httpx.Client(base_url=server.url, timeout=60) as session:
                for i in range(args.requests):
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
                            errors.append(problem)
                        else:
                            latencies.append(elapsed)

        wall_start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - wall_start

    done = len(latencies)
    planned = args.clients * args.requests
    ms = [v * 1000 for v in latencies]
    print()
    print("| metric | value |")
    print("|---|---:|")
    print(f"| upload + embedding, per image (s) | {statistics.median(uploads):.2f} |")
    print(f"| predict requests ok / planned | {done} / {planned} |")
    print(f"| errors | {len(errors)} |")
    print(f"| latency p50 (ms) | {percentile(ms, 50):.1f} |")
    print(f"| latency p95 (ms) | {percentile(ms, 95):.1f} |")
    print(f"| latency max (ms) | {max(ms, default=float('nan')):.1f} |")
    print(f"| throughput (req/s) | {done / wall:.2f} |")
    print(f"| wall time (s) | {wall:.1f} |")
    if done < planned and not errors:
        print(f"stopped at --max-seconds {args.max_seconds:g} before all requests were sent")
    for problem in errors[:5]:
        print("error:", problem, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
