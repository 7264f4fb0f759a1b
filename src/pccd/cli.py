"""The ``pccd`` command: a thin layer that parses arguments and calls the library.

Each sub-command lives in a ``_cmd_*`` function that does no science itself; everything it does
is available from Python too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pccd import data


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-sites", type=int, default=16, help="largest cell kept (default 16)")
    p.add_argument("--max-elements", type=int, default=3, help="most elements kept (default 3)")
    p.add_argument(
        "--min-distance", type=float, default=0.5, help="overlap threshold in Å (default 0.5)"
    )
    p.add_argument("--no-cache", action="store_true", help="parse again, ignore the cache")


def _filter_options(args: argparse.Namespace) -> data.FilterOptions:
    return data.FilterOptions(
        max_sites=args.max_sites, max_elements=args.max_elements, min_distance=args.min_distance
    )


def _histogram(counts: dict, width: int = 40) -> list[str]:
    top = max(counts.values(), default=1)
    return [f"  {k!s:>4} {v:7d} {'#' * max(1, round(width * v / top))}" for k, v in counts.items()]


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    result = data.load(args.path, _filter_options(args), cache=not args.no_cache)
    summary = data.summarize(result)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['source']}: {summary['loaded']} loaded, {summary['rejected']} rejected")
    if summary["reasons"]:
        print("rejections by reason:")
        for reason, n in summary["reasons"].items():  # type: ignore[union-attr]
            print(f"  {reason:<20} {n}")
        for r in result.rejected[: args.show]:
            print(f"    {r.id}: {r.reason.value} ({r.detail})")
    print(
        f"properties: band gap for {summary['with_band_gap']}, "
        f"magnetic ordering for {summary['with_magnetic']}"
    )
    print("sites per cell:")
    print("\n".join(_histogram(summary["sites"])))  # type: ignore[arg-type]
    print("elements per crystal:")
    print("\n".join(_histogram(summary["n_elements"])))  # type: ignore[arg-type]
    elements = dict(list(summary["elements"].items())[: args.top])  # type: ignore[union-attr]
    print(f"most common elements (top {args.top}):")
    print("\n".join(_histogram(elements)))
    return 0


def _cmd_roundtrip(args: argparse.Namespace) -> int:
    """Encode and decode crystals, write the decoded CIFs: a demo of the representation."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from pccd import representation as rep

    config = rep.RepresentationConfig(lattice_scheme=rep.LatticeScheme(args.lattice_scheme))
    result = data.load(args.path, _filter_options(args), cache=not args.no_cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    matcher = StructureMatcher()
    n = min(args.n, len(result.table)) if args.n else len(result.table)
    matched = 0
    for i in range(n):
        record = result.table.record(i)
        x, elements = rep.encode(record.structure, config)
        decoded = rep.decode(x, elements, config)
        if isinstance(decoded, rep.DecodeFailure):
            print(f"{record.id}: decode failed ({decoded})")
            continue
        ok = matcher.fit(record.structure, decoded)
        matched += ok
        decoded.to(filename=str(out / f"{record.id}.cif"))
        print(f"{record.id}: {decoded.composition.reduced_formula} matches original: {ok}")
    print(f"{matched}/{n} round trips match (StructureMatcher defaults); CIFs in {out}")
    return 0


def _key_values(items: Sequence[str] | None) -> dict[str, object]:
    """Parse repeated ``KEY=VALUE`` options; values are JSON when they parse, else strings."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from pccd.training import TrainConfig, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    options = _key_values(args.option)
    unknown = set(options) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}")
    flags = {
        "preset": args.preset,
        "lattice_scheme": args.lattice_scheme,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "val_size": args.val_size,
        "model_overrides": _key_values(args.model_option),
    }
    config = TrainConfig(**{**flags, **options})  # --option wins over the plain flags
    ckpt = train(
        args.data,
        args.out,
        config,
        val_path=args.val,
        max_minutes=args.max_minutes,
        max_steps=args.max_steps,
        checkpoint_minutes=args.checkpoint_minutes,
        resume=not args.no_resume,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        strategy=args.strategy,
        accelerator=args.accelerator,
        progress=not args.quiet,
    )
    print(f"checkpoint: {ckpt}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pccd.training import export_pretrained

    out = export_pretrained(args.checkpoint, args.out)
    print(f"pretrained model written to {out}")
    return 0


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    from pccd.pipeline import PCCDPipeline, Request
    from pccd.runs import generate_to_directory

    t0 = time.perf_counter()
    n: int | None = args.n
    if args.elements_from:
        from pccd import data

        table = data.load(args.elements_from).table
        requests = [
            Request.parse(els, band_gap=args.band_gap, magnetic=args.magnetic)
            for els in table.draw_element_lists(args.n, args.seed)
        ]
        if args.formula:
            raise ValueError("--formula fixes the elements; it cannot go with --elements-from")
        n = None
    else:
        requests = Request.parse(
            _split(args.elements),
            formula=args.formula,
            band_gap=args.band_gap,
            magnetic=args.magnetic,
        )  # validated before loading anything heavy
    _set_threads(args.threads)
    pipeline = PCCDPipeline.from_pretrained(args.model)
    counts = {"ok": 0, "failed": 0}

    def report(batch) -> None:
        for s in batch:
            counts["ok" if s.structure is not None else "failed"] += 1
        print(f"  {counts['ok'] + counts['failed']}/{args.n} sampled ({counts['failed']} failed)")

    summary = generate_to_directory(
        pipeline,
        requests,
        n,
        args.out,
        batch_size=args.batch_size,
        on_batch=report,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"done in {time.perf_counter() - t0:.1f} s; summary: {summary}")
    return 0


def _quiet_log(quiet: bool):
    return (lambda message: None) if quiet else print


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    """The paper's reconstruction experiment (noise to t, denoise, decode, compare)."""
    from pccd.evaluate.csp_distances import METRICS
    from pccd.evaluate.reconstruction import ReconstructionSettings, run_reconstruction
    from pccd.pipeline import PCCDPipeline

    try:
        timesteps = tuple(int(t) for t in _split(args.t) or [])
    except ValueError as exc:
        raise ValueError(f"--t takes comma-separated integers, got {args.t!r}") from exc
    distances = (
        METRICS
        if args.distances == "all"
        else ()
        if args.distances == "none"
        else tuple(_split(args.distances) or ())
    )
    unknown = set(distances) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown distance metric(s) {sorted(unknown)}; choose from {METRICS}")
    settings = ReconstructionSettings(
        n=args.n,
        seed=args.seed,
        timesteps=timesteps,
        sampler=args.sampler,
        steps=args.steps,
        batch_size=args.batch_size,
        use_formula=args.formula,
        guidance_scale=args.guidance,
        align_origin=not args.no_align_origin,
        distances=distances,
        distance_t=args.distance_t,
        ged_timeout=args.ged_timeout,
        mlip=args.mlip,
    )
    _set_threads(args.threads)
    table = data.load(args.path, _filter_options(args), cache=not args.no_cache).table
    pipeline = PCCDPipeline.from_pretrained(args.model)
    metrics = run_reconstruction(
        pipeline,
        table,
        args.out,
        settings,
        source=str(args.path),
        model_label=str(args.model or "shipped"),
        log=_quiet_log(args.quiet),
    )
    for t, m in metrics["per_t"].items():
        rates = ", ".join(
            f"{k} {100 * m[k]['effective_rate']:.1f}/{100 * m[k]['plain_rate']:.1f}%"
            for k in "abcxyz"
        )
        print(
            f"t={t}: atom count {100 * m['atom_count_accuracy']:.2f}% of {m['n']}; "
            f"effective/plain rates: {rates}"
        )
    print(f"metrics.json, report.md and figures in {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """De novo metrics of a directory of CIFs (any generator)."""
    from pccd.evaluate.denovo import DeNovoSettings, evaluate_directory

    settings = DeNovoSettings(
        n=args.n,
        seed=args.seed,
        struct_cutoff=args.struct_cutoff,
        comp_cutoff=args.comp_cutoff,
        n_reference=args.n_reference,
        novelty=not args.no_novelty,
    )
    metrics = evaluate_directory(
        args.directory,
        args.out,
        settings,
        reference=args.reference,
        known=args.known,
        log=_quiet_log(args.quiet),
    )
    shown = ("struct_valid", "comp_valid", "cov_r", "cov_p", "uniqueness", "novelty")
    parts = [f"{k} {100 * metrics[k]:.2f}%" for k in shown if metrics.get(k) is not None]
    parts += [
        f"{k} {metrics[k]:.4g}"
        for k in ("wdist_density", "wdist_num_elems")
        if metrics.get(k) is not None
    ]
    print(f"{metrics['n_used']} of {metrics['n_available']} crystals: " + ", ".join(parts))
    for key, reason in metrics["missing"].items():
        print(f"  {key}: missing ({reason})")
    print(f"metrics.json, report.md and figures in {args.out}")
    return 0


def _cmd_csp(args: argparse.Namespace) -> int:
    """The DiffCSP crystal-structure-prediction benchmark on a split."""
    from pccd.evaluate.csp import CSPSettings, run_csp
    from pccd.pipeline import PCCDPipeline

    settings = CSPSettings(
        n=args.n,
        k=args.k,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        batch_size=args.batch_size,
        guidance_scale=args.guidance,
        formula_decoding=args.formula_decoding,
    )
    if settings.k < 1:
        raise ValueError(f"-k must be ≥ 1, got {settings.k}")
    _set_threads(args.threads)
    table = data.load(args.path, _filter_options(args), cache=not args.no_cache).table
    pipeline = PCCDPipeline.from_pretrained(args.model)
    metrics = run_csp(
        pipeline,
        table,
        args.out,
        settings,
        source=str(args.path),
        model_label=str(args.model or "shipped"),
        log=_quiet_log(args.quiet),
    )
    for k in sorted({1, settings.k}):
        m = metrics[f"k{k}"]["diffcsp_protocol"]
        print(
            f"k={k}: match rate {100 * m['match_rate']:.2f}% of {metrics['n_formulas']} formulas,"
            f" mean RMSE {m['mean_rmse']:.4f}"
        )
    print(f"metrics.json, report.md and figures in {args.out}")
    return 0


def _screen_settings(args: argparse.Namespace):
    from pccd.screen.screening import ScreenSettings

    return ScreenSettings(
        mlip=args.mlip, fmax=args.fmax, max_steps=args.max_steps, reference=args.reference
    )


def _print_screen_summary(summary: dict) -> None:
    def pct(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None else f"{100 * value:.1f}%"

    print(
        f"{summary['crystals']} crystals ({summary['status']}); of {summary['with_e_hull']} with "
        f"E_hull: < 0.25 eV/atom {pct('e_hull_below_0.25')}, < 0.08 {pct('e_hull_below_0.08')}, "
        f"novel {pct('novel')}, S.U.N. {pct('sun')}"
    )


def _cmd_screen(args: argparse.Namespace) -> int:
    """Relax, hull, novelty and uniqueness for a directory of CIFs."""
    from pccd.screen.screening import screen_directory, summarize_screen

    _set_threads(args.threads)
    log = _quiet_log(args.quiet)
    path = screen_directory(
        args.directory,
        args.out,
        _screen_settings(args),
        workers=args.workers,
        threads_per_worker=args.threads or 1,
        limit=args.limit,
        progress=lambda done, total: log(f"  {done}/{total} screened"),
    )
    _print_screen_summary(summarize_screen(path))
    print(f"screen.csv, relaxed/ and summary.json in {args.out}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    """One of the paper's discovery batches: draw element lists, generate, screen."""
    from pccd.pipeline import PCCDPipeline
    from pccd.screen.batch import BatchSettings, run_batch

    _set_threads(args.threads)
    settings = BatchSettings(
        pool=args.pool, lists=args.lists, per_list=args.per_list, seed=args.seed
    )
    pipeline = PCCDPipeline.from_pretrained(args.model)
    stats = run_batch(
        pipeline,
        args.out,
        settings,
        _screen_settings(args),
        workers=args.workers,
        sampler=args.sampler,
        steps=args.steps,
        log=_quiet_log(args.quiet),
    )
    _print_screen_summary({**stats, "crystals": stats["generated"], "status": "see batch csv"})
    return 0


def _cmd_references(args: argparse.Namespace) -> int:
    """Precompute an MLIP's reference energies (developer command; the tables ship)."""
    from pccd.mlip import MLIP
    from pccd.screen.references import (
        compute_reference_energies,
        finalize_table,
        read_reference_structures,
        shipped_table,
    )

    _set_threads(args.threads)
    partial = Path(args.work) / f"{args.mlip}.partial.csv"
    log = _quiet_log(args.quiet)
    written = compute_reference_energies(
        MLIP(args.mlip),
        read_reference_structures(args.reference, max_elements=args.max_elements),
        partial,
        progress=lambda n: log(f"  {n} computed") if n % 1000 == 0 else None,
    )
    out = Path(args.out) if args.out else shipped_table(args.mlip)
    rows = finalize_table(partial, out)
    print(f"{written} new energies; {rows} rows in {out}")
    return 0


def _cmd_phonons(args: argparse.Namespace) -> int:
    """Phonon band structure and stability verdict of one crystal (relaxed first by default)."""
    from pymatgen.core import Structure

    from pccd.mlip import MLIP
    from pccd.screen.phonons import compute_phonons, plot_band_structure
    from pccd.screen.relax import relax

    _set_threads(args.threads)
    path = Path(args.cif)
    try:
        structure = Structure.from_file(path)
    except Exception as exc:  # pymatgen raises many types on malformed files
        raise ValueError(f"cannot read {path}: {exc}") from exc
    out = Path(args.out or path.with_suffix("").name + "_phonons")
    out.mkdir(parents=True, exist_ok=True)
    mlip = MLIP(args.mlip)
    if not args.no_relax:
        relaxation = relax(structure, mlip, fmax=args.fmax, max_steps=args.max_steps)
        structure = relaxation.structure
        structure.to(filename=str(out / "relaxed.cif"))
        state = "converged" if relaxation.converged else "NOT converged"
        print(f"relaxed ({state}, {relaxation.steps} steps) → {out / 'relaxed.cif'}")
    result = compute_phonons(structure, mlip, min_length=args.min_length)
    (out / "phonons.json").write_text(json.dumps(result.to_dict(), indent=2))
    plot_band_structure(result, out / "band_structure.png")
    print(
        f"{result.formula}: {result.verdict} (lowest mode away from Γ "
        f"{result.min_frequency_off_gamma_thz:.3f} THz; supercell {result.supercell}, "
        f"{result.seconds:.1f} s); phonons.json and band_structure.png in {out}"
    )
    return 0


def _screen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlip", default="chgnet", help="chgnet (default), 7net-0 or module:factory")
    p.add_argument("--fmax", type=float, default=0.05, help="force criterion, eV/Å")
    p.add_argument("--max-steps", type=int, default=500, help="relaxation step cap")
    p.add_argument("--reference", help="known materials (mp_reference.csv.gz) for novelty")
    p.add_argument("--workers", type=int, default=1, help="relaxation processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pccd", description="Point-cloud crystal diffusion (PCCD, arXiv 2401.13192)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_data = sub.add_parser("data", help="inspect crystal data sets")
    data_sub = p_data.add_subparsers(dest="data_command", required=True)
    p_inspect = data_sub.add_parser(
        "inspect", help="counts, rejection reasons, element and size histograms"
    )
    p_inspect.add_argument("path", help="CSV(.gz), directory of CIF/POSCAR, or ASE-readable file")
    _filter_args(p_inspect)
    p_inspect.add_argument("--show", type=int, default=10, help="rejections listed (default 10)")
    p_inspect.add_argument("--top", type=int, default=20, help="elements listed (default 20)")
    p_inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_inspect.set_defaults(func=_cmd_data_inspect)

    p_rt = sub.add_parser("roundtrip", help="encode → decode crystals and write the CIFs (demo)")
    p_rt.add_argument("path", help="CSV(.gz), directory of CIF/POSCAR, or ASE-readable file")
    p_rt.add_argument("--out", required=True, help="directory for the decoded CIFs")
    p_rt.add_argument("-n", type=int, default=10, help="how many crystals (0 = all)")
    p_rt.add_argument("--lattice-scheme", choices=["log", "paper"], default="log")
    _filter_args(p_rt)
    p_rt.set_defaults(func=_cmd_roundtrip)

    p_gen = sub.add_parser("generate", help="generate crystals with a pretrained model")
    which = p_gen.add_mutually_exclusive_group()
    which.add_argument("--elements", help="comma-separated, e.g. Mg,Mn,O (≤3)")
    which.add_argument(
        "--elements-from",
        metavar="SPLIT",
        help="one element list per crystal, drawn (seeded) from a split, e.g. the val CSV",
    )
    p_gen.add_argument("--formula", help="exact cell formula for CSP mode, e.g. Mg2MnO4")
    p_gen.add_argument("--band-gap", type=float, help="condition on a band gap (eV)")
    p_gen.add_argument("--magnetic", choices=["NM", "FM", "AFM", "FiM"])
    p_gen.add_argument("-n", type=int, default=10, help="how many crystals (default 10)")
    p_gen.add_argument("--out", required=True, help="directory for CIFs and summary.csv")
    p_gen.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p_gen.add_argument("--steps", type=int, help="sampler steps (ddim 20, ddpm 1000)")
    p_gen.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    p_gen.add_argument("--seed", type=int, default=0)
    p_gen.add_argument("--batch-size", type=int, default=100)
    p_gen.add_argument("--model", help="model directory or shipped model name")
    p_gen.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p_gen.add_argument("--quiet", action="store_true", help="no progress bar")
    p_gen.set_defaults(func=_cmd_generate)

    p_train = sub.add_parser("train", help="train (or resume training) a PCCD model")
    p_train.add_argument("--data", required=True, help="training crystals (CSV, dir, ASE file)")
    p_train.add_argument("--val", help="validation crystals")
    p_train.add_argument("--out", required=True, help="run directory (checkpoints, logs)")
    p_train.add_argument("--preset", default="cpu", help="network preset: cpu, paper, tiny")
    p_train.add_argument("--lattice-scheme", choices=["log", "paper"], default="log")
    p_train.add_argument("--batch-size", type=int, default=128)
    p_train.add_argument("--lr", type=float, default=1e-4)
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--num-workers", type=int, default=0)
    p_train.add_argument("--val-size", type=int, default=1024, help="val crystals (0 = all)")
    p_train.add_argument("--max-minutes", type=float, help="stop cleanly after this long")
    p_train.add_argument("--max-steps", type=int, default=-1)
    p_train.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p_train.add_argument("--no-resume", action="store_true", help="ignore OUT/last.ckpt")
    p_train.add_argument("--devices", default="1", help="number of devices (or 'auto')")
    p_train.add_argument("--strategy", default="auto", help="e.g. ddp, ddp_spawn")
    p_train.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p_train.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="override a network preset field, e.g. layout=grid2d (repeatable)",
    )
    p_train.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="set a TrainConfig field, e.g. atom_order=random, ema_decay=0.9995 (repeatable)",
    )
    p_train.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p_train.add_argument("--quiet", action="store_true", help="no progress bar")
    p_train.set_defaults(func=_cmd_train)

    p_exp = sub.add_parser("export", help="write a checkpoint's EMA weights as a model directory")
    p_exp.add_argument("checkpoint")
    p_exp.add_argument("out")
    p_exp.set_defaults(func=_cmd_export)

    p_rec = sub.add_parser(
        "reconstruct", help="noise crystals to step t, denoise, decode, compare (paper Fig. 1)"
    )
    p_rec.add_argument("path", help="the split to draw crystals from (CSV, CIF dir, ASE file)")
    p_rec.add_argument("--out", required=True, help="output directory (resumable)")
    p_rec.add_argument("-n", type=int, default=1280, help="crystals drawn (default 1280)")
    p_rec.add_argument(
        "--t",
        default="1000",
        help="noising depth(s) t of T=1000, comma-separated, e.g. 100,250,500,750,1000",
    )
    p_rec.add_argument(
        "--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ddpm = the paper's"
    )
    p_rec.add_argument("--steps", type=int, help="sampler steps (ddpm: all 1000, ddim: 20)")
    p_rec.add_argument("--batch-size", type=int, default=64)
    p_rec.add_argument(
        "--formula",
        action="store_true",
        help="also condition on exact atom counts (off: elements only, as in the paper)",
    )
    p_rec.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    p_rec.add_argument(
        "--no-align-origin",
        action="store_true",
        help="match atoms without first translating the reconstruction onto the original",
    )
    p_rec.add_argument(
        "--distances",
        default="all",
        help="CSP distances per pair: all, none, or a comma list of "
        "energy,ofm,crystalnn,superpose,rms,rms_anonymous,graph_edit",
    )
    p_rec.add_argument("--distance-t", type=int, help="t for the distances (default: largest)")
    p_rec.add_argument("--ged-timeout", type=float, default=2.0, help="seconds per pair")
    p_rec.add_argument(
        "--mlip", default="chgnet", help="MLIP of the energy distance (chgnet, 7net-0, module:f)"
    )
    p_rec.add_argument("--seed", type=int, default=0)
    p_rec.add_argument("--model", help="model directory or shipped model name")
    p_rec.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p_rec.add_argument("--quiet", action="store_true", help="no progress messages")
    _filter_args(p_rec)
    p_rec.set_defaults(func=_cmd_reconstruct)

    p_ev = sub.add_parser(
        "evaluate", help="de novo metrics of a directory of CIFs (CDVAE / DiffCSP protocol)"
    )
    p_ev.add_argument("directory", help="directory of CIF files (any generator)")
    p_ev.add_argument("--out", required=True, help="output directory (resumable)")
    p_ev.add_argument("--reference", help="split for COV and Wasserstein, e.g. the val CSV")
    p_ev.add_argument("--known", help="known-crystal database for novelty (MP-20-format CSV)")
    p_ev.add_argument("-n", "--n", type=int, default=0, help="crystals scored (0 = all CIFs)")
    p_ev.add_argument("--seed", type=int, default=0, help="draw of the n crystals")
    p_ev.add_argument("--struct-cutoff", type=float, default=0.4, help="COV structure cut-off")
    p_ev.add_argument("--comp-cutoff", type=float, default=10.0, help="COV composition cut-off")
    p_ev.add_argument("--n-reference", type=int, default=0, help="reference crystals (0 = all)")
    p_ev.add_argument("--no-novelty", action="store_true", help="skip the novelty check")
    p_ev.add_argument("--quiet", action="store_true", help="no progress messages")
    p_ev.set_defaults(func=_cmd_evaluate)

    p_csp = sub.add_parser(
        "csp", help="crystal structure prediction benchmark: k candidates per formula"
    )
    p_csp.add_argument("path", help="the split whose formulas are predicted (e.g. val)")
    p_csp.add_argument("--out", required=True, help="output directory (resumable)")
    p_csp.add_argument("-n", type=int, default=1000, help="formulas drawn (0 = all)")
    p_csp.add_argument("-k", type=int, default=20, help="candidates per formula (k=1 also shown)")
    p_csp.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p_csp.add_argument("--steps", type=int, help="sampler steps (ddim 20, ddpm 1000)")
    p_csp.add_argument("--batch-size", type=int, default=100)
    p_csp.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance")
    p_csp.add_argument(
        "--formula-decoding",
        choices=["blocks", "cluster"],
        default="blocks",
        help="atoms from the row blocks the formula fixes (default) or DBSCAN (the paper's)",
    )
    p_csp.add_argument("--seed", type=int, default=0)
    p_csp.add_argument("--model", help="model directory or shipped model name")
    p_csp.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p_csp.add_argument("--quiet", action="store_true", help="no progress messages")
    _filter_args(p_csp)
    p_csp.set_defaults(func=_cmd_csp)

    p_scr = sub.add_parser("screen", help="relax CIFs with an MLIP: E_hull, novelty, S.U.N.")
    p_scr.add_argument("directory", help="directory of CIF files")
    p_scr.add_argument("--out", required=True, help="output directory (resumable)")
    p_scr.add_argument("--limit", type=int, help="screen only the first N CIFs")
    _screen_args(p_scr)
    p_scr.set_defaults(func=_cmd_screen)

    p_bat = sub.add_parser("batch", help="a discovery batch of the paper: generate + screen")
    p_bat.add_argument("--pool", type=int, choices=[1, 2, 3], required=True, help="element pool")
    p_bat.add_argument("--out", required=True, help="output directory (resumable)")
    p_bat.add_argument("--lists", type=int, default=50, help="element lists drawn")
    p_bat.add_argument("--per-list", type=int, default=2, help="crystals per element list")
    p_bat.add_argument("--seed", type=int, default=0)
    p_bat.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p_bat.add_argument("--steps", type=int, help="sampler steps (ddim 20, ddpm 1000)")
    p_bat.add_argument("--model", help="model directory or shipped model name")
    _screen_args(p_bat)
    p_bat.set_defaults(func=_cmd_batch)

    p_ph = sub.add_parser("phonons", help="phonon bands and dynamical stability of one CIF")
    p_ph.add_argument("cif", help="crystal (CIF/POSCAR)")
    p_ph.add_argument("--out", help="output directory (default: <name>_phonons)")
    p_ph.add_argument(
        "--mlip",
        default="7net-0",
        help="7net-0 (default; CHGNet 0.3.0 makes rock-salt NaCl unstable), chgnet, module:f",
    )
    p_ph.add_argument("--min-length", type=float, default=10.0, help="supercell width, Å")
    p_ph.add_argument("--no-relax", action="store_true", help="the CIF is already relaxed")
    p_ph.add_argument("--fmax", type=float, default=0.01, help="relaxation force criterion")
    p_ph.add_argument("--max-steps", type=int, default=1000)
    p_ph.add_argument("--threads", type=int, default=0)
    p_ph.set_defaults(func=_cmd_phonons)

    p_ref = sub.add_parser("references", help="precompute an MLIP's reference energies")
    p_ref.add_argument("--mlip", default="chgnet")
    p_ref.add_argument("--reference", required=True, help="mp_reference.csv.gz")
    p_ref.add_argument("--max-elements", type=int, default=3)
    p_ref.add_argument("--work", default=".", help="directory for the resumable partial CSV")
    p_ref.add_argument("--out", help="table to write (default: the package's shipped table)")
    p_ref.add_argument("--threads", type=int, default=1)
    p_ref.add_argument("--quiet", action="store_true")
    p_ref.set_defaults(func=_cmd_references)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pccd`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pccd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
