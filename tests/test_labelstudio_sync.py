"""`taudis labelstudio push/pull` against a fake Label Studio API with faults (the real one: test_labelstudio.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taudis import storage
from taudis.labeling.labelstudio import label_config
from taudis.labeling.labelstudio_sync import Client, LabelStudioError, TransientError, main, pull, push
from taudis.labeling.read import read_labels
from tests.fake_labelstudio import PERSONAL_TOKEN, TOKEN, FakeLabelStudio

CONFIG = label_config(["house", "car"])


@pytest.fixture
def fake() -> Iterator[FakeLabelStudio]:
    server = FakeLabelStudio().start()
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeLabelStudio) -> Client:
    return Client(fake.url, TOKEN, backoff=0.01)


def _tasks_folder(root: str, ids: list[int]) -> str:
    folder = storage.join(root, "rounds", "round-000", "tasks", "labelstudio")
    tasks = [{"data": {"image": f"gs://b/pool/{i}.png", "image_id": i}, "predictions": [{"result": []}]} for i in ids]
    storage.write_json(storage.join(folder, "tasks.json"), tasks)
    storage.write_text(storage.join(folder, "label_config.xml"), CONFIG)
    return folder


def test_push_creates_the_project_and_never_doubles_a_task(
    fake: FakeLabelStudio, client: Client, storage_root: str
) -> None:
    folder = _tasks_folder(storage_root, [3, 1, 2])
    first = push(client, folder, title="round 0", create=True)
    assert first == {"project": 1, "created": True, "tasks": 3, "imported": 3, "already": 0}
    assert fake.projects[1]["label_config"] == CONFIG
    assert push(client, folder, title="round 0") == {
        "project": 1,
        "created": False,
        "tasks": 3,
        "imported": 0,
        "already": 3,
    }
    bigger = _tasks_folder(storage_root, [3, 1, 2, 4])
    assert push(client, bigger, project_id=1)["imported"] == 1
    assert sorted(t["data"]["image_id"] for t in fake.tasks.values()) == [1, 2, 3, 4]


def test_push_retries_transient_failures_and_an_import_whose_answer_was_lost(
    fake: FakeLabelStudio, client: Client, tmp_path: Path
) -> None:
    folder = _tasks_folder(str(tmp_path), [1, 2])
    fake.fail("GET", "/api/projects", 503, 502)
    fake.fail("GET", "/api/tasks", 429)
    fake.lose_import_answers = 1  # the import lands, its answer does not
    summary = push(client, folder, title="t", create=True)
    assert summary["imported"] == 2 and len(fake.tasks) == 2
    fake.fail("GET", "/api/tasks", *[503] * 6)
    with pytest.raises(TransientError, match="HTTP 503"):
        push(client, folder, project_id=1)


def test_push_refuses_what_does_not_fit(fake: FakeLabelStudio, client: Client, tmp_path: Path) -> None:
    folder = _tasks_folder(str(tmp_path), [1])
    with pytest.raises(LabelStudioError, match="no project is titled 'x'"):
        push(client, folder, title="x")
    fake.projects[1] = {"id": 1, "title": "x", "label_config": "<View><Image name='image' value='$image'/></View>"}
    with pytest.raises(LabelStudioError, match="lacks \\[\\('BrushLabels', 'label'\\)"):
        push(client, folder, title="x")
    assert push(client, folder, title="x", update_config=True)["imported"] == 1
    assert fake.projects[1]["label_config"] == CONFIG
    fake.projects[2] = {"id": 2, "title": "x", "label_config": CONFIG}
    fake.projects[3] = {"id": 3, "title": "x 2", "label_config": CONFIG}  # a substring match is not the project
    with pytest.raises(LabelStudioError, match="2 projects are titled 'x'"):
        push(client, folder, title="x")
    with pytest.raises(LabelStudioError, match="HTTP 404"):
        push(client, folder, project_id=9)
    with pytest.raises(LabelStudioError, match="HTTP 401"):
        Client(fake.url, "wrong").project(1)


def test_a_personal_access_token_is_traded_for_access_tokens_as_they_expire(
    fake: FakeLabelStudio, tmp_path: Path
) -> None:
    client = Client(fake.url, f" {PERSONAL_TOKEN}\n", backoff=0.01)  # pasted with blanks around it
    folder = _tasks_folder(str(tmp_path), [1, 2])
    assert push(client, folder, title="t", create=True)["imported"] == 2
    assert fake.refreshes == 1, "one access token serves every request while it lasts"
    fake.expire_access()
    fake.fail("POST", "/api/token/refresh/", 503)  # the refresh is retried like any safe request
    assert push(client, folder, title="t")["already"] == 2
    assert fake.refreshes == 2 and ("POST", "/api/token/refresh/") not in [(m, p) for m, p, _ in fake.faults]
    with pytest.raises(LabelStudioError, match="refused the personal access token"):
        Client(fake.url, PERSONAL_TOKEN.replace("e", "f", 1), backoff=0.01).project(1)
    fake.expire_access()
    fake.fail("POST", "/api/token/refresh/", 404)  # an older Label Studio, or a proxy's page
    with pytest.raises(LabelStudioError, match="no access token in the answer"):
        client.project(1)
    assert not Client(fake.url, TOKEN).personal, "a legacy token is sent as it is"


def _annotate(fake: FakeLabelStudio, task_id: int, **annotation: Any) -> None:
    fake.answer("POST", f"/api/tasks/{task_id}/annotations", f"Token {TOKEN}", {"result": [], **annotation})


def test_pull_writes_each_finished_annotation_once(fake: FakeLabelStudio, client: Client, storage_root: str) -> None:
    push(client, _tasks_folder(storage_root, [1, 2, 3]), title="t", create=True)
    incoming = storage.join(storage_root, "campaign", "incoming")
    assert pull(client, 1, incoming) == {
        "project": 1, "exported": 0, "new": 0, "written": None, "edited": 0, "corrections": None,
        "refused": 0, "held": None,
    }  # fmt: skip
    _annotate(fake, 1)
    _annotate(fake, 2, was_cancelled=True)  # skipped: not a label
    first = pull(client, 1, incoming)
    assert first["new"] == 1 and first["written"].startswith(storage.join(incoming, "labelstudio-1-"))
    written = storage.read_json(first["written"])
    assert [t["id"] for t in written] == [1] and "predictions" not in written[0]
    assert pull(client, 1, incoming)["written"] is None  # twice: nothing new
    # ingest moved it to done/: still pulled
    storage.write_bytes(storage.join(incoming, "done", "x.json"), storage.read_bytes(first["written"]))
    storage.delete(first["written"])
    storage.write_text(storage.join(incoming, "done", "x.report.json"), "{}")
    storage.write_text(storage.join(incoming, "notes.json"), "{not json")
    _annotate(fake, 3)
    second = pull(client, 1, incoming, name="batch-2")
    assert second["written"].startswith(storage.join(incoming, "batch-2-")) and second["new"] == 1
    assert [t["id"] for t in storage.read_json(second["written"])] == [3]
    # an annotation edited after it was pulled comes again, as a correction: the tool's newer word
    fake.tasks[1]["annotations"][0]["updated_at"] = "t1"
    _annotate(fake, 2)
    third = pull(client, 1, incoming)
    assert (third["new"], third["edited"]) == (1, 1)
    assert [t["id"] for t in storage.read_json(third["written"])] == [2]
    assert third["corrections"].startswith(storage.join(incoming, "corrections", "labelstudio-1-"))
    assert [t["id"] for t in storage.read_json(third["corrections"])] == [1]
    assert pull(client, 1, incoming)["written"] is None  # the correction counts as pulled


def test_a_task_the_reader_refuses_holds_back_no_other_task(
    fake: FakeLabelStudio, client: Client, storage_root: str
) -> None:
    push(client, _tasks_folder(storage_root, [1, 2, 3, 4]), title="t", create=True)
    for task_id in (1, 1, 2, 3, 4):  # task 1: two annotators, neither marked ground truth
        _annotate(fake, task_id)
    incoming = storage.join(storage_root, "campaign", "incoming")
    pulled = pull(client, 1, incoming)
    assert (pulled["new"], pulled["refused"]) == (3, 1)
    assert [t["id"] for t in storage.read_json(pulled["written"])] == [2, 3, 4]
    assert pulled["held"].startswith(storage.join(incoming, "labelstudio-1-")) and "-refused-" in pulled["held"]
    assert [t["id"] for t in storage.read_json(pulled["held"])] == [1]
    assert "ground truth" in str(read_labels(pulled["held"]).problems)  # why ingest will reject it
    assert pull(client, 1, incoming)["written"] is None  # both files count as pulled, unchanged
    # once one annotation is marked ground truth (which touches it), task 1 comes: as new, since it never went in
    fake.tasks[1]["annotations"][1].update(ground_truth=True, updated_at="t2")
    fixed = pull(client, 1, incoming)
    assert (fixed["new"], fixed["refused"], fixed["corrections"]) == (1, 0, None)
    assert [t["id"] for t in storage.read_json(fixed["written"])] == [1]
    assert not read_labels(fixed["written"]).problems
    assert pull(client, 1, incoming)["written"] is None


def test_a_refused_task_fixed_by_deleting_an_annotation_comes_with_the_next_pull(
    fake: FakeLabelStudio, client: Client, storage_root: str
) -> None:
    push(client, _tasks_folder(storage_root, [1, 2]), title="t", create=True)
    for task_id in (1, 1, 2):
        _annotate(fake, task_id)
    incoming = storage.join(storage_root, "campaign", "incoming")
    first = pull(client, 1, incoming)
    storage.write_bytes(  # ingest rejected the file of refused tasks: it moved to rejected/, name kept
        storage.join(incoming, "rejected", first["held"].rsplit("/", 1)[-1]), storage.read_bytes(first["held"])
    )
    storage.delete(first["held"])
    del fake.tasks[1]["annotations"][1]  # the second annotator's work taken out: the first stands untouched
    fixed = pull(client, 1, incoming)
    assert [t["id"] for t in storage.read_json(fixed["written"])] == [1] and fixed["refused"] == 0
    assert pull(client, 1, incoming)["written"] is None


def test_retry_rejected_brings_back_the_good_tasks_of_a_file_rejected_whole(
    fake: FakeLabelStudio, client: Client, storage_root: str
) -> None:
    push(client, _tasks_folder(storage_root, [1, 2, 3]), title="t", create=True)
    for task_id in (1, 1, 2, 3):
        _annotate(fake, task_id)
    incoming = storage.join(storage_root, "campaign", "incoming")
    # an earlier version wrote every task to one file, and ingest rejected it for task 1
    storage.write_json(storage.join(incoming, "rejected", "labelstudio-1-old.json"), client.export_json(1))
    assert pull(client, 1, incoming)["written"] is None  # stranded: counted as pulled
    again = pull(client, 1, incoming, retry_rejected=True)
    assert [t["id"] for t in storage.read_json(again["written"])] == [2, 3]
    assert [t["id"] for t in storage.read_json(again["held"])] == [1]
    assert pull(client, 1, incoming, retry_rejected=True)["written"] is None  # the retry's files count


def test_pulls_are_named_in_the_order_they_were_made(fake: FakeLabelStudio, client: Client, storage_root: str) -> None:
    push(client, _tasks_folder(storage_root, list(range(1, 9))), title="t", create=True)
    incoming = storage.join(storage_root, "campaign", "incoming")
    written = []
    for task_id in range(1, 9):
        _annotate(fake, task_id)
        written.append(pull(client, 1, incoming)["written"])
    assert written == sorted(written)  # ingest's order is the pulls' order, whatever the content


def test_cli(fake: FakeLabelStudio, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _tasks_folder(str(tmp_path), [1, 2])
    env = {"LABEL_STUDIO_URL": fake.url, "LABEL_STUDIO_API_KEY": TOKEN}
    assert main(["push", folder, "--title", "round 0", "--create"], env) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == 2
    _annotate(fake, 2)
    assert main(["pull", "--title", "round 0", "--out", str(tmp_path / "incoming")], env) == 0
    assert json.loads(capsys.readouterr().out)["new"] == 1
    assert main(["pull", "--project", "1", "--out", str(tmp_path / "incoming")], {}) == 1
    assert "LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "nowhere"), "--project", "1"], env) == 1
    assert "taudis labelstudio push:" in capsys.readouterr().err
