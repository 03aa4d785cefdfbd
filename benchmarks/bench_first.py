"""Time to the first mask in a fresh process: cold (empty $MOBILE_SAM_HOME: nothing converted
yet) and warm (conversions cached), for the command line and the Python API, each against the
eager torch path of the same call, measured in the same rounds.

    python benchmarks/bench_first.py [--rounds 3] [--checkpoint PATH] [--image PATH]

Every measurement is its own process, so "first" means first. Each round runs every path once,
one after the other (eager, cold, warm for Python, then for the command line, the order
rotating from round to round); a ratio is a path's time over eager's in the same round, and the table gives the median ratio over the
rounds (min-max in brackets).

- Python: `SamPredictor(model)` (the defaults: backend and precision "auto", conversion in the
  background); `set_image(photo)`; `predict(one point)`, timed from the predictor's creation
  to the mask, after imports and loading the checkpoint (the same for every path). "exit" is
  the process's whole time: a cold process waits at exit for the background conversion, which
  fills the cache for the next ones.
- Command line: `mobile-sam segment PHOTO --point X,Y` (one image: eager unless the converted
  model is cached), the process's wall time; eager is the same command with `--backend torch`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REFERENCE, fixture_checkpoint, machine, table  # noqa: E402

PYTHON_FIRST_MASK = """
import sys, time
import numpy as np, torch
from PIL import Image
torch.set_num_threads(2)
from mobile_sam import SamPredictor, sam_model_registry
model = sam_model_registry["vit_t"](checkpoint=sys.argv[1]).eval()
image = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
start = time.perf_counter()
predictor = SamPredictor(model, backend=sys.argv[3])
predictor.set_image(image)
masks, _, _ = predictor.predict(np.array([[200.0, 150.0]]), np.array([1]))
print("FIRST", time.perf_counter() - start, flush=True)
"""


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, MOBILE_SAM_HOME=str(home))
    env.pop("MOBILE_SAM_CONVERSION", None)
    env.pop("MOBILE_SAM_BACKEND", None)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def python_run(home: Path, checkpoint: str, image: str, backend: str) -> tuple[float, float]:
    """(seconds to the first mask, seconds of the whole process)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PYTHON_FIRST_MASK, checkpoint, image, backend],
                         env=_env(home), capture_output=True, text=True, check=True).stdout
    total = time.perf_counter() - start
    first = float(next(line for line in out.splitlines() if line.startswith("FIRST")).split()[1])
    return first, total


def cli_run(home: Path, checkpoint: str, image: str, backend: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mobile_sam", "segment", image, "--point", "200,150",
                    "--model", checkpoint, "--threads", "2", "--backend", backend,
                    "--out", str(out)], env=_env(home), capture_output=True, check=True)
    return time.perf_counter() - start


def summary(values: list[float], eager: list[float]) -> list[str]:
    ratios = [v / e for v, e in zip(values, eager)]
    return [f"{statistics.median(values):.2f} s",
            f"x{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", default=None, help="vit_t checkpoint (default: fixture_a's)")
    parser.add_argument("--image", default=str(REFERENCE / "fixture_a" / "truck_640x427.png"))
    args = parser.parse_args()
    args.checkpoint = args.checkpoint or str(fixture_checkpoint())
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="bench_first-"))
    times: dict[str, list[float]] = {}
    try:
        warm = work / "warm-home"
        # The warm cache: filled by one cold Python run (it waits for its conversion at exit).
        python_run(warm, args.checkpoint, args.image, "auto")
        for r in range(args.rounds):
            cold = work / f"cold-{r}"
            py_paths = [("py eager", work / "eager", "torch"), ("py cold", cold / "py", "auto"),
                        ("py warm", warm, "auto")]
            cli_paths = [("cli eager", work / "eager", "torch"), ("cli cold", cold / "cli", "auto"),
                         ("cli warm", warm, "auto")]
            turn = r % 3  # the order rotates: no path always runs first (the load drifts)
            for name, home, backend in py_paths[turn:] + py_paths[:turn]:
                first, total = python_run(home, args.checkpoint, args.image, backend)
                times.setdefault(name, []).append(first)
                times.setdefault(name + " exit", []).append(total)
            for name, home, backend in cli_paths[turn:] + cli_paths[:turn]:
                times.setdefault(name, []).append(
                    cli_run(home, args.checkpoint, args.image, backend, work / "out"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for surface, label in (("py", "Python set_image + predict"), ("cli", "mobile-sam segment")):
        eager = times[f"{surface} eager"]
        rows.append([label, "eager torch", *summary(eager, eager)])
        for kind in ("cold", "warm"):
            rows.append(["", kind, *summary(times[f"{surface} {kind}"], eager)])
        if surface == "py":
            rows.append(["", "cold, process exit", *summary(times["py cold exit"],
                                                           times["py eager exit"])])
    print(table(rows, ["call", "path", "median", "vs eager (same rounds)"]))


if __name__ == "__main__":
    main()
