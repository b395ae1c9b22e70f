"""Benchmark: a campaign's label parts read for labelled.json, one after another against at once.

Every round reads every label part the ledger lists (the ingest step builds labelled.json from
them). A campaign of weekly rounds with 50 annotators' files a week holds about 2,600 parts after
a year. This writes N small parts to storage and times, in one run on the same objects, the
reads a user's loop would make (``storage.read_bytes`` per part) against ``storage.read_many``
(what taudis.campaign.labels does), and ``labelled_dataset`` itself, which parses them too.

    python bench/part_reads.py [--parts 100 1000] [--storage gcs|local] [--latency-ms 0]

``--storage gcs`` starts the fake-gcs-server the tests use, on the loopback: each read costs
milliseconds there and tens of them on real GCS, so ``--latency-ms`` adds a sleep to every read
to stand for that (the ratio then shows what the parallel reads save on a real bucket).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench_storage import storage_root

ROOT = Path(__file__).resolve().parents[1]


def build(root: str, parts: int) -> Any:
    """A campaign whose ledger lists ``parts`` label parts of two images each."""
    import dataclasses

    from taudis import storage
    from taudis.campaign.labels import part_document, write_part
    from taudis.campaign.layout import Campaign
    from taudis.storage import ledger

    campaign = Campaign(storage.join(root, f"c{parts}"))
    categories = [{"id": 1, "name": "cell"}]
    written = []
    for i in range(parts):
        ids = (2 * i + 1, 2 * i + 2)
        images = [{"id": j, "file_name": f"img{j:06d}.png", "height": 64, "width": 64} for j in ids]
        annotations = [
            {"id": k + 1, "image_id": j, "category_id": 1, "segmentation": [[4, 4, 20, 4, 20, 20]],
             "area": 128.0, "bbox": [4, 4, 16, 16], "iscrowd": 0}
            for k, j in enumerate(ids)
        ]  # fmt: skip
        op_id = f"ingest:{i:016x}"
        document = part_document(images, annotations, categories, op_id=op_id, source=f"file-{i}.json")
        written.append(write_part(campaign, document, op_id=op_id, source=f"file-{i}.json"))
    ledger.create_ledger(campaign.ledger, range(1, 2 * parts + 1))
    ledger.update_ledger(campaign.ledger, "parts", lambda led: dataclasses.replace(led, parts=tuple(written)))
    return campaign


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(campaign: Any) -> dict[str, float]:
    from taudis import storage
    from taudis.campaign.labels import labelled_dataset
    from taudis.storage.ledger import read_ledger

    uris = [campaign.file(part.name) for part in read_ledger(campaign.ledger).parts]
    one_by_one = timed(lambda: [storage.read_bytes(uri) for uri in uris])
    at_once = timed(lambda: storage.read_many(uris))
    dataset = timed(lambda: labelled_dataset(campaign))
    return {"parts": len(uris), "one_by_one_s": one_by_one, "read_many_s": at_once, "labelled_dataset_s": dataset,
            "ratio": one_by_one / at_once if at_once else float("nan")}  # fmt: skip


def with_latency(seconds: float) -> None:
    """Every storage read waits ``seconds`` first, as a round trip to a real bucket does."""
    import taudis.storage
    from taudis.storage import uri

    read = uri.read_bytes

    def slow(target: Any) -> bytes:
        time.sleep(seconds)
        return read(target)

    uri.read_bytes = taudis.storage.read_bytes = slow  # type: ignore[assignment]  # both names a caller reads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--storage", choices=("local", "gcs"), default="gcs")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every read (a real bucket's round trip)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    args = parser.parse_args(argv)
    results = []
    with storage_root(args.storage, "part-reads-bench") as root:
        campaigns = [build(root, n) for n in args.parts]
        if args.latency_ms:
            with_latency(args.latency_ms / 1000)
        for campaign in campaigns:
            results.append({**measure(campaign), "storage": args.storage, "latency_ms": args.latency_ms})
            print(json.dumps(results[-1]))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
