"""Programs written for the original MobileSAM / segment-anything packages, the way its
notebooks and scripts use it, run unchanged and give the original's numbers (golden fixture).

Covered here: end-to-end `Sam.forward` over two images, `TinyViT` built from the original's
keyword arguments, its training options, the predictor's reset, `SamOnnxModel` exported with
both torch exporters and run in onnxruntime (and quantized), every `utils.amg` helper on a
hand-made mask, and a model of this package inside `segment_anything`'s own predictor.
(The predictor calls, batched boxes and the mask generator with crops are replayed against
the fixture in test_golden.py and test_automatic.py.)
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_sam import SamPredictor, sam_model_registry
from mobile_sam.modeling import Sam, TinyViT
from mobile_sam.utils.transforms import ResizeLongestSide
from test_golden import assert_logits_close, assert_masks_match, rel_l2

IMAGES = ["truck_640x427", "dog_517x333"]


@pytest.fixture(scope="module")
def golden(reference_dir):
    root = reference_dir / "fixture_a"
    prompts = json.loads((root / "prompts.json").read_text())
    calls = {c["id"]: c for c in prompts["calls"]}
    arrays = dict(np.load(root / "golden.npz"))
    images = {info["name"]: np.asarray(Image.open(root / info["file"]).convert("RGB"))
              for info in prompts["images"]}
    return calls, arrays, images


def test_registry_names_the_known_variants():
    with pytest.raises(KeyError, match=r"'vit_q'.*default, vit_h, vit_l, vit_b, vit_t"):
        sam_model_registry["vit_q"]


def test_build_sam_is_vit_h_whatever_the_import_order():
    import importlib

    import mobile_sam

    module = importlib.import_module("mobile_sam.build_sam")  # binds the submodule on the package
    from mobile_sam import build_sam
    from mobile_sam.build_sam import sam_model_registry as registry

    assert build_sam is mobile_sam.build_sam is module.build_sam is module.build_sam_vit_h
    assert registry is sam_model_registry


def test_resize_longest_side_torch_methods(golden):
    image = np.array(golden[2]["dog_517x333"])
    resize = ResizeLongestSide(1024)
    batch = torch.as_tensor(image).permute(2, 0, 1)[None].float()
    resized = resize.apply_image_torch(batch)
    want = resize.apply_image(image)  # Pillow on uint8: the predictor's resize
    assert resized.shape == (1, 3, *want.shape[:2])
    assert float((resized[0].permute(1, 2, 0) - torch.from_numpy(want).float()).abs().mean()) < 1.0
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0]])
    np.testing.assert_allclose(resize.apply_boxes_torch(boxes, image.shape[:2]).numpy(),
                               resize.apply_boxes(boxes.numpy(), image.shape[:2]))


# --------------------------------------------------------------------------- Sam.forward


def test_sam_forward_over_two_images_matches_golden_and_predictor(fixture_model, golden):
    """The predictor notebook's batched example: images resized by ResizeLongestSide,
    prompts transformed with the *_torch methods, one call for both images."""
    calls, arrays, images = golden
    resize = ResizeLongestSide(fixture_model.image_encoder.img_size)

    def prepare(image: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(resize.apply_image(image)).permute(2, 0, 1).contiguous()

    truck, dog = images["truck_640x427"], images["dog_517x333"]
    points = calls["truck_640x427/two_points"]["args"]
    boxes = calls["dog_517x333/torch_boxes3"]["args"]["boxes"]
    batched_input = [
        {"image": prepare(truck), "original_size": truck.shape[:2],
         "point_coords": resize.apply_coords_torch(torch.tensor([points["point_coords"]]),
                                                   truck.shape[:2]),
         "point_labels": torch.tensor([points["point_labels"]])},
        {"image": prepare(dog), "original_size": dog.shape[:2],
         "boxes": resize.apply_boxes_torch(torch.tensor(boxes), dog.shape[:2])},
    ]
    with torch.no_grad():
        out = fixture_model(batched_input, multimask_output=False)
    assert [tuple(o["masks"].shape) for o in out] == [(1, 1, 427, 640), (3, 1, 333, 517)]
    assert out[0]["masks"].dtype == torch.bool

    for record, call_id in zip(out, ["truck_640x427/two_points", "dog_517x333/torch_boxes3"]):
        want = calls[call_id]["outputs"]
        low = record["low_res_logits"].numpy()
        assert_logits_close(low.reshape(arrays[want["low_res_logits"]].shape),
                            arrays[want["low_res_logits"]], call_id)
        iou = record["iou_predictions"].numpy().reshape(arrays[want["iou_predictions"]].shape)
        assert np.abs(iou - arrays[want["iou_predictions"]]).max() <= 1e-4, call_id

    # The same image and prompts through SamPredictor give the same masks.
    predictor = SamPredictor(fixture_model)
    predictor.set_image(dog)
    masks, iou, low = predictor.predict_torch(
        None, None, boxes=batched_input[1]["boxes"], multimask_output=False)
    assert_logits_close(out[1]["low_res_logits"].numpy(), low.numpy(), "forward vs predictor")
    care = predictor.upscale_logits(low.numpy().reshape(-1, 256, 256))
    assert_masks_match(out[1]["masks"].numpy()[:, 0], masks.numpy()[:, 0], care,
                       "forward vs predictor masks")


def test_sam_forward_is_differentiable(tiny_sam):
    model = Sam(tiny_sam.image_encoder, tiny_sam.prompt_encoder, tiny_sam.mask_decoder)
    model.load_state_dict(tiny_sam.state_dict())
    model.train()
    size = model.image_encoder.img_size
    image = torch.randint(0, 256, (3, size, size * 3 // 4), dtype=torch.uint8).float()
    batch = [{"image": image, "original_size": (300, 225),
              "point_coords": torch.tensor([[[60.0, 80.0]]]), "point_labels": torch.tensor([[1]]),
              "boxes": torch.tensor([[10.0, 20.0, 150.0, 200.0]])}]
    out = model(batch, multimask_output=True)
    assert out[0]["low_res_logits"].requires_grad
    (out[0]["low_res_logits"].mean() + out[0]["iou_predictions"].sum()).backward()
    for name in ("image_encoder.patch_embed.seq.0.c.weight",
                 "prompt_encoder.point_embeddings.1.weight",
                 "mask_decoder.output_hypernetworks_mlps.1.layers.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# --------------------------------------------------------------------------- TinyViT


ORIGINAL_MOBILESAM_KWARGS = dict(
    img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0,
    drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0,
    local_conv_size=3, layer_lr_decay=0.8,
)


def test_tinyvit_from_original_kwargs_gives_the_golden_embedding(fixture_checkpoint, golden):
    _, arrays, images = golden
    encoder = TinyViT(**ORIGINAL_MOBILESAM_KWARGS)
    state = torch.load(fixture_checkpoint, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                            strict=True)
    encoder.eval()
    from mobile_sam.transforms import prepare_image

    x, _ = prepare_image(images["dog_517x333"], 1024)
    with torch.no_grad():
        got = encoder(torch.from_numpy(x)).numpy()
    want = arrays["dog_517x333/embedding"]
    assert np.abs(got - want).max() <= 2e-3 and rel_l2(got, want) <= 2e-4


def small_tinyvit(**kwargs) -> TinyViT:
    args = dict(img_size=224, embed_dims=[16, 32, 48, 64], depths=[1, 2, 2, 1],
                num_heads=[1, 2, 3, 4], window_sizes=[7, 7, 7, 7], num_classes=10)
    args.update(kwargs)
    torch.manual_seed(0)
    return TinyViT(**args)


def test_tinyvit_drop_path_is_stochastic_in_train_mode_only():
    x = torch.randn(2, 3, 224, 224)
    model = small_tinyvit(drop_path_rate=0.5).train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    no_drop = small_tinyvit(drop_path_rate=0.0).train()
    assert torch.equal(no_drop(x), no_drop(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_tinyvit_gradient_checkpointing_recomputes_blocks_with_the_same_gradients():
    x = torch.randn(2, 3, 224, 224)
    plain = small_tinyvit(use_checkpoint=False).train()
    ckpt = small_tinyvit(use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    block = ckpt.layers[2].blocks[0]
    block.register_forward_pre_hook(lambda *args: calls.append(1))
    for model in (plain, ckpt):
        model(x).square().mean().backward()
    assert len(calls) == 2  # once forward, once recomputed in backward
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_tinyvit_layer_lr_decay_attributes():
    decay = 0.8
    model = small_tinyvit(layer_lr_decay=decay)
    n = sum(model.depths)
    i = 0
    for layer in model.layers:
        for block in layer.blocks:
            assert {p.lr_scale for p in block.parameters()} == {decay ** (n - 1 - i)}
            i += 1
    assert {p.lr_scale for p in model.patch_embed.parameters()} == {decay ** (n - 1)}
    last_of_stage0 = model.depths[0] - 1
    assert {p.lr_scale for p in model.layers[0].downsample.parameters()} == {
        decay ** (n - 1 - last_of_stage0)}
    assert {p.lr_scale for p in model.neck.parameters()} == {1.0}
    for name, p in model.named_parameters():
        assert p.param_name == name and hasattr(p, "lr_scale")
    assert model.no_weight_decay_keywords() == {"attention_biases"}


# --------------------------------------------------------------------------- predictor


def test_predictor_reset_then_new_image(fixture_model, golden):
    calls, arrays, images = golden
    predictor = SamPredictor(fixture_model)
    predictor.set_image(images["truck_640x427"])
    predictor.reset_image()
    assert not predictor.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[10.0, 10.0]]), np.array([1]))
    predictor.set_image(images["dog_517x333"])
    call = calls["dog_517x333/box_point"]
    _, iou, low = predictor.predict(point_coords=np.array(call["args"]["point_coords"]),
                                    point_labels=np.array(call["args"]["point_labels"]),
                                    box=np.array(call["args"]["box"]), multimask_output=False)
    assert_logits_close(low, arrays[call["outputs"]["low_res_logits"]], "box_point")
    assert np.abs(iou - arrays[call["outputs"]["iou_predictions"]]).max() <= 1e-4


# --------------------------------------------------------------------------- SamOnnxModel


def onnx_inputs(predictor: SamPredictor, points: list, labels: list) -> dict[str, np.ndarray]:
    """SAM's ONNX example: a (0, 0) padding point labelled -1, coordinates resized."""
    coords = np.concatenate([np.array(points, float), np.zeros((1, 2))])[None]
    return {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": predictor.transform.apply_coords(coords, predictor.original_size)
        .astype(np.float32),
        "point_labels": np.array([labels + [-1]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(predictor.original_size, np.float32),
    }


def export_like_the_original_script(onnx_model, path: Path, dynamo: bool, opset: int) -> None:
    """scripts/export_onnx_model.py's call. Dynamic axes are listed in input order and the
    default (dynamo) exporter gets a path: torch's dynamic_axes conversion maps them by
    dictionary order and its saving takes no file object."""
    dummy = {
        "image_embeddings": torch.randn(1, 256, 64, 64),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 256, 256),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    onnx_model(**dummy)
    output_names = ["masks", "iou_predictions", "low_res_masks"]
    if onnx_model.return_extra_metrics:
        output_names = ["masks", "iou_predictions", "stability_scores", "areas", "low_res_masks"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            onnx_model, tuple(dummy.values()), str(path), export_params=True, verbose=False,
            opset_version=opset, do_constant_folding=True, input_names=list(dummy),
            output_names=output_names, dynamo=dynamo,
            dynamic_axes={"image_embeddings": {}, "point_coords": {1: "num_points"},
                          "point_labels": {1: "num_points"}},
        )


@pytest.fixture(scope="module")
def truck_predictor(fixture_model, golden):
    predictor = SamPredictor(fixture_model)
    predictor.set_image(golden[2]["truck_640x427"])
    return predictor


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["torchscript", "dynamo"])
def test_sam_onnx_model_exports_and_matches_golden(fixture_model, truck_predictor, golden,
                                                   tmp_path, dynamo):
    import onnxruntime as ort

    from mobile_sam.utils.onnx import SamOnnxModel

    calls, arrays, _ = golden
    onnx_model = SamOnnxModel(fixture_model, return_single_mask=False)
    path = tmp_path / "sam.onnx"
    export_like_the_original_script(onnx_model, path, dynamo=dynamo, opset=18 if dynamo else 16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    # One point (+ padding) and two points (+ padding): the point count is dynamic.
    for call_id in ("truck_640x427/point_multi", "truck_640x427/two_points"):
        args, want = calls[call_id]["args"], calls[call_id]["outputs"]
        feeds = onnx_inputs(truck_predictor, args["point_coords"], args["point_labels"])
        masks, iou, low = session.run(None, feeds)
        tokens = slice(1, 4) if args["multimask_output"] else slice(0, 1)
        assert_logits_close(low[:, tokens], arrays[want["low_res_logits"]][None], call_id)
        assert np.abs(iou[:, tokens] - arrays[want["iou_predictions"]]).max() <= 1e-4
        assert masks.shape == (1, 4, 427, 640)
        full = truck_predictor.upscale_logits(low[0])
        assert_logits_close(masks[0], full, call_id + " upscaled")
        with torch.no_grad():
            ref = onnx_model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        assert_logits_close(low, ref[2].numpy(), call_id + " onnxruntime vs torch")


def test_sam_onnx_model_options_and_quantization(fixture_model, truck_predictor, tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mobile_sam.masks import stability_score
    from mobile_sam.utils.onnx import SamOnnxModel

    onnx_model = SamOnnxModel(fixture_model, return_single_mask=True, use_stability_score=True,
                              return_extra_metrics=True)
    # The script's --gelu-approximate sets `approximate` on these modules.
    assert any(isinstance(m, torch.nn.GELU) for m in onnx_model.modules())
    path = tmp_path / "sam.onnx"
    export_like_the_original_script(onnx_model, path, dynamo=False, opset=16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    full = SamOnnxModel(fixture_model, return_single_mask=False)

    for points, labels, token in (([[268.75, 234.75]], [1], None),
                                  ([[268.75, 234.75], [512.0, 106.75]], [1, 0], 0)):
        feeds = onnx_inputs(truck_predictor, points, labels)
        masks, scores, stability, areas, low = session.run(None, feeds)
        with torch.no_grad():
            all_masks, _, all_low = full(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        all_stability = stability_score(all_low.numpy()[0], 0.0, 1.0)
        # Two points with padding: the best multimask output; three: the single-mask token.
        chosen = int(np.argmax(all_stability[1:]) + 1) if token is None else token
        assert_logits_close(low[0, 0], all_low.numpy()[0, chosen], "selected mask")
        assert abs(scores[0, 0] - all_stability[chosen]) <= 1e-6
        upscaled = masks[0, 0]
        assert areas[0, 0] == int((upscaled > 0).sum())
        want = stability_score(upscaled[None], 0.0, 1.0)[0]
        assert abs(stability[0, 0] - want) <= 1e-6

    quantized = tmp_path / "sam_quantized.onnx"
    quantize_dynamic(model_input=str(path), model_output=str(quantized), per_channel=False,
                     reduce_range=False, weight_type=QuantType.QUInt8)
    q_out = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert [o.shape for o in q_out] == [o.shape for o in session.run(None, feeds)]
    assert np.corrcoef(q_out[4].ravel(), low.ravel())[0, 1] > 0.9


# --------------------------------------------------------------------------- utils.amg


def test_amg_helpers_on_a_hand_made_mask():
    from mobile_sam.utils import amg

    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[0, 1:4, 2:7] = True  # rows 1-3, columns 2-6: 15 pixels
    mask[0, 5, 0] = True  # an island of 1 pixel
    # mask 1 stays empty
    assert amg.batched_mask_to_box(mask).tolist() == [[0, 1, 6, 5], [0, 0, 0, 0]]
    assert amg.batched_mask_to_box(mask[None]).shape == (1, 2, 4)
    assert amg.box_xyxy_to_xywh(torch.tensor([[2.0, 1.0, 7.0, 4.0]])).tolist() == [[2, 1, 5, 3]]

    rles = amg.mask_to_rle_pytorch(mask)
    assert rles[1] == {"size": [6, 8], "counts": [48]}
    assert amg.area_from_rle(rles[0]) == 16
    np.testing.assert_array_equal(amg.rle_to_mask(rles[0]), mask[0].numpy())
    # Column-major runs: column 0 has 5 zeros then the island pixel; columns 2-6 rows 1-3.
    assert rles[0]["counts"][:4] == [5, 1, 7, 3]
    pycocotools = pytest.importorskip("pycocotools.mask")
    want = pycocotools.encode(np.asfortranarray(mask[0].numpy().astype(np.uint8)))
    assert amg.coco_encode_rle(rles[0]) == {"size": [6, 8], "counts": want["counts"].decode()}

    logits = torch.full((1, 4, 4), -5.0)
    logits[0, :2, :2] = 3.0  # 4 pixels above +1
    logits[0, 2, :] = 0.5  # 4 more above -1 only
    assert amg.calculate_stability_score(logits, 0.0, 1.0).tolist() == [0.5]

    cleaned, changed = amg.remove_small_regions(mask[0].numpy(), 2, "islands")
    assert changed and cleaned.sum() == 15 and not cleaned[5, 0]

    crop = [10, 20, 18, 26]
    assert amg.uncrop_boxes_xyxy(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), crop).tolist() == [
        [11.0, 22.0, 13.0, 24.0]]
    assert amg.uncrop_boxes_xyxy(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), crop).dtype == torch.float32
    assert amg.uncrop_points(torch.tensor([[1, 2]]), crop).tolist() == [[11, 22]]
    placed = amg.uncrop_masks(mask, crop, 30, 20)
    assert placed.shape == (2, 30, 20) and placed.dtype == torch.bool
    assert torch.equal(placed[:, 20:26, 10:18], mask) and placed.sum() == mask.sum()
    near = amg.is_box_near_crop_edge(torch.tensor([[0.0, 5.0, 4.0, 6.0], [30.0, 30.0, 40.0, 40.0]]),
                                     [100, 0, 200, 100], [0, 0, 300, 300])
    assert near.tolist() == [True, False]

    boxes, layers = amg.generate_crop_boxes((100, 200), 1, 0.25)
    assert boxes[0] == [0, 0, 200, 100] and layers == [0, 1, 1, 1, 1]
    grid = amg.build_point_grid(2)
    np.testing.assert_allclose(grid, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert [len(g) for g in amg.build_all_layer_point_grids(4, 2, 2)] == [16, 4, 1]
    assert list(amg.batch_iterator(2, [1, 2, 3], "abc")) == [[[1, 2], "ab"], [[3], "c"]]

    data = amg.MaskData(masks=mask, iou_preds=torch.tensor([0.9, 0.1]), rles=rles,
                        points=np.array([[1, 1], [2, 2]]))
    data.filter(torch.tensor([True, False]))
    assert data["iou_preds"].tolist() == [pytest.approx(0.9)] and len(data["rles"]) == 1
    data.cat(amg.MaskData(masks=mask[1:], iou_preds=torch.tensor([0.5]), rles=rles[1:],
                          points=np.array([[3, 3]])))
    assert data["masks"].shape == (2, 6, 8) and data["points"].tolist() == [[1, 1], [3, 3]]
    data.to_numpy()
    assert isinstance(data["masks"], np.ndarray)
    with pytest.raises(TypeError, match="'bad'"):
        amg.MaskData(bad=3)


# --------------------------------------------------------------------------- segment_anything


@pytest.mark.skipif(importlib.util.find_spec("segment_anything") is None,
                    reason="segment_anything is not installed (it needs torchvision)")
def test_model_inside_segment_anything_predictor(fixture_model, golden):
    from segment_anything import SamPredictor as OriginalPredictor

    calls, arrays, images = golden
    predictor = OriginalPredictor(fixture_model)
    predictor.set_image(images["dog_517x333"])
    call = calls["dog_517x333/point_multi"]
    _, iou, low = predictor.predict(np.array(call["args"]["point_coords"]),
                                    np.array(call["args"]["point_labels"]), multimask_output=True)
    assert_logits_close(low, arrays[call["outputs"]["low_res_logits"]], "segment_anything")
    assert np.abs(iou - arrays[call["outputs"]["iou_predictions"]]).max() <= 1e-4
