"""The ledger: schema, convenience ops, idempotence, concurrency and faults (local and GCS)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from taudis import storage
from taudis.storage import ledger as ledger_mod
from taudis.storage.ledger import (
    Ledger,
    LedgerError,
    create_ledger,
    mark_labelled,
    read_ledger,
    record_metrics,
    record_round,
    update_ledger,
)


def _add_pending(image_id: int):  # a test update: one more pending image (a lost update would drop it)
    def apply(ledger: Ledger) -> Ledger:
        return dataclasses.replace(ledger, pending=ledger.pending | {image_id})

    return apply


def test_create_read_round_trip(storage_root: str) -> None:
    uri = storage.join(storage_root, "camp", "ledger.json")
    created = create_ledger(uri, range(10), labelled_ids=[0, 1], campaign="c1")
    got = read_ledger(uri)
    assert got == created
    assert got.unlabelled == frozenset(range(2, 10)) and got.revision == 0
    doc = storage.read_json(uri)
    assert doc["schema"] == "taudis.ledger" and doc["version"] == 1 and doc["unlabelled"] == list(range(2, 10))
    with pytest.raises(LedgerError, match="already exists"):
        create_ledger(uri, range(10))
    assert create_ledger(uri, range(10), labelled_ids=[0, 1], exist_ok=True) == created
    with pytest.raises(LedgerError, match="another pool"):
        create_ledger(uri, range(11), exist_ok=True)


def test_round_lifecycle(storage_root: str) -> None:
    uri = storage.join(storage_root, "ledger.json")
    create_ledger(uri, range(10), labelled_ids=[0])
    after = record_round(uri, 1, "taudis", {"alpha": 2.5}, [5, 3], "gs://m/1", {"ap": 0.1})
    assert after.pending == {3, 5} and after.round(1)["images"] == [5, 3] and after.revision == 1
    again = record_round(uri, 1, "taudis", {"alpha": 2.5}, [5, 3], "gs://m/1", {"ap": 0.1})
    assert again.revision == 1  # same default op id: not applied twice
    with pytest.raises(LedgerError, match="with other images"):
        record_round(uri, 1, "taudis", {"alpha": 2.5}, [5, 4])
    with pytest.raises(LedgerError, match=r"already pending") as err:
        record_round(uri, 2, "random", {}, [3, 4])
    assert err.value.field == "rounds.images"
    with pytest.raises(LedgerError, match="already labelled"):
        record_round(uri, 2, "random", {}, [0])
    with pytest.raises(LedgerError, match="not in the pool"):
        record_round(uri, 2, "random", {}, [42])
    labelled = mark_labelled(uri, [3, 5], op_id="ingest-a")
    assert labelled.labelled == {0, 3, 5} and labelled.pending == frozenset()
    assert mark_labelled(uri, [3, 5], op_id="ingest-a").revision == labelled.revision  # retry: no-op
    with pytest.raises(LedgerError, match="not pending"):
        mark_labelled(uri, [3], op_id="ingest-b")
    with_metrics = record_metrics(uri, 1, {"mask_ap": 0.42})
    assert with_metrics.round(1)["metrics"] == {"ap": 0.1, "mask_ap": 0.42}
    final = read_ledger(uri)
    assert [op["op_id"] for op in final.ops] == ["record_round:1", "ingest-a", with_metrics.ops[-1]["op_id"]]
    assert final.revision == 3


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(schema="other"), "schema"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(pending=[1, 1]), "pending"),
        (lambda d: d.update(labelled=[1], pending=[1], unlabelled=[2, 3]), "pending"),
        (lambda d: d.update(labelled=[77]), "labelled"),
        (lambda d: d.update(unlabelled=[1]), "unlabelled"),
        (lambda d: d.update(pool=["a"]), "pool"),
        (lambda d: d.update(revision="3"), "revision"),
        (lambda d: d["rounds"].append({"round": 1}), "rounds.strategy"),
    ],
)
def test_invalid_document_names_field(tmp_path: Path, mutate: Any, field: str) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, [1, 2, 3])
    doc = json.loads(Path(uri).read_text())
    mutate(doc)
    Path(uri).write_text(json.dumps(doc))
    with pytest.raises(LedgerError) as err:
        read_ledger(uri)
    assert err.value.field == field and uri in str(err.value)


def test_half_written_file_is_rejected_not_misread(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, [1, 2])
    Path(uri).write_text(Path(uri).read_text()[:40])
    with pytest.raises(LedgerError, match="not valid JSON"):
        read_ledger(uri)


def test_refused_update_changes_nothing(storage_root: str) -> None:
    uri = storage.join(storage_root, "ledger.json")
    create_ledger(uri, range(5))
    before = storage.read_bytes(uri)

    def refuse(ledger: Ledger) -> Ledger:
        raise LedgerError(uri, "no")

    with pytest.raises(LedgerError):
        update_ledger(uri, "op", refuse)
    with pytest.raises(LedgerError, match="not in the pool"):  # an invalid result is never written
        update_ledger(uri, "op2", lambda led: dataclasses.replace(led, pending=frozenset({99})))
    assert storage.read_bytes(uri) == before


# ------------------------------------------------------------------------------ lost answers


def test_lost_answer_gcs_retry_sees_412_and_op_present(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write lands, its answer is lost; the library's retry gets 412; not applied twice."""
    import requests

    uri = f"{gcs_bucket}/c/ledger.json"
    create_ledger(uri, range(5))
    http = storage.gcs_client()._http
    real_request = http.request
    seen: list[int] = []
    state = {"dropped": False}

    def flaky(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = real_request(method, url, *args, **kwargs)
        if "/upload/" in url:
            seen.append(response.status_code)
            if not state["dropped"]:
                state["dropped"] = True
                raise requests.exceptions.ConnectionError("answer lost after the write landed")
        return response

    with monkeypatch.context() as patched:
        patched.setattr(http, "request", flaky)
        result = update_ledger(uri, "op-1", _add_pending(3))
    assert seen == [200, 412]  # first attempt landed; the retried conditional write was refused
    final = read_ledger(uri)
    assert final.revision == 1 and final.pending == {3} and result == final
    assert [op["op_id"] for op in final.ops] == ["op-1"]


def test_lost_answer_connection_error_after_write(storage_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection error after the write reaches the update loop: it re-reads and finds the op."""
    uri = storage.join(storage_root, "ledger.json")
    create_ledger(uri, range(5))
    real_write = storage.write_if_generation
    calls = []

    def write_then_fail(target: str, data: bytes, generation: int, **kwargs: Any) -> int:
        calls.append(generation)
        real_write(target, data, generation, **kwargs)
        raise ConnectionResetError("connection reset after the write landed")

    with monkeypatch.context() as patched:
        patched.setattr(ledger_mod.storage, "write_if_generation", write_then_fail)
        result = update_ledger(uri, "op-1", _add_pending(2))
    assert len(calls) == 1  # the retry re-read, saw op-1, and did not write again
    final = read_ledger(uri)
    assert final.revision == 1 and final.pending == {2} and result == final


# ------------------------------------------------------------------------------- concurrency


def _worker(uri: str, emulator: str, worker: int, count: int, errors: Any) -> None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator
    try:
        for j in range(count):
            image = worker * count + j
            update_ledger(uri, f"w{worker}-{j}", _add_pending(image), timeout=60)
    except Exception as err:  # reported to the parent, which fails the test
        errors.put(f"worker {worker}: {err!r}")


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_concurrent_processes_every_update_exactly_once(backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    workers, count = 4, 6
    if backend == "gcs":
        uri = f"{request.getfixturevalue('gcs_bucket')}/c/ledger.json"
        emulator = os.environ["STORAGE_EMULATOR_HOST"]
    else:
        uri, emulator = str(tmp_path / "ledger.json"), ""
    create_ledger(uri, range(workers * count))
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(uri, emulator, w, count, errors)) for w in range(workers)]
    for p in procs:
        p.start()
    seen = []
    while any(p.is_alive() for p in procs):  # a reader racing the writers sees only whole documents
        seen.append(read_ledger(uri).revision)
        time.sleep(0.005)
    for p in procs:
        p.join(timeout=120)
    assert seen == sorted(seen)
    assert all(p.exitcode == 0 for p in procs)
    assert errors.empty(), errors.get()
    final = read_ledger(uri)
    op_ids = [op["op_id"] for op in final.ops]
    expected = {f"w{w}-{j}" for w in range(workers) for j in range(count)}
    assert len(op_ids) == len(expected) and set(op_ids) == expected  # each exactly once
    assert final.pending == frozenset(range(workers * count))  # no update lost
    assert final.revision == workers * count


# ------------------------------------------------------------------------------ server faults


def test_filesystem_backend_keeps_preconditions_across_restart(fs_gcs_server: Any) -> None:
    bucket = fs_gcs_server.create_bucket("faults")
    uri = f"{bucket}/x.json"
    g1 = storage.write_if_generation(uri, b"one", 0)
    g2 = storage.write_if_generation(uri, b"two", g1)
    fs_gcs_server.restart()
    current = storage.read_versioned(uri)
    assert current is not None and current.data == b"two" and current.generation == g2
    with pytest.raises(storage.PreconditionFailedError):
        storage.write_if_generation(uri, b"stale", g1)
    with pytest.raises(storage.PreconditionFailedError):
        storage.write_if_generation(uri, b"exists", 0)


def test_server_killed_between_read_and_write(fs_gcs_server: Any) -> None:
    """The server dies mid-update; the ledger stays at the old version, and the update completes after restart."""
    uri = f"{fs_gcs_server.create_bucket('mid')}/ledger.json"
    create_ledger(uri, range(5))
    read_done, go = threading.Event(), threading.Event()
    result: dict[str, Any] = {}

    def slow(ledger: Ledger) -> Ledger:
        read_done.set()
        go.wait(10)
        return _add_pending(4)(ledger)

    def run() -> None:
        try:
            result["ledger"] = update_ledger(uri, "op-mid", slow, timeout=60)
        except Exception as err:
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    assert read_done.wait(10)
    fs_gcs_server.kill()
    go.set()
    time.sleep(0.5)  # the write meets a dead server and backs off
    fs_gcs_server.start()
    assert read_ledger(uri).revision in (0, 1)  # old or new, never anything else
    thread.join(60)
    assert "error" not in result, result.get("error")
    final = read_ledger(uri)
    assert final.revision == 1 and final.pending == {4} and [o["op_id"] for o in final.ops] == ["op-mid"]


def _writer(uri: str, emulator: str, count: int, errors: Any) -> None:
    if emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator
    try:
        for j in range(count):
            update_ledger(uri, f"op-{j}", _add_pending(j), timeout=60)
            time.sleep(0.03)  # spread the updates so the kills land among them
    except Exception as err:
        errors.put(repr(err))


@pytest.mark.parametrize("kill_point", ["before_the_write_request", "after_the_write_landed"])
def test_server_killed_during_the_write(fs_gcs_server: Any, kill_point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the server at the ledger's write request, restart it; the update lands exactly once.

    ``after_the_write_landed``: the server commits the write and dies before its answer arrives;
    the retried conditional write meets the restarted server, gets 412, and the update loop finds
    its op id. ``before_the_write_request``: the request meets a dead server and is retried.
    (A random SIGKILL is not used: fake-gcs-server's filesystem backend writes an object's data and
    then its metadata, so a kill between the two loses the object, which real GCS never does.)
    """
    import requests

    uri = f"{fs_gcs_server.create_bucket('killed')}/ledger.json"
    create_ledger(uri, range(5))
    http = storage.gcs_client()._http
    real_request = http.request
    statuses: list[int] = []
    state = {"killed": False}

    def restart_later() -> None:
        time.sleep(0.5)
        fs_gcs_server.start()

    def dying(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if "/upload/" not in url or state["killed"]:
            response = real_request(method, url, *args, **kwargs)
            statuses.append(response.status_code)
            return response
        state["killed"] = True
        if kill_point == "after_the_write_landed":
            statuses.append(real_request(method, url, *args, **kwargs).status_code)
        fs_gcs_server.kill()
        restarter = threading.Thread(target=restart_later)
        restarter.start()
        if kill_point == "after_the_write_landed":
            raise requests.exceptions.ConnectionError("the server died before answering")
        return real_request(method, url, *args, **kwargs)  # connection refused: retried by the client

    with monkeypatch.context() as patched:
        patched.setattr(http, "request", dying)
        result = update_ledger(uri, "op-kill", _add_pending(1), timeout=60)
    final = read_ledger(uri)
    assert final == result and final.revision == 1 and final.pending == {1}
    assert [o["op_id"] for o in final.ops] == ["op-kill"]
    if kill_point == "after_the_write_landed":
        assert 412 in statuses  # the retry found the write already there and did not write again
    assert storage.read_versioned(uri) is not None


def test_cli_create_show_record(storage_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    from taudis.storage.cli import main

    uri = storage.join(storage_root, "camp", "ledger.json")
    pool = storage.join(storage_root, "pool.json")
    storage.write_json(pool, {"images": [{"id": i} for i in range(6)], "annotations": [], "categories": []})
    assert main(["create", uri, "--pool-annotations", pool, "--labelled", "0,1", "--campaign", "demo"]) == 0
    assert main(["create", uri, "--pool-annotations", pool, "--labelled", "0,1"]) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    selection = storage.join(storage_root, "selection.json")
    storage.write_json(
        selection,
        {"schema": "taudis.selection", "version": 1, "strategy": "taudis", "params": {"alpha": 2.5}, "budget": 2,
         "images": [{"image_id": 4}, {"image_id": 2}], "instances": [], "notes": [], "stats": {}},
    )  # fmt: skip
    assert main(["record-round", uri, "--selection", selection, "--round", "1", "--model-uri", "gs://m"]) == 0
    assert main(["show", uri]) == 0
    out = capsys.readouterr().out
    assert "campaign demo" in out and "pending 2" in out and "round 1: taudis, 2 images" in out
    assert main(["show", uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pending"] == [2, 4] and doc["rounds"][0]["images"] == [4, 2] and doc["labelled"] == [0, 1]


def test_local_writer_killed_mid_stream_leaves_a_valid_ledger_and_no_stuck_lock(tmp_path: Path) -> None:
    count = 400
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(count + 1))
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    proc = ctx.Process(target=_writer, args=(uri, "", count, errors))
    proc.start()
    deadline = time.monotonic() + 30
    while read_ledger(uri).revision < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: maybe inside the lock, maybe between temp write and rename
    proc.join(10)
    killed_at = read_ledger(uri)  # validated: the old or the new document, never a torn one
    assert 3 <= killed_at.revision < count
    done = update_ledger(uri, "after-kill", _add_pending(count), timeout=10)  # the lock died with its holder
    assert done.revision == killed_at.revision + 1 and count in done.pending
