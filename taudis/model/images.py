"""Reading images for the model: any PIL mode to 8-bit 3-channel arrays, with huge images shrunk early.

One reader serves training, inference and evaluation, so that a 16-bit or grayscale image means
the same thing everywhere. Mode handling:

- 8-bit grayscale (L), palette (P), RGBA/LA/PA (alpha dropped, colour kept), CMYK, YCbCr: PIL's
  conversion to RGB.
- 16-bit and 32-bit integer or float images (I;16*, I, F): scaled linearly so that the image's
  maximum maps to 255 (values <= 255 are kept as is), then replicated to three channels. A float
  image whose values all lie in 0..1 is normalised imagery and is scaled by 255.
- 16-bit colour (RGB or RGBA with 16 bits a sample, PNG or TIFF: 12- and 14-bit cameras, overhead
  imagery): Pillow's conversion keeps each sample's high byte only, which leaves 12-bit data nearly
  black, so the samples are read whole (two of Pillow's decodes, one per byte) and follow the same
  rule, one maximum for all bands (which keeps the colour balance); a fourth band is dropped like
  alpha.
- EXIF orientation is applied, as detectron2's own reader does.

Pixels come back in the model's channel order (``cfg.INPUT.FORMAT``, "BGR" or "RGB").
"""

from __future__ import annotations

import functools
import io
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Large aerial scenes are legitimate input; the model shrinks them anyway. Guard only against
# absurd sizes (decompression bombs), well above any real tile.
Image.MAX_IMAGE_PIXELS = 1_000_000_000
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_NO_REDUCE_MODES = ("1", "P", "PA")
_ORIENTATION = 0x0112  # the EXIF orientation tag
_PLANAR_CONFIGURATION = 284  # TIFF: 1 samples interleaved, 2 one plane per band
_BITS_PER_SAMPLE = 258  # TIFF


class ImageReadError(OSError):
    """An image could not be read or decoded. The message names the file."""


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the model: pixels at the model's input size, and the original size."""

    pixels: np.ndarray  # (h, w, 3) uint8, model channel order, resized
    height: int  # original height in pixels
    width: int  # original width in pixels


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open (lazily) a local file or a ``gs://`` object as a PIL image, for the model's readers.

    A 16-bit colour image is decoded at once, to 8-bit RGB (see the module's rules).

    Raises:
        ImageReadError: naming the file, for missing, empty or undecodable files.
    """
    source = str(path)
    image, reopen = _opened(source)
    if not _is_deep_colour(image):
        return image
    try:
        return _deep_colour_as_8_bit(image, reopen())
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError...
        raise ImageReadError(f"{source}: cannot decode image: {type(err).__name__}: {err}") from err


def open_file(path: str | os.PathLike[str]) -> Image.Image:
    """Open (lazily) a local file or a ``gs://`` object as Pillow reads it, nothing decoded: for
    checks that read a file's own header (its frames, its EXIF orientation, its size).

    Raises:
        ImageReadError: naming the file, for missing, empty or unopenable files.
    """
    return _opened(str(path))[0]


def _opened(source: str) -> tuple[ImageFile.ImageFile, Callable[[], ImageFile.ImageFile]]:
    """The file opened lazily, and how to open it again (from the bytes already read, for gs://)."""
    try:
        if source.startswith("gs://"):
            from taudis.storage import read_bytes  # lazy: only remote images need the storage layer

            data = read_bytes(source)

            def reopen() -> ImageFile.ImageFile:
                return Image.open(io.BytesIO(data))

        else:
            if os.path.getsize(source) == 0:
                raise ImageReadError(f"{source}: empty file (0 bytes)")

            def reopen() -> ImageFile.ImageFile:
                return Image.open(source)

        return reopen(), reopen
    except ImageReadError:
        raise
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise ImageReadError(f"{source}: cannot open image: {type(err).__name__}: {err}") from err


def _rawmode(args: Any) -> str:
    """The rawmode in a tile's decoder arguments (a PNG's are the rawmode, a TIFF's start with it)."""
    return args if isinstance(args, str) else str((args or ("",))[0])


def _is_deep_colour(image: ImageFile.ImageFile) -> bool:
    """Whether Pillow would read this colour image's samples at 16 bits as their high byte."""
    if image.mode not in ("RGB", "RGBA", "RGBX"):
        return False  # 16-bit gray keeps its depth in Pillow (I;16)
    tags = getattr(image, "tag_v2", {}) if image.format == "TIFF" else {}
    if tags.get(_PLANAR_CONFIGURATION, 1) == 2:
        # Planes apart name plain rawmodes ("R", "G", "B") at 16 bits too: refused by the decode, not misread.
        bits = tags.get(_BITS_PER_SAMPLE, 8)
        return any(int(b) > 8 for b in (bits if isinstance(bits, tuple) else (bits,)))
    return bool(image.tile) and all(_swappable(image.mode, _rawmode(tile.args)) for tile in image.tile)


def _swappable(mode: str, rawmode: str) -> bool:
    """Whether a 16-bit rawmode has its other byte order in Pillow for ``mode`` (16-bit gray with
    alpha, "LA;16B" into RGBA, has not: Pillow reads it at its high byte, as it always did)."""
    return rawmode.endswith((";16B", ";16L", ";16N")) and _unpacks(mode, _rawmode(_other_byte(rawmode)))


@functools.cache
def _unpacks(mode: str, rawmode: str) -> bool:
    try:
        Image.frombytes(mode, (1, 1), bytes(64), "raw", rawmode)
    except ValueError:
        return False
    return True


def _deep_colour_as_8_bit(high: ImageFile.ImageFile, low: ImageFile.ImageFile) -> Image.Image:
    """The 8-bit RGB image of a 16-bit colour file, from two of Pillow's decodes of it.

    Pillow unpacks each 16-bit sample to its high byte. Told the other byte order, the same decoder
    unpacks the low byte: the two make the samples whole, decoded, unfiltered and turned by
    Pillow's own readers (its TIFF reader turns by the orientation tag as it loads). The samples
    then follow the module's scaling rule, and a PNG's EXIF orientation is kept for the readers
    that turn the image later.
    """
    if high.format == "TIFF" and getattr(high, "tag_v2", {}).get(_PLANAR_CONFIGURATION, 1) == 2:
        # Planes apart (RRR..GGG..BBB): Pillow's decoders give no second byte order to read them by.
        raise ValueError(
            "a 16-bit colour TIFF with its colour planes apart (PlanarConfiguration 2) is not read: write it "
            "with interleaved samples (gdal_translate -co INTERLEAVE=PIXEL, or tifffile's planarconfig='contig')"
        )
    low.tile = [tile._replace(args=_other_byte(tile.args)) for tile in low.tile]
    high.load()
    low.load()
    if high.size != low.size or high.mode != low.mode:
        raise ValueError(f"16-bit {high.mode} {high.format}: its two decodes disagree")
    samples = (np.asarray(high, dtype=np.uint16) << 8) | np.asarray(low, dtype=np.uint16)
    rgb = _scaled_to_8_bit(samples[:, :, :3], is_float=False)
    out = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    orientation = high.getexif().get(_ORIENTATION, 1)  # 1 for a TIFF: its reader turned it and dropped the tag
    if orientation != 1:
        exif = Image.Exif()
        exif[_ORIENTATION] = orientation
        out.info["exif"] = exif.tobytes()
    return out


def _other_byte(args: Any) -> Any:
    """A tile's decoder arguments with the 16-bit rawmode of the other byte order ("N" is native)."""
    rawmode = _rawmode(args)
    order = {"N": "L" if sys.byteorder == "little" else "B"}.get(rawmode[-1], rawmode[-1])
    swapped = rawmode[:-1] + ("B" if order == "L" else "L")
    return swapped if isinstance(args, str) else (swapped, *tuple(args)[1:])


def _scaled_to_8_bit(values: np.ndarray, *, is_float: bool) -> np.ndarray:
    """High-depth samples to uint8: the maximum to 255 (values <= 255 kept), 0..1 floats times 255.

    One float64 copy, worked on in place: a large 16-bit scene is gigabytes per copy.
    """
    values = values.astype(np.float64)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(values, 0, None, out=values)
    top = float(values.max()) if values.size else 0.0
    if top > 255:
        values *= 255.0 / top
    elif is_float and top <= 1.0:
        values *= 255.0
    return np.rint(values, out=values).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Decode a PIL image to an (H, W, 3) uint8 RGB array following the module's mode rules."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in _HIGH_DEPTH_MODES:
        gray = _scaled_to_8_bit(np.asarray(image), is_float=image.mode == "F")
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as the model sees the image: after its EXIF orientation, which may swap the sides."""
    if image.format == "TIFF":
        # Pillow's TIFF reader turns the image by its orientation itself: its size is the turned
        # one from the start, and loading drops the tag. Loading first leaves one rule for every
        # Pillow, whether or not its reader turns TIFFs.
        image.load()
    width, height = image.size
    if image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
        return height, width
    return width, height


def size_disagreement(path: str, width: int, height: int, record: dict[str, Any]) -> str | None:
    """Why an image of ``width`` x ``height`` (as displayed) is not the one its COCO record names, or None."""
    if (height, width) == (record.get("height"), record.get("width")):
        return None
    return (
        f"{path}: the image is {width}x{height} as displayed (after its EXIF orientation), its record says "
        f"{record.get('width')}x{record.get('height')}: `taudis data check --images` names the cause"
    )


def read_image(path: str | os.PathLike[str], fmt: str = "BGR") -> np.ndarray:
    """Read a whole image as an (H, W, 3) uint8 array in ``fmt`` channel order ("BGR" or "RGB").

    Raises:
        ImageReadError: naming the file, for anything unreadable (missing, empty, truncated, corrupt).
    """
    image = open_image(path)
    try:
        pixels = to_rgb(image)
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image: {type(err).__name__}: {err}") from err
    return _channel_order(pixels, fmt)


def output_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size (same rounding), as (new_height, new_width)."""
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def load_for_inference(path: str | os.PathLike[str], short_edge: int, max_size: int, fmt: str = "BGR") -> LoadedImage:
    """Read an image and resize it to the model's test size, as detectron2's predictor does.

    Resizing is PIL bilinear on 8-bit pixels, like detectron2's ResizeTransform. Images more than
    twice the target size are first shrunk by an integer factor while decoding (JPEG draft mode,
    then ``Image.reduce``), which bounds memory and time for very large scenes.

    Raises:
        ImageReadError: naming the file.
    """
    image = open_image(path)
    try:
        width, height = displayed_size(image)
        if width <= 0 or height <= 0:
            raise ValueError(f"image has size {width}x{height}")
        new_h, new_w = output_size(height, width, short_edge, max_size)
        factor = min(height / new_h, width / new_w)
        if factor >= 2 and image.format == "JPEG":
            # Square request: the draft size is in stored (pre-EXIF-rotation) orientation.
            side = 2 * max(new_w, new_h)
            image.draft("RGB", (side, side))
        pixels_image = ImageOps.exif_transpose(image) or image
        if factor >= 2 and pixels_image.mode not in _HIGH_DEPTH_MODES:
            if pixels_image.mode in _NO_REDUCE_MODES:  # Image.reduce refuses them; to_rgb converts anyway
                pixels_image = pixels_image.convert("L" if pixels_image.mode == "1" else "RGB")
            shrink = max(1, math.floor(min(pixels_image.height / new_h, pixels_image.width / new_w) / 2))
            if shrink > 1:
                pixels_image = pixels_image.reduce(shrink)
        pixels = to_rgb(pixels_image)
        if pixels.shape[:2] != (new_h, new_w):
            pixels = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BILINEAR))
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot decode image: {type(err).__name__}: {err}") from err
    return LoadedImage(pixels=_channel_order(pixels, fmt), height=height, width=width)


def _channel_order(rgb: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "BGR":
        return np.ascontiguousarray(rgb[:, :, ::-1])
    if fmt == "RGB":
        return rgb
    raise ValueError(f"unsupported image format {fmt!r} (INPUT.FORMAT must be BGR or RGB)")
