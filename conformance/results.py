"""Results as JSON Lines: a header record, then one record per item, appended and flushed as each is produced."""

from __future__ import annotations

import datetime
import json
import math
import platform
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
OUTCOMES = ("pass", "fail", "divergent", "not_applicable", "skip", "error")


@dataclass
class ResultRecord:
    case: str
    property: str
    backend: str
    variant: str
    device: str
    dtype: str
    framework_version: str
    outcome: str
    title: str = ""
    tags: list[str] = field(default_factory=list)
    explanation: str | None = None
    citation: str | None = None
    examples: int = 0
    discarded: dict[str, int] = field(default_factory=dict)  # examples filtered out, by reason
    elapsed_s: float = 0.0
    sensitivity: float | None = None  # the smallest relative error in every value that this item would catch
    max_error: float | None = None
    tolerance: float | None = None
    counterexample: dict[str, Any] | None = None
    repro: str | None = None
    message: str | None = None
    trajectory: dict[str, list[float]] | None = None
    observations: dict[str, Any] | None = None  # at the run's probe inputs, for comparing runs (observations.py)
    pairs: list[dict[str, Any]] | None = None  # a comparison's verdict against each other column (report.cross_run)

    def to_json(self, run_id: str) -> str:
        return json.dumps(
            clean({"schema": SCHEMA, "kind": "result", "run_id": run_id, **asdict(self)}), allow_nan=False
        )


def _finite(value: Any) -> Any:
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value


def clean(value: Any) -> Any:
    """Recursively replace non-finite floats by their repr so that `allow_nan=False` holds."""
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(item) for item in value]
    if hasattr(value, "tolist"):
        return clean(value.tolist())
    return _finite(value)


def run_header(
    run_id: str,
    frameworks: dict[str, str],
    devices: dict[str, list[str]],
    seed: str | None,
    profile: str,
    started: datetime.datetime | None = None,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "kind": "run",
        "run_id": run_id,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "frameworks": frameworks,
        "devices": devices,
        "seed": seed,
        "profile": profile,
        "started": (started or now()).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "hostname": platform.node(),
        "argv": sys.argv[1:],
    }


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


class ResultsWriter:
    """Appends one line per record and flushes it, so that an interrupted run leaves a readable file.

    The header comes first, made when the first record (or the end of the run) comes: describing the run imports
    every framework for its version and devices, which would otherwise hold up the start of the run by seconds."""

    def __init__(self, path: Path, header: Callable[[], dict[str, Any]]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.run_id, self._header = path, None, header
        self._file = path.open("w", encoding="utf-8")

    def _begin(self) -> None:
        if self.run_id is None:
            header = self._header()
            self.run_id = header["run_id"]
            self._write(json.dumps(clean(header), allow_nan=False))

    def write(self, record: ResultRecord) -> None:
        self._begin()
        self._write(record.to_json(self.run_id))

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._begin()
        self._file.close()
