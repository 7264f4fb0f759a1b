"""``pccd data inspect`` and ``pccd roundtrip``: look at a data set and its representation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data, progress
from pccd import representation as rep
from pccd.cli.options import COUNT_OR_ALL, NON_NEGATIVE_INT, filter_parent
from pccd.cli.support import filter_options, load_data
from pccd.errors import InputError


def _histogram(counts: dict, width: int = 40) -> list[str]:
    top = max(counts.values(), default=1)
    return [f"  {k!s:>4} {v:7d} {'#' * max(1, round(width * v / top))}" for k, v in counts.items()]


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    result = load_data(args.path, filter_options(args), cache=not args.no_cache)
    summary = data.summarize(result)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['source']}: {summary['loaded']} loaded, {summary['rejected']} rejected")
    if result.files is not None:  # a directory: what each file gave, so none goes unnoticed
        print(f"files: {len(result.files)}")
        print("\n".join(f"  {f.describe()}" for f in result.files[: args.show]))
        if len(result.files) > args.show:
            print(f"  ... {len(result.files) - args.show} more (--show {len(result.files)})")
    if summary["reasons"]:
        print("rejections by reason:")
        for reason, n in summary["reasons"].items():  # type: ignore[union-attr]
            print(f"  {reason:<20} {n}")
        for r in result.rejected[: args.show]:
            print(f"    {r.id}: {r.reason.value} ({r.detail})")
    print(
        f"properties: band gap for {summary['with_band_gap']}, "
        f"magnetic ordering for {summary['with_magnetic']}, "
        f"stability (E_hull) for {summary['with_stability']} ({summary['stable']} stable)"
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
    config = rep.RepresentationConfig(lattice_scheme=rep.LatticeScheme(args.lattice_scheme))
    result = load_data(args.path, filter_options(args), cache=not args.no_cache)
    if len(result.table) == 0:
        n_rej = len(result.rejected)
        raise InputError(f"{args.path}: no crystal passed the filter ({n_rej} rejected)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    matcher = StructureMatcher()
    n = min(args.n, len(result.table)) if args.n else len(result.table)
    matched = 0
    with progress.bar(n, "round trips", "crystal") as pbar:
        for i in range(n):
            record = result.table.record(i)
            x, elements = rep.encode(record.structure, config)
            decoded = rep.decode(x, elements, config)
            pbar.update(1)
            if isinstance(decoded, rep.DecodeFailure):
                print(f"{record.id}: decode failed ({decoded})")
                continue
            ok = matcher.fit(record.structure, decoded)
            matched += ok
            decoded.to(filename=str(out / f"{record.id}.cif"))
            print(f"{record.id}: {decoded.composition.reduced_formula} matches original: {ok}")
    print(f"{matched}/{n} round trips match (StructureMatcher defaults); CIFs in {out}")
    return 0


def register(sub: argparse._SubParsersAction, verbosity: argparse.ArgumentParser) -> None:
    """Add ``data inspect`` and ``roundtrip`` to the ``pccd`` parser."""
    p_data = sub.add_parser("data", help="inspect crystal data sets")
    data_sub = p_data.add_subparsers(dest="data_command", required=True)
    p_inspect = data_sub.add_parser(
        "inspect",
        help="counts, rejection reasons, element and size histograms",
        parents=[verbosity, filter_parent()],
    )
    p_inspect.add_argument("path", help="CSV(.gz), CIF, POSCAR, ASE-readable file, or a directory")
    p_inspect.add_argument(
        "--show",
        type=NON_NEGATIVE_INT,
        default=10,
        help="rejections (and, for a directory, files) listed (default 10)",
    )
    p_inspect.add_argument(
        "--top", type=NON_NEGATIVE_INT, default=20, help="elements listed (default 20)"
    )
    p_inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_inspect.set_defaults(func=_cmd_data_inspect)

    p_rt = sub.add_parser(
        "roundtrip",
        help="encode → decode crystals and write the CIFs (demo)",
        parents=[verbosity, filter_parent()],
    )
    p_rt.add_argument("path", help="CSV(.gz), directory of CIF/POSCAR, or ASE-readable file")
    p_rt.add_argument("--out", required=True, help="directory for the decoded CIFs")
    p_rt.add_argument("-n", type=COUNT_OR_ALL, default=10, help="how many crystals (0 = all)")
    p_rt.add_argument("--lattice-scheme", choices=["log", "paper"], default="log")
    p_rt.set_defaults(func=_cmd_roundtrip)
