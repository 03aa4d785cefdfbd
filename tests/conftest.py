"""Shared test fixtures: where the reference data lives, tiny models, photos."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests run the torch encoder unless they ask for another backend (tests/test_backends.py);
# exports and downloads go to a throw-away cache, never the user's; OpenVINO telemetry off.
os.environ.setdefault("MOBILE_SAM_BACKEND", "torch")
os.environ.setdefault("MOBILE_SAM_HOME", tempfile.mkdtemp(prefix="mobile_sam_test_home-"))
os.environ.setdefault("CI", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(
    os.environ.get("MOBILE_SAM_REFERENCE", REPO_ROOT.parent / "shared" / "reference")
)
# .ci/run sets MOBILE_SAM_REQUIRE_REFERENCE=1: there a missing fixture is a failure, not a skip.
REQUIRE_REFERENCE = os.environ.get("MOBILE_SAM_REQUIRE_REFERENCE") == "1"


# Prepended to code run in a subprocess to prove it works where torch cannot be imported.
BLOCK_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, Block())\n"
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The shared reference folder (manifests, golden fixture, photos)."""
    if not (REFERENCE_DIR / "fixture_a" / "golden.npz").is_file():
        message = f"reference data not found at {REFERENCE_DIR} (set MOBILE_SAM_REFERENCE)"
        if REQUIRE_REFERENCE:
            pytest.fail(message)
        pytest.skip(message)
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def tiny_sam_config():
    """A small TinyViT model (256² input, 16² embedding) for fast tests of the plumbing."""
    from mobile_sam.build import SamConfig
    from mobile_sam.modeling import TinyViTConfig

    encoder = TinyViTConfig(img_size=256, embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1),
                            num_heads=(1, 2, 3, 4), window_sizes=(7, 7, 7, 7), num_classes=10,
                            out_chans=32)
    return SamConfig("tiny", encoder, prompt_embed_dim=32, image_size=256, embedding_size=16,
                     decoder_heads=2, decoder_mlp_dim=64)


@pytest.fixture(scope="session")
def tiny_sam():
    from mobile_sam.build import build_sam

    torch.manual_seed(0)
    model = build_sam(tiny_sam_config())
    # Random, non-trivial normalisation statistics so that every layer matters.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_sam, tmp_path_factory) -> Path:
    """`tiny_sam`'s weights saved as a plain state dict (load it with the "tiny" config)."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def fixture_checkpoint(reference_dir) -> Path:
    """The golden fixture's vit_t checkpoint (random weights, official layout)."""
    return reference_dir / "fixture_a" / "checkpoint.pt"


@pytest.fixture(scope="session")
def fixture_model(fixture_checkpoint):
    from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"](checkpoint=fixture_checkpoint)


@pytest.fixture(scope="session")
def photo(reference_dir) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(reference_dir / "fixture_a" / "dog_517x333.png").convert("RGB"))
