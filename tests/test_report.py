"""Tests of taudis.report: Markdown summary, learning curves, round and campaign HTML pages."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from taudis.data.instances import write_shard
from taudis.report import (
    ReportInputError,
    RoundSection,
    campaign_html,
    learning_curve_png,
    load_selection,
    round_html,
    round_markdown,
    validate_history,
)
from taudis.report.cli import main as report_main
from taudis.report.curves import DPI, FIGSIZE
from taudis.report.thumbnails import (
    CHOSEN_COLOUR,
    CHOSEN_MASK_ALPHA,
    MASK_ALPHA,
    class_colour,
    load_display_image,
)

GREY = 120
# Image 1 (64 x 48 px): instance 0 (class 0, chosen) fills box A, instance 1 (class 1, not chosen) fills box B.
BOX_A = (8.0, 8.0, 24.0, 24.0)
BOX_B = (36.0, 20.0, 56.0, 40.0)
ODD_REASON = "<script>alert('x')</script> | *bold* & [link](http://evil)"


def selection_dict(**overrides: Any) -> dict[str, Any]:
    """A selection of images 1 (voted), 2 (voted) and 3 (filled), with chosen instance (1, 0)."""
    selection = {
        "schema": "taudis.selection",
        "version": 1,
        "strategy": "taudis",
        "params": {
            "alpha": 2.5,
            "beta": 1.5,
            "sigma": 0.8,
            "metric": "segmentation_entropy",
            "aggregation": "vote",
            "seed": 7,
        },
        "budget": 3,
        "images": [
            {
                "image_id": 1,
                "rank": 1,
                "votes": 1,
                "uncertainty": 0.8125,
                "filled": False,
                "reason": "1 chosen instance",
            },
            {"image_id": 2, "rank": 2, "votes": 1, "uncertainty": 0.5, "filled": False, "reason": ODD_REASON},
            {
                "image_id": 3,
                "rank": 3,
                "votes": 0,
                "uncertainty": 0.25,
                "filled": True,
                "reason": "filled: no instance",
            },
        ],
        "instances": [
            {"image_id": 1, "instance": 0, "uncertainty": 0.9},
            {"image_id": 2, "instance": 0, "uncertainty": 0.5},
        ],
        "notes": ["only 2 images had a chosen instance; filled 1 by image uncertainty", "<b>not bold</b>"],
        "stats": {
            "pool_images": 4,
            "pool_instances": 4,
            "candidates": 3,
            "chosen_instances": 2,
            "filled": 1,
            "coverage": 0.75,
        },
    }
    selection.update(overrides)
    return selection


def write_pool(tmp_path: Path) -> dict[str, Path]:
    """Four grey images of 64 x 48 px, a COCO file listing them, one instance shard and a selection file."""
    root = tmp_path / "images"
    root.mkdir()
    coco_images = []
    for image_id in (1, 2, 3, 4):
        name = f"tile_{image_id}.png"
        Image.new("RGB", (64, 48), (GREY, GREY, GREY)).save(root / name)
        coco_images.append({"id": image_id, "file_name": name, "height": 48, "width": 64})
    coco = tmp_path / "pool.json"
    coco.write_text(
        json.dumps(
            {
                "images": coco_images,
                "annotations": [],
                "categories": [{"id": 1, "name": "house"}, {"id": 2, "name": "road"}],
            }
        )
    )
    n = 3
    class_probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.2, 0.1, 0.7]], dtype=np.float32)
    embeddings = np.zeros((n, 4), dtype=np.float32)
    embeddings[:, 0] = 1.0
    write_shard(
        tmp_path / "shards" / "shard-00000",
        image_ids=[1, 2, 3, 4],
        image_sizes=[[48, 64]] * 4,
        instance_image=np.array([1, 1, 2], dtype=np.int64),
        instance_index=np.array([0, 1, 0], dtype=np.int32),
        classes=np.array([0, 1, 0], dtype=np.int32),
        class_probs=class_probs,
        boxes=np.array([BOX_A, BOX_B, BOX_A], dtype=np.float32),
        mask_probs=np.ones((n, 28, 28), dtype=np.float16),
        embeddings=embeddings,
        class_names=["house", "road"],
    )
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(selection_dict()))
    return {"root": root, "coco": coco, "shards": tmp_path / "shards", "selection": selection}


HISTORY = [
    {"strategy": "taudis", "round": 0, "labelled_images": 10, "mask_ap": 20.0, "box_ap": 25.0},
    {"strategy": "taudis", "round": 1, "labelled_images": 20, "mask_ap": 40.0, "box_ap": 45.0},
    {"strategy": "random", "round": 0, "labelled_images": 10, "mask_ap": 18.0, "box_ap": 22.0},
    {"strategy": "random", "round": 1, "labelled_images": 20, "mask_ap": 30.0, "box_ap": math.nan},
    {"strategy": "random", "round": 2, "labelled_images": 40, "mask_ap": 41.0, "box_ap": 44.0},
]


class PageParser(HTMLParser):
    """Collects every tag's attributes, the thumbnails, the captions' text and any style text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.captions: list[str] = []
        self.styles: list[str] = []
        self._in_caption = False
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "figcaption":
            self._in_caption = True
            self.captions.append("")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.captions[-1] += data
        if self._in_style:
            self.styles.append(data)

    def images(self, cls: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == "img" and cls in (a.get("class") or "").split()]


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def assert_self_contained(page: PageParser) -> None:
    linking = ("src", "href", "srcset", "action", "poster", "data", "background", "xlink:href")
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in linking:
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")), f"<{tag} {name}={value[:60]!r}> is external"
    style = "".join(page.styles)
    assert "url(" not in style and "@import" not in style


def decode_data_uri(uri: str) -> Image.Image:
    head, payload = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


def blend(colour: tuple[int, int, int], alpha: float) -> np.ndarray:
    return np.array([GREY] * 3) * (1 - alpha) + np.array(colour) * alpha


# --- Markdown ---------------------------------------------------------------------------------------


def test_markdown_shows_strategy_parameters_counts_fill_and_metrics() -> None:
    text = round_markdown(selection_dict(), 2, {"mask_ap": 41.25, "box_ap": math.nan}, labelled_images=30)
    assert "## Round 2: taudis" in text
    assert "| alpha | 2.5 |" in text and "| sigma | 0.8 |" in text and "| seed | 7 |" in text
    assert "segmentation\\_entropy" in text  # underscores escaped, not italics
    assert "| pool images | 4 |" in text and "| pool instances | 4 |" in text
    assert "| candidate instances (oversampled) | 3 |" in text and "| chosen instances | 2 |" in text
    assert "| chosen images | 3 |" in text and "| coverage of the candidates | 0.75 |" in text
    assert "Fill used: 1 of 3 chosen images" in text
    assert "mask AP **41.2**" in text or "mask AP **41.3**" in text
    assert "box AP **n/a**" in text
    assert "Labelled images so far: **30**" in text
    assert "filled 1 by image uncertainty" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line.replace("\\|", "").count("|") == 7]
    assert len(table) == 1 + 3  # header + one row per chosen image
    assert table[1].startswith("| 1 | 1 | 1 | 0.8125 | no |")
    assert table[3].startswith("| 3 | 3 | 0 | 0.25 | yes |")


def test_markdown_without_fill_or_metrics() -> None:
    selection = selection_dict()
    for record in selection["images"]:
        record["filled"] = False
    text = round_markdown(selection, 0, None, labelled_images=10)
    assert "Fill not used" in text
    assert "mask AP" not in text


def test_markdown_escapes_odd_strings() -> None:
    selection = selection_dict(strategy="tau|dis <i>x</i>", notes=["<img src=x onerror=alert(1)>", "line\nbreak"])
    text = round_markdown(selection, 1, None, labelled_images=5)
    assert "<img" not in text and "<i>" not in text and "<script>" not in text
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in text
    assert "tau\\|dis &lt;i&gt;x&lt;/i&gt;" in text
    assert "- line break" in text  # a newline in a note cannot start a new Markdown block
    # The odd reason keeps the table's columns: its pipe is escaped.
    row = next(line for line in text.splitlines() if line.startswith("| 2 | 2 |"))
    assert row.replace("\\|", "").count("|") == 7
    assert "\\[link\\]\\(http://evil\\)" in row and "\\*bold\\*" in row


def test_markdown_caps_rows() -> None:
    images = [
        {"image_id": i, "rank": i + 1, "votes": 1, "uncertainty": 0.5, "filled": False, "reason": "r"} for i in range(7)
    ]
    text = round_markdown(selection_dict(images=images), 1, None, 7, max_rows=5)
    assert "... and 2 more" in text
    assert sum(1 for line in text.splitlines() if line.endswith("| no | r |")) == 5


def test_markdown_rejects_broken_selection_naming_record_and_field() -> None:
    selection = selection_dict()
    del selection["images"][1]["reason"]
    with pytest.raises(ReportInputError, match=r"images\[1\], field 'reason'"):
        round_markdown(selection, 1, None, 0)
    with pytest.raises(ReportInputError, match="field 'votes'"):
        round_markdown(selection_dict(images=[{**selection_dict()["images"][0], "votes": "2"}]), 1, None, 0)
    with pytest.raises(ReportInputError, match="field 'schema'"):
        round_markdown(selection_dict(schema="other"), 1, None, 0)


def test_load_selection_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sel.json"
    path.write_text("{not json")
    with pytest.raises(ReportInputError, match=r"sel\.json: not valid JSON"):
        load_selection(path)
    with pytest.raises(ReportInputError, match=r"missing\.json: no such file"):
        load_selection(tmp_path / "missing.json")


# --- learning curve ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "history",
    [
        HISTORY,
        [{"strategy": "taudis", "round": 0, "labelled_images": 10, "mask_ap": 12.5, "box_ap": 14.0}],
        [{"strategy": "taudis", "round": 0, "labelled_images": 10, "mask_ap": math.nan, "box_ap": None}],
        [],
    ],
    ids=["two-strategies", "one-point", "all-nan", "empty"],
)
def test_learning_curve_png(tmp_path: Path, history: list[dict[str, Any]]) -> None:
    out = learning_curve_png(history, tmp_path / "sub" / "curve.png")
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 0  # something was drawn


def test_learning_curve_draws_each_strategy_in_its_colour(tmp_path: Path) -> None:
    # taudis is drawn in tab:blue; a curve only of random must contain no such blue.
    tab_blue = np.array([31, 119, 180])

    def blue_pixels(history: list[dict[str, Any]]) -> int:
        with Image.open(learning_curve_png(history, tmp_path / "c.png")) as img:
            rgb = np.asarray(img.convert("RGB")).astype(int)
        return int((np.abs(rgb - tab_blue).sum(axis=2) < 30).sum())

    assert blue_pixels(HISTORY) > 50
    assert blue_pixels([r for r in HISTORY if r["strategy"] == "random"]) == 0


def test_history_is_validated() -> None:
    broken = [HISTORY[0], {"strategy": "random", "round": 0, "mask_ap": 1.0, "box_ap": 1.0}]
    with pytest.raises(ReportInputError, match=r"history\[1\], field 'labelled_images'"):
        validate_history(broken)
    with pytest.raises(ReportInputError, match="field 'mask_ap'"):
        validate_history([{**HISTORY[0], "mask_ap": "high"}])
    assert math.isnan(validate_history([{**HISTORY[0], "mask_ap": None}])[0]["mask_ap"])
    # KFP may hand integers back as floats: 20.0 is 20, 20.5 is an error.
    assert validate_history([{**HISTORY[0], "labelled_images": 20.0, "round": 1.0}])[0]["labelled_images"] == 20
    with pytest.raises(ReportInputError, match=r"history\[0\], field 'labelled_images'"):
        validate_history([{**HISTORY[0], "labelled_images": 20.5}])


# --- round HTML -------------------------------------------------------------------------------------


def test_round_html_is_self_contained_with_one_card_per_chosen_image(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    out = round_html(
        pool["selection"],
        pool["shards"],
        pool["coco"],
        pool["root"],
        HISTORY,
        tmp_path / "out" / "round.html",
        round_index=3,
        metrics={"mask_ap": 40.0, "box_ap": 45.0, "labelled_images": 20},
    )
    page = parse(out)
    assert_self_contained(page)
    thumbs = page.images("thumb")
    assert [t["data-image-id"] for t in thumbs] == ["1", "2", "3"]
    assert len(page.captions) == 3
    assert "1 chosen instance" in page.captions[0] and "chosen by vote" in page.captions[0]
    assert ODD_REASON in page.captions[1]  # shown as text ...
    assert not any(tag == "script" for tag, _ in page.tags)  # ... never as markup
    assert "filled by image uncertainty" in page.captions[2] and "filled: no instance" in page.captions[2]
    assert "#1" in page.captions[0] and "0.8125" in page.captions[0]
    curves = page.images("curve")
    assert len(curves) == 1
    curve = decode_data_uri(str(curves[0]["src"]))
    assert curve.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    text = out.read_text()
    assert "taudis round 3: taudis" in text and "Fill used: 1 of 3" in text
    assert "segmentation_entropy" in text and "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert "house" in text and "road" in text  # legend of classes
    # Image 2's only prediction scores 0.2: below the drawing threshold, but drawn because it is chosen.
    assert "not drawn" not in page.captions[1]


def test_round_html_hides_low_scores_unless_chosen(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    pool["selection"].write_text(
        json.dumps(selection_dict(instances=[{"image_id": 1, "instance": 0, "uncertainty": 1.0}]))
    )
    out = round_html(pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "r.html")
    page = parse(out)
    assert "1 prediction scored below 0.5 not drawn" in page.captions[1]
    thumb = np.asarray(decode_data_uri(str(page.images("thumb")[1]["src"]))).astype(float)
    assert np.abs(thumb[60:68, 60:68] - GREY).max() < 8  # box A's centre on image 2: nothing drawn


def test_round_html_lists_the_files_that_came_in_by_fate(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    intake = {"ingested": ["a.json", "b<1>.json"], "repeat": [], "rejected": ["oops.json"], "conflict": []}
    out = round_html(
        pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "r.html", intake=intake
    )
    text = out.read_text()
    section = text[text.index('<section id="labels-in">') :].split("</section>")[0]
    assert "<td>a.json, b&lt;1&gt;.json</td>" in section and "oops.json" in section
    assert "repeats" not in section  # an empty fate gets no row
    quiet = round_html(pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "q.html")
    assert "labels-in" not in quiet.read_text()


def test_both_reports_show_the_trainings_warnings_as_notes(tmp_path: Path) -> None:
    warning = "the median object is 4.0 px across <once resized>; try the config overrides 'INPUT.MIN_SIZE_TEST 512'"
    metrics = {"mask_ap": 3.0, "box_ap": 4.0, "labelled_images": 30, "warnings": [warning]}
    text = round_markdown(selection_dict(), 2, metrics, labelled_images=30)
    (line,) = [line for line in text.splitlines() if line.startswith("> Training: ")]
    assert "4.0 px across" in line and "INPUT.MIN\\_SIZE\\_TEST 512" in line
    pool = write_pool(tmp_path)
    out = round_html(
        pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "r.html", metrics=metrics
    )
    assert '<p class="note">Training: the median object is 4.0 px across &lt;once resized&gt;' in out.read_text()
    quiet = round_markdown(selection_dict(), 2, {"mask_ap": 3.0, "box_ap": 4.0}, labelled_images=30)
    assert "Training:" not in quiet


def test_round_html_thumbnail_draws_masks_where_they_are(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    out = round_html(pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "round.html")
    page = parse(out)
    thumb = np.asarray(decode_data_uri(str(page.images("thumb")[0]["src"]))).astype(float)
    assert thumb.shape == (192, 256, 3)  # 64 x 48 enlarged so the longer side is 256
    scale = 4.0
    # Inside the chosen instance's mask (centre of box A): class 0's colour at the chosen opacity.
    ay, ax = int((BOX_A[1] + BOX_A[3]) / 2 * scale), int((BOX_A[0] + BOX_A[2]) / 2 * scale)
    expected_a = blend(class_colour(0), CHOSEN_MASK_ALPHA)
    assert np.abs(thumb[ay - 3 : ay + 4, ax - 3 : ax + 4] - expected_a).max() < 14
    # Inside the other prediction's mask (centre of box B): class 1's colour at the lighter opacity.
    cy, cx = int((BOX_B[1] + BOX_B[3]) / 2 * scale), int((BOX_B[0] + BOX_B[2]) / 2 * scale)
    expected_b = blend(class_colour(1), MASK_ALPHA)
    assert np.abs(thumb[cy - 3 : cy + 4, cx - 3 : cx + 4] - expected_b).max() < 14
    assert np.abs(expected_a - expected_b).max() > 40  # the two overlays are told apart
    # Far from every mask: the image as it was.
    assert np.abs(thumb[170:190, 5:25] - GREY).max() < 8
    assert np.abs(thumb[2:12, 230:254] - GREY).max() < 8
    # The chosen instance's box outline is the highlight colour (left edge, mid-height).
    edge = thumb[ay - 8 : ay + 8, int(BOX_A[0] * scale) + 1]
    assert np.abs(edge - np.array(CHOSEN_COLOUR)).max(axis=1).min() < 40


def test_round_html_caps_thumbnails_and_says_so(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    out = round_html(
        pool["selection"],
        pool["shards"],
        pool["coco"],
        pool["root"],
        HISTORY,
        tmp_path / "r.html",
        max_images=2,
        image_format="PNG",
    )
    page = parse(out)
    assert len(page.images("thumb")) == 2
    assert all(str(t["src"]).startswith("data:image/png;base64,") for t in page.images("thumb"))
    assert "Showing the first 2 of 3 chosen images" in out.read_text()


def test_round_html_survives_a_missing_image_file(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    (pool["root"] / "tile_3.png").unlink()
    out = round_html(pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "r.html")
    page = parse(out)
    assert len(page.images("thumb")) == 3
    assert "tile_3.png could not be read" in page.captions[2]
    assert "No round has completed yet" in out.read_text()


def test_round_html_rejects_a_broken_coco_file(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    pool["coco"].write_text(json.dumps({"images": [{"id": 1, "height": 48, "width": 64}]}))
    with pytest.raises(ReportInputError, match=r"pool.json, images\[0\], field 'file_name'"):
        round_html(pool["selection"], pool["shards"], pool["coco"], pool["root"], [], tmp_path / "r.html")


def test_round_html_stays_small(tmp_path: Path) -> None:
    """48 JPEG thumbnails of textured 512 px images stay under 2 MB; a 49th chosen image is not drawn."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    n = 49
    images = []
    for i in range(n):
        # Blotchy texture (noise at 1/8 resolution, enlarged): busier than real tiles, unlike pure noise.
        coarse = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        coarse.resize((512, 512), Image.Resampling.BILINEAR).save(root / f"{i}.png", compress_level=1)
        images.append({"id": i, "file_name": f"{i}.png", "height": 512, "width": 512})
    write_shard(
        tmp_path / "shards" / "s0",
        image_ids=list(range(n)),
        image_sizes=[[512, 512]] * n,
        instance_image=np.zeros(0, np.int64),
        instance_index=np.zeros(0, np.int32),
        classes=np.zeros(0, np.int32),
        class_probs=np.zeros((0, 2), np.float32),
        boxes=np.zeros((0, 4), np.float32),
        mask_probs=np.zeros((0, 28, 28), np.float16),
        embeddings=np.zeros((0, 4), np.float32),
        class_names=["a"],
    )
    records = [
        {"image_id": i, "rank": i + 1, "votes": 0, "uncertainty": 0.0, "filled": True, "reason": "fill"}
        for i in range(n)
    ]
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps(selection_dict(images=records, instances=[], budget=n)))
    out = round_html(sel, tmp_path / "shards", {"images": images}, root, HISTORY, tmp_path / "r.html")
    assert len(parse(out).images("thumb")) == 48
    assert out.stat().st_size < 2_000_000


# --- image loading ----------------------------------------------------------------------------------


def test_load_display_image_converts_any_mode(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint16)[None, :].repeat(8, axis=0) * 16 + 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = load_display_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep.shape == (8, 64, 3)
    assert deep[0, 0, 0] < 10 and deep[0, -1, 0] > 245  # a narrow 16-bit range is stretched
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :2, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    shown = load_display_image(tmp_path / "alpha.png")
    assert tuple(shown[0, 0]) == (255, 0, 0) and tuple(shown[0, 3]) == (255, 255, 255)
    Image.new("L", (5, 3), 77).save(tmp_path / "grey.png")
    assert load_display_image(tmp_path / "grey.png").shape == (3, 5, 3)


def test_class_colours_are_deterministic_and_distinct() -> None:
    colours = [class_colour(k) for k in range(40)]
    assert colours == [class_colour(k) for k in range(40)]
    assert len(set(colours[:12])) == 12
    assert all(np.abs(np.array(c) - np.array(CHOSEN_COLOUR)).sum() > 60 for c in colours)


# --- campaign HTML ----------------------------------------------------------------------------------


def test_campaign_html_compares_strategies(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    out = campaign_html(
        HISTORY,
        tmp_path / "campaign.html",
        latest_rounds=[
            RoundSection("taudis", pool["selection"], pool["shards"]),
            ("random", pool["selection"], pool["shards"]),
        ],
        pool_annotations=pool["coco"],
        image_root=pool["root"],
        title="campaign <demo>",
    )
    page = parse(out)
    assert_self_contained(page)
    assert len(page.images("curve")) == 1
    assert len(page.images("thumb")) == 6  # 3 chosen images in each of the two latest rounds
    text = out.read_text()
    assert "campaign &lt;demo&gt;" in text
    rows = {cells[0]: cells for cells in table_rows(text, "strategies")}
    assert rows["taudis"][1:6] == ["2", "20", "40.0", "45.0", "40.0"]
    assert rows["random"][1:6] == ["3", "40", "41.0", "44.0", "41.0"]
    # taudis's final mask AP 40.0 at 20 images; random first reaches it at 40: a 2x labelling factor.
    assert rows["random"][6] == "40 (2x)" and rows["taudis"][6] == "20 (1x)"


def test_campaign_html_without_rounds_or_reference(tmp_path: Path) -> None:
    history = [r for r in HISTORY if r["strategy"] == "random"]
    out = campaign_html(history, tmp_path / "c.html")
    page = parse(out)
    assert_self_contained(page)
    assert not page.images("thumb")
    assert "images to reach" not in out.read_text()


def test_campaign_html_shows_latest_rounds_of_campaign_directories(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    campaign = tmp_path / "campaigns" / "random-1"
    for r, reason in ((999, "first round"), (1000, "newest round <b>")):
        (campaign / "rounds" / f"round-{r:03d}").mkdir(parents=True)
        images = [{**selection_dict()["images"][0], "reason": reason}]
        (campaign / "rounds" / f"round-{r:03d}" / "selection.json").write_text(
            json.dumps(selection_dict(strategy="random", images=images))
        )
    out = campaign_html(
        HISTORY,
        tmp_path / "c.html",
        latest_rounds=[("taudis", pool["selection"])],
        campaigns=[("random", campaign)],
    )
    page = parse(out)
    assert_self_contained(page)
    assert not page.images("thumb")  # no instance shards given: tables, not thumbnails
    text = out.read_text()
    assert "Latest round of taudis" in text and "Latest round of random" in text
    chosen = table_rows(text, "latest-0", table=2)  # after the parameters and counts tables
    assert [row[1] for row in chosen] == ["1", "2", "3"] and chosen[1][5] == ODD_REASON
    assert table_rows(text, "latest-1", table=2) == [["1", "1", "1", "0.8125", "no", "newest round <b>"]]
    assert "first round" not in text
    with pytest.raises(ReportInputError, match="no completed round"):
        campaign_html(HISTORY, tmp_path / "c2.html", campaigns=[("random", tmp_path / "empty")])


def table_rows(text: str, section_id: str, table: int = 0) -> list[list[str]]:
    """Cells of the body rows of the ``table``-th table inside the section with ``section_id``."""

    class Rows(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self.in_section = False
            self.in_cell = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "section":
                self.in_section = dict(attrs).get("id") == section_id
            if not self.in_section:
                return
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag == "td":
                self.in_cell = True
                self.tables[-1][-1].append("")

        def handle_endtag(self, tag: str) -> None:
            if tag == "td":
                self.in_cell = False
            if tag == "section":
                self.in_section = False

        def handle_data(self, data: str) -> None:
            if self.in_cell:
                self.tables[-1][-1][-1] += data

    parser = Rows()
    parser.feed(text)
    return [row for row in parser.tables[table] if row]


# --- CLI --------------------------------------------------------------------------------------------


def test_cli_writes_round_curve_and_campaign(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    history = tmp_path / "history.json"
    history.write_text(json.dumps([{**r, "box_ap": None if math.isnan(r["box_ap"]) else r["box_ap"]} for r in HISTORY]))
    common = ["--instances", str(pool["shards"]), "--annotations", str(pool["coco"]), "--image-root", str(pool["root"])]
    argv = ["round", "--selection", str(pool["selection"]), *common, "--history", str(history)]
    argv += ["--out", str(tmp_path / "r.html"), "--markdown", str(tmp_path / "r.md"), "--round", "4"]
    argv += ["--labelled-images", "20", "--mask-ap", "40"]
    assert report_main(argv) == 0
    assert "## Round 4: taudis" in (tmp_path / "r.md").read_text()
    assert "mask AP **40.0**" in (tmp_path / "r.md").read_text()
    assert len(parse(tmp_path / "r.html").images("thumb")) == 3
    assert report_main(["curve", "--history", str(history), "--out", str(tmp_path / "c.png")]) == 0
    with Image.open(tmp_path / "c.png") as img:
        assert img.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    argv = ["campaign", "--history", str(history), "--out", str(tmp_path / "c.html")]
    argv += ["--latest", "taudis", str(pool["selection"]), str(pool["shards"])]
    argv += ["--annotations", str(pool["coco"]), "--image-root", str(pool["root"])]
    assert report_main(argv) == 0
    assert len(parse(tmp_path / "c.html").images("thumb")) == 3


def test_cli_reports_bad_input_by_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "history.json"
    bad.write_text(json.dumps([{"strategy": "taudis", "labelled_images": "ten"}]))
    assert report_main(["curve", "--history", str(bad), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "history.json" in err and "history[0]" in err and "'labelled_images'" in err
    assert not (tmp_path / "c.png").exists()
