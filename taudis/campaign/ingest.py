"""Labels in: every annotators' file in <campaign>/incoming is ingested or quarantined, never both, never stuck.

For each file (a COCO JSON, a Label Studio JSON or COCO export, a CVAT COCO 1.0 archive or JSON,
a CVAT for images 1.1 XML, bare or zipped; taudis.labeling.read_labels tells them apart):

1. Read it as the tool wrote it, then match every image to the pool by what the tools keep, its
   file name or URI (never by a tool's own numbering), and every category by name. An image
   whose id (where the file claims pool ids) and file name point at different pool images, a
   size that differs from the pool's, a mask outside its image: every problem of the file is
   listed at once, naming the file, the record and the field.
2. Compare with the ledger: images pending are new labels; images already labelled with the very
   same annotations are a repeat (a re-export) and change nothing; already labelled with other
   annotations is a conflict, reported, never applied; withdrawn images (a data-deletion
   request, taudis.campaign.withdraw) are left out and named, the rest of the file goes on;
   images never sent to annotators or not in the pool are problems.
3. A file with problems or conflicts moves to incoming/rejected/ with ``<name>.report.json``
   beside it (written first). A good file's new labels become one immutable label part, listed
   by one ledger update (op id ``ingest:<sha256 of the file>``), and the file moves to
   incoming/done/. A file of repeats only moves to done/ too.
4. A file in incoming/corrections/ (after those in incoming/) is read the same way, but labels
   that differ from those already in replace them (op id ``correct:<sha256>``): the corrected
   images leave the parts that held them, each replaced by a part without them, in the same
   ledger update (taudis.campaign.labels.replace_labels). This is how a review's fixes, or a
   conflict that should win, get in: move the file from rejected/ to corrections/.

Every step is idempotent: a step killed anywhere leaves the file in incoming/ (or already in
done/ or rejected/), and a rerun finishes the job without applying anything twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import posixpath
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from pycocotools import mask as mask_utils

from taudis import storage
from taudis.campaign.labels import (
    add_part,
    annotations_by_image,
    labelled_annotations,
    part_document,
    part_without,
    replace_labels,
    sent_images,
    write_part,
)
from taudis.campaign.layout import Campaign
from taudis.data.labels import LabelProblem, bbox_problem, box_mask_problem, segmentation_problem, segmentation_rle
from taudis.storage.ledger import LabelPart, Ledger, LedgerError, read_ledger
from taudis.storage.uri import Versioned

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileOutcome:
    """What became of one incoming file."""

    file: str  # the file's name in incoming/
    status: str  # "ingested", "repeat", "rejected" or "conflict"
    moved_to: str
    images: list[int] = field(default_factory=list)  # pool ids of the new labels (ingested)
    repeats: list[int] = field(default_factory=list)  # already labelled, identical
    replaced: list[int] = field(default_factory=list)  # already labelled, relabelled by a correction
    empty: list[int] = field(default_factory=list)  # new or replaced labels with no instance
    withdrawn: list[int] = field(default_factory=list)  # withdrawn images whose labels were left out
    annotations: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolIndex:
    """The pool's images by id, by file name and by base name, and its categories by name."""

    by_id: dict[int, dict[str, Any]]
    by_name: dict[str, int]
    by_base: dict[str, list[int]]
    categories: dict[str, int]
    # Names two or more pool images share once compared (``a b.png`` and ``a%20b.png``: two files on
    # a disk, one name to a tool): a label naming one is refused, never put on the other.
    alike: dict[str, list[int]] = field(default_factory=dict)
    _renamed: dict[Callable[[str], str], dict[str, list[int]]] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, pool: Mapping[str, Any]) -> PoolIndex:
        by_id = {int(im["id"]): dict(im) for im in pool["images"]}
        named: dict[str, list[int]] = {}
        for image_id, im in by_id.items():
            named.setdefault(_normal(im["file_name"]), []).append(image_id)
        by_name = {name: ids[0] for name, ids in named.items()}
        by_base: dict[str, list[int]] = {}
        for name, image_id in by_name.items():
            by_base.setdefault(posixpath.basename(name), []).append(image_id)
        categories = {str(c["name"]): int(c["id"]) for c in pool["categories"]}
        return cls(by_id, by_name, by_base, categories, {name: ids for name, ids in named.items() if len(ids) > 1})

    def renamed(self, rule: Callable[[str], str]) -> dict[str, list[int]]:
        """The pool's images by their base names rewritten by a tool's upload ``rule`` (made once per rule)."""
        if rule not in self._renamed:
            index: dict[str, list[int]] = {}
            for base, image_ids in self.by_base.items():
                index.setdefault(rule(base), []).extend(image_ids)
            self._renamed[rule] = index
        return self._renamed[rule]


def _normal(ref: str) -> str:
    """A file name or reference as compared: URL-decoded, Unicode NFC (macOS writes "é" as "e" and
    a combining accent), forward slashes, no leading "./", and for an http(s) URL no query or
    fragment (a signed URL's signature names no file)."""
    text = str(ref)
    if text.lower().startswith(("http://", "https://")):  # in a bucket's object name, "?" and "#" are characters
        text = urlsplit(text)._replace(query="", fragment="").geturl()
    text = unicodedata.normalize("NFC", unquote(text)).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    return text


def match_image(
    ref: str, pool: PoolIndex, renamed: Callable[[str], str] | None = None, upload: str | None = None
) -> tuple[int | None, str]:
    """The pool image a tool's image reference names, or (None, why not).

    A file the tool renamed on upload (``renamed``, its rule: Label Studio's drops spaces and
    punctuation) is the one pool image whose base name the rule rewrites to the reference; two
    such images are ambiguous, none falls through to the file-name rules. Otherwise, tried in
    order: the pool file name itself; the longest pool file name that the reference
    ends with at a path boundary (a URI or a longer path to the same file); the one pool file
    name that ends with the reference at a path boundary (a tool that kept only the last
    folders). A reference whose base name is a pool image's but whose folders contradict the
    pool's (``dog/001.png`` against ``cat/001.png``) names another file: it is refused, never
    matched by its base name.
    """
    if upload is not None and renamed is not None:
        return _file_or_upload(ref, upload, pool, renamed)
    pool_id, why = _match(ref, pool, renamed)
    alike = pool.alike.get(_normal(pool.by_id[pool_id]["file_name"]), []) if pool_id is not None else []
    if alike:
        names = [pool.by_id[i]["file_name"] for i in alike]
        return None, (
            f"{ref!r} names all of pool images {names}: their file names differ only in URL encoding, Unicode "
            "form or slashes, which labelling tools do not keep apart: rename all but one"
        )
    return pool_id, why


def _file_or_upload(ref: str, upload: str, pool: PoolIndex, renamed: Callable[[str], str]) -> tuple[int | None, str]:
    """A reference that names a file, or an upload stored as ``upload``: the one pool image either
    reading names (the file by the file-name rules, the upload by the tool's rename rule only)."""
    pool_id, why = match_image(ref, pool)
    uploads = _uploads(_normal(upload), pool.renamed(renamed))
    if len(uploads) != 1 or uploads[0] == pool_id:
        return pool_id, why
    if pool_id is None:
        return uploads[0], ""
    names = [pool.by_id[i]["file_name"] for i in (pool_id, uploads[0])]
    return None, (
        f"{ref!r} is pool image {names[0]!r} by its file name, and {names[1]!r} if it is an upload the tool "
        "stored under an 8-digit prefix: rename one of them apart"
    )


def _match(ref: str, pool: PoolIndex, renamed: Callable[[str], str] | None) -> tuple[int | None, str]:
    text = _normal(ref)
    if renamed is not None and (uploads := _uploads(text, pool.renamed(renamed))):
        if len(uploads) == 1:
            return uploads[0], ""
        names = [pool.by_id[i]["file_name"] for i in uploads[:5]]
        return None, f"{ref!r} is the name the labelling tool gives to an upload of any of {names}: rename them apart"
    if text in pool.by_name:
        return pool.by_name[text], ""
    # The pool names the reference ends with at a path boundary: its own tails, looked up (a scan of
    # the pool per reference costs minutes a round on a pool of 200,000 images).
    suffixes = [text[i + 1 :] for i, c in enumerate(text) if c == "/" and text[i + 1 :] in pool.by_name]
    if suffixes:
        longest = max(len(name) for name in suffixes)
        best = [name for name in suffixes if len(name) == longest]
        if len(best) == 1:
            return pool.by_name[best[0]], ""
        return None, f"{ref!r} matches several pool images: {sorted(best)[:5]}"
    candidates = pool.by_base.get(posixpath.basename(text), [])
    tails = [i for i in candidates if _normal(pool.by_id[i]["file_name"]).endswith("/" + text)]
    if len(tails) == 1:
        return tails[0], ""
    names = sorted(pool.by_id[i]["file_name"] for i in (tails or candidates))[:5]
    if tails:
        return None, f"{ref!r} matches several pool images: {names}"
    if candidates:
        return None, (
            f"{ref!r} has the base name of pool image(s) {names} but other folders: another file, or a path "
            "the pool names otherwise (give the pool's file name)"
        )
    # Never matched by case (on a bucket "A.png" and "a.png" are two objects), but named: an export
    # made on a case-insensitive disk, or a tool that upper-cased extensions, is the usual cause.
    folded = text.casefold()
    alike = [
        i
        for i in pool.renamed(str.casefold).get(posixpath.basename(folded), [])
        if _same_file(_normal(pool.by_id[i]["file_name"]).casefold(), folded)
    ]
    if alike:
        names = sorted(pool.by_id[i]["file_name"] for i in alike)[:5]
        return None, f"no pool image has the file name {ref!r}; pool image(s) {names} differ from it only in case"
    return None, f"no pool image has the file name {ref!r}"


# Django (Label Studio's storage) keeps an upload's stored name within its FileField's 100
# characters: a longer name loses the end of its stem and gains "_" and 7 random characters.
# What is left after "upload/<project id>/<8 hex>-" is then 100 - 18 - (digits - 1) long.
TRUNCATED_UPLOAD = re.compile(r"(?P<stem>.+)_[A-Za-z0-9]{7}(?P<ext>\.[^./]*)?")
TRUNCATED_LENGTHS = range(100 - 18 - 9, 100 - 18 + 1)  # project ids of 1 to 10 digits


def _uploads(name: str, renamed: Mapping[str, list[int]]) -> list[int]:
    """The pool images an upload stored as ``name`` may be: its renamed base name, or failing that
    the names the storage could have cut to it."""
    if name in renamed:
        return sorted(renamed[name])
    cut = TRUNCATED_UPLOAD.fullmatch(name)
    if cut is None or len(name) not in TRUNCATED_LENGTHS:
        return []
    stem, ext = cut["stem"], cut["ext"] or ""
    return sorted(
        i
        for full, ids in renamed.items()
        if full.startswith(stem) and full.endswith(ext) and len(full) > len(stem) + len(ext)
        for i in ids
    )


def normal_name(ref: str) -> str:
    """A file name or reference as ingest compares them (:func:`_normal`)."""
    return _normal(ref)


def same_file_name(a: str, b: str) -> bool:
    """Whether two file names or references name one file by ingest's rules (:func:`_same_file`)."""
    return _same_file(_normal(a), _normal(b))


def _same_file(pool_name: str, ref: str) -> bool:
    """Whether a reference names a pool file by the rules of :func:`match_image`: equal, or one of them
    a longer path to the other."""
    return pool_name == ref or ref.endswith("/" + pool_name) or pool_name.endswith("/" + ref)


@dataclass
class _Resolved:
    images: dict[int, int] = field(default_factory=dict)  # position in ToolLabels.images -> pool id
    annotations: list[dict[str, Any]] = field(default_factory=list)  # COCO, pool ids, campaign category ids
    problems: list[LabelProblem] = field(default_factory=list)


def resolve(labels: Any, pool: PoolIndex) -> _Resolved:
    """A tool's labels in pool terms, with every problem found (see the module docstring, step 1)."""
    out = _Resolved(problems=list(labels.problems))
    claimed: dict[int, str] = {}

    def problem(record: str, field_name: str, message: str) -> None:
        out.problems.append(LabelProblem(labels.uri, record, field_name, message))

    if not labels.images and not labels.problems:
        problem("document", "images", "the file lists no image: nothing to ingest (an empty export?)")
    for position, image in enumerate(labels.images):  # annotations name images by position in this list
        pool_id, why = match_image(image.ref, pool, image.renamed, image.upload)
        if pool_id is None:
            problem(image.record, "file_name", why)
            continue
        said = image.pool_id if image.pool_id is not None else (image.tool_id if image.ids_are_pool_ids else None)
        if said is not None and said != pool_id:
            other = pool.by_id.get(said, {}).get("file_name")
            named = f"is pool image {other!r}" if other is not None else "is no pool image's"
            problem(
                image.record,
                "id",
                f"id {said} {named}, but the file name {image.ref!r} is pool image {pool_id} "
                f"({pool.by_id[pool_id]['file_name']!r}): the id and the file name disagree (a plain COCO file "
                "gives the pool's ids; a tool's own numbering, Roboflow's or labelme2coco's, does not)",
            )
            continue
        known = pool.by_id[pool_id]
        for key, value in (("height", image.height), ("width", image.width)):
            if value is not None and key in known and value != int(known[key]):
                problem(image.record, key, f"{value} here but {known[key]} in the pool ({known['file_name']!r})")
        if pool_id in claimed:
            problem(image.record, "file_name", f"pool image {pool_id} is labelled twice (also {claimed[pool_id]})")
        claimed[pool_id] = image.record
        out.images[position] = pool_id
    _resolve_annotations(labels, pool, out, problem)
    return out


def _resolve_annotations(labels: Any, pool: PoolIndex, out: _Resolved, problem: Any) -> None:
    seen: dict[tuple[int, int, bytes], str] = {}
    for ann in labels.annotations:
        pool_id = out.images.get(ann.image)
        if pool_id is None:
            continue  # its image is already reported
        category = pool.categories.get(ann.category)
        if category is None:
            problem(ann.record, "category", _unknown_category(ann.category, pool.categories))
            continue
        height, width = int(pool.by_id[pool_id]["height"]), int(pool.by_id[pool_id]["width"])
        bad = segmentation_problem(ann.segmentation, height, width)
        if bad is not None:
            problem(ann.record, *bad)
            continue
        if ann.bbox is not None and (message := bbox_problem(ann.bbox, height, width)) is not None:
            problem(ann.record, "bbox", message)
            continue
        rle = segmentation_rle(ann.segmentation, height, width)
        if int(mask_utils.area(rle)) == 0:
            problem(ann.record, "segmentation", "the mask is empty (no pixel inside the image)")
            continue
        if ann.bbox is not None and (message := box_mask_problem(ann.bbox, rle)) is not None:
            problem(ann.record, "bbox", message)
            continue
        key = (pool_id, category, bytes(rle["counts"]))
        if key in seen:
            problem(ann.record, "segmentation", f"duplicate: same image, category and mask as {seen[key]}")
            continue
        seen[key] = ann.record
        out.annotations.append(
            {
                "image_id": pool_id,
                "category_id": category,
                "segmentation": ann.segmentation,
                "bbox": ann.bbox,
                "iscrowd": ann.iscrowd,
            }
        )


# ------------------------------------------------------------------------------------ the seed


def seed_in_pool_terms(seed: Mapping[str, Any], pool: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The initial labelled set (validated COCO) in the pool's ids and category ids.

    The seed is matched as an annotators' file is: images by file name (:func:`match_image`),
    categories by name, so a seed that numbers either its own way (a tool's export, a file
    renumbered 0..N-1) labels the right pool images with the right classes. A seed image the pool
    file does not list joins the campaign under its own id, unless that id is another pool image's.

    Raises:
        taudis.data.coco.CocoFormatError: naming the seed file, the record and the field.
    """
    from taudis.data.coco import CocoFormatError

    index = PoolIndex.of(pool)
    category_of = {}
    for cat in seed["categories"]:
        if str(cat["name"]) not in index.categories:
            message = _unknown_category(str(cat["name"]), index.categories) + " (categories match the pool's by name)"
            raise CocoFormatError(source, message, record=f"category {cat['id']}", field="name")
        category_of[int(cat["id"])] = index.categories[str(cat["name"])]
    image_of: dict[int, int] = {}
    taken: set[int] = set()
    images = []
    for image in seed["images"]:
        own, record = int(image["id"]), f"image {image['id']} ({image['file_name']!r})"
        pool_id, why = match_image(str(image["file_name"]), index)
        if pool_id is None and own in index.by_id:
            other = index.by_id[own]["file_name"]
            message = (
                f"id {own} is pool image {other!r}, another file ({why}): give the pool's id and file name, "
                "or an id outside the pool's for an image the pool file does not list"
            )
            raise CocoFormatError(source, message, record=record, field="id")
        target = own if pool_id is None else pool_id
        if target in taken:
            raise CocoFormatError(source, f"pool image {target} is listed twice", record=record, field="file_name")
        taken.add(target)
        known = index.by_id.get(target, image)
        for key in ("height", "width"):
            if int(image[key]) != int(known[key]):
                message = f"{image[key]} here but {known[key]} in the pool file"
                raise CocoFormatError(source, message, record=record, field=key)
        image_of[own] = target
        images.append({**dict(known), "id": target})
    annotations = [
        {**ann, "image_id": image_of[int(ann["image_id"])], "category_id": category_of[int(ann["category_id"])]}
        for ann in seed.get("annotations", [])
    ]
    return {"images": images, "annotations": annotations, "categories": list(pool["categories"])}


# ------------------------------------------------------------------------------------ one file


RACE_RETRIES = 3  # times a file is classified again after another writer changed the ledger under it


def _unknown_category(name: str, known: Mapping[str, int]) -> str:
    """Why a category is refused; a name that differs from a campaign's only in case or spacing is
    named, since a tool's label typed "Building " for "building" is the usual cause. It is still
    refused: the labels' names are the campaign's contract, and a guess could merge two classes."""
    message = f"unknown category {name!r} (the campaign's: {sorted(known)})"
    loose = " ".join(str(name).split()).casefold()
    alike = sorted(k for k in known if " ".join(k.split()).casefold() == loose)
    if alike:
        names = " or ".join(repr(k) for k in alike)
        message += f"; it differs from {names} only in case or spacing: rename the label in the tool"
    return message


def ingest_file(
    campaign: Campaign,
    uri: str,
    pool: Mapping[str, Any],
    index: PoolIndex | None = None,
    *,
    correction: bool = False,
    attempt: int = 0,
    record: Recorder | None = None,
) -> FileOutcome:
    """Ingest or quarantine one incoming file (module docstring); returns what became of it.

    ``correction`` (a file from incoming/corrections/): labels that differ from those already in
    replace them instead of being a conflict. ``attempt`` counts the classifications redone
    because the ledger changed under this one. ``record`` is told the outcome before the file
    moves (see :data:`Recorder`).
    """
    from taudis.labeling.read import read_label_bytes

    index = index or PoolIndex.of(pool)
    # One read: the op id, the labels and the move are all of this version, whatever is uploaded
    # under the same name meanwhile (that version stays in incoming/ for the next ingest).
    data = storage.read_versioned(uri)
    if data is None:
        raise storage.NotFoundError(f"{uri}: not found")
    op_id = f"{'correct' if correction else 'ingest'}:{hashlib.sha256(data.data).hexdigest()[:16]}"
    ledger = read_ledger(campaign.ledger)
    landed = next((p for p in ledger.parts if _applies(p.op_id, op_id)), None)
    if landed is not None:  # ingested by an earlier attempt: only the move is left
        return _finish(campaign, uri, data, record, "ingested", images=sorted(landed.images))
    if ledger.has_op(op_id):
        # The same file again after its labels were replaced (a correction put back after a later
        # one): an update under the old op id would be skipped as done, so this one gets its own.
        op_id = f"{op_id}@{ledger.revision}"
    labels = read_label_bytes(data.data, uri)
    resolved = resolve(labels, index)
    new, repeats, changed, withdrawn = _classify(campaign, ledger, resolved, index, labels.uri)
    if withdrawn:
        log.warning("incoming %s: labels of withdrawn images %s left out", campaign.incoming_name(uri), withdrawn[:20])
    if resolved.problems:
        return _quarantine(campaign, uri, data, record, "rejected", [*map(str, resolved.problems), *changed.values()])
    if changed and not correction:
        return _quarantine(campaign, uri, data, record, "conflict", [*changed.values(), CORRECTION_HINT])
    chosen = set(new) | set(changed)
    if not chosen:
        return _finish(campaign, uri, data, record, "repeat", repeats=repeats, withdrawn=withdrawn)
    images = [index.by_id[i] for i in sorted(chosen)]
    annotations = [a for a in resolved.annotations if a["image_id"] in chosen]
    source = campaign.incoming_name(uri)
    part = write_part(
        campaign,
        part_document(images, annotations, pool["categories"], op_id=op_id, source=source),
        op_id=op_id,
        source=source,
    )
    try:
        remainders: dict[str, LabelPart | None] = {}
        if changed:
            holders = [p for p in ledger.parts if p.images & set(changed)]
            remainders = {p.op_id: part_without(campaign, p, changed, op_id=f"{p.op_id}~{op_id}") for p in holders}
            replace_labels(campaign, part, remainders)
        else:
            add_part(campaign, part)
    except LedgerError as err:
        if err.field not in ("pending", "parts") or attempt >= RACE_RETRIES:
            raise
        _drop_unlistable(campaign, [part, *(remainders.values() if changed else ())])
        # another file labelled or corrected some of them meanwhile, or they were withdrawn: classify again
        return ingest_file(campaign, uri, pool, index, correction=correction, attempt=attempt + 1, record=record)
    empty = sorted(chosen - {a["image_id"] for a in annotations})
    if empty:
        log.warning("incoming %s: images %s labelled with no instance", source, empty[:20])
    return _finish(
        campaign, uri, data, record, "ingested", images=sorted(new), repeats=repeats, replaced=sorted(changed),
        empty=empty, withdrawn=withdrawn, annotations=len(annotations),
    )  # fmt: skip


def _drop_unlistable(campaign: Campaign, written: Sequence[LabelPart | None]) -> None:
    """Delete the label files just written that hold an image withdrawn meanwhile: no update can list
    them any more (taudis.campaign.withdraw), and they must not keep its labels."""
    withdrawn = read_ledger(campaign.ledger).withdrawn
    for part in written:
        if part is not None and part.images & withdrawn:
            storage.delete(campaign.file(part.name))


def _applies(part_op: str, op_id: str) -> bool:
    """Whether a current part is this file's own: its op id, or a re-application's ``<op id>@<revision>``
    (a remainder left when another file replaced some of its images is ``...~<other op>``)."""
    return part_op == op_id or (part_op.startswith(op_id + "@") and "~" not in part_op)


CORRECTION_HINT = (
    "to replace the labels already in with this file's (a fix after review), move the file to incoming/corrections/"
)


def _classify(
    campaign: Campaign, ledger: Ledger, resolved: _Resolved, pool: PoolIndex, file: str
) -> tuple[list[int], list[int], dict[int, str], list[int]]:
    """(new pending images, identical repeats, labelled images whose labels differ -> why, withdrawn
    images); other states become problems."""
    ids = sorted(set(resolved.images.values()))
    labelled = [i for i in ids if i in ledger.labelled]
    mine = annotations_by_image(
        {
            "images": [pool.by_id[i] for i in labelled],
            "annotations": [a for a in resolved.annotations if a["image_id"] in set(labelled)],
        }
    )
    before = labelled_annotations(campaign, ledger, labelled)
    new, repeats, changed, withdrawn = [], [], {}, []
    for image_id in ids:
        name = pool.by_id[image_id]["file_name"]
        if image_id in ledger.withdrawn:
            withdrawn.append(image_id)
        elif image_id in ledger.pending:
            new.append(image_id)
        elif image_id in ledger.labelled:
            if mine.get(image_id, []) == before.get(image_id, []):
                repeats.append(image_id)
            else:
                changed[image_id] = (
                    f"{file}: image {image_id} ({name!r}), field 'annotations': already labelled with "
                    f"{len(before.get(image_id, []))} annotations, this file gives {len(mine.get(image_id, []))} "
                    "different ones (a conflict: nothing was changed)"
                )
        else:
            state = "not in the campaign's pool" if image_id not in ledger.pool else "never sent to annotators"
            resolved.problems.append(
                LabelProblem(
                    file, f"image {image_id} ({name!r})", "file_name", f"this image is {state}: nothing to label"
                )
            )
    return new, repeats, changed, withdrawn


# Told each file's outcome before the file moves: a step killed after the move cannot tell on a
# retry what the file was (it is no longer waiting), so the round's facts are written first; a
# retry that finds the file still waiting tells the same outcome again, merged as one.
Recorder = Callable[[FileOutcome], None]


def _finish(
    campaign: Campaign, uri: str, data: Versioned, record: Recorder | None, status: str, **facts: Any
) -> FileOutcome:
    target = _free_name(campaign.done, uri, data.data)
    outcome = FileOutcome(campaign.incoming_name(uri), status, target, **facts)
    if record is not None:
        record(outcome)
    _move(campaign, uri, target, data)
    log.info("incoming %s: %s -> %s", campaign.incoming_name(uri), status, target)
    return outcome


def _move(campaign: Campaign, uri: str, target: str, data: Versioned) -> None:
    """The version handled to ``target``; a newer one uploaded under the name meanwhile stays."""
    if not storage.move_if_unchanged(uri, target, data):
        log.warning(
            "incoming %s: replaced while it was being ingested; the version read is in %s, the new one "
            "stays for the next ingest", campaign.incoming_name(uri), target,
        )  # fmt: skip


def _quarantine(
    campaign: Campaign, uri: str, data: Versioned, record: Recorder | None, status: str, problems: Sequence[str]
) -> FileOutcome:
    target = _free_name(campaign.rejected, uri, data.data)
    report = {
        "file": campaign.incoming_name(uri),
        "status": status,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "problems": list(problems),
    }
    storage.write_json(target + ".report.json", report)  # first: a file in rejected/ always has its report
    outcome = FileOutcome(campaign.incoming_name(uri), status, target, problems=list(problems))
    if record is not None:
        record(outcome)
    _move(campaign, uri, target, data)
    log.warning("incoming %s: %s (%d problems) -> %s", campaign.incoming_name(uri), status, len(problems), target)
    return outcome


def _free_name(folder: str, uri: str, data: bytes) -> str:
    """``folder/<name>``, or ``folder/<stem>.<sha8><ext>`` if another file of that name is there."""
    name = posixpath.basename(uri)
    target = storage.join(folder, name)
    if not storage.exists(target) or storage.read_bytes(target) == data:
        return target
    stem, ext = posixpath.splitext(name)
    return storage.join(folder, f"{stem}.{hashlib.sha256(data).hexdigest()[:8]}{ext}")


# ---------------------------------------------------------------------------------- every file


def ingest_incoming(
    campaign_uri: str, pool_annotations: str | Mapping[str, Any], record: Recorder | None = None
) -> list[FileOutcome]:
    """Ingest or quarantine every file waiting in ``<campaign>/incoming`` (sorted by name).

    Args:
        campaign_uri: the campaign's folder.
        pool_annotations: the pool's COCO (a URI, or the parsed document).
        record: told each file's outcome before the file moves (:data:`Recorder`).

    Returns:
        One outcome per file, in the order handled.
    """
    campaign = Campaign(campaign_uri)
    pool = storage.read_json(pool_annotations) if isinstance(pool_annotations, str) else pool_annotations
    pool = with_sent_images(campaign, pool)
    index = PoolIndex.of(pool)
    waiting = [(uri, False) for uri in campaign.incoming_files()] + [(uri, True) for uri in campaign.correction_files()]
    outcomes = []
    for uri, correction in waiting:
        try:
            outcomes.append(ingest_file(campaign, uri, pool, index, correction=correction, record=record))
        except storage.NotFoundError:
            if storage.exists(uri):
                raise
            # Another ingest (a second run, a hand-run ingest) took the file meanwhile and answers for it.
            log.info("incoming %s: taken by another ingest meanwhile", campaign.incoming_name(uri))
    return outcomes


def with_sent_images(campaign: Campaign, pool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pool file plus the pending and withdrawn images it no longer lists, as their tasks named them.

    A pending image stays in the campaign whatever the pool file says (taudis.campaign.pool), so
    the annotators' work on it still lands on it; a withdrawn one is recognised, so that its labels
    are left out by name. Neither sinks the rest of its file.
    """
    from taudis.campaign.pool import without_withdrawn
    from taudis.campaign.withdraw import withdrawn_images

    ledger = read_ledger(campaign.ledger)
    withdrawn = withdrawn_images(campaign, ledger)
    pool = without_withdrawn(pool, withdrawn)[0]  # a withdrawn file put back under a new id is still withdrawn
    listed = {int(im["id"]) for im in pool["images"]}
    known = sent_images(campaign, ledger, ledger.pending) | withdrawn
    dropped = [im for i, im in sorted(known.items()) if i not in listed]
    return {**pool, "images": [*pool["images"], *dropped]}


def summarize(outcomes: Sequence[FileOutcome]) -> dict[str, list[Any]]:
    """The round record's ``ingest`` facts: file names by status; under ``empty`` each file that
    labelled images with no instance, and under ``withdrawn`` each that held labels of withdrawn
    images (left out), with those images.

    An image a file gives without annotations is labelled empty, for good: that is how a tool
    exports "nothing here", and also how some export images nobody finished (CVAT's untouched
    frames), which no file tells apart. The round's report names them so someone can look.
    """
    kinds = ("ingested", "repeat", "rejected", "conflict", "empty", "withdrawn")
    summary: dict[str, list[Any]] = {kind: [] for kind in kinds}
    for outcome in outcomes:
        summary[outcome.status].append(outcome.file)
        for kind, images in (("empty", outcome.empty), ("withdrawn", outcome.withdrawn)):
            if images:
                shown = ", ".join(map(str, images[:20])) + (", ..." if len(images) > 20 else "")
                summary[kind].append(f"{outcome.file} (images {shown})")
    return summary
