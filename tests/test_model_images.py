"""The model's image reader: every PIL mode to 8-bit 3 channels, huge images shrunk, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from taudis.model.images import (
    ImageReadError,
    displayed_size,
    load_for_inference,
    open_image,
    output_size,
    read_image,
    to_rgb,
)


def test_modes_become_three_channel_uint8() -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    out = to_rgb(Image.fromarray(gray))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8 and (out[..., 1] == gray).all()
    rgba = np.dstack([np.full((6, 8, 3), 40, np.uint8), np.zeros((6, 8), np.uint8)])
    assert (to_rgb(Image.fromarray(rgba, "RGBA")) == 40).all(), "alpha is dropped, colour kept"
    deep = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    scaled = to_rgb(Image.fromarray(deep))
    assert scaled.max() == 255 and scaled.min() == 0, "16-bit range is stretched to 8 bits"
    assert np.all(np.diff(scaled[..., 0].ravel().astype(int)) >= 0), "and stays monotonic"
    small16 = Image.fromarray(np.full((4, 4), 200, np.uint16))
    assert (to_rgb(small16) == 200).all(), "16-bit values that fit in 8 bits are kept"
    floats = Image.fromarray(np.array([[0.0, np.nan], [1000.0, 500.0]], np.float32))
    assert to_rgb(floats)[..., 0].tolist() == [[0, 0], [255, 128]]


def test_read_image_channel_order(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert read_image(tmp_path / "red.png", "RGB")[0, 0].tolist() == [200, 0, 0]
    assert read_image(tmp_path / "red.png", "BGR")[0, 0].tolist() == [0, 0, 200]


@pytest.mark.parametrize(("content", "words"), [(b"", "empty file"), (b"not an image", "cannot open")])
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=words) as caught:
        read_image(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        load_for_inference(tmp_path / "missing.png", 64, 128)


def test_truncated_file_raises(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        load_for_inference(tmp_path / "cut.png", 64, 128)


def test_output_size_matches_detectron2() -> None:
    t = pytest.importorskip("detectron2.data.transforms")
    for h, w in [(128, 128), (100, 300), (333, 71), (4000, 3000), (1, 1000)]:
        assert output_size(h, w, 128, 256) == t.ResizeShortestEdge.get_output_shape(h, w, 128, 256)


def test_large_images_are_shrunk_to_the_model_size(tmp_path: Path) -> None:
    big = np.random.default_rng(1).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=80)
    loaded = load_for_inference(tmp_path / "big.jpg", 128, 256)
    assert (loaded.height, loaded.width) == (1500, 2000)
    assert loaded.pixels.shape == (*output_size(1500, 2000, 128, 256), 3)


def test_normalised_float_images_are_scaled_to_eight_bits() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32))
    assert to_rgb(unit)[..., 0].tolist() == [[0, 128], [255, 64]]
    counts = Image.fromarray(np.array([[0, 1], [1, 0]], np.int32))
    assert to_rgb(counts)[..., 0].tolist() == [[0, 1], [1, 0]], "integer images keep values that fit"


@pytest.mark.parametrize("mode", ["1", "P"])
def test_large_palette_and_bilevel_images_are_shrunk_like_the_others(tmp_path: Path, mode: str) -> None:
    # Image.reduce, the early shrink of large images, refuses these modes.
    pixels = np.zeros((600, 800), np.uint8)
    pixels[100:300, 200:500] = 255
    image = Image.fromarray(pixels).convert(mode)
    image.save(tmp_path / "big.png")
    loaded = load_for_inference(tmp_path / "big.png", 64, 128)
    whole = read_image(tmp_path / "big.png")
    expected = np.asarray(Image.fromarray(whole).resize((loaded.pixels.shape[1], loaded.pixels.shape[0])))
    assert loaded.pixels.shape == (*output_size(600, 800, 64, 128), 3)
    assert np.abs(loaded.pixels.astype(int) - expected.astype(int)).mean() < 8, "the same picture, shrunk"


def test_the_displayed_size_follows_the_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a 20-wide stored image is shown 10 wide
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    with Image.open(tmp_path / "r.jpg") as image:
        assert image.size == (20, 10) and displayed_size(image) == (10, 20)
    assert read_image(tmp_path / "r.jpg").shape[:2] == (20, 10)


@pytest.mark.parametrize("suffix", ["jpg", "png", "tif", "webp"])
def test_every_format_is_turned_once_by_its_exif_orientation(tmp_path: Path, suffix: str) -> None:
    """Pillow turns a TIFF by its orientation while reading it and JPEG, PNG, WebP not: the displayed
    size, the whole image and the inference image agree with the picture a viewer shows, either way."""
    stored = np.zeros((48, 80, 3), np.uint8)
    stored[:12, :20] = 255  # a bright block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 48 wide, 80 high, block top-right
    lossless = {"lossless": True} if suffix == "webp" else {}
    Image.fromarray(stored).save(tmp_path / f"r.{suffix}", exif=exif, **lossless)
    shown = np.rot90(stored, k=-1)
    with open_image(tmp_path / f"r.{suffix}") as image:
        assert displayed_size(image) == (48, 80)
    error = 10 if suffix == "jpg" else 0  # mean absolute difference: JPEG is lossy
    whole = read_image(tmp_path / f"r.{suffix}", "RGB")
    assert whole.shape == shown.shape and np.abs(whole.astype(int) - shown).mean() <= error
    loaded = load_for_inference(tmp_path / f"r.{suffix}", 48, 1000, "RGB")
    assert (loaded.width, loaded.height) == (48, 80) and loaded.pixels.shape == shown.shape
    assert np.abs(loaded.pixels.astype(int) - shown).mean() <= error
