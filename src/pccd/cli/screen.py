"""``pccd screen``, ``batch``, ``phonons`` and ``references``: MLIP relaxation and what follows."""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings
from pathlib import Path

from pymatgen.core import Structure

from pccd import progress
from pccd.cli import options as opt
from pccd.cli.support import (
    about,
    check_mlip,
    check_options,
    device,
    load_model,
    require_path,
    sampler,
    set_threads,
)
from pccd.errors import InputError, MissingInputError
from pccd.experiments.discovery import BatchSettings, check_batch_settings, run_batch
from pccd.mlip import MLIP, MLIPError
from pccd.outputs import list_cifs
from pccd.screen.engines import DEFAULT_RELAX_ENGINE
from pccd.screen.phonons import compute_phonons, plot_band_structure
from pccd.screen.references import (
    compute_reference_energies,
    finalize_table,
    read_reference_structures,
    shipped_table,
)
from pccd.screen.relax import RelaxationError, relax
from pccd.screen.screening import ScreenSettings, screen_directory, summarize_screen


def _screen_settings(args: argparse.Namespace) -> ScreenSettings:
    return ScreenSettings(
        mlip=args.mlip,
        fmax=args.fmax,
        max_steps=args.max_steps,
        reference=args.reference,
        relax_engine=args.relax_engine or DEFAULT_RELAX_ENGINE,
    )


def _check_dask(args: argparse.Namespace) -> None:
    """--dask: not with --workers (the cluster has its own), and the package must be there."""
    if args.dask is None:
        return
    if args.workers > 1:
        raise InputError("--workers does not apply with --dask: the Dask cluster has its workers")
    if importlib.util.find_spec("distributed") is None:
        raise ImportError(
            "--dask needs the distributed package; install the screening extra: "
            'pip install -e ".[screen]"'
        )


def _print_screen_summary(summary: dict) -> None:
    """Shares over every crystal (failures as misses, listed by kind), then over the relaxed."""

    def pct(key: str, source: dict = summary) -> str:
        value = source.get(key)
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def shares(source: dict) -> str:
        return (
            f"E_hull < 0.25 eV/atom {pct('e_hull_below_0.25', source)}, "
            f"< 0.08 {pct('e_hull_below_0.08', source)}, novel {pct('novel', source)}, "
            f"S.U.N. {pct('sun', source)}"
        )

    n, failed = summary["crystals"], summary["failed"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in summary["failures"].items())
    print(
        f"{n} crystals: {summary['with_e_hull']} with an E_hull, {failed} failed"
        f"{f' ({kinds})' if kinds else ''}"
    )
    print(f"of all {n}: {shares(summary)}")
    relaxed = summary["of_relaxed"]
    print(f"of the {relaxed['crystals']} with an E_hull only: {shares(relaxed)}")


def _cmd_screen(args: argparse.Namespace) -> int:
    """Relax, hull, novelty and uniqueness for a directory of CIFs."""
    require_path(args.directory, "directory", directory=True)
    if not list_cifs(args.directory):
        raise InputError(f"{args.directory}: no CIF files to screen")
    require_path(args.reference, "--reference")
    check_mlip(args.mlip)
    _check_dask(args)
    chosen = device(args)
    set_threads(args.threads)
    path = screen_directory(
        args.directory,
        args.out,
        _screen_settings(args),
        workers=args.workers,
        threads_per_worker=args.threads or 1,
        limit=args.limit,
        device=chosen,
        dask=args.dask,
        relax_batch_size=args.relax_batch_size,
    )
    _print_screen_summary(summarize_screen(path))
    print(f"screen.csv, relaxed/ and summary.json in {args.out}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    """One of the paper's discovery batches: draw element lists, generate, screen."""
    settings = BatchSettings(
        pool=args.pool, lists=args.lists, per_list=args.per_list, seed=args.seed
    )
    check_batch_settings(settings)
    require_path(args.reference, "--reference")
    check_mlip(args.mlip)
    _check_dask(args)
    set_threads(args.threads)
    pipeline = load_model(args)
    args.sampler = sampler(pipeline, args)
    check_options(pipeline, sampler=args.sampler, steps=args.steps)
    stats = run_batch(
        pipeline,
        args.out,
        settings,
        _screen_settings(args),
        workers=args.workers,
        sampler=args.sampler,
        steps=args.steps,
        device=device(args),
        dask=args.dask,
        relax_batch_size=args.relax_batch_size,
    )
    _print_screen_summary({**stats, "crystals": stats["generated"]})
    return 0


def _cmd_references(args: argparse.Namespace) -> int:
    """Precompute an MLIP's reference energies (developer command; the tables ship)."""
    require_path(args.reference, "--reference")
    check_mlip(args.mlip)
    chosen = device(args)
    set_threads(args.threads)
    partial = Path(args.work) / f"{args.mlip.replace(':', '_')}.partial.csv"
    with progress.bar(None, "reference energies", "crystal") as pbar:
        written = compute_reference_energies(
            MLIP(args.mlip, device=chosen),
            read_reference_structures(args.reference, max_elements=args.max_elements),
            partial,
            progress=lambda n: pbar.update(1),
        )
    out = Path(args.out) if args.out else shipped_table(args.mlip)
    rows = finalize_table(partial, out)
    print(f"{written} new energies; {rows} rows in {out}")
    return 0


def _read_crystal(path: Path) -> Structure:
    """The one ordered crystal of a CIF/POSCAR the user named."""
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(path)
    except Exception as exc:  # pymatgen raises many types on malformed files
        raise InputError(f"cannot read {about(path, exc)}") from exc
    if not structure.is_ordered:
        raise InputError(f"{path}: partial occupancies; phonons need an ordered crystal")
    return structure


def _cmd_phonons(args: argparse.Namespace) -> int:
    """Phonon band structure and stability verdict of one crystal (relaxed first by default)."""
    path = Path(args.cif)
    structure = _read_crystal(path)
    check_mlip(args.mlip)
    mlip = MLIP(args.mlip, device=device(args))
    set_threads(args.threads)
    out = Path(args.out or path.with_suffix("").name + "_phonons")
    out.mkdir(parents=True, exist_ok=True)
    try:
        if not args.no_relax:
            relaxation = relax(structure, mlip, fmax=args.fmax, max_steps=args.max_steps)
            structure = relaxation.structure
            structure.to(filename=str(out / "relaxed.cif"))
            state = "converged" if relaxation.converged else "NOT converged"
            print(f"relaxed ({state}, {relaxation.steps} steps) → {out / 'relaxed.cif'}")
        result = compute_phonons(structure, mlip, min_length=args.min_length)
    except (RelaxationError, MLIPError) as exc:
        raise InputError(
            f"{about(path, exc)}; no phonons computed (check the structure, or try another --mlip)"
        ) from exc
    (out / "phonons.json").write_text(json.dumps(result.to_dict(), indent=2))
    plot_band_structure(result, out / "band_structure.png")
    print(
        f"{result.formula}: {result.verdict} (lowest mode away from Γ "
        f"{result.min_frequency_off_gamma_thz:.3f} THz; supercell {result.supercell}, "
        f"{result.seconds:.1f} s); phonons.json and band_structure.png in {out}"
    )
    return 0


def register(sub: argparse._SubParsersAction, verbosity: argparse.ArgumentParser) -> None:
    """Add ``screen``, ``batch``, ``phonons`` and ``references`` to the ``pccd`` parser."""
    p_scr = sub.add_parser(
        "screen",
        help="relax CIFs with an MLIP: E_hull, novelty, S.U.N.",
        parents=[
            verbosity,
            opt.threads_parent(),
            opt.device_parent(),
            opt.screen_parent(),
            opt.relax_pool_parent(),
        ],
    )
    p_scr.add_argument("directory", help="directory of CIF files")
    p_scr.add_argument("--out", required=True, help="output directory (resumable)")
    p_scr.add_argument("--limit", type=opt.POSITIVE_INT, help="screen only the first N CIFs")
    p_scr.set_defaults(func=_cmd_screen)

    p_bat = sub.add_parser(
        "batch",
        help="a discovery batch of the paper: generate + screen",
        parents=[
            *opt.model_parents(verbosity, None, None, guidance=False),
            opt.screen_parent(),
            opt.relax_pool_parent(),
        ],
    )
    p_bat.add_argument("--pool", type=int, choices=[1, 2, 3], required=True, help="element pool")
    p_bat.add_argument("--out", required=True, help="output directory (resumable)")
    p_bat.add_argument("--lists", type=opt.POSITIVE_INT, default=50, help="element lists drawn")
    p_bat.add_argument(
        "--per-list", type=opt.POSITIVE_INT, default=2, help="crystals per element list"
    )
    p_bat.set_defaults(func=_cmd_batch)

    p_ph = sub.add_parser(
        "phonons",
        help="phonon bands and dynamical stability of one CIF",
        parents=[
            verbosity,
            opt.threads_parent(),
            opt.device_parent(),
            opt.screen_parent("7net-0", 0.01, 1000),
        ],
    )
    p_ph.add_argument("cif", help="crystal (CIF/POSCAR)")
    p_ph.add_argument("--out", help="output directory (default: <name>_phonons)")
    p_ph.add_argument(
        "--min-length", type=opt.POSITIVE_FLOAT, default=10.0, help="supercell width, Å"
    )
    p_ph.add_argument("--no-relax", action="store_true", help="the CIF is already relaxed")
    p_ph.set_defaults(func=_cmd_phonons)

    p_ref = sub.add_parser(
        "references",
        help="precompute an MLIP's reference energies",
        parents=[verbosity, opt.threads_parent(1), opt.device_parent()],
    )
    p_ref.add_argument("--mlip", default="chgnet")
    p_ref.add_argument("--reference", required=True, help="mp_reference.csv.gz")
    p_ref.add_argument("--max-elements", type=opt.POSITIVE_INT, default=3)
    p_ref.add_argument("--work", default=".", help="directory for the resumable partial CSV")
    p_ref.add_argument("--out", help="table to write (default: the package's shipped table)")
    p_ref.set_defaults(func=_cmd_references)
