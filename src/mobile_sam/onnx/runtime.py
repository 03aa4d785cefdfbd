"""Run exported MobileSAM ONNX files with numpy, Pillow and onnxruntime only (no torch).

`OnnxPredictor` has the methods and outputs of `mobile_sam.SamPredictor` (``set_image``,
``predict``, ``get_image_embedding``, ``reset_image``, ...) and the small interface the
automatic mask generator drives, so ``SamAutomaticMaskGenerator(OnnxPredictor(folder))``
works. Pre- and post-processing are the shared code: `mobile_sam.transforms` resizes,
normalises, moves coordinates and upscales masks (`MaskUpscaler`), `mobile_sam.prompts`
validates inputs and packs prompts, as for the torch predictor.

`OnnxDecoder` runs ``decoder.onnx``, the file with SAM's ONNX decoder interface.

Sessions come from `create_session` (onnxruntime, CPU), or `create_openvino_session`
(OpenVINO, CPU) with ``backend="openvino"``; pass another ``session_factory``
(path, threads) -> object with ``run(output_names, feeds)``, ``get_inputs()`` and
``get_outputs()`` to use another engine.
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np

from ..prompts import (
    check_image,
    check_mask_input,
    check_points,
    check_single_box,
    pack_prompts,
    require_image,
)
from ..transforms import PIXEL_MEAN, PIXEL_STD, ResizeLongestSide, mask_upscaler, prepare_image

__all__ = ["OnnxDecoder", "OnnxModelError", "OnnxPredictor", "create_openvino_session",
           "create_session", "is_export_folder", "load_model_info", "open_export_folder"]

MODEL_JSON = "model.json"
PRECISIONS = ("fp32", "int8")
# Inputs and outputs each file must have, by role in model.json's "files".
ROLE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("image",), ("image_embeddings",)),
    "decoder": (
        ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
         "orig_im_size"),
        ("masks", "iou_predictions", "low_res_masks"),
    ),
    "decoder_lowres": (
        ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"),
        ("low_res_masks", "iou_predictions"),
    ),
    "upscale": (("low_res_masks", "orig_im_size"), ("masks",)),
}
# Prompts decoded per session call: bounds the memory of a batch.
_PROMPTS_PER_CALL = 16

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int32)": np.int32, "tensor(int64)": np.int64}

SessionFactory = Callable[[Path, "int | None"], Any]
_P = TypeVar("_P", bound="OnnxPredictor")


class OnnxModelError(ValueError):
    """An exported model folder or ONNX file that cannot be used, named with the reason."""


def create_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for `path`, on `threads` intra-op threads (None: ORT's
    default). Raises `OnnxModelError` naming the file when it cannot be loaded."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            "the ONNX runtime needs onnxruntime: pip install onnxruntime "
            "(or pip install 'mobile_sam[onnx]')"
        ) from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about unused initialisers
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxModelError(f"{path}: cannot load the ONNX model: {reason}") from None


class _OpenVINOSession:
    """An OpenVINO model compiled for the CPU in fp32, with the part of onnxruntime's
    session interface the runtime uses (``run``, ``get_inputs``, ``get_outputs``)."""

    _TYPES = {"f32": "tensor(float)", "f64": "tensor(double)", "i32": "tensor(int32)",
              "i64": "tensor(int64)"}

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled

    def _ports(self, ports: Any) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=self._name(port),
                                type=self._TYPES.get(port.get_element_type().get_type_name(), ""))
                for port in ports]

    @staticmethod
    def _name(port: Any) -> str:
        """The graph's own name of a port: OpenVINO also attaches the exporter's internal
        tensor names (``/image_encoder/.../Div_output_0``) to it."""
        names = sorted(port.get_names(), key=lambda name: ("/" in name, name))
        return str(names[0]) if names else str(port.any_name)

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._ports(self._compiled.inputs)

    def get_outputs(self) -> list[SimpleNamespace]:
        return self._ports(self._compiled.outputs)

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # A request per call: requests hold state, and the predictor may be used by threads.
        result = self._compiled.create_infer_request().infer(feeds)
        return [np.asarray(result[self._compiled.output(name)]) for name in output_names]


def create_openvino_session(path: Path, threads: int | None = None) -> Any:
    """An OpenVINO CPU model for `path` (fp32 inference), on `threads` threads (None:
    OpenVINO's default), with `create_session`'s interface and errors."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise ImportError("the OpenVINO backend needs openvino: pip install openvino") from exc
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return _OpenVINOSession(ov.Core().compile_model(str(path), "CPU", config))
    except Exception as exc:  # OpenVINO raises its own exception types for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxModelError(f"{path}: cannot load the ONNX model: {reason}") from None


SESSION_FACTORIES: dict[str, SessionFactory] = {"onnxruntime": create_session,
                                                "openvino": create_openvino_session}


def load_model_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an export folder's model.json (written by ``mobile-sam export``)."""
    folder = Path(folder)
    path = folder / MODEL_JSON if folder.is_dir() else folder
    if not path.is_file():
        if not folder.exists():
            raise FileNotFoundError(f"ONNX model folder {folder} does not exist")
        raise FileNotFoundError(
            f"{path} not found: point to a folder written by `mobile-sam export --out DIR`"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OnnxModelError(f"{path} is not valid JSON: {exc}") from None
    missing = [k for k in ("image_size", "mask_input_size", "mask_threshold", "files")
               if k not in (info if isinstance(info, dict) else {})]
    if missing:
        raise OnnxModelError(f"{path} is not a mobile_sam ONNX description: missing {missing}")
    described: dict[str, Any] = info
    return described


def is_export_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder written by ``mobile-sam export`` (it holds model.json): what
    the CLI, `mobile_sam.SAM` and the server take as an ONNX model instead of a checkpoint."""
    return Path(path).is_dir() and (Path(path) / MODEL_JSON).is_file()


def open_export_folder(folder: str | os.PathLike[str], *, backend: str = "auto",
                       precision: str = "fp32", device: Any = None,
                       threads: int | None = None) -> OnnxPredictor:
    """An `OnnxPredictor` for an export folder given where a model name or checkpoint is
    accepted (`mobile_sam.SAM`, the CLI's ``--model``, the server), with those surfaces'
    options checked: the folder runs on the CPU in onnxruntime or OpenVINO ("auto":
    onnxruntime if installed, else OpenVINO), in fp32 or int8."""
    if backend not in ("auto", *SESSION_FACTORIES):
        raise ValueError(f"{folder} is an exported ONNX folder: it runs in onnxruntime or "
                         f"OpenVINO (backend 'auto', 'onnxruntime' or 'openvino'), got "
                         f"backend {backend!r}")
    if backend == "auto":
        have_ort = importlib.util.find_spec("onnxruntime") is not None
        backend = "onnxruntime" if have_ort or importlib.util.find_spec("openvino") is None \
            else "openvino"
    if device is not None and str(device) != "cpu":
        raise ValueError(f"{folder} is an exported ONNX folder: it runs on the CPU, got "
                         f"device {str(device)!r}")
    if precision == "auto":  # the folder's fp32 files; int8 only when asked for
        precision = "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"{folder} is an exported ONNX folder: precision must be one of "
                         f"{PRECISIONS}, got {precision!r}")
    return OnnxPredictor(folder, precision=precision, threads=threads, backend=backend)


def _normalization(path: Path, info: dict[str, Any]
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """model.json's pixel_mean and pixel_std (per RGB channel, 0-255 scale), which the model
    was trained with; SAM's values for a folder that does not record them."""
    stats = []
    for key, default in (("pixel_mean", PIXEL_MEAN), ("pixel_std", PIXEL_STD)):
        value = info.get(key, default)
        if (not isinstance(value, list | tuple) or len(value) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           and np.isfinite(v) for v in value)
                or (key == "pixel_std" and min(value) <= 0)):
            raise OnnxModelError(f"{path}: {key} must be 3 finite numbers (R, G, B)"
                                 f"{', all > 0' if key == 'pixel_std' else ''}, got {value!r}")
        stats.append(tuple(float(v) for v in value))
    return stats[0], stats[1]


def _names(items: Any) -> tuple[str, ...]:
    return tuple(item.name for item in items)


def _open(folder: Path, info: dict[str, Any], key: str, role: str, threads: int | None,
          factory: SessionFactory) -> Any:
    """Load the file model.json lists under `key` and check it has the `role`'s interface."""
    name = info["files"].get(key)
    if name is None:
        raise OnnxModelError(f"{folder / MODEL_JSON} lists no {key!r} file; re-export "
                             f"(for int8: mobile-sam export --quantize int8)")
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{role} file {path} not found (listed in {folder / MODEL_JSON})")
    session = factory(path, threads)
    want_in, want_out = ROLE_IO[role]
    got_in, got_out = _names(session.get_inputs()), _names(session.get_outputs())
    if set(got_in) != set(want_in) or not set(want_out) <= set(got_out):
        guess = next((r for r, (i, _) in ROLE_IO.items() if set(i) == set(got_in)), None)
        hint = f" (it looks like the {guess} file)" if guess and guess != role else ""
        raise OnnxModelError(
            f"{path} is not the {role} graph{hint}: it has inputs {list(got_in)} and outputs "
            f"{list(got_out)}, expected inputs {list(want_in)} and outputs {list(want_out)}"
        )
    return session


def _feeds(session: Any, values: dict[str, Any]) -> dict[str, np.ndarray]:
    """Cast every feed to the dtype the graph declares (so e.g. an int32 orig_im_size works)."""
    out = {}
    for item in session.get_inputs():
        dtype = _ORT_TYPES.get(item.type)
        out[item.name] = np.ascontiguousarray(values[item.name], dtype=dtype)
    return out


class OnnxPredictor:
    """`SamPredictor` over an export folder: embed an image once, decode many prompts.

    folder: written by ``mobile-sam export`` (or `mobile_sam.onnx.export.export_onnx`).
    precision: "fp32" or "int8" (the quantized encoder; the decoder stays fp32).
    threads: the engine's threads (None: its default, all cores).
    backend: "onnxruntime" or "openvino", the engine whose sessions run the files (unless
    ``session_factory`` is given).
    Coordinates are XY pixels of the original image, boxes XYXY, as for `SamPredictor`.
    """

    def __init__(self, folder: str | os.PathLike[str], *, precision: str = "fp32",
                 threads: int | None = None, backend: str = "onnxruntime",
                 session_factory: SessionFactory | None = None) -> None:
        if backend not in SESSION_FACTORIES:
            raise ValueError(f"backend must be one of {tuple(SESSION_FACTORIES)}, got {backend!r}")
        if session_factory is None:
            session_factory = SESSION_FACTORIES[backend]
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.folder = Path(folder)
        self.info = load_model_info(self.folder)
        if not self.folder.is_dir():
            self.folder = self.folder.parent
        encoder_key = "encoder" if precision == "fp32" else "encoder_int8"
        self.encoder = _open(self.folder, self.info, encoder_key, "encoder", threads,
                             session_factory)
        self.decoder = _open(self.folder, self.info, "decoder_lowres", "decoder_lowres",
                             threads, session_factory)
        self.precision = precision
        self.backend = backend
        self.image_size = int(self.info["image_size"])
        mask_input_size = tuple(int(v) for v in self.info["mask_input_size"])
        if len(mask_input_size) != 2:
            raise OnnxModelError(f"{self.folder / MODEL_JSON}: mask_input_size must be "
                                 f"[height, width], got {list(mask_input_size)}")
        self.mask_input_size: tuple[int, int] = (mask_input_size[0], mask_input_size[1])
        self.normalization = _normalization(self.folder / MODEL_JSON, self.info)
        self.transform = ResizeLongestSide(self.image_size)
        # Prompts per decoder step of predict_point_batch (SamPredictor's name): the server
        # sets 1 for an "everything" job, which yields the engine between steps.
        self.cpu_decoder_batch = _PROMPTS_PER_CALL
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.reset_image()

    def shared(self) -> OnnxPredictor:
        """A predictor on the same sessions with its own image state (no files are read):
        one per request or thread, as `SamPredictor(model)` is for a torch model."""
        return self.share_into(type(self))

    def share_into(self, cls: type[_P]) -> _P:
        """A `cls` (this class or a subclass) on the same sessions, with no image set."""
        other = cls.__new__(cls)
        for name in ("folder", "info", "encoder", "decoder", "precision", "backend",
                     "image_size", "mask_input_size", "normalization", "transform",
                     "cpu_decoder_batch"):
            setattr(other, name, getattr(self, name))
        other.reset_image()
        return other

    # ----------------------------------------------------------------- image
    @property
    def mask_threshold(self) -> float:
        return float(self.info["mask_threshold"])

    @property
    def img_size(self) -> int:
        """The model's square input size (`Sam.img_size`'s name)."""
        return self.image_size

    @property
    def device(self) -> str:
        """Always "cpu": the sessions run on the CPU."""
        return "cpu"

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """H, W, 3 uint8 RGB -> the encoder's 1×3×S×S float32 input and the resized (h', w'):
        `mobile_sam.transforms.prepare_image` with the model's pixel mean and std."""
        return prepare_image(image, self.image_size, *self.normalization)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """1×3×S×S float32 (from `prepare`) -> 1×C×h×w embedding."""
        embedding: np.ndarray = self.encoder.run(["image_embeddings"], {"image": image})[0]
        return embedding

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image: H, W, 3 uint8 (gray and RGBA are converted, see
        `mobile_sam.prompts.check_image`)."""
        image = check_image(image, image_format, long_side=self.image_size)
        prepared, input_size = self.prepare(image)
        features = self.encode(prepared)
        self.reset_image()
        self.features = features
        self.original_size = (int(image.shape[0]), int(image.shape[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.is_image_set = True

    def set_image_embedding(self, embedding: np.ndarray, original_size: tuple[int, ...],
                            input_size: tuple[int, ...]) -> None:
        """Use an embedding computed earlier (a cache) for the next prompts, as
        `SamPredictor.set_image_embedding`: embedding 1, C, h, w; original_size (H, W) of the
        image; input_size its (h', w') after resizing the longest side to `image_size`."""
        embedding = np.asarray(embedding, dtype=np.float32)
        expected = (1, *self.info.get("embedding_shape", embedding.shape[1:]))
        if embedding.shape != tuple(expected):
            raise ValueError(f"embedding must have shape {tuple(expected)}, got {embedding.shape}")
        sizes = [tuple(int(v) for v in size) for size in (original_size, input_size)]
        for name, size in zip(("original_size", "input_size"), sizes, strict=True):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"{name} must be (height, width) >= 1, got {size}")
        self.reset_image()
        self.features = embedding
        self.original_size = (sizes[0][0], sizes[0][1])
        self.input_size = (sizes[1][0], sizes[1][1])
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The current image's embedding: 1, 256, 64, 64 float32."""
        features, _, _ = self._require_image()
        return features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    def _require_image(self) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """The current image's embedding, original (H, W) and resized (h', w') sizes."""
        return require_image(self.is_image_set, self.features, self.original_size,
                             self.input_size)

    # --------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one object, as `SamPredictor.predict`.

        point_coords: N, 2 XY pixels; point_labels: N (1 foreground, 0 background, -1 ignored);
        box: 4 XYXY pixels; mask_input: 1, 256, 256 low-res logits from an earlier call.
        Returns masks (M, H, W) bool (float32 logits if return_logits), iou_predictions (M,)
        and low_res_logits (M, 256, 256), with M = 3 if multimask_output else 1.
        """
        self._require_image()
        coords = labels = boxes = mask = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels)
        if box is not None:
            boxes = check_single_box(box)
        if mask_input is not None:
            mask = check_mask_input(mask_input, self.mask_input_size)
        masks, iou, low_res = self.predict_batch(
            None if coords is None else coords[None], None if labels is None else labels[None],
            boxes, mask, multimask_output=multimask_output, return_logits=return_logits)
        return masks[0], iou[0], low_res[0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for B objects at once, as `SamPredictor.predict_torch` with numpy arrays.

        point_coords: B, N, 2 XY pixels with point_labels B, N; boxes: B, 4 XYXY; either may
        be None; mask_input: 1, 256, 256 logits for every object. Inputs are taken as checked
        (`mobile_sam.prompts`). Returns masks B, M, H, W (bool, or float32 logits if
        return_logits), iou_predictions B, M and low-res logits B, M, 256, 256.
        """
        _, original_size, _ = self._require_image()
        coords, labels = pack_prompts(point_coords, point_labels, boxes,
                                      original_size=original_size,
                                      long_side=self.transform.target_length)
        low_res, iou = self._decode(coords, labels, mask_input)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[:, selected], iou[:, selected]
        masks = self.upscale_logits(low_res.reshape(-1, *low_res.shape[2:]))
        masks = masks.reshape(*low_res.shape[:2], *masks.shape[1:])
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res

    def prompt_arrays(self, coords: np.ndarray | None, labels: np.ndarray | None,
                      boxes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """SAM's ONNX prompt convention for one prompt: points (N, 2 original pixels) with
        labels (N,) and a box (1, 4 XYXY) -> point_coords 1×N'×2 float32 in the resized frame
        and point_labels 1×N' float32 (see `mobile_sam.prompts.pack_prompts`: the box becomes
        two points labelled 2 and 3 after the points; without a box, a (0, 0) point labelled
        -1 is appended to the points). Both are the decoder graphs' input types, so they feed
        ``decoder.onnx`` as they are; the labels are the torch path's (int64 there).
        """
        self._require_image()
        point_coords, point_labels = pack_prompts(
            None if coords is None else np.asarray(coords)[None],
            None if labels is None else np.asarray(labels)[None], boxes,
            original_size=self.original_size, long_side=self.transform.target_length)
        return point_coords, point_labels.astype(np.float32)

    def _decode(self, point_coords: np.ndarray, point_labels: np.ndarray,
                mask_input: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """B×N×2, B×N and an optional 1×256×256 mask -> low-res B×4×256×256, IoU B×4."""
        if mask_input is None:
            mask, has_mask = np.zeros((1, 1, *self.mask_input_size), np.float32), 0.0
        else:
            mask, has_mask = np.asarray(mask_input, np.float32)[None], 1.0
        feeds = {"image_embeddings": self.features, "mask_input": mask,
                 "has_mask_input": np.array([has_mask], np.float32)}
        low_res, iou = [], []
        for start in range(0, max(len(point_coords), 1), _PROMPTS_PER_CALL):
            stop = start + _PROMPTS_PER_CALL
            feeds.update(point_coords=point_coords[start:stop],
                         point_labels=point_labels[start:stop])
            out = self.decoder.run(["low_res_masks", "iou_predictions"],
                                   _feeds(self.decoder, feeds))
            low_res.append(out[0])
            iou.append(out[1])
        return np.concatenate(low_res), np.concatenate(iou)

    # ------------------------------------------- used by the automatic mask generator
    def predict_point_batch(self, points: np.ndarray, min_iou: float | None = None,
                            half_precision: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """One positive point per prompt, three masks each.

        points: N, 2 XY pixels of the current image. Returns low-res logits N, 3, 256, 256
        and IoU predictions N, 3 (float32). `min_iou` and `half_precision` are accepted for
        the generator's interface; the graph computes every prompt's logits, in the precision
        it was exported in, so all are returned.
        """
        self._require_image()
        points = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
        point_coords, point_labels = pack_prompts(
            points, np.ones(points.shape[:2], np.int64), None, original_size=self.original_size,
            long_side=self.transform.target_length)
        # Decoded in steps of cpu_decoder_batch prompts (as SamPredictor on a CPU), so that a
        # caller can run other work between steps (the server lets clicks in there).
        step = self.cpu_decoder_batch
        parts = [self._decode(point_coords[i:i + step], point_labels[i:i + step], None)
                 for i in range(0, max(len(point_coords), 1), step)]
        low_res = np.concatenate([part[0] for part in parts])
        iou = np.concatenate([part[1] for part in parts])
        return low_res[:, 1:], iou[:, 1:]

    def upscale_logits(self, low_res_logits: np.ndarray) -> np.ndarray:
        """K, 256, 256 low-res logits -> K, H, W float32 logits at the current image's size
        (the shared `mobile_sam.transforms.MaskUpscaler`, as the torch predictor)."""
        _, original_size, input_size = self._require_image()
        upscaler = mask_upscaler(self.mask_input_size[0], self.image_size, input_size,
                                 original_size)
        logits: np.ndarray = upscaler(np.asarray(low_res_logits, dtype=np.float32))
        return logits


class OnnxDecoder:
    """``decoder.onnx`` (SAM's ONNX decoder interface) with defaults and dtype casting.

    `run` takes image_embeddings 1×256×64×64, point_coords B×N×2 (resized frame, padding and
    box corners included), point_labels B×N, optional mask_input (has_mask_input follows
    it) and orig_im_size (H, W) as ints or floats of any dtype; returns the outputs by name:
    masks B×M×H×W logits, iou_predictions B×M, low_res_masks B×M×256×256.
    """

    def __init__(self, folder: str | os.PathLike[str], *, threads: int | None = None,
                 session_factory: SessionFactory = create_session) -> None:
        folder = Path(folder)
        self.info = load_model_info(folder)
        folder = folder if folder.is_dir() else folder.parent
        self.session = _open(folder, self.info, "decoder", "decoder", threads, session_factory)
        self.mask_input_size = tuple(int(v) for v in self.info["mask_input_size"])

    def run(self, image_embeddings: np.ndarray, point_coords: np.ndarray,
            point_labels: np.ndarray, orig_im_size: Any,
            mask_input: np.ndarray | None = None) -> dict[str, np.ndarray]:
        has_mask = mask_input is not None
        if mask_input is None:
            mask_input = np.zeros((1, 1, *self.mask_input_size), np.float32)
        size = np.asarray(orig_im_size)
        if size.shape != (2,) or not np.all(np.isfinite(size)) or np.any(size < 1):
            raise ValueError(f"orig_im_size must be (H, W) with both >= 1, got {size.tolist()}")
        values = {"image_embeddings": image_embeddings, "point_coords": point_coords,
                  "point_labels": point_labels, "mask_input": mask_input,
                  "has_mask_input": np.array([float(has_mask)]), "orig_im_size": size}
        names = _names(self.session.get_outputs())
        return dict(zip(names, self.session.run(list(names), _feeds(self.session, values))))
