"""Bad-input accounting: every rejected row and every repaired or unknown value is counted, with examples.

Readers never drop a row silently. A row that cannot be used (wrong number of fields, a rating that is not a number,
a reference to an unknown user or item, ...) is *rejected*: it is counted under a reason, and a few examples (file,
line, text) are kept for the stats JSON. When the rejected share of one file exceeds ``max_bad_fraction`` the run
stops with a :class:`DataFormatError` that names the file and the first bad line.

A row whose attribute is unusable but whose interaction is fine (an "unkonwn" title, a year that reads "V") is kept:
the value is *repaired* (taken from another field) or marked *unknown*, and counted too, without aborting the run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


DEFAULT_MAX_BAD_FRACTION = 0.01
MAX_EXAMPLES = 5
MAX_EXAMPLE_CHARS = 200


class DataFormatError(ValueError):
    """Input data that cannot be read as the announced format; the message names the file and the line."""

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None, line: Optional[int] = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.line = line


@dataclass
class Example:
    file: str
    line: int
    reason: str
    text: str

    def to_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "reason": self.reason, "text": self.text}


def _clip(text: str) -> str:
    text = str(text).rstrip("\r\n")
    return text if len(text) <= MAX_EXAMPLE_CHARS else text[: MAX_EXAMPLE_CHARS - 3] + "..."


@dataclass
class ReadReport:
    """What the readers saw: rows per file, rejected rows by reason, repaired and unknown values, filtered rows.

    ``filtered`` holds rows removed on purpose by a documented rule (GoodReads' unrated shelvings, repeated ratings
    of one item by one user), which are legitimate data and never count against ``max_bad_fraction``.
    """

    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    progress: bool = False  # progress bars over each file's bytes (MovieLens-25M and GoodReads take minutes)
    rows_read: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=lambda: defaultdict(Counter))
    repaired: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))
    first_bad: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 <= float(self.max_bad_fraction) <= 1.0:
            raise ValueError(f"max_bad_fraction must be a fraction in [0, 1], got {self.max_bad_fraction}")

    # -- recording ---------------------------------------------------------------------------------------------
    def count_rows(self, file: Union[str, Path], rows: int) -> None:
        key = Path(file).name
        self.rows_read[key] = self.rows_read.get(key, 0) + int(rows)

    def reject(self, file: Union[str, Path], line: int, reason: str, text: str = "", count: int = 1) -> None:
        """Record ``count`` rejected rows of ``file`` under ``reason`` (``line``/``text``: the first of them)."""
        key = Path(file).name
        self.rejected[key][reason] += int(count)
        self._example(f"rejected:{reason}", key, line, reason, text)
        if key not in self.first_bad or line < self.first_bad[key].line:
            self.first_bad[key] = Example(key, int(line), reason, _clip(text))

    def repair(self, what: str, file: Union[str, Path], line: int, text: str, count: int = 1) -> None:
        self.repaired[what] += int(count)
        self._example(f"repaired:{what}", Path(file).name, line, what, text)

    def mark_unknown(self, what: str, file: Union[str, Path], line: int, text: str, count: int = 1) -> None:
        self.unknown[what] += int(count)
        self._example(f"unknown:{what}", Path(file).name, line, what, text)

    def filter(self, what: str, count: int, file: Optional[Union[str, Path]] = None, line: int = 0,
               text: str = "") -> None:
        if count <= 0:
            return
        self.filtered[what] += int(count)
        if file is not None:
            self._example(f"filtered:{what}", Path(file).name, line, what, text)

    def _example(self, bucket: str, file: str, line: int, reason: str, text: str) -> None:
        if len(self.examples[bucket]) < MAX_EXAMPLES:
            self.examples[bucket].append(Example(file, int(line), reason, _clip(text)))

    # -- checks --------------------------------------------------------------------------------------------------
    def rejected_count(self, file: Union[str, Path]) -> int:
        return int(sum(self.rejected.get(Path(file).name, {}).values()))

    def check(self, file: Union[str, Path]) -> None:
        """Stop with a :class:`DataFormatError` when the rejected share of ``file`` exceeds ``max_bad_fraction``."""
        key = Path(file).name
        bad = self.rejected_count(key)
        total = self.rows_read.get(key, 0)
        if bad == 0 or total == 0:
            return
        share = bad / total
        if share > self.max_bad_fraction:
            first = self.first_bad[key]
            reasons = ", ".join(f"{reason}: {count}" for reason, count in self.rejected[key].most_common())
            raise DataFormatError(
                f"{file}: {bad} of {total} rows ({share:.2%}) were rejected, above max_bad_fraction="
                f"{self.max_bad_fraction:g}. First bad row at line {first.line} ({first.reason}): {first.text!r}. "
                f"Rejected by reason: {reasons}.",
                path=file,
                line=first.line,
            )

    # -- reporting -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "max_bad_fraction": self.max_bad_fraction,
            "rows_read": dict(self.rows_read),
            "rows_rejected": {file: dict(reasons) for file, reasons in self.rejected.items() if reasons},
            "rows_rejected_total": int(sum(sum(r.values()) for r in self.rejected.values())),
            "values_repaired": dict(self.repaired),
            "values_unknown": dict(self.unknown),
            "rows_filtered": dict(self.filtered),
            "examples": {bucket: [e.to_dict() for e in items] for bucket, items in self.examples.items() if items},
        }
