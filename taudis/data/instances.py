"""The instance table: every predicted instance of an inference shard, columnar and memory-mappable.

This is the contract between inference (the writer) and selection, export and reports (the
readers). One inference task writes one shard; a pool is a directory of shards. Selection streams
over shards and, thanks to memory mapping, never needs the whole pool's masks in memory.

Layout of one shard directory (schema ``taudis.instances``, version 1)::

    <shard>/
      header.json          schema, version, model_id, class_names, counts, mask_size,
                           embedding_dim, failed_images ([{"file", "error"}]), extra (free dict)
      image_ids.npy        int64   (M,)        every image the shard covers, with instances or not
      image_sizes.npy      int32   (M, 2)      (height, width) of each image, in pixels
      instance_image.npy   int64   (N,)        image id of each instance (one of image_ids)
      instance_index.npy   int32   (N,)        index of the instance within its image
      classes.npy          int32   (N,)        predicted class, 0..K-1
      class_probs.npy      float32 (N, K+1)    softmax over the K classes, background last
      boxes.npy            float32 (N, 4)      x0, y0, x1, y1 in pixels of the original image
      mask_probs.npy       float16 (N, S, S)   per-pixel sigmoid of the predicted class's mask
      embeddings.npy       float16|float32 (N, D)  mask-head embedding, L2-normalised

A shard is written to a temporary sibling directory and renamed into place, so a shard directory
that exists is complete: a rerun of inference can skip it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "taudis.instances"
VERSION = 1
HEADER = "header.json"

# Per-instance columns: name -> (dtypes accepted on read, dtype written).
_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "instance_image": (("int64",), "int64"),
    "instance_index": (("int32", "int64"), "int32"),
    "classes": (("int32", "int64"), "int32"),
    "class_probs": (("float32", "float64"), "float32"),
    "boxes": (("float32", "float64"), "float32"),
    "mask_probs": (("float16", "float32"), "float16"),
    "embeddings": (("float16", "float32"), "float32"),
}
_IMAGE_COLUMNS: dict[str, tuple[tuple[str, ...], str]] = {
    "image_ids": (("int64",), "int64"),
    "image_sizes": (("int32", "int64"), "int32"),
}
# Tolerances that float16 storage and softmax rounding need.
PROB_SUM_ATOL = 1e-3
UNIT_NORM_ATOL = 1e-2
_CHUNK = 1 << 16


class InstanceTableError(ValueError):
    """A shard breaks the contract. The message names the shard, and the row and field if any."""

    def __init__(self, shard: Path | str, message: str, *, row: int | None = None, field: str | None = None):
        where = f"{shard}"
        if field is not None:
            where += f", field {field!r}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"instance table {where}: {message}")
        self.shard = str(shard)
        self.row = row
        self.field = field


@dataclass(frozen=True)
class InstanceShard:
    """One shard's columns (memory-mapped when read from disk) and header."""

    path: Path
    header: dict[str, Any]
    image_ids: np.ndarray
    image_sizes: np.ndarray
    instance_image: np.ndarray
    instance_index: np.ndarray
    classes: np.ndarray
    class_probs: np.ndarray
    boxes: np.ndarray
    mask_probs: np.ndarray
    embeddings: np.ndarray

    @property
    def num_instances(self) -> int:
        return int(self.instance_image.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def class_names(self) -> list[str]:
        return list(self.header["class_names"])

    @property
    def model_id(self) -> str:
        return str(self.header.get("model_id", ""))

    @property
    def failed_images(self) -> list[dict[str, str]]:
        return list(self.header.get("failed_images", []))

    @property
    def scores(self) -> np.ndarray:
        """Detection score of each instance: the probability of its predicted class."""
        return self.class_probs[np.arange(self.num_instances), self.classes]


def write_shard(
    path: str | os.PathLike[str],
    *,
    image_ids: Sequence[int] | np.ndarray,
    image_sizes: Sequence[Sequence[int]] | np.ndarray,
    instance_image: np.ndarray,
    instance_index: np.ndarray,
    classes: np.ndarray,
    class_probs: np.ndarray,
    boxes: np.ndarray,
    mask_probs: np.ndarray,
    embeddings: np.ndarray,
    class_names: Sequence[str],
    model_id: str = "",
    failed_images: Sequence[dict[str, str]] = (),
    extra: dict[str, Any] | None = None,
    validate: bool = True,
) -> Path:
    """Validate the columns and write them as one shard directory, atomically.

    The columns are written into a temporary sibling directory that is renamed to ``path`` once
    complete; an existing shard at ``path`` is replaced.

    Returns:
        The shard directory.

    Raises:
        InstanceTableError: a column breaks the contract (nothing is written then).
    """
    path = Path(path)
    columns: dict[str, np.ndarray] = {
        "image_ids": np.asarray(image_ids, dtype=np.int64).reshape(-1),
        "image_sizes": np.asarray(image_sizes, dtype=np.int32).reshape(-1, 2),
    }
    raw = dict(
        instance_image=instance_image,
        instance_index=instance_index,
        classes=classes,
        class_probs=class_probs,
        boxes=boxes,
        mask_probs=mask_probs,
        embeddings=embeddings,
    )
    for name, value in raw.items():
        array = np.asarray(value)
        written = _COLUMNS[name][1]
        if name == "embeddings" and array.dtype == np.float16:
            written = "float16"
        columns[name] = array.astype(written, copy=False)
    mask_size = int(columns["mask_probs"].shape[-1]) if columns["mask_probs"].ndim == 3 else 0
    embedding_dim = int(columns["embeddings"].shape[-1]) if columns["embeddings"].ndim == 2 else 0
    header: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "model_id": model_id,
        "class_names": list(class_names),
        "num_images": int(columns["image_ids"].shape[0]),
        "num_instances": int(columns["instance_image"].shape[0]),
        "mask_size": mask_size,
        "embedding_dim": embedding_dim,
        "failed_images": [dict(f) for f in failed_images],
        "extra": dict(extra or {}),
    }
    shard = InstanceShard(path=path, header=header, **columns)
    if validate:
        validate_shard(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, array in columns.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        (tmp / HEADER).write_text(json.dumps(header, indent=1))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_shard(path: str | os.PathLike[str], *, mmap: bool = True, validate: bool = True) -> InstanceShard:
    """Open one shard; columns are memory-mapped unless ``mmap`` is False.

    Raises:
        InstanceTableError: missing files, unknown schema or version, or (with ``validate``)
            any broken invariant, naming the shard, row and field.
    """
    path = Path(path)
    header_file = path / HEADER
    if not header_file.is_file():
        raise InstanceTableError(path, f"no {HEADER}: not a shard, or an incomplete one")
    try:
        header = json.loads(header_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InstanceTableError(path, f"{HEADER} is not valid JSON: {err}", field=HEADER) from err
    if not isinstance(header, dict) or header.get("schema") != SCHEMA:
        raise InstanceTableError(path, f"not a {SCHEMA} header", field="schema")
    if header.get("version") != VERSION:
        raise InstanceTableError(
            path, f"unknown schema version {header.get('version')!r} (this taudis reads {VERSION})", field="version"
        )
    for key in ("class_names", "num_instances", "num_images"):
        if key not in header:
            raise InstanceTableError(path, "missing from the header", field=key)
    columns = {}
    for name in (*_IMAGE_COLUMNS, *_COLUMNS):
        file = path / f"{name}.npy"
        if not file.is_file():
            raise InstanceTableError(path, f"missing column file {file.name}", field=name)
        try:
            columns[name] = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InstanceTableError(path, f"unreadable column file: {err}", field=name) from err
    shard = InstanceShard(path=path, header=header, **columns)
    if shard.num_instances != header["num_instances"]:
        raise InstanceTableError(
            path,
            f"header says {header['num_instances']} instances, columns hold {shard.num_instances}",
            field="num_instances",
        )
    if shard.num_images != header["num_images"]:
        raise InstanceTableError(
            path, f"header says {header['num_images']} images, columns hold {shard.num_images}", field="num_images"
        )
    if validate:
        validate_shard(shard)
    return shard


def list_shards(root: str | os.PathLike[str]) -> list[Path]:
    """The shard directories under ``root`` in name order (``root`` itself if it is one shard).

    Hidden directories are skipped: write_shard's temporary ``.<name>.*`` sibling already holds a
    header before it is renamed, and one left by a crashed writer is not a shard.

    Raises:
        InstanceTableError: ``root`` is missing or holds no shard (a mistyped path must not read
            as an empty pool; inference writes a shard even for a shard with no images).
    """
    root = Path(root)
    if (root / HEADER).is_file():
        return [root]
    if not root.is_dir():
        raise InstanceTableError(root, "no such directory")
    shards = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and (p / HEADER).is_file())
    if not shards:
        raise InstanceTableError(root, f"no shard here (no subdirectory with a {HEADER})")
    return shards


def iter_shards(root: str | os.PathLike[str], *, validate: bool = True) -> Iterator[InstanceShard]:
    """Open every shard under ``root`` in name order, checking that they agree on the model that
    wrote them (where they name one), on classes and on the embedding width (of the shards that
    have instances; an empty one may have any width).
    """
    first: InstanceShard | None = None
    width: tuple[Path, int] | None = None  # the first shard with instances, and its embedding width
    model: InstanceShard | None = None  # the first shard that names its model
    for path in list_shards(root):
        shard = read_shard(path, validate=validate)
        if first is None:
            first = shard
        elif shard.class_names != first.class_names:
            raise InstanceTableError(
                path,
                f"class names {shard.class_names} differ from {first.path}'s {first.class_names}",
                field="class_names",
            )
        if shard.model_id and model is None:
            model = shard
        elif shard.model_id and model is not None and shard.model_id != model.model_id:
            # Shards of two rounds' models in one folder: their scores and embeddings do not compare.
            raise InstanceTableError(
                path,
                f"written by model {shard.model_id}, and {model.path} by model {model.model_id}: one model's "
                "shards per selection (a folder holding an earlier round's shards too?)",
                field="model_id",
            )
        if shard.num_instances and shard.embeddings.ndim == 2:
            if width is None:
                width = (path, shard.embeddings.shape[1])
            elif shard.embeddings.shape[1] != width[1]:
                raise InstanceTableError(
                    path,
                    f"embedding width {shard.embeddings.shape[1]} differs from {width[0]}'s {width[1]}",
                    field="embeddings",
                )
        yield shard


def validate_shard(shard: InstanceShard) -> None:
    """Check every invariant of the contract, streaming over rows in chunks to bound memory.

    An empty shard (images with no instances, or no images at all) is valid.

    Raises:
        InstanceTableError: naming the shard, the first offending row and the field.
    """
    path = shard.path
    n = shard.num_instances
    k = len(shard.class_names)
    _check_dtypes(shard)
    if shard.image_sizes.shape != (shard.num_images, 2):
        raise InstanceTableError(
            path, f"shape {shard.image_sizes.shape}, expected ({shard.num_images}, 2)", field="image_sizes"
        )
    if shard.num_images and shard.image_sizes.min() <= 0:
        row = int(np.flatnonzero((np.asarray(shard.image_sizes) <= 0).any(axis=1))[0])
        raise InstanceTableError(path, "image size must be positive", row=row, field="image_sizes")
    unique_images, first_seen = np.unique(shard.image_ids, return_index=True)
    if unique_images.shape[0] != shard.num_images:
        dup = sorted(set(range(shard.num_images)) - set(first_seen.tolist()))[0]
        raise InstanceTableError(path, f"image id {int(shard.image_ids[dup])} listed twice", row=dup, field="image_ids")
    expected = {
        "instance_image": (n,),
        "instance_index": (n,),
        "classes": (n,),
        "class_probs": (n, k + 1),
        "boxes": (n, 4),
    }
    for name, shape in expected.items():
        actual = getattr(shard, name).shape
        if actual != shape:
            raise InstanceTableError(path, f"shape {actual}, expected {shape}", field=name)
    masks, embeddings = shard.mask_probs, shard.embeddings
    if masks.ndim != 3 or masks.shape[0] != n or masks.shape[1] != masks.shape[2]:
        raise InstanceTableError(path, f"shape {masks.shape}, expected ({n}, S, S)", field="mask_probs")
    if embeddings.ndim != 2 or embeddings.shape[0] != n or (n and embeddings.shape[1] == 0):
        raise InstanceTableError(path, f"shape {embeddings.shape}, expected ({n}, D)", field="embeddings")
    if n == 0:
        return
    known = np.isin(shard.instance_image, unique_images)
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise InstanceTableError(
            path, f"image id {int(shard.instance_image[row])} is not in image_ids", row=row, field="instance_image"
        )
    _check_unique_keys(shard)
    bad_class = (shard.classes < 0) | (shard.classes >= k)
    if bad_class.any():
        row = int(np.flatnonzero(bad_class)[0])
        raise InstanceTableError(path, f"class {int(shard.classes[row])} outside 0..{k - 1}", row=row, field="classes")
    for start in range(0, n, _CHUNK):
        _check_rows(shard, start, min(n, start + _CHUNK))


def _check_dtypes(shard: InstanceShard) -> None:
    for name, (accepted, _) in {**_IMAGE_COLUMNS, **_COLUMNS}.items():
        dtype = getattr(shard, name).dtype
        if dtype.name not in accepted:
            raise InstanceTableError(shard.path, f"dtype {dtype}, expected one of {accepted}", field=name)


def _check_unique_keys(shard: InstanceShard) -> None:
    order = np.lexsort((shard.instance_index, shard.instance_image))
    images, indices = shard.instance_image[order], shard.instance_index[order]
    same = (images[1:] == images[:-1]) & (indices[1:] == indices[:-1])
    if same.any():
        row = int(order[np.flatnonzero(same)[0] + 1])
        raise InstanceTableError(
            shard.path,
            f"duplicate key (image_id={int(shard.instance_image[row])}, instance={int(shard.instance_index[row])})",
            row=row,
            field="instance_index",
        )


def _first_bad_row(bad: np.ndarray, start: int) -> int:
    per_row = bad.reshape(bad.shape[0], -1).any(axis=1)
    return start + int(np.flatnonzero(per_row)[0])


def _check_rows(shard: InstanceShard, start: int, stop: int) -> None:
    path = shard.path
    for name in ("class_probs", "boxes", "mask_probs", "embeddings"):
        block = np.asarray(getattr(shard, name)[start:stop])
        finite = np.isfinite(block)
        if not finite.all():
            raise InstanceTableError(path, "NaN or inf", row=_first_bad_row(~finite, start), field=name)
    probs = np.asarray(shard.class_probs[start:stop], dtype=np.float64)
    if (probs < 0).any() or (probs > 1).any():
        bad = (probs < 0) | (probs > 1)
        raise InstanceTableError(
            path, "probability outside [0, 1]", row=_first_bad_row(bad, start), field="class_probs"
        )
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > PROB_SUM_ATOL
    if off.any():
        row = _first_bad_row(off, start)
        raise InstanceTableError(
            path, f"class probabilities sum to {sums[row - start]:.6f}, not 1", row=row, field="class_probs"
        )
    masks = np.asarray(shard.mask_probs[start:stop])
    outside = (masks < 0) | (masks > 1)
    if outside.any():
        raise InstanceTableError(
            path, "mask probability outside [0, 1]", row=_first_bad_row(outside, start), field="mask_probs"
        )
    boxes = np.asarray(shard.boxes[start:stop])
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if inverted.any():
        raise InstanceTableError(path, "box has x1 < x0 or y1 < y0", row=_first_bad_row(inverted, start), field="boxes")
    norms = np.linalg.norm(np.asarray(shard.embeddings[start:stop], dtype=np.float32), axis=1)
    off_norm = np.abs(norms - 1.0) > UNIT_NORM_ATOL
    if off_norm.any():
        row = _first_bad_row(off_norm, start)
        raise InstanceTableError(
            path, f"embedding norm {norms[row - start]:.4f}, expected 1 (L2-normalised)", row=row, field="embeddings"
        )
