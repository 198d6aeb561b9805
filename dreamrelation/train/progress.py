"""progress.jsonl: one JSON object per line, appended by the trainer and read by other processes (the app)."""

from __future__ import annotations

import json
import time
from pathlib import Path


class ProgressLog:
    """Appends records to OUT/progress.jsonl, each flushed at once so readers see whole lines."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        """Append one record (JSON-serialisable values) with a wall-clock `time`."""
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_progress(path: Path) -> list[dict]:
    """Every complete record of a progress.jsonl (a line still being written is skipped); [] when absent."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
