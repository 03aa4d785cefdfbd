"""The fast paths against the plain eager path, side by side in one run.

    python benchmarks/bench_speed.py [--threads 2] [--rounds 15] [--crops | --only-crops] [--quick]

"eager" stands in for the original code: the same operations as the original MobileSAM
(torch eager encoder with the original's layouts and its stage 0 computed whole rather than
by groups, see `_as_original`; the mask decoder module on one copy of the embedding per
prompt; every mask upsampled to 1024² and then to the image size; the automatic generator
upsampling every candidate mask before filtering).

set_image and predict: every path is set up in its own worker process (its peak RSS is its
own), all alive at once; then, round after round, each worker makes one call in turn (the
order rotating each round, a short pause between calls). The machine's speed drifts within
tens of seconds (seen here: per-round ratios from x1.9 to x3.8 when rounds were whole
processes), so each round's ratio compares calls seconds apart; the speed-up is the median
of the per-round ratios to eager (the interquartile range in brackets).
Segment-everything: each path in its own process (minutes per run), timed once.
Agreement: masks of the fast path against the eager path (IoU), and for the automatic
generator the share of eager masks matched one-to-one at IoU >= 0.9.
Photo: bus 480x640 rotated to 640x480; weights: the golden fixture's (random; speed does not
depend on the values).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BUS_PHOTO, Worker, fixture_checkpoint, machine, run_isolated, table  # noqa: E402

POINTS = [[320.0, 240.0], [100.0, 400.0], [500.0, 120.0], [250.0, 60.0], [600.0, 450.0]]
PAUSE = 0.2  # seconds between two timed calls (of different workers)


def _photo():
    import numpy as np
    from PIL import Image

    bus = np.asarray(Image.open(BUS_PHOTO).convert("RGB"))
    return np.ascontiguousarray(np.rot90(bus))  # 640 wide, 480 high


def _model(threads: int):
    import torch

    from mobile_sam import sam_model_registry

    torch.set_num_threads(threads)
    return sam_model_registry["vit_t"](checkpoint=str(fixture_checkpoint()))


def _as_original(model):
    """`model`'s encoder computing what it computes with the original's operations: stage 0
    whole (not by channel groups), one qkv projection split on the last axis and the scale on
    the scores, tokens <-> maps as transposes of strided views. mobile_sam's own layouts are
    faster in eager torch too (~15 %), so the eager baseline must not use them."""
    import types

    from mobile_sam.modeling.tiny_vit import MBConv, PatchMerging, TinyViTBlock, WindowAttention

    originals = {WindowAttention: _original_attention, TinyViTBlock: _original_block,
                 PatchMerging: _original_patch_merging}
    for module in model.modules():
        if isinstance(module, MBConv):
            module.hidden_groups = 1
        if type(module) in originals:
            module.forward = types.MethodType(originals[type(module)], module)
    return model


def _original_attention(self, x):
    b, n, _ = x.shape
    x = self.norm(x)
    q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split(self.head_dim, dim=3)
    q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
    return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1))


def _original_block(self, x):
    b, n, c = x.shape
    x = x + self.drop_path(self._windowed_attention(x))
    x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
    x = self.local_conv(x).view(b, c, n).transpose(1, 2)
    return x + self.drop_path(self.mlp(x))


def _original_patch_merging(self, x):
    if x.ndim == 3:
        b, _, c = x.shape
        x = x.view(b, self.resolution, self.resolution, c).permute(0, 3, 1, 2)
    x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
    return x.flatten(2).transpose(1, 2)


class EagerPredictor:
    """The original predictor's operations, for timing: eager encoder, the decoder module with
    the embedding repeated per prompt, two-step upsampling of every mask."""

    mask_threshold = 0.0

    def __init__(self, model):
        from mobile_sam.transforms import ResizeLongestSide

        self.model = _as_original(model)
        self.transform = ResizeLongestSide(model.img_size)
        self._upscaled = None

    def set_image(self, image):
        import torch

        resized = self.transform.apply_image(image)
        x = torch.as_tensor(resized.transpose(2, 0, 1).copy())[None]
        with torch.inference_mode():
            self.features = self.model.image_encoder(self.model.preprocess(x))
        self.original_size, self.input_size = image.shape[:2], resized.shape[:2]

    def reset_image(self):
        self.features = None

    def _decode(self, coords, labels, multimask):
        import torch

        m = self.model
        with torch.inference_mode():
            sparse, dense = m.prompt_encoder((coords, labels), None, None)
            emb = torch.repeat_interleave(self.features, coords.shape[0], dim=0)
            low, iou = m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
            full = m.postprocess_masks(low, self.input_size, self.original_size)
        return full, iou, low

    def predict(self, point_coords, point_labels, multimask_output=True):
        import torch

        coords = torch.as_tensor(self.transform.apply_coords(point_coords, self.original_size),
                                 dtype=torch.float)[None]
        labels = torch.as_tensor(point_labels, dtype=torch.int)[None]
        full, iou, low = self._decode(coords, labels, multimask_output)
        return (full > 0)[0].numpy(), iou[0].numpy(), low[0].numpy()

    def predict_point_batch(self, points, min_iou=None):
        import torch

        coords = torch.as_tensor(self.transform.apply_coords(points, self.original_size),
                                 dtype=torch.float)[:, None, :]
        labels = torch.ones(coords.shape[:2], dtype=torch.int)
        full, iou, low = self._decode(coords, labels, True)  # every mask upsampled, as before
        low, full = low.numpy(), full.flatten(0, 1).numpy()
        self._full = {m.tobytes(): i for i, m in enumerate(low.reshape(-1, *low.shape[2:]))}
        self._full_masks = full
        return low, iou.numpy()

    def upscale_logits(self, low_res):
        """The already upsampled masks (the original paid for all of them in the batch)."""
        return self._full_masks[[self._full[m.tobytes()] for m in low_res]]


def _mask_iou(a, b):
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def _predictor(kind: str, model):
    """"eager" (the original's operations) or "backend:precision" (a SamPredictor)."""
    from mobile_sam import SamPredictor

    if kind == "eager":
        return EagerPredictor(model)
    backend, _, precision = kind.partition(":")
    return SamPredictor(model, backend=backend, precision=precision or "fp32")


class PathJob:
    """One path of set_image or predict, set up in a worker process (see `_common.Worker`):
    `timed()` runs one set_image, or 8 predict calls, and returns seconds per call; `result()`
    gives the masks of the 5 points."""

    def __init__(self, what: str, kind: str, threads: int) -> None:
        import numpy as np

        self.what, self.photo = what, _photo()
        self.predictor = _predictor(kind, _model(threads))
        self.point, self.label = np.array([POINTS[0]]), np.array([1])
        self.predictor.set_image(self.photo)  # export / compile once, outside the timing
        self.predictor.predict(self.point, self.label)
        self.timed()  # warm-up

    def timed(self) -> float:
        import time

        start = time.perf_counter()
        if self.what == "set_image":
            self.predictor.set_image(self.photo)
            return time.perf_counter() - start
        for _ in range(8):
            self.predictor.predict(self.point, self.label)
        return (time.perf_counter() - start) / 8

    def result(self) -> dict:
        import numpy as np

        masks = [np.packbits(self.predictor.predict(np.array([q]), np.array([1]))[0]).tolist()
                 for q in POINTS]
        return {"masks": masks}


# The golden fixture's generator thresholds: with its random weights, the original defaults
# (0.88 / 0.95) keep no mask at all, so agreement is also measured at these.
FIXTURE_THRESHOLDS = {"pred_iou_thresh": 0.4, "stability_score_thresh": 0.3,
                      "min_mask_region_area": 16}


def everything_job(kind: str, threads: int, crops: int, thresholds: dict | None = None) -> dict:
    import time

    import numpy as np

    from mobile_sam import SamAutomaticMaskGenerator, SamPredictor

    model, photo = _model(threads), _photo()
    mode = "fast" if kind == "fast" else "exact"
    predictor = EagerPredictor(model) if kind == "eager" else SamPredictor(model)
    generator = SamAutomaticMaskGenerator(predictor, crop_n_layers=crops, mode=mode,
                                          **(thresholds or {}))
    if kind != "eager":  # backend export / compile / conversion outside the timing
        predictor.set_image(photo[:64, :64])
        predictor.predict_point_batch(np.array([[10.0, 10.0]] * 2), min_iou=0.0)
        predictor.predict(np.array([[10.0, 10.0]]), np.array([1]))
    start = time.perf_counter()
    records = generator.generate(photo)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "count": len(records),
            "masks": [np.packbits(r["segmentation"]).tolist() for r in records]}


def _unpack(packed, shape):
    """Bit-packed masks of `shape` each (a point's 3 masks are unpacked as 3 masks)."""
    import numpy as np

    n = int(np.prod(shape))
    out = []
    for p in packed:
        m = np.unpackbits(np.array(p, dtype=np.uint8))[:n].reshape(shape).astype(bool)
        out.extend(m if m.ndim == 3 else [m])
    return out


def _matched_share(reference, candidate) -> float:
    """Share of reference masks matched one-to-one by a candidate mask at IoU >= 0.9."""
    used, matched = set(), 0
    for ref in reference:
        best, best_j = 0.0, None
        for j, cand in enumerate(candidate):
            if j not in used:
                iou = _mask_iou(ref, cand)
                if iou > best:
                    best, best_j = iou, j
        if best >= 0.9:
            used.add(best_j)
            matched += 1
    return matched / len(reference) if reference else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15,
                        help="rounds of set_image and predict: one call of each path per round")
    parser.add_argument("--crops", action="store_true", help="also everything with crop_n_layers=1")
    parser.add_argument("--quick", action="store_true", help="skip segment-everything")
    parser.add_argument("--only-crops", action="store_true",
                        help="only everything with crop_n_layers=1 (it takes the longest)")
    parser.add_argument("--encoders", default="auto:fp32,torch:fp32,onnxruntime:fp32,"
                        "openvino:fp32,onnxruntime:int8,openvino:bf16")
    args = parser.parse_args()
    shape = _photo().shape[:2]
    rows = []

    def add(what, path, r, base, agreement):
        ratio = base["seconds"] / r["seconds"] if r is not base else 1.0
        rows.append([what, path, f"{r['seconds'] * 1000:.0f} ms", f"x{ratio:.2f}",
                     f"{r['peak_rss_mb']:.0f} MB", agreement])

    shape3 = (3, *shape)
    eager_set_image = simple_paths(args, rows, shape3) if not args.only_crops else None
    if not args.quick:
        settings = [] if args.only_crops else [(0, None, "defaults"),
                                               (0, FIXTURE_THRESHOLDS, "fixture thresholds")]
        if args.crops or args.only_crops:
            settings.append((1, None, "defaults"))
        for crops, thresholds, label in settings:
            what = f"everything 32x32, crop_n_layers={crops}, {label}"
            base = run_isolated(everything_job, "eager", args.threads, crops, thresholds)
            add(what, f"eager (original ops), {base['count']} masks", base, base, "-")
            ref = _unpack(base["masks"], shape)
            for kind in ("exact", "fast"):
                r = run_isolated(everything_job, kind, args.threads, crops, thresholds)
                share = _matched_share(ref, _unpack(r["masks"], shape))
                add(what, f"{kind}, {r['count']} masks", r, base,
                    f"{share:.0%} of eager masks matched at IoU>=0.9")

    import torch

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(table(rows, ["what", "path", "median", "speed-up", "peak RSS", "agreement"]))
    if eager_set_image is not None:
        floor = run_isolated(arithmetic_floor_job, args.threads)
        print(arithmetic_floor_text(floor, eager_set_image))


def arithmetic_floor_job(threads: int) -> dict:
    """The encoder's FLOPs (the original's computation) and this machine's GEMM throughput
    (torch, best of 5, a 4096x1024 by 1024x1024 product) in fp32 and bfloat16."""
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = _as_original(_model(threads))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.image_encoder(torch.zeros(1, 3, model.img_size, model.img_size))
    gflop_per_s = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(4096, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        gflop_per_s[str(dtype).split(".")[1]] = 2 * 4096 * 1024 * 1024 / best / 1e9
    return {"encoder_gflop": counter.get_total_flops() / 1e9, "gemm_gflop_per_s": gflop_per_s}


def arithmetic_floor_text(floor: dict, eager_seconds: float) -> str:
    """The fastest set_image the encoder's arithmetic allows here, as a ceiling on the ratio."""
    lines = [f"arithmetic floor of the encoder: {floor['encoder_gflop']:.1f} GFLOP"]
    for dtype, rate in floor["gemm_gflop_per_s"].items():
        seconds = floor["encoder_gflop"] / rate
        lines.append(f"  at this machine's {dtype} GEMM rate ({rate:.0f} GFLOP/s): "
                     f"{seconds * 1000:.0f} ms, so at most x{eager_seconds / seconds:.2f} over "
                     f"eager set_image ({eager_seconds * 1000:.0f} ms)")
    return "\n".join(lines)


def simple_paths(args, rows: list, shape3) -> float:
    """set_image and predict: eager against each fast path. Each path is set up once in its
    own worker process (its own peak RSS, no other thread pools about); then, round after
    round, each worker runs one call in turn (the order rotating), so each round's ratio
    compares calls seconds apart. Returns eager's median set_image seconds."""
    import time

    import numpy as np

    from mobile_sam.runtime import installed

    encoders = [k for k in args.encoders.split(",")
                if k.split(":")[0] == "auto" or installed(k.split(":")[0])]
    for what, label, kinds in [
        ("set_image", "set_image 640x480", ["eager"] + encoders),
        ("predict", "predict 1 point, multimask", ["eager", "auto", "torch"]),
    ]:
        workers = {kind: Worker(PathJob, what, kind, args.threads) for kind in kinds}
        seconds = {kind: [] for kind in kinds}
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                time.sleep(PAUSE)  # the previous worker's threads stop spinning
                seconds[kind].append(workers[kind].timed())
        results = {kind: w.finish() for kind, w in workers.items()}
        seconds = {kind: np.array(s) for kind, s in seconds.items()}
        if what == "set_image":
            eager_set_image = float(np.median(seconds["eager"]))
        ref = _unpack(results["eager"]["masks"], shape3)
        for kind in kinds:
            rss = results[kind]["peak_rss_mb"]
            if kind == "eager":
                agreement, name = "-", "eager (original ops)"
            else:
                ious = [_mask_iou(a, b) for a, b in zip(ref, _unpack(results[kind]["masks"], shape3))]
                agreement = f"mask IoU mean {np.mean(ious):.4f} min {min(ious):.4f}"
                name = kind if what == "set_image" else f"SamPredictor, backend {kind}"
            ratios = seconds["eager"] / seconds[kind]
            spread = f" ({np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})" if kind != "eager" else ""
            rows.append([label, name, f"{np.median(seconds[kind]) * 1000:.0f} ms",
                         f"x{np.median(ratios):.2f}{spread}", f"{rss:.0f} MB", agreement])
    return eager_set_image


if __name__ == "__main__":
    main()
