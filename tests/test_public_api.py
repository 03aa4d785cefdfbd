"""The public API is curated and importable; torch-free modules stay torch-free."""
from __future__ import annotations

import subprocess
import sys

import mobile_sam
from conftest import BLOCK_TORCH


def test_all_is_pinned():
    assert mobile_sam.__all__ == [
        "CheckpointError", "ResizeLongestSide", "SAM", "Sam", "SamAutomaticMaskGenerator", "SamPredictor",
        "build_sam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_t",
        "load_sam", "sam_model_registry",
    ]
    for name in mobile_sam.__all__:
        assert getattr(mobile_sam, name) is not None


def test_original_import_line_works():
    from mobile_sam import SAM, SamAutomaticMaskGenerator, SamPredictor, sam_model_registry  # noqa: F401

    assert callable(sam_model_registry["vit_t"])


def test_numpy_modules_do_not_import_torch():
    code = BLOCK_TORCH + (
        "import mobile_sam, mobile_sam.transforms, mobile_sam.masks, mobile_sam.io, mobile_sam.automatic, mobile_sam.prompts, mobile_sam.onnx\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
