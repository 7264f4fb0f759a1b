"""``pccd generate`` and ``pccd csp``: crystals from a model, as a run directory or a benchmark."""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

from pymatgen.core import Structure

from pccd import progress
from pccd.cli import options as opt
from pccd.cli.support import (
    check_mlip,
    check_options,
    check_run,
    device,
    load_data,
    load_model,
    load_split,
    require_path,
    sampler,
    set_threads,
    split,
)
from pccd.conditioning import STABILITY_LABELS, STABLE_E_ABOVE_HULL
from pccd.errors import InputError
from pccd.generator import Generator, Request
from pccd.runs import SamplingSettings, generate_run, recorded_precision
from pccd.screen.decode_relax import DecodeRelaxer
from pccd.screen.engines import DEFAULT_RELAX_ENGINE


def _write_formats(structure, out: Path, stem: str, formats: Sequence[str]) -> None:
    """Write ``structure`` in the extra formats beside its CIF (same stem)."""
    if "poscar" in formats:
        structure.to(filename=str(out / f"{stem}.vasp"), fmt="poscar")
    if "extxyz" in formats:  # ASE's writer and the adaptor cost ~0.6 s to import
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        write(out / f"{stem}.extxyz", AseAtomsAdaptor.get_atoms(structure), format="extxyz")


def _decode_relaxer(args: argparse.Namespace) -> DecodeRelaxer | None:
    """``generate --relax MLIP``: the relaxer (validated before any work), else None."""
    if args.relax is None:
        if args.relax_engine is not None or args.relax_batch_size is not None:
            raise InputError("--relax-engine / --relax-batch-size only apply with --relax MLIP")
        return None
    check_mlip(args.relax)
    batch = {} if args.relax_batch_size is None else {"batch_size": args.relax_batch_size}
    return DecodeRelaxer(
        args.relax, engine=args.relax_engine or DEFAULT_RELAX_ENGINE, device=device(args), **batch
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    n: int | None = args.n
    if args.max_draws is not None and not args.valid_only:
        raise InputError("--max-draws only applies with --valid-only")
    if args.guide and args.guidance == 1.0:
        raise InputError("--guide chooses what --guidance amplifies; give --guidance other than 1")
    if args.valid_only and args.elements_from:
        raise InputError("--valid-only takes one request (--elements or --formula), not a split")
    relaxer = _decode_relaxer(args)
    if args.elements_from:
        if args.formula:
            raise InputError("--formula fixes the elements; it cannot go with --elements-from")
        require_path(args.elements_from, "--elements-from")
        table = load_data(args.elements_from).table
        if len(table) == 0:
            raise InputError(f"--elements-from {args.elements_from}: no crystal loaded from it")
        requests = [
            Request.parse(
                els, band_gap=args.band_gap, magnetic=args.magnetic, stability=args.stability
            )
            for els in table.draw_element_lists(args.n, args.seed)
        ]
        n = None
    else:
        requests = Request.parse(
            split(args.elements),
            formula=args.formula,
            band_gap=args.band_gap,
            magnetic=args.magnetic,
            stability=args.stability,
        )  # validated before loading anything heavy
    set_threads(args.threads)
    out = Path(args.out)
    if args.precision is None:  # a rerun resumes at the precision its run recorded
        args.precision = recorded_precision(out)
    pipeline = load_model(args)
    args.sampler = sampler(pipeline, args)
    check_run(pipeline, requests, args)
    extra = [f for f in args.format if f != "cif"]
    if args.valid_only and relaxer is not None:
        raise InputError("--relax does not go with --valid-only; relax with pccd screen")
    settings = SamplingSettings.of(
        pipeline,
        requests,
        n,
        relax=relaxer,
        batch_size=args.batch_size,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance,
        guide=args.guide,
        repulsion=args.repulsion,
        seed=args.seed,
        valid_only=args.valid_only,
        max_draws=args.max_draws,
    )
    if args.valid_only:
        return _generate_valid(pipeline, settings, out, extra, t0)
    width = len(str(max(args.n - 1, 1)))  # the id width pccd.runs uses
    counts = {"ok": 0, "failed": 0}
    with progress.bar(args.n, "generated", "crystal") as pbar:

        def report(batch) -> None:
            for s in batch:
                counts["ok" if s.structure is not None else "failed"] += 1
                if s.structure is not None and extra:
                    stem = f"{s.index:0{width}d}_{s.structure.composition.reduced_formula}"
                    _write_formats(s.structure, out, stem, extra)
            pbar.update(len(batch))

        summary = generate_run(
            pipeline, settings, out, requests=requests, on_batch=report, relax=relaxer
        )
    relaxed = ""
    if relaxer is not None:
        with summary.open(newline="") as fh:
            status = [r["relax_status"] for r in csv.DictReader(fh)]
        relaxed = (
            f"; relaxed with {relaxer.mlip}: {status.count('ok')} ok, "
            f"{status.count('relax_failed')} failed (reasons in the summary)"
        )
    print(
        f"{counts['ok']} decoded, {counts['failed']} failed this run, in "
        f"{time.perf_counter() - t0:.1f} s{relaxed}; summary: {summary}"
    )
    return 0


def _generate_valid(
    pipeline: Generator, settings: SamplingSettings, out: Path, extra: list[str], t0: float
) -> int:
    """``generate --valid-only``: sample until n crystals pass; report the acceptance rate."""
    with progress.bar(None, "drawn", "crystal") as pbar:
        summary = generate_run(
            pipeline, settings, out, on_batch=lambda batch: pbar.update(len(batch))
        )
    if extra:
        with summary.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row["status"] == "ok":
                    structure = Structure.from_file(out / row["cif"])
                    _write_formats(structure, out, Path(row["cif"]).stem, extra)
    acc = json.loads((out / "acceptance.json").read_text())
    print(
        f"{acc['accepted']} passing crystals of {acc['drawn']} drawn (acceptance "
        f"{100 * acc['acceptance_rate']:.1f}%) in {time.perf_counter() - t0:.1f} s; "
        f"summary: {summary}"
    )
    return 0


def _cmd_csp(args: argparse.Namespace) -> int:
    """The DiffCSP crystal-structure-prediction benchmark on a split."""
    # the benchmark's matcher, plots and reports: a second of imports `pccd generate` skips
    from pccd.experiments.csp import CSPSettings, run_csp

    require_path(args.path, "split")
    set_threads(args.threads)
    pipeline = load_model(args)
    args.sampler = sampler(pipeline, args)
    check_options(pipeline, sampler=args.sampler, steps=args.steps, repulsion=args.repulsion)
    settings = CSPSettings(
        n=args.n,
        k=args.k,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        batch_size=args.batch_size,
        guidance_scale=args.guidance,
        formula_decoding=args.formula_decoding,
        repulsion=args.repulsion,
    )
    table = load_split(args)
    metrics = run_csp(
        pipeline,
        table,
        args.out,
        settings,
        source=str(args.path),
        model_label=str(args.model or "shipped"),
    )
    for k in sorted({1, settings.k}):
        m = metrics[f"k{k}"]["diffcsp_protocol"]
        print(
            f"k={k}: match rate {100 * m['match_rate']:.2f}% of {metrics['n_formulas']} formulas,"
            f" mean RMSE {m['mean_rmse']:.4f}"
        )
    print(f"metrics.json, report.md and figures in {args.out}")
    return 0


def register(sub: argparse._SubParsersAction, verbosity: argparse.ArgumentParser) -> None:
    """Add ``generate`` and ``csp`` to the ``pccd`` parser."""
    p_gen = sub.add_parser(
        "generate",
        help="generate crystals with a pretrained model",
        parents=[
            *opt.model_parents(verbosity),
            opt.repulsion_parent(),
            opt.relax_engine_parent(),
        ],
    )
    which = p_gen.add_mutually_exclusive_group()
    which.add_argument("--elements", help="comma-separated, e.g. Mg,Mn,O (≤3)")
    which.add_argument(
        "--elements-from",
        metavar="SPLIT",
        help="one element list per crystal, drawn (seeded) from a split, e.g. the val CSV",
    )
    p_gen.add_argument("--formula", help="exact cell formula for CSP mode, e.g. Mg2MnO4")
    p_gen.add_argument(
        "--band-gap", type=opt.NON_NEGATIVE_FLOAT, help="condition on a band gap (eV, ≥ 0)"
    )
    p_gen.add_argument("--magnetic", choices=["NM", "FM", "AFM", "FiM"])
    p_gen.add_argument(
        "--stability",
        choices=list(STABILITY_LABELS),
        help="condition on stability: stable = energy above the hull below "
        f"{STABLE_E_ABOVE_HULL} eV/atom (models trained with stability labels only)",
    )
    p_gen.add_argument(
        "-n", type=opt.POSITIVE_INT, default=10, help="how many crystals (default 10)"
    )
    p_gen.add_argument("--out", required=True, help="directory for CIFs and summary.csv")
    p_gen.add_argument(
        "--format",
        type=opt.formats,
        default=("cif",),
        help="comma list of cif, extxyz, poscar (default cif; the CIF is always written, "
        "other formats go beside it with the same name)",
    )
    p_gen.add_argument(
        "--guide",
        type=opt.conditions_list,
        metavar="CONDITIONS",
        help="conditions --guidance amplifies, comma list (e.g. band_gap: push towards the "
        "asked gap, elements kept in both branches); default all of them, as in the paper",
    )
    p_gen.add_argument(
        "--valid-only",
        action="store_true",
        help="keep sampling until n crystals decode with the requested elements (or formula) "
        "and plausible geometry (smallest covalent ratio ≥ 0.7); every draw is a summary row",
    )
    p_gen.add_argument(
        "--max-draws", type=opt.POSITIVE_INT, help="cap on draws with --valid-only (default 50·n)"
    )
    p_gen.add_argument(
        "--relax",
        metavar="MLIP",
        help="relax each crystal right after decoding with this MLIP (chgnet, 7net-0 or "
        "module:factory; off by default): relaxed CIFs in OUT/relaxed/, raw and relaxed "
        "energies and failure reasons in summary.csv",
    )
    p_gen.set_defaults(func=_cmd_generate)

    p_csp = sub.add_parser(
        "csp",
        help="crystal structure prediction benchmark: k candidates per formula",
        parents=[
            *opt.model_parents(verbosity),
            opt.repulsion_parent(
                "sampling-time repulsion (see pccd generate --help); off = the raw model"
            ),
            opt.filter_parent(),
        ],
    )
    p_csp.add_argument("path", help="the split whose formulas are predicted (e.g. val)")
    p_csp.add_argument("--out", required=True, help="output directory (resumable)")
    p_csp.add_argument("-n", type=opt.COUNT_OR_ALL, default=1000, help="formulas drawn (0 = all)")
    p_csp.add_argument(
        "-k", type=opt.POSITIVE_INT, default=20, help="candidates per formula (k=1 also shown)"
    )
    p_csp.add_argument(
        "--formula-decoding",
        choices=["blocks", "cluster"],
        default="blocks",
        help="atoms from the row blocks the formula fixes (default) or DBSCAN (the paper's)",
    )
    p_csp.set_defaults(func=_cmd_csp)
