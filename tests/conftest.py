"""Shared test fixtures: where the reference data lives, tiny models, photos."""
from __future__ import annotations

import io
import lzma
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests run the torch encoder unless they ask for another backend (tests/test_backends.py);
# exports and downloads go to a throw-away cache, never the user's; OpenVINO telemetry off.
os.environ.setdefault("MOBILE_SAM_BACKEND", "torch")
# A backend asked for is converted before its first call (tests of the background conversion
# ask for it).
os.environ.setdefault("MOBILE_SAM_CONVERSION", "wait")
os.environ.setdefault("MOBILE_SAM_HOME", tempfile.mkdtemp(prefix="mobile_sam_test_home-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tests" / "data"
# The reference folder: tests/data (in the repository), or the full reference folder it was
# made from (MOBILE_SAM_REFERENCE), which holds checkpoint.pt and golden.npz themselves.
REFERENCE_DIR = Path(os.environ.get("MOBILE_SAM_REFERENCE", DATA_DIR))
# tests/data's packed forms of fixture_a/checkpoint.pt and golden.npz (tests/data/README.md).
CHECKPOINT_PACKED = "checkpoint_fp16.npz.xz"
GOLDEN_PACKED = "golden_int16.npz.xz"
GOLDEN_STEP_BITS = 12  # quantization step of the packed golden arrays: rms / 2**12


# Prepended to code run in a subprocess to prove it works where torch cannot be imported.
BLOCK_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def read_packed(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an xz-compressed .npz written by tests/data/make_fixture.py."""
    with np.load(io.BytesIO(lzma.decompress(path.read_bytes()))) as packed:
        return {name: packed[name] for name in packed.files}


def join_bytes(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The 16-bit codes stored as `key.hi` and `key.lo` byte planes, as uint16."""
    return (arrays[key + ".hi"].astype(np.uint16) << 8) | arrays[key + ".lo"]


def rebuild_checkpoint(packed: Path, out: Path) -> Path:
    """Write the float32 state dict packed as float16 in `packed` to `out` (torch.save)."""
    arrays = read_packed(packed)
    state = {}
    for key in arrays["keys"].tolist():
        if key in arrays:  # int64 buffers (BatchNorm num_batches_tracked)
            state[key] = torch.from_numpy(arrays[key])
        else:
            half = join_bytes(arrays, key).view(np.float16)
            state[key] = torch.from_numpy(half.astype(np.float32))
    torch.save(state, out)
    return out


def load_golden(fixture_dir: Path) -> dict[str, np.ndarray | None]:
    """fixture_a's recorded outputs by key: `golden.npz` as recorded, else tests/data's packed
    form (large float arrays to within rms / 2**13, tests/data/README.md). Keys it leaves out
    map to None."""
    if (fixture_dir / "golden.npz").is_file():
        with np.load(fixture_dir / "golden.npz") as golden:
            return {key: golden[key] for key in golden.files}
    arrays = read_packed(fixture_dir / GOLDEN_PACKED)
    golden: dict[str, np.ndarray | None] = dict.fromkeys(arrays.pop("omitted").tolist())
    for name, array in arrays.items():
        key, _, part = name.rpartition(".")
        if part == "step":
            codes = join_bytes(arrays, key).view(np.int16)
            golden[key] = codes.astype(np.float32) * array
        elif part not in ("hi", "lo"):
            golden[name] = array
    return golden


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The folder holding fixture_a/ (the golden fixture) and the state-dict manifests."""
    if not (REFERENCE_DIR / "fixture_a" / "prompts.json").is_file():
        pytest.fail(f"reference data not found at {REFERENCE_DIR} (MOBILE_SAM_REFERENCE="
                    f"{os.environ.get('MOBILE_SAM_REFERENCE')!r}; default tests/data)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def golden_arrays(reference_dir) -> dict[str, np.ndarray | None]:
    """fixture_a's recorded outputs (see load_golden)."""
    return load_golden(reference_dir / "fixture_a")


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
def fixture_checkpoint(reference_dir, tmp_path_factory) -> Path:
    """The golden fixture's vit_t checkpoint.pt (random weights, official layout): the file
    itself in a full reference folder, else rebuilt from tests/data's packed form."""
    recorded = reference_dir / "fixture_a" / "checkpoint.pt"
    if recorded.is_file():
        return recorded
    out = tmp_path_factory.mktemp("fixture_a") / "checkpoint.pt"
    return rebuild_checkpoint(reference_dir / "fixture_a" / CHECKPOINT_PACKED, out)


@pytest.fixture(scope="session")
def fixture_model(fixture_checkpoint):
    from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"](checkpoint=fixture_checkpoint)


@pytest.fixture(scope="session")
def photo(reference_dir) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(reference_dir / "fixture_a" / "dog_517x333.png").convert("RGB"))
