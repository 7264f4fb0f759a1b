"""Screen a directory of crystals: relax, E_hull, novelty, uniqueness, S.U.N.

One row per crystal is appended to ``screen.csv`` as soon as it is finished (relaxed CIFs go to
``relaxed/``), so an interrupted screen keeps its work and a rerun skips finished crystals.
Relaxations, the expensive part, run in ``workers`` processes; hull, novelty and uniqueness are
cheap and run in the parent, which owns the output files.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from pymatgen.core import Structure

from pccd.evaluate.novelty import ReferenceIndex
from pccd.mlip import MLIP, MLIPError
from pccd.outputs import ResultTable, check_run_settings
from pccd.screen.hull import ConvexHull, HullError
from pccd.screen.references import ReferenceEnergies
from pccd.screen.relax import Relaxation, RelaxationError, relax

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


# ---- worker side: one MLIP per process ----------------------------------------------------
_WORKER_MLIP: MLIP | None = None


def _init_worker(mlip_name: str, threads: int, device: str | None = None) -> None:
    global _WORKER_MLIP
    import torch

    if threads:
        torch.set_num_threads(threads)
    _WORKER_MLIP = MLIP(mlip_name, device=device)


def _relax_job(structure: Structure, fmax: float, max_steps: int) -> Relaxation | str:
    """Relax in a worker; a failure comes back as its reason, never as an exception."""
    assert _WORKER_MLIP is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return relax(structure, _WORKER_MLIP, fmax=fmax, max_steps=max_steps)
    except (RelaxationError, MLIPError) as exc:
        return str(exc)


# ---- parent side ----------------------------------------------------------------------------
def read_inputs(directory: str | Path) -> Iterator[tuple[str, Structure | str]]:
    """(id, Structure or the reason it cannot be read) for each CIF directly in ``directory``."""
    from pccd.evaluate.denovo import list_cifs

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
        from pccd.evaluate.geometry import describe_structure

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
) -> Path:
    """Screen every CIF in ``directory`` into ``out_dir`` (screen.csv, relaxed/, summary.json).

    The resolved input directory is part of the run's settings, so a rerun on another input
    is refused instead of mixing two inputs in one screen.csv. ``device`` is the MLIP's torch
    device (None: automatic). Returns the path of ``screen.csv``.
    """
    from pccd import progress as progress_bars

    source = Path(directory)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such directory (the CIFs to screen)")
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit}")
    inputs = list(read_inputs(source))
    if limit is not None:
        inputs = inputs[:limit]
    out = Path(out_dir)
    check_run_settings(out, {**asdict(settings), "input": str(source.resolve())})
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

    def record(ident: str, item: Structure | str, outcome: Relaxation | str | None) -> None:
        nonlocal done
        row: dict[str, object] = {"id": ident}
        if isinstance(item, Structure):
            row.update(formula=item.composition.reduced_formula, atoms=len(item))
        if isinstance(item, str):
            row.update(status="unreadable", reason=item)
        elif isinstance(outcome, str):
            row.update(status="relax_failed", reason=outcome)
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
    for ident, item in todo:
        if isinstance(item, str):
            record(ident, item, None)
    if workers <= 1:
        _init_worker(settings.mlip, threads_per_worker, device)
        for ident, s in runnable:
            record(ident, s, _relax_job(s, settings.fmax, settings.max_steps))
    else:
        ctx = get_context("spawn")  # torch and fork do not mix
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(settings.mlip, threads_per_worker, device),
        ) as pool:
            pending = {}
            queue = iter(runnable)
            for ident, s in queue:  # keep at most 2 jobs per worker in flight
                pending[pool.submit(_relax_job, s, settings.fmax, settings.max_steps)] = (ident, s)
                if len(pending) >= 2 * workers:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        record(*pending.pop(fut), fut.result())
            for fut in list(pending):
                record(*pending.pop(fut), fut.result())
    pbar.close()
    summary = summarize_screen(table.path)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return table.path


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize_screen(path: str | Path) -> dict[str, object]:
    """Counts and rates of a screen.csv (shares are of crystals with an E_hull)."""
    import csv

    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    hulls = [float(r["e_above_hull"]) for r in rows if r["e_above_hull"]]
    with_hull = [r for r in rows if r["e_above_hull"]]
    novel = [r["novel"] == "True" for r in with_hull if r["novel"]]
    seconds = [float(r["seconds"]) for r in rows if r["seconds"]]
    status: dict[str, int] = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return {
        "crystals": len(rows),
        "status": status,
        "with_e_hull": len(hulls),
        "converged": sum(r["converged"] == "True" for r in rows),
        "e_hull_below_0.25": _rate([h < 0.25 for h in hulls]),
        "e_hull_below_0.08": _rate([h < 0.08 for h in hulls]),
        "e_hull_below_0.1": _rate([h <= SUN_THRESHOLD for h in hulls]),
        "e_hull_median": statistics.median(hulls) if hulls else None,
        "novel": _rate(novel),
        "unique": _rate([r["unique"] == "True" for r in with_hull]),
        "sun": _rate([r["sun"] == "True" for r in with_hull]) if novel else None,
        "median_seconds_per_crystal": statistics.median(seconds) if seconds else None,
    }
