"""Output directories: resumable result tables, recorded run settings, the CIFs a run wrote.

Every batch job of pccd (generation, screening, evaluation) writes its results through
:class:`ResultTable` so that an interrupted run keeps what it finished and a rerun skips it,
and through :func:`check_run_settings` so a rerun with different settings cannot silently mix
two runs in one directory. :func:`list_cifs` is how every reader of a directory of crystals
(``pccd evaluate``, ``pccd screen``) finds them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from pccd.errors import InputError, MissingInputError


class ResultTable:
    """A CSV file of results keyed by one column, appended row by row and flushed each time."""

    def __init__(self, path: str | Path, columns: Sequence[str], key: str):
        if key not in columns:
            raise ValueError(f"key column {key!r} not in {list(columns)}")
        self.path = Path(path)
        self.columns = list(columns)
        self.key = key
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != self.columns:
                    raise InputError(
                        f"{self.path} has columns {reader.fieldnames}, expected {self.columns}"
                    )
                for row in reader:
                    if row.get(self.key):  # a half-written last line has no usable key
                        self.rows[row[self.key]] = row
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)

    def __contains__(self, key: object) -> bool:
        return str(key) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, row: Mapping[str, object]) -> None:
        """Write one row now (the file is flushed, so a crash right after keeps it)."""
        values = {c: "" if row.get(c) is None else str(row.get(c)) for c in self.columns}
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns).writerow(values)
            fh.flush()
        self.rows[values[self.key]] = values

    def extend(self, rows: Iterable[Mapping[str, object]]) -> None:
        for row in rows:
            self.append(row)


def check_run_settings(
    directory: str | Path,
    settings: Mapping[str, object],
    *,
    migrate: Callable[[dict], dict] | None = None,
) -> None:
    """Record a run's settings in ``run.json``; refuse to resume a run made with other settings.

    ``migrate`` turns a recorded file of an older layout into the current one before the
    comparison (e.g. :func:`pccd.runs.migrate_run_json`); the file itself is left as it is.

    Raises:
        ValueError: the directory holds a run whose settings differ (naming the differences).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / "run.json"
    current = json.loads(json.dumps(dict(settings)))  # normalise tuples etc.
    if file.exists():
        try:
            previous = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{file} is not valid JSON ({exc}); delete it to start this run afresh, or use "
                "another output directory"
            ) from exc
        if not isinstance(previous, dict):
            raise InputError(
                f"{file} does not hold a settings object; delete it or use another output directory"
            )
        if migrate is not None:
            try:
                previous = migrate(previous)
            except InputError as exc:
                raise InputError(f"{file}: {exc}") from exc
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if diff:
            details = ", ".join(f"{k}: {previous.get(k)!r} → {current.get(k)!r}" for k in diff)
            raise InputError(
                f"{directory} holds a run with other settings ({details}); "
                "use another output directory or the same settings to resume"
            )
        return
    file.write_text(json.dumps(current, indent=2))


def list_cifs(directory: str | Path) -> list[Path]:
    """CIF files directly in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingInputError(f"{directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() == ".cif")
