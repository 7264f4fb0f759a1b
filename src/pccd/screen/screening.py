"""Screen a directory of crystals: relax, E_hull, novelty, uniqueness, S.U.N.

One row per crystal is appended to ``screen.csv`` as soon as it is finished (relaxed CIFs go to
``relaxed/``), so an interrupted screen keeps its work and a rerun skips finished crystals.
Relaxations, the expensive part, run in ``workers`` processes or as tasks on a Dask cluster
(``dask``); hull, novelty and uniqueness are cheap and run in the parent (the Dask client),
which owns the output files, so a distributed screen resumes exactly like a local one.
The relaxation engine is per-crystal ASE FIRE (``"ase"``) or the lockstep batch of
:mod:`pccd.screen.batched` (``"batched"``), which classifies failures identically.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
from pymatgen.core import Structure

from pccd import progress as progress_bars
from pccd.errors import IncompleteRun, InputError, MissingInputError
from pccd.evaluate.geometry import describe_structure
from pccd.evaluate.novelty import ReferenceIndex
from pccd.mlip import MLIP, MLIPError
from pccd.outputs import ResultTable, check_run_settings, list_cifs
from pccd.screen.batched import relax_many
from pccd.screen.engines import DEFAULT_BATCH_SIZE, DEFAULT_RELAX_ENGINE, RELAX_ENGINES
from pccd.screen.hull import ConvexHull, HullError
from pccd.screen.references import ReferenceEnergies
from pccd.screen.relax import Relaxation, RelaxationError, relax

_log = logging.getLogger(__name__)

SCREEN_COLUMNS = (
    "id",
    "formula",
    "atoms",
    "status",
    "reason",
    "converged",
    "steps",
    "energy_per_atom",
    "e_above_hull",
    "decomposition",
    "rmsd",
    "volume_change",
    "space_group",
    "novel",
    "known_id",
    "unique",
    "duplicate_of",
    "sun",
    "seconds",
)
#: E_hull (eV/atom) below which a crystal counts as stable for S.U.N. (the CDVAE/MatterGen rule)
SUN_THRESHOLD = 0.1


@dataclass(frozen=True)
class ScreenSettings:
    """What determines a screen's results (recorded in run.json; a rerun must match)."""

    mlip: str = "chgnet"
    fmax: float = 0.05
    max_steps: int = 500
    reference: str | None = None
    # "batched" (pccd.screen.batched, the default) or "ase" (per-crystal FIRE, the original)
    relax_engine: str = DEFAULT_RELAX_ENGINE

    def recorded(self) -> dict[str, object]:
        """The settings as run.json records them. ``"ase"`` is left out, as runs made before the
        engine option existed recorded it, so they resume with ``--relax-engine ase``."""
        out = asdict(self)
        if out["relax_engine"] == "ase":
            del out["relax_engine"]
        return out


class ScreenIncomplete(IncompleteRun):
    """Some crystals got no row (a Dask task lost for good); a rerun screens just those."""


@dataclass(frozen=True)
class RelaxFailure:
    """A failed relaxation as it comes back from a worker: the reason and the time it took."""

    reason: str
    seconds: float | None = None

    @classmethod
    def of(cls, exc: BaseException) -> RelaxFailure:
        return cls(str(exc), getattr(exc, "seconds", None))


Outcome = Relaxation | RelaxFailure


def _check_engine(engine: str) -> None:
    if engine not in RELAX_ENGINES:
        raise InputError(f"unknown relaxation engine {engine!r}; use one of {RELAX_ENGINES}")


# ---- worker side: one MLIP per process ----------------------------------------------------
_WORKER_MLIP: MLIP | None = None


def _init_worker(mlip_name: str, threads: int, device: str | None = None) -> None:
    global _WORKER_MLIP
    if threads:
        torch.set_num_threads(threads)
    _WORKER_MLIP = MLIP(mlip_name, device=device)


def _relax_job(structure: Structure, fmax: float, max_steps: int) -> Outcome:
    """Relax in a worker; a failure comes back as a :class:`RelaxFailure`, never raised."""
    assert _WORKER_MLIP is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return relax(structure, _WORKER_MLIP, fmax=fmax, max_steps=max_steps)
    except (RelaxationError, MLIPError) as exc:
        return RelaxFailure.of(exc)


def _relax_chunk_with(
    mlip: MLIP,
    items: Sequence[tuple[str, Structure]],
    fmax: float,
    max_steps: int,
    engine: str,
    batch_size: int,
) -> list[tuple[str, Outcome]]:
    """Relax a chunk of crystals with one engine; failures come back as values."""
    out: list[tuple[str, Outcome]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if engine == "batched":
            for ident, result in relax_many(
                items, mlip, fmax=fmax, max_steps=max_steps, batch_size=batch_size
            ):
                failed = isinstance(result, Exception)
                out.append((ident, RelaxFailure.of(result) if failed else result))
            return out
        for ident, structure in items:
            try:
                out.append((ident, relax(structure, mlip, fmax=fmax, max_steps=max_steps)))
            except (RelaxationError, MLIPError) as exc:
                out.append((ident, RelaxFailure.of(exc)))
    return out


def _relax_chunk(
    items: Sequence[tuple[str, Structure]],
    fmax: float,
    max_steps: int,
    engine: str,
    batch_size: int,
) -> list[tuple[str, Outcome]]:
    """A chunk in a local worker process (its MLIP comes from :func:`_init_worker`)."""
    assert _WORKER_MLIP is not None
    return _relax_chunk_with(_WORKER_MLIP, items, fmax, max_steps, engine, batch_size)


# ---- Dask worker side: one MLIP per worker thread (ASE calculators are not thread-safe) ---
_DASK_LOCAL = threading.local()


def _dask_relax_chunk(
    items: Sequence[tuple[str, Structure]],
    mlip_name: str,
    device: str | None,
    threads: int,
    fmax: float,
    max_steps: int,
    engine: str,
    batch_size: int,
) -> list[tuple[str, Outcome]]:
    """The Dask task: relax a chunk on whatever worker runs it (MLIP loaded once there)."""
    cache = getattr(_DASK_LOCAL, "mlips", None)
    if cache is None:
        cache = _DASK_LOCAL.mlips = {}
    key = (mlip_name, device)
    if key not in cache:
        if threads:
            torch.set_num_threads(threads)
        cache[key] = MLIP(mlip_name, device=device)
    return _relax_chunk_with(cache[key], items, fmax, max_steps, engine, batch_size)


def _chunks(items: list, size: int) -> list[list]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def _outcomes_dask(
    address,
    runnable: list[tuple[str, Structure]],
    settings: ScreenSettings,
    *,
    device: str | None,
    threads: int,
    batch_size: int,
    lost: list[str],
) -> Iterator[tuple[str, Outcome]]:
    """Submit the relaxations to a Dask scheduler and yield results as they arrive.

    ``address`` is a scheduler address (``tcp://host:8786``) or a ``distributed.Client``.
    A task whose worker dies is rerun elsewhere by the scheduler; a task that fails for good
    (``KilledWorker`` after repeated deaths) leaves its crystals in ``lost``.
    """
    try:
        from distributed import Client, as_completed  # optional extra: screen (Dask)
    except ImportError as exc:
        raise ImportError(
            f"--dask needs the distributed package ({exc}); install the screening extra: "
            'pip install -e ".[screen]"'
        ) from exc
    own = not isinstance(address, Client)
    try:
        client = Client(address, timeout="30s") if own else address
    except (OSError, TimeoutError) as exc:
        raise InputError(f"--dask {address}: cannot reach a Dask scheduler there ({exc})") from exc
    try:
        size = batch_size if settings.relax_engine == "batched" else 1
        run = uuid.uuid4().hex[:8]
        futures = {}
        for chunk in _chunks(runnable, size):
            fut = client.submit(
                _dask_relax_chunk, chunk, settings.mlip, device, threads, settings.fmax,
                settings.max_steps, settings.relax_engine, batch_size,
                key=f"pccd-relax-{run}-{chunk[0][0]}", pure=False,
            )  # fmt: skip
            futures[fut] = [ident for ident, _ in chunk]
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except Exception as exc:  # KilledWorker, a lost scheduler, a bug on the worker
                _log.debug("dask task for %s failed: %s", ", ".join(futures[fut]), exc)
                lost.extend(f"{ident} ({type(exc).__name__})" for ident in futures[fut])
                continue
            yield from results
    finally:
        if own:
            client.close()


# ---- parent side ----------------------------------------------------------------------------
def read_inputs(directory: str | Path) -> Iterator[tuple[str, Structure | str]]:
    """(id, Structure or the reason it cannot be read) for each CIF directly in ``directory``."""
    for path in list_cifs(directory):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structure = Structure.from_file(path)
        except Exception as exc:  # pymatgen raises many types on malformed CIFs
            yield path.stem, f"unreadable CIF {path.name}: {exc}"
            continue
        if not structure.is_ordered:
            yield path.stem, f"{path.name} has partial occupancies"
        else:
            yield path.stem, structure


class Screener:
    """Everything after the relaxation: hull, novelty and within-run uniqueness.

    Args:
        mlip: the MLIP the relaxed energies came from (selects the reference table).
        reference: reference CSV (``mp_reference.csv.gz``) for novelty and for computing
            reference energies the shipped table lacks; without it novelty is not assessed.
    """

    def __init__(self, mlip: MLIP, reference: str | Path | None = None):
        self.mlip = mlip
        self.reference = reference
        self.energies = ReferenceEnergies(mlip)
        self.hull = ConvexHull(self.energies)
        self.known = ReferenceIndex.from_csv(reference) if reference else None
        self.seen = ReferenceIndex([])

    def assess(self, ident: str, relaxation: Relaxation) -> dict[str, object]:
        """Row fields for a relaxed crystal; registers it for later uniqueness checks."""
        s = relaxation.structure
        elements = [el.symbol for el in s.composition.elements]
        row: dict[str, object] = {
            "status": "ok",
            "converged": relaxation.converged,
            "steps": relaxation.steps,
            "energy_per_atom": f"{relaxation.energy_per_atom:.5f}",
            "rmsd": f"{relaxation.rmsd:.4f}",
            "volume_change": f"{relaxation.volume_change:.4f}",
            "space_group": describe_structure(s)["space_group"],
            "seconds": f"{relaxation.seconds:.2f}",
        }
        e_hull = math.nan
        try:
            if self.reference is not None:
                self.energies.ensure(elements, self.reference)
            result = self.hull.e_above_hull(s.composition, relaxation.energy_per_atom)
            e_hull = result.e_above_hull
            row.update(e_above_hull=f"{e_hull:.5f}", decomposition=result.decomposition_str)
        except HullError as exc:
            row.update(status="no_hull", reason=str(exc))
        duplicate = self.seen.find(s)
        row.update(unique=duplicate is None, duplicate_of=duplicate or "")
        if duplicate is None:
            self.seen.add(ident, s)
        if self.known is not None:
            known_id = self.known.find(s)
            row.update(novel=known_id is None, known_id=known_id or "")
            row["sun"] = bool(e_hull <= SUN_THRESHOLD and duplicate is None and known_id is None)
        return row


def screen_directory(
    directory: str | Path,
    out_dir: str | Path,
    settings: ScreenSettings = ScreenSettings(),
    workers: int = 1,
    threads_per_worker: int = 1,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    device: str | None = None,
    dask=None,
    relax_batch_size: int | None = None,
) -> Path:
    """Screen every CIF in ``directory`` into ``out_dir`` (screen.csv, relaxed/, summary.json).

    The resolved input directory is part of the run's settings, so a rerun on another input
    is refused instead of mixing two inputs in one screen.csv. ``device`` is the MLIP's torch
    device (None: automatic). ``dask`` is a Dask scheduler address (or a
    ``distributed.Client``): relaxations then run as tasks on its workers (``workers`` is not
    used) and rows are written here as results arrive. ``relax_batch_size`` is the number of
    crystals relaxed together by the ``batched`` engine (default 16; also the Dask task size).
    Returns the path of ``screen.csv``; raises :class:`ScreenIncomplete` (after writing every
    finished row) when Dask tasks were lost for good.
    """
    source = Path(directory)
    if not source.is_dir():
        raise MissingInputError(f"{source}: no such directory (the CIFs to screen)")
    if workers < 1:
        raise InputError(f"workers must be ≥ 1, got {workers}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be ≥ 1, got {limit}")
    _check_engine(settings.relax_engine)
    batch_size = DEFAULT_BATCH_SIZE if relax_batch_size is None else relax_batch_size
    if batch_size < 1:
        raise InputError(f"relax batch size must be ≥ 1, got {batch_size}")
    inputs = list(read_inputs(source))
    if limit is not None:
        inputs = inputs[:limit]
    out = Path(out_dir)
    check_run_settings(out, {**settings.recorded(), "input": str(source.resolve())})
    table = ResultTable(out / "screen.csv", SCREEN_COLUMNS, key="id")
    relaxed_dir = out / "relaxed"
    relaxed_dir.mkdir(parents=True, exist_ok=True)
    mlip = MLIP(settings.mlip, device=device)
    screener = Screener(mlip, settings.reference)
    for ident, row in table.rows.items():  # earlier crystals keep counting for uniqueness
        cif = relaxed_dir / f"{ident}.cif"
        if row["unique"] == "True" and cif.exists():
            screener.seen.add(ident, Structure.from_file(cif))

    todo = [(i, s) for i, s in inputs if i not in table]
    total, done = len(inputs), len(inputs) - len(todo)
    pbar = progress_bars.bar(total, "screened", "crystal", initial=done)

    def record(ident: str, item: Structure | str, outcome: Outcome | str | None) -> None:
        nonlocal done
        if ident in table:  # never two rows for one crystal (a result delivered twice)
            return
        row: dict[str, object] = {"id": ident}
        if isinstance(item, Structure):
            row.update(formula=item.composition.reduced_formula, atoms=len(item))
        if isinstance(item, str):
            row.update(status="unreadable", reason=item)
        elif isinstance(outcome, RelaxFailure | str):
            failure = outcome if isinstance(outcome, RelaxFailure) else RelaxFailure(outcome)
            row.update(status="relax_failed", reason=failure.reason)
            if failure.seconds is not None:  # failures count in the throughput too
                row["seconds"] = f"{failure.seconds:.2f}"
        else:
            assert outcome is not None
            outcome.structure.to(filename=str(relaxed_dir / f"{ident}.cif"))
            row.update(screener.assess(ident, outcome))
        table.append(row)
        done += 1
        pbar.update(1)
        if progress is not None:
            progress(done, total)

    runnable = [(i, s) for i, s in todo if isinstance(s, Structure)]
    structures = dict(runnable)
    for ident, item in todo:
        if isinstance(item, str):
            record(ident, item, None)
    engine = settings.relax_engine
    lost: list[str] = []
    if dask is not None:
        outcomes = _outcomes_dask(
            dask, runnable, settings, device=device, threads=threads_per_worker,
            batch_size=batch_size, lost=lost,
        )  # fmt: skip
        for ident, outcome in outcomes:
            record(ident, structures[ident], outcome)
    elif workers <= 1:
        _init_worker(settings.mlip, threads_per_worker, device)
        if engine == "batched":  # streamed: each row is written as its crystal finishes
            assert _WORKER_MLIP is not None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for ident, result in relax_many(
                    runnable, _WORKER_MLIP, fmax=settings.fmax, max_steps=settings.max_steps,
                    batch_size=batch_size,
                ):  # fmt: skip
                    outcome = RelaxFailure.of(result) if isinstance(result, Exception) else result
                    record(ident, structures[ident], outcome)
        else:
            for ident, s in runnable:
                record(ident, s, _relax_job(s, settings.fmax, settings.max_steps))
    else:
        ctx = get_context("spawn")  # torch and fork do not mix
        # ase: one crystal per job; batched: a chunk per job, at most a batch, spread over workers
        size = 1 if engine == "ase" else max(1, min(batch_size, -(-len(runnable) // workers)))
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(settings.mlip, threads_per_worker, device),
        ) as pool:
            pending = {}
            args = (settings.fmax, settings.max_steps, engine, batch_size)
            for chunk in _chunks(runnable, size):  # keep at most 2 jobs per worker in flight
                pending[pool.submit(_relax_chunk, chunk, *args)] = chunk
                if len(pending) >= 2 * workers:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        pending.pop(fut)
                        for ident, outcome in fut.result():
                            record(ident, structures[ident], outcome)
            for fut in list(pending):
                pending.pop(fut)
                for ident, outcome in fut.result():
                    record(ident, structures[ident], outcome)
    pbar.close()
    summary = summarize_screen(table.path)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if lost:
        raise ScreenIncomplete(
            f"{len(lost)} crystal(s) got no row because their Dask tasks failed for good "
            f"({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''}; -v shows why); the "
            f"other rows are in {table.path}: rerun the same command to screen just those"
        )
    return table.path


def failure_kind(status: str, reason: str) -> str:
    """A short label for why a row got no E_hull (the full reason stays in the row)."""
    if status == "relax_failed":
        for needle, kind in (
            ("collapsed", "collapsed"),
            ("input volume", "implausible input volume"),
            ("blew up", "blew up"),
            ("non-finite", "non-finite energy or positions"),
            ("MLIP hole", "MLIP hole (energy below any real phase)"),
            (" failed: ", "MLIP error"),
        ):
            if needle in reason:
                return kind
        return "relaxation failed (other)"
    return {"unreadable": "unreadable CIF", "no_hull": "no hull"}.get(status, status)


def share_statistics(rows: Sequence[dict[str, str]]) -> dict[str, object]:
    """Shares of screen rows, **over every row**: a crystal without an E_hull (a failed
    decode, relaxation or hull) counts as a miss and is listed under ``failures`` by kind.

    The same shares over the crystals that got an E_hull only (the paper's denominator for its
    DFT-computed structures) are kept apart under ``of_relaxed``.
    """
    n = len(rows)
    with_hull = [r for r in rows if r.get("e_above_hull")]
    hulls = [float(r["e_above_hull"]) for r in with_hull]
    assessed = any(r.get("novel") for r in rows)  # novelty needs a reference set
    failures: dict[str, int] = {}
    for r in rows:
        if not r.get("e_above_hull"):
            kind = failure_kind(r.get("status", ""), r.get("reason", ""))
            failures[kind] = failures.get(kind, 0) + 1

    def shares(denominator: int) -> dict[str, float | None]:
        def share(count: int) -> float | None:
            return count / denominator if denominator else None

        return {
            "e_hull_below_0.25": share(sum(h < 0.25 for h in hulls)),
            "e_hull_below_0.08": share(sum(h < 0.08 for h in hulls)),
            "e_hull_below_0.1": share(sum(h <= SUN_THRESHOLD for h in hulls)),
            "novel": share(sum(r["novel"] == "True" for r in with_hull)) if assessed else None,
            "unique": share(sum(r.get("unique") == "True" for r in with_hull)),
            "sun": share(sum(r["sun"] == "True" for r in with_hull)) if assessed else None,
        }

    return {
        "with_e_hull": len(with_hull),
        "failed": n - len(with_hull),
        "failures": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
        **shares(n),
        "of_relaxed": {
            "crystals": len(with_hull),
            **shares(len(with_hull)),
            "e_hull_median": statistics.median(hulls) if hulls else None,
        },
    }


def summarize_screen(path: str | Path) -> dict[str, object]:
    """Counts and rates of a screen.csv; every share counts every crystal (failures as misses,
    listed by kind under ``failures``); ``of_relaxed`` holds the shares over crystals with an
    E_hull only. ``median_seconds_per_crystal`` includes failed relaxations (they carry their
    wall time)."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    seconds = [float(r["seconds"]) for r in rows if r["seconds"]]
    status: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return {
        "crystals": len(rows),
        "status": status,
        "converged": sum(r["converged"] == "True" for r in rows),
        **share_statistics(rows),
        "median_seconds_per_crystal": statistics.median(seconds) if seconds else None,
    }
