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

    from pccd.pipeline import PCCDPipeline, Request, generate_to_directory

    t0 = time.perf_counter()
    request = Request.parse(
        _split(args.elements), formula=args.formula, band_gap=args.band_gap, magnetic=args.magnetic
    )  # validated before loading anything heavy
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pipeline = PCCDPipeline.from_pretrained(args.model)
    counts = {"ok": 0, "failed": 0}

    def report(batch) -> None:
        for s in batch:
            counts["ok" if s.structure is not None else "failed"] += 1
        print(f"  {counts['ok'] + counts['failed']}/{args.n} sampled ({counts['failed']} failed)")

    summary = generate_to_directory(
        pipeline,
        request,
        args.n,
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
    p_gen.add_argument("--elements", help="comma-separated, e.g. Mg,Mn,O (≤3)")
    p_gen.add_argument("--formula", help="exact cell formula for CSP mode, e.g. Mg2MnO4")
    p_gen.add_argument("--band-gap", type=float, help="condition on a band gap (eV)")
    p_gen.add_argument("--magnetic", choices=["NM", "FM", "AFM", "FiM"])
    p_gen.add_argument("-n", type=int, default=10, help="how many crystals (default 10)")
    p_gen.add_argument("--out", required=True, help="directory for CIFs and summary.csv")
    p_gen.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p_gen.add_argument("--steps", type=int, help="sampler steps (ddim 50, ddpm 1000)")
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
