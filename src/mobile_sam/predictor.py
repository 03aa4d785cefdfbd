"""SamPredictor: embed an image once, then predict masks from points, boxes and masks.

Same methods and semantics as the original segment-anything predictor. The numpy methods
validate their inputs and call the torch ones; every coordinate is XY in pixels of the
original image, boxes are XYXY.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .modeling import Sam
from .modeling.fast_decoder import DecoderImageCache
from .prompts import (
    check_image,
    check_mask_input,
    check_points,
    check_prompt_batch,
    check_single_box,
    pack_prompts,
    require_image,
)
from .runtime import (
    DecoderRunner,
    Encoder,
    TorchDecoderRunner,
    decode_masks,
    default_backend,
    make_encoder,
    resolve_precision,
    shared_decoder,
    weights_fingerprint,
)
from .runtime.background import check_conversion
from .transforms import MaskUpscaler, ResizeLongestSide, mask_upscaler, prepare_image


class SamPredictor:
    """Computes the image embedding once, then decodes masks for any number of prompts."""

    def __init__(self, sam_model: Sam, backend: str = "auto", precision: str = "fp32",
                 conversion: str | None = None) -> None:
        """backend: where the model runs, "auto" | "torch" | "onnxruntime" | "openvino"
        (the encoder on the backend; the decoder in OpenVINO for "openvino", else in torch);
        precision: the encoder's, "fp32" | "auto" (the fastest with fp32's masks on this
        CPU: bf16 with AMX, else fp32) | "int8" (onnxruntime, openvino) | "bf16" (openvino).
        conversion: while the backend's converted model is not cached yet, "background"
        (eager torch serves; converted in a background thread once the first mask is out,
        used when ready), "wait" (convert before the first call) or "cached" (eager torch,
        convert nothing); None: $MOBILE_SAM_CONVERSION, else "background". See
        `mobile_sam.runtime.background`."""
        if not isinstance(sam_model, Sam):
            raise TypeError("sam_model must be a mobile_sam Sam model, e.g. "
                            "sam_model_registry['vit_t'](checkpoint='mobile_sam.pt'), got "
                            f"{type(sam_model).__name__}")
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.img_size)
        self.backend = default_backend(sam_model, backend, precision)
        self.precision = resolve_precision(precision, self.backend)
        self.conversion = check_conversion(conversion)
        # Prompts decoded together by predict_point_batch on a CPU: eager torch is fastest
        # with few (the 4096-token activations stay in cache), the compiled graph with more.
        self.cpu_decoder_batch = 8 if self.backend == "openvino" else 2
        self._encoder: Encoder | None = None
        self._encoder_fingerprint: tuple[Any, ...] | None = None
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self._decoder_cache: DecoderImageCache | None = None  # prompt-independent decoder work
        self._runners: dict[bool, DecoderRunner] = {}
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.reset_image()

    # ----------------------------------------------------------------- image
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an image: H, W, 3 uint8 (gray and RGBA are converted, see
        `mobile_sam.prompts.check_image`)."""
        image = check_image(image, image_format, long_side=self.model.img_size)
        if self.is_image_set:  # a second image: no longer the first call, convert now
            self._start_conversions()
        if self.backend == "torch":
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized.transpose(2, 0, 1).copy(), device=self.device)[None]
            self.set_torch_image(tensor, image.shape[:2])
            return
        x, input_size = prepare_image(image, self.model.img_size, *self.model.normalization)
        self.set_image_embedding(self._encode(x), image.shape[:2], input_size)

    def _encode(self, x: np.ndarray) -> torch.Tensor:
        """Run the encoder backend on a 1x3xSxS normalised image (numpy); rebuilt when the
        model's weights have changed since it was made."""
        fingerprint = weights_fingerprint(self.model.image_encoder)
        if self._encoder is None or fingerprint != self._encoder_fingerprint:
            self._encoder = make_encoder(self.model, self.backend, self.precision,
                                         conversion=self.conversion)
            self._encoder_fingerprint = fingerprint
        return self._encoder(x)

    def _start_conversions(self) -> None:
        """Start the background conversions (`conversion="background"`) of the encoder and
        decoder in use, if any: called once the first mask is out, so that the conversion
        does not slow the first call down."""
        for runner in (self._encoder, *self._runners.values()):
            job = getattr(runner, "job", None)
            if job is not None:
                job.start()

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed an image already resized by `transform`: 1, 3, h', w' on the 0-255 scale."""
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != self.model.img_size:
            raise ValueError(
                f"set_torch_image expects a 1x3xHxW tensor whose longest side is "
                f"{self.model.img_size}, got shape {shape}"
            )
        x = self.model.preprocess(transformed_image)
        features = self.model.image_encoder(x) if self.backend == "torch" else \
            self._encode(x.float().cpu().numpy())
        self.set_image_embedding(features, original_image_size, shape[-2:])

    def set_image_embedding(self, embedding: torch.Tensor, original_size: tuple[int, ...],
                            input_size: tuple[int, ...]) -> None:
        """Use an embedding computed elsewhere (a cache, another backend) for the next prompts.

        embedding: 1, C, h, w as `get_image_embedding` returns; original_size: (H, W) of the
        image; input_size: its (h', w') after `transform` (longest side = img_size).
        """
        expected = (self.model.prompt_encoder.embed_dim, *self.model.prompt_encoder.image_embedding_size)
        if embedding.ndim != 4 or embedding.shape[0] != 1 or tuple(embedding.shape[1:]) != expected:
            raise ValueError(f"embedding must have shape (1, {', '.join(map(str, expected))}), "
                             f"got {tuple(embedding.shape)}")
        sizes = _image_size(original_size, "original_size"), _image_size(input_size, "input_size")
        self.reset_image()
        dtype = next(self.model.mask_decoder.parameters()).dtype
        self.features = embedding.to(self.device, dtype)
        self.original_size, self.input_size = sizes
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding: 1, 256, 64, 64."""
        features, _, _ = self._require_image()
        return features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self._decoder_cache = None
        self._runners = {}
        self.original_size = None
        self.input_size = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def mask_threshold(self) -> float:
        return self.model.mask_threshold

    def _require_image(self) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
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
        """Masks for one object.

        point_coords: N, 2 XY pixels; point_labels: N (1 foreground, 0 background, -1 ignored);
        box: 4 XYXY pixels; mask_input: 1, 256, 256 low-res logits from an earlier call.
        Returns masks (M, H, W) bool (float logits if return_logits), iou_predictions (M,) and
        low_res_logits (M, 256, 256), with M = 3 if multimask_output else 1.
        """
        self._require_image()
        coords = labels = box_arr = mask_t = None
        if point_coords is not None or point_labels is not None:
            coords, labels = check_points(point_coords, point_labels)
            coords, labels = coords[None], labels[None]
        if box is not None:
            box_arr = check_single_box(box)
        if mask_input is not None:
            mask_arr = check_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
            mask_t = torch.as_tensor(mask_arr, dtype=torch.float, device=self.device)[None]
        packed = pack_prompts(coords, labels, box_arr, original_size=self.original_size,
                              long_side=self.transform.target_length)
        with torch.inference_mode():
            low_res, iou = self._decode(*self._tensors(packed), mask_t, multimask_output)
        low_res_np: np.ndarray = low_res[0].cpu().numpy()
        masks: np.ndarray = self._upscale(low_res_np)  # numpy from here on: no torch threads
        if not return_logits:
            masks = masks > self.mask_threshold
        iou_np: np.ndarray = iou[0].cpu().numpy()
        self._start_conversions()
        return masks, iou_np, low_res_np

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction, coordinates already in the resized frame (see `transform`).

        point_coords: B, N, 2; point_labels: B, N; boxes: B, 4; mask_input: B, 1, 256, 256.
        Returns masks B, M, H, W, iou_predictions B, M, low_res_logits B, M, 256, 256.
        """
        self._require_image()
        coords = None if point_coords is None else point_coords.detach().float().cpu().numpy()
        labels = None if point_labels is None else point_labels.detach().cpu().numpy()
        box_arr = None if boxes is None else boxes.detach().float().cpu().numpy()
        batch = check_prompt_batch(coords, labels, box_arr,
                                   None if mask_input is None else tuple(mask_input.shape),
                                   self.model.prompt_encoder.mask_input_size)
        packed = self._tensors(pack_prompts(coords, labels, box_arr))
        low_res, iou = self._decode(*packed, mask_input, multimask_output, batch=batch)
        masks = self._upscale(low_res)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        self._start_conversions()
        return masks, iou, low_res

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """B objects at once with numpy arrays in pixels of the original image: `predict_torch`
        after `transform`, with `mobile_sam.onnx.OnnxPredictor.predict_batch`'s interface.

        point_coords: B, N, 2 XY with point_labels B, N; boxes: B, 4 XYXY; either may be None;
        mask_input: 1, 256, 256 logits. Returns masks B, M, H, W (bool, or float32 logits if
        return_logits), iou_predictions B, M and low-res logits B, M, 256, 256 (float32).
        """
        _, original_size, _ = self._require_image()
        device = self.device
        coords = labels = boxes_t = mask_t = None
        if point_coords is not None:
            coords = torch.as_tensor(self.transform.apply_coords(point_coords, original_size),
                                     dtype=torch.float, device=device)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=device)
        if boxes is not None:
            boxes_t = torch.as_tensor(self.transform.apply_boxes(boxes, original_size),
                                      dtype=torch.float, device=device)
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=device)[None]
        masks, iou, low_res = self.predict_torch(coords, labels, boxes_t, mask_t,
                                                 multimask_output, return_logits)
        return (masks.cpu().numpy(), iou.float().cpu().numpy(),
                low_res.float().cpu().numpy())

    def _tensors(self, packed: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """`pack_prompts` output as tensors on the model's device."""
        coords, labels = packed
        return torch.as_tensor(coords, device=self.device), torch.as_tensor(labels, device=self.device)

    def _decode(self, coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor | None,
                multimask_output: bool, min_iou: float | None = None, half: bool = False,
                extent: tuple[int, int] | None = None, out: torch.Tensor | None = None,
                batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed prompts (`pack_prompts`: B x N' x 2 input-frame coords, B x N' labels) and an
        optional B x 1 x 256 x 256 mask input -> low-res logits and IoU predictions."""
        model = self.model
        features, _, _ = self._require_image()
        dtype = features.dtype
        if batch is not None and coords.shape[0] != batch:  # a mask input without points
            coords, labels = coords.expand(batch, -1, -1), labels.expand(batch, -1)
        runner = self._decoder(half)
        if mask_input is not None:  # a dense embedding per prompt: nothing to reuse
            dense = model.prompt_encoder.mask_downscaling(mask_input.to(self.device, dtype))
            cache = DecoderImageCache.build(features, model.prompt_encoder, model.mask_decoder, dense)
        else:
            if self._decoder_cache is None:
                self._decoder_cache = DecoderImageCache.build(features, model.prompt_encoder,
                                                              model.mask_decoder)
            cache = self._decoder_cache
        if coords.shape[1] == 0:  # no point and no box: the compiled graphs need >= 1 point
            runner = TorchDecoderRunner(model.mask_decoder, model.prompt_encoder)
        low_res, iou = decode_masks(runner, cache, coords, labels, multimask_output, min_iou,
                                    extent, out)
        return low_res.float(), iou.float()

    def _decoder(self, half: bool = False) -> DecoderRunner:
        """The decoder runner for the backend, shared by the model's predictors. Looked up
        once per image (like the per-image decoder cache): weights changed after `set_image`
        take effect at the next image."""
        if half not in self._runners:
            self._runners[half] = shared_decoder(self.model, self.backend, half, self.conversion)
            if self._encoder is not None:  # prompting now: the encoder's buffers can go
                self._encoder.release_memory()
        return self._runners[half]

    # ------------------------------------------- used by the automatic mask generator
    @torch.inference_mode()
    def predict_point_batch(self, points: np.ndarray, min_iou: float | None = None,
                            half_precision: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """One positive point per prompt, three masks each.

        points: N, 2 XY pixels of the current image. Returns low-res logits N, 3, 256, 256
        and IoU predictions N, 3 (float32 numpy). With `min_iou`, prompts none of whose masks
        has a predicted IoU above it are not upscaled (their logits are zeros), and the
        logits are only the top-left part that `upscale_logits` reads (N, 3, r, c): the rest
        is padding.
        half_precision: decode in float16 where the CPU does so natively (see
        `mobile_sam.runtime.make_decoder`); the generator's fast mode asks for it.
        """
        _, original_size, _ = self._require_image()
        points = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
        coords_t, labels_t = self._tensors(pack_prompts(
            points, np.ones(points.shape[:2], np.int64), None, original_size=original_size,
            long_side=self.transform.target_length))
        # On a CPU, a few prompts at a time keep the 4096-token activations in cache; a
        # batch of 64 is memory-bound and slower per prompt (and needs ~1.5 GB).
        step = len(coords_t) if self.device.type != "cpu" else self.cpu_decoder_batch
        if min_iou is not None:
            kept = self._decode_kept_points(coords_t, labels_t, step, min_iou, half_precision)
            self._start_conversions()
            return kept
        parts = [self._decode(coords_t[i:i + step], labels_t[i:i + step], None, True, None,
                              half_precision) for i in range(0, len(coords_t), step)]
        low_res = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, 3, 1, 1)
        iou = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, 3)
        low_res_np: np.ndarray = low_res.cpu().numpy()
        iou_np: np.ndarray = iou.cpu().numpy()
        self._start_conversions()
        return low_res_np, iou_np

    def _decode_kept_points(self, coords: torch.Tensor, labels: torch.Tensor, step: int,
                            min_iou: float, half: bool) -> tuple[np.ndarray, np.ndarray]:
        """`predict_point_batch` with `min_iou`: the generator only upscales, so only the
        logits that upscaling reads are computed, and those of every batch are written into
        one `numpy.zeros` array, whose pages for the skipped prompts are never touched."""
        upscaler = self._upscaler()  # the embedding cells it reads: each gives 4x4 logits
        rows, cols = -(-upscaler.row_stop // 4), -(-upscaler.col_stop // 4)
        low_res = np.zeros((len(coords), 3, 4 * rows, 4 * cols), np.float32)
        iou = np.zeros((len(coords), 3), np.float32)
        for i in range(0, len(coords), step):
            out = torch.from_numpy(low_res[i:i + step])
            _, part_iou = self._decode(coords[i:i + step], labels[i:i + step], None, True,
                                       min_iou, half, (rows, cols), out)
            iou[i:i + step] = part_iou.cpu().numpy()
        return low_res, iou

    @torch.inference_mode()
    def upscale_logits(self, low_res_logits: np.ndarray) -> np.ndarray:
        """K, 256, 256 low-res logits (or the top-left part `predict_point_batch` returns)
        -> K, H, W logits at the current image's size."""
        self._require_image()
        return np.asarray(self._upscale(np.asarray(low_res_logits, dtype=np.float32)))

    def _upscaler(self) -> MaskUpscaler:
        _, original_size, input_size = self._require_image()
        return mask_upscaler(4 * self.model.prompt_encoder.image_embedding_size[0],
                             self.model.img_size, input_size, original_size)

    def _upscale(self, low_res: Any) -> Any:
        """Low-res logits (..., 256, 256) -> logits at the image size: one sparse pass on the
        CPU (`MaskUpscaler`), the model's two interpolations on other devices."""
        if self.device.type == "cpu" or isinstance(low_res, np.ndarray):
            return self._upscaler()(low_res)
        _, original_size, input_size = self._require_image()
        shape = low_res.shape
        masks = self.model.postprocess_masks(low_res.reshape(-1, 1, *shape[-2:]), input_size,
                                             original_size)
        return masks.reshape(*shape[:-2], *masks.shape[-2:])


def _image_size(size: tuple[int, ...], name: str) -> tuple[int, int]:
    """An image size given as any sequence of two ints -> (int, int)."""
    if len(size) != 2:
        raise ValueError(f"{name} must be (height, width), got {tuple(size)}")
    return int(size[0]), int(size[1])
