"""The paper's three discovery batches (Table 2, Fig. 4): draw element lists, generate, screen.

Element pools (the paper names them only in words, so the lists are ours and fixed here):

* pool 1, "all": every element up to Bi (Z ≤ 83) except the noble gases and the radioactive
  Tc and Pm;
* pool 2, "rare-earth, alkaline-earth, transition metals and oxygen": Sc, Y, La–Lu (no Pm),
  Be–Ba, the 3d/4d/5d transition metals (no Tc), and O;
* pool 3, "common elements": 22 abundant, inexpensive, non-toxic elements that recur in the
  paper's confirmed hits (Ca2SnO4, LiMg6, MgSc2O4): H, Li, B, C, N, O, F, Na, Mg, Al, Si, P,
  S, Cl, K, Ca, Ti, Mn, Fe, Cu, Zn, Sn.

Each batch draws ``lists`` element lists of 1–3 elements (size drawn with ``size_weights``),
generates ``per_list`` crystals for each, screens them, and writes ``batch<N>.csv`` like the
paper's supplementary tables plus the Table 2 statistics and the Fig. 4 histogram.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
from pymatgen.core import Element

from pccd import progress
from pccd.errors import InputError
from pccd.generator import Request
from pccd.outputs import check_run_settings
from pccd.runs import generate_to_directory, precision_settings
from pccd.screen.screening import screen_directory, share_statistics

_log = logging.getLogger(__name__)

NOBLE_GASES = {"He", "Ne", "Ar", "Kr", "Xe", "Rn"}
RADIOACTIVE = {"Tc", "Pm"}  # and everything beyond Bi (Z > 83)
RARE_EARTHS = ["Sc", "Y"] + [Element.from_Z(z).symbol for z in range(57, 72) if z != 61]
ALKALINE_EARTHS = ["Be", "Mg", "Ca", "Sr", "Ba"]
TRANSITION_METALS = [
    Element.from_Z(z).symbol
    for z in [*range(21, 31), *range(39, 49), *range(72, 81)]
    if Element.from_Z(z).symbol not in RADIOACTIVE
]
COMMON = [
    "H", "Li", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si",
    "P", "S", "Cl", "K", "Ca", "Ti", "Mn", "Fe", "Cu", "Zn", "Sn",
]  # fmt: skip


def pool(number: int) -> list[str]:
    """The element pool of batch ``number`` (1, 2 or 3), sorted by atomic number."""
    if number == 1:
        symbols = [Element.from_Z(z).symbol for z in range(1, 84)]
        chosen = [s for s in symbols if s not in NOBLE_GASES | RADIOACTIVE]
    elif number == 2:
        chosen = list({*RARE_EARTHS, *ALKALINE_EARTHS, *TRANSITION_METALS, "O"})
    elif number == 3:
        chosen = list(COMMON)
    else:
        raise InputError(f"batch pools are 1, 2 or 3, got {number}")
    return sorted(chosen, key=lambda s: Element(s).Z)


@dataclass(frozen=True)
class BatchSettings:
    """Size and draw of one batch (recorded in run.json)."""

    pool: int = 1
    lists: int = 50
    per_list: int = 2
    size_weights: tuple[float, float, float] = (0.05, 0.35, 0.60)  # 1, 2, 3 elements
    seed: int = 0


def distinct_lists(settings: BatchSettings) -> int:
    """How many distinct element lists the pool holds (sizes with a non-zero weight)."""
    n = len(pool(settings.pool))
    return sum(
        math.comb(n, size) for size, w in zip((1, 2, 3), settings.size_weights, strict=True) if w
    )


def check_batch_settings(settings: BatchSettings) -> None:
    """Raise ``ValueError`` for settings no batch can satisfy (before any work is done)."""
    pool(settings.pool)
    if settings.lists < 1:
        raise InputError(f"--lists must be ≥ 1, got {settings.lists}")
    if settings.per_list < 1:
        raise InputError(f"--per-list must be ≥ 1, got {settings.per_list}")
    weights = settings.size_weights
    if len(weights) != 3 or any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise InputError(f"size weights must be 3 non-negative numbers, got {weights}")
    available = distinct_lists(settings)
    if settings.lists > available:
        raise InputError(
            f"--lists {settings.lists} is more than pool {settings.pool} holds: it has "
            f"{available} distinct element lists of 1–3 elements; use --lists {available} or fewer"
        )


def draw_element_lists(settings: BatchSettings) -> list[list[str]]:
    """``settings.lists`` distinct element lists from the pool (seeded)."""
    check_batch_settings(settings)
    elements = pool(settings.pool)
    rng = np.random.default_rng(settings.seed)
    weights = np.asarray(settings.size_weights, dtype=float)
    weights /= weights.sum()
    seen: set[tuple[str, ...]] = set()
    out: list[list[str]] = []
    while len(out) < settings.lists:
        size = int(rng.choice([1, 2, 3], p=weights))
        picked = tuple(sorted(rng.choice(elements, size=size, replace=False).tolist()))
        if picked in seen:
            continue
        seen.add(picked)
        out.append(list(picked))
    return out


BATCH_COLUMNS = (
    "id",
    "elements",
    "formula",
    "atoms",
    "space_group",
    "e_above_hull",
    "decomposition",
    "novel",
    "known_id",
    "unique",
    "sun",
    "status",
    "reason",
)


def batch_statistics(rows: list[dict[str, str]]) -> dict[str, object]:
    """Table 2 figures: shares below 0.25 and 0.08 eV/atom, novel and S.U.N.

    Every share counts every generated crystal: a decode or relaxation failure is a miss and is
    listed by kind under ``failures``. The shares over crystals screened to an E_hull (the
    paper's denominator, its DFT-computed structures) are kept apart under ``of_relaxed``.
    """
    return {"generated": len(rows), **share_statistics(rows)}


def plot_histogram(rows: list[dict[str, str]], path: Path, title: str) -> None:
    """E_hull histogram split into new and known crystals (the paper's Fig. 4)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pyplot only after its backend is Agg: never a window

    new = [float(r["e_above_hull"]) for r in rows if r["e_above_hull"] and r["novel"] == "True"]
    known = [float(r["e_above_hull"]) for r in rows if r["e_above_hull"] and r["novel"] != "True"]
    data = new + known
    hi = min(max(data, default=1.0), 2.0)
    bins = np.linspace(min(min(data, default=0.0), 0.0), hi, 30)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist([np.clip(new, None, hi), np.clip(known, None, hi)], bins=bins, stacked=True,
            label=[f"new ({len(new)})", f"known ({len(known)})"])  # fmt: skip
    for x in (0.08, 0.25):
        ax.axvline(x, color="k", ls="--", lw=0.8)
    ax.set_xlabel("E above hull (eV/atom, MLIP; clipped at 2)")
    ax.set_ylabel("crystals")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_batch(
    pipeline,
    out_dir: str | Path,
    settings: BatchSettings,
    screen_settings,
    *,
    workers: int = 1,
    sampler: str = "ddim",
    steps: int | None = None,
    log=_log.info,
    device: str | None = None,
    dask=None,
    relax_batch_size: int | None = None,
) -> dict[str, object]:
    """Generate and screen one batch into ``out_dir``; resumable at every stage.

    Writes ``generated/`` (CIFs + summary.csv), ``screen/`` (screen.csv, relaxed/),
    ``batch<N>.csv``, ``batch<N>.json`` (statistics) and ``batch<N>_ehull.png``.
    ``dask`` (a scheduler address) and ``relax_batch_size`` go to
    :func:`~pccd.screen.screening.screen_directory`.
    """
    check_batch_settings(settings)
    out = Path(out_dir)
    check_run_settings(
        out,
        {
            **asdict(settings),
            "sampler": sampler,
            "steps": steps,
            **precision_settings(pipeline.precision),
        },
    )
    lists = draw_element_lists(settings)
    requests = [Request.parse(els) for els in lists for _ in range(settings.per_list)]
    gen_dir = out / "generated"
    with progress.bar(len(requests), "generated", "crystal") as pbar:
        summary = generate_to_directory(
            pipeline, requests, None, gen_dir, batch_size=50, sampler=sampler, steps=steps,
            seed=settings.seed, on_batch=lambda batch: pbar.update(len(batch)),
        )  # fmt: skip
    log(f"generated {len(requests)} crystals into {gen_dir}")
    screen_csv = screen_directory(
        gen_dir, out / "screen", screen_settings, workers=workers, device=device,
        progress=lambda done, total: _log.debug("screened %d/%d", done, total),
        dask=dask, relax_batch_size=relax_batch_size,
    )  # fmt: skip
    with screen_csv.open(newline="") as fh:
        screened = {r["id"]: r for r in csv.DictReader(fh)}  # keyed by CIF file stem
    with summary.open(newline="") as fh:
        generated = list(csv.DictReader(fh))
    rows = []
    for gen in generated:
        s = screened.get(Path(gen["cif"]).stem, {}) if gen["cif"] else {}
        row = {c: s.get(c, "") for c in BATCH_COLUMNS}
        row.update(id=gen["id"], elements=gen["elements"])
        if gen["status"] != "ok":
            row.update(status=gen["status"], reason=gen["reason"])
        rows.append(row)
    name = f"batch{settings.pool}"
    with (out / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=BATCH_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    stats = {**batch_statistics(rows), "settings": asdict(settings), "mlip": screen_settings.mlip}
    (out / f"{name}.json").write_text(json.dumps(stats, indent=2))
    plot_histogram(rows, out / f"{name}_ehull.png", f"Batch {settings.pool}: E_hull (MLIP proxy)")
    return stats
