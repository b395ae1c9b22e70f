"""taudis.storage against local paths and a real fake-gcs-server (every test runs on both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taudis import storage


def test_bytes_and_json_round_trip(storage_root: str) -> None:
    uri = storage.join(storage_root, "a", "b.bin")
    storage.write_bytes(uri, b"\x00\x01hello")
    assert storage.read_bytes(uri) == b"\x00\x01hello"
    assert storage.exists(uri)
    storage.write_json(storage.join(storage_root, "c.json"), {"x": [1, 2], "y": "é"})
    assert storage.read_json(storage.join(storage_root, "c.json")) == {"x": [1, 2], "y": "é"}
    storage.write_text(storage.join(storage_root, "t.txt"), "line\n")
    assert storage.read_text(storage.join(storage_root, "t.txt")) == "line\n"


def test_missing_object_raises_not_found_naming_uri(storage_root: str) -> None:
    uri = storage.join(storage_root, "nope.json")
    assert not storage.exists(uri)
    with pytest.raises(storage.NotFoundError, match=r"nope\.json"):
        storage.read_bytes(uri)
    with pytest.raises(FileNotFoundError):  # NotFoundError is also a FileNotFoundError
        storage.read_json(uri)


def test_invalid_json_names_uri(storage_root: str) -> None:
    uri = storage.join(storage_root, "bad.json")
    storage.write_bytes(uri, b"{not json")
    with pytest.raises(storage.StorageError, match=r"bad\.json: not valid JSON"):
        storage.read_json(uri)


def test_read_many_gives_every_object_in_order(storage_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign's scans read hundreds of label parts: at once on GCS, in the order asked."""
    uris = [storage.join(storage_root, f"labels/part-{i:03d}.json") for i in range(40)]
    for i, uri in enumerate(uris):
        storage.write_bytes(uri, f"part {i}".encode())
    missing = storage.join(storage_root, "labels/gone.json")
    assert storage.read_many(uris) == [f"part {i}".encode() for i in range(40)]
    assert storage.read_many([uris[3], missing, uris[0]], missing_ok=True) == [b"part 3", None, b"part 0"]
    with pytest.raises(storage.NotFoundError, match=r"gone\.json"):
        storage.read_many([uris[0], missing])
    assert storage.read_many([]) == []
    monkeypatch.setattr(storage.uri, "SCAN_WINDOW", 7)  # windows of 7: the same objects, in order
    assert list(storage.iter_many([*uris, missing], missing_ok=True)) == [
        *((u, f"part {i}".encode()) for i, u in enumerate(uris)),
        (missing, None),
    ]


def test_list_uris_prefix_and_sorted(storage_root: str) -> None:
    for name in ("d/2.txt", "d/1.txt", "d/sub/3.txt", "e/4.txt"):
        storage.write_bytes(storage.join(storage_root, name), name.encode())
    listed = storage.list_uris(storage.join(storage_root, "d") + "/")
    assert listed == sorted(listed)
    assert [u.rsplit("root", 1)[1].lstrip("/") for u in listed] == ["d/1.txt", "d/2.txt", "d/sub/3.txt"]
    assert storage.list_uris(storage.join(storage_root, "zzz") + "/") == []
    # A folder that does not exist lists nothing, not the files of a sibling that shares its name.
    assert storage.list_uris(storage.join(storage_root, "d2") + "/") == []
    storage.write_bytes(storage.join(storage_root, "d2-old", "5.txt"), b"5")
    assert storage.list_uris(storage.join(storage_root, "d2") + "/") == []


def test_copy_within_and_across_backends(storage_root: str, tmp_path: Path) -> None:
    src = storage.join(storage_root, "src.bin")
    storage.write_bytes(src, b"payload")
    same = storage.copy(src, storage.join(storage_root, "copy", "dst.bin"))
    assert storage.read_bytes(same) == b"payload"
    out = storage.copy(src, str(tmp_path / "local" / "x.bin"))
    assert Path(out).read_bytes() == b"payload"
    back = storage.copy(out, storage.join(storage_root, "back.bin"))
    assert storage.read_bytes(back) == b"payload"


def test_stream_open_upload_download(storage_root: str, tmp_path: Path) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB: above the single-request upload size
    local = tmp_path / "big.bin"
    local.write_bytes(big)
    uri = storage.join(storage_root, "big.bin")
    storage.upload_file(local, uri)
    with storage.open_read(uri) as handle:
        head = handle.read(1000)
        handle.seek(5_000_000)
        middle = handle.read(10)
    assert head == big[:1000] and middle == big[5_000_000:5_000_010]
    dest = storage.download_file(uri, tmp_path / "out" / "big.bin")
    assert dest.read_bytes() == big


def test_tree_round_trip(storage_root: str, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "shard-0").mkdir(parents=True)
    (src / "shard-0" / "header.json").write_text("{}")
    (src / "shard-0" / "a.npy").write_bytes(b"\x93NUMPY")
    (src / "top.txt").write_text("top")
    uris = storage.upload_tree(src, storage.join(storage_root, "model"))
    assert len(uris) == 3
    dest = tmp_path / "copy"
    files = storage.download_tree(storage.join(storage_root, "model"), dest)
    assert sorted(p.relative_to(dest).as_posix() for p in files) == ["shard-0/a.npy", "shard-0/header.json", "top.txt"]
    assert (dest / "shard-0" / "a.npy").read_bytes() == b"\x93NUMPY"
    with pytest.raises(storage.NotFoundError):
        storage.download_tree(storage.join(storage_root, "empty"), tmp_path / "none")
    with pytest.raises(storage.NotFoundError):  # "mod" is no folder, whatever "model" holds
        storage.download_tree(storage.join(storage_root, "mod"), tmp_path / "none")


def test_conditional_write(storage_root: str) -> None:
    uri = storage.join(storage_root, "cas.json")
    assert storage.read_versioned(uri) is None
    g1 = storage.write_if_generation(uri, b"one", 0)
    with pytest.raises(storage.PreconditionFailedError):
        storage.write_if_generation(uri, b"two", 0)  # must not exist
    current = storage.read_versioned(uri)
    assert current is not None and current.data == b"one" and current.generation == g1
    g2 = storage.write_if_generation(uri, b"two", g1)
    with pytest.raises(storage.PreconditionFailedError):
        storage.write_if_generation(uri, b"three", g1)  # stale generation
    assert storage.read_bytes(uri) == b"two"
    assert g2 != g1


def test_a_move_of_the_version_read_leaves_a_newer_one_in_place(storage_root: str) -> None:
    src, dst = storage.join(storage_root, "in", "a.json"), storage.join(storage_root, "done", "a.json")
    storage.write_bytes(src, b"v1")
    read = storage.read_versioned(src)
    assert read is not None and storage.move_if_unchanged(src, dst, read) is True
    assert storage.read_bytes(dst) == b"v1" and not storage.exists(src)
    storage.write_bytes(src, b"v1")
    read = storage.read_versioned(src)
    assert read is not None
    storage.write_bytes(src, b"v2, uploaded meanwhile")
    assert storage.move_if_unchanged(src, dst, read) is False
    assert storage.read_bytes(dst) == b"v1" and storage.read_bytes(src) == b"v2, uploaded meanwhile"
    storage.write_bytes(src, b"v1")  # the very bytes uploaded again (on GCS: another generation)
    assert storage.move_if_unchanged(src, dst, read) is True and not storage.exists(src)
    with pytest.raises(storage.NotFoundError):
        storage.move_if_unchanged(src, dst, read)  # another mover took it


def test_join() -> None:
    assert storage.join("gs://b", "x", "y.json") == "gs://b/x/y.json"
    assert storage.join("gs://b/x/", "/y") == "gs://b/x/y"
    assert storage.join("/data/a", "b", "c") == "/data/a/b/c"
    assert storage.join("/data/a", "/b") == "/data/a/b"
    assert storage.join("file:///data/a", "b", "c.json") == "file:///data/a/b/c.json"
    assert storage.local_path(storage.join("file:///data/a/", "b")) == Path("/data/a/b")
    assert storage.split_gcs("gs://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(storage.StorageError):
        storage.split_gcs("/local")


def test_local_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    storage.write_json(str(target), {"a": 1})
    storage.write_json(str(target), {"a": 2})
    assert storage.read_json(str(target)) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_emulator_client_is_anonymous(gcs_bucket: str) -> None:
    from google.auth.credentials import AnonymousCredentials

    client = storage.gcs_client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project


@pytest.mark.parametrize(("blip", "retried"), [("transport", True), ("refused", False)])
def test_a_token_refresh_that_fails_on_the_way_is_retried_a_refused_one_is_not(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch, blip: str, retried: bool
) -> None:
    """Workload identity's metadata server refuses connections in a pod's first seconds: google-auth
    raises RefreshError(TransportError); a revoked credential raises a RefreshError of its own."""
    import requests
    from google.auth import exceptions as auth

    uri = f"{gcs_bucket}/blip.json"
    storage.write_bytes(uri, b"{}")
    http = storage.gcs_client()._http
    real, left = http.request, {"failures": 1}

    def flaky(*args, **kwargs):
        if left["failures"]:
            left["failures"] -= 1
            if blip == "transport":
                raise auth.RefreshError(auth.TransportError(requests.exceptions.ConnectionError("connection refused")))
            raise auth.RefreshError("invalid_grant: the account was deleted")
        return real(*args, **kwargs)

    monkeypatch.setattr(http, "request", flaky)
    if retried:
        assert storage.read_bytes(uri) == b"{}"
        storage.write_bytes(uri, b"[]")
        assert left["failures"] == 0
    else:
        with pytest.raises(Exception, match="invalid_grant"):
            storage.read_bytes(uri)
