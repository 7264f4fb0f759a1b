"""The crystal-structure-prediction benchmark of DiffCSP (Jiao et al., NeurIPS 2023).

For each of n crystals drawn (seeded) from a split, the model generates k candidates given the
crystal's exact cell formula (pccd's formula conditioning), and each candidate is compared
with the true crystal by ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``. Reported for
k = 1 (the first candidate) and k = K (any of the first K): the match rate and the mean RMSE
(``get_rms_dist``, normalised by (V/N)^⅓) of matched crystals, the best over the k candidates.

As in DiffCSP's evaluation, a candidate that is not valid (CDVAE rules: structurally valid
and SMACT-valid composition) counts as no match; the rate without this filter is reported
too. Published numbers on MP-20's test split (≤20 atoms, any number of elements) are quoted
for orientation; pccd's val split (≤16 atoms, ≤3 elements, split by formula) is an easier
and different set, stated in every report.

Candidates are written as CIFs and one CSV row each as they are generated; a rerun with the
same settings resumes after the last complete batch.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data as data_mod
from pccd import progress
from pccd.diffusion import DEFAULT_PRECISION
from pccd.errors import InputError
from pccd.evaluate import plots
from pccd.evaluate.generation_metrics import is_compositionally_valid, is_structurally_valid
from pccd.evaluate.geometry import covalent_ratio, space_group_number, summarize_geometry
from pccd.evaluate.matching import MATCHER_TOLERANCES, cell_formula, match_candidate
from pccd.evaluate.report import fmt, markdown_table, pct, write_metrics, write_report
from pccd.experiments.reconstruction import select_indices
from pccd.generator import Request
from pccd.outputs import ResultTable
from pccd.runs import check_experiment_settings

_log = logging.getLogger(__name__)

PUBLISHED_MP20 = {
    "DiffCSP": {1: 0.5149, 20: 0.7793},
    "CDVAE": {1: 0.3390, 20: 0.6695},
}
"""Match rates on MP-20's test split for k = 1 and k = 20 (Jiao et al. 2023, Tables 1–2)."""

COLUMNS = (
    "sample",
    "index",
    "id",
    "formula",
    "candidate",
    "status",
    "reason",
    "n_atoms",
    "formula_ok",
    "struct_valid",
    "comp_valid",
    "match",
    "rms",
    "covalent_ratio",
    "space_group_number",
    "cif",
)


@dataclass(frozen=True)
class CSPSettings:
    """Everything that determines a CSP benchmark run (recorded in ``run.json``).

    Attributes:
        n: crystals (formulas) drawn from the split; 0 = all.
        k: candidates per formula (k = 1 and k = this are reported).
        seed: draws the crystals and the sampler noise.
        sampler, steps: reverse chain (``steps=None``: 20 for ddim, all for ddpm).
        batch_size: samples per network batch (also the resume granularity).
        guidance_scale: classifier-free guidance (1 = plain conditional model).
        formula_decoding: ``"blocks"`` (default) decodes each candidate with the atoms that
            the known formula fixes; ``"cluster"`` ignores the formula at decoding (DBSCAN,
            the paper's decoder). See :class:`pccd.representation.FormulaDecoding`.
    """

    n: int = 1000
    k: int = 20
    seed: int = 0
    sampler: str = "ddim"
    steps: int | None = None
    batch_size: int = 100
    guidance_scale: float = 1.0
    formula_decoding: str = "blocks"
    repulsion: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def run_csp(
    pipeline,
    table: data_mod.CrystalTable,
    out_dir: str | Path,
    settings: CSPSettings = CSPSettings(),
    *,
    source: str = "",
    model_label: str = "",
    log: Callable[[str], None] = _log.info,
) -> dict:
    """Generate, match and summarise (or resume) into ``out_dir``; return the metrics.

    Writes ``candidates.csv`` (one row per candidate), ``candidates/*.cif``,
    ``metrics.json``, ``report.md`` and PNG figures.
    """
    if settings.k < 1:
        raise InputError(f"k must be ≥ 1, got {settings.k}")
    if settings.batch_size < 1:
        raise InputError(f"batch size must be ≥ 1, got {settings.batch_size}")
    pipeline.check_options(settings.sampler, settings.steps, settings.repulsion)  # before any work
    pipeline = pipeline.with_formula_decoding(settings.formula_decoding)
    out = Path(out_dir)
    check_experiment_settings(
        out, settings.to_dict(), pipeline, source=source, model_label=model_label
    )
    idx = select_indices(len(table), settings.n, settings.seed)
    sub = table.subset(idx)
    targets = [sub.structure(i) for i in range(len(sub))]
    formulas = [cell_formula(s) for s in targets]
    requests = [Request.parse(None, formula=f) for f in formulas]
    k = settings.k
    flat = [r for r in requests for _ in range(k)]
    rows = ResultTable(out / "candidates.csv", COLUMNS, key="sample")
    matcher = StructureMatcher(**MATCHER_TOLERANCES)
    comp_valid_cache: dict[str, bool] = {}
    cif_dir = out / "candidates"
    cif_dir.mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(flat) - 1, 1)))

    bs = settings.batch_size
    start = 0
    while start < len(flat) and all(
        str(s) in rows for s in range(start, min(len(flat), start + bs))
    ):
        start += bs
    t0 = time.perf_counter()
    generated = 0
    pbar = progress.bar(len(flat), "csp candidates", "crystal", initial=len(rows))
    for batch in pipeline.iter_generate(
        flat,
        sampler=settings.sampler,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        seed=settings.seed,
        batch_size=bs,
        start=start,
        repulsion=settings.repulsion,
    ):
        for sample in batch:
            if str(sample.index) in rows:
                continue
            i, j = divmod(sample.index, k)
            true = targets[i]
            row: dict[str, object] = {
                "sample": sample.index,
                "index": int(idx[i]),
                "id": str(sub.ids[i]),
                "formula": formulas[i],
                "candidate": j,
            }
            pred = sample.structure
            if pred is None:
                row.update(status="failed", reason=str(sample.failure), match=0)
            else:
                reduced = pred.composition.reduced_formula
                if reduced not in comp_valid_cache:
                    comp_valid_cache[reduced] = is_compositionally_valid(pred.composition)
                rms = match_candidate(pred, true, matcher)
                name = f"{sample.index:0{width}d}_{formulas[i]}.cif"
                pred.to(filename=str(cif_dir / name))
                row.update(
                    status="ok",
                    n_atoms=len(pred),
                    formula_ok=int(pred.composition == true.composition),
                    struct_valid=int(is_structurally_valid(pred)),
                    comp_valid=int(comp_valid_cache[reduced]),
                    match=int(rms is not None),
                    rms="" if rms is None else f"{rms:.6g}",
                    covalent_ratio=f"{covalent_ratio(pred):.4f}",
                    space_group_number=space_group_number(pred),
                    cif=name,
                )
            rows.append(row)
            generated += 1
            pbar.update(1)
        done = len(rows)
        _log.debug("%d/%d candidates (%d formulas complete)", done, len(flat), done // k)
    pbar.close()
    seconds = time.perf_counter() - t0
    meta = {
        **pipeline.meta,
        "name": model_label or pipeline.meta.get("name"),
        "precision": pipeline.precision,
        "default_steps": pipeline.default_steps(settings.sampler),
    }
    metrics = summarize(out, settings, source=source, model=meta)
    metrics["timing_this_invocation"] = {"seconds": seconds, "candidates": generated}
    write_metrics(out, metrics)
    return metrics


def _rates(by_formula: dict[str, list[dict]], k: int, require_valid: bool) -> dict:
    matched_rms: list[float] = []
    for cands in by_formula.values():
        best = None
        for r in sorted(cands, key=lambda r: int(r["candidate"]))[:k]:
            if r["status"] != "ok" or r["match"] != "1":
                continue
            if require_valid and not (r["struct_valid"] == "1" and r["comp_valid"] == "1"):
                continue
            rms = float(r["rms"])
            best = rms if best is None else min(best, rms)
        if best is not None:
            matched_rms.append(best)
    n = len(by_formula)
    return {
        "match_rate": len(matched_rms) / n if n else float("nan"),
        "mean_rmse": float(np.mean(matched_rms)) if matched_rms else float("nan"),
        "n_matched": len(matched_rms),
        "rmse_values": matched_rms,
    }


def summarize_rows(rows: Sequence[dict], k_max: int) -> dict:
    """Match rates and RMSE for k = 1 and k = ``k_max`` from candidate rows.

    Only formulas whose first ``k_max`` candidates are all present are scored, so a partial
    run reports what it finished rather than a rate diluted by missing candidates.
    """
    by_formula: dict[str, list[dict]] = {}
    for r in rows:
        by_formula.setdefault(r["index"], []).append(r)
    complete = {key: c for key, c in by_formula.items() if len(c) >= k_max}
    ks = sorted({1, k_max})
    out: dict[str, object] = {
        "n_formulas": len(complete),
        "n_candidates": sum(len(c) for c in complete.values()),
        "decoded": _share(complete, lambda r: r["status"] == "ok"),
        "formula_reproduced": _share(complete, lambda r: r.get("formula_ok") == "1"),
        "struct_valid": _share(complete, lambda r: r.get("struct_valid") == "1"),
        "comp_valid": _share(complete, lambda r: r.get("comp_valid") == "1"),
        "geometry": _candidate_geometry(complete),
        "failures": dict(
            Counter(
                r["reason"].split(":")[0]
                for c in complete.values()
                for r in c
                if r["status"] != "ok"
            )
        ),
    }
    for k in ks:
        out[f"k{k}"] = {
            "diffcsp_protocol": _rates(complete, k, require_valid=True),
            "no_validity_filter": _rates(complete, k, require_valid=False),
        }
    return out


def _candidate_geometry(groups: dict[str, list[dict]]) -> dict[str, float | int]:
    """Geometry figures of every raw candidate (failed decodes count as implausible)."""
    rows = [r for c in groups.values() for r in c]
    ok = [r["status"] == "ok" and r.get("covalent_ratio") not in (None, "") for r in rows]
    return summarize_geometry(
        [float(r["covalent_ratio"]) if o else None for r, o in zip(rows, ok, strict=True)],
        [int(r["space_group_number"]) if o else None for r, o in zip(rows, ok, strict=True)],
    ).to_dict()


def _share(groups: dict[str, list[dict]], predicate) -> float:
    rows = [r for c in groups.values() for r in c]
    return sum(1 for r in rows if predicate(r)) / len(rows) if rows else float("nan")


def summarize(
    out_dir: str | Path, settings: CSPSettings, *, source: str = "", model: dict | None = None
) -> dict:
    """Read ``candidates.csv`` back, draw the figures, write ``report.md``; return metrics."""
    out = Path(out_dir)
    with (out / "candidates.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("sample")]
    summary = summarize_rows(rows, settings.k)
    figures = _figures(out, summary, settings.k)
    for k in {1, settings.k}:  # the per-formula lists are in the CSV; keep the JSON short
        for proto in summary[f"k{k}"].values():  # type: ignore[union-attr]
            proto.pop("rmse_values")
    metrics = {
        "command": "csp",
        "source": source,
        "model": {
            "name": (model or {}).get("name"),
            "training_steps": (model or {}).get("training", {}).get("steps"),
            "precision": (model or {}).get("precision", DEFAULT_PRECISION),
            "family": (model or {}).get("family", "points"),
            "default_steps": (model or {}).get("default_steps"),
        },
        "settings": settings.to_dict(),
        "matcher": MATCHER_TOLERANCES,
        **summary,
        "published_mp20": {
            name: {f"k{k}": v for k, v in rates.items()} for name, rates in PUBLISHED_MP20.items()
        },
        "figures": [p.name for p in figures],
    }
    _write_report(out, metrics, settings)
    return metrics


def _figures(out: Path, summary: dict, k_max: int) -> list[Path]:
    ks = sorted({1, k_max})
    groups: dict[str, dict[str, float]] = {
        "pccd (val, DiffCSP protocol)": {
            f"k = {k}": summary[f"k{k}"]["diffcsp_protocol"]["match_rate"] for k in ks
        },
        "pccd (val, no validity filter)": {
            f"k = {k}": summary[f"k{k}"]["no_validity_filter"]["match_rate"] for k in ks
        },
    }
    for name, rates in PUBLISHED_MP20.items():
        groups[f"{name} (MP-20 test, published)"] = {
            f"k = {k}": v for k, v in rates.items() if k in ks
        }
    figs = [
        plots.bar_comparison(
            groups,
            out / "match_rate.png",
            title=f"CSP match rate ({summary['n_formulas']} formulas; "
            "StructureMatcher stol 0.5, ltol 0.3, angle 10°)",
            ylabel="match rate (%)",
        )
    ]
    figs.append(
        plots.box_kde(
            {f"k = {k}": summary[f"k{k}"]["diffcsp_protocol"]["rmse_values"] for k in ks},
            out / "rmse.png",
            title="RMSE of matched crystals (best of k candidates)",
            ylabel="RMSE (normalised by (V/N)^(1/3))",
            show_effective_rate=False,
        )
    )
    return figs


def _write_report(out: Path, metrics: dict, settings: CSPSettings) -> None:
    ks = sorted({1, settings.k})
    rows = []
    for k in ks:
        m = metrics[f"k{k}"]
        pub = {name: rates.get(k) for name, rates in PUBLISHED_MP20.items()}
        rows.append(
            [
                f"k = {k}",
                pct(m["diffcsp_protocol"]["match_rate"]),
                m["diffcsp_protocol"]["mean_rmse"],
                pct(m["no_validity_filter"]["match_rate"]),
                m["no_validity_filter"]["mean_rmse"],
                pct(pub["DiffCSP"]) if pub["DiffCSP"] is not None else "—",
                pct(pub["CDVAE"]) if pub["CDVAE"] is not None else "—",
            ]
        )
    results = markdown_table(
        [
            "candidates",
            "match rate",
            "mean RMSE",
            "match rate (no validity filter)",
            "mean RMSE (no filter)",
            "DiffCSP, MP-20",
            "CDVAE, MP-20",
        ],
        rows,
    )
    quality = markdown_table(
        ["share of candidates", "value"],
        [
            ["decoded", pct(metrics["decoded"])],
            ["exact formula reproduced", pct(metrics["formula_reproduced"])],
            ["structurally valid", pct(metrics["struct_valid"])],
            ["SMACT-valid composition", pct(metrics["comp_valid"])],
            ["plausible geometry (smallest covalent ratio ≥ 0.7)",
             pct(metrics["geometry"]["plausible_share"])],
            ["space group above P-1 (symprec 0.1 Å)", pct(metrics["geometry"]["symmetric_share"])],
            ["median smallest covalent ratio (not a share; MP val 0.93)",
             fmt(metrics["geometry"]["median_ratio"])],
        ],
    )  # fmt: skip
    s = metrics["settings"]
    settings_md = markdown_table(
        ["setting", "value"],
        [
            ["split", metrics["source"] or "—"],
            [
                "model",
                f"{metrics['model']['name']} ({metrics['model']['training_steps']} training steps)",
            ],
            ["network precision", metrics["model"].get("precision", DEFAULT_PRECISION)],
            [
                "formulas",
                f"{metrics['n_formulas']} scored of {s['n'] or 'all'} drawn (seed {s['seed']})",
            ],
            ["candidates per formula", s["k"]],
            [
                "sampler",
                f"{s['sampler']} ({s['steps'] or metrics['model']['default_steps']} steps)",
            ],
            ["conditions", "elements + exact cell formula"],
            ["guidance scale", s["guidance_scale"]],
        ],
    )
    notes = (
        "- Matching: pymatgen `StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`; RMSE is "
        "`get_rms_dist` (normalised by (V/N)^(1/3)), averaged over matched formulas, the best "
        "of the k candidates.\n"
        '- "match rate" follows DiffCSP: an invalid candidate (a distance < 0.5 Å, volume '
        "< 0.1 Å³, or a SMACT-invalid composition) never matches.\n"
        "- Published numbers are on MP-20's test split (≤ 20 atoms, any number of elements, "
        "9,046 crystals); pccd's split has ≤ 16 atoms and ≤ 3 elements and is split by reduced "
        "formula. They are quoted for orientation, not as a like-for-like comparison."
    )
    write_report(
        out,
        "Crystal structure prediction benchmark",
        [
            ("Settings", settings_md),
            ("Results", results),
            ("Candidate quality", quality),
            ("Protocol notes", notes),
        ],
        [out / f for f in metrics["figures"]],
    )
