"""Generation runs on disk: one CIF per crystal plus ``summary.csv``, written as produced.

A run directory is what ``pccd generate``, ``pccd batch`` and the web page write and what
``pccd evaluate`` / ``pccd screen`` read. Each summary row describes the *raw* decoded crystal
(:func:`pccd.evaluate.geometry.describe_structure`), including the geometry test, so a run's
plausibility is visible before anything is relaxed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pccd.evaluate.geometry import describe_structure
from pccd.outputs import ResultTable, check_run_settings
from pccd.pipeline import PCCDPipeline, Request

SUMMARY_COLUMNS = (
    "id",
    "elements",
    "formula",
    "atoms",
    "space_group",
    "density",
    "min_distance",
    "covalent_ratio",
    "plausible",
    "status",
    "reason",
    "cif",
)


def generate_to_directory(
    pipeline: PCCDPipeline,
    requests: Request | Sequence[Request],
    n: int | None,
    out_dir: str | Path,
    *,
    batch_size: int = 100,
    on_batch=None,
    **kwargs,
) -> Path:
    """Generate crystals into ``out_dir``: one CIF each plus ``summary.csv``.

    ``requests`` is one request repeated ``n`` times, or one request per crystal (``n`` None),
    e.g. element lists drawn from a split. Files are written as each batch is decoded.
    Rerunning with the same settings resumes after the last complete batch and never rewrites
    finished rows; other settings are refused. Returns the summary path.
    """
    out = Path(out_dir)
    if isinstance(requests, Request):
        if n is None:
            raise ValueError("give n with a single request")
        settings: dict[str, object] = {
            "elements": [e.symbol for e in requests.elements],
            "formula": list(requests.formula) if requests.formula else None,
            "band_gap": requests.band_gap,
            "magnetic": requests.magnetic,
        }
        requests = [requests] * n
    else:
        requests = list(requests)
        # a digest, not the list: a 10,000-request run.json would be unreadable
        settings = {"requests_sha256": _requests_digest(requests)}
    n = len(requests)
    for request in set(requests):  # refuse before run.json is written
        pipeline.check_request(request)
    pipeline.make_scheduler(kwargs.get("sampler", "ddim"), kwargs.get("steps"))
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n ≥ 1 and batch size ≥ 1, got n={n}, batch size={batch_size}")
    settings.update(
        n=n,
        batch_size=batch_size,
        model=str(pipeline.meta.get("name", "")),
        **{k: v for k, v in kwargs.items() if k != "progress"},
    )
    check_run_settings(out, settings)
    table = ResultTable(out / "summary.csv", SUMMARY_COLUMNS, key="id")
    width = len(str(max(n - 1, 1)))

    def batch_done(lo: int) -> bool:
        return all(f"{k:0{width}d}" in table for k in range(lo, min(n, lo + batch_size)))

    start = 0
    while start < n and batch_done(start):  # resume after the last complete batch
        start += batch_size
    for batch in pipeline.iter_generate(requests, batch_size=batch_size, start=start, **kwargs):
        for s in batch:
            sid = f"{s.index:0{width}d}"
            if sid in table:
                continue
            elements = "-".join(e.symbol for e in requests[s.index].elements)
            row: dict[str, object] = {"id": sid, "elements": elements}
            if s.structure is not None:
                name = f"{sid}_{s.structure.composition.reduced_formula}.cif"
                s.structure.to(filename=str(out / name))
                row.update(describe_structure(s.structure), status="ok", cif=name)
            else:
                row.update(status="failed", reason=str(s.failure))
            table.append(row)
        if on_batch is not None:
            on_batch(batch)
    return table.path


def _requests_digest(requests: Sequence[Request]) -> str:
    import hashlib

    text = json.dumps(
        [[[e.symbol for e in r.elements], r.formula, r.band_gap, r.magnetic] for r in requests],
        default=list,
    )
    return hashlib.sha256(text.encode()).hexdigest()
