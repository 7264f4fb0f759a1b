"""The reconstruction experiment of the PCCD paper (Li et al., Fig. 1 and Table 1).

N crystals are drawn (seeded) from a split, encoded, noised to step t of the forward chain
with *stored* noise (``noise.npy`` in the output directory, so every t and every rerun uses
the same draw), denoised back under their own conditions and decoded. The paper's t is 1-based
(t = T = 1000 is pure noise), which is step ``t − 1`` of pccd's 0-based schedulers.

Conditions: the crystal's element list, as in the paper. ``use_formula=True`` also gives the
exact atom counts per element (pccd's CSP conditioning), which the paper's model did not have;
it is off by default so that the atom-count accuracy measures what the paper measured. Band
gap and magnetic ordering are left missing.

Per crystal: the atom count (heatmap of original vs reconstructed), and for equal counts the
relative errors of a, b, c and the periodic errors of x, y, z after greedy one-to-one atom
matching (:mod:`pccd.evaluate.matching`). Rates: the paper's "effective rate" (share inside
the 1.5-IQR box-plot whiskers) and plain rates (|relative error| ≤ 5 % for lengths, periodic
error ≤ 0.05 for coordinates). Optionally the CSP distances of every decoded pair
(:mod:`pccd.evaluate.csp_distances`) at one t.

Results are appended to CSV files row by row (:class:`pccd.outputs.ResultTable`), so an
interrupted run keeps its work and a rerun with the same settings resumes after the last
complete batch.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from pccd import data as data_mod
from pccd import progress
from pccd import representation as rep
from pccd.conditioning import Conditions
from pccd.diffusion import DEFAULT_PRECISION
from pccd.errors import InputError
from pccd.evaluate import plots
from pccd.evaluate.csp_distances import METRICS, UNITS, CSPDistances
from pccd.evaluate.matching import compare_structures, effective_rate, plain_rate
from pccd.evaluate.report import markdown_table, pct, write_metrics, write_report
from pccd.outputs import ResultTable
from pccd.pipeline import DEFAULT_DDIM_STEPS
from pccd.runs import check_experiment_settings
from pccd.training import CrystalDataset, collate

_log = logging.getLogger(__name__)

PAPER = {
    "n": 1280,
    "atom_count_accuracy": 0.6781,
    "effective_rate": {
        "a": 0.8848,
        "b": 0.9055,
        "c": 0.8940,
        "x": 0.7083,
        "y": 0.7160,
        "z": 0.7202,
    },
}
"""Li et al., Table 1: reconstruction of 1,280 training crystals from t = T."""

LENGTH_TOLERANCE = 0.05
"""Plain rate for lattice lengths: |relative error| ≤ 5 %."""
COORD_TOLERANCE = 0.05
"""Plain rate for fractional coordinates: periodic error ≤ 0.05."""

COLUMNS = (
    "key",
    "t",
    "index",
    "id",
    "formula",
    "n_true",
    "n_pred",
    "same_composition",
    "status",
    "reason",
    "abc_true",
    "abc_pred",
    "err_a",
    "err_b",
    "err_c",
    "angle_err",
    "element_mismatches",
    "rms_distance",
    "frac_true",
    "frac_err",
    "cif",
)
DISTANCE_COLUMNS = (
    "key",
    "t",
    "index",
    "id",
    *[c for m in METRICS for c in (m, f"{m}_reason")],
    "graph_edit_note",
)


@dataclass(frozen=True)
class ReconstructionSettings:
    """Everything that determines a reconstruction run (recorded in ``run.json``).

    Attributes:
        n: crystals drawn from the split (without replacement; all if the split is smaller).
        seed: draws the crystals, the stored noise and the sampler's noise.
        timesteps: 1-based noising depths t (1..T); ``(1000,)`` is the paper's experiment.
        sampler, steps: reverse chain; ``"ddpm"`` with all steps is the paper's ancestral
            sampler, ``"ddim"`` with ``steps`` (default 20) is ~50× faster. ``None`` = default.
        batch_size: crystals denoised together (also the resume granularity).
        use_formula: condition on exact atom counts too (off: elements only, as the paper).
        guidance_scale: classifier-free guidance (1 = plain conditional model).
        align_origin: translate the reconstruction onto the original before matching atoms.
        distances: CSP distance metrics computed per decoded pair (empty = none).
        distance_t: the t at which distances are computed (default: the largest t).
        ged_timeout: seconds per pair for the graph edit distance.
        mlip: the MLIP of the energy distance (see :mod:`pccd.mlip`).
    """

    n: int = 1280
    seed: int = 0
    timesteps: tuple[int, ...] = (1000,)
    sampler: str = "ddpm"
    steps: int | None = None
    batch_size: int = 64
    use_formula: bool = False
    guidance_scale: float = 1.0
    align_origin: bool = True
    distances: tuple[str, ...] = METRICS
    distance_t: int | None = None
    ged_timeout: float = 2.0
    mlip: str = "chgnet"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timesteps"] = list(self.timesteps)
        d["distances"] = list(self.distances)
        return d


def select_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices out of ``n_total`` drawn with ``seed`` (all when n ≥ n_total or
    n ≤ 0), in draw order, so the first k of a larger draw are a smaller draw's superset."""
    if n <= 0 or n >= n_total:
        return np.random.default_rng(seed).permutation(n_total)
    return np.random.default_rng(seed).permutation(n_total)[:n]


def stored_noise(path: str | Path, n: int, seed: int) -> np.ndarray:
    """The (n, 3, 128, 3) float32 starting noise, drawn once from ``seed`` and kept in ``path``.

    Storing it makes every t of a run (and a resumed run) start from the same draw, and lets
    another tool reproduce the exact inputs.
    """
    path = Path(path)
    shape = (n, *rep.ARRAY_SHAPE)
    if path.exists():
        noise = np.load(path)
        if noise.shape == shape:
            return noise
        raise InputError(f"{path} holds noise of shape {noise.shape}, expected {shape}")
    noise = np.random.default_rng([seed, 1]).standard_normal(shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, noise)
    return noise


def _json(values) -> str:
    return json.dumps(np.round(np.asarray(values, dtype=float), 6).tolist())


def compare_row(true: Structure, pred: Structure | None, *, align_origin: bool = True) -> dict:
    """The per-crystal result columns for one (original, reconstruction) pair."""
    row: dict[str, object] = {
        "n_true": len(true),
        "abc_true": _json(true.lattice.abc),
        "formula": true.composition.reduced_formula,
    }
    if pred is None:
        return row
    cmp = compare_structures(true, pred, align_origin=align_origin)
    row.update(
        n_pred=cmp.n_pred,
        same_composition=int(cmp.same_composition),
        abc_pred=_json(pred.lattice.abc),
        err_a=f"{cmp.lattice_rel_error[0]:.6g}",
        err_b=f"{cmp.lattice_rel_error[1]:.6g}",
        err_c=f"{cmp.lattice_rel_error[2]:.6g}",
        angle_err=_json(cmp.angle_error),
    )
    if cmp.match is not None:
        row.update(
            element_mismatches=cmp.match.element_mismatches,
            rms_distance=f"{cmp.match.rms_distance:.6g}",
            frac_true=_json(true.frac_coords[cmp.match.true_index]),
            frac_err=_json(cmp.match.frac_error),
        )
    return row


def _conditions(cond: Conditions, use_formula: bool) -> Conditions:
    """Elements (and optionally the formula) of the crystals; other conditions missing."""
    b = cond.batch_size
    return Conditions(
        elements=cond.elements,
        band_gap=torch.full((b,), float("nan")),
        magnetic=torch.full((b,), -1, dtype=torch.long),
        formula=cond.formula if use_formula else torch.full_like(cond.formula, -1),
        elements_dropped=torch.zeros(b, dtype=torch.bool),
    )


def run_reconstruction(
    pipeline,
    table: data_mod.CrystalTable,
    out_dir: str | Path,
    settings: ReconstructionSettings = ReconstructionSettings(),
    *,
    source: str = "",
    model_label: str = "",
    log: Callable[[str], None] = _log.info,
) -> dict:
    """Run (or resume) the experiment into ``out_dir`` and write metrics, report and figures.

    Args:
        pipeline: a :class:`pccd.pipeline.PCCDPipeline` (model, representation, schedulers).
        table: the split to draw crystals from.
        out_dir: output directory (``reconstruction.csv``, ``distances.csv``, ``noise.npy``,
            ``structures/``, ``metrics.json``, ``report.md``, PNGs).
        settings: see :class:`ReconstructionSettings`.
        source: a label of the split (recorded in the settings, e.g. its path).
        model_label: how the model is named in the report (e.g. its directory).
        log: progress messages.

    Returns:
        The metrics dictionary also written to ``metrics.json``.
    """
    out = Path(out_dir)
    T = pipeline.num_train_timesteps
    if not settings.timesteps:
        raise InputError("give at least one noising depth t")
    for t in settings.timesteps:
        if not 1 <= t <= T:
            raise InputError(f"noising depth t must be in 1..{T}, got {t}")
    distance_t = settings.distance_t or max(settings.timesteps)
    if settings.distances and distance_t not in settings.timesteps:
        raise InputError(f"distance t {distance_t} is not one of the timesteps")
    pipeline.make_scheduler(settings.sampler, settings.steps)  # validates sampler and steps
    check_experiment_settings(
        out, settings.to_dict(), pipeline, source=source, model_label=model_label
    )
    idx = select_indices(len(table), settings.n, settings.seed)
    sub = table.subset(idx)
    n = len(sub)
    noise = stored_noise(out / "noise.npy", n, settings.seed)
    dataset = CrystalDataset(sub, pipeline.rep_config, augment=False)
    results = ResultTable(out / "reconstruction.csv", COLUMNS, key="key")
    timing: dict[str, float] = {}

    for t in settings.timesteps:
        t0 = time.perf_counter()
        cif_dir = out / "structures" / f"t{t:04d}"
        cif_dir.mkdir(parents=True, exist_ok=True)
        done_before = sum(f"t{t}_{i}" in results for i in range(n))
        pbar = progress.bar(n, f"reconstruct t={t}", "crystal", initial=done_before)
        for lo in range(0, n, settings.batch_size):
            hi = min(n, lo + settings.batch_size)
            if all(f"t{t}_{i}" in results for i in range(lo, hi)):
                continue
            x0, cond = collate([dataset[i] for i in range(lo, hi)])
            cond = _conditions(cond, settings.use_formula)
            scheduler = pipeline.make_scheduler(settings.sampler, settings.steps)
            gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + t * 10_007 + lo)
            x_t = scheduler.add_noise(x0, torch.from_numpy(noise[lo:hi]), t - 1)
            x_hat = pipeline.denoise(
                scheduler,
                cond,
                x_T=x_t.to(pipeline.device),
                start_t=t - 1,
                generator=gen,
                guidance_scale=settings.guidance_scale,
            )
            for k, x in enumerate(x_hat.detach().cpu().numpy()):
                i = lo + k
                true = sub.structure(i)
                decoded = rep.decode(x, rep.slot_elements(true), pipeline.rep_config)
                pred = decoded if isinstance(decoded, Structure) else None
                row: dict[str, object] = {
                    "key": f"t{t}_{i}",
                    "t": t,
                    "index": int(idx[i]),
                    "id": str(sub.ids[i]),
                    **compare_row(true, pred, align_origin=settings.align_origin),
                }
                if pred is None:
                    row.update(status="failed", reason=str(decoded))
                else:
                    name = f"{i:05d}_{sub.ids[i]}.cif"
                    pred.to(filename=str(cif_dir / name))
                    row.update(status="ok", cif=str(Path("structures") / f"t{t:04d}" / name))
                results.append(row)
                pbar.update(1)
            _log.debug("t=%d: %d/%d reconstructed", t, hi, n)
        pbar.close()
        if sum(f"t{t}_{i}" in results for i in range(n)) > done_before:
            timing[f"t{t}_seconds"] = time.perf_counter() - t0

    if settings.distances:
        t0 = time.perf_counter()
        _run_distances(out, results, sub, idx, distance_t, settings, log)
        timing["distances_seconds"] = time.perf_counter() - t0

    meta = {
        **pipeline.meta,
        "name": model_label or pipeline.meta.get("name"),
        "precision": pipeline.precision,
    }
    metrics = summarize(out, settings, source=source, model=meta)
    metrics["timing_this_invocation"] = timing
    write_metrics(out, metrics)
    return metrics


def _run_distances(
    out: Path,
    results: ResultTable,
    sub: data_mod.CrystalTable,
    idx: np.ndarray,
    t: int,
    settings: ReconstructionSettings,
    log: Callable[[str], None],
) -> None:
    table = ResultTable(out / "distances.csv", DISTANCE_COLUMNS, key="key")
    calc = CSPDistances(settings.distances, ged_timeout=settings.ged_timeout, mlip=settings.mlip)
    todo = [i for i in range(len(sub)) if f"t{t}_{i}" not in table]
    pbar = progress.bar(len(sub), f"distances t={t}", "pair", initial=len(sub) - len(todo))
    for count, i in enumerate(todo, 1):
        key = f"t{t}_{i}"
        row = results.rows[key]
        with warnings.catch_warnings():  # CIF round-off notes are not errors
            warnings.simplefilter("ignore")
            pred = Structure.from_file(out / row["cif"]) if row["status"] == "ok" else None
        dists = calc(pred, sub.structure(i))
        entry: dict[str, object] = {"key": key, "t": t, "index": int(idx[i]), "id": sub.ids[i]}
        for name, d in dists.items():
            entry[name] = "" if d.value is None else f"{d.value:.6g}"
            entry[f"{name}_reason"] = d.reason
        if "graph_edit" in dists:
            entry["graph_edit_note"] = dists["graph_edit"].note
        table.append(entry)
        pbar.update(1)
        if count % 25 == 0 or count == len(todo):
            log(f"  distances t={t}: {count}/{len(todo)}")
    pbar.close()


# --------------------------------------------------------------------------------------------
# Summaries, figures, report
# --------------------------------------------------------------------------------------------


def _floats(rows: Sequence[dict], column: str) -> np.ndarray:
    return np.array([float(r[column]) for r in rows if r.get(column) not in (None, "")])


def summarize_rows(rows: Sequence[dict]) -> dict:
    """Metrics of one t from its result rows (as read back from ``reconstruction.csv``)."""
    n = len(rows)
    decoded = [r for r in rows if r["status"] == "ok"]
    count_ok = [r for r in decoded if int(r["n_pred"]) == int(r["n_true"])]
    comp_ok = [r for r in decoded if r.get("same_composition") == "1"]
    errors = {
        "a": _floats(count_ok, "err_a"),
        "b": _floats(count_ok, "err_b"),
        "c": _floats(count_ok, "err_c"),
    }
    frac_err = [np.array(json.loads(r["frac_err"])).reshape(-1, 3) for r in count_ok]
    frac = np.concatenate(frac_err) if frac_err else np.zeros((0, 3))
    for k, axis in enumerate("xyz"):
        errors[axis] = frac[:, k]
    out: dict[str, object] = {
        "n": n,
        "decoded": len(decoded) / n if n else float("nan"),
        "failures": dict(Counter(r["reason"].split(":")[0] for r in rows if r["status"] != "ok")),
        "atom_count_accuracy": len(count_ok) / n if n else float("nan"),
        "composition_accuracy": len(comp_ok) / n if n else float("nan"),
        "n_equal_count_pairs": len(count_ok),
        "n_matched_atoms": len(frac),
        "element_mismatched_atoms": int(sum(int(r["element_mismatches"]) for r in count_ok)),
    }
    for name, values in errors.items():
        tol = LENGTH_TOLERANCE if name in "abc" else COORD_TOLERANCE
        out[name] = {
            "effective_rate": effective_rate(values),
            "plain_rate": plain_rate(values, tol),
            "median_abs_error": float(np.median(np.abs(values))) if len(values) else float("nan"),
            "mean_abs_error": float(np.mean(np.abs(values))) if len(values) else float("nan"),
        }
    return out


def summarize_distances(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Per metric: count, missing count with reasons, and the distribution's summary."""
    out: dict[str, object] = {}
    for m in metrics:
        values = _floats(rows, m)
        reasons = Counter(r[f"{m}_reason"].split(" (")[0] for r in rows if r.get(m) in (None, ""))
        q = np.percentile(values, [25, 50, 75]) if len(values) else [float("nan")] * 3
        out[m] = {
            "unit": UNITS[m],
            "n": len(values),
            "missing": len(rows) - len(values),
            "missing_reasons": dict(reasons.most_common(5)),
            "mean": float(np.mean(values)) if len(values) else float("nan"),
            "median": float(q[1]),
            "q1": float(q[0]),
            "q3": float(q[2]),
        }
        if m == "graph_edit":
            out[m]["upper_bounds"] = sum(1 for r in rows if r.get("graph_edit_note"))
    return out


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("key")]


def summarize(
    out_dir: str | Path,
    settings: ReconstructionSettings,
    *,
    source: str = "",
    model: dict | None = None,
) -> dict:
    """Read the run's CSVs back, write figures and ``report.md``; return the metrics."""
    out = Path(out_dir)
    rows = _read_rows(out / "reconstruction.csv")
    by_t: dict[int, list[dict]] = {}
    for r in rows:
        by_t.setdefault(int(r["t"]), []).append(r)
    per_t = {t: summarize_rows(by_t[t]) for t in sorted(by_t)}
    figures: list[Path] = []
    for t, t_rows in sorted(by_t.items()):
        figures += _figures_for_t(out, t, t_rows)
    if len(per_t) > 1:
        figures.append(_curve_figure(out, per_t))
    distance_rows = _read_rows(out / "distances.csv")
    distances = summarize_distances(distance_rows, settings.distances) if distance_rows else {}
    by_key = {r["key"]: r for r in rows}
    equal_rows = [
        r
        for r in distance_rows
        if by_key.get(r["key"], {}).get("status") == "ok"
        and by_key[r["key"]]["n_pred"] == by_key[r["key"]]["n_true"]
    ]
    distances_equal = summarize_distances(equal_rows, settings.distances) if equal_rows else {}
    if distance_rows:
        values = {m: _floats(distance_rows, m) for m in settings.distances}
        missing = {m: distances[m]["missing"] for m in settings.distances}  # type: ignore[index]
        t_d = int(distance_rows[0]["t"])
        figures.append(
            plots.metric_panels(
                values,
                UNITS,
                missing,
                out / f"distances_t{t_d:04d}.png",
                title=f"CSP distances, reconstructed vs original (t = {t_d})",
            )
        )
    metrics = {
        "command": "reconstruct",
        "source": source,
        "model": {
            "name": (model or {}).get("name"),
            "training_steps": (model or {}).get("training", {}).get("steps"),
            "precision": (model or {}).get("precision", DEFAULT_PRECISION),
        },
        "settings": settings.to_dict(),
        "conditions": "elements + formula" if settings.use_formula else "elements only",
        "per_t": {str(t): v for t, v in per_t.items()},
        "distances": distances,
        "distances_equal_count": distances_equal,
        "paper": PAPER,
        "figures": [p.name for p in figures],
    }
    _write_report(out, metrics, figures)
    return metrics


def _figures_for_t(out: Path, t: int, rows: list[dict]) -> list[Path]:
    figs = [
        plots.count_heatmap(
            [int(r["n_true"]) for r in rows],
            [int(r["n_pred"]) if r["status"] == "ok" else None for r in rows],
            out / f"atom_counts_t{t:04d}.png",
            title=f"Atoms per cell, original vs reconstructed (t = {t}, n = {len(rows)})",
        )
    ]
    pairs = [r for r in rows if r["status"] == "ok" and r["n_pred"] == r["n_true"]]
    if not pairs:
        return figs
    abc_t = np.array([json.loads(r["abc_true"]) for r in pairs])
    abc_p = np.array([json.loads(r["abc_pred"]) for r in pairs])
    figs.append(
        plots.parity_plot(
            [(k, abc_t[:, i], abc_p[:, i]) for i, k in enumerate("abc")],
            out / f"parity_lattice_t{t:04d}.png",
            title=f"Lattice lengths, equal atom counts (t = {t})",
            unit="Å",
        )
    )
    ft = np.concatenate([np.array(json.loads(r["frac_true"])).reshape(-1, 3) for r in pairs])
    fe = np.concatenate([np.array(json.loads(r["frac_err"])).reshape(-1, 3) for r in pairs])
    figs.append(
        plots.parity_plot(
            [(k, ft[:, i], ft[:, i] + fe[:, i]) for i, k in enumerate("xyz")],
            out / f"parity_coords_t{t:04d}.png",
            title=f"Fractional coordinates after periodic matching (t = {t}); "
            "reconstructed = original + periodic error",
            unit="fractional",
            equal_limits=(-0.55, 1.55),
        )
    )
    figs.append(
        plots.box_kde(
            {k: 100.0 * _floats(pairs, f"err_{k}") for k in "abc"},
            out / f"errors_lattice_t{t:04d}.png",
            title=f"Relative errors of lattice lengths (t = {t})",
            ylabel="(reconstructed − original) / original (%)",
        )
    )
    figs.append(
        plots.box_kde(
            {k: fe[:, i] for i, k in enumerate("xyz")},
            out / f"errors_coords_t{t:04d}.png",
            title=f"Periodic errors of fractional coordinates (t = {t})",
            ylabel="periodic error (fractional units, cell = 1)",
        )
    )
    return figs


def _curve_figure(out: Path, per_t: dict[int, dict]) -> Path:
    ts = sorted(per_t)
    count = [per_t[t]["atom_count_accuracy"] for t in ts]
    effective: dict[str, list[float]] = {"atom count": count}
    plain: dict[str, list[float]] = {"atom count": count}
    for name in "abcxyz":
        effective[name] = [per_t[t][name]["effective_rate"] for t in ts]
        plain[name] = [per_t[t][name]["plain_rate"] for t in ts]
    return plots.curves(
        ts,
        {
            "effective rate (inside 1.5 IQR whiskers)": effective,
            "plain rate (a, b, c: |rel. err.| ≤ 5%; x, y, z: |err| ≤ 0.05)": plain,
        },
        out / "rates_over_t.png",
        title="Reconstruction quality vs noising depth",
        xlabel="noising step t (of T = 1000)",
        ylabel="rate (%)",
    )


def _distance_table(distances: dict) -> str:
    rows = [
        [
            m,
            d["unit"],
            d["n"],
            d["missing"],
            d["median"],
            d["q1"],
            d["q3"],
            d["mean"],
            "; ".join(f"{k} ({v})" for k, v in d["missing_reasons"].items()) or "—",
        ]
        for m, d in distances.items()
    ]
    return markdown_table(
        ["metric", "unit", "n", "missing", "median", "Q1", "Q3", "mean", "why missing"], rows
    )


def _steps_text(sampler: str, steps: int | None) -> str:
    if steps:
        return f"{steps} steps"
    return "all steps below t" if sampler == "ddpm" else f"{DEFAULT_DDIM_STEPS}-step schedule"


def _write_report(out: Path, metrics: dict, figures: Sequence[Path]) -> None:
    s = metrics["settings"]
    settings_md = markdown_table(
        ["setting", "value"],
        [
            ["split", metrics["source"] or "—"],
            [
                "model",
                f"{metrics['model'].get('name')} ({metrics['model'].get('training_steps')}"
                " training steps)",
            ],
            ["network precision", metrics["model"].get("precision", DEFAULT_PRECISION)],
            ["crystals drawn", f"{s['n']} (seed {s['seed']})"],
            ["noising depths t", ", ".join(map(str, s["timesteps"]))],
            ["sampler", f"{s['sampler']} ({_steps_text(s['sampler'], s['steps'])})"],
            ["conditions", metrics["conditions"]],
            ["guidance scale", s["guidance_scale"]],
            ["origin alignment before matching", "yes" if s["align_origin"] else "no"],
        ],
    )
    sections = [("Settings", settings_md)]
    paper = metrics["paper"]
    for t, m in metrics["per_t"].items():
        rows = [
            ["decoded", pct(m["decoded"]), "—"],
            [
                "atom count correct",
                pct(m["atom_count_accuracy"]),
                pct(paper["atom_count_accuracy"]) if t == "1000" else "—",
            ],
            ["composition correct", pct(m["composition_accuracy"]), "—"],
        ]
        for name in "abcxyz":
            tol = "|rel. err.| ≤ 5%" if name in "abc" else "|err| ≤ 0.05"
            rows.append(
                [
                    f"{name}: effective rate (inside 1.5 IQR)",
                    pct(m[name]["effective_rate"]),
                    pct(paper["effective_rate"][name]) if t == "1000" else "—",
                ]
            )
            rows.append([f"{name}: {tol}", pct(m[name]["plain_rate"]), "—"])
        body = (
            f"{m['n']} crystals; {m['n_equal_count_pairs']} with the right atom count "
            f"({m['n_matched_atoms']} matched atoms, {m['element_mismatched_atoms']} paired "
            f"across elements). Failures: {m['failures'] or 'none'}.\n\n"
            + markdown_table(["metric", "pccd", "paper (Li et al., Table 1)"], rows)
        )
        sections.append((f"Reconstruction from t = {t}", body))
    if len(metrics["per_t"]) > 1:
        ts = list(metrics["per_t"])
        rows = [
            [t, pct(metrics["per_t"][t]["atom_count_accuracy"])]
            + [pct(metrics["per_t"][t][k]["plain_rate"]) for k in "abcxyz"]
            for t in ts
        ]
        sections.append(
            (
                "Curve over t (plain rates)",
                markdown_table(["t", "atom count", "a", "b", "c", "x", "y", "z"], rows),
            )
        )
    if metrics["distances"]:
        body = _distance_table(metrics["distances"])
        ged = metrics["distances"].get("graph_edit")
        if ged and ged.get("upper_bounds"):
            body += (
                f"\n\n{ged['upper_bounds']} of {ged['n']} graph edit distances are upper bounds "
                f"(the search stopped after {s['ged_timeout']:g} s per pair)."
            )
        sections.append(("CSP distances (reconstructed vs original, every decoded pair)", body))
        if metrics["distances_equal_count"]:
            sections.append(
                (
                    "CSP distances, pairs with the right atom count only",
                    _distance_table(metrics["distances_equal_count"]),
                )
            )
    sections.append(
        (
            "Protocol notes",
            "- The paper's effective rate is the share of errors inside the box-plot whiskers "
            "(Q1 − 1.5 IQR, Q3 + 1.5 IQR) of their own distribution: it counts non-outliers, "
            "not small errors; the plain rates say how many errors are small.\n"
            "- Coordinate errors are periodic (0 ≡ 1) after greedy one-to-one matching in the "
            "original lattice"
            + (
                ", with the reconstruction translated onto the original first (the model is "
                "trained with random origin shifts)."
                if s["align_origin"]
                else "."
            )
            + "\n- Lattice and coordinate errors use only crystals whose atom count was "
            "reconstructed exactly, as in the paper.",
        )
    )
    write_report(out, "PCCD reconstruction experiment", sections, figures)
