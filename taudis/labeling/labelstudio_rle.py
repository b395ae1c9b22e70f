"""Label Studio's brush RLE: how a ``brushlabels`` region's ``value.rle`` encodes its mask.

The rle-pack format that Label Studio's frontend and converter use: a bit stream,
most significant bit first. Header: 32 bits value count, 5 bits word size - 1, four 4-bit
run-length field widths - 1. Then chunks until the count is reached: 1 bit (1: one value
repeated, 0: literal values), 2 bits choosing a field width, that many bits of length - 1,
then one value (repeat) or length values (literal) of word-size bits each. Values are the
image's RGBA bytes, row by row; the mask is the alpha channel.

The same bytes as Label Studio's own converter (label_studio_sdk.converter.brush), checked in
tests/test_label_readers.py against bytes it wrote and live in tests/test_labelstudio.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A brush pixel belongs to the mask when its alpha is not 0, as for Label Studio itself: its
# BRUSH_TO_COCO export traces cv2.findContours on the alpha channel (non-zero is inside), its PNG
# export writes the alpha channel as the mask, and the SDK's own contour2rle paints alpha 100.
MASK_ALPHA = 1
_WORD_BITS = 8
_RUN_BITS = (3, 4, 8, 16)
_MAX_RUN = 1 << 16


class BrushRLEError(ValueError):
    """A brush RLE that does not decode to the stated image size."""


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a binary (H, W) mask: RGBA bytes (255 inside, 0 outside).

    The same bytes as Label Studio's converter (``brush.mask2rle`` of ``mask * 255``): word size
    8, run fields of 3, 4, 8 and 16 bits, runs longer than 65536 split, padding to a whole byte
    (a whole zero byte when the bits already fill one).
    """
    values = np.repeat(np.asarray(mask, dtype=bool).ravel().astype(np.int64) * 255, 4)
    header = [(len(values), 32), (_WORD_BITS - 1, 5)] + [(bits - 1, 4) for bits in _RUN_BITS]
    fields, widths = _run_fields(values)
    head_values = np.array([v for v, _ in header], dtype=np.int64)
    head_widths = np.array([w for _, w in header], dtype=np.int64)
    bits = _field_bits(np.concatenate([head_values, fields]), np.concatenate([head_widths, widths]))
    bits = np.concatenate([bits, np.zeros(8 - len(bits) % 8, dtype=np.uint8)])
    return [int(b) for b in np.packbits(bits)]


def _run_fields(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (chunk bits, width) field per chunk: flag, width choice, length - 1 and the value."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), len(values) - 1)
    lengths = np.diff(np.append(-1, ends))
    run_values = values[ends]
    # Runs over 256 use the 16-bit field; over 65536 they are cut into 65536-long chunks first.
    full = np.where(lengths > 256, (lengths - 1) // _MAX_RUN, 0)
    chunk_values = np.repeat(run_values, full + 1)
    last = np.cumsum(full + 1) - 1
    chunk_lengths = np.full(len(chunk_values), _MAX_RUN, dtype=np.int64)
    chunk_lengths[last] = lengths - full * _MAX_RUN
    in_long_run = np.repeat(lengths > 256, full + 1)
    choice = np.select([chunk_lengths <= 8, chunk_lengths <= 16, chunk_lengths <= 256], [0, 1, 2], 3)
    choice[in_long_run] = 3
    run_bits = np.array(_RUN_BITS, dtype=np.int64)[choice]
    repeat = (chunk_lengths > 1).astype(np.int64)  # a single value goes out as a literal of one
    head = (repeat << (2 + run_bits)) | (choice << run_bits) | (chunk_lengths - 1)
    return (head << _WORD_BITS) | chunk_values, 3 + run_bits + _WORD_BITS


def _field_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The fields' bits, most significant first, concatenated."""
    span = int(widths.max()) if len(widths) else 0
    shifts = widths[:, None] - 1 - np.arange(span)[None, :]
    bits = (values[:, None] >> np.maximum(shifts, 0)) & 1
    return bits[shifts >= 0].astype(np.uint8)


def decode_brush_rle(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The binary (H, W) mask of a Label Studio brush RLE (alpha at least ``MASK_ALPHA``: not 0).

    Raises:
        BrushRLEError: bytes that are not 0..255, a stream that ends early or overruns, or a
            value count other than height * width * 4.
    """
    values = _decode_values(rle)
    if len(values) != height * width * 4:
        raise BrushRLEError(f"decodes to {len(values)} values, the image's RGBA has {height * width * 4}")
    return values.reshape(height, width, 4)[:, :, 3] >= MASK_ALPHA


def _decode_values(rle: Sequence[int]) -> np.ndarray:
    if not isinstance(rle, list | tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in rle):
        raise BrushRLEError("expected a list of integers")
    if any(v < 0 or v > 255 for v in rle):
        raise BrushRLEError("bytes must lie in 0..255")
    bits = np.unpackbits(np.asarray(rle, dtype=np.uint8))
    text = (bits + 48).tobytes().decode("ascii")  # '0'/'1' string: int(text[a:b], 2) reads a field fast
    if len(text) < 53:
        raise BrushRLEError("shorter than the 53-bit header")
    count, word = int(text[0:32], 2), int(text[32:37], 2) + 1
    run_bits = [int(text[37 + 4 * k : 41 + 4 * k], 2) + 1 for k in range(4)]
    out = np.zeros(count, dtype=np.int64)
    weights = 1 << np.arange(word - 1, -1, -1)
    position, filled = 53, 0
    while filled < count:
        if position + 3 > len(text):
            raise BrushRLEError(f"the stream ends after {filled} of {count} values")
        repeat, size = text[position] == "1", run_bits[int(text[position + 1 : position + 3], 2)]
        position += 3
        length = int(text[position : position + size] or "0", 2) + 1
        position += size
        stop = position + (word if repeat else word * length)
        if stop > len(text):
            raise BrushRLEError(f"the stream ends inside a run at value {filled}")
        if filled + length > count:
            raise BrushRLEError(f"a run of {length} at value {filled} overruns the {count} values")
        if repeat:
            out[filled : filled + length] = int(text[position:stop], 2)
        else:
            out[filled : filled + length] = bits[position:stop].reshape(length, word) @ weights
        position, filled = stop, filled + length
    return out
