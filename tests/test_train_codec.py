"""`distill cache --cache-codec int8`: half the bytes, every value within its channel's bound."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from test_train_support import make_images, save_tiny, tiny_teacher_config


def test_int8_round_trip_is_within_the_bound():
    from mobile_sam.train.codec import decode, encode, stored

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 8, 5, 7)) * rng.uniform(0.01, 10, (3, 8, 1, 1))).astype(np.float32)
    x[1, 2] = 0.0  # an all-zero channel
    rows = encode(x, "int8")
    assert (rows.shape, rows.dtype) == stored("int8", 3, (8, 5, 7))
    assert rows.nbytes == 3 * (8 * 4 + 8 * 5 * 7)
    for n in range(3):
        back = decode(rows[n], "int8", (8, 5, 7))
        bound = np.abs(x[n]).reshape(8, -1).max(1) / 254
        err = np.abs(back - x[n]).reshape(8, -1).max(1)
        assert np.all(err <= bound * (1 + 1e-5) + 1e-30), (err, bound)
        assert np.all(back[2] == 0) if n == 1 else True
    # Quantisation is not a no-op: the error is of the order of the bound.
    assert np.abs(decode(rows[0], "int8", (8, 5, 7)) - x[0]).max() > 0
    with pytest.raises(ValueError, match="--cache-codec must be one of fp16, int8, got 'zip'"):
        from mobile_sam.train.codec import check

        check("zip")


def test_int8_cache_is_half_the_size_and_close_to_the_teacher(tmp_path):
    from mobile_sam.io import load_image
    from mobile_sam.train.data import CachedEmbeddingDataset, model_input
    from mobile_sam.train.models import load_any
    from mobile_sam.train.teacher_cache import CacheError, build_cache

    make_images(tmp_path / "images", 3, seed=6)
    teacher = load_any(save_tiny(tmp_path / "t.pt", tiny_teacher_config(), seed=1))
    q = build_cache(teacher, tmp_path / "images", tmp_path / "q", shard_size=4, codec="int8",
                    progress=False)
    f = build_cache(teacher, tmp_path / "images", tmp_path / "f", shard_size=4, progress=False)
    assert q is not None and f is not None
    assert q.manifest["codec"] == "int8" and "codec" not in f.manifest
    assert f.manifest["dtype"] == "float16" and q.manifest["dtype"] == "uint8"
    q_bytes, f_bytes = q.manifest["shards"][0]["bytes"], f.manifest["shards"][0]["bytes"]
    assert q_bytes < 0.55 * f_bytes
    encoder = teacher.model.image_encoder.eval()
    for i, e in enumerate(q.entries):
        image, _ = model_input(load_image(tmp_path / "images" / e.rel), q.image_size)
        with torch.inference_mode():
            want = encoder(torch.from_numpy(image)[None])[0].numpy()
        got = q.embedding(i)
        assert got.dtype == np.float32
        bound = np.abs(want).reshape(want.shape[0], -1).max(1) / 254
        err = np.abs(got - want).reshape(want.shape[0], -1).max(1)
        assert np.all(err <= bound * 1.001 + 1e-6)
        assert CachedEmbeddingDataset(q, [i])[0]["target"].dtype == torch.float32
    q.verify()

    out = tmp_path / "again"
    shutil.copytree(q.folder, out)
    with pytest.raises(CacheError, match="--cache-codec int8, not fp16"):
        build_cache(teacher, tmp_path / "images", out, shard_size=4, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["entries"] == f.manifest["entries"]


def test_cli_cache_codec(tmp_path, capsys):
    from mobile_sam.cli import main

    make_images(tmp_path / "images", 2, seed=7)
    teacher = save_tiny(tmp_path / "t.pt", tiny_teacher_config(), seed=1)
    out = tmp_path / "cache"
    assert main(["distill", "cache", "--teacher", str(teacher), "--images",
                 str(tmp_path / "images"), "--out", str(out), "--cache-codec", "int8",
                 "--device", "cpu", "--no-progress", "--verify"]) == 0
    assert "cached 2 teacher embeddings 32x16x16 int8 in" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["codec"] == "int8"
