"""`taudis campaign`: a campaign's rounds, its invariants, and ingesting the annotators' files by hand.

taudis campaign show gs://bucket/campaigns/streets
taudis campaign check gs://bucket/campaigns/streets
taudis campaign ingest gs://bucket/campaigns/streets --pool gs://bucket/pool.json
taudis campaign release gs://bucket/campaigns/streets
taudis campaign withdraw gs://bucket/campaigns/streets --pool gs://bucket/pool.json 1042 1043
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from taudis import storage
from taudis.campaign.layout import Campaign
from taudis.data.coco import CocoFormatError
from taudis.data.labels import LabelValidationError
from taudis.storage.ledger import LedgerError, read_ledger


def _show(args: argparse.Namespace) -> int:
    ledger = read_ledger(Campaign(args.campaign).ledger)
    counts = ledger.counts()
    print(f"campaign {ledger.campaign} (ledger revision {ledger.revision}, updated {ledger.updated})")
    print("  " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    for record in ledger.rounds:
        metrics = record.get("metrics") or {}
        ap = f", mask AP {metrics['mask_ap']:.1f} at {metrics['labelled_images']} labelled" if metrics else ""
        chosen = f", {len(record['images'])} images chosen ({record.get('strategy')})" if record.get("images") else ""
        print(f"  round {record['round']}: {record['state']} by run {record.get('run')}{chosen}{ap}")
        intake = record.get("ingest") or {}
        for status in ("rejected", "conflict"):
            if intake.get(status):
                print(f"    {status} files: {', '.join(intake[status])} (see incoming/rejected/)")
        listed = (record.get("pool") or {}).get("withdrawn_listed")
        if listed:
            print(f"    the pool file still lists {listed} withdrawn images (kept out; delete them from it)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from taudis.campaign.invariants import check_campaign

    violations = check_campaign(args.campaign)
    for violation in violations:
        print(f"violation: {violation}")
    print(f"{args.campaign}: {len(violations)} invariant violation(s)")
    return 1 if violations else 0


def _ingest(args: argparse.Namespace) -> int:
    from taudis.campaign.ingest import ingest_incoming
    from taudis.campaign.labels import known_file_names, publish_labelled
    from taudis.campaign.pool import check_pool_names, load_pool

    campaign = Campaign(args.campaign)
    pool = load_pool(args.pool)
    check_pool_names(pool, known_file_names(campaign), args.pool)
    outcomes = ingest_incoming(args.campaign, pool)
    for outcome in outcomes:
        print(json.dumps(outcome.to_json()))
    publish_labelled(campaign)  # the view a round's ingest writes too
    return 1 if any(o.status in ("rejected", "conflict") for o in outcomes) else 0


def _release(args: argparse.Namespace) -> int:
    from taudis.campaign.rounds import RELEASED, release_claim

    released = release_claim(Campaign(args.campaign))
    if released is None:
        print(f"{args.campaign}: no round is claimed; nothing to release")
    else:
        run = str(released.get("run")).removesuffix(RELEASED)
        print(f"{args.campaign}: round {released['round']} released from run {run!r}; the next run takes it over")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from taudis.campaign.pool import load_pool
    from taudis.campaign.withdraw import withdraw_images

    result = withdraw_images(Campaign(args.campaign), args.image_ids, load_pool(args.pool))
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return 0
    for what in ("labelled", "pending", "unlabelled"):
        if getattr(result, what):
            print(f"withdrawn, were {what}: {' '.join(map(str, getattr(result, what)))}")
    if result.already:
        print(f"withdrawn before: {' '.join(map(str, result.already))}")
    for name in result.label_files:
        print(f"their labels taken out of {name}")
    print(f"recorded in {result.record}; still showing them, for you to keep or delete:")
    for place in result.elsewhere:
        print(f"  {place}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taudis campaign", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="the campaign's counts and rounds")
    show.add_argument("campaign", help="the campaign's folder (gs:// or local)")
    show.set_defaults(run=_show)
    check = commands.add_parser("check", help="check the campaign's invariants (exit 1 on a violation)")
    check.add_argument("campaign")
    check.set_defaults(run=_check)
    ingest = commands.add_parser(
        "ingest",
        help="ingest or quarantine every file in <campaign>/incoming, then apply incoming/corrections "
        "(a round does this first)",
    )
    ingest.add_argument("campaign")
    ingest.add_argument("--pool", required=True, help="the pool's COCO JSON")
    ingest.set_defaults(run=_ingest)
    release = commands.add_parser(
        "release",
        help="end the claim of a run known to be dead, so that the next run takes its round over now "
        "(a live run so released is fenced off)",
    )
    release.add_argument("campaign")
    release.set_defaults(run=_release)
    withdraw = commands.add_parser(
        "withdraw",
        help="take images out of the campaign for good (a data-deletion request): out of the pool and "
        "the labels, never chosen or trained on again; names what else still shows them",
    )
    withdraw.add_argument("campaign")
    withdraw.add_argument("--pool", required=True, help="the pool's COCO JSON (names the images)")
    withdraw.add_argument("image_ids", nargs="+", type=int, metavar="IMAGE_ID", help="pool image ids")
    withdraw.add_argument("--json", action="store_true", help="print what was done as JSON")
    withdraw.set_defaults(run=_withdraw)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.run(args))
    except (LedgerError, LabelValidationError, CocoFormatError, storage.StorageError) as err:
        print(f"taudis campaign: {err}", file=sys.stderr)
        return 1
