"""`taudis <command> ...`: one command per pipeline stage, for debugging and for containers.

Each command lives in its own module as ``main(argv) -> int``; this file only dispatches, and
imports a module only when its command runs (torch and detectron2 load only for model commands).
Commands of the layers above the library (``pipeline``, ``demo``: the KFP layer) are found
through the ``taudis.commands`` entry-point group, so the library never imports them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

PLUGIN_GROUP = "taudis.commands"

# command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("taudis.data.cli", "make the built-in synthetic dataset, or check a COCO dataset"),
    "train": ("taudis.model.train", "train Mask R-CNN on a COCO dataset"),
    "evaluate": ("taudis.model.evaluate", "mask and box AP of a model on a COCO split"),
    "weights": ("taudis.model.weights", "convert a model-zoo .pkl into weights that load without running code"),
    "infer": ("taudis.model.infer", "predict instances with uncertainty inputs and embeddings, as shards"),
    "select": ("taudis.select.cli", "choose the images to label next from instance shards"),
    "ledger": ("taudis.storage.cli", "create a campaign ledger, or show its whole state"),
    "campaign": ("taudis.campaign.cli", "show a campaign's rounds, check its invariants, ingest labels by hand"),
    "export": ("taudis.labeling.cli", "write labelling tasks for chosen images"),
    "labelstudio": ("taudis.labeling.labelstudio_sync", "push tasks into a Label Studio project, pull its labels"),
    "report": ("taudis.report.cli", "write a round's Markdown/HTML report, a learning curve or a campaign page"),
}


def commands() -> dict[str, tuple[str, str]]:
    """The library's commands and those installed through the ``taudis.commands`` entry points.

    An entry point names a module with ``main(argv)``; its help line is the module docstring's
    first line (without a leading "`taudis name`: "), read only when the usage is printed.
    """
    found = dict(COMMANDS)
    for entry in entry_points(group=PLUGIN_GROUP):
        found.setdefault(entry.name, (entry.value, ""))
    return found


def _help_line(module: str, help_: str) -> str:
    if help_:
        return help_
    lines = (importlib.import_module(module).__doc__ or "").strip().splitlines()
    first = lines[0] if lines else ""
    summary = first.split("`: ", 1)[1] if first.startswith("`taudis ") and "`: " in first else first
    return summary.rstrip(".")


def _usage() -> str:
    table = commands()
    width = max(map(len, table))
    lines = ["usage: taudis <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {_help_line(module, help_)}" for name, (module, help_) in table.items()]
    lines += ["", "`taudis <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    table = commands()
    if command not in table:
        print(f"taudis: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
