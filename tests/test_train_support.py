"""mobile_sam.train building blocks: configs, loading, data listing/splitting, schedule, plots.

Also holds the tiny-model and image builders the other test_train_* files import.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_sam_config

# ----------------------------------------------------------------------------- helpers


def tiny_teacher_config():
    """A 70k-parameter ViT teacher: 256² input, 32×16×16 embedding, decoder matching
    `tiny_sam_config()` (prompt_embed_dim 32 == out_chans)."""
    from mobile_sam.build import SamConfig
    from mobile_sam.modeling import ViTConfig

    return SamConfig("tiny_teacher", ViTConfig(32, 2, 2, (1,), img_size=256, out_chans=32,
                                               window_size=8),
                     prompt_embed_dim=32, image_size=256, embedding_size=16, decoder_heads=2,
                     decoder_mlp_dim=64)


def save_tiny(path: Path, config, seed: int = 0, decoder_from=None) -> Path:
    """Build `config` with random weights (seeded) and save it as {"config", "model"}.

    `decoder_from`: a model whose prompt encoder and mask decoder are copied in (what a
    distilled student carries)."""
    from mobile_sam.build import build_sam
    from mobile_sam.train.models import load_prompt_decoder, prompt_decoder_state, save_model

    torch.manual_seed(seed)
    model = build_sam(config)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    if decoder_from is not None:
        load_prompt_decoder(model, prompt_decoder_state(decoder_from), "test")
    return save_model(path, model, config)


def make_images(folder: Path, n: int, seed: int = 0, broken: bool = False) -> list[Path]:
    """n small RGB images (a gradient, a coloured disc, noise), every third in a subfolder,
    alternating PNG and JPEG; optionally one unreadable file `broken.png`."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(120, 260, 2))
        yy, xx = np.mgrid[:h, :w]
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = xx * 255 // w
        img[..., 1] = yy * 255 // h
        cx, cy, r = rng.integers(20, w - 20), rng.integers(20, h - 20), rng.integers(15, 60)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
        img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
        path = folder / ("sub" if i % 3 == 0 else "") / f"im{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(img).save(path)
        paths.append(path)
    if broken:
        (folder / "broken.png").write_bytes(b"this is not an image")
    return paths


# ----------------------------------------------------------------------------- configs, loading


def test_config_dict_round_trip():
    import dataclasses

    from mobile_sam.build import VARIANTS, config_from_dict, config_to_dict

    for config in [*VARIANTS.values(), tiny_sam_config(), tiny_teacher_config()]:
        as_json = json.loads(json.dumps(config_to_dict(config)))
        assert config_from_dict(as_json) == config
        # dataclasses.asdict (no encoder `type`) is accepted too.
        assert config_from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_config_from_dict_names_bad_fields():
    from mobile_sam.build import CheckpointError, config_from_dict, config_to_dict

    bad = config_to_dict(tiny_sam_config())
    bad["encoder"]["depthz"] = 3
    with pytest.raises(CheckpointError, match="depthz"):
        config_from_dict(bad, source="x.pt")


def test_load_any_reads_config_checkpoints(tmp_path):
    from mobile_sam.build import CheckpointError, build_sam
    from mobile_sam.train.models import file_sha256, load_any

    path = save_tiny(tmp_path / "t.pt", tiny_teacher_config(), seed=3)
    loaded = load_any(path)
    assert loaded.config == tiny_teacher_config()
    saved = torch.load(path, weights_only=True)["model"]
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert loaded.sha256 == file_sha256(path) and not loaded.model.training

    # A custom model saved as a bare state dict cannot be rebuilt: the error says how to save it.
    torch.save(build_sam(tiny_sam_config()).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="carries no config"):
        load_any(tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_any(tmp_path / "missing.pt")


def test_save_model_builtin_variant_is_plain_and_loads_in_registry(tmp_path):
    from mobile_sam import sam_model_registry
    from mobile_sam.build import VARIANTS, build_sam
    from mobile_sam.train.models import load_any, save_model

    torch.manual_seed(0)
    model = build_sam("vit_t")
    path = save_model(tmp_path / "student.pt", model, VARIANTS["vit_t"])
    raw = torch.load(path, weights_only=True)
    assert "config" not in raw and "image_encoder.neck.0.weight" in raw  # official layout
    again = sam_model_registry["vit_t"](checkpoint=path)
    key = "mask_decoder.output_upscaling.0.weight"
    assert torch.equal(again.state_dict()[key], model.state_dict()[key])
    assert load_any(path).config == VARIANTS["vit_t"]


# ----------------------------------------------------------------------------- data


def test_list_images_recursive_sorted_with_sa1b_annotations(tmp_path):
    from mobile_sam.train.data import list_images

    make_images(tmp_path, 4)
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "UPPER.JPEG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "h.png")
    (tmp_path / "im01.json").write_text('{"annotations": []}')
    items = list_images(tmp_path)
    rels = [i.rel for i in items]
    assert rels == ["im01.png", "im02.jpg", "sub/UPPER.JPEG", "sub/im00.jpg", "sub/im03.png"]
    assert items[0].annotation == tmp_path / "im01.json"
    assert all(i.annotation is None for i in items[1:])


def test_list_images_errors(tmp_path):
    from mobile_sam.train.data import list_images

    with pytest.raises(ValueError, match="no images .* found under"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="f.png"):
        list_images(tmp_path / "f.png")


def test_split_is_seeded_and_partitions():
    from mobile_sam.train.data import split_indices

    train, val = split_indices(100, 0.1, seed=5)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert split_indices(100, 0.1, seed=5) == (train, val)
    assert split_indices(100, 0.1, seed=6)[1] != val
    assert split_indices(5, 0.01, 0)[1].__len__() == 1  # a fraction > 0 keeps one image
    assert split_indices(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(5, 1.0, 0)


def test_model_input_is_the_predictor_preprocessing(tiny_sam, tmp_path):
    from mobile_sam.train.data import model_input, read_image
    from mobile_sam.transforms import ResizeLongestSide

    path = make_images(tmp_path, 2)[1]
    rgb, sha = read_image(path)
    image, hw = model_input(rgb, 256)
    resized = ResizeLongestSide(256).apply_image(rgb)
    expected = tiny_sam.preprocess(torch.as_tensor(resized.transpose(2, 0, 1).copy())[None])[0]
    assert hw == resized.shape[:2]
    assert torch.equal(torch.from_numpy(image), expected)
    import hashlib

    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


def test_read_image_names_the_unreadable_file(tmp_path):
    from mobile_sam.io import ImageLoadError
    from mobile_sam.train.data import read_image

    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_annotation_masks_decode_sa1b_json(tmp_path):
    from mobile_sam.masks import mask_to_rle, rle_to_coco
    from mobile_sam.train.data import load_annotation_masks

    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:8, 3:9] = True
    masks[1, 10:, 20:] = True
    anns = [{"segmentation": rle_to_coco(r)} for r in mask_to_rle(masks)]
    (tmp_path / "a.json").write_text(json.dumps({"image": {}, "annotations": anns}))
    assert np.array_equal(load_annotation_masks(tmp_path / "a.json", (20, 30)), masks)
    with pytest.raises(ValueError, match="30x40|20x30"):
        load_annotation_masks(tmp_path / "a.json", (30, 40))


# ----------------------------------------------------------------------------- schedule


def test_lr_warmup_then_cosine():
    from mobile_sam.train.schedule import lr_at

    lrs = [lr_at(s, 1e-3, 4, 20, 0.01) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[4 + 15 // 2] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 7 / 15)))


def test_ddp_and_accumulation_see_the_same_micro_batches():
    """The basis of the DDP == single-process test: W processes with accumulate A and one
    process with accumulate W·A split every global batch into the same micro-batches."""
    from mobile_sam.train.schedule import micro_batches, rank_order

    n, b, steps = 23, 2, 2
    for world, acc in ((2, 1), (2, 2), (3, 1)):
        single = rank_order(n, 1, 7, 0, 1, b * acc * world, steps)
        ranks = [rank_order(n, 1, 7, r, world, b * acc, steps) for r in range(world)]
        for k in range(steps):
            batch = single[k * b * acc * world:(k + 1) * b * acc * world]
            want = sorted(tuple(batch[s]) for s in micro_batches(len(batch), acc * world))
            got = sorted(tuple(order[k * b * acc:(k + 1) * b * acc][s])
                         for order in ranks for s in micro_batches(b * acc, acc))
            assert got == want
    assert rank_order(n, 1, 7, 0, 1, 4, 5) != rank_order(n, 2, 7, 0, 1, 4, 5)  # reshuffled


# ----------------------------------------------------------------------------- plots


def test_plots_draw_pngs(tmp_path):
    from mobile_sam.io import PALETTE
    from mobile_sam.train.plot import histograms_png, loss_curve_png

    path = loss_curve_png(tmp_path / "loss.png", {"train": [(1, 2.0), (2, 1.0), (3, 0.5)],
                                                  "val": [(3, 0.7)]})
    img = np.asarray(Image.open(path))
    assert img.shape == (480, 800, 3)
    for color in PALETTE[:2]:
        assert (img == color).all(axis=2).sum() > 20
    path = histograms_png(tmp_path / "h.png", {"a": [0.1, 0.9, 0.95], "b": [1.0]})
    img = np.asarray(Image.open(path))
    assert img.shape == (330, 800, 3) and (img == PALETTE[1]).all(axis=2).sum() > 100


def test_inference_path_does_not_import_training():
    import subprocess
    import sys

    code = ("import sys, mobile_sam, mobile_sam.predictor, mobile_sam.automatic\n"
            "from mobile_sam.cli import build_parser\n"
            "build_parser()\n"
            "bad = sorted(m for m in sys.modules if m.startswith('mobile_sam.train'))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_coco(folder: Path, n: int, seed: int = 0) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A small COCO set: n noisy images, each with a filled rectangle (a polygon annotation)
    and a filled ellipse (compressed RLE; uncompressed on odd images) in distinct colours,
    plus a crowd annotation that must be ignored. Returns (instances JSON path, the drawn
    masks per file name in annotation order)."""
    from mobile_sam.masks import mask_to_rle, rle_to_coco

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns, truth = [], [], {}
    for i in range(n):
        h, w = (int(v) for v in rng.integers(140, 240, 2))
        img = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
        yy, xx = np.mgrid[:h, :w]
        x0, y0 = int(rng.integers(5, w // 2 - 10)), int(rng.integers(5, h // 2 - 10))
        x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2))
        rect = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        cx, cy = int(rng.integers(w // 2, w - 30)), int(rng.integers(h // 2, h - 30))
        ax, ay = int(rng.integers(12, 28)), int(rng.integers(12, 28))
        ellipse = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        img[rect] = (230, 40, 40)
        img[ellipse & ~rect] = (40, 200, 230)
        ellipse &= ~rect
        name = f"img_{i:03d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(img).save(folder / "images" / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        rle = mask_to_rle(ellipse[None])[0]
        ys, xs = np.nonzero(ellipse)
        anns += [
            {"id": 3 * i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
             "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "area": int(rect.sum())},
            {"id": 3 * i + 2, "image_id": i + 1, "category_id": 2, "iscrowd": 0,
             "segmentation": rle if i % 2 else rle_to_coco(rle),
             "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                      int(ys.max() - ys.min() + 1)], "area": int(ellipse.sum())},
            {"id": 3 * i + 3, "image_id": i + 1, "category_id": 3, "iscrowd": 1,
             "segmentation": rle_to_coco(mask_to_rle(np.ones((1, h, w), bool))[0]),
             "bbox": [0, 0, w, h], "area": h * w},
        ]
        truth[name] = [rect, ellipse]
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": k, "name": str(k)} for k in (1, 2, 3)]}))
    return path, truth


def test_file_list_as_image_source(tmp_path):
    """A .txt file list names images relative to its folder (or absolute); the cache built from
    it holds the same embeddings, under the same relative paths, as one built from a folder."""
    from mobile_sam.train.data import images_root, list_images
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import build_cache

    paths = make_images(tmp_path / "images", 4, seed=2)
    rels = [p.relative_to(tmp_path / "images").as_posix() for p in paths]
    listing = tmp_path / "images" / "train.txt"
    listing.write_text(f"# training images\n{rels[2]}\n\n{rels[0]}\n{paths[3]}\n")
    items = list_images(listing)
    assert [i.rel for i in items] == sorted([rels[2], rels[0], paths[3].as_posix()])
    assert all(i.path.is_file() for i in items) and images_root(listing) == tmp_path / "images"
    teacher = load_any(save_tiny(tmp_path / "t.pt", tiny_teacher_config(), seed=1))
    a = build_cache(teacher, listing, tmp_path / "a", shard_size=2, progress=False)
    b = build_cache(teacher, tmp_path / "images", tmp_path / "b", shard_size=8, progress=False)
    assert a is not None and b is not None
    by_rel = {e.rel: i for i, e in enumerate(b.entries)}
    assert [e.rel for e in a.entries] == [i.rel for i in items]
    for i, e in enumerate(a.entries):
        j = by_rel.get(e.rel, by_rel[rels[3]])  # the absolute path is image 3
        assert np.array_equal(a.embedding(i), b.embedding(j)), e.rel
    listing.write_text(f"{rels[0]}\n{rels[0]}\n")
    with pytest.raises(ValueError, match="more than once"):
        list_images(listing)
    listing.write_text("# nothing\n")
    with pytest.raises(ValueError, match="names no image"):
        list_images(listing)


def test_tar_shards_as_image_source(tmp_path):
    """WebDataset-style .tar shards in an image folder: their images are listed as
    `<shard>.tar/<member>`, cached and loaded (by forked loader workers too) exactly like the
    same images as loose files."""
    import tarfile

    from torch.utils.data import DataLoader

    from mobile_sam.train.data import CachedEmbeddingDataset, image_exists, list_images, read_image
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import build_cache

    loose = make_images(tmp_path / "loose", 4, seed=3)
    folder = tmp_path / "sharded"
    folder.mkdir()
    for k, group in enumerate((loose[:2], loose[2:])):
        with tarfile.open(folder / f"shard-{k:03d}.tar", "w") as tar:
            for p in group:
                tar.add(p, arcname=p.name)
    items = list_images(folder)
    assert [i.rel for i in items] == [f"shard-000.tar/{loose[0].name}",
                                      f"shard-000.tar/{loose[1].name}",
                                      f"shard-001.tar/{loose[2].name}",
                                      f"shard-001.tar/{loose[3].name}"]
    for item, p in zip(items, loose):
        assert image_exists(item.path)
        assert read_image(item.path)[1] == read_image(p)[1]  # same bytes, same sha256
    assert not image_exists(folder / "shard-000.tar" / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg is not in"):
        read_image(folder / "shard-000.tar" / "nope.jpg")

    teacher = load_any(save_tiny(tmp_path / "t.pt", tiny_teacher_config(), seed=1))
    cache = build_cache(teacher, folder, tmp_path / "cache", shard_size=3, progress=False)
    ref = build_cache(teacher, tmp_path / "loose", tmp_path / "ref", shard_size=8, progress=False)
    assert cache is not None and ref is not None
    ref_rows = {e.rel.split("/")[-1]: i for i, e in enumerate(ref.entries)}
    for i, e in enumerate(cache.entries):
        assert np.array_equal(cache.embedding(i), ref.embedding(ref_rows[e.rel.split("/")[-1]]))
    dataset = CachedEmbeddingDataset(cache, range(len(cache)))
    # forkserver: workers forked from a clean process, as under a real training run; a plain
    # fork of this test process would copy the thread pools other tests started
    # (onnxruntime, OpenVINO), which can crash the children.
    batches = list(DataLoader(dataset, batch_size=1, num_workers=2,
                              multiprocessing_context="forkserver"))
    direct = [dataset[i] for i in range(len(dataset))]
    for b, d in zip(batches, direct):
        assert torch.equal(b["image"][0], d["image"]) and torch.equal(b["target"][0], d["target"])


def test_decode_at_size_reads_large_jpegs_at_a_reduced_scale(tmp_path):
    """--decode-at-size: a 1200x900 JPEG for a 256² model decodes at 1/4 scale (300x225, the
    smallest DCT scale covering 256); the cache records it and training decodes the same way."""
    from mobile_sam.train.data import CachedEmbeddingDataset, model_input, read_image
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import CacheError, build_cache

    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    small = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(small).resize((1200, 900), Image.BILINEAR).save(folder / "big.jpg",
                                                                     quality=90)
    Image.fromarray(small).save(folder / "small.png")
    full, sha = read_image(folder / "big.jpg")
    reduced, sha2 = read_image(folder / "big.jpg", 256)
    assert full.shape == (900, 1200, 3) and reduced.shape == (225, 300, 3) and sha == sha2
    assert read_image(folder / "small.png", 256)[0].shape == (90, 120, 3)  # PNG: whole
    # Close to the full decode at the model's size, not identical.
    a, _ = model_input(full, 256)
    b, _ = model_input(reduced, 256)
    assert 0 < np.abs(a - b).mean() < 0.1

    teacher = load_any(save_tiny(tmp_path / "t.pt", tiny_teacher_config(), seed=1))
    cache = build_cache(teacher, folder, tmp_path / "cache", progress=False, decode_at_size=True)
    assert cache is not None and cache.manifest["decode"] == "at_size"
    entry = [e.rel for e in cache.entries].index("big.jpg")
    item = CachedEmbeddingDataset(cache, [entry])[0]
    assert np.array_equal(item["image"].numpy(), b)
    with torch.no_grad():
        expect = teacher.model.image_encoder(torch.from_numpy(b)[None])[0].half().numpy()
    assert np.allclose(cache.embedding(entry), expect, atol=2e-3)
    with pytest.raises(CacheError, match="decode 'at_size', not 'full'"):
        build_cache(teacher, folder, tmp_path / "cache", progress=False)
