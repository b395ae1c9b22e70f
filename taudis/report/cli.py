"""`taudis report ...`: write a round's Markdown and HTML, a learning curve, or a campaign page from files.

History files are JSON lists of ``{"strategy", "round", "labelled_images", "mask_ap", "box_ap"}``
(AP null when not evaluated).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taudis.data.instances import InstanceTableError
from taudis.report.curves import learning_curve_png
from taudis.report.html import RoundSection, campaign_html, round_html
from taudis.report.inputs import ReportInputError, load_selection, validate_history
from taudis.report.markdown import round_markdown


def _read_history(path: str | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ReportInputError(path, "no such file") from err
    except json.JSONDecodeError as err:
        raise ReportInputError(path, f"not valid JSON: {err}") from err
    return validate_history(data, path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taudis report", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)

    one = sub.add_parser("round", help="one round's HTML page (and optionally its Markdown summary)")
    one.add_argument("--selection", required=True, help="the round's selection JSON")
    one.add_argument("--instances", required=True, help="directory of the pool's instance shards")
    one.add_argument("--annotations", help="COCO JSON listing the pool's images")
    one.add_argument("--image-root", help="directory the COCO file names are relative to")
    one.add_argument("--history", help="learning-curve history JSON (a list of round records)")
    one.add_argument("--out", required=True, help="HTML file to write")
    one.add_argument("--markdown", help="also write the Markdown summary here")
    one.add_argument("--round", type=int, default=0, help="the round's number")
    one.add_argument("--labelled-images", type=int, default=0, help="images labelled for this round's model")
    one.add_argument("--mask-ap", type=float, help="mask AP (0-100) of this round's model")
    one.add_argument("--box-ap", type=float, help="box AP (0-100) of this round's model")
    one.add_argument("--max-images", type=int, default=48, help="cap on thumbnails")

    curve = sub.add_parser("curve", help="learning-curve PNG")
    curve.add_argument("--history", required=True)
    curve.add_argument("--out", required=True)

    campaign = sub.add_parser("campaign", help="campaign page comparing strategies")
    campaign.add_argument("--history", required=True)
    campaign.add_argument("--out", required=True)
    campaign.add_argument(
        "--latest",
        nargs=3,
        action="append",
        default=[],
        metavar=("STRATEGY", "SELECTION", "INSTANCES"),
        help="a strategy's latest round to show thumbnails of (repeatable)",
    )
    campaign.add_argument("--annotations")
    campaign.add_argument("--image-root")
    campaign.add_argument("--title", default="taudis campaign")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.what == "curve":
            print(learning_curve_png(_read_history(args.history), args.out))
        elif args.what == "campaign":
            sections = [RoundSection(s, sel, inst) for s, sel, inst in args.latest]
            out = campaign_html(
                _read_history(args.history),
                args.out,
                latest_rounds=sections,
                pool_annotations=args.annotations,
                image_root=args.image_root,
                title=args.title,
            )
            print(out)
        else:
            metrics = {"mask_ap": args.mask_ap, "box_ap": args.box_ap, "labelled_images": args.labelled_images}
            has_ap = args.mask_ap is not None or args.box_ap is not None
            if args.markdown:
                text = round_markdown(
                    load_selection(args.selection), args.round, metrics if has_ap else None, args.labelled_images
                )
                Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
                Path(args.markdown).write_text(text)
            out = round_html(
                args.selection,
                args.instances,
                args.annotations,
                args.image_root,
                _read_history(args.history),
                args.out,
                round_index=args.round,
                metrics=metrics if has_ap else {"labelled_images": args.labelled_images},
                max_images=args.max_images,
            )
            print(out)
    except (ReportInputError, InstanceTableError) as err:
        print(f"taudis report: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
