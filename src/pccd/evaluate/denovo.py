"""De novo generation metrics over a directory of CIFs (the CDVAE / DiffCSP protocol).

Any generator's output can be scored: the input is a directory of CIF files (e.g. what
``pccd generate`` writes; its ``summary.csv`` failures are counted when present). Metrics:

* validity: structural (all distances ≥ 0.5 Å, volume ≥ 0.1 Å³) and compositional (SMACT
  charge neutrality + electronegativity), over all n scored crystals;
* COV-R / COV-P against a reference split (CrystalNN + Magpie fingerprints, cut-offs 0.4 / 10),
  over all n crystals (those without a fingerprint count as misses);
* Wasserstein distances of density and of the number of elements, valid crystals vs the
  reference split;
* uniqueness (StructureMatcher within each reduced formula) among valid crystals;
* novelty among valid crystals: no match in a database of known crystals (by reduced formula);
* geometry of every sample (:mod:`~pccd.evaluate.geometry`) and, when matminer is installed,
  the shipped band-gap instrument's readings (:mod:`~pccd.evaluate.band_gap`): predicted gap
  and probability of a non-metal per crystal, summarised over every sample.

Per-crystal results go to ``structures.csv`` as they are computed (the costly part:
fingerprints and novelty), so an interrupted evaluation resumes; reference fingerprints are
cached next to pccd's parsed-data cache, keyed by the reference file's content.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from pccd import data as data_mod
from pccd import progress
from pccd.errors import InputError, MissingInputError
from pccd.evaluate import band_gap, fingerprints, plots
from pccd.evaluate.generation_metrics import (
    coverage,
    is_compositionally_valid,
    is_structurally_valid,
    property_wasserstein,
    unique_mask,
)
from pccd.evaluate.geometry import covalent_ratio, space_group_number, summarize_geometry
from pccd.evaluate.novelty import ReferenceIndex
from pccd.evaluate.report import fmt, markdown_table, pct, write_metrics, write_report
from pccd.outputs import ResultTable, check_run_settings, list_cifs

_log = logging.getLogger(__name__)

COLUMNS = (
    "name",
    "status",
    "reason",
    "formula",
    "n_atoms",
    "n_elements",
    "density",
    "struct_valid",
    "comp_valid",
    "covalent_ratio",
    "space_group_number",
    "novel",
    "known_id",
    "struct_fp",
    "comp_fp",
    "fp_error",
    "predicted_band_gap",
    "p_insulator",
)


@dataclass(frozen=True)
class DeNovoSettings:
    """What determines an evaluation (recorded in ``run.json``).

    Attributes:
        n: crystals scored, drawn (seeded) from the directory's CIFs; 0 = all.
        seed: the draw of crystals (and of the reference subset).
        struct_cutoff, comp_cutoff: COV cut-offs (MP-20: 0.4 and 10).
        n_reference: reference crystals used (0 = all of the split).
        novelty: check novelty against the known-crystal database.
    """

    n: int = 0
    seed: int = 0
    struct_cutoff: float = 0.4
    comp_cutoff: float = 10.0
    n_reference: int = 0
    novelty: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def decode_failures(directory: str | Path) -> tuple[int, int] | None:
    """(failed, attempted) from a ``pccd generate`` ``summary.csv`` if there is one."""
    path = Path(directory) / "summary.csv"
    if not path.exists():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return sum(1 for r in rows if r.get("status") == "failed"), len(rows)


# Any generator's crystals are scored (no size or element-count filter), but a cell no solid can
# have is refused before the fingerprints, which never finish on e.g. a 10⁶ Å axis.
_SCORABLE = data_mod.FilterOptions(max_sites=100_000, max_elements=118, min_distance=0.0)


def read_scorable(path: Path) -> Structure:
    """Read one CIF for scoring; ``InvalidCrystal`` (with its reason) for a nonphysical cell."""
    text = path.read_text(errors="replace")
    data_mod.check_cif_cell(text, _SCORABLE)
    structure = Structure.from_str(text, fmt="cif")
    data_mod.check_structure(structure, _SCORABLE)
    return structure


def structure_row(
    structure: Structure,
    known: ReferenceIndex | None,
    gap_model: band_gap.BandGapModel | None = None,
) -> dict[str, object]:
    """Per-crystal metrics (validity, fingerprints, novelty, band-gap reading) as
    ``structures.csv`` columns; a featurizer failure is recorded in ``fp_error``."""
    row: dict[str, object] = {
        "status": "ok",
        "formula": structure.composition.reduced_formula,
        "n_atoms": len(structure),
        "n_elements": len(structure.composition.elements),
        "density": f"{structure.density:.6g}",
        "struct_valid": int(is_structurally_valid(structure)),
        "comp_valid": int(is_compositionally_valid(structure.composition)),
        "covalent_ratio": f"{covalent_ratio(structure):.4f}",
        "space_group_number": space_group_number(structure),
    }
    errors = []
    magpie = None
    try:
        row["struct_fp"] = json.dumps(
            np.round(fingerprints.crystalnn_fingerprint(structure), 6).tolist()
        )
    except Exception as exc:  # recorded: the crystal then has no structure fingerprint
        errors.append(f"CrystalNN: {type(exc).__name__}: {exc}"[:150])
    try:
        magpie = fingerprints.magpie_fingerprint(structure)
        row["comp_fp"] = json.dumps(np.round(magpie, 6).tolist())
    except Exception as exc:
        errors.append(f"Magpie: {type(exc).__name__}: {exc}"[:150])
    if gap_model is not None:
        try:  # the instrument reads the same Magpie vector (recomputed only if that failed)
            x = band_gap.featurize_one(structure, gap_model.features, magpie)
            gap, p = gap_model.predict_features(x[None, :])
            row.update(predicted_band_gap=f"{gap[0]:.4f}", p_insulator=f"{p[0]:.4f}")
        except Exception as exc:  # recorded: the crystal then counts as not measured
            errors.append(f"band gap: {type(exc).__name__}: {exc}"[:150])
    row["fp_error"] = "; ".join(errors)
    if known is not None:
        match = known.find(structure)
        row.update(novel=int(match is None), known_id=match or "")
    return row


def reference_fingerprints(
    structures: Sequence[Structure],
    cache_key: str | None = None,
    log: Callable[[str], None] = _log.info,
) -> dict[str, np.ndarray]:
    """CrystalNN and Magpie fingerprints, densities and element counts of reference crystals.

    With ``cache_key`` the arrays are kept in pccd's cache directory (computing them for the
    5,303 val crystals takes minutes; reading them back, milliseconds).
    """
    cache = data_mod.cache_dir() / f"reference_fp_{cache_key}.npz" if cache_key else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    n = len(structures)
    struct = np.full((n, 61), np.nan)
    comp = np.full((n, 132), np.nan)
    for i, s in enumerate(structures):
        # a crystal matminer cannot featurize keeps NaN and is left out of the reference
        with contextlib.suppress(Exception):
            struct[i] = fingerprints.crystalnn_fingerprint(s)
        with contextlib.suppress(Exception):
            comp[i] = fingerprints.magpie_fingerprint(s)
        if (i + 1) % 500 == 0:
            log(f"  reference fingerprints {i + 1}/{n}")
    out = {
        "struct": struct,
        "comp": comp,
        "density": np.array([s.density for s in structures]),
        "n_elements": np.array([len(s.composition.elements) for s in structures]),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(cache)
    return out


def load_reference(path: str | Path, n: int, seed: int) -> tuple[list[Structure], str]:
    """Reference crystals (all, or n drawn with ``seed``) and a cache key for their prints.

    The key hashes the crystals themselves (ids, cells, sites), so it is the same for a CSV
    and a CIF directory holding the same crystals and changes when any of them changes.
    """
    table = data_mod.load(path, data_mod.FilterOptions(max_sites=1024, max_elements=118)).table
    idx = np.arange(len(table))
    if 0 < n < len(table):
        idx = np.sort(np.random.default_rng(seed).permutation(len(table))[:n])
    sub = table.subset(idx)
    digest = hashlib.sha1()
    digest.update("\n".join(map(str, sub.ids)).encode())
    for array in (sub.lattices, sub.offsets, sub.frac_coords, sub.numbers):
        digest.update(np.ascontiguousarray(array).tobytes())
    return [sub.structure(i) for i in range(len(sub))], digest.hexdigest()[:20]


def load_band_gap_instrument(
    log: Callable[[str], None] = _log.info,
) -> tuple[band_gap.BandGapModel | None, str | None]:
    """The shipped band-gap instrument, or ``(None, reason)`` when it cannot be used.

    The instrument is an extra reading, not part of the CDVAE protocol, so a missing matminer,
    a missing model file or a model written by another scikit-learn skips it with one log line
    (and the reason in ``metrics.json``) instead of stopping the evaluation.
    """
    try:
        return band_gap.load_shipped(), None
    except (ImportError, FileNotFoundError, band_gap.InstrumentVersionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log(f"band-gap instrument skipped: {reason}")
        return None, reason


def evaluate_directory(
    directory: str | Path,
    out_dir: str | Path,
    settings: DeNovoSettings = DeNovoSettings(),
    *,
    reference: str | Path | None = None,
    known: str | Path | ReferenceIndex | None = None,
    log: Callable[[str], None] = _log.info,
) -> dict:
    """Score the CIFs in ``directory`` into ``out_dir`` (resumable); return the metrics.

    Args:
        directory: CIFs to evaluate.
        out_dir: where ``structures.csv``, ``metrics.json``, ``report.md`` and PNGs go.
        settings: see :class:`DeNovoSettings`.
        reference: a split (CSV, CIF dir, ...) for COV and the Wasserstein distances; without
            it those metrics are missing, with the reason.
        known: a known-crystal database (MP-20-format CSV path or a :class:`ReferenceIndex`)
            for novelty; without it novelty is missing, with the reason.
    """
    out = Path(out_dir)
    for label, path in (("reference", reference), ("known", known)):
        if isinstance(path, (str, Path)) and not Path(path).exists():
            raise MissingInputError(f"--{label} {path}: no such file or directory")
    files = list_cifs(directory)
    if not files:
        raise InputError(f"no CIF files in {directory}")
    gap_model, gap_skipped = load_band_gap_instrument(log)
    check_run_settings(
        out,
        {
            **settings.to_dict(),
            "directory": str(Path(directory).resolve()),
            "reference": str(reference) if reference else None,
            "known": str(known) if isinstance(known, (str, Path)) else None,
            # a resumed run must not mix readings of two instruments (or with and without one)
            "band_gap_instrument": gap_model.fingerprint if gap_model else None,
        },
    )
    picked = files
    if 0 < settings.n < len(files):
        order = np.random.default_rng(settings.seed).permutation(len(files))[: settings.n]
        picked = [files[i] for i in sorted(order)]
    index: ReferenceIndex | None = None
    if settings.novelty and known is not None:
        t0 = time.perf_counter()
        index = known if isinstance(known, ReferenceIndex) else ReferenceIndex.from_csv(known)
        log(
            f"known crystals: {len(index)} in {index.formulas} formulas "
            f"({time.perf_counter() - t0:.1f} s)"
        )

    rows = ResultTable(out / "structures.csv", COLUMNS, key="name")
    t0 = time.perf_counter()
    todo = [f for f in picked if f.name not in rows]
    pbar = progress.bar(len(picked), "scored", "crystal", initial=len(picked) - len(todo))
    for count, path in enumerate(todo, 1):
        try:
            with warnings.catch_warnings():  # CIF rounding notes, missing radii: not errors
                warnings.simplefilter("ignore")
                structure = read_scorable(path)
                row = {"name": path.name, **structure_row(structure, index, gap_model)}
        except Exception as exc:  # an unreadable CIF is an invalid sample, not a crash
            row = {
                "name": path.name,
                "status": "unreadable",
                "reason": str(exc)[:200],
                "struct_valid": 0,
                "comp_valid": 0,
            }
        rows.append(row)
        pbar.update(1)
        if count % 100 == 0 or count == len(todo):
            _log.debug("scored %d/%d crystals", count, len(todo))
    pbar.close()
    seconds = time.perf_counter() - t0

    ref_data = None
    if reference is not None:
        ref_structures, key = load_reference(reference, settings.n_reference, settings.seed)
        log(f"reference: {len(ref_structures)} crystals from {reference}")
        ref_data = reference_fingerprints(ref_structures, key, log)
    metrics = summarize(
        out,
        [rows.rows[f.name] for f in picked],
        directory,
        settings,
        ref_data=ref_data,
        n_available=len(files),
        failures=decode_failures(directory),
        novelty_reason=None
        if index is not None
        else ("novelty disabled" if not settings.novelty else "no known-crystal database given"),
        reference_label=str(reference) if reference else None,
        gap_model=gap_model,
        gap_skipped=gap_skipped,
    )
    metrics["timing_this_invocation"] = {"scoring_seconds": seconds, "scored": len(todo)}
    write_metrics(out, metrics)
    return metrics


def _per_sample(
    rows: Sequence[dict],
    failures: tuple[int, int] | None,
    n_available: int,
    columns: Sequence[str],
    cast: Callable[[str], float],
) -> tuple[list[list[float | None]], str]:
    """Per-sample values of ``columns`` (``None`` where a row lacks them), and the denominator.

    Unreadable CIFs and rows without the values get ``None``. When the directory is a whole
    ``pccd generate`` run (its summary.csv lists decode failures and every CIF was scored),
    each failed decode adds a ``None`` too, so shares are over every sample the generator drew.
    """
    values: list[list[float | None]] = [[] for _ in columns]
    for r in rows:
        ok = r.get("status") == "ok" and all(r.get(c) not in (None, "") for c in columns)
        for v, c in zip(values, columns, strict=True):
            v.append(cast(r[c]) if ok else None)
    if failures is not None and len(rows) == n_available:
        for v in values:
            v += [None] * failures[0]
    denominator = "every generated sample" if len(values[0]) > len(rows) else "scored CIFs"
    return values, denominator


def _geometry(
    rows: Sequence[dict], failures: tuple[int, int] | None, n_available: int
) -> dict[str, float | int]:
    """Plausible share, median covalent ratio and share above P-1 (unreadable = implausible)."""
    (ratios, groups), denominator = _per_sample(
        rows, failures, n_available, ("covalent_ratio", "space_group_number"), float
    )
    out = summarize_geometry(ratios, [None if g is None else int(g) for g in groups]).to_dict()
    out["denominator"] = denominator
    return out


def _band_gaps(
    rows: Sequence[dict],
    failures: tuple[int, int] | None,
    n_available: int,
    gap_model: band_gap.BandGapModel,
) -> dict[str, object]:
    """The instrument's readings over every sample (unmeasured ones count as not insulators),
    with the instrument's own val error beside them."""
    (gaps, probs), denominator = _per_sample(
        rows, failures, n_available, ("predicted_band_gap", "p_insulator"), float
    )
    out: dict[str, object] = band_gap.summarize_band_gaps(gaps, probs).to_dict()
    out["denominator"] = denominator
    out["instrument"] = gap_model.describe()
    return out


def _fp(rows: Sequence[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    """Stacked fingerprints and the mask of rows that have one."""
    has = np.array([bool(r.get(column)) for r in rows], dtype=bool)
    values = [json.loads(r[column]) for r in rows if r.get(column)]
    return (np.array(values) if values else np.zeros((0, 1))), has


def summarize(
    out: Path,
    rows: Sequence[dict],
    directory: str | Path,
    settings: DeNovoSettings,
    *,
    ref_data: dict[str, np.ndarray] | None,
    n_available: int,
    failures: tuple[int, int] | None,
    novelty_reason: str | None,
    reference_label: str | None,
    gap_model: band_gap.BandGapModel | None = None,
    gap_skipped: str | None = "no band-gap instrument given",
) -> dict:
    """Turn per-crystal rows into the protocol's metrics, figures and ``report.md``."""
    n = len(rows)
    sv = np.array([r.get("struct_valid") == "1" for r in rows])
    cv = np.array([r.get("comp_valid") == "1" for r in rows])
    valid = sv & cv
    valid_rows = [r for r, v in zip(rows, valid, strict=True) if v]
    metrics: dict[str, object] = {
        "command": "evaluate",
        "directory": str(directory),
        "settings": settings.to_dict(),
        "n_available": n_available,
        "n_used": n,
        "unreadable": sum(1 for r in rows if r.get("status") == "unreadable"),
        "struct_valid": float(sv.mean()) if n else float("nan"),
        "comp_valid": float(cv.mean()) if n else float("nan"),
        "valid": float(valid.mean()) if n else float("nan"),
        "n_valid": int(valid.sum()),
    }
    if failures is not None:
        failed, attempted = failures
        metrics["generator_decode_failures"] = {"failed": failed, "attempted": attempted}
    metrics["geometry"] = _geometry(rows, failures, n_available)
    missing: dict[str, str] = {}
    if gap_model is not None:
        metrics["band_gap_instrument"] = _band_gaps(rows, failures, n_available, gap_model)
    else:
        missing["band_gap_instrument"] = gap_skipped or "band-gap instrument skipped"
    figures: list[Path] = []

    # coverage and distribution distances against the reference
    if ref_data is None:
        for key in ("cov_r", "cov_p", "wdist_density", "wdist_num_elems"):
            missing[key] = "no reference split given"
    else:
        both = np.array([bool(r.get("struct_fp")) and bool(r.get("comp_fp")) for r in rows])
        fp_rows = [r for r, b in zip(rows, both, strict=True) if b]
        gen_s, _ = _fp(fp_rows, "struct_fp")
        gen_c, _ = _fp(fp_rows, "comp_fp")
        ok = np.all(np.isfinite(ref_data["struct"]), axis=1) & np.all(
            np.isfinite(ref_data["comp"]), axis=1
        )
        cov = coverage(
            gen_s,
            gen_c,
            ref_data["struct"][ok],
            ref_data["comp"][ok],
            struct_cutoff=settings.struct_cutoff,
            comp_cutoff=settings.comp_cutoff,
            n_generated=n,
        )
        metrics.update(
            cov_r=cov.recall,
            cov_p=cov.precision,
            cov_details={
                "struct_cutoff": cov.struct_cutoff,
                "comp_cutoff": cov.comp_cutoff,
                "n_generated": cov.n_generated,
                "n_with_fingerprint": cov.n_with_fingerprint,
                "n_reference": cov.n_reference,
            },
        )
        dens = [float(r["density"]) for r in valid_rows]
        nel = [int(r["n_elements"]) for r in valid_rows]
        metrics["wdist_density"] = property_wasserstein(dens, ref_data["density"])
        metrics["wdist_num_elems"] = property_wasserstein(nel, ref_data["n_elements"])
        if not valid_rows:
            missing["wdist_density"] = missing["wdist_num_elems"] = "no valid crystals"
        metrics["reference"] = {"source": reference_label, "n": len(ref_data["density"])}
        figures.append(
            plots.histogram_comparison(
                dens,
                ref_data["density"],
                out / "density.png",
                title="Density of valid generated crystals vs reference",
                xlabel="density (g/cm³)",
            )
        )
        figures.append(
            plots.histogram_comparison(
                nel,
                ref_data["n_elements"],
                out / "num_elements.png",
                title="Number of elements per crystal, valid generated vs reference",
                xlabel="distinct elements per crystal",
                discrete=True,
            )
        )

    # uniqueness and novelty among valid crystals
    directory = Path(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_file(directory / r["name"]) for r in valid_rows]
        unique = unique_mask(structures)
    metrics["n_unique"] = int(unique.sum())
    metrics["uniqueness"] = float(unique.mean()) if len(unique) else float("nan")
    if novelty_reason is None:
        novel = np.array([r.get("novel") == "1" for r in valid_rows], dtype=bool)
        metrics["n_novel"] = int(novel.sum())
        metrics["novelty"] = float(novel.mean()) if len(novel) else float("nan")
        metrics["unique_and_novel"] = float((novel & unique).mean()) if len(novel) else float("nan")
    else:
        for key in ("novelty", "unique_and_novel"):
            missing[key] = novelty_reason
    if not valid_rows:
        missing.setdefault("uniqueness", "no valid crystals")
    metrics["missing"] = missing
    figures.append(
        plots.histogram_comparison(
            [int(r["n_atoms"]) for r in rows if r.get("n_atoms")],
            [],
            out / "atoms_per_cell.png",
            title="Atoms per cell of the scored crystals",
            xlabel="atoms per cell",
            discrete=True,
        )
    )
    metrics["figures"] = [p.name for p in figures]
    _write_report(out, metrics)
    return metrics


def _write_report(out: Path, m: dict) -> None:
    missing = m["missing"]

    def cell(key: str, percent: bool = True) -> str:
        if key in missing:
            return f"— ({missing[key]})"
        value = m.get(key)
        return pct(value) if percent else fmt(value)

    rows = [
        ["structural validity", cell("struct_valid")],
        ["compositional validity (SMACT)", cell("comp_valid")],
        ["COV-R", cell("cov_r")],
        ["COV-P", cell("cov_p")],
        ["Wasserstein distance of density (g/cm³)", cell("wdist_density", False)],
        ["Wasserstein distance of #elements", cell("wdist_num_elems", False)],
        ["uniqueness (of valid)", cell("uniqueness")],
        ["novelty (of valid)", cell("novelty")],
        ["unique and novel (of valid)", cell("unique_and_novel")],
    ]
    g = m["geometry"]
    rows += [
        [f"plausible geometry (smallest covalent ratio ≥ 0.7; of {g['denominator']})",
         pct(g["plausible_share"])],
        ["median smallest covalent ratio (MP val: 0.93)", fmt(g["median_ratio"])],
        [f"space group above P-1 (symprec 0.1 Å; of {g['denominator']})",
         pct(g["symmetric_share"])],
    ]  # fmt: skip
    rows += _band_gap_rows(m)
    counts = (
        f"{m['n_used']} crystals scored of {m['n_available']} CIFs in `{m['directory']}` "
        f"(--n {m['settings']['n'] or 'all'}, seed {m['settings']['seed']}); "
        f"{m['n_valid']} valid, {m['unreadable']} unreadable."
    )
    if "generator_decode_failures" in m:
        f = m["generator_decode_failures"]
        counts += (
            f" The generator's summary.csv lists {f['failed']} failed decodes of "
            f"{f['attempted']} attempts (not included above)."
        )
    if "reference" in m:
        counts += f" Reference: {m['reference']['n']} crystals of {m['reference']['source']}."
    notes = (
        "- Protocol of CDVAE (Xie et al. 2022) as used by DiffCSP: validity and COV over all "
        "scored crystals; Wasserstein distances, uniqueness and novelty over valid ones (all "
        "of them; CDVAE draws 1,000 valid crystals for the Wasserstein distances).\n"
        f"- COV cut-offs: structure {m['settings']['struct_cutoff']}, composition "
        f"{m['settings']['comp_cutoff']}; CrystalNN 'ops' site fingerprints averaged over "
        "sites; Magpie vectors standardised with the reference set's mean and std (CDVAE uses "
        "fixed constants from its training data).\n"
        "- SMACT rules with the SMACT-2 oxidation-state list (`smact14`), as CDVAE.\n"
        "- Published MP-20 numbers (CDVAE, DiffCSP) use 10,000 samples on a GPU and the MP-20 "
        "test split as reference (≤ 20 atoms, any number of elements): a different protocol "
        "size and data set."
    )
    notes += _band_gap_note(m)
    write_report(
        out,
        "De novo generation metrics",
        [
            ("Counts", counts),
            ("Results", markdown_table(["metric", "this run"], rows)),
            ("Protocol notes", notes),
        ],
        [out / f for f in m["figures"]],
    )


def _band_gap_rows(m: dict) -> list[list[str]]:
    """Report rows of the band-gap instrument, its own val MAE in the label."""
    b = m.get("band_gap_instrument")
    if b is None:
        reason = m["missing"].get("band_gap_instrument", "skipped")
        return [["predicted band gap (band-gap instrument)", f"— ({reason})"]]
    val = b["instrument"].get("validation") or {}
    mae = val.get("gap_mae_eV_all")
    err = f"instrument val MAE {fmt(mae, 3)} eV" if mae is not None else "val error unknown"
    return [
        [f"mean predicted band gap, PBE (eV; of {b['n_measured']} measured; {err})",
         fmt(b["mean_predicted_band_gap_eV_of_measured"], 3)],
        [f"predicted non-metals (gap ≥ {b['instrument']['metal_threshold_eV']} eV; of "
         f"{b['denominator']}, unmeasured count as not)",
         pct(b["insulator_share_of_all_samples"])],
    ]  # fmt: skip


def _band_gap_note(m: dict) -> str:
    """The protocol note that states what the band-gap instrument is and its own error."""
    b = m.get("band_gap_instrument")
    if b is None:
        return ""
    inst = b["instrument"]
    val = inst.get("validation") or {}
    features = "matminer Magpie statistics of the composition" + (
        " plus density, volume per atom and packing fraction"
        if inst["features"] == "composition+structure"
        else " (polymorphs of one composition get one reading)"
    )
    figures = (
        f"on {val.get('n')} MP val crystals (formulas not in its training data) metal / "
        f"non-metal accuracy {pct(val.get('accuracy'), 1)} (majority class "
        f"{pct(val.get('baseline_accuracy_majority_class'), 1)}), ROC AUC "
        f"{fmt(val.get('roc_auc'), 3)}, gap MAE {fmt(val.get('gap_mae_eV_all'), 3)} eV over "
        f"all and {fmt(val.get('gap_mae_eV_nonmetals'), 3)} eV over the non-metals (predicting "
        f"the train mean: {fmt(val.get('baseline_gap_mae_eV_all_train_mean'), 3)} eV)"
        if val
        else "its val error is not recorded with this model"
    )
    if "mean_gap_eV_predicted_vs_true" in val:  # the bias a sample-set average inherits
        (gp, gt), (sp, st) = (
            val["mean_gap_eV_predicted_vs_true"],
            val["insulator_share_predicted_vs_true"],
        )
        figures += (
            f"; over val as a whole it read a mean gap of {fmt(gp, 3)} eV (true {fmt(gt, 3)}) "
            f"and {pct(sp, 1)} non-metals (true {pct(st, 1)})"
        )
    return (
        "\n- Band-gap instrument (`pccd.evaluate.band_gap`, features "
        f"`{inst['features']}`, model {inst.get('model_sha256_12')}): gradient-boosted trees on "
        f"{features}, trained on the MP 2018 PBE gaps of the "
        f"mp_pccd train split, never on generated crystals; {figures}. A reading is a PBE-level "
        "estimate (PBE underestimates gaps), and a crystal far from anything in MP is read "
        "with more error than that."
    )
