"""``pccd train``, ``pccd export`` and ``pccd checkpoint``: make a model and move it around."""

from __future__ import annotations

import argparse
import pickle
from dataclasses import fields
from pathlib import Path

from pccd.cli import options as opt
from pccd.cli.support import key_values, one_line, require_path, set_threads
from pccd.diffusion import DEFAULT_PRECISION
from pccd.errors import InputError, MissingInputError
from pccd.generator import FAMILIES, export_model


def _cmd_train(args: argparse.Namespace) -> int:
    # imported when run: Lightning takes seconds to import and no other command needs it
    from pccd.training import TrainConfig, train  # Lightning: loaded only when training

    options = key_values(args.option, "--option")
    names = [f.name for f in fields(TrainConfig)]
    unknown = set(options) - set(names)
    if unknown:
        raise InputError(
            f"--option: unknown training option(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(names)}"
        )
    flags = {
        "preset": args.preset,
        "lattice_scheme": args.lattice_scheme,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "val_size": args.val_size,
        "model_overrides": key_values(args.model_option, "--model-option"),
    }
    try:  # --option wins over the plain flags; the config checks itself and its network
        config = TrainConfig(**{**flags, **options})
    except (TypeError, ValueError) as exc:
        raise InputError(f"--option / --model-option: {one_line(exc)}") from exc
    require_path(args.data, "--data")
    require_path(args.val, "--val")
    set_threads(args.threads)
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
    # imported when run: torch and the network's modules are not needed to parse arguments
    from pccd.training import pack_checkpoint, unpack_checkpoint  # no Lightning: it is lazy

    if args.action == "pack":
        path = Path(args.source)
        path = path / "last.ckpt" if path.is_dir() else path
        if not path.is_file():
            raise MissingInputError(f"{path}: no such checkpoint file")
        try:
            cap = {"max_file_mb": args.max_file_mb} if args.max_file_mb else {}
            files = pack_checkpoint(path, args.dest, **cap)
        except (KeyError, pickle.UnpicklingError, EOFError, RuntimeError) as exc:
            raise InputError(f"{path}: not a pccd training checkpoint ({one_line(exc)})") from exc
        sizes = ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in files)
        print(f"packed {path} into {args.dest}: {sizes}")
    else:
        ckpt = unpack_checkpoint(args.source, args.dest)
        print(f"rebuilt {ckpt}; `pccd train --out {args.dest} ...` resumes from it")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    options = {k: getattr(args, k) for k in ("dtype", "name", "hardware")}
    options = {k: v for k, v in options.items() if v is not None}
    out = export_model(args.checkpoint, args.out, family=args.family, **options)
    print(f"pretrained model written to {out}")
    return 0


def register(sub: argparse._SubParsersAction, verbosity: argparse.ArgumentParser) -> None:
    """Add ``train``, ``export`` and ``checkpoint`` to the ``pccd`` parser."""
    p_train = sub.add_parser(
        "train",
        help="train (or resume training) a PCCD model",
        parents=[
            verbosity,
            opt.threads_parent(),
            opt.seed_parent(),
            opt.precision_parent(opt.TRAINING_PRECISION_HELP, DEFAULT_PRECISION),
        ],
    )
    p_train.add_argument("--data", required=True, help="training crystals (CSV, dir, ASE file)")
    p_train.add_argument("--val", help="validation crystals")
    p_train.add_argument("--out", required=True, help="run directory (checkpoints, logs)")
    p_train.add_argument("--preset", default="cpu", help="network preset: cpu, wide, paper, tiny")
    p_train.add_argument("--lattice-scheme", choices=["log", "paper"], default="log")
    p_train.add_argument("--batch-size", type=opt.POSITIVE_INT, default=128)
    p_train.add_argument(
        "--lr",
        type=opt.POSITIVE_FLOAT,
        default=1e-4,
        help="Adam step size (default: the paper's 1e-4); on a CPU budget of a few epochs 5e-4 "
        "learned far faster in the memorisation test (BENCHMARKS)",
    )
    p_train.add_argument("--num-workers", type=opt.NON_NEGATIVE_INT, default=0)
    p_train.add_argument(
        "--val-size", type=opt.COUNT_OR_ALL, default=1024, help="val crystals (0 = all)"
    )
    p_train.add_argument(
        "--max-minutes", type=opt.POSITIVE_FLOAT, help="stop cleanly after this long"
    )
    p_train.add_argument(
        "--max-steps", type=opt.int_type(-1), default=-1, help="step cap (-1 = none)"
    )
    p_train.add_argument("--checkpoint-minutes", type=opt.POSITIVE_FLOAT, default=10.0)
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
        "export",
        help="write a training run's EMA weights as a model directory (any family)",
        parents=[verbosity],
    )
    p_exp.add_argument(
        "checkpoint",
        help="what training wrote: a point-cloud checkpoint file (last.ckpt) or an atom "
        "training directory (train.json, live.pt)",
    )
    p_exp.add_argument("out")
    p_exp.add_argument(
        "--family", choices=list(FAMILIES), help="default: the family that wrote CHECKPOINT"
    )
    p_exp.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        help="point clouds: precision model.pt stores (default float32; float16: half the "
        "size, loading computes in float32)",
    )
    p_exp.add_argument("--name", help="atoms: the model's name (default: OUT's name)")
    p_exp.add_argument("--hardware", help="atoms: what it was trained on, for its record")
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
        type=opt.POSITIVE_FLOAT,
        help="pack: largest file to write, in MB (default 45, pccd.training.MAX_FILE_MB)",
    )
    p_ck.set_defaults(func=_cmd_checkpoint)
