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
