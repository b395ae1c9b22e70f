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


def _png_16_bit(path: Path, samples: np.ndarray, exif: bytes = b"") -> None:
    """A 16-bit RGB (or, of two bands, gray with alpha) PNG, written by the PNG specification
    (Pillow writes none), with an optional eXIf chunk."""
    import struct
    import zlib

    height, width = samples.shape[:2]
    colour_type = {3: 2, 2: 4}[samples.shape[2]]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    extra = chunk(b"eXIf", exif) if exif else b""
    body = chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _twelve_bit() -> tuple[np.ndarray, np.ndarray]:
    """12-bit colour samples (a 12-bit camera's, stored at 16 bits) and their 8-bit reading."""
    samples = (np.random.default_rng(0).random((30, 40, 3)) * 4095).astype(np.uint16)
    return samples, np.rint(samples * (255.0 / samples.max())).astype(np.uint8)


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("kind", ["png", "tiff", "tiff-zlib", "tiff-rgba"])
def test_16_bit_colour_is_read_whole_not_by_its_high_byte(tmp_path: Path, kind: str) -> None:
    """Pillow's own conversion keeps each sample's high byte: 12-bit data would come in nearly black."""
    import tifffile

    samples, expected = _twelve_bit()
    path = tmp_path / ("a.png" if kind == "png" else "a.tif")
    if kind == "png":
        _png_16_bit(path, samples)
    elif kind == "tiff-rgba":
        alpha = np.full((*samples.shape[:2], 1), 65535, dtype=np.uint16)
        tifffile.imwrite(path, np.concatenate([samples, alpha], axis=2), photometric="rgb", extrasamples=[2])
    else:
        tifffile.imwrite(path, samples, photometric="rgb", compression="zlib" if kind == "tiff-zlib" else None)
    assert Image.open(path).convert("RGB").getextrema()[0][1] < 16  # what Pillow alone reads
    assert np.array_equal(read_image(path, "RGB"), expected)
    assert np.array_equal(read_image(path, "BGR"), expected[:, :, ::-1])
    loaded = load_for_inference(path, 60, 200, "RGB")
    assert (loaded.height, loaded.width) == (30, 40) and loaded.pixels.shape == (60, 80, 3)
    assert loaded.pixels.max() > 200


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_16_bit_colour_turns_by_its_orientation_once_like_an_8_bit_image(tmp_path: Path, kind: str) -> None:
    import tifffile

    samples, expected = _twelve_bit()
    reference = tmp_path / "8-bit.png"
    Image.fromarray(expected).save(reference, exif=_orientation_exif(6))
    path = tmp_path / ("a.png" if kind == "png" else "a.tif")
    if kind == "png":
        _png_16_bit(path, samples, exif=_orientation_exif(6)[len(b"Exif\x00\x00") :])  # eXIf holds the bare TIFF
    else:
        tifffile.imwrite(path, samples, photometric="rgb", extratags=[(0x0112, 3, 1, 6, True)])
    assert displayed_size(open_image(path)) == displayed_size(open_image(reference)) == (30, 40)
    assert np.array_equal(read_image(path, "RGB"), read_image(reference, "RGB"))
    assert read_image(path, "RGB").shape == (40, 30, 3)
    assert load_for_inference(path, 60, 200, "RGB").pixels.shape == (80, 60, 3)


def test_16_bit_colour_from_a_bucket_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import taudis.storage

    samples, expected = _twelve_bit()
    _png_16_bit(tmp_path / "a.png", samples)
    monkeypatch.setattr(taudis.storage, "read_bytes", lambda uri: (tmp_path / "a.png").read_bytes())
    assert np.array_equal(read_image("gs://bucket/a.png", "RGB"), expected)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_16_bit_colour_tiff_with_its_planes_apart_is_refused_not_misread(
    tmp_path: Path, compression: str | None
) -> None:
    import tifffile

    samples, _ = _twelve_bit()
    path = tmp_path / "planar.tif"
    tifffile.imwrite(
        path, samples.transpose(2, 0, 1), photometric="rgb", planarconfig="separate", compression=compression
    )
    with pytest.raises(ImageReadError, match=r"planar\.tif.*colour planes apart \(PlanarConfiguration 2\)"):
        read_image(path, "RGB")


def test_data_check_sees_a_16_bit_colour_tiffs_own_frames_and_orientation(tmp_path: Path) -> None:
    """The model's reader decodes such a file at once; the check reads the file's own header."""
    import tifffile

    from taudis.data.coco import inspect_image_files

    samples, _ = _twelve_bit()
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([samples, samples]), photometric="rgb")
    tifffile.imwrite(tmp_path / "turned.tif", samples, photometric="rgb", extratags=[(0x0112, 3, 1, 3, True)])
    records = [
        {"id": i, "file_name": name, "height": 30, "width": 40} for i, name in enumerate(["stack.tif", "turned.tif"])
    ]
    check = inspect_image_files({"images": records, "categories": []}, str(tmp_path))
    assert check.problems == []
    assert any("stack.tif): 2 frames" in w for w in check.warnings)
    assert any("turned.tif): EXIF orientation 3" in w for w in check.warnings)


def test_16_bit_gray_with_alpha_is_still_read_as_pillow_reads_it(tmp_path: Path) -> None:
    """Pillow has no second byte order for it: its high byte, as before, and never an error."""
    samples = (np.random.default_rng(0).random((30, 40, 2)) * 65535).astype(np.uint16)
    _png_16_bit(tmp_path / "la.png", samples)
    pixels = read_image(tmp_path / "la.png", "RGB")
    assert np.array_equal(pixels[..., 0], (samples[..., 0] >> 8).astype(np.uint8))
