"""The instance-table contract (taudis.data.instances): round trip and every validation rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taudis.data.instances import (
    InstanceTableError,
    iter_shards,
    list_shards,
    read_shard,
    validate_shard,
    write_shard,
)


def columns(
    n_images: int = 3, counts: tuple[int, ...] = (2, 0, 3), k: int = 2, s: int = 4, d: int = 5
) -> dict[str, Any]:
    """Valid columns: images 10, 11, 12... with ``counts`` instances each."""
    rng = np.random.default_rng(0)
    image_ids = np.arange(10, 10 + n_images, dtype=np.int64)
    instance_image = np.repeat(image_ids, counts)
    n = instance_image.shape[0]
    instance_index = np.concatenate([np.arange(c) for c in counts]).astype(np.int32) if n else np.zeros(0, np.int32)
    probs = rng.random((n, k + 1)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return {
        "image_ids": image_ids,
        "image_sizes": np.full((n_images, 2), 64, np.int32),
        "instance_image": instance_image,
        "instance_index": instance_index,
        "classes": np.argmax(probs[:, :k], axis=1).astype(np.int32) if n else np.zeros(0, np.int32),
        "class_probs": probs,
        "boxes": np.tile(np.array([[1, 2, 10, 20]], np.float32), (n, 1)),
        "mask_probs": rng.random((n, s, s)).astype(np.float16),
        "embeddings": emb,
        "class_names": [f"c{i}" for i in range(k)],
    }


def test_round_trip(tmp_path: Path) -> None:
    cols = columns()
    path = write_shard(tmp_path / "shard-0", **cols, model_id="m1")
    shard = read_shard(path)
    assert shard.num_instances == 5 and shard.num_images == 3
    assert shard.model_id == "m1" and shard.class_names == ["c0", "c1"]
    np.testing.assert_array_equal(shard.instance_image, cols["instance_image"])
    np.testing.assert_array_equal(shard.mask_probs, cols["mask_probs"])
    assert shard.mask_probs.dtype == np.float16
    np.testing.assert_allclose(shard.scores, cols["class_probs"][np.arange(5), cols["classes"]])
    assert isinstance(shard.mask_probs, np.memmap)


def test_empty_shard_is_valid(tmp_path: Path) -> None:
    no_instances = write_shard(tmp_path / "a", **columns(counts=(0, 0, 0)))
    assert read_shard(no_instances).num_instances == 0
    no_images = write_shard(tmp_path / "b", **columns(n_images=0, counts=()))
    assert read_shard(no_images).num_images == 0


def test_list_and_iter_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "s1", **columns())
    write_shard(tmp_path / "s0", **columns())
    (tmp_path / "not-a-shard").mkdir()
    assert [p.name for p in list_shards(tmp_path)] == ["s0", "s1"]
    assert list_shards(tmp_path / "s0") == [tmp_path / "s0"]
    assert len(list(iter_shards(tmp_path))) == 2


def test_iter_shards_rejects_different_embedding_widths(tmp_path: Path) -> None:
    write_shard(tmp_path / "s0", **columns(counts=(0, 0, 0), d=0))  # no instances: any width is fine
    write_shard(tmp_path / "s1", **columns(d=5))
    assert len(list(iter_shards(tmp_path))) == 2
    write_shard(tmp_path / "s2", **columns(d=6))
    with pytest.raises(InstanceTableError, match=r"embedding width 6 differs from .*s1's 5") as err:
        list(iter_shards(tmp_path))
    assert err.value.field == "embeddings" and "s2" in err.value.shard


def test_iter_shards_rejects_shards_of_two_models(tmp_path: Path) -> None:
    """An earlier round's shards left in the folder: their scores and embeddings do not compare."""
    write_shard(tmp_path / "s0", **columns(), model_id="sha256:aaaa")
    write_shard(tmp_path / "s1", **columns())  # names no model: not compared
    write_shard(tmp_path / "s2", **columns(), model_id="sha256:aaaa")
    assert len(list(iter_shards(tmp_path))) == 3
    write_shard(tmp_path / "s3", **columns(), model_id="sha256:bbbb")
    with pytest.raises(InstanceTableError, match=r"model sha256:bbbb, and .*s0 by model sha256:aaaa") as err:
        list(iter_shards(tmp_path))
    assert err.value.field == "model_id" and "s3" in err.value.shard


def test_core_set_refuses_labelled_shards_of_another_model_or_width(tmp_path: Path) -> None:
    from taudis.select import select

    write_shard(tmp_path / "pool" / "s0", **columns(), model_id="sha256:aaaa")
    labelled = {**columns(), "image_ids": np.arange(90, 93), "instance_image": np.repeat(np.arange(90, 93), (2, 0, 3))}
    write_shard(tmp_path / "other" / "s0", **labelled, model_id="sha256:bbbb")
    with pytest.raises(InstanceTableError, match="both must come from one model"):
        select(tmp_path / "pool", 2, "coreset", labelled=tmp_path / "other")
    wide = columns(d=8)
    write_shard(
        tmp_path / "wide" / "s0",
        **{**wide, "image_ids": labelled["image_ids"], "instance_image": labelled["instance_image"]},
    )
    with pytest.raises(InstanceTableError, match=r"embedding widths \[5, 8\]"):
        select(tmp_path / "pool", 2, "coreset", labelled=tmp_path / "wide")
    write_shard(tmp_path / "same" / "s0", **labelled, model_id="sha256:aaaa")
    assert len(select(tmp_path / "pool", 2, "coreset", labelled=tmp_path / "same").image_ids) == 2


def test_list_shards_skips_a_crashed_writers_temporary_directory(tmp_path: Path) -> None:
    write_shard(tmp_path / "s0", **columns())
    shutil.copytree(tmp_path / "s0", tmp_path / ".s1.abc123")  # complete, but never renamed into place
    assert [p.name for p in list_shards(tmp_path)] == ["s0"]


def test_iter_shards_rejects_different_classes(tmp_path: Path) -> None:
    write_shard(tmp_path / "s0", **columns())
    write_shard(tmp_path / "s1", **{**columns(), "class_names": ["x", "y"]})
    with pytest.raises(InstanceTableError, match="class names") as err:
        list(iter_shards(tmp_path))
    assert err.value.field == "class_names"


def _reject(tmp_path: Path, field: str, row: int | None, match: str, **changes: Any) -> InstanceTableError:
    cols = {**columns(), **changes}
    path = tmp_path / "bad"
    with pytest.raises(InstanceTableError, match=match) as err:
        write_shard(path, **cols)
    assert not path.exists(), "nothing is written when validation fails"
    e = err.value
    assert e.field == field and e.row == row
    assert str(path) in str(e) and f"field {field!r}" in str(e)
    if row is not None:
        assert f"row {row}" in str(e)
    return e


def _with(name: str, row: int, value: Any) -> dict[str, Any]:
    array = columns()[name].copy()
    array[row] = value
    return {name: array}


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("class_probs", {"class_probs": np.full((5, 4), 0.25, np.float32)}),
        ("boxes", {"boxes": np.zeros((5, 3), np.float32)}),
        ("instance_index", {"instance_index": np.zeros(4, np.int32)}),
        ("mask_probs", {"mask_probs": np.zeros((5, 4, 3), np.float16)}),
        ("embeddings", {"embeddings": np.zeros((4, 5), np.float32)}),
        ("image_sizes", {"image_sizes": np.full((2, 2), 64, np.int32)}),
    ],
)
def test_wrong_shapes(tmp_path: Path, field: str, changes: dict[str, Any]) -> None:
    _reject(tmp_path, field, None, "shape", **changes)


@pytest.mark.parametrize("field", ["class_probs", "boxes", "mask_probs", "embeddings"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf(tmp_path: Path, field: str, bad: float) -> None:
    cols = columns()
    array = cols[field].copy()
    array[3].flat[0] = bad
    _reject(tmp_path, field, 3, "NaN or inf", **{field: array})


def test_probs_not_summing_to_one(tmp_path: Path) -> None:
    probs = columns()["class_probs"].copy()
    probs[2] *= 0.9
    _reject(tmp_path, "class_probs", 2, "sum to", class_probs=probs)


def test_probs_outside_unit_interval(tmp_path: Path) -> None:
    probs = columns()["class_probs"].copy()
    probs[1] = [1.5, -0.5, 0.0]
    _reject(tmp_path, "class_probs", 1, r"outside \[0, 1\]", class_probs=probs)


@pytest.mark.parametrize("value", [1.25, -0.25])
def test_masks_outside_unit_interval(tmp_path: Path, value: float) -> None:
    masks = columns()["mask_probs"].copy()
    masks[4, 1, 2] = value
    _reject(tmp_path, "mask_probs", 4, r"mask probability outside \[0, 1\]", mask_probs=masks)


def test_duplicate_instance_key(tmp_path: Path) -> None:
    index = columns()["instance_index"].copy()
    index[4] = index[3]  # image 12 gets two instances numbered 1
    _reject(tmp_path, "instance_index", 4, "duplicate key", instance_index=index)


def test_duplicate_image_id(tmp_path: Path) -> None:
    ids = np.array([10, 11, 10], np.int64)
    _reject(tmp_path, "image_ids", 2, "listed twice", image_ids=ids)


def test_instance_of_unknown_image(tmp_path: Path) -> None:
    _reject(tmp_path, "instance_image", 0, "not in image_ids", **_with("instance_image", 0, 99))


def test_class_out_of_range(tmp_path: Path) -> None:
    _reject(tmp_path, "classes", 1, "outside", **_with("classes", 1, 2))


def test_inverted_box(tmp_path: Path) -> None:
    _reject(tmp_path, "boxes", 2, "x1 < x0", **_with("boxes", 2, [10, 2, 1, 20]))


def test_embedding_not_unit(tmp_path: Path) -> None:
    emb = columns()["embeddings"].copy()
    emb[0] *= 2
    _reject(tmp_path, "embeddings", 0, "norm", embeddings=emb)


def test_nonpositive_image_size(tmp_path: Path) -> None:
    _reject(tmp_path, "image_sizes", 1, "positive", **_with("image_sizes", 1, [0, 64]))


def test_wrong_dtype(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s", **columns())
    np.save(path / "instance_image.npy", np.asarray(columns()["instance_image"], np.float32))
    with pytest.raises(InstanceTableError, match="dtype") as err:
        read_shard(path)
    assert err.value.field == "instance_image"


def _edit_header(path: Path, **changes: Any) -> None:
    header = json.loads((path / "header.json").read_text())
    header.update(changes)
    (path / "header.json").write_text(json.dumps(header))


def test_unknown_schema_version(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s", **columns())
    _edit_header(path, version=2)
    with pytest.raises(InstanceTableError, match="unknown schema version 2") as err:
        read_shard(path)
    assert err.value.field == "version" and str(path) in str(err.value)


def test_wrong_schema_and_missing_header(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s", **columns())
    _edit_header(path, schema="something.else")
    with pytest.raises(InstanceTableError, match="header") as err:
        read_shard(path)
    assert err.value.field == "schema"
    (path / "header.json").unlink()
    with pytest.raises(InstanceTableError, match=r"no header\.json"):
        read_shard(path)


def test_header_count_disagrees(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s", **columns())
    _edit_header(path, num_instances=7)
    with pytest.raises(InstanceTableError, match="header says 7 instances") as err:
        read_shard(path)
    assert err.value.field == "num_instances"


def test_missing_column_file(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s", **columns())
    (path / "embeddings.npy").unlink()
    with pytest.raises(InstanceTableError, match="missing column file") as err:
        read_shard(path)
    assert err.value.field == "embeddings"


def test_validate_detects_corruption_after_write(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "s", **columns())
    masks = np.load(path / "mask_probs.npy")
    masks[2, 0, 0] = np.float16(np.nan)
    np.save(path / "mask_probs.npy", masks)
    shard = read_shard(path, validate=False)
    with pytest.raises(InstanceTableError) as err:
        validate_shard(shard)
    assert (err.value.row, err.value.field) == (2, "mask_probs")


def test_rewrite_replaces_shard(tmp_path: Path) -> None:
    write_shard(tmp_path / "s", **columns())
    write_shard(tmp_path / "s", **columns(counts=(1, 1, 1)))
    assert read_shard(tmp_path / "s").num_instances == 3
    assert [p.name for p in tmp_path.iterdir()] == ["s"], "no temporary directory is left behind"


def test_a_directory_without_shards_is_an_error_not_an_empty_pool(tmp_path: Path) -> None:
    (tmp_path / "not-a-shard").mkdir()
    with pytest.raises(InstanceTableError, match="no shard here"):
        list_shards(tmp_path)
    with pytest.raises(InstanceTableError, match="no such directory"):
        list_shards(tmp_path / "missing")


def test_images_inference_could_not_read_are_named_in_the_selections_notes(tmp_path: Path) -> None:
    from taudis.select import select

    failed = [{"file": "gone.png", "image_id": "99", "error": "gone.png: cannot open image"}]
    write_shard(tmp_path / "s0", **columns(), failed_images=failed)
    for strategy in ("taudis", "random", "coreset"):
        (note, *_) = select(tmp_path, 2, strategy).notes
        assert "1 pool image(s) could not be read at inference and were not candidates: 99" in note, strategy
    write_shard(tmp_path / "s0", **columns())
    assert not any("could not be read" in n for n in select(tmp_path, 2).notes)
