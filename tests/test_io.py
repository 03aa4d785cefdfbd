"""Image reading (orientation, modes, limits, errors) and atomic writers."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from PIL import Image

from mobile_sam.io import (
    DEFAULT_MAX_PIXELS,
    PALETTE,
    ImageLoadError,
    ImageTooLargeError,
    OutputWriteError,
    atomic_write,
    load_image,
    mask_outline,
    overlay,
    save_image_png,
    save_json,
    save_mask_png,
)


def save(im: Image.Image, path: Path, **kwargs: Any) -> Path:
    im.save(path, **kwargs)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width x height`` 1-bit pixels, with junk image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


# --- orientation ------------------------------------------------------------------------------


@pytest.fixture
def rotated_jpeg(tmp_path: Path) -> Path:
    """64 wide x 32 high, left half red and right half blue, EXIF Orientation 6."""
    im = Image.new("RGB", (64, 32), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    return save(im, tmp_path / "rotated.jpg", exif=exif, quality=95)


def test_exif_orientation_applied(rotated_jpeg: Path) -> None:
    rgb = load_image(rotated_jpeg)
    assert rgb.shape == (64, 32, 3) and rgb.dtype == np.uint8
    # Turned clockwise, the left (red) half ends on top.
    np.testing.assert_allclose(rgb[16, 16], (255, 0, 0), atol=8)
    np.testing.assert_allclose(rgb[48, 16], (0, 0, 255), atol=8)


def test_exif_orientation_applied_to_pil_images(rotated_jpeg: Path) -> None:
    with Image.open(rotated_jpeg) as im:
        assert im.size == (64, 32)
        rgb = load_image(im)
    assert rgb.shape == (64, 32, 3)
    np.testing.assert_allclose(rgb[16, 16], (255, 0, 0), atol=8)


# --- modes ------------------------------------------------------------------------------------


def test_gray_png_gives_three_equal_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 7, 128, 255]], dtype=np.uint8)
    rgb = load_image(save(Image.fromarray(gray), tmp_path / "g.png"))
    assert rgb.shape == (1, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)


def test_one_bit_image(tmp_path: Path) -> None:
    im = Image.new("1", (3, 1), 0)
    im.putpixel((1, 0), 1)
    rgb = load_image(save(im, tmp_path / "b.png"))
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 255, 0])


def test_16bit_png_scaled_to_nearest_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 257, 383, 400, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "16.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # a real 16-bit file
    rgb = load_image(path)
    expected = [0, 0, 1, 1, 1, 2, 128, 255]  # round(v / 257)
    np.testing.assert_array_equal(rgb[0, :, 0], expected)
    np.testing.assert_array_equal(rgb[0, :, 2], expected)


def test_32bit_int_and_float_modes() -> None:
    as_int = Image.fromarray(np.array([[-5, 0, 257, 65535, 70000]], dtype=np.int32))
    assert as_int.mode == "I"
    np.testing.assert_array_equal(load_image(as_int)[0, :, 1], [0, 0, 1, 255, 255])
    floats = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]], dtype=np.float32)
    as_float = Image.fromarray(floats)
    assert as_float.mode == "F"
    np.testing.assert_array_equal(load_image(as_float)[0, :, 1], [0, 0, 128, 255, 255, 0])


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    rgb = load_image(save(Image.fromarray(rgba), tmp_path / "a.png"))
    np.testing.assert_array_equal(rgb, rgba[:, :, :3])
    la = Image.fromarray(np.array([[[77, 0], [9, 255]]], dtype=np.uint8), mode="LA")
    rgb = load_image(save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(rgb[0], [[77, 77, 77], [9, 9, 9]])


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    im.info["transparency"] = b"\x00\x80\xff"  # per-entry alpha: Pillow warns on P -> RGB
    rgb = load_image(save(im, tmp_path / "p.png"))
    np.testing.assert_array_equal(rgb[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


def test_cmyk(tmp_path: Path) -> None:
    im = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 255, 255, 0))
    rgb = load_image(save(im, tmp_path / "c.tif"))
    np.testing.assert_array_equal(rgb[0], [[255, 255, 255], [255, 0, 0]])


def test_bytes_and_file_objects(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (3, 2), (1, 2, 3)), tmp_path / "x.png")
    expected = np.broadcast_to(np.array([1, 2, 3], np.uint8), (2, 3, 3))
    np.testing.assert_array_equal(load_image(path.read_bytes()), expected)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_image(f), expected)
    np.testing.assert_array_equal(load_image(str(path)), expected)


# --- arrays -----------------------------------------------------------------------------------


def test_array_inputs() -> None:
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for array in (gray, gray[:, :, None]):
        rgb = load_image(array)
        assert rgb.shape == (2, 3, 3)
        assert (rgb == gray[:, :, None]).all()
    color = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    rgb = load_image(color)
    np.testing.assert_array_equal(rgb, color)
    rgb[0, 0, 0] = 99
    assert color[0, 0, 0] == 0  # a copy, never a view of the caller's array
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    rgb = load_image(rgba)
    np.testing.assert_array_equal(rgb, rgba[:, :, :3])
    assert rgb.flags.c_contiguous


def test_array_errors() -> None:
    with pytest.raises(TypeError, match="dtype uint8, got float32"):
        load_image(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(TypeError, match="got bool"):
        load_image(np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match=r"got \(2, 2, 2, 2\)"):
        load_image(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"got \(2, 2, 2\)"):
        load_image(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"got \(5,\)"):
        load_image(np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="got int"):
        load_image(3)  # type: ignore[arg-type]


# --- file errors ------------------------------------------------------------------------------


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_image(missing)


def test_non_image_file_names_it(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match=f"{text}: not a recognised image format"):
        load_image(text)
    with pytest.raises(ImageLoadError, match="it is a folder"):
        load_image(tmp_path)


def test_truncated_file_names_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)), tmp_path / "t.png")
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(ImageLoadError, match=f"cannot read image {path}"):
        load_image(path)


# --- pixel limit ------------------------------------------------------------------------------


def test_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (10, 10)), tmp_path / "small.png")
    expected = r"small\.png is 10x10 = 100 pixels, more than the limit of 99"
    with pytest.raises(ImageTooLargeError, match=expected):
        load_image(path, max_pixels=99)
    assert load_image(path, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageTooLargeError, match="<PIL image>"):
        load_image(Image.new("L", (10, 10)), max_pixels=50)
    monkeypatch.setenv("MOBILE_SAM_MAX_PIXELS", "50")
    with pytest.raises(ImageTooLargeError, match="limit of 50"):
        load_image(path)
    assert load_image(path, max_pixels=None).shape == (10, 10, 3)
    monkeypatch.setenv("MOBILE_SAM_MAX_PIXELS", "none")
    assert load_image(path).shape == (10, 10, 3)
    monkeypatch.setenv("MOBILE_SAM_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="MOBILE_SAM_MAX_PIXELS"):
        load_image(path)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(path, max_pixels=0)


def test_huge_header_refused_before_decoding(tmp_path: Path) -> None:
    # 120 MP: above Pillow's bomb warning (an error under pytest) and above our default;
    # the junk pixel data shows nothing was decoded.
    path = png_header_only(tmp_path / "huge.png", 12_000, 10_000)
    assert DEFAULT_MAX_PIXELS < 12_000 * 10_000
    with pytest.raises(ImageTooLargeError, match=r"huge\.png is 12000x10000"):
        load_image(path)


def test_pillow_bomb_error_becomes_ours(tmp_path: Path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 30_000, 30_000)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png is too large to decode"):
        load_image(path, max_pixels=None)


# --- writers ----------------------------------------------------------------------------------


def test_mask_png_round_trip(tmp_path: Path) -> None:
    mask = np.random.default_rng(1).random((37, 53)) > 0.5
    path = save_mask_png(tmp_path / "m.png", mask)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (53, 37)
        values = np.asarray(im)
    assert set(np.unique(values)) == {0, 255}
    np.testing.assert_array_equal(values > 127, mask)
    assert os.listdir(tmp_path) == ["m.png"]


def test_mask_png_validation(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bool array, got dtype uint8"):
        save_mask_png(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"got \(1, 2, 2\)"):
        save_mask_png(tmp_path / "m.png", np.zeros((1, 2, 2), bool))
    assert list(tmp_path.iterdir()) == []


def test_image_png_round_trip(tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 256, (5, 7, 3), np.uint8)
    np.testing.assert_array_equal(load_image(save_image_png(tmp_path / "i.png", image)), image)
    with pytest.raises(TypeError, match="uint8"):
        save_image_png(tmp_path / "f.png", image.astype(np.float32))


def test_save_json(tmp_path: Path) -> None:
    obj = {
        "score": np.float32(0.5),
        "id": np.int64(3),
        "box": np.array([1, 2, 3, 4]),
        "counts": b"abc",
        "file": Path("x.png"),
        "name": "é",
    }
    path = save_json(tmp_path / "r.json", obj, indent=1)
    assert json.loads(path.read_text("utf-8")) == {
        "score": 0.5,
        "id": 3,
        "box": [1, 2, 3, 4],
        "counts": "abc",
        "file": "x.png",
        "name": "é",
    }
    with pytest.raises(ValueError, match=r"cannot write .*bad\.json as JSON"):
        save_json(tmp_path / "bad.json", {"score": float("nan")})
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        save_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    def failing(f: IO[bytes]) -> None:
        f.write(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"  # the previous file survives untouched
    assert list(tmp_path.iterdir()) == [target]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "p.txt", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_unwritable_folder_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match=f"folder {blocker} is not a folder"):
        save_mask_png(blocker / "m.png", np.zeros((2, 2), bool))
    missing = tmp_path / "missing"
    with pytest.raises(OutputWriteError, match=f"folder {missing} does not exist"):
        save_json(missing / "r.json", {})
    with pytest.raises(OutputWriteError, match="it is a folder"):
        save_json(tmp_path, {})
    assert isinstance(OutputWriteError("x"), OSError)


# --- overlay ----------------------------------------------------------------------------------


def test_mask_outline() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:7, 3:8] = True
    edge = mask_outline(mask)
    assert edge.sum() == 16  # the ring of a 5x5 square
    assert not edge[3:6, 4:7].any()
    full = np.ones((4, 4), bool)
    assert mask_outline(full).sum() == 12  # the image border counts as outside


def test_overlay_tints_masks_only() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), np.uint8)
    masks = np.zeros((2, 40, 50), bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 15:30, 20:45] = True  # overlaps mask 0
    out = overlay(image, masks)
    assert out.shape == image.shape and out.dtype == np.uint8
    outside = ~masks.any(0)
    np.testing.assert_array_equal(out[outside], image[outside])
    inside = masks.any(0)
    assert (out[inside] != image[inside]).any(axis=1).all()
    # Exact values: interior of mask 0 alone is a 50 % blend, edges are the solid colour.
    c0 = np.array(PALETTE[0], np.float32)
    np.testing.assert_array_equal(out[8, 8], np.rint(image[8, 8] * 0.5 + c0 * 0.5))
    np.testing.assert_array_equal(out[5, 10], PALETTE[0])
    np.testing.assert_array_equal(out[29, 30], PALETTE[1])
    np.testing.assert_array_equal(overlay(image, masks), out)  # deterministic
    plain = overlay(image, masks, outline=False, alpha=1.0, colors=[(1, 2, 3)])
    np.testing.assert_array_equal(plain[inside], np.broadcast_to([1, 2, 3], (inside.sum(), 3)))
    np.testing.assert_array_equal(overlay(image, masks[0]), overlay(image, masks[:1]))


def test_overlay_draws_prompts() -> None:
    image = np.full((100, 100, 3), 50, np.uint8)
    no_masks = np.zeros((0, 100, 100), bool)
    out = overlay(
        image,
        no_masks,
        points=[[20, 30], [70, 30], [50, 50]],
        labels=[1, 0, -1],
        boxes=[[10, 60, 90, 90]],
    )
    np.testing.assert_array_equal(out[30, 20], (0, 255, 0))  # positive: green, at (x, y)
    np.testing.assert_array_equal(out[30, 70], (255, 0, 0))  # negative: red
    np.testing.assert_array_equal(out[50, 50], (50, 50, 50))  # padding label: not drawn
    np.testing.assert_array_equal(out[60, 50], PALETTE[0])  # top edge of the box
    np.testing.assert_array_equal(out[75, 50], (50, 50, 50))  # inside the box
    np.testing.assert_array_equal(out[5, 5], (50, 50, 50))


def test_overlay_validation() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(N, 4, 4\).*got \(1, 3, 4\)"):
        overlay(image, np.zeros((1, 3, 4), bool))
    with pytest.raises(TypeError, match="bool"):
        overlay(image, np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((1, 4, 4), bool), alpha=2)
    with pytest.raises(ValueError, match="points"):
        overlay(image, np.zeros((1, 4, 4), bool), points=[1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="labels"):
        overlay(image, np.zeros((1, 4, 4), bool), points=[[1, 2]], labels=[1, 0])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((1, 4, 4), bool))


def test_temporaries_of_a_killed_writer_are_removed_later(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from mobile_sam.io import remove_stale_temporaries

    (tmp_path / "sub").mkdir()
    code = ("import sys, time\nfrom mobile_sam.io import atomic_write\n"
            "def write(f):\n    f.write(b'partial'); f.flush(); print('writing', flush=True); "
            "time.sleep(60)\n"
            "atomic_write(sys.argv[1], write)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "sub" / "a.json")],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    mine = tmp_path / f".b.json.{os.getpid()}-0123456789ab.tmp"  # a live writer's (ours)
    mine.write_bytes(b"in progress")
    other = tmp_path / ".notes.tmp"  # not named as atomic_write names its files
    other.write_bytes(b"kept")
    assert remove_stale_temporaries(tmp_path) == 0  # the writer is still running
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    left = list((tmp_path / "sub").glob(".a.json.*.tmp"))
    assert len(left) == 1 and left[0].read_bytes() == b"partial"
    assert remove_stale_temporaries(tmp_path) == 1
    assert not left[0].exists() and not (tmp_path / "sub" / "a.json").exists()
    assert mine.exists() and other.exists()
