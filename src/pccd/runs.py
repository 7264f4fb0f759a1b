"""Generation runs on disk: one CIF per crystal plus ``summary.csv``, written as produced.

A run directory is what ``pccd generate``, ``pccd batch`` and the web page write and what
``pccd evaluate`` / ``pccd screen`` read. Each summary row describes the *raw* decoded crystal
(:func:`pccd.evaluate.geometry.describe_structure`), including the geometry test, so a run's
plausibility is visible before anything is relaxed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from pccd.diffusion import DEFAULT_PRECISION
from pccd.errors import InputError
from pccd.evaluate.geometry import PLAUSIBLE_RATIO, describe_structure
from pccd.generator import Generator, Request
from pccd.outputs import ResultTable, check_run_settings
from pccd.screen.decode_relax import RELAX_COLUMNS

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


def request_settings(request: Request) -> dict[str, object]:
    """How one request is recorded in a run's ``run.json`` (every writer of runs uses this, so
    a run started in one place — shell, Python, web page — resumes in another)."""
    return {
        "elements": [e.symbol for e in request.elements],
        "formula": list(request.formula) if request.formula else None,
        "band_gap": request.band_gap,
        "magnetic": request.magnetic,
        "stability": request.stability,
    }


def precision_settings(precision: str) -> dict[str, str]:
    """How the network's precision is recorded in a run's ``run.json`` (every run writer —
    generate, CSP, reconstruction, batch, the web page — uses this).

    bfloat16 gives other crystals for the same seed, so, like a changed sampler, a changed
    precision is refused when a run resumes. float32 is not recorded, so runs made before the
    option still resume.
    """
    return {} if precision == DEFAULT_PRECISION else {"precision": precision}


def model_settings(pipeline: Generator, label: str | None = None) -> dict[str, object]:
    """How an experiment records the model it ran in its ``run.json`` (CSP, reconstruction):
    its name (or ``label``), its training steps and a non-default precision, so a rerun with
    other weights is refused instead of mixing two models' results."""
    return {
        "model": label or str(pipeline.meta.get("name", "")),
        "model_steps": pipeline.meta.get("training", {}).get("steps"),
        **precision_settings(pipeline.precision),
    }


def generate_to_directory(
    pipeline: Generator,
    requests: Request | Sequence[Request],
    n: int | None,
    out_dir: str | Path,
    *,
    batch_size: int = 100,
    on_batch=None,
    relax=None,
    **kwargs,
) -> Path:
    """Generate crystals into ``out_dir``: one CIF each plus ``summary.csv``.

    ``requests`` is one request repeated ``n`` times, or one request per crystal (``n`` None),
    e.g. element lists drawn from a split. Files are written as each batch is decoded.
    Rerunning with the same settings resumes after the last complete batch and never rewrites
    finished rows; other settings are refused. ``relax`` (a
    :class:`pccd.screen.decode_relax.DecodeRelaxer`) relaxes each decoded batch before its
    rows are written: relaxed CIFs in ``relaxed/``, raw and relaxed energies and the reason of
    any failure in extra summary columns. Returns the summary path.
    """
    out = Path(out_dir)
    if isinstance(requests, Request):
        if n is None:
            raise InputError("give n with a single request")
        settings: dict[str, object] = request_settings(requests)
        requests = [requests] * n
    else:
        requests = list(requests)
        # a digest, not the list: a 10,000-request run.json would be unreadable
        settings = {"requests_sha256": _requests_digest(requests)}
    n = len(requests)
    for request in set(requests):  # refuse before run.json is written
        pipeline.check_request(request)
    pipeline.check_options(**kwargs)
    if n < 1 or batch_size < 1:
        raise InputError(f"need n ≥ 1 and batch size ≥ 1, got n={n}, batch size={batch_size}")
    settings.update(
        n=n,
        batch_size=batch_size,
        model=str(pipeline.meta.get("name", "")),
        **precision_settings(pipeline.precision),
        **{k: v for k, v in kwargs.items() if k != "progress"},
    )
    columns = SUMMARY_COLUMNS
    if relax is not None:  # only then: summaries of runs without --relax keep their columns
        settings["relax"] = relax.settings()
        columns = SUMMARY_COLUMNS + RELAX_COLUMNS
    check_run_settings(out, settings)
    table = ResultTable(out / "summary.csv", columns, key="id")
    width = len(str(max(n - 1, 1)))
    start = _resume_start(table, n, batch_size, width)
    for batch in pipeline.iter_generate(requests, batch_size=batch_size, start=start, **kwargs):
        rows = [
            _sample_row(s, requests[s.index], sid, out)
            for s in batch
            if (sid := f"{s.index:0{width}d}") not in table
        ]
        if relax is not None:
            relax.relax_rows(rows, out)
        table.extend(rows)
        if on_batch is not None:
            on_batch(batch)
    return table.path


class DrawCapReached(InputError):
    """``generate --valid-only`` drew its maximum number of samples before n passed (the
    user's cap, so an input error: a larger ``--max-draws`` or another request)."""


def generate_valid_to_directory(
    pipeline: Generator,
    request: Request,
    n: int,
    out_dir: str | Path,
    *,
    max_draws: int | None = None,
    batch_size: int = 100,
    on_batch=None,
    **kwargs,
) -> Path:
    """Keep sampling until ``n`` crystals pass, writing every draw; return the summary.

    Exactly ``n`` pass: the draws of the last batch after the n-th passing one are discarded
    unrecorded (they were not needed, so the acceptance rate is over the draws it took). A
    draw passes when it decodes, has exactly the requested elements (and formula, if one
    was given) and plausible geometry (:data:`~pccd.evaluate.geometry.PLAUSIBLE_RATIO`). Every
    draw gets a ``summary.csv`` row — ``ok`` (passed, with its CIF), ``rejected`` or
    ``failed`` with the reason — and ``acceptance.json`` counts them, so the acceptance rate is
    over all draws. Draw ``k`` depends only on (seed, k, batch size): an interrupted run
    resumes to the same crystals. Raises :class:`DrawCapReached` (after writing everything)
    when ``max_draws`` (default 50·n) samples gave fewer than ``n`` passing crystals.
    """
    if n < 1 or batch_size < 1:
        raise InputError(f"need n ≥ 1 and batch size ≥ 1, got n={n}, batch size={batch_size}")
    cap = 50 * n if max_draws is None else max_draws
    if cap < n:
        raise InputError(f"max draws ({cap}) must be at least n ({n})")
    pipeline.check_request(request)
    pipeline.check_options(**kwargs)
    out = Path(out_dir)
    check_run_settings(
        out,
        {
            "valid_only": True,
            **request_settings(request),
            "n": n,
            "max_draws": cap,
            "batch_size": batch_size,
            "model": str(pipeline.meta.get("name", "")),
            **precision_settings(pipeline.precision),
            **{k: v for k, v in kwargs.items() if k != "progress"},
        },
    )
    table = ResultTable(out / "summary.csv", SUMMARY_COLUMNS, key="id")
    width = len(str(max(cap - 1, 1)))

    def accepted() -> int:
        return sum(1 for r in table.rows.values() if r["status"] == "ok")

    n_ok = accepted()
    drawn = min(_resume_start(table, cap, batch_size, width), cap)
    while n_ok < n and drawn < cap:
        size = min(batch_size, cap - drawn)
        chunk = [request] * (drawn + size)
        for batch in pipeline.iter_generate(chunk, batch_size=batch_size, start=drawn, **kwargs):
            for s in batch:
                if n_ok >= n:
                    break
                sid = f"{s.index:0{width}d}"
                if sid in table:
                    continue
                row = _sample_row(s, request, sid, out)
                problem = None if s.structure is None else _rejection(s.structure, request, row)
                if problem:
                    (out / str(row["cif"])).unlink()
                    row.update(status="rejected", reason=problem, cif="")
                table.append(row)
                n_ok += row["status"] == "ok"
            if on_batch is not None:
                on_batch(batch)
        drawn += size
    summary = {"requested": n, "accepted": accepted(), "drawn": len(table), "max_draws": cap}
    summary["acceptance_rate"] = summary["accepted"] / max(summary["drawn"], 1)
    (out / "acceptance.json").write_text(json.dumps(summary, indent=2))
    if summary["accepted"] < n:
        raise DrawCapReached(
            f"only {summary['accepted']} of {n} crystals passed in {summary['drawn']} draws "
            f"(the cap; acceptance {100 * summary['acceptance_rate']:.1f}%); the passing ones "
            f"are in {out}. Raise --max-draws or relax the request"
        )
    return table.path


def _resume_start(table: ResultTable, total: int, batch_size: int, width: int) -> int:
    """Where a rerun picks up: the first sample of the first batch with a row missing.

    Whole batches, because a sample depends on (seed, index, batch size) and
    :meth:`~pccd.generator.Generator.iter_generate` starts at a batch boundary; a last,
    shorter batch counts as complete when its rows up to ``total`` are there.
    """
    start = 0
    while start < total and all(
        f"{k:0{width}d}" in table for k in range(start, min(total, start + batch_size))
    ):
        start += batch_size
    return start


def _rejection(structure, request: Request, row: dict[str, object]) -> str | None:
    """Why a decoded crystal does not satisfy a --valid-only request (None = it does)."""
    wanted = {e.symbol for e in request.elements}
    have = {e.symbol for e in structure.composition.elements}
    if have != wanted:
        return f"elements {'-'.join(sorted(have))}, not the requested {'-'.join(sorted(wanted))}"
    if request.formula is not None:
        counts = tuple(int(structure.composition[e]) for e in request.elements)
        if counts != tuple(request.formula):
            return f"atom counts {counts}, not the requested {tuple(request.formula)}"
    ratio = float(row["covalent_ratio"])  # type: ignore[arg-type]
    if ratio < PLAUSIBLE_RATIO:
        return f"implausible geometry: smallest covalent ratio {ratio:.2f} < {PLAUSIBLE_RATIO}"
    return None


def _sample_row(sample, request: Request, sid: str, out: Path) -> dict[str, object]:
    """The summary row of one sample; a decoded crystal's CIF is written first."""
    row: dict[str, object] = {"id": sid, "elements": "-".join(e.symbol for e in request.elements)}
    if sample.structure is not None:
        name = f"{sid}_{sample.structure.composition.reduced_formula}.cif"
        sample.structure.to(filename=str(out / name))
        row.update(describe_structure(sample.structure), status="ok", cif=name)
    else:
        row.update(status="failed", reason=str(sample.failure))
    return row


def _requests_digest(requests: Sequence[Request]) -> str:
    # stability only when given: digests of runs made before it existed stay the same
    text = json.dumps(
        [
            [[e.symbol for e in r.elements], r.formula, r.band_gap, r.magnetic]
            + ([r.stability] if r.stability is not None else [])
            for r in requests
        ],
        default=list,
    )
    return hashlib.sha256(text.encode()).hexdigest()
