"""Golden replay of fixture_a (tests/data, or the full reference folder MOBILE_SAM_REFERENCE names):
every recorded call of the original code must be reproduced within the fixture's tolerances (the
acceptance test of fidelity)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CHECKPOINT_PACKED, DATA_DIR, read_packed
from mobile_sam import SamPredictor, sam_model_registry


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-12))


def assert_logits_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    max_abs = float(np.abs(got - want).max())
    assert max_abs <= 2e-2 and rel_l2(got, want) <= 2e-4, f"{what}: max-abs {max_abs}, rel {rel_l2(got, want)}"


def assert_masks_match(got: np.ndarray, want: np.ndarray, logits: np.ndarray, what: str) -> None:
    """IoU >= 0.99 per mask, ignoring pixels whose recorded logit is within 2e-2 of 0."""
    assert got.shape == want.shape and got.dtype == bool, what
    care = np.abs(logits) >= 2e-2
    for i in range(got.shape[0]):
        g, w = got[i] & care[i], want[i] & care[i]
        union = (g | w).sum()
        iou = 1.0 if union == 0 else (g & w).sum() / union
        assert iou >= 0.99, f"{what} mask {i}: IoU {iou}"


@pytest.fixture(scope="module")
def fixture(reference_dir, golden_arrays, fixture_checkpoint):
    root = reference_dir / "fixture_a"
    prompts = json.loads((root / "prompts.json").read_text())
    model = sam_model_registry[prompts["model_type"]](checkpoint=fixture_checkpoint)
    images = {}
    for info in prompts["images"]:
        rgb = np.asarray(Image.open(root / info["file"]).convert("RGB"))
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == info["sha256_rgb_uint8"]
        images[info["name"]] = (rgb, info)
    return prompts, golden_arrays, model, images


@pytest.mark.parametrize("image_name", ["truck_640x427", "dog_517x333", "groceries_gray_600x400"])
def test_replay_image(fixture, image_name):
    prompts, golden, model, images = fixture
    rgb, info = images[image_name]
    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    assert predictor.input_size == tuple(info["input_size"])
    assert predictor.original_size == (info["height"], info["width"])
    calls = [c for c in prompts["calls"] if c["image"] == image_name]
    assert len(calls) >= 7
    for call in calls:
        what = call["id"]
        if call["api"] == "get_image_embedding":
            want = golden[what]
            if want is None:  # left out of tests/data (see its README)
                continue
            got = predictor.get_image_embedding().numpy()
            assert np.abs(got - want).max() <= 2e-3 and rel_l2(got, want) <= 2e-4, what
            continue
        args = call["args"]
        out = call["outputs"]
        if call["api"] == "predict":
            mask_input = None
            if "mask_input" in args:
                ref = args["mask_input"]
                mask_input = golden[ref["npz_key"]][ref["index"]][None]
            masks, iou, low_res = predictor.predict(
                point_coords=None if "point_coords" not in args else np.array(args["point_coords"]),
                point_labels=None if "point_labels" not in args else np.array(args["point_labels"]),
                box=None if "box" not in args else np.array(args["box"]),
                mask_input=mask_input,
                multimask_output=args["multimask_output"],
                return_logits=args["return_logits"],
            )
        else:
            assert call["api"] == "predict_torch"
            boxes = torch.tensor(args["boxes"], dtype=torch.float32)
            boxes = predictor.transform.apply_boxes_torch(boxes, predictor.original_size)
            masks_t, iou_t, low_t = predictor.predict_torch(
                None, None, boxes=boxes, multimask_output=args["multimask_output"],
                return_logits=args["return_logits"])
            masks, iou, low_res = masks_t.numpy(), iou_t.numpy(), low_t.numpy()
        want_low = golden[out["low_res_logits"]]
        assert_logits_close(low_res, want_low, what + " low_res_logits")
        assert np.abs(iou - golden[out["iou_predictions"]]).max() <= 1e-4, what + " iou"
        # Full-resolution logits: recorded for return_logits calls, else recomputed from the
        # recorded low-res logits (to know which pixels sit on the threshold).
        if args["return_logits"]:
            full_ref = golden[out["logits"]]
            assert_logits_close(masks, full_ref, what + " logits")
            masks = masks > 0
            if "masks" in out:
                assert_masks_match(masks, golden[out["masks"]], full_ref, what)
            continue
        flat_low = want_low.reshape(-1, *want_low.shape[-2:])
        full_ref = predictor.upscale_logits(flat_low).reshape(masks.shape)
        want = golden[out["masks"]]
        assert_masks_match(masks.reshape(-1, *masks.shape[-2:]), want.reshape(-1, *want.shape[-2:]),
                           full_ref.reshape(-1, *full_ref.shape[-2:]), what)


def test_fixture_covers_every_api(fixture):
    prompts, _, _, _ = fixture
    apis = {c["api"] for c in prompts["calls"]}
    assert apis == {"get_image_embedding", "predict", "predict_torch"}
    assert any(c.get("args", {}).get("return_logits") for c in prompts["calls"])


def test_golden_holds_every_recorded_output(fixture):
    """Every output prompts.json names is in the golden data. tests/data leaves out one image's
    embedding, never a decoder output; the full reference folder leaves out nothing."""
    prompts, golden, _, _ = fixture
    named = {c["id"] for c in prompts["calls"] if c["api"] == "get_image_embedding"}
    named |= {key for c in prompts["calls"] for key in c.get("outputs", {}).values()}
    named |= set(prompts["amg"]["outputs"].values())
    assert set(golden) == named
    left_out = [key for key, array in golden.items() if array is None]
    assert len(left_out) <= 1 and all(key.endswith("/embedding") for key in left_out), left_out


def test_fixture_checkpoint_is_the_reference_file(fixture_checkpoint):
    """tests/data packs checkpoint.pt losslessly: the file the tests load is, byte for byte, the
    reference's checkpoint.pt (whose sha256 the packed file records)."""
    recorded = str(read_packed(DATA_DIR / "fixture_a" / CHECKPOINT_PACKED)["source_sha256"])
    assert hashlib.sha256(fixture_checkpoint.read_bytes()).hexdigest() == recorded
