"""The image encoder as a callable on each backend: eager torch or an exported ONNX file in
onnxruntime (OpenVINO's is in `mobile_sam.runtime.openvino`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..modeling import Sam


class Encoder:
    """The image encoder on a backend: 1x3xSxS float32 numpy -> 1xCxhxw embedding tensor.

    `release_memory()` gives back the backend's work buffers until the next call (OpenVINO
    holds ~180 MB in fp32 at 1024² between calls, which stay resident unless the C heap is
    trimmed too; the other backends hold nothing). Giving them back costs the next call ~10 %
    (fresh pages), so the predictor does it only once an image's prompts start, not between
    images encoded back to back.
    """

    def __init__(self, run: Callable[[np.ndarray], torch.Tensor],
                 release_memory: Callable[[], None] | None = None) -> None:
        self._run = run
        self._release = release_memory

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self._run(image)

    def release_memory(self) -> None:
        if self._release is not None:
            self._release()


def torch_encoder(model: Sam) -> Encoder:
    """`model.image_encoder` in eager torch, on the model's device and dtype."""
    def run(image: np.ndarray) -> torch.Tensor:
        param = next(model.image_encoder.parameters())
        x = torch.from_numpy(image).to(param.device, param.dtype)
        with torch.inference_mode():
            return model.image_encoder(x)
    return Encoder(run)


def onnxruntime_encoder(path: Path, threads: int) -> Encoder:
    """The exported encoder at `path` in an onnxruntime session."""
    from ..onnx.runtime import create_session

    session = create_session(path, threads)
    name = session.get_inputs()[0].name

    def run(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: image})[0])
    return Encoder(run)
