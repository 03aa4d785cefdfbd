"""fsspec URLs as image sources (folders, file lists, tar shards) for cache, train and eval;
the manifest names the image root by URL or by a path relative to the cache folder."""
from __future__ import annotations

import json
import sys
import tarfile
import uuid

import numpy as np
import pytest

from conftest import tiny_sam_config
from test_train_support import make_images, save_tiny, tiny_teacher_config

fsspec = pytest.importorskip("fsspec")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The same 5 images as a local folder, as loose files in a memory:// folder and as two tar
    shards there, with a file list; a tiny teacher and the local folder's cache."""
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import build_cache

    root = tmp_path_factory.mktemp("sources")
    paths = make_images(root / "images", 5, seed=4)
    rels = [p.relative_to(root / "images").as_posix() for p in paths]
    mem = f"memory://sources-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for p, rel in zip(paths, rels):
        fs.pipe(f"{mem}/loose/{rel}", p.read_bytes())
    fs.pipe(f"{mem}/loose/.hidden/x.jpg", paths[0].read_bytes())
    for k, group in enumerate((paths[:3], paths[3:])):
        tar_path = root / f"shard-{k}.tar"
        with tarfile.open(tar_path, "w") as tar:
            for p in group:
                tar.add(p, arcname=p.name)
        fs.pipe(f"{mem}/shards/part/shard-{k}.tar", tar_path.read_bytes())
    fs.pipe(f"{mem}/loose/train.txt", f"# two images\n{rels[3]}\n{rels[1]}\n".encode())
    teacher_path = save_tiny(root / "teacher.pt", tiny_teacher_config(), seed=1)
    teacher = load_any(teacher_path)
    ref = build_cache(teacher, root / "images", root / "ref", shard_size=8, progress=False)
    return {"root": root, "rels": rels, "paths": paths, "mem": mem, "teacher": teacher,
            "teacher_path": teacher_path, "ref": ref}


def _same_embeddings(cache, ref, key=lambda rel: rel):
    rows = {key(e.rel): i for i, e in enumerate(ref.entries)}
    assert len(cache) > 0
    for i, e in enumerate(cache.entries):
        assert np.array_equal(cache.embedding(i), ref.embedding(rows[key(e.rel)])), e.rel


def test_listing_and_reading_urls(setup):
    from mobile_sam.train.data import image_exists, images_root, list_images, read_image

    mem, rels = setup["mem"], setup["rels"]
    items = list_images(f"{mem}/loose/")
    assert [i.rel for i in items] == sorted(rels)  # .hidden and train.txt left out
    assert [i.path for i in items] == [f"{mem}/loose/{r}" for r in sorted(rels)]
    for item in items:
        local = setup["root"] / "images" / item.rel
        assert read_image(item.path)[1] == read_image(local)[1]
    listed = list_images(f"{mem}/loose/train.txt")
    assert [i.rel for i in listed] == sorted([rels[3], rels[1]])
    assert images_root(f"{mem}/loose/train.txt") == f"{mem}/loose"
    sharded = list_images(f"{mem}/shards")
    assert [i.rel for i in sharded] == sorted(
        f"part/shard-{k}.tar/{p.name}" for k, group in enumerate((setup["paths"][:3],
                                                                   setup["paths"][3:]))
        for p in group)
    assert all(image_exists(i.path) for i in sharded)
    assert not image_exists(f"{mem}/shards/part/shard-0.tar/nope.jpg")
    assert not image_exists(f"{mem}/loose/nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(f"{mem}/loose/nope.jpg")
    with pytest.raises(FileNotFoundError, match="image folder not found: memory://"):
        list_images(f"{mem}/nothing")


def test_cache_from_urls_equals_the_local_cache(setup, tmp_path):
    """memory:// loose files, memory:// tar shards and a file:// folder give the embeddings of
    the local folder; the manifest names the root by its URL, never by a local absolute path."""
    from mobile_sam.train.teacher_cache import build_cache

    mem, teacher, ref = setup["mem"], setup["teacher"], setup["ref"]
    loose = build_cache(teacher, f"{mem}/loose", tmp_path / "loose", shard_size=2, progress=False)
    assert loose is not None and [e.rel for e in loose.entries] == [e.rel for e in ref.entries]
    assert loose.manifest["images_root"] == f"{mem}/loose" and loose.image_root == f"{mem}/loose"
    _same_embeddings(loose, ref)

    shards = build_cache(teacher, f"{mem}/shards", tmp_path / "shards", shard_size=4,
                         progress=False)
    assert shards is not None
    _same_embeddings(shards, ref, key=lambda rel: rel.rsplit("/", 1)[-1])

    url = (setup["root"] / "images").as_uri()
    assert url.startswith("file://")
    via_file = build_cache(teacher, url, tmp_path / "file", shard_size=8, progress=False)
    assert via_file is not None and via_file.manifest["images_root"] == url
    _same_embeddings(via_file, ref)


def test_local_root_is_recorded_relative_to_the_cache(setup, tmp_path):
    """A local image folder is recorded relative to the cache folder: moving both together
    keeps the cache usable, and no absolute path is written."""
    import shutil

    from mobile_sam.train.teacher_cache import EmbeddingCache

    ref = setup["ref"]
    assert ref.manifest["images_root"] == "../images"
    assert str(setup["root"]) not in (ref.folder / "manifest.json").read_text()
    moved = tmp_path / "moved"
    shutil.copytree(setup["root"] / "images", moved / "images")
    shutil.copytree(ref.folder, moved / "ref")
    again = EmbeddingCache.open(moved / "ref")
    assert again.image_root == moved / "images"
    # Older caches recorded an absolute path: still read as such.
    manifest = json.loads((moved / "ref" / "manifest.json").read_text())
    manifest["images_root"] = str(setup["root"] / "images")
    (moved / "ref" / "manifest.json").write_text(json.dumps(manifest))
    assert EmbeddingCache.open(moved / "ref").image_root == setup["root"] / "images"


def test_training_reads_images_from_a_url(setup, tmp_path):
    """`distill train` on a cache of memory:// images, and `--images URL` for a cache whose
    images moved there, load the same student inputs as the local cache."""
    from mobile_sam.build import config_to_dict
    from mobile_sam.train.data import CachedEmbeddingDataset
    from mobile_sam.train.distill import RunOptions, TrainConfig, train
    from mobile_sam.train.teacher_cache import build_cache

    cache = build_cache(setup["teacher"], f"{setup['mem']}/loose", tmp_path / "c",
                        shard_size=8, progress=False)
    assert cache is not None
    a = CachedEmbeddingDataset(cache, range(len(cache)))
    b = CachedEmbeddingDataset(setup["ref"], range(len(cache)), f"{setup['mem']}/loose")
    for i in range(len(cache)):
        assert np.array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())
    student = tmp_path / "student.json"
    student.write_text(json.dumps(config_to_dict(tiny_sam_config())))
    result = train(cache.folder, str(student), tmp_path / "run",
                   TrainConfig(epochs=1, batch_size=2, val_fraction=0.2),
                   options=RunOptions(workers=0, progress=False))
    assert result.finished and result.step == 2


def test_missing_fsspec_is_one_clear_line(setup, tmp_path, monkeypatch, capsys):
    from mobile_sam._optional import MissingDependencyError
    from mobile_sam.cli import main
    from mobile_sam.train.data import list_images

    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec -> ImportError
    with pytest.raises(MissingDependencyError, match=r"s3://b/x needs fsspec: pip install "
                                                     r"'mobile-sam\[cloud\]'"):
        list_images("s3://b/x")
    assert main(["distill", "cache", "--teacher", str(setup["teacher_path"]), "--images",
                 "gs://bucket/train", "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gs://bucket/train needs fsspec" in err and "[cloud]" in err
    assert list_images(setup["root"] / "images")  # local paths never need it


def test_eval_reads_images_from_a_url(setup, tmp_path, capsys):
    """`mobile-sam eval --images URL`: the teacher against itself scores 1.0 on URL images."""
    from mobile_sam.cli import main

    teacher = str(setup["teacher_path"])
    assert main(["eval", "--student", teacher, "--teacher", teacher, "--images",
                 f"{setup['mem']}/shards", "--max-images", "2", "--grid", "2", "--prompts", "box",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "box" in capsys.readouterr().out
    rows = (tmp_path / "eval" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("part/shard-0.tar/"), rows
    assert not summary["skipped"] and summary["images"] == 2
    assert summary["summary"]["box"]["pairs"] > 0 and summary["summary"]["box"]["miou"] == 1.0
