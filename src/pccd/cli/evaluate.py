"""``pccd reconstruct`` and ``pccd evaluate``: the paper's reconstruction and de novo metrics."""

from __future__ import annotations

import argparse

from pccd.cli import options as opt
from pccd.cli.support import (
    check_mlip,
    check_options,
    load_model,
    load_split,
    require_path,
    set_threads,
    split,
)
from pccd.errors import InputError
from pccd.evaluate.csp_distances import METRICS
from pccd.evaluate.denovo import DeNovoSettings, evaluate_directory
from pccd.experiments.reconstruction import ReconstructionSettings, run_reconstruction


def _distances(text: str) -> tuple[str, ...]:
    """``--distances``: all, none, or a comma list of :data:`METRICS`."""
    chosen = METRICS if text == "all" else () if text == "none" else tuple(split(text) or ())
    unknown = set(chosen) - set(METRICS)
    if unknown:
        raise InputError(
            f"--distances: unknown metric(s) {sorted(unknown)}; choose from {', '.join(METRICS)}"
        )
    return tuple(chosen)


RECONSTRUCTION_MODEL = "pccd-cpu"
"""The reconstruction experiment (paper Table 1) noises and denoises the point-cloud array, so it
is the point-cloud family's: its shipped model is the default here, not the atom default."""


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    """The paper's reconstruction experiment (noise to t, denoise, decode, compare)."""
    try:
        timesteps = tuple(int(t) for t in split(args.t) or [])
    except ValueError as exc:
        raise InputError(f"--t takes comma-separated integers, got {args.t!r}") from exc
    if not timesteps:
        raise InputError(f"--t needs at least one step, got {args.t!r}")
    distances = _distances(args.distances)
    if args.distance_t is not None and args.distance_t not in timesteps:
        raise InputError(f"--distance-t {args.distance_t} is not one of --t {args.t}")
    if "energy" in distances:
        check_mlip(args.mlip)
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
    require_path(args.path, "split")
    set_threads(args.threads)
    pipeline = load_model(args)
    check_options(pipeline, sampler=args.sampler, steps=args.steps)
    total = pipeline.num_train_timesteps
    bad = [t for t in timesteps if not 1 <= t <= total]
    if bad:
        raise InputError(f"--t {args.t}: every t must be between 1 and {total}, got {bad}")
    table = load_split(args)
    metrics = run_reconstruction(
        pipeline,
        table,
        args.out,
        settings,
        source=str(args.path),
        model_label=str(args.model),
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


def _print_denovo(metrics: dict) -> None:
    shown = ("struct_valid", "comp_valid", "cov_r", "cov_p", "uniqueness", "novelty")
    parts = [
        f"{k} {100 * metrics[k]:.2f}%"
        for k in shown
        if metrics.get(k) is not None and metrics[k] == metrics[k]  # NaN: reported as missing
    ]
    parts += [
        f"{k} {metrics[k]:.4g}"
        for k in ("wdist_density", "wdist_num_elems")
        if metrics.get(k) is not None
    ]
    print(f"{metrics['n_used']} of {metrics['n_available']} crystals: " + ", ".join(parts))
    g = metrics["geometry"]
    print(
        f"  geometry (of {g['denominator']}): plausible {100 * g['plausible_share']:.1f}%, "
        f"median covalent ratio {g['median_ratio']:.3f}, "
        f"above P-1 {100 * g['symmetric_share']:.1f}%"
    )
    b = metrics.get("band_gap_instrument")
    if b is not None:
        val = b["instrument"].get("validation") or {}
        error = f", instrument val MAE {val['gap_mae_eV_all']:.2f} eV" if val else ""
        mean = b["mean_predicted_band_gap_eV_of_measured"]
        print(
            f"  band-gap instrument (of {b['denominator']}): predicted non-metals "
            f"{100 * b['insulator_share_of_all_samples']:.1f}%, mean predicted gap "
            f"{'—' if mean is None or mean != mean else f'{mean:.2f} eV'} of "
            f"{b['n_measured']} measured{error}"
        )
    for key, reason in metrics["missing"].items():
        print(f"  {key}: missing ({reason})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """De novo metrics of a directory of CIFs (any generator)."""
    require_path(args.directory, "directory", directory=True)
    require_path(args.reference, "--reference")
    require_path(args.known, "--known")
    settings = DeNovoSettings(
        n=args.n,
        seed=args.seed,
        struct_cutoff=args.struct_cutoff,
        comp_cutoff=args.comp_cutoff,
        n_reference=args.n_reference,
        novelty=not args.no_novelty,
    )
    metrics = evaluate_directory(
        args.directory, args.out, settings, reference=args.reference, known=args.known
    )
    _print_denovo(metrics)
    print(f"metrics.json, report.md and figures in {args.out}")
    return 0


def register(sub: argparse._SubParsersAction, verbosity: argparse.ArgumentParser) -> None:
    """Add ``reconstruct`` and ``evaluate`` to the ``pccd`` parser."""
    p_rec = sub.add_parser(
        "reconstruct",
        help="noise crystals to step t, denoise, decode, compare (paper Fig. 1)",
        parents=[
            *opt.model_parents(verbosity, "ddpm", 64, model=RECONSTRUCTION_MODEL),
            opt.filter_parent(),
        ],
    )
    p_rec.add_argument("path", help="the split to draw crystals from (CSV, CIF dir, ASE file)")
    p_rec.add_argument("--out", required=True, help="output directory (resumable)")
    p_rec.add_argument(
        "-n", type=opt.COUNT_OR_ALL, default=1280, help="crystals drawn (default 1280, 0 = all)"
    )
    p_rec.add_argument(
        "--t",
        default="1000",
        help="noising depth(s) t of T=1000, comma-separated, e.g. 100,250,500,750,1000",
    )
    p_rec.add_argument(
        "--formula",
        action="store_true",
        help="also condition on exact atom counts (off: elements only, as in the paper)",
    )
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
    p_rec.add_argument(
        "--distance-t", type=opt.POSITIVE_INT, help="t for the distances (default: largest)"
    )
    p_rec.add_argument(
        "--ged-timeout", type=opt.POSITIVE_FLOAT, default=2.0, help="seconds per pair"
    )
    p_rec.add_argument(
        "--mlip", default="chgnet", help="MLIP of the energy distance (chgnet, 7net-0, module:f)"
    )
    p_rec.set_defaults(func=_cmd_reconstruct)

    p_ev = sub.add_parser(
        "evaluate",
        help="de novo metrics of a directory of CIFs (CDVAE / DiffCSP protocol)",
        parents=[verbosity, opt.seed_parent()],
    )
    p_ev.add_argument("directory", help="directory of CIF files (any generator)")
    p_ev.add_argument("--out", required=True, help="output directory (resumable)")
    p_ev.add_argument("--reference", help="split for COV and Wasserstein, e.g. the val CSV")
    p_ev.add_argument("--known", help="known-crystal database for novelty (MP-20-format CSV)")
    p_ev.add_argument(
        "-n", "--n", type=opt.COUNT_OR_ALL, default=0, help="crystals scored (0 = all CIFs)"
    )
    p_ev.add_argument(
        "--struct-cutoff", type=opt.POSITIVE_FLOAT, default=0.4, help="COV structure cut-off"
    )
    p_ev.add_argument(
        "--comp-cutoff", type=opt.POSITIVE_FLOAT, default=10.0, help="COV composition cut-off"
    )
    p_ev.add_argument(
        "--n-reference", type=opt.COUNT_OR_ALL, default=0, help="reference crystals (0 = all)"
    )
    p_ev.add_argument("--no-novelty", action="store_true", help="skip the novelty check")
    p_ev.set_defaults(func=_cmd_evaluate)
