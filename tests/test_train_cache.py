"""The teacher-embedding cache: exact round trip, resume, torn shards, refusals, CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from test_train_support import make_images, save_tiny, tiny_teacher_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import build_cache

    root = tmp_path_factory.mktemp("cache")
    images = root / "images"
    make_images(images, 7, broken=True)
    teacher_path = save_tiny(root / "teacher.pt", tiny_teacher_config(), seed=1)
    teacher = load_any(teacher_path)
    messages: list[str] = []
    cache = build_cache(teacher, images, root / "cache", shard_size=3, progress=False,
                        warn=messages.append)
    return {"root": root, "images": images, "teacher": teacher, "teacher_path": teacher_path,
            "cache": cache, "messages": messages}


def test_cache_round_trips_exactly(setup):
    """Each cached embedding is, bit for bit, the fp16 of what SamPredictor computes."""
    from mobile_sam.io import load_image
    from mobile_sam.train.evaluate import torch_predictor
    from mobile_sam.train.models import file_sha256

    cache, teacher = setup["cache"], setup["teacher"]
    predictor = torch_predictor(teacher.model)
    assert len(cache) == 7 and cache.embedding_shape == (32, 16, 16)
    for i, entry in enumerate(cache.entries):
        path = setup["images"] / entry.rel
        image = load_image(path)
        predictor.set_image(image)
        want = predictor.get_image_embedding()[0].half().numpy()
        got = cache.embedding(i)
        assert got.dtype == np.float16 and np.array_equal(got, want), entry.rel
        assert entry.size == image.shape[:2] and entry.sha256 == file_sha256(path)
    manifest = cache.manifest
    assert manifest["teacher"]["sha256"] == file_sha256(setup["teacher_path"])
    assert [s["count"] for s in manifest["shards"]] == [2, 3, 2]  # broken.png was in shard 0
    for shard in manifest["shards"]:  # fp16 data plus a small .npy header
        assert 0 < shard["bytes"] - shard["count"] * 32 * 16 * 16 * 2 <= 128
    cache.verify()


def test_unreadable_images_are_skipped_and_listed(setup):
    cache = setup["cache"]
    assert [s["rel"] for s in cache.skipped] == ["broken.png"]
    assert "not a recognised image format" in cache.skipped[0]["error"]
    assert any("broken.png" in m for m in setup["messages"])


def test_resume_redoes_missing_and_torn_shards_only(setup, tmp_path):
    from mobile_sam.train.teacher_cache import build_cache

    out = tmp_path / "cache"
    shutil.copytree(setup["cache"].folder, out)
    before = {p.name: p.read_bytes() for p in out.glob("shard_*.npy")}
    (out / "shard_00000.npy").unlink()  # missing shard
    npy = out / "shard_00001.npy"  # torn shard: a truncated file under its final name
    npy.write_bytes(npy.read_bytes()[:1000])
    (out / "shard_00002.json").unlink()  # shard written, record not: redone too
    (out / "manifest.json").unlink()
    mtime = (out / "plan.json").stat().st_mtime_ns
    cache = build_cache(setup["teacher"], setup["images"], out, shard_size=3, progress=False,
                        warn=lambda m: None)
    assert {p.name: p.read_bytes() for p in out.glob("shard_*.npy")} == before
    assert (out / "plan.json").stat().st_mtime_ns == mtime
    assert cache.manifest == setup["cache"].manifest | {"images_root": cache.manifest["images_root"]}

    # A finished cache is not recomputed: shards keep their files.
    inode = (out / "shard_00001.npy").stat().st_ino
    build_cache(setup["teacher"], setup["images"], out, shard_size=3, progress=False)
    assert (out / "shard_00001.npy").stat().st_ino == inode


def test_unfinished_cache_says_how_to_finish(setup, tmp_path):
    from mobile_sam.train.teacher_cache import CacheError, EmbeddingCache

    out = tmp_path / "cache"
    shutil.copytree(setup["cache"].folder, out)
    (out / "manifest.json").unlink()
    (out / "shard_00001.json").unlink()
    with pytest.raises(CacheError, match=r"unfinished \(2 of 3 shards done\)"):
        EmbeddingCache.open(out)
    with pytest.raises(CacheError, match="not a teacher-embedding cache"):
        EmbeddingCache.open(tmp_path)


def test_resume_with_another_teacher_or_images_is_refused(setup, tmp_path):
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import CacheError, build_cache

    out = tmp_path / "cache"
    shutil.copytree(setup["cache"].folder, out)
    other = load_any(save_tiny(tmp_path / "other.pt", tiny_teacher_config(), seed=2))
    with pytest.raises(CacheError, match="was started with teacher .*teacher.pt.* not .*other.pt"):
        build_cache(other, setup["images"], out, shard_size=3, progress=False)
    with pytest.raises(CacheError, match="--shard-size 3, not 4"):
        build_cache(setup["teacher"], setup["images"], out, shard_size=4, progress=False)
    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    (images / "im01.png").unlink()
    with pytest.raises(CacheError, match="8 images then, 7 now"):
        build_cache(setup["teacher"], images, out, shard_size=3, progress=False)


def test_cli_cache(setup, tmp_path, capsys):
    from mobile_sam.cli import main

    images = tmp_path / "images"
    make_images(images, 2)
    out = tmp_path / "cache"
    args = ["distill", "cache", "--teacher", str(setup["teacher_path"]), "--images", str(images),
            "--out", str(out), "--device", "cpu", "--no-progress", "--verify"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "cached 2 teacher embeddings 32x16x16 fp16" in printed and "MiB per 1000 images" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_images"] == 2 and manifest["dtype"] == "float16"
    saved = torch.load(out / "prompt_decoder.pt", weights_only=True)
    assert set(saved["model"]) == {k for k in setup["teacher"].model.state_dict()
                                   if k.startswith(("prompt_encoder.", "mask_decoder."))}

    empty = tmp_path / "empty"
    empty.mkdir()
    args[5] = str(empty)
    assert main(args) == 1
    assert "no images (.jpg, .jpeg, .png) found under" in capsys.readouterr().err
    assert main(["distill", "cache", "--teacher", str(tmp_path / "nope.pt"), "--images",
                 str(images), "--out", str(out), "--no-progress"]) == 1
    assert "nope.pt" in capsys.readouterr().err
