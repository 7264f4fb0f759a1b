"""Writers for an evaluation's outputs: ``metrics.json`` (machine-readable) and ``report.md``.

Every evaluation command writes both into its output directory, next to its PNG figures, so a
run can be read by a person (tables) and compared by a script (JSON) without re-running it.
NaN and infinity become ``null`` in JSON (strict JSON has no NaN) and "—" in tables, which is
how a missing value reads in both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays → Python, NaN/inf → ``None``, recursively through dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (indented, NaN → null) and return its path."""
    path = Path(out_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
    return path


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: numbers with ``digits`` significant digits, missing as "—"."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "—" if not math.isfinite(float(value)) else f"{float(value):.{digits}g}"
    return str(value)


def pct(value: float | None, digits: int = 2) -> str:
    """A share in [0, 1] as a percentage cell ("67.81%"), missing as "—"."""
    if value is None or not math.isfinite(float(value)):
        return "—"
    return f"{100.0 * float(value):.{digits}f}%"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells that are not strings go through :func:`fmt`.

    A ``|`` inside a cell (e.g. "|error| ≤ 0.05") is escaped so it does not split the cell.
    """
    cells = [
        [(c if isinstance(c, str) else fmt(c)).replace("|", "\\|") for c in row] for row in rows
    ]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    title: str,
    sections: Sequence[tuple[str, str]],
    figures: Sequence[str | Path] = (),
) -> Path:
    """Write ``report.md``: a title, ``(heading, markdown)`` sections and the figures."""
    out = Path(out_dir)
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    if figures:
        parts += ["## Figures", ""]
        for fig in figures:
            name = Path(fig).name
            parts += [f"![{Path(name).stem}]({name})", ""]
    path = out / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
