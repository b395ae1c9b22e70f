"""``taudis ledger``: create a campaign ledger, or show its whole state."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from taudis.storage import uri as storage
from taudis.storage.ledger import LedgerError, create_ledger, read_ledger


def _ids(text: str | None) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()] if text else []


def _create(args: argparse.Namespace) -> int:
    pool = _ids(args.pool_ids)
    if args.pool_annotations:
        pool += [int(im["id"]) for im in storage.read_json(args.pool_annotations)["images"]]
    ledger = create_ledger(args.uri, pool, campaign=args.campaign or "", exist_ok=args.exist_ok)
    print(f"ledger {args.uri}: {len(ledger.pool)} images")
    return 0


def _show(args: argparse.Namespace) -> int:
    ledger = read_ledger(args.uri)
    if args.json:
        print(json.dumps(ledger.to_json(), indent=1))
        return 0
    print(f"campaign {ledger.campaign} (revision {ledger.revision}, updated {ledger.updated})")
    print("  " + "  ".join(f"{k} {v}" for k, v in ledger.counts().items()))
    for part in ledger.parts:
        print(f"  labels {part.name}: {len(part.images)} images from {part.source or part.op_id}")
    for record in ledger.rounds:
        print(f"  round {record['round']}: {record['state']}, {len(record.get('images') or [])} images chosen")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``taudis ledger create|show``."""
    parser = argparse.ArgumentParser(prog="taudis ledger", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a campaign ledger (a round creates it on first use)")
    create.add_argument("uri", help="ledger URI (gs://bucket/campaign/ledger.json or a local path)")
    create.add_argument("--pool-ids", help="comma-separated pool image ids")
    create.add_argument("--pool-annotations", help="COCO JSON whose images are the pool")
    create.add_argument("--campaign", help="campaign name (default: the ledger's folder name)")
    create.add_argument("--exist-ok", action="store_true", help="reuse an existing ledger")
    create.set_defaults(run=_create)
    show = commands.add_parser("show", help="print a ledger's summary")
    show.add_argument("uri")
    show.add_argument("--json", action="store_true", help="print the whole state as one document")
    show.set_defaults(run=_show)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except (LedgerError, storage.StorageError, KeyError, ValueError) as err:
        print(f"taudis ledger: {err}", file=sys.stderr)
        return 1
