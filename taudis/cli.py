"""`taudis <command> ...`: one command per pipeline stage, for debugging and for containers.

Each command lives in its own module as ``main(argv) -> int``; this file only dispatches, and
imports a module only when its command runs (torch and detectron2 load only for model commands).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("taudis.data.cli", "make the built-in synthetic dataset, or check a COCO dataset"),
    "train": ("taudis.model.train", "train Mask R-CNN on a COCO dataset"),
    "evaluate": ("taudis.model.evaluate", "mask and box AP of a model on a COCO split"),
    "infer": ("taudis.model.infer", "predict instances with uncertainty inputs and embeddings, as shards"),
    "select": ("taudis.select.cli", "choose the images to label next from instance shards"),
    "ledger": ("taudis.storage.cli", "create or show a campaign ledger"),
    "ingest": ("taudis.storage.labels", "ingest annotators' COCO labels for pending images"),
    "export": ("taudis.export.cli", "write labelling tasks for chosen images"),
    "report": ("taudis.report.cli", "write a round's Markdown/HTML report, a learning curve or a campaign page"),
    "pipeline": ("pipelines.cli", "compile, run locally, submit or schedule the KFP pipelines"),
    "demo": ("pipelines.demo", "run a short local campaign on built-in synthetic data"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: taudis <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`taudis <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"taudis: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
