"""``taudis ledger``: create a campaign ledger, show it, or record a round's selection in it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from taudis.storage import uri as storage
from taudis.storage.ledger import LedgerError, create_ledger, read_ledger, record_round


def _ids(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()] if text else []


def _create(args: argparse.Namespace) -> int:
    pool = _ids(args.pool_ids)
    if args.pool_annotations:
        pool += [int(im["id"]) for im in storage.read_json(args.pool_annotations)["images"]]
    seed = _ids(args.labelled)
    if args.labelled_annotations:
        seed += [int(im["id"]) for im in storage.read_json(args.labelled_annotations)["images"]]
    ledger = create_ledger(args.uri, pool, seed, campaign=args.campaign or "", exist_ok=args.exist_ok)
    print(f"ledger {args.uri}: {len(ledger.pool)} images, {len(ledger.labelled)} labelled")
    return 0


def _show(args: argparse.Namespace) -> int:
    ledger = read_ledger(args.uri)
    if args.json:
        print(json.dumps(ledger.to_json(), indent=1))
        return 0
    print(f"campaign {ledger.campaign} (revision {ledger.revision}, updated {ledger.updated})")
    print(f"  pool {len(ledger.pool)}  labelled {len(ledger.labelled)}  pending {len(ledger.pending)}")
    print(f"  unlabelled {len(ledger.unlabelled)}")
    for record in ledger.rounds:
        metrics = ", ".join(f"{k}={v}" for k, v in record.get("metrics", {}).items())
        print(f"  round {record['round']}: {record['strategy']}, {len(record['images'])} images {metrics}".rstrip())
    return 0


def _record_round(args: argparse.Namespace) -> int:
    selection = storage.read_json(args.selection)
    images = [int(item["image_id"]) for item in selection["images"]]
    ledger = record_round(
        args.uri,
        args.round,
        str(selection.get("strategy", "")),
        dict(selection.get("params", {})),
        images,
        args.model_uri or "",
        op_id=args.op_id,
    )
    print(f"ledger {args.uri}: round {args.round} recorded, {len(ledger.pending)} images pending")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``taudis ledger create|show|record-round``."""
    parser = argparse.ArgumentParser(prog="taudis ledger", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a campaign ledger")
    create.add_argument("uri", help="ledger URI (gs://bucket/campaign/ledger.json or a local path)")
    create.add_argument("--pool-ids", help="comma-separated pool image ids")
    create.add_argument("--pool-annotations", help="COCO JSON whose images are the pool")
    create.add_argument("--labelled", help="comma-separated image ids already labelled (the seed)")
    create.add_argument("--labelled-annotations", help="COCO JSON whose images are already labelled")
    create.add_argument("--campaign", help="campaign name (default: the ledger's folder name)")
    create.add_argument("--exist-ok", action="store_true", help="reuse an existing ledger with the same pool")
    create.set_defaults(run=_create)
    show = commands.add_parser("show", help="print a ledger's summary")
    show.add_argument("uri")
    show.add_argument("--json", action="store_true", help="print the whole document")
    show.set_defaults(run=_show)
    record = commands.add_parser("record-round", help="mark a selection's images pending")
    record.add_argument("uri")
    record.add_argument("--selection", required=True, help="selection JSON (taudis.selection)")
    record.add_argument("--round", type=int, required=True)
    record.add_argument("--model-uri", help="the model that made the selection")
    record.add_argument("--op-id", help="idempotence key (default record_round:<round>)")
    record.set_defaults(run=_record_round)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except (LedgerError, storage.StorageError, KeyError, ValueError) as err:
        print(f"taudis ledger: {err}", file=sys.stderr)
        return 1
