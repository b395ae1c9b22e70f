"""Problems found in a labels file: each names the file, the record and the field.

Every reader and check of annotators' labels reports through these two types, so that a refused
file lists all of its problems at once, in one format, whichever tool wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_PROBLEMS = 50  # shown in the message; every problem stays in ``problems``


@dataclass(frozen=True)
class LabelProblem:
    """One reason a labels file is refused."""

    file: str
    record: str  # e.g. "annotation id 7 (index 3)" or "image id 5 (index 0)"
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}, field {self.field!r}: {self.message}"


class LabelValidationError(ValueError):
    """A labels file breaks a rule; ``problems`` lists every problem found (file, record, field)."""

    def __init__(self, problems: Sequence[LabelProblem]):
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_PROBLEMS])
        more = f"\n  ... and {len(self.problems) - MAX_PROBLEMS} more" if len(self.problems) > MAX_PROBLEMS else ""
        super().__init__(f"{len(self.problems)} problem(s) in the labels:\n{shown}{more}")
