"""Generation runs on disk: one CIF per crystal plus ``summary.csv``, written as produced.

A run directory is what ``pccd generate``, ``pccd batch`` and the web page write and what
``pccd evaluate`` / ``pccd screen`` read. Each summary row describes the *raw* decoded crystal
(:func:`pccd.evaluate.geometry.describe_structure`), including the geometry test, so a run's
plausibility is visible before anything is relaxed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pccd.diffusion import DEFAULT_PRECISION
from pccd.errors import InputError
from pccd.evaluate.geometry import PLAUSIBLE_RATIO, describe_structure
from pccd.generator import Generator, Request, Sample
from pccd.outputs import ResultTable, check_run_settings
from pccd.screen.decode_relax import RELAX_COLUMNS, DecodeRelaxer

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


RUN_SCHEMA_VERSION = 2
"""The layout of the ``run.json`` that :class:`SamplingSettings` writes. Files without a
``schema_version`` are version 1; :func:`migrate_run_json` reads them."""

_V1_ABSENT: dict[str, object] = {
    "elements": None,
    "formula": None,
    "band_gap": None,
    "magnetic": None,
    "stability": None,
    "requests_sha256": None,
    "model": "",
    "precision": DEFAULT_PRECISION,
    "sampler": None,
    "steps": None,
    "guidance_scale": 1.0,
    "guide": None,
    "repulsion": None,
    "seed": 0,
    "batch_size": 100,
    "valid_only": False,
    "max_draws": None,
    "relax": None,
}
"""What a version-1 ``run.json`` meant by leaving a key out. Version 1 recorded a setting only
when it was given (``precision`` only when not float32, ``guide`` only with ``--guide``,
``relax`` only with ``--relax``, no ``guidance_scale`` in ``pccd batch``), so an absent key is
the value the run was made with when it was not given. Written out, not taken from the
dataclass defaults, so a later change of a default cannot change what old files mean."""


def migrate_run_json(data: Mapping[str, object]) -> dict[str, object]:
    """A generation run's ``run.json`` as the current :data:`RUN_SCHEMA_VERSION` writes it.

    The one place that knows older layouts, so a run made by any earlier pccd (shell, Python,
    web page) resumes and compares key by key with the settings of a rerun.

    Raises:
        InputError: the file was written by a newer pccd (a schema version not known here).
    """
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or not 1 <= version <= RUN_SCHEMA_VERSION:
        raise InputError(
            f"schema version {version!r}; this pccd reads run.json versions 1 to "
            f"{RUN_SCHEMA_VERSION} (was the run made by a newer pccd?)"
        )
    out = dict(data)
    if version == 1:
        out = {**_V1_ABSENT, **out}
    out["schema_version"] = RUN_SCHEMA_VERSION
    return out


def recorded_precision(directory: Path) -> str | None:
    """The network precision a run directory's ``run.json`` records (an old file's float32),
    or None where there is no readable record yet.

    Why: a model may choose its precision by hardware (atom models: bfloat16 where it is
    native), so a rerun that does not name one resumes at the run's own, not at whatever the
    default is today; a damaged record is left for the settings check to report.
    """
    try:
        data = json.loads((directory / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        precision = migrate_run_json(data).get("precision")
    except InputError:
        return None
    return precision if isinstance(precision, str) else None


@dataclass(frozen=True)
class SamplingSettings:
    """Everything that determines the crystals of a generation run: its ``run.json``.

    One record for every writer of runs — ``pccd generate``, ``pccd batch``, the web page,
    :func:`generate_to_directory` — so a run started in one place resumes in another, and a
    rerun with other settings is refused (naming the differences) instead of mixing two runs
    in one directory. Build it from a loaded model with :meth:`of`; read it back from a run
    directory with :meth:`from_json` (which migrates older files).

    Attributes:
        n: crystals to make (with ``valid_only``: crystals that must pass).
        batch_size: samples per network batch; sample ``k`` depends on (seed, k, batch_size).
        model: the model's name (its ``pccd.json``); a run resumes only with the same model.
        precision: how the network computed (bfloat16 gives other crystals for a seed).
        sampler, steps: the reverse chain; None is the model's default sampler / its steps.
        guidance_scale: classifier-free guidance (1 = the plain conditional model).
        guide: the conditions ``guidance_scale`` amplifies (None: all of them).
        repulsion: sampling-time repulsion τ (None: off, the raw model).
        seed: the sampler's noise.
        elements, formula, band_gap, magnetic, stability: the request of a run that repeats
            one request (elements in slot order; formula as atom counts in that order).
        requests_sha256: instead of the request, the digest of a run with one request per
            crystal (a 10,000-request run.json would be unreadable).
        valid_only: sample until ``n`` crystals pass (``max_draws`` caps the draws).
        relax: the decode-and-relax settings (:meth:`DecodeRelaxer.settings`), or None.
    """

    n: int
    batch_size: int = 100
    model: str = ""
    precision: str = DEFAULT_PRECISION
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float = 1.0
    guide: tuple[str, ...] | None = None
    repulsion: float | None = None
    seed: int = 0
    elements: tuple[str, ...] | None = None
    formula: tuple[int, ...] | None = None
    band_gap: float | None = None
    magnetic: str | None = None
    stability: str | None = None
    requests_sha256: str | None = None
    valid_only: bool = False
    max_draws: int | None = None
    relax: dict[str, object] | None = None

    @classmethod
    def of(
        cls,
        pipeline: Generator,
        requests: Request | Sequence[Request],
        n: int | None = None,
        *,
        relax: DecodeRelaxer | None = None,
        **settings: Any,
    ) -> SamplingSettings:
        """The settings of a run of ``pipeline`` on ``requests`` (one request repeated ``n``
        times, or one request per crystal with ``n`` None); the model's name and precision
        and the relaxer's settings are taken from the objects that will do the work.
        ``settings`` are the other fields (sampler, steps, seed, …)."""
        settings.update(
            model=model_name(pipeline),
            precision=pipeline.precision,
            relax=None if relax is None else relax.settings(),
        )
        if isinstance(requests, Request):
            if n is None:
                raise InputError("give n with a single request")
            return cls.for_request(requests, n, **settings)
        requests = list(requests)
        return cls(n=len(requests), requests_sha256=_requests_digest(requests), **settings)

    @classmethod
    def for_request(cls, request: Request, n: int, **settings: Any) -> SamplingSettings:
        """The settings of a run repeating ``request`` ``n`` times (``settings``: the other
        fields; the web page, which has no model loaded when a job is submitted, names the
        model and precision itself)."""
        return cls(n=n, **_request_fields(request), **settings)

    def __post_init__(self) -> None:
        # sequences as tuples, whoever built the settings (JSON gives lists), so two records
        # of one run compare equal; a valid-only run without a cap gets the default, 50·n
        for key in ("elements", "formula", "guide"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        if self.valid_only and self.max_draws is None:
            object.__setattr__(self, "max_draws", 50 * self.n)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> SamplingSettings:
        """The settings a ``run.json`` records, of any schema version (:func:`migrate_run_json`).

        Raises:
            InputError: not the run.json of a generation run (unknown or missing settings).
        """
        current = migrate_run_json(data)
        del current["schema_version"]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(current) - known)
        if unknown or "n" not in current:
            what = f"unknown settings {', '.join(unknown)}" if unknown else "no n"
            raise InputError(f"run.json is not the record of a generation run ({what})")
        return cls(**current)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        """The ``run.json`` of these settings: every field plus the schema version."""
        return json.loads(json.dumps({"schema_version": RUN_SCHEMA_VERSION, **asdict(self)}))

    def request(self) -> Request:
        """The request a single-request run repeats (validated as a new one would be).

        Raises:
            InputError: a run with one request per crystal (only their digest is recorded).
        """
        if self.elements is None:
            raise InputError(
                "the run was made with one element list per crystal; only their digest is "
                "recorded, so give the same requests again"
            )
        formula = None
        if self.formula:
            formula = "".join(f"{e}{c}" for e, c in zip(self.elements, self.formula, strict=True))
        return Request.parse(
            list(self.elements),
            formula=formula,
            band_gap=self.band_gap,
            magnetic=self.magnetic,
            stability=self.stability,
        )

    def options(self) -> dict[str, object]:
        """The sampling options of :meth:`~pccd.generator.Generator.iter_generate` (a sampler
        of None is left out: the model then uses its own default)."""
        options: dict[str, object] = {
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
            "repulsion": self.repulsion,
            "guide": None if self.guide is None else list(self.guide),
        }
        if self.sampler is not None:
            options["sampler"] = self.sampler
        return options


def model_name(pipeline: Generator) -> str:
    """The name a run records for its model (``name`` in its ``pccd.json``)."""
    return str(pipeline.meta.get("name", ""))


def precision_settings(precision: str) -> dict[str, str]:
    """How an experiment (CSP, reconstruction, discovery batch) records the network's
    precision in its ``run.json``: only when not float32, the layout those files have always
    had (generation runs record it in :class:`SamplingSettings`)."""
    return {} if precision == DEFAULT_PRECISION else {"precision": precision}


def check_experiment_settings(
    out_dir: str | Path,
    settings: Mapping[str, object],
    pipeline: Generator,
    *,
    source: str,
    model_label: str | None = None,
) -> None:
    """Record an experiment's settings in its ``run.json`` (CSP, reconstruction) with the
    split it ran on (``source``) and the model: its name (or ``model_label``), its training
    steps and a non-default precision, so a rerun with other weights or another split is
    refused instead of mixing two runs' results (:func:`~pccd.outputs.check_run_settings`)."""
    check_run_settings(
        out_dir,
        {
            **settings,
            "source": source,
            "model": model_label or model_name(pipeline),
            "model_steps": pipeline.meta.get("training", {}).get("steps"),
            **precision_settings(pipeline.precision),
        },
    )


def generate_to_directory(
    pipeline: Generator,
    requests: Request | Sequence[Request],
    n: int | None,
    out_dir: str | Path,
    *,
    batch_size: int = 100,
    on_batch: Callable[[list[Sample]], None] | None = None,
    relax: DecodeRelaxer | None = None,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Generate crystals into ``out_dir``: one CIF each plus ``summary.csv``.

    ``requests`` is one request repeated ``n`` times, or one request per crystal (``n`` None),
    e.g. element lists drawn from a split; ``options`` are the sampling fields of
    :class:`SamplingSettings` (sampler, steps, guidance_scale, guide, repulsion, seed). The
    Python form of :func:`generate_run` with ``SamplingSettings.of(...)``.
    """
    settings = SamplingSettings.of(pipeline, requests, n, batch_size=batch_size, relax=relax,
                                   **options)  # fmt: skip
    return generate_run(
        pipeline, settings, out_dir, requests=requests, on_batch=on_batch, relax=relax,
        progress=progress,
    )  # fmt: skip


def generate_valid_to_directory(
    pipeline: Generator,
    request: Request,
    n: int,
    out_dir: str | Path,
    *,
    max_draws: int | None = None,
    batch_size: int = 100,
    on_batch: Callable[[list[Sample]], None] | None = None,
    progress: bool = False,
    **options: Any,
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
    ``options`` as for :func:`generate_to_directory`; the Python form of :func:`generate_run`
    with ``valid_only`` settings.
    """
    settings = SamplingSettings.of(
        pipeline, request, n, batch_size=batch_size, valid_only=True, max_draws=max_draws,
        **options,
    )  # fmt: skip
    return generate_run(pipeline, settings, out_dir, on_batch=on_batch, progress=progress)


def generate_run(
    pipeline: Generator,
    settings: SamplingSettings,
    out_dir: str | Path,
    *,
    requests: Request | Sequence[Request] | None = None,
    on_batch: Callable[[list[Sample]], None] | None = None,
    relax: DecodeRelaxer | None = None,
    progress: bool = False,
) -> Path:
    """Make (or resume) the run ``settings`` describe in ``out_dir``; return its summary.

    Files are written as each batch is decoded. Rerunning with the same settings resumes after
    the last complete batch and never rewrites finished rows; other settings are refused
    (:func:`~pccd.outputs.check_run_settings`, older run.json files through
    :func:`migrate_run_json`). ``requests`` may be omitted for a run that repeats one request
    (the settings hold it); a run with one request per crystal needs them. ``relax`` (a
    :class:`~pccd.screen.decode_relax.DecodeRelaxer`, the one whose settings ``settings.relax``
    records) relaxes each decoded batch before its rows are written: relaxed CIFs in
    ``relaxed/``, raw and relaxed energies and the reason of any failure in extra summary
    columns. With ``valid_only`` it samples until ``n`` crystals pass
    (:func:`generate_valid_to_directory` says how).
    """
    if settings.model != model_name(pipeline) or settings.precision != pipeline.precision:
        raise InputError(
            f"the run's settings name model {settings.model!r} at {settings.precision}; the "
            f"loaded model is {model_name(pipeline)!r} at {pipeline.precision}"
        )
    if (None if relax is None else relax.settings()) != settings.relax:
        raise ValueError("relax must be the relaxer whose settings the run records")  # a bug
    if requests is None:
        requests = settings.request()
    if isinstance(requests, Request):
        if any(getattr(settings, k) != v for k, v in _request_fields(requests).items()):
            raise ValueError("requests are not the request the settings record")  # a bug
        requests = [requests] * settings.n
    else:
        requests = list(requests)
        if settings.elements is None and settings.requests_sha256 != _requests_digest(requests):
            raise ValueError("requests are not those whose digest the settings record")  # a bug
    for request in set(requests):  # refuse before run.json is written
        pipeline.check_request(request)
    pipeline.check_options(**settings.options())
    if settings.n < 1 or settings.batch_size < 1:
        raise InputError(
            f"need n ≥ 1 and batch size ≥ 1, got n={settings.n}, batch size={settings.batch_size}"
        )
    if settings.valid_only:
        return _generate_valid(pipeline, settings, requests[0], Path(out_dir), on_batch, progress)
    out = Path(out_dir)
    check_run_settings(out, settings.to_json(), migrate=migrate_run_json)
    # relaxation columns only with relax: summaries of runs without it keep their columns
    columns = SUMMARY_COLUMNS if relax is None else SUMMARY_COLUMNS + RELAX_COLUMNS
    table = ResultTable(out / "summary.csv", columns, key="id")
    n, batch_size = settings.n, settings.batch_size
    width = len(str(max(n - 1, 1)))
    start = _resume_start(table, n, batch_size, width)
    batches = pipeline.iter_generate(
        requests, batch_size=batch_size, start=start, progress=progress, **settings.options()
    )
    for batch in batches:
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


def _generate_valid(
    pipeline: Generator,
    settings: SamplingSettings,
    request: Request,
    out: Path,
    on_batch: Callable[[list[Sample]], None] | None,
    progress: bool,
) -> Path:
    """:func:`generate_run` of a ``valid_only`` run (see :func:`generate_valid_to_directory`)."""
    n, cap = settings.n, settings.max_draws
    assert cap is not None  # valid-only settings always have a cap (SamplingSettings)
    # batches of at most n: a batch is sampled and decoded whole, so `-n 2` with the default
    # batch of 100 made 100 crystals to keep 2 (15 s instead of 2). This size, the seed and k
    # fix sample k, as batch_size does for the other runs
    batch_size = min(settings.batch_size, n)
    if cap < n:
        raise InputError(f"max draws ({cap}) must be at least n ({n})")
    check_run_settings(out, settings.to_json(), migrate=migrate_run_json)
    table = ResultTable(out / "summary.csv", SUMMARY_COLUMNS, key="id")
    width = len(str(max(cap - 1, 1)))

    def accepted() -> int:
        return sum(1 for r in table.rows.values() if r["status"] == "ok")

    n_ok = accepted()
    drawn = min(_resume_start(table, cap, batch_size, width), cap)
    while n_ok < n and drawn < cap:
        size = min(batch_size, cap - drawn)
        chunk = [request] * (drawn + size)
        batches = pipeline.iter_generate(
            chunk, batch_size=batch_size, start=drawn, progress=progress, **settings.options()
        )
        for batch in batches:
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


def _request_fields(request: Request) -> dict[str, object]:
    """The request fields of :class:`SamplingSettings` for a run repeating ``request``."""
    return {
        "elements": tuple(e.symbol for e in request.elements),
        "formula": request.formula,
        "band_gap": request.band_gap,
        "magnetic": request.magnetic,
        "stability": request.stability,
    }


def _requests_digest(requests: Sequence[Request]) -> str:
    """The digest a run with one request per crystal records. Its text is fixed: a request
    without stability hashes as it did before stability existed, so recorded digests match."""
    text = json.dumps(
        [
            [[e.symbol for e in r.elements], r.formula, r.band_gap, r.magnetic]
            + ([r.stability] if r.stability is not None else [])
            for r in requests
        ],
        default=list,
    )
    return hashlib.sha256(text.encode()).hexdigest()
