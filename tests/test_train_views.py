"""`distill cache --views K`: augmented views whose teacher embeddings are exact, rebuilt in
training from the recorded recipe and seed; K = 1 leaves caches as they were."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_sam_config
from test_train_support import make_images, save_tiny, tiny_teacher_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import build_cache

    root = tmp_path_factory.mktemp("views")
    make_images(root / "images", 4, seed=5)
    teacher = load_any(save_tiny(root / "teacher.pt", tiny_teacher_config(), seed=1))
    views = build_cache(teacher, root / "images", root / "views", shard_size=3, views=3,
                        progress=False)
    plain = build_cache(teacher, root / "images", root / "plain", shard_size=3, progress=False)
    return {"root": root, "teacher": teacher, "views": views, "plain": plain}


def test_manifest_records_recipe_and_seed_per_view(setup):
    from mobile_sam.train.augment import RECIPE

    cache = setup["views"]
    m = cache.manifest
    assert m["views"] == 3 and m["augment"] == RECIPE and len(cache) == 12
    assert cache.groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert [s["count"] for s in m["shards"]] == [9, 3]  # 3 images (x 3 views) per shard
    flips = set()
    for e, rec in zip(cache.entries, m["entries"]):
        assert rec["view"] == e.view
        if e.view == 0:
            assert "aug" not in rec and "aug_seed" not in rec
            continue
        y0, x0, h, w = rec["aug"]["crop"]
        H, W = e.size
        assert 0 <= y0 and y0 + h <= H and 0 <= x0 and x0 + w <= W
        assert 0.45 * H <= h <= H and 0.45 * W <= w <= W
        flips.add(rec["aug"]["flip"])
    assert flips == {True, False}
    seeds = [r["aug_seed"] for r in m["entries"] if "aug_seed" in r]
    assert len(set(seeds)) == len(seeds) == 8


def test_training_input_is_the_view_the_teacher_saw(setup):
    """For every entry, the student input the training dataset rebuilds (from the recipe and
    the seed) is, bit for bit, the crop + flip of the decoded image given by the recorded box
    (computed here independently), and the teacher's embedding of it is the cached one."""
    from mobile_sam.io import load_image
    from mobile_sam.train.data import CachedEmbeddingDataset, model_input

    cache, teacher = setup["views"], setup["teacher"]
    dataset = CachedEmbeddingDataset(cache, range(len(cache)))
    encoder = teacher.model.image_encoder.eval()
    for i, e in enumerate(cache.entries):
        item = dataset[i]
        rgb = load_image(cache.image_root / e.rel)
        if e.aug is not None:
            y0, x0, h, w = e.aug["crop"]
            rgb = rgb[y0:y0 + h, x0:x0 + w]
            rgb = rgb[:, ::-1] if e.aug["flip"] else rgb
        want, hw = model_input(np.ascontiguousarray(rgb), cache.image_size)
        assert np.array_equal(item["image"].numpy(), want), (e.rel, e.view)
        assert tuple(item["input_hw"].tolist()) == hw
        with torch.inference_mode():
            emb = encoder(item["image"][None])[0].half().numpy()
        assert np.array_equal(emb, cache.embedding(i)), (e.rel, e.view)
    # The views differ from the plain image (else nothing is augmented).
    assert not np.array_equal(dataset[0]["image"].numpy(), dataset[1]["image"].numpy())


def test_view_zero_and_the_default_cache_are_unchanged(setup):
    views, plain = setup["views"], setup["plain"]
    assert "views" not in plain.manifest and "augment" not in plain.manifest
    assert all("view" not in e and "aug" not in e for e in plain.manifest["entries"])
    assert plain.groups == [[i] for i in range(len(plain))] and plain.views == 1
    for image, group in enumerate(views.groups):
        assert views.entries[group[0]].rel == plain.entries[image].rel
        assert np.array_equal(views.embedding(group[0]), plain.embedding(image))
    # Without views, training picks each image's only entry.
    assert [plain.view_entry(i, 3, 0) for i in range(len(plain))] == list(range(len(plain)))


def test_training_picks_one_seeded_view_per_image_per_epoch(setup, tmp_path):
    from mobile_sam.build import config_to_dict
    from mobile_sam.train.distill import RunOptions, TrainConfig, train

    cache = setup["views"]
    picks = [[cache.view_entry(i, epoch, 0) for i in range(4)] for epoch in range(6)]
    assert picks == [[cache.view_entry(i, epoch, 0) for i in range(4)] for epoch in range(6)]
    for row in picks:
        assert all(entry in cache.groups[i] for i, entry in enumerate(row))
    assert len({cache.entries[e].view for row in picks for e in row}) == 3
    assert picks != [[cache.view_entry(i, epoch, 1) for i in range(4)] for epoch in range(6)]

    student = tmp_path / "student.json"
    student.write_text(json.dumps(config_to_dict(tiny_sam_config())))
    result = train(cache.folder, str(student), tmp_path / "run",
                   TrainConfig(epochs=1, batch_size=1, val_fraction=0.25),
                   options=RunOptions(workers=0, progress=False))
    run_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert result.finished and result.step == 3  # 3 training images, not 9 entries
    assert run_config["train_images"] == 3 and run_config["val_images"] == 1


def test_views_are_checked_on_resume_and_load(setup, tmp_path):
    from mobile_sam.train.teacher_cache import CacheError, EmbeddingCache, build_cache

    out = tmp_path / "views"
    shutil.copytree(setup["views"].folder, out)
    with pytest.raises(CacheError, match="--views 3, not 2"):
        build_cache(setup["teacher"], setup["root"] / "images", out, shard_size=3, views=2,
                    progress=False)
    with pytest.raises(ValueError, match="--views must be >= 1"):
        build_cache(setup["teacher"], setup["root"] / "images", out, shard_size=3, views=0,
                    progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["entries"][1]["aug_seed"] += 1  # a seed that no longer gives the recorded view
    (out / "manifest.json").write_text(json.dumps(manifest))
    from mobile_sam.train.data import CachedEmbeddingDataset

    with pytest.raises(CacheError, match="entry 1 .* view 1.*rebuild the cache"):
        CachedEmbeddingDataset(EmbeddingCache.open(out), [1], setup["root"] / "images")[0]


def test_cli_views(setup, tmp_path, capsys):
    from mobile_sam.cli import main

    out = tmp_path / "cache"
    assert main(["distill", "cache", "--teacher", str(setup["root"] / "teacher.pt"), "--images",
                 str(setup["root"] / "images"), "--out", str(out), "--views", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    assert "cached 8 teacher embeddings 32x16x16 fp16 (2 views of 4 images)" in \
        capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["views"] == 2
