"""The ``pccd`` command: a thin layer that parses arguments and calls the library.

Each sub-command lives in a ``_cmd_*`` function that does no science itself; everything it does
is available from Python too.

Conventions: every argument is validated before any work is done or any file is written; a user
error (bad argument, missing or damaged file, missing optional extra) is one line
``error: ...`` on stderr and exit code 2; an interrupt is exit code 130; a traceback means a bug
in pccd. The library logs through :mod:`logging` (configured here by ``-v`` / ``--quiet``) and
shows progress bars only when this command enables them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

from pccd import data, progress
from pccd.conditioning import STABILITY_LABELS, STABLE_E_ABOVE_HULL

_log = logging.getLogger("pccd.cli")

#: extra that provides the optional dependencies of each command (for ImportError messages)
EXTRAS = {
    "reconstruct": "eval",
    "evaluate": "eval",
    "csp": "eval",
    "screen": "screen",
    "batch": "screen",
    "phonons": "screen",
    "references": "screen",
}
GENERATE_FORMATS = ("cif", "extxyz", "poscar")


class UsageError(Exception):
    """A mistake in the command line: printed as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that :func:`main` turns into exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---- argument types: checked by argparse, so a bad value fails before any work ----------------
def _int_type(lo: int, hi: int | None = None, note: str = ""):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"≥ {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}{note}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _float_type(lo: float | None = None, *, strict: bool = True, note: str = ""):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if lo is not None and (value <= lo if strict else value < lo):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '≥'} {lo:g}{note}, got {value:g}"
            )
        return value

    parse.__name__ = "number"
    return parse


POSITIVE_INT = _int_type(1)
COUNT_OR_ALL = _int_type(0, note=" (0 means all)")
NON_NEGATIVE_INT = _int_type(0)
THREADS = _int_type(0, note=" (0 = torch's default)")
POSITIVE_FLOAT = _float_type(0.0)
NON_NEGATIVE_FLOAT = _float_type(0.0, strict=False)
FINITE_FLOAT = _float_type()


def _formats(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    unknown = [f for f in chosen if f not in GENERATE_FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {unknown or [text]}; choose from {', '.join(GENERATE_FORMATS)}"
        )
    return chosen


def _conditions_list(text: str) -> tuple[str, ...]:
    from pccd.conditioning import CONDITION_NAMES

    chosen = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [c for c in chosen if c not in CONDITION_NAMES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown condition(s) {unknown or [text]}; choose from {', '.join(CONDITION_NAMES)}"
        )
    return chosen


def _guide(args: argparse.Namespace) -> dict[str, list[str]]:
    """``guide`` for the pipeline only when asked, so runs made before the flag still resume."""
    return {"guide": list(args.guide)} if args.guide else {}


# ---- parent parsers: the shared flags, defined once -----------------------------------------
def _verbosity_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    return p


def _threads_parent(default: int = 0) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--threads", type=THREADS, default=default, help=f"torch threads (default {default})"
    )
    return p


def _device_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the network / MLIP runs (auto: CUDA when present, else CPU)",
    )
    return p


def _model_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", help="model directory or shipped model name (default pccd-cpu)")
    return p


def _seed_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


_SAMPLING_PRECISION_HELP = (
    "how the network computes while sampling (default float32); bfloat16: autocast, faster on "
    "CPUs with AMX/AVX512-BF16 (BENCHMARKS.md), other crystals for the same seed"
)
_TRAINING_PRECISION_HELP = (
    "bfloat16: autocast with fp32 weights and optimiser, faster per step on CPUs with "
    "AMX/AVX512-BF16; a resumed run may change it"
)


def _precision_parent(help_text: str = _SAMPLING_PRECISION_HELP) -> argparse.ArgumentParser:
    """``--precision``: one set of names for sampling and training."""
    from pccd.diffusion.sampling import DEFAULT_PRECISION, PRECISIONS  # light: no model code

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help=help_text)
    return p


def _sampling_parent(
    sampler: str | None, batch_size: int | None = 100, guidance: bool = True
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, parents=[_precision_parent()])
    p.add_argument(
        "--sampler",
        default=sampler,
        help="the model's sampler (default: its own; point-cloud models: ddim, ddpm; "
        "atom models: ode, pc)",
    )
    p.add_argument(
        "--steps",
        type=POSITIVE_INT,
        help="sampler steps, 1 to the model's training timesteps (default: the sampler's own)",
    )
    if guidance:
        p.add_argument(
            "--guidance", type=FINITE_FLOAT, default=1.0, help="classifier-free guidance"
        )
    if batch_size is not None:
        p.add_argument("--batch-size", type=POSITIVE_INT, default=batch_size)
    return p


def _filter_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--max-sites", type=POSITIVE_INT, default=16, help="largest cell kept (default 16)"
    )
    p.add_argument(
        "--max-elements", type=POSITIVE_INT, default=3, help="most elements kept (default 3)"
    )
    p.add_argument(
        "--min-distance",
        type=NON_NEGATIVE_FLOAT,
        default=0.5,
        help="overlap threshold in Å (default 0.5)",
    )
    p.add_argument("--no-cache", action="store_true", help="parse again, ignore the cache")
    return p


def _screen_parent(mlip: str = "chgnet", fmax: float = 0.05, max_steps: int = 500):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--mlip", default=mlip, help=f"{mlip} (default), chgnet, 7net-0 or module:f")
    p.add_argument(
        "--fmax", type=POSITIVE_FLOAT, default=fmax, help=f"force criterion, eV/Å ({fmax})"
    )
    p.add_argument("--max-steps", type=POSITIVE_INT, default=max_steps, help="relaxation step cap")
    return p


def _relax_engine_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--relax-engine",
        choices=["ase", "batched"],
        help="batched (default): many crystals in lockstep, one MLIP call per step for all; "
        "ase: per-crystal FIRE (same FIRE, checks and failure classes; runs made before "
        "2026-12-02 used it and resume with it)",
    )
    p.add_argument(
        "--relax-batch-size",
        type=POSITIVE_INT,
        default=16,
        help="crystals relaxed together by --relax-engine batched (default 16)",
    )
    return p


def _relax_engine(args: argparse.Namespace) -> str:
    """``--relax-engine``, or the library's default engine when it was not given."""
    from pccd.screen.batched import DEFAULT_RELAX_ENGINE

    return args.relax_engine or DEFAULT_RELAX_ENGINE


def _relax_pool_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, parents=[_relax_engine_parent()])
    p.add_argument("--reference", help="known materials (mp_reference.csv.gz) for novelty")
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="relaxation processes")
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the relaxations as tasks on a running Dask scheduler (tcp://host:8786); "
        "rows are written here as results arrive, so a rerun resumes",
    )
    return p


# ---- helpers ----------------------------------------------------------------------------------
def _filter_options(args: argparse.Namespace) -> data.FilterOptions:
    return data.FilterOptions(
        max_sites=args.max_sites, max_elements=args.max_elements, min_distance=args.min_distance
    )


def _histogram(counts: dict, width: int = 40) -> list[str]:
    top = max(counts.values(), default=1)
    return [f"  {k!s:>4} {v:7d} {'#' * max(1, round(width * v / top))}" for k, v in counts.items()]


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _require_path(path: str | None, flag: str, *, directory: bool = False) -> None:
    """Refuse a missing input before any work, naming the flag."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file or directory")
    if directory and not p.is_dir():
        raise ValueError(f"{flag} {path}: not a directory")


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _device(args: argparse.Namespace) -> str | None:
    """The torch device asked for (None = automatic); refuses CUDA where there is none."""
    device = getattr(args, "device", "auto")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    return None if device == "auto" else device


def _load_pipeline(args: argparse.Namespace):
    """The model of ``--model`` on ``--device`` at ``--precision``; a damaged model directory is
    a user error."""
    import pickle

    from pccd.generator import load_pretrained

    device = _device(args)
    label = args.model or "the shipped model"
    try:
        return load_pretrained(args.model, device, precision=args.precision)
    except (ValueError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"model {label}: damaged or foreign model files ({exc!r})") from exc
    except RuntimeError as exc:  # torch.load / load_state_dict on a foreign or damaged file
        raise ValueError(f"model {label}: cannot load the weights ({exc})") from exc


def _check_run(pipeline, requests, args: argparse.Namespace) -> None:
    """Refuse requests and sampling options the model cannot serve before anything is
    written (the model's own checks: each family knows its samplers and conditions)."""
    from pccd.generator import Request

    for request in {requests} if isinstance(requests, Request) else set(requests):
        pipeline.check_request(request)
    pipeline.check_options(sampler=_sampler(pipeline, args), steps=args.steps)


def _sampler(pipeline, args: argparse.Namespace) -> str:
    """``--sampler``, or the model's default sampler when not given."""
    return args.sampler if args.sampler is not None else pipeline.samplers[0]


def _check_mlip(name: str) -> None:
    """Validate ``--mlip`` without loading weights: known name, importable package/factory."""
    import importlib
    import importlib.util

    from pccd.mlip import BUILTIN, MLIP, SCREEN_EXTRA_HINT

    MLIP(name)  # unknown names: ValueError
    if name in BUILTIN:
        package = {"chgnet": "chgnet", "7net-0": "sevenn"}.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ImportError(f"--mlip {name} needs the {package} package; {SCREEN_EXTRA_HINT}")
        return
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--mlip {name}: cannot import module {module_name!r} ({exc})") from exc
    if not callable(getattr(module, attr, None)):
        raise ValueError(f"--mlip {name}: {module_name} has no callable {attr!r}")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())


# ---- commands ---------------------------------------------------------------------------------
def _cmd_data_inspect(args: argparse.Namespace) -> int:
    result = data.load(args.path, _filter_options(args), cache=not args.no_cache)
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
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from pccd import representation as rep

    config = rep.RepresentationConfig(lattice_scheme=rep.LatticeScheme(args.lattice_scheme))
    result = data.load(args.path, _filter_options(args), cache=not args.no_cache)
    if len(result.table) == 0:
        n_rej = len(result.rejected)
        raise ValueError(f"{args.path}: no crystal passed the filter ({n_rej} rejected)")
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


def _key_values(items: Sequence[str] | None, flag: str = "option") -> dict[str, object]:
    """Parse repeated ``KEY=VALUE`` options; values are JSON when they parse, else strings."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _check_model_config(preset: str, overrides: dict) -> None:
    """A preset plus ``--model-option`` overrides must make a valid network config."""
    from dataclasses import asdict, fields

    from pccd.model import PRESETS, UNetConfig

    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; choose from {', '.join(PRESETS)}")
    if not isinstance(overrides, dict):
        raise ValueError(f"model_overrides must be a KEY=VALUE mapping, got {overrides!r}")
    names = [f.name for f in fields(UNetConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(
            f"--model-option: unknown network field(s) {', '.join(unknown)}; "
            f"valid: {', '.join(names)}"
        )
    try:
        UNetConfig.from_dict({**asdict(PRESETS[preset]), **overrides})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--model-option: {_one_line(exc)}") from exc


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from pccd.training import TrainConfig, train

    options = _key_values(args.option, "--option")
    unknown = set(options) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(
            f"--option: unknown training option(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(f.name for f in fields(TrainConfig))}"
        )
    flags = {
        "preset": args.preset,
        "lattice_scheme": args.lattice_scheme,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "val_size": args.val_size,
        "model_overrides": _key_values(args.model_option, "--model-option"),
    }
    merged = {**flags, **options}  # --option wins over the plain flags
    _check_model_config(str(merged["preset"]), merged["model_overrides"])  # type: ignore[arg-type]
    _require_path(args.data, "--data")
    _require_path(args.val, "--val")
    try:
        config = TrainConfig(**merged)
    except TypeError as exc:
        raise ValueError(f"--option: {_one_line(exc)}") from exc
    _set_threads(args.threads)
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
        precision=args.precision,
        progress=not args.quiet,
    )
    print(f"checkpoint: {ckpt}")
    return 0


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    """Pack a run's last.ckpt into files a git repository takes, or rebuild it from them."""
    import pickle

    from pccd.training import pack_checkpoint, unpack_checkpoint

    if args.action == "pack":
        path = Path(args.source)
        path = path / "last.ckpt" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        try:
            cap = {"max_file_mb": args.max_file_mb} if args.max_file_mb else {}
            files = pack_checkpoint(path, args.dest, **cap)
        except (KeyError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:
            raise ValueError(f"{path}: not a pccd training checkpoint ({_one_line(exc)})") from exc
        sizes = ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in files)
        print(f"packed {path} into {args.dest}: {sizes}")
    else:
        ckpt = unpack_checkpoint(args.source, args.dest)
        print(f"rebuilt {ckpt}; `pccd train --out {args.dest} ...` resumes from it")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import pickle

    from pccd.training import export_pretrained

    path = Path(args.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        out = export_pretrained(path, args.out, dtype=args.dtype)
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{path}: not a pccd training checkpoint ({exc!r})") from exc
    except RuntimeError as exc:  # torch.load of a damaged file
        raise ValueError(f"{path}: cannot read the checkpoint ({_one_line(exc)})") from exc
    print(f"pretrained model written to {out}")
    return 0


def _write_formats(structure, out: Path, stem: str, formats: Sequence[str]) -> None:
    """Write ``structure`` in the extra formats beside its CIF (same stem)."""
    if "poscar" in formats:
        structure.to(filename=str(out / f"{stem}.vasp"), fmt="poscar")
    if "extxyz" in formats:
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        write(out / f"{stem}.extxyz", AseAtomsAdaptor.get_atoms(structure), format="extxyz")


def _cmd_generate(args: argparse.Namespace) -> int:
    import csv
    import time

    from pccd.generator import Request
    from pccd.runs import generate_to_directory

    t0 = time.perf_counter()
    n: int | None = args.n
    if args.max_draws is not None and not args.valid_only:
        raise ValueError("--max-draws only applies with --valid-only")
    if args.guide and args.guidance == 1.0:
        raise ValueError("--guide chooses what --guidance amplifies; give --guidance other than 1")
    if args.valid_only and args.elements_from:
        raise ValueError("--valid-only takes one request (--elements or --formula), not a split")
    relaxer = _decode_relaxer(args)
    if args.elements_from:
        if args.formula:
            raise ValueError("--formula fixes the elements; it cannot go with --elements-from")
        _require_path(args.elements_from, "--elements-from")
        table = data.load(args.elements_from).table
        if len(table) == 0:
            raise ValueError(f"--elements-from {args.elements_from}: no crystal loaded from it")
        requests = [
            Request.parse(
                els, band_gap=args.band_gap, magnetic=args.magnetic, stability=args.stability
            )
            for els in table.draw_element_lists(args.n, args.seed)
        ]
        n = None
    else:
        requests = Request.parse(
            _split(args.elements),
            formula=args.formula,
            band_gap=args.band_gap,
            magnetic=args.magnetic,
            stability=args.stability,
        )  # validated before loading anything heavy
    _set_threads(args.threads)
    pipeline = _load_pipeline(args)
    args.sampler = _sampler(pipeline, args)
    _check_run(pipeline, requests, args)
    out = Path(args.out)
    extra = [f for f in args.format if f != "cif"]
    if args.valid_only:
        if relaxer is not None:
            raise ValueError("--relax does not go with --valid-only; relax with pccd screen")
        return _generate_valid(args, pipeline, requests, out, extra, t0)
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

        summary = generate_to_directory(
            pipeline,
            requests,
            n,
            out,
            batch_size=args.batch_size,
            on_batch=report,
            relax=relaxer,
            sampler=args.sampler,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            progress=False,
            repulsion=args.repulsion,
            **_guide(args),
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


def _decode_relaxer(args: argparse.Namespace):
    """``generate --relax MLIP``: the relaxer (validated before any work), else None."""
    if args.relax is None:
        if args.relax_engine is not None or args.relax_batch_size != 16:
            raise ValueError("--relax-engine / --relax-batch-size only apply with --relax MLIP")
        return None
    from pccd.screen.decode_relax import DecodeRelaxer

    _check_mlip(args.relax)
    return DecodeRelaxer(
        args.relax,
        engine=_relax_engine(args),
        batch_size=args.relax_batch_size,
        device=_device(args),
    )


def _generate_valid(args, pipeline, request, out: Path, extra: list[str], t0: float) -> int:
    """``generate --valid-only``: sample until n crystals pass; report the acceptance rate."""
    import csv
    import time

    from pymatgen.core import Structure

    from pccd.runs import generate_valid_to_directory

    with progress.bar(None, "drawn", "crystal") as pbar:
        summary = generate_valid_to_directory(
            pipeline,
            request,
            args.n,
            out,
            max_draws=args.max_draws,
            batch_size=args.batch_size,
            on_batch=lambda batch: pbar.update(len(batch)),
            sampler=args.sampler,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            progress=False,
            repulsion=args.repulsion,
            **_guide(args),
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


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    """The paper's reconstruction experiment (noise to t, denoise, decode, compare)."""
    from pccd.evaluate.csp_distances import METRICS
    from pccd.evaluate.reconstruction import ReconstructionSettings, run_reconstruction

    try:
        timesteps = tuple(int(t) for t in _split(args.t) or [])
    except ValueError as exc:
        raise ValueError(f"--t takes comma-separated integers, got {args.t!r}") from exc
    if not timesteps:
        raise ValueError(f"--t needs at least one step, got {args.t!r}")
    distances = (
        METRICS
        if args.distances == "all"
        else ()
        if args.distances == "none"
        else tuple(_split(args.distances) or ())
    )
    unknown = set(distances) - set(METRICS)
    if unknown:
        raise ValueError(
            f"--distances: unknown metric(s) {sorted(unknown)}; choose from {', '.join(METRICS)}"
        )
    if args.distance_t is not None and args.distance_t not in timesteps:
        raise ValueError(f"--distance-t {args.distance_t} is not one of --t {args.t}")
    if "energy" in distances:
        _check_mlip(args.mlip)
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
    _require_path(args.path, "split")
    _set_threads(args.threads)
    pipeline = _load_pipeline(args)
    pipeline.check_options(sampler=args.sampler, steps=args.steps)
    total = pipeline.num_train_timesteps
    bad = [t for t in timesteps if not 1 <= t <= total]
    if bad:
        raise ValueError(f"--t {args.t}: every t must be between 1 and {total}, got {bad}")
    table = data.load(args.path, _filter_options(args), cache=not args.no_cache).table
    if len(table) == 0:
        raise ValueError(f"{args.path}: no crystal passed the filter")
    metrics = run_reconstruction(
        pipeline,
        table,
        args.out,
        settings,
        source=str(args.path),
        model_label=str(args.model or "shipped"),
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

    _require_path(args.directory, "directory", directory=True)
    _require_path(args.reference, "--reference")
    _require_path(args.known, "--known")
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
    print(f"metrics.json, report.md and figures in {args.out}")
    return 0


def _cmd_csp(args: argparse.Namespace) -> int:
    """The DiffCSP crystal-structure-prediction benchmark on a split."""
    from pccd.evaluate.csp import CSPSettings, run_csp

    _require_path(args.path, "split")
    _set_threads(args.threads)
    pipeline = _load_pipeline(args)
    args.sampler = _sampler(pipeline, args)
    pipeline.check_options(sampler=args.sampler, steps=args.steps, repulsion=args.repulsion)
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
    table = data.load(args.path, _filter_options(args), cache=not args.no_cache).table
    if len(table) == 0:
        raise ValueError(f"{args.path}: no crystal passed the filter")
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


def _screen_settings(args: argparse.Namespace):
    from pccd.screen.screening import ScreenSettings

    return ScreenSettings(
        mlip=args.mlip,
        fmax=args.fmax,
        max_steps=args.max_steps,
        reference=args.reference,
        relax_engine=_relax_engine(args),
    )


def _check_dask(args: argparse.Namespace) -> None:
    """--dask: not with --workers (the cluster has its own), and the package must be there."""
    if args.dask is None:
        return
    if args.workers > 1:
        raise ValueError("--workers does not apply with --dask: the Dask cluster has its workers")
    import importlib.util

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
    from pccd.evaluate.denovo import list_cifs
    from pccd.screen.screening import screen_directory, summarize_screen

    _require_path(args.directory, "directory", directory=True)
    if not list_cifs(args.directory):
        raise ValueError(f"{args.directory}: no CIF files to screen")
    _require_path(args.reference, "--reference")
    _check_mlip(args.mlip)
    _check_dask(args)
    device = _device(args)
    _set_threads(args.threads)
    path = screen_directory(
        args.directory,
        args.out,
        _screen_settings(args),
        workers=args.workers,
        threads_per_worker=args.threads or 1,
        limit=args.limit,
        device=device,
        dask=args.dask,
        relax_batch_size=args.relax_batch_size,
    )
    _print_screen_summary(summarize_screen(path))
    print(f"screen.csv, relaxed/ and summary.json in {args.out}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    """One of the paper's discovery batches: draw element lists, generate, screen."""
    from pccd.screen.batch import BatchSettings, check_batch_settings, run_batch

    settings = BatchSettings(
        pool=args.pool, lists=args.lists, per_list=args.per_list, seed=args.seed
    )
    check_batch_settings(settings)
    _require_path(args.reference, "--reference")
    _check_mlip(args.mlip)
    _check_dask(args)
    _set_threads(args.threads)
    pipeline = _load_pipeline(args)
    args.sampler = _sampler(pipeline, args)
    pipeline.check_options(sampler=args.sampler, steps=args.steps)
    stats = run_batch(
        pipeline,
        args.out,
        settings,
        _screen_settings(args),
        workers=args.workers,
        sampler=args.sampler,
        steps=args.steps,
        device=_device(args),
        dask=args.dask,
        relax_batch_size=args.relax_batch_size,
    )
    _print_screen_summary({**stats, "crystals": stats["generated"]})
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

    _require_path(args.reference, "--reference")
    _check_mlip(args.mlip)
    device = _device(args)
    _set_threads(args.threads)
    partial = Path(args.work) / f"{args.mlip.replace(':', '_')}.partial.csv"
    with progress.bar(None, "reference energies", "crystal") as pbar:
        written = compute_reference_energies(
            MLIP(args.mlip, device=device),
            read_reference_structures(args.reference, max_elements=args.max_elements),
            partial,
            progress=lambda n: pbar.update(1),
        )
    out = Path(args.out) if args.out else shipped_table(args.mlip)
    rows = finalize_table(partial, out)
    print(f"{written} new energies; {rows} rows in {out}")
    return 0


def _cmd_phonons(args: argparse.Namespace) -> int:
    """Phonon band structure and stability verdict of one crystal (relaxed first by default)."""
    import warnings

    from pymatgen.core import Structure

    from pccd.mlip import MLIP, MLIPError
    from pccd.screen.phonons import compute_phonons, plot_band_structure
    from pccd.screen.relax import RelaxationError, relax

    path = Path(args.cif)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(path)
    except Exception as exc:  # pymatgen raises many types on malformed files
        raise ValueError(f"cannot read {path}: {_one_line(exc)}") from exc
    if not structure.is_ordered:
        raise ValueError(f"{path}: partial occupancies; phonons need an ordered crystal")
    _check_mlip(args.mlip)
    mlip = MLIP(args.mlip, device=_device(args))
    _set_threads(args.threads)
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
        raise ValueError(
            f"{path}: {_one_line(exc)}; no phonons computed (check the structure, or try "
            "another --mlip)"
        ) from exc
    (out / "phonons.json").write_text(json.dumps(result.to_dict(), indent=2))
    plot_band_structure(result, out / "band_structure.png")
    print(
        f"{result.formula}: {result.verdict} (lowest mode away from Γ "
        f"{result.min_frequency_off_gamma_thz:.3f} THz; supercell {result.supercell}, "
        f"{result.seconds:.1f} s); phonons.json and band_structure.png in {out}"
    )
    return 0


# ---- the parser -------------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    """The local web page and JSON API (generate, screen, browse and view crystals)."""
    try:
        from pccd.web import serve
    except ImportError as exc:
        message = f'pccd serve needs the web extra: pip install -e ".[web]" ({exc})'
        raise ImportError(message) from exc
    serve(
        host=args.host,
        port=args.port,
        runs=args.runs,
        model=args.model,
        max_n=args.max_n,
        threads=args.threads,
        reference=args.reference,
        precision=args.precision,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pccd", description="Point-cloud crystal diffusion (PCCD, arXiv 2401.13192)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    verbosity = _verbosity_parent()

    p_data = sub.add_parser("data", help="inspect crystal data sets")
    data_sub = p_data.add_subparsers(dest="data_command", required=True)
    p_inspect = data_sub.add_parser(
        "inspect",
        help="counts, rejection reasons, element and size histograms",
        parents=[verbosity, _filter_parent()],
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
        parents=[verbosity, _filter_parent()],
    )
    p_rt.add_argument("path", help="CSV(.gz), directory of CIF/POSCAR, or ASE-readable file")
    p_rt.add_argument("--out", required=True, help="directory for the decoded CIFs")
    p_rt.add_argument("-n", type=COUNT_OR_ALL, default=10, help="how many crystals (0 = all)")
    p_rt.add_argument("--lattice-scheme", choices=["log", "paper"], default="log")
    p_rt.set_defaults(func=_cmd_roundtrip)

    p_gen = sub.add_parser(
        "generate",
        help="generate crystals with a pretrained model",
        parents=[
            verbosity,
            _threads_parent(),
            _model_parent(),
            _device_parent(),
            _seed_parent(),
            _sampling_parent(None, 100),
            _relax_engine_parent(),
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
        "--band-gap", type=NON_NEGATIVE_FLOAT, help="condition on a band gap (eV, ≥ 0)"
    )
    p_gen.add_argument("--magnetic", choices=["NM", "FM", "AFM", "FiM"])
    p_gen.add_argument(
        "--stability",
        choices=list(STABILITY_LABELS),
        help="condition on stability: stable = energy above the hull below "
        f"{STABLE_E_ABOVE_HULL} eV/atom (models trained with stability labels only)",
    )
    p_gen.add_argument("-n", type=POSITIVE_INT, default=10, help="how many crystals (default 10)")
    p_gen.add_argument("--out", required=True, help="directory for CIFs and summary.csv")
    p_gen.add_argument(
        "--format",
        type=_formats,
        default=("cif",),
        help="comma list of cif, extxyz, poscar (default cif; the CIF is always written, "
        "other formats go beside it with the same name)",
    )
    p_gen.add_argument(
        "--repulsion",
        type=FINITE_FLOAT,
        metavar="TAU",
        help="sampling-time guidance (off by default): in the second half of the chain push "
        "atoms apart to ≥ TAU × their covalent bond length, e.g. 0.85 (samples are then "
        "guided, not the raw model)",
    )
    p_gen.add_argument(
        "--guide",
        type=_conditions_list,
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
        "--max-draws", type=POSITIVE_INT, help="cap on draws with --valid-only (default 50·n)"
    )
    p_gen.add_argument(
        "--relax",
        metavar="MLIP",
        help="relax each crystal right after decoding with this MLIP (chgnet, 7net-0 or "
        "module:factory; off by default): relaxed CIFs in OUT/relaxed/, raw and relaxed "
        "energies and failure reasons in summary.csv",
    )
    p_gen.set_defaults(func=_cmd_generate)

    p_train = sub.add_parser(
        "train",
        help="train (or resume training) a PCCD model",
        parents=[
            verbosity,
            _threads_parent(),
            _seed_parent(),
            _precision_parent(_TRAINING_PRECISION_HELP),
        ],
    )
    p_train.add_argument("--data", required=True, help="training crystals (CSV, dir, ASE file)")
    p_train.add_argument("--val", help="validation crystals")
    p_train.add_argument("--out", required=True, help="run directory (checkpoints, logs)")
    p_train.add_argument("--preset", default="cpu", help="network preset: cpu, wide, paper, tiny")
    p_train.add_argument("--lattice-scheme", choices=["log", "paper"], default="log")
    p_train.add_argument("--batch-size", type=POSITIVE_INT, default=128)
    p_train.add_argument(
        "--lr",
        type=POSITIVE_FLOAT,
        default=1e-4,
        help="Adam step size (default: the paper's 1e-4); on a CPU budget of a few epochs 5e-4 "
        "learned far faster in the memorisation test (BENCHMARKS)",
    )
    p_train.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=0)
    p_train.add_argument(
        "--val-size", type=COUNT_OR_ALL, default=1024, help="val crystals (0 = all)"
    )
    p_train.add_argument("--max-minutes", type=POSITIVE_FLOAT, help="stop cleanly after this long")
    p_train.add_argument("--max-steps", type=_int_type(-1), default=-1, help="step cap (-1 = none)")
    p_train.add_argument("--checkpoint-minutes", type=POSITIVE_FLOAT, default=10.0)
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
    p_train.set_defaults(func=_cmd_train)

    p_exp = sub.add_parser(
        "export", help="write a checkpoint's EMA weights as a model directory", parents=[verbosity]
    )
    p_exp.add_argument("checkpoint")
    p_exp.add_argument("out")
    p_exp.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="precision model.pt stores (float16: half the size; loading computes in float32)",
    )
    p_exp.set_defaults(func=_cmd_export)

    p_ck = sub.add_parser(
        "checkpoint",
        help="pack a training checkpoint into ≤45 MB files for git, or unpack it to resume",
    )
    p_ck.add_argument("action", choices=["pack", "unpack"])
    p_ck.add_argument("source", help="pack: run dir or .ckpt; unpack: packed dir")
    p_ck.add_argument("dest", help="pack: output dir; unpack: run dir to resume in")
    p_ck.add_argument(
        "--max-file-mb",
        type=POSITIVE_FLOAT,
        help="pack: largest file to write, in MB (default 45, pccd.training.MAX_FILE_MB)",
    )
    p_ck.set_defaults(func=_cmd_checkpoint)

    p_rec = sub.add_parser(
        "reconstruct",
        help="noise crystals to step t, denoise, decode, compare (paper Fig. 1)",
        parents=[
            verbosity,
            _threads_parent(),
            _model_parent(),
            _device_parent(),
            _seed_parent(),
            _sampling_parent("ddpm", 64),
            _filter_parent(),
        ],
    )
    p_rec.add_argument("path", help="the split to draw crystals from (CSV, CIF dir, ASE file)")
    p_rec.add_argument("--out", required=True, help="output directory (resumable)")
    p_rec.add_argument(
        "-n", type=COUNT_OR_ALL, default=1280, help="crystals drawn (default 1280, 0 = all)"
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
        "--distance-t", type=POSITIVE_INT, help="t for the distances (default: largest)"
    )
    p_rec.add_argument("--ged-timeout", type=POSITIVE_FLOAT, default=2.0, help="seconds per pair")
    p_rec.add_argument(
        "--mlip", default="chgnet", help="MLIP of the energy distance (chgnet, 7net-0, module:f)"
    )
    p_rec.set_defaults(func=_cmd_reconstruct)

    p_ev = sub.add_parser(
        "evaluate",
        help="de novo metrics of a directory of CIFs (CDVAE / DiffCSP protocol)",
        parents=[verbosity, _seed_parent()],
    )
    p_ev.add_argument("directory", help="directory of CIF files (any generator)")
    p_ev.add_argument("--out", required=True, help="output directory (resumable)")
    p_ev.add_argument("--reference", help="split for COV and Wasserstein, e.g. the val CSV")
    p_ev.add_argument("--known", help="known-crystal database for novelty (MP-20-format CSV)")
    p_ev.add_argument(
        "-n", "--n", type=COUNT_OR_ALL, default=0, help="crystals scored (0 = all CIFs)"
    )
    p_ev.add_argument(
        "--struct-cutoff", type=POSITIVE_FLOAT, default=0.4, help="COV structure cut-off"
    )
    p_ev.add_argument(
        "--comp-cutoff", type=POSITIVE_FLOAT, default=10.0, help="COV composition cut-off"
    )
    p_ev.add_argument(
        "--n-reference", type=COUNT_OR_ALL, default=0, help="reference crystals (0 = all)"
    )
    p_ev.add_argument("--no-novelty", action="store_true", help="skip the novelty check")
    p_ev.set_defaults(func=_cmd_evaluate)

    p_csp = sub.add_parser(
        "csp",
        help="crystal structure prediction benchmark: k candidates per formula",
        parents=[
            verbosity,
            _threads_parent(),
            _model_parent(),
            _device_parent(),
            _seed_parent(),
            _sampling_parent(None, 100),
            _filter_parent(),
        ],
    )
    p_csp.add_argument("path", help="the split whose formulas are predicted (e.g. val)")
    p_csp.add_argument("--out", required=True, help="output directory (resumable)")
    p_csp.add_argument("-n", type=COUNT_OR_ALL, default=1000, help="formulas drawn (0 = all)")
    p_csp.add_argument(
        "-k", type=POSITIVE_INT, default=20, help="candidates per formula (k=1 also shown)"
    )
    p_csp.add_argument(
        "--formula-decoding",
        choices=["blocks", "cluster"],
        default="blocks",
        help="atoms from the row blocks the formula fixes (default) or DBSCAN (the paper's)",
    )
    p_csp.add_argument(
        "--repulsion",
        type=FINITE_FLOAT,
        metavar="TAU",
        help="sampling-time repulsion (see pccd generate --help); off = the raw model",
    )
    p_csp.set_defaults(func=_cmd_csp)

    p_scr = sub.add_parser(
        "screen",
        help="relax CIFs with an MLIP: E_hull, novelty, S.U.N.",
        parents=[
            verbosity,
            _threads_parent(),
            _device_parent(),
            _screen_parent(),
            _relax_pool_parent(),
        ],
    )
    p_scr.add_argument("directory", help="directory of CIF files")
    p_scr.add_argument("--out", required=True, help="output directory (resumable)")
    p_scr.add_argument("--limit", type=POSITIVE_INT, help="screen only the first N CIFs")
    p_scr.set_defaults(func=_cmd_screen)

    p_bat = sub.add_parser(
        "batch",
        help="a discovery batch of the paper: generate + screen",
        parents=[
            verbosity,
            _threads_parent(),
            _model_parent(),
            _device_parent(),
            _seed_parent(),
            _sampling_parent(None, None, guidance=False),
            _screen_parent(),
            _relax_pool_parent(),
        ],
    )
    p_bat.add_argument("--pool", type=int, choices=[1, 2, 3], required=True, help="element pool")
    p_bat.add_argument("--out", required=True, help="output directory (resumable)")
    p_bat.add_argument("--lists", type=POSITIVE_INT, default=50, help="element lists drawn")
    p_bat.add_argument("--per-list", type=POSITIVE_INT, default=2, help="crystals per element list")
    p_bat.set_defaults(func=_cmd_batch)

    p_ph = sub.add_parser(
        "phonons",
        help="phonon bands and dynamical stability of one CIF",
        parents=[
            verbosity,
            _threads_parent(),
            _device_parent(),
            _screen_parent("7net-0", 0.01, 1000),
        ],
    )
    p_ph.add_argument("cif", help="crystal (CIF/POSCAR)")
    p_ph.add_argument("--out", help="output directory (default: <name>_phonons)")
    p_ph.add_argument("--min-length", type=POSITIVE_FLOAT, default=10.0, help="supercell width, Å")
    p_ph.add_argument("--no-relax", action="store_true", help="the CIF is already relaxed")
    p_ph.set_defaults(func=_cmd_phonons)

    p_ref = sub.add_parser(
        "references",
        help="precompute an MLIP's reference energies",
        parents=[verbosity, _threads_parent(1), _device_parent()],
    )
    p_ref.add_argument("--mlip", default="chgnet")
    p_ref.add_argument("--reference", required=True, help="mp_reference.csv.gz")
    p_ref.add_argument("--max-elements", type=POSITIVE_INT, default=3)
    p_ref.add_argument("--work", default=".", help="directory for the resumable partial CSV")
    p_ref.add_argument("--out", help="table to write (default: the package's shipped table)")
    p_ref.set_defaults(func=_cmd_references)

    p_srv = sub.add_parser(
        "serve",
        help="local web page + JSON API to generate and view crystals",
        parents=[_precision_parent()],
    )
    p_srv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p_srv.add_argument("--port", type=_int_type(1, 65535), default=8000)
    p_srv.add_argument("--runs", default="runs", help="job directories (default ./runs)")
    p_srv.add_argument("--model", help="model directory or shipped model name")
    p_srv.add_argument("--reference", help="known materials (mp_reference.csv.gz) for novelty")
    p_srv.add_argument("--max-n", type=POSITIVE_INT, default=1000, help="most crystals per job")
    p_srv.add_argument("--threads", type=int, default=0, help="torch threads of the worker")
    p_srv.set_defaults(func=_cmd_serve)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    """``pccd`` log records to stderr as plain lines; progress bars unless --quiet."""
    quiet = bool(getattr(args, "quiet", False))
    verbose = bool(getattr(args, "verbose", False))
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("pccd")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    progress.enable(not quiet)


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pccd`` command."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(_one_line(exc))
    _configure_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted; finished work is kept, rerun the same command to resume", 130)
    except UsageError as exc:
        return _fail(_one_line(exc))
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "pccd":
            raise  # our own module missing: a bug, keep the traceback
        message = _one_line(exc)
        if "pip install" not in message:
            extra = EXTRAS.get(args.command, "eval,screen")
            message += f'; install the optional dependencies: pip install -e ".[{extra}]"'
        return _fail(message)
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        # ValueError covers json.JSONDecodeError; OSError covers gzip.BadGzipFile
        return _fail(_one_line(exc))


if __name__ == "__main__":
    sys.exit(main())
