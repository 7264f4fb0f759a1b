"""Does the band-gap condition steer generation? Predicted gaps per (gap, guidance) setting.

Usage:
    python benchmarks/band_gap_steering.py [--model pccd-cpu] [--lists 20] [--per-list 50]
        [--gaps 0,1.5,4] [--guidance 1,2,3,5] [--seed 0] [--repulsion TAU] [--threads 2]
        [--split ../shared/data/mp_pccd/val.csv.gz] [--out benchmarks/results/...jsonl]

Why: ``pccd generate --band-gap`` accepts a gap, and a condition nobody has measured is a
promise, not a feature. This benchmark asks for the same element lists at several band gaps and
classifier-free guidance scales and reads every raw sample with the shipped band-gap instrument
(:mod:`pccd.evaluate.band_gap`). Issue 15's target: asking for ≥ 3 eV instead of 0 raises the
predicted insulator share by ≥ 30 points at a guidance whose samples stay as plausible as the
guidance-1 ones (plausible share not more than 3 points below guidance 1's at the same gap —
a guidance that wrecks geometry is not a win, so the geometry figures sit beside every row).

Paired design: ``--lists`` element lists are drawn once from the split
(``CrystalTable.draw_element_lists(lists, seed)``), each requested ``--per-list`` times in the
same order, and every setting runs with the same ``seed`` and batch size. The pipeline seeds
each batch's starting noise from (seed, batch start), so gap 0 and gap 4 at one guidance start
from identical noise and differ only in the condition; per-list shares give a paired per-list
difference, bootstrapped over the lists for a 95% interval.

What the instrument can see: it reads the composition only (Magpie statistics; the shipped
option is ``composition``), and the element list is fixed by the request. Steering is therefore
visible to it only through stoichiometry within each element list (e.g. MnO vs Mn3O4 vs MnO2);
a model that changes a crystal's structure but not its formula reads as no change, and a list
whose every stoichiometry reads as metal cannot move at all. The figures are a lower bound on
what the condition does to structures, measured by an instrument with its own error (91.1%
metal / non-metal accuracy on val, BENCHMARKS.md).

How guidance is applied (``pccd.diffusion.sampling``): ε_∅ + s·(ε_c − ε_∅) where the null branch
drops *every* condition, elements included, so s > 1 amplifies the element and band-gap
conditions together; guidance 1 is the plain conditional model.

Output: one JSON line per setting, appended as soon as it finishes (a setting already in the
file with identical settings is skipped, so an interrupted run resumes), then a table on stdout
and ``<out stem>_summary.json`` with Δ(insulator share, highest − lowest gap) per guidance, its
paired bootstrap 95% CI and whether the target is met. Every share is over every sample: a
failed decode or an unreadable crystal counts as not an insulator and not plausible.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from pymatgen.core.periodic_table import Element
from threadpoolctl import threadpool_limits

from pccd import data
from pccd.evaluate import band_gap as bg
from pccd.evaluate import has_exact_elements, request_quality
from pccd.evaluate.geometry import (
    PLAUSIBLE_RATIO,
    covalent_ratio,
    space_group_number,
    summarize_geometry,
)
from pccd.generator import Generator, Request, load_pretrained

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SPLIT = "../shared/data/mp_pccd/val.csv.gz"
GAP_EDGES = (0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, math.inf)
"""Histogram bin edges (eV) of predicted gaps; metals read exactly 0 and land in the first."""
TARGET_DELTA = 0.30
"""Issue 15: the insulator share must rise by at least 30 points from the lowest gap asked."""
TARGET_MIN_HIGH_GAP = 3.0
"""... when the highest gap asked is at least this many eV."""
PLAUSIBLE_TOLERANCE = 0.03
"""A guidance counts as keeping geometry when its plausible share is at most 3 points below
guidance 1's (the unguided conditional model) at every gap."""
BOOTSTRAP = 10_000
BATCH_SIZE = 100

_log = logging.getLogger("band_gap_steering")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _resolve(path: str) -> Path:
    """A relative path is relative to the repository root (as in the other benchmarks)."""
    p = Path(path)
    return p if p.is_absolute() else (ROOT / p).resolve()


def _label(elements: Sequence[Element]) -> str:
    return "-".join(e.symbol for e in elements)


def _share(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else math.nan


def _histogram(gaps: np.ndarray) -> dict[str, int]:
    """Counts of measured predicted gaps per bin ``[lo, hi)`` of :data:`GAP_EDGES`."""
    idx = np.searchsorted(np.asarray(GAP_EDGES), gaps, side="right") - 1
    counts = np.bincount(idx, minlength=len(GAP_EDGES) - 1)
    return {
        f"{lo:g}-{hi:g}": int(c)
        for lo, hi, c in zip(GAP_EDGES[:-1], GAP_EDGES[1:], counts, strict=True)
    }


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def measure_setting(
    pipe: Generator,
    instrument: bg.BandGapModel,
    element_lists: list[tuple[Element, ...]],
    per_list: int,
    reference_counts: list[int],
    *,
    band_gap: float,
    guidance: float,
    repulsion: float | None,
    seed: int,
    batch_size: int,
    guide: list[str] | None = None,
) -> dict[str, Any]:
    """Generate ``per_list`` crystals per element list at one (gap, guidance) and read them."""
    requests = [
        Request.parse(list(els), band_gap=band_gap)
        for els in element_lists
        for _ in range(per_list)
    ]
    t0 = time.perf_counter()
    samples = pipe.generate(
        requests,
        seed=seed,
        batch_size=batch_size,
        guidance_scale=guidance,
        repulsion=repulsion,
        guide=guide if guidance != 1.0 else None,
    )
    generate_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    structures: list[Structure | None] = [s.structure for s in samples]
    decoded = [s for s in structures if s is not None]
    gaps = np.full(len(structures), np.nan)
    probs = np.full(len(structures), np.nan)
    if decoded:
        where = [i for i, s in enumerate(structures) if s is not None]
        g, p = instrument.predict(decoded)
        gaps[where], probs[where] = g, p
    ratios = [None if s is None else covalent_ratio(s) for s in structures]
    groups = [None if s is None else space_group_number(s) for s in structures]
    exact = [has_exact_elements(s, r.elements) for s, r in zip(structures, requests, strict=True)]
    measure_seconds = time.perf_counter() - t0

    measured = np.isfinite(gaps) & np.isfinite(probs)
    insulator = measured & (np.nan_to_num(probs) >= bg.INSULATOR_PROBABILITY)
    plausible = [r is not None and r >= PLAUSIBLE_RATIO for r in ratios]
    summary = bg.summarize_band_gaps(gaps.tolist(), probs.tolist())
    geometry = summarize_geometry(ratios, groups)
    quality = request_quality(structures, [r.elements for r in requests], reference_counts)
    g_measured = gaps[measured]

    per_list_rows = []
    for k, els in enumerate(element_lists):
        sl = slice(k * per_list, (k + 1) * per_list)
        m = measured[sl]
        per_list_rows.append(
            {
                "elements": _label(els),
                "decoded": sum(s is not None for s in structures[sl]),
                "measured": int(m.sum()),
                "insulator_share_of_all": _round(_share(insulator[sl])),
                "mean_predicted_gap_of_measured": _round(
                    float(gaps[sl][m].mean()) if m.any() else math.nan
                ),
                "plausible_share": _round(_share(plausible[sl])),
                "exact_elements": _round(_share(exact[sl])),
            }
        )

    def q(p: float) -> float | None:
        return _round(float(np.quantile(g_measured, p))) if len(g_measured) else None

    return {
        "n_samples": len(structures),
        "n_decoded": len(decoded),
        "n_measured": int(measured.sum()),
        "predicted_gap_eV": {
            "mean": _round(summary.mean_predicted_band_gap_eV_of_measured),
            "median": q(0.5),
            "q25": q(0.25),
            "q75": q(0.75),
            "histogram_of_measured": _histogram(g_measured),
        },
        "insulator_share_of_all": _round(summary.insulator_share_of_all_samples),
        "insulator_share_of_measured": _round(summary.insulator_share_of_measured),
        "mean_p_insulator_of_measured": _round(summary.mean_p_insulator_of_measured),
        "geometry": {
            "plausible_share": _round(geometry.plausible_share),
            "median_ratio": _round(geometry.median_ratio),
            "symmetric_share": _round(geometry.symmetric_share),
        },
        "exact_elements": _round(quality["exact_elements"]),
        "valid": _round(quality["valid"]),
        "atom_count_wasserstein": _round(quality["atom_count_wasserstein"]),
        "generate_seconds": round(generate_seconds, 1),
        "measure_seconds": round(measure_seconds, 1),
        "per_list": per_list_rows,
    }


def _key(setting: dict[str, Any]) -> tuple:
    return (float(setting["band_gap"]), float(setting["guidance"]), setting.get("repulsion"))


def read_rows(out: Path, settings: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Rows of ``out`` made with exactly ``settings``, keyed by (gap, guidance, repulsion)."""
    rows: dict[tuple, dict[str, Any]] = {}
    if not out.exists():
        return rows
    for line in out.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("settings") == settings:
            rows[_key(row["setting"])] = row
    return rows


def bootstrap_ci(diffs: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of paired per-list differences."""
    if len(diffs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def summarize(
    rows: dict[tuple, dict[str, Any]],
    gaps: list[float],
    guidances: list[float],
    repulsion: float | None,
) -> dict[str, Any]:
    """Δ insulator share (highest − lowest gap) per guidance, CI, geometry check, target."""
    low, high = min(gaps), max(gaps)
    base_guidance = 1.0 if 1.0 in guidances else min(guidances)
    base_plausible = {
        g: rows[(g, base_guidance, repulsion)]["geometry"]["plausible_share"] for g in gaps
    }
    per_guidance = []
    for s in guidances:
        cell = {g: rows[(g, s, repulsion)] for g in gaps}
        a = np.array([r["insulator_share_of_all"] for r in cell[low]["per_list"]], dtype=float)
        b = np.array([r["insulator_share_of_all"] for r in cell[high]["per_list"]], dtype=float)
        delta = cell[high]["insulator_share_of_all"] - cell[low]["insulator_share_of_all"]
        lo, hi = bootstrap_ci(b - a)
        plausible = {g: cell[g]["geometry"]["plausible_share"] for g in gaps}
        keeps_geometry = all(
            plausible[g] >= base_plausible[g] - PLAUSIBLE_TOLERANCE - 1e-12 for g in gaps
        )
        per_guidance.append(
            {
                "guidance": s,
                "insulator_share_of_all": {
                    f"{g:g}": cell[g]["insulator_share_of_all"] for g in gaps
                },
                "mean_predicted_gap_eV": {
                    f"{g:g}": cell[g]["predicted_gap_eV"]["mean"] for g in gaps
                },
                "plausible_share": {f"{g:g}": plausible[g] for g in gaps},
                "delta_points": round(100 * delta, 2),
                "delta_ci95_points": [_round(100 * lo, 2), _round(100 * hi, 2)],
                "lists_up_down_same": [
                    int((b > a).sum()),
                    int((b < a).sum()),
                    int((b == a).sum()),
                ],
                "keeps_geometry": keeps_geometry,
                "meets_target": bool(
                    high >= TARGET_MIN_HIGH_GAP and delta >= TARGET_DELTA and keeps_geometry
                ),
            }
        )
    assessable = high >= TARGET_MIN_HIGH_GAP
    return {
        "low_gap_eV": low,
        "high_gap_eV": high,
        "baseline_guidance": base_guidance,
        "repulsion": repulsion,
        "target": (
            f"insulator share at {high:g} eV minus at {low:g} eV ≥ {100 * TARGET_DELTA:g} points "
            f"at a guidance whose plausible share is ≥ guidance {base_guidance:g}'s − "
            f"{100 * PLAUSIBLE_TOLERANCE:g} points at every gap"
            + ("" if assessable else f" (not assessable: highest gap < {TARGET_MIN_HIGH_GAP} eV)")
        ),
        "per_guidance": per_guidance,
        "target_met": bool(assessable and any(r["meets_target"] for r in per_guidance)),
        "target_met_at_guidance": [r["guidance"] for r in per_guidance if r["meets_target"]],
    }


def print_table(summary: dict[str, Any], gaps: list[float]) -> None:
    """Rows = guidance; columns = insulator share per gap, Δ(high − low), plausible per gap."""
    low, high = summary["low_gap_eV"], summary["high_gap_eV"]
    head = (
        ["guidance"]
        + [f"ins@{g:g}" for g in gaps]
        + [f"Δ({high:g}−{low:g}) pts", "95% CI"]
        + [f"plaus@{g:g}" for g in gaps]
        + ["target"]
    )
    lines = [head]
    for r in summary["per_guidance"]:
        ci = r["delta_ci95_points"]
        lines.append(
            [f"{r['guidance']:g}"]
            + [f"{100 * r['insulator_share_of_all'][f'{g:g}']:.1f}%" for g in gaps]
            + [f"{r['delta_points']:+.1f}", f"[{ci[0]}, {ci[1]}]"]
            + [f"{100 * r['plausible_share'][f'{g:g}']:.1f}%" for g in gaps]
            + ["met" if r["meets_target"] else "-"]
        )
    widths = [max(len(row[c]) for row in lines) for c in range(len(head))]
    for row in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    print(f"target: {summary['target']} -> {'MET' if summary['target_met'] else 'not met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pccd-cpu", help="shipped model name or model directory")
    ap.add_argument("--lists", type=int, default=20, help="element lists drawn from the split")
    ap.add_argument("--per-list", type=int, default=50, help="crystals per list and setting")
    ap.add_argument("--gaps", type=_floats, default=[0.0, 1.5, 4.0], help="band gaps (eV)")
    ap.add_argument("--guidance", type=_floats, default=[1.0, 2.0, 3.0, 5.0])
    ap.add_argument("--seed", type=int, default=0, help="draws the lists and seeds sampling")
    ap.add_argument("--repulsion", type=float, default=None, help="sampling-time repulsion tau")
    ap.add_argument(
        "--guide",
        default=None,
        help="comma list of conditions guidance amplifies (e.g. band_gap); default all (paper)",
    )
    ap.add_argument("--split", default=DEFAULT_SPLIT, help="element lists come from here")
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads")
    ap.add_argument("--note", default="", help="free text stored with each row (machine load…)")
    ap.add_argument("--out", default=None, help="JSONL (default results/band_gap_steering_…)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.gaps or not args.guidance:
        ap.error("--gaps and --guidance need at least one value each")
    if args.lists < 1 or args.per_list < 1:
        ap.error("--lists and --per-list must be ≥ 1")

    torch.set_num_threads(args.threads)
    model_name = Path(args.model).name
    out = _resolve(args.out) if args.out else RESULTS / f"band_gap_steering_{model_name}.jsonl"
    guide = sorted(args.guide.split(",")) if args.guide else None
    tag = "" if args.repulsion is None else f"_repulsion-{args.repulsion:g}"
    tag += f"_guide-{'+'.join(guide)}" if guide else ""
    summary_path = out.with_name(f"{out.stem}{tag}_summary.json")
    split = _resolve(args.split)

    pipe = load_pretrained(args.model)  # either family, through the generator seam
    instrument = bg.load_shipped()
    table = data.load(split).table
    element_lists = [
        tuple(Element.from_Z(z) for z in zs)
        for zs in table.draw_element_lists(args.lists, args.seed)
    ]
    reference_counts = table.num_sites().tolist()
    settings = {
        "model": model_name,
        "lists": args.lists,
        "per_list": args.per_list,
        "seed": args.seed,
        "split": str(split.relative_to(ROOT.parent))
        if split.is_relative_to(ROOT.parent)
        else str(split),
        "family": pipe.family,
        "sampler": pipe.samplers[0],
        "steps": pipe.default_steps(pipe.samplers[0]),
        "precision": pipe.precision,
        "batch_size": args.batch_size,
        "instrument": instrument.fingerprint,
        **({"guide": guide} if guide else {}),
    }
    rows = read_rows(out, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    _log.info("element lists: %s", ", ".join(_label(e) for e in element_lists))

    for guidance in args.guidance:
        for gap in args.gaps:
            setting = {"band_gap": gap, "guidance": guidance, "repulsion": args.repulsion}
            if _key(setting) in rows:
                _log.info("skip %s (already in %s)", setting, out)
                continue
            _log.info("run %s: %d crystals", setting, args.lists * args.per_list)
            with threadpool_limits(args.threads):
                result = measure_setting(
                    pipe,
                    instrument,
                    element_lists,
                    args.per_list,
                    reference_counts,
                    band_gap=gap,
                    guidance=guidance,
                    repulsion=args.repulsion,
                    seed=args.seed,
                    batch_size=args.batch_size,
                    guide=guide,
                )
            row = {
                "setting": setting,
                **result,
                "settings": settings,
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "threads": args.threads,
                    "load_average": [round(v, 2) for v in os.getloadavg()],
                    "torch": torch.__version__,
                    "note": args.note,
                },
            }
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            rows[_key(setting)] = row
            _log.info(
                "done %s: insulator share %.3f, plausible %.3f, %.0f s",
                setting,
                row["insulator_share_of_all"],
                row["geometry"]["plausible_share"],
                row["generate_seconds"],
            )

    summary = summarize(rows, args.gaps, args.guidance, args.repulsion)
    summary.update(
        settings=settings, rows=str(out), date=datetime.now(UTC).isoformat(timespec="seconds")
    )
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary, args.gaps)
    print(f"rows: {out}\nsummary: {summary_path}")


if __name__ == "__main__":
    main()
