"""The ledger: head + segments, id ranges, validation, idempotence, concurrency and faults (local and GCS)."""

from __future__ import annotations

import dataclasses
import itertools
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
    COMPACT_AFTER,
    LabelPart,
    Ledger,
    LedgerError,
    create_ledger,
    decode_ids,
    encode_ids,
    read_ledger,
    update_ledger,
)


def _add_pending(image_id: int):  # a test update: one more pending image (a lost update would drop it)
    def apply(ledger: Ledger) -> Ledger:
        return dataclasses.replace(ledger, pending=ledger.pending | {image_id})

    return apply


def _label(image_ids: set[int], op_id: str):  # pending -> labelled through a label part
    def apply(ledger: Ledger) -> Ledger:
        part = LabelPart(op_id, f"labels/{op_id}.json", frozenset(image_ids), "test")
        return dataclasses.replace(ledger, pending=ledger.pending - image_ids, parts=(*ledger.parts, part))

    return apply


def _segments(uri: str) -> list[dict[str, Any]]:
    folder = ledger_mod.folder_of(uri)
    return [storage.read_json(storage.join(folder, name)) for name in storage.read_json(uri)["segments"]]


def test_id_ranges_round_trip() -> None:
    assert encode_ids([]) == []
    assert encode_ids([7, 1, 2, 3, 3]) == [[1, 3], [7, 7]]
    assert encode_ids(range(1_000_000)) == [[0, 999_999]]
    assert decode_ids([[1, 3], [7, 7]], "u", "f") == {1, 2, 3, 7}
    for bad in ("x", [[3, 1]], [[1]], [[1, True]]):
        with pytest.raises(LedgerError) as err:
            decode_ids(bad, "u", "pending")
        assert err.value.field == "pending"


def test_create_read_round_trip(storage_root: str) -> None:
    uri = storage.join(storage_root, "camp", "ledger.json")
    seed = LabelPart("seed:train", "labels/seed.json", frozenset({0, 1}), "seed")
    created = create_ledger(uri, range(10), seed, campaign="c1")
    got = read_ledger(uri)
    assert got == created and got.labelled == {0, 1} and got.parts == (seed,)
    assert got.unlabelled == frozenset(range(2, 10)) and got.revision == 0
    head = storage.read_json(uri)
    assert head["schema"] == "taudis.ledger" and head["version"] == 2 and head["campaign"] == "c1"
    assert head["counts"] == {"pool": 10, "labelled": 2, "pending": 0, "unlabelled": 8}
    (snapshot,) = _segments(uri)
    assert snapshot["kind"] == "snapshot" and snapshot["pool"] == [[0, 9]]
    with pytest.raises(LedgerError, match="already exists"):
        create_ledger(uri, range(10))
    assert create_ledger(uri, range(10), exist_ok=True) == created  # a second first run reuses it
    assert len(head["segments"]) == len(storage.read_json(uri)["segments"])  # and writes nothing


def test_updates_write_what_changed_and_rebuild_the_same_state(storage_root: str) -> None:
    uri = storage.join(storage_root, "ledger.json")
    create_ledger(uri, range(100_000))
    update_ledger(uri, "pend", lambda led: dataclasses.replace(led, pending=frozenset({5, 6, 7, 50_000})))
    after = update_ledger(uri, "label", _label({5, 6}, "ingest-a"))
    assert after.labelled == {5, 6} and after.pending == {7, 50_000} and after.revision == 2
    change = _segments(uri)[-1]
    assert change["kind"] == "change" and change["pending_removed"] == [[5, 6]] and change["pool_added"] == []
    assert [p["op_id"] for p in change["parts_added"]] == ["ingest-a"]
    # The change segment's size depends on what changed, not on the 100,000-image pool.
    assert len(storage.dumps_json(change)) < 1_000
    assert read_ledger(uri) == after


def test_compaction_writes_a_snapshot_and_keeps_the_state(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(500))
    for i in range(COMPACT_AFTER + 3):
        state = update_ledger(uri, f"op-{i}", _add_pending(i))
    head = storage.read_json(uri)
    assert len(head["segments"]) == 4  # a snapshot at segment 64, then three changes
    assert _segments(uri)[0]["kind"] == "snapshot"
    assert read_ledger(uri) == state and state.pending == frozenset(range(COMPACT_AFTER + 3))


def test_segments_two_snapshots_old_are_deleted_and_the_state_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weekly rounds write about a hundred segments a week: ledger/ keeps about two snapshots' worth."""
    monkeypatch.setattr(ledger_mod, "COMPACT_AFTER", 4)
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(100))
    counts = []
    for i in range(40):
        state = update_ledger(uri, f"op-{i}", _add_pending(i))
        counts.append(len(list((tmp_path / "ledger").iterdir())))
        assert read_ledger(uri) == state  # every head's segments are there
    assert max(counts) <= 2 * 4 + 1 and state.pending == frozenset(range(40))
    listed = set(storage.read_json(uri)["segments"])
    kept = {f"ledger/{p.name}" for p in (tmp_path / "ledger").iterdir()}
    assert listed <= kept


def test_a_reader_whose_head_moved_on_while_its_segments_were_deleted_reads_the_new_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_mod, "COMPACT_AFTER", 2)
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(100))
    update_ledger(uri, "op-0", _add_pending(0))
    stale = storage.read_versioned(uri)  # a slow reader's head, before two snapshots
    for i in range(1, 9):
        state = update_ledger(uri, f"op-{i}", _add_pending(i))
    assert stale is not None
    ledger_mod._segment_cache.clear()  # a reader in another process: it never saw the old segments
    real = storage.read_versioned
    calls: list[str] = []

    def slow_reader(target: str) -> Any:
        calls.append(target)
        return stale if len(calls) == 1 else real(target)

    monkeypatch.setattr(ledger_mod.storage, "read_versioned", slow_reader)
    assert read_ledger(uri) == state and len(calls) == 2
    ledger_mod._segment_cache.clear()
    monkeypatch.setattr(ledger_mod.storage, "read_versioned", lambda target: stale)  # the head never moved: damage
    with pytest.raises(LedgerError, match="a segment the head lists is missing"):
        read_ledger(uri)


def test_a_snapshot_deletes_a_bounded_number_of_old_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first snapshot of an aged campaign finds thousands: the rest go at the snapshots after it."""
    monkeypatch.setattr(ledger_mod, "COMPACT_AFTER", 4)
    monkeypatch.setattr(ledger_mod, "DELETED_PER_SNAPSHOT", 3)
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(100))
    for k in range(7):  # segments of an old taudis, which never deleted them (never listed now)
        storage.write_bytes(str(tmp_path / "ledger" / f"{k:08d}-old{k}.json"), b"{}")
    left = []
    for i in range(30):
        update_ledger(uri, f"op-{i}", _add_pending(i))
        left.append(len([p for p in (tmp_path / "ledger").iterdir() if "-old" in p.name]))
    assert left[-1] == 0 and max(a - b for a, b in itertools.pairwise(left)) <= 3  # at most 3 at a time


def test_brief_op_ids_are_kept_among_the_latest_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal's or a round's facts' op id guards its own call's retries: the head need not keep it for years."""
    monkeypatch.setattr(ledger_mod, "BRIEF_OPS_KEPT", 3)
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(100))
    update_ledger(uri, "ingest:file-a", _add_pending(0))
    for i in range(10):
        update_ledger(uri, f"renew:{i}", _add_pending(i + 1), brief=True)
    update_ledger(uri, "ingest:file-b", _add_pending(50))
    state = read_ledger(uri)
    assert [op["op_id"] for op in state.ops] == ["ingest:file-a", "renew:7", "renew:8", "renew:9", "ingest:file-b"]
    assert state.revision == 12 and state.pending == frozenset([*range(11), 50])
    assert update_ledger(uri, "ingest:file-a", _add_pending(99)) == state  # kept for good: still applied once
    assert update_ledger(uri, "renew:9", _add_pending(98)) == state  # a retry of a recent brief one, too


def test_an_update_never_unlabels_an_image_or_rewrites_a_label_part(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(5))
    update_ledger(uri, "p", _add_pending(1))
    update_ledger(uri, "l", _label({1}, "ingest-a"))
    with pytest.raises(LedgerError, match="may not unlabel images") as err:
        update_ledger(uri, "drop", lambda led: dataclasses.replace(led, parts=()))
    assert err.value.field == "parts"
    rewritten = LabelPart("ingest-a", "labels/other.json", frozenset({1}), "test")
    with pytest.raises(LedgerError, match="never rewrite one"):
        update_ledger(uri, "rewrite", lambda led: dataclasses.replace(led, parts=(rewritten,)))


def test_withdrawn_images_leave_labels_only_for_good_and_survive_compaction(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(5))
    update_ledger(uri, "p", _add_pending(1))
    update_ledger(uri, "l", _label({1}, "ingest-a"))

    def withdraw(led: Ledger) -> Ledger:
        return dataclasses.replace(led, pool=led.pool - {1, 3}, parts=(), withdrawn=frozenset({1, 3}))

    state = update_ledger(uri, "w", withdraw)  # unlabelling is allowed into the withdrawn set only
    assert state.withdrawn == {1, 3} and state.labelled == frozenset() and read_ledger(uri) == state
    assert _segments(uri)[-1]["withdrawn_added"] == [[1, 1], [3, 3]]
    assert storage.read_json(uri)["counts"]["withdrawn"] == 2
    with pytest.raises(LedgerError, match="never come back") as err:
        update_ledger(uri, "back", lambda led: dataclasses.replace(led, pool=led.pool | {3}, withdrawn=frozenset({1})))
    assert err.value.field == "withdrawn"
    with pytest.raises(LedgerError, match="withdrawn but in the pool"):
        update_ledger(uri, "both", lambda led: dataclasses.replace(led, pool=led.pool | {3}))
    for i in range(COMPACT_AFTER + 1):
        state = update_ledger(
            uri, f"op-{i}", lambda led, i=i: dataclasses.replace(led, rounds=({"round": 0, "state": f"s{i}"},))
        )
    assert any(doc["kind"] == "snapshot" for doc in _segments(uri))
    again = read_ledger(uri)
    assert again.withdrawn == {1, 3} and again.pool == state.pool == {0, 2, 4}


def test_a_part_replaced_by_others_holding_its_images_leaves_in_a_change_segment(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(5))
    update_ledger(uri, "p", _add_pending(1))
    update_ledger(uri, "p2", _add_pending(2))
    update_ledger(uri, "l", _label({1, 2}, "ingest-a"))
    rest = LabelPart("ingest-a~fix", "labels/rest.json", frozenset({1}), "test")
    fix = LabelPart("fix", "labels/fix.json", frozenset({2}), "test")
    state = update_ledger(uri, "fix", lambda led: dataclasses.replace(led, parts=(rest, fix)))
    assert _segments(uri)[-1]["parts_removed"] == ["ingest-a"]
    assert read_ledger(uri) == state and state.parts == (rest, fix) and state.labelled == {1, 2}


def test_a_no_op_update_writes_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(5))
    before = storage.read_bytes(uri)
    assert update_ledger(uri, "noop", lambda led: led).revision == 0
    assert storage.read_bytes(uri) == before


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda head, seg: head.update(schema="other"), "schema"),
        (lambda head, seg: head.update(version=1), "version"),
        (lambda head, seg: head.update(revision="3"), "revision"),
        (lambda head, seg: head.update(counts={"pool": 1}), "counts"),
        (lambda head, seg: head["rounds"].append({"round": 1}), "rounds.state"),
        (lambda head, seg: head["ops"].append({"kind": "x"}), "ops"),
        (lambda head, seg: seg.update(pending=[[77, 77]]), "pending"),
        (
            lambda head, seg: seg.update(pending=[[1, 1]], parts=[{"op_id": "a", "name": "n", "images": [[1, 1]]}]),
            "pending",
        ),
        (lambda head, seg: seg.update(pool=[["a", 1]]), "pool"),
        (lambda head, seg: seg.update(kind="weird"), "kind"),
    ],
)
def test_invalid_documents_name_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, [1, 2, 3])
    head = json.loads(Path(uri).read_text())
    segment_path = tmp_path / head["segments"][0]
    segment = json.loads(segment_path.read_text())
    mutate(head, segment)
    Path(uri).write_text(json.dumps(head))
    segment_path.write_text(json.dumps(segment))
    ledger_mod._segment_cache.clear()
    with pytest.raises(LedgerError) as err:
        read_ledger(uri)
    assert err.value.field == field


def test_half_written_head_and_missing_segment_are_rejected_not_misread(tmp_path: Path) -> None:
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, [1, 2])
    text = Path(uri).read_text()
    Path(uri).write_text(text[:40])
    with pytest.raises(LedgerError, match="not valid JSON"):
        read_ledger(uri)
    Path(uri).write_text(text)
    ledger_mod._segment_cache.clear()
    for segment in (tmp_path / "ledger").iterdir():
        segment.unlink()
    with pytest.raises(LedgerError, match="segment the head lists is missing"):
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


def test_the_same_op_id_applies_once(storage_root: str) -> None:
    uri = storage.join(storage_root, "ledger.json")
    create_ledger(uri, range(5))
    first = update_ledger(uri, "op-1", _add_pending(1))
    again = update_ledger(uri, "op-1", _add_pending(2))  # a retry of op-1 with other content is a no-op
    assert again == first and first.pending == {1} and [o["op_id"] for o in first.ops] == ["op-1"]


# ------------------------------------------------------------------------------ lost answers


def test_lost_answer_gcs_retry_sees_412_and_op_present(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The head write lands, its answer is lost; the library's retry gets 412; not applied twice."""
    import requests

    uri = f"{gcs_bucket}/c/ledger.json"
    create_ledger(uri, range(5))
    http = storage.gcs_client()._http
    real_request = http.request
    seen: list[int] = []
    state = {"dropped": False}

    def flaky(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = real_request(method, url, *args, **kwargs)
        if "/upload/" in url and "ifGenerationMatch" in url:  # the head's conditional write
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


def test_lost_answer_of_create_is_a_success_not_already_exists(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head's first write lands, its answer is lost; the retry's 412 meets this call's own head."""
    import requests

    uri = f"{gcs_bucket}/c/ledger.json"
    http = storage.gcs_client()._http
    real_request = http.request
    seen: list[int] = []

    def flaky(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = real_request(method, url, *args, **kwargs)
        if "/upload/" in url and "ifGenerationMatch" in url:
            seen.append(response.status_code)
            if len(seen) == 1:
                raise requests.exceptions.ConnectionError("answer lost after the write landed")
        return response

    with monkeypatch.context() as patched:
        patched.setattr(http, "request", flaky)
        created = create_ledger(uri, range(5))
    assert seen == [200, 412] and created.pool == frozenset(range(5)) and read_ledger(uri).revision == 0
    with pytest.raises(LedgerError, match="already exists"):  # another call's create still finds it taken
        create_ledger(uri, range(5))


def test_lost_answer_connection_error_after_write(storage_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection error after the head write reaches the update loop: it re-reads and finds the op."""
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
    while any(p.is_alive() for p in procs):  # a reader racing the writers sees only whole states
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


@pytest.mark.parametrize("kill_point", ["before_the_write_request", "after_the_write_landed"])
def test_server_killed_during_the_head_write(
    fs_gcs_server: Any, kill_point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL the server at the head's write request, restart it; the update lands exactly once.

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
        if "/upload/" not in url or "ifGenerationMatch" not in url or state["killed"]:
            response = real_request(method, url, *args, **kwargs)
            statuses.append(response.status_code)
            return response
        state["killed"] = True
        if kill_point == "after_the_write_landed":
            statuses.append(real_request(method, url, *args, **kwargs).status_code)
        fs_gcs_server.kill()
        threading.Thread(target=restart_later).start()
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


def _writer(uri: str, count: int, errors: Any) -> None:
    try:
        for j in range(count):
            update_ledger(uri, f"op-{j}", _add_pending(j), timeout=60)
            time.sleep(0.01)
    except Exception as err:
        errors.put(repr(err))


def test_local_writer_killed_mid_stream_leaves_a_valid_ledger_and_no_stuck_lock(tmp_path: Path) -> None:
    count = 400
    uri = str(tmp_path / "ledger.json")
    create_ledger(uri, range(count + 1))
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    proc = ctx.Process(target=_writer, args=(uri, count, errors))
    proc.start()
    deadline = time.monotonic() + 30
    while read_ledger(uri).revision < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: maybe inside the lock, maybe between the segment and the head
    proc.join(10)
    killed_at = read_ledger(uri)  # validated: the old or the new state, never a torn one
    assert 3 <= killed_at.revision < count
    done = update_ledger(uri, "after-kill", _add_pending(count), timeout=10)  # the lock died with its holder
    assert done.revision == killed_at.revision + 1 and count in done.pending


def test_cli_create_and_show(storage_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    from taudis.storage.cli import main

    uri = storage.join(storage_root, "camp", "ledger.json")
    pool = storage.join(storage_root, "pool.json")
    storage.write_json(pool, {"images": [{"id": i} for i in range(6)], "annotations": [], "categories": []})
    assert main(["create", uri, "--pool-annotations", pool, "--campaign", "demo"]) == 0
    assert main(["create", uri, "--pool-annotations", pool]) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["show", uri]) == 0
    assert "campaign demo" in capsys.readouterr().out
    assert main(["show", uri, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pool"] == list(range(6)) and doc["unlabelled"] == list(range(6))
