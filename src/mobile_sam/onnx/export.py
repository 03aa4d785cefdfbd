"""Export a `Sam` model to ONNX files that run without torch (see `mobile_sam.onnx.runtime`).

Files written into the output folder:

- ``encoder.onnx``: ``image`` 1×3×S×S float32 (resized, normalised with model.json's
  ``pixel_mean`` and ``pixel_std``, zero-padded: what `mobile_sam.transforms.prepare_image`
  returns) -> ``image_embeddings`` 1×256×64×64.
- ``decoder.onnx``: the interface of SAM's own ONNX decoder (``scripts/export_onnx_model.py``
  of segment-anything), for tools built around it. Inputs ``image_embeddings`` 1×256×64×64,
  ``point_coords`` B×N×2 float32 (XY in the resized S-frame, what `ResizeLongestSide.apply_coords`
  gives), ``point_labels`` B×N float32 (1 fg, 0 bg, -1 padding, 2/3 box corners),
  ``mask_input`` B×1×256×256 (or 1×…), ``has_mask_input`` (1,), ``orig_im_size`` (2,) float32
  (H, W). Outputs ``masks`` B×M×H×W logits at the original size, ``iou_predictions`` B×M,
  ``low_res_masks`` B×M×256×256, with M = 4 (token 0 = single-mask output, 1-3 = multimask)
  unless exported with ``single_mask`` (M = 1, chosen as SAM's ONNX model does).
  As in SAM's convention the caller appends a (0, 0) point labelled -1 when there is no box.
- ``decoder_lowres.onnx``: the same decoder without ``orig_im_size`` and ``masks``: the
  runtime's batched path (onnxruntime cannot skip the unused upscaling of a graph output).
- ``upscale.onnx``: ``low_res_masks`` B×M×256×256 + ``orig_im_size`` -> ``masks`` B×M×H×W,
  the graph of `Sam.postprocess_masks`, also inside ``decoder.onnx``.
- ``model.json``: variant, sizes, mean/std, opset, checkpoint sha256, files, options.

With ``quantize="int8"``, ``encoder_int8.onnx`` is added (onnxruntime dynamic quantization)
and its mask IoU against fp32 and its speed-up are measured and recorded in model.json.

`export_tool_format` writes the pair that X-AnyLabeling's SAM loader and samexporter's
runner load instead: ``<name>.encoder.onnx`` takes the image itself (``input_image``
H×W×3 float32 RGB, 0-255, longest side at most S: resized by the tool) and normalises and
pads it in the graph (`Sam.preprocess`); ``<name>.decoder.onnx`` is SAM's decoder interface
with one mask per prompt (SAM's ONNX choice); for X-AnyLabeling, ``<name>.yaml`` is the model
config it reads.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..io import OutputWriteError, save_json
from ..modeling import Sam

MIN_OPSET = 14
DEFAULT_OPSET = 17
MODEL_JSON = "model.json"
FILES = {
    "encoder": "encoder.onnx",
    "decoder": "decoder.onnx",
    "decoder_lowres": "decoder_lowres.onnx",
    "upscale": "upscale.onnx",
}
INT8_FILES = {"encoder": "encoder_int8.onnx"}
QUANTIZE_CHOICES = ("int8",)
TOOL_FORMATS = ("anylabeling", "samexporter")
# X-AnyLabeling's SAM loader resizes each image to fit max_height × max_width and pads it to
# that size; its MobileSAM config uses 682 × 1024 for a 1024 input (scaled for other sizes).
ANYLABELING_HEIGHT_RATIO = 682 / 1024


class ExportError(ValueError):
    """An export request that cannot be fulfilled (bad opset, unknown option, ...)."""


# ----------------------------------------------------------------------------- graphs


class EncoderGraph(nn.Module):
    """image 1×3×S×S (normalised, padded) -> image_embeddings 1×256×64×64."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class ImageInputEncoderGraph(nn.Module):
    """input_image H×W×3 float32 RGB on the 0-255 scale, longest side at most S (the tools
    resize it) -> image_embeddings: channels first, normalised and zero-padded to S×S in the
    graph by `Sam.preprocess`, the torch path's own preprocessing."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        return self.sam.image_encoder(self.sam.preprocess(input_image.permute(2, 0, 1)[None]))


def preprocess_shape(orig_im_size: torch.Tensor, long_side: int) -> torch.Tensor:
    """(..., 2) original (H, W) -> (..., 2) int64 resized (h', w'), in-graph.

    The rule of `mobile_sam.transforms.get_preprocess_shape` written with tensor ops so that the
    exported graph computes it from its ``orig_im_size`` input; float64 like Python's floats,
    so the rounding is identical (tests compare the two over every size up to 2048).
    """
    size = orig_im_size.to(torch.float64)
    scale = long_side * 1.0 / size.amax(dim=-1, keepdim=True)
    return (size * scale + 0.5).to(torch.int64)


class UpscaleGraph(nn.Module):
    """low_res_masks B×M×256×256 + orig_im_size (2,) -> masks B×M×H×W logits:
    `Sam.postprocess_masks` with the resized size computed in-graph."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, low_res_masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        input_size = preprocess_shape(orig_im_size, self.sam.img_size)
        return self.sam.postprocess_masks(low_res_masks, input_size, orig_im_size.to(torch.int64))


class PromptDecoderGraph(nn.Module):
    """SAM's ONNX prompt convention -> low_res_masks B×4×256×256, iou_predictions B×4.

    Points (padding and box corners included, labels -1..3) are embedded by
    `PromptEncoder._embed_points`; ``has_mask_input`` blends the mask embedding with the
    no-mask embedding, the graph form of `PromptEncoder.forward`'s branch.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = pe._embed_points(point_coords, point_labels)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        return self.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)


def stability_score_graph(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(..., H, W) logits -> (...) float32 count(> t + o) / count(> t − o): the tensor form of
    `mobile_sam.masks.stability_score` (tests check they agree), exportable to ONNX. Counts
    are exact integers, then divided in float32."""
    inter = (logits > threshold + offset).sum((-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum((-1, -2), dtype=torch.int32)
    return inter.to(torch.float32) / union.to(torch.float32)


class SamDecoderGraph(nn.Module):
    """The decoder with SAM's ONNX interface: prompts + orig_im_size -> masks, iou, low-res.

    single_mask: keep one mask per prompt as SAM's ONNX model does: the single-mask token when
    more than two points are given (padding and box corners count), else the best of the three
    multimask outputs by score. stability_score: return stability scores of the low-res masks
    (threshold 0, offset 1) instead of the predicted IoU.
    """

    def __init__(self, sam: Sam, single_mask: bool = False, stability_score: bool = False,
                 stability_offset: float = 1.0) -> None:
        super().__init__()
        self.prompt_decoder = PromptDecoderGraph(sam)
        self.upscale = UpscaleGraph(sam)
        self.single_mask = single_mask
        self.stability_score = stability_score
        self.threshold = float(sam.mask_threshold)
        self.stability_offset = stability_offset
        # The model's own mode, not nn.Module's default train mode: torch.onnx.export puts the
        # wrapper back in its mode afterwards, which reaches the wrapped model's every module.
        self.train(sam.training)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor, orig_im_size: torch.Tensor):
        low_res, scores = self.prompt_decoder(image_embeddings, point_coords, point_labels,
                                              mask_input, has_mask_input)
        if self.stability_score:
            scores = stability_score_graph(low_res, self.threshold, self.stability_offset)
        if self.single_mask:
            low_res, scores = self.select(low_res, scores, _num_points(point_coords))
        masks = self.upscale(low_res, orig_im_size)
        return masks, scores, low_res

    @staticmethod
    def select(low_res: torch.Tensor, scores: torch.Tensor,
               num_points: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt: token 0 with more than two points (padding and box corners
        count), else the best of tokens 1-3 by score. Written as arithmetic on `num_points`
        (a bias on token 0's score) so that it stays symbolic in the exported graph."""
        bias = (torch.arange(scores.shape[1], device=scores.device) == 0).to(scores.dtype) * 1000.0
        best = (scores + (num_points - 2.5) * bias).argmax(dim=1)  # B
        rows = torch.arange(low_res.shape[0], device=low_res.device)
        return low_res[rows, best].unsqueeze(1), scores[rows, best].unsqueeze(1)


def _num_points(point_coords: torch.Tensor) -> torch.Tensor | int:
    """Points per prompt, kept symbolic by the TorchScript tracer (a plain int there would
    be baked into the graph); torch.export keeps the int symbolic itself."""
    if torch.jit.is_tracing():
        return torch._shape_as_tensor(point_coords)[1]
    return point_coords.shape[1]


# ----------------------------------------------------------------------------- export


def max_opset() -> int:
    """Highest opset both the installed torch exporter (TorchScript path) and onnx support."""
    import onnx
    from torch.onnx import _constants

    torch_max = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return min(int(torch_max), int(onnx.defs.onnx_opset_version()))


def check_opset(opset: Any) -> int:
    """The opset as an int, or `ExportError` naming the supported range."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(f"opset must be an int, got {type(opset).__name__} {opset!r}")
    high = max_opset()
    if not MIN_OPSET <= opset <= high:
        raise ExportError(
            f"opset {opset} is not supported: choose {MIN_OPSET}..{high} (the installed torch "
            f"{torch.__version__} and onnx exporters go up to {high}; below {MIN_OPSET} the "
            "graphs' operators are not available)"
        )
    return opset


def _export_graph(module: nn.Module, args: tuple, path: Path, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]],
                  opset: int) -> None:
    with warnings.catch_warnings():
        # The trace bakes shapes that are fixed for a given model (head sizes, the two values
        # of orig_im_size, the prompt broadcast); the tests run the graphs on other shapes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        with torch.no_grad():
            torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    _check_onnx(path)


def _check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def _example_inputs(sam: Sam) -> dict[str, torch.Tensor]:
    """Tracing inputs: two prompts of three points (so the prompt broadcast is traced as
    such), one shared mask input; values only need to be valid."""
    size = sam.img_size
    emb = sam.prompt_encoder.embed_dim
    h, w = sam.prompt_encoder.image_embedding_size
    mh, mw = sam.prompt_encoder.mask_input_size
    gen = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, emb, h, w, generator=gen),
        "point_coords": torch.rand(2, 3, 2, generator=gen) * size,
        "point_labels": torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, 3.0]]),
        "mask_input": torch.randn(1, 1, mh, mw, generator=gen),
        "has_mask_input": torch.ones(1),
        "orig_im_size": torch.tensor([0.75 * size, 1.0 * size]),
    }


_PROMPT_AXES = {
    "point_coords": {0: "num_prompts", 1: "num_points"},
    "point_labels": {0: "num_prompts", 1: "num_points"},
    "mask_input": {0: "num_mask_inputs"},
    "low_res_masks": {0: "num_prompts"},
    "iou_predictions": {0: "num_prompts"},
}
PROMPT_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]


def export_encoder(model: Sam, path: str | os.PathLike[str], opset: int = DEFAULT_OPSET) -> Path:
    """Write `model`'s image encoder alone to `path` (image 1×3×S×S -> image_embeddings),
    checked with onnx.checker; `mobile_sam.runtime` runs it in onnxruntime or OpenVINO.
    The file is written in place: callers wanting atomicity export into a temporary folder
    and rename (as `export_onnx` does)."""
    opset = check_opset(opset)
    size = model.img_size
    _export_graph(EncoderGraph(model), (torch.zeros(1, 3, size, size),), Path(path),
                  ["image"], ["image_embeddings"], {}, opset)
    return Path(path)


def _export_all(sam: Sam, folder: Path, opset: int, single_mask: bool,
                stability_score: bool) -> None:
    ex = _example_inputs(sam)
    export_encoder(sam, folder / FILES["encoder"], opset)
    sam_decoder = SamDecoderGraph(sam, single_mask=single_mask, stability_score=stability_score)
    _export_graph(sam_decoder, tuple(ex[k] for k in PROMPT_INPUTS + ["orig_im_size"]),
                  folder / FILES["decoder"], PROMPT_INPUTS + ["orig_im_size"],
                  ["masks", "iou_predictions", "low_res_masks"],
                  {**_PROMPT_AXES, "masks": {0: "num_prompts", 2: "height", 3: "width"}}, opset)
    _export_graph(PromptDecoderGraph(sam), tuple(ex[k] for k in PROMPT_INPUTS),
                  folder / FILES["decoder_lowres"], PROMPT_INPUTS,
                  ["low_res_masks", "iou_predictions"], _PROMPT_AXES, opset)
    low_res = torch.randn(2, 3, *sam.prompt_encoder.mask_input_size)
    _export_graph(UpscaleGraph(sam), (low_res, ex["orig_im_size"]), folder / FILES["upscale"],
                  ["low_res_masks", "orig_im_size"], ["masks"],
                  {"low_res_masks": {0: "batch", 1: "num_masks"},
                   "masks": {0: "batch", 1: "num_masks", 2: "height", 3: "width"}}, opset)


def tool_file_names(sam: Sam, tool: str) -> dict[str, str]:
    """The files `export_tool_format` writes, by role: ``mobile_sam.encoder.onnx`` etc. for
    vit_t (``sam_<variant>.…`` for other variants), as samexporter names its exports."""
    if tool not in TOOL_FORMATS:
        raise ExportError(f"tool format must be one of {TOOL_FORMATS}, got {tool!r}")
    variant = getattr(getattr(sam, "config", None), "name", None)
    stem = "mobile_sam" if variant in (None, "vit_t") else f"sam_{variant}"
    names = {"encoder": f"{stem}.encoder.onnx", "decoder": f"{stem}.decoder.onnx"}
    if tool == "anylabeling":
        names["config"] = f"{stem}.yaml"
    return names


def anylabeling_config(sam: Sam, names: dict[str, str]) -> str:
    """X-AnyLabeling's model config (YAML) for the pair: its ``segment_anything`` loader reads
    the two paths (relative to this file's folder) and the size it resizes images to."""
    size = sam.img_size
    variant = getattr(getattr(sam, "config", None), "name", None) or "custom"
    lines = {
        "type": "segment_anything",
        "name": f"{names['encoder'].split('.')[0]}-{variant}-mobile_sam{__version__}",
        "display_name": f"MobileSAM ({variant}, mobile_sam {__version__})",
        "encoder_model_path": names["encoder"],
        "decoder_model_path": names["decoder"],
        "input_size": size,
        "max_width": size,
        "max_height": round(size * ANYLABELING_HEIGHT_RATIO),
    }
    return "".join(f"{key}: {value}\n" for key, value in lines.items())


def export_tool_format(model: Sam, out_dir: str | os.PathLike[str], tool: str, *,
                       opset: int = DEFAULT_OPSET, log: Any = None) -> dict[str, str]:
    """Write the encoder/decoder pair (and config) `tool` loads into `out_dir`; returns the
    file names by role. tool: "anylabeling" (X-AnyLabeling) or "samexporter". Written into a
    temporary folder and renamed into place once every graph is exported and checked."""
    opset = check_opset(opset)
    if not isinstance(model, Sam):
        raise TypeError(f"model must be a mobile_sam Sam model, got {type(model).__name__}")
    names = tool_file_names(model, tool)
    say = log or (lambda message: None)
    out = Path(out_dir)
    tmp = _prepare_folder(out)
    training = model.training
    try:
        start = time.perf_counter()
        model.eval()
        size = model.img_size
        example = torch.rand(size, round(size * 0.75), 3) * 255
        _export_graph(ImageInputEncoderGraph(model), (example,), tmp / names["encoder"],
                      ["input_image"], ["image_embeddings"],
                      {"input_image": {0: "image_height", 1: "image_width"}}, opset)
        ex = _example_inputs(model)
        _export_graph(SamDecoderGraph(model, single_mask=True),
                      tuple(ex[k] for k in PROMPT_INPUTS + ["orig_im_size"]),
                      tmp / names["decoder"], PROMPT_INPUTS + ["orig_im_size"],
                      ["masks", "iou_predictions", "low_res_masks"],
                      {**_PROMPT_AXES, "masks": {0: "num_prompts", 2: "height", 3: "width"}},
                      opset)
        if "config" in names:
            (tmp / names["config"]).write_text(anylabeling_config(model, names),
                                               encoding="utf-8")
        _move_into(tmp, out, [names[k] for k in ("encoder", "decoder", "config") if k in names])
        say(f"exported {', '.join(names.values())} for {tool} (opset {opset}) in "
            f"{time.perf_counter() - start:.1f} s")
    finally:
        model.train(training)
        shutil.rmtree(tmp, ignore_errors=True)
    return names


def _move_into(tmp: Path, out: Path, names: Sequence[str]) -> None:
    """Rename the finished files from the temporary folder into `out`, in order."""
    for name in names:
        os.replace(tmp / name, out / name)


def quantize_encoder(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an int8 copy of an exported encoder to `dst`: dynamic quantization, MatMul
    weights int8 per channel, activations quantized at run time.

    Convolutions stay float: quantizing them (dynamically or statically) cost far more
    accuracy than it saved time on the fixture (see docs/deploy.md).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    prepared = dst.with_name(f".{dst.stem}.prep.onnx")
    try:
        quant_pre_process(str(src), str(prepared))
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        prepared.unlink(missing_ok=True)
    _check_onnx(dst)
    return dst


def _synthetic_image(height: int = 480, width: int = 640) -> np.ndarray:
    """A deterministic RGB test pattern (smooth gradients and flat shapes) for the int8
    evaluation when no photos are given."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], -1)
    img[(xx - width * 0.3) ** 2 + (yy - height * 0.4) ** 2 < (height * 0.2) ** 2] = (220, 40, 40)
    img[int(height * 0.55):int(height * 0.85), int(width * 0.55):int(width * 0.9)] = (30, 60, 200)
    return img.astype(np.uint8)


def evaluate_int8(folder: Path, images: Sequence[np.ndarray], *, threads: int | None = None,
                  repeats: int = 4, points_per_side: int = 4) -> dict[str, Any]:
    """Mask IoU of the int8 encoder against fp32 and the encoder speed-up, on `images`.

    For each image, a points_per_side² grid of single-point prompts (three masks each) is
    decoded from both embeddings with the same fp32 decoder; IoU is taken per mask. Encoder
    times are medians of `repeats` interleaved runs (after a warm-up), on `threads` threads.
    """
    from ..masks import build_point_grid
    from ..prompts import check_image
    from .runtime import OnnxPredictor

    predictors = {name: OnnxPredictor(folder, precision=name, threads=threads)
                  for name in ("fp32", "int8")}
    ious: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for image in images:
        image = check_image(image)
        points = build_point_grid(points_per_side) * np.array([image.shape[1], image.shape[0]])
        masks = {}
        for name, predictor in predictors.items():
            predictor.set_image(image)  # also the warm-up run
            low_res, _ = predictor.predict_point_batch(points)
            logits = predictor.upscale_logits(low_res.reshape(-1, *low_res.shape[2:]))
            masks[name] = logits > predictor.mask_threshold
        inter = (masks["fp32"] & masks["int8"]).sum(axis=(1, 2))
        union = (masks["fp32"] | masks["int8"]).sum(axis=(1, 2))
        ious.extend(np.where(union > 0, inter / np.maximum(union, 1), 1.0).tolist())
    # The encoder's time does not depend on the picture: time it on the first one.
    prepared, _ = predictors["fp32"].prepare(check_image(images[0]))
    for _ in range(repeats):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor.encode(prepared)
            times[name].append(time.perf_counter() - start)
    t32, t8 = float(np.median(times["fp32"])), float(np.median(times["int8"]))
    return {
        "mask_iou_mean": float(np.mean(ious)),
        "mask_iou_median": float(np.median(ious)),
        "mask_iou_min": float(np.min(ious)),
        "num_masks": len(ious),
        "encoder_fp32_s": t32,
        "encoder_int8_s": t8,
        "encoder_speedup": t32 / t8,
        "threads": threads,
        "machine": machine_description(),
    }


def machine_description() -> str:
    """CPU model, core count and OS, for timings recorded next to results."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def _prepare_folder(out_dir: Path) -> Path:
    """Create `out_dir` if needed and a private temporary folder inside it (same file system,
    so the final renames are atomic)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".mobile_sam_export-", dir=out_dir))
    except FileExistsError:
        raise OutputWriteError(f"cannot export to {out_dir}: it exists and is not a folder") from None
    except OSError as exc:
        raise OutputWriteError(
            f"cannot export to {out_dir}: {exc.strerror or exc} ({exc.filename or out_dir})"
        ) from None


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    single_mask: bool = False,
    stability_score: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    eval_images: Sequence[np.ndarray] | None = None,
    threads: int | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Export `model` into `out_dir` (see the module docstring); returns model.json's content.

    checkpoint: the file the model was loaded from, recorded with its sha256.
    quantize: None or "int8" (adds encoder_int8.onnx, evaluated on `eval_images`, HxWx3
    uint8 RGB; a synthetic pattern when none are given). single_mask / stability_score shape
    decoder.onnx only (SAM's options); the runtime's files are unaffected.
    Files appear in `out_dir` only once every graph has been exported and checked: all are
    written into a temporary folder inside it, then renamed into place, model.json last.
    """
    opset = check_opset(opset)
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ExportError(f"quantize must be one of {QUANTIZE_CHOICES} or None, got {quantize!r}")
    if not isinstance(model, Sam):
        raise TypeError(f"model must be a mobile_sam Sam model, got {type(model).__name__}")
    if model.device.type != "cpu":
        raise ExportError(f"export traces the model on the CPU; it is on {model.device}: "
                          "pass model.cpu()")
    say = log or (lambda message: None)
    out = Path(out_dir)
    source = None
    if checkpoint is not None:
        from ..weights import sha256_of

        source = {"file": Path(checkpoint).name, "sha256": sha256_of(Path(checkpoint))}
    tmp = _prepare_folder(out)
    training = model.training
    try:
        start = time.perf_counter()
        _export_all(model.eval(), tmp, opset, single_mask, stability_score)
        model.train(training)
        say(f"exported {', '.join(FILES.values())} (opset {opset}) in "
            f"{time.perf_counter() - start:.1f} s")
        info = _model_info(model, opset, source, single_mask, stability_score)
        if quantize == "int8":
            quantize_encoder(tmp / FILES["encoder"], tmp / INT8_FILES["encoder"])
            info["files"]["encoder_int8"] = INT8_FILES["encoder"]
            save_json(tmp / MODEL_JSON, info, indent=1)  # the evaluation loads the folder
            images = list(eval_images) if eval_images else [_synthetic_image()]
            report = evaluate_int8(tmp, images, threads=threads)
            report["images"] = len(images) if eval_images else "synthetic test pattern"
            report["method"] = ("onnxruntime.quantization.quantize_dynamic: MatMul weights int8 "
                                "per channel, activations at run time; convolutions float")
            info["int8"] = report
            say(f"int8 encoder: mask IoU vs fp32 mean {report['mask_iou_mean']:.4f}, min "
                f"{report['mask_iou_min']:.4f} over {report['num_masks']} masks; encoder "
                f"{report['encoder_fp32_s']:.3f} s fp32 -> {report['encoder_int8_s']:.3f} s int8 "
                f"(x{report['encoder_speedup']:.2f}, {threads or 'default'} threads)")
        save_json(tmp / MODEL_JSON, info, indent=1)
        names = [p.name for p in sorted(tmp.iterdir()) if p.name != MODEL_JSON] + [MODEL_JSON]
        _move_into(tmp, out, names)
        for name in {*FILES.values(), *INT8_FILES.values()} - set(names):
            (out / name).unlink(missing_ok=True)  # from an earlier export of this folder
    finally:
        model.train(training)
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _model_info(sam: Sam, opset: int, source: dict[str, str] | None, single_mask: bool,
                stability_score: bool) -> dict[str, Any]:
    import onnx

    config = getattr(sam, "config", None)
    pe = sam.prompt_encoder
    pixel_mean, pixel_std = sam.normalization  # encoder.onnx takes the image normalised
    return {
        "format": "mobile_sam-onnx",
        "format_version": 1,
        "variant": getattr(config, "name", None),
        "image_size": sam.img_size,
        "embedding_shape": [pe.embed_dim, *pe.image_embedding_size],
        "mask_input_size": list(pe.mask_input_size),
        "pixel_mean": list(pixel_mean),
        "pixel_std": list(pixel_std),
        "mask_threshold": float(sam.mask_threshold),
        "opset": opset,
        "source_checkpoint": source,
        "files": dict(FILES),
        "decoder_options": {"single_mask": single_mask, "stability_score": stability_score},
        "exported_with": {"mobile_sam": __version__, "torch": torch.__version__,
                          "onnx": onnx.__version__},
    }

