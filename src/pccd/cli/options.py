"""Argument types and the parent parsers that hold the flags several commands share.

Types are checked by argparse, so a bad value fails before any work; each shared flag is
defined once here, so its default and help read the same in every command.
"""

from __future__ import annotations

import argparse
import math

from pccd.conditioning import CONDITION_NAMES
from pccd.diffusion.sampling import PRECISIONS
from pccd.generator import DEFAULT_MODEL
from pccd.screen.engines import DEFAULT_BATCH_SIZE, DEFAULT_RELAX_ENGINE, RELAX_ENGINES

GENERATE_FORMATS = ("cif", "extxyz", "poscar")


def int_type(lo: int, hi: int | None = None, note: str = ""):
    """An argparse type for an integer in ``[lo, hi]``."""

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


def float_type(lo: float | None = None, *, strict: bool = True, note: str = ""):
    """An argparse type for a finite number above ``lo`` (or from ``lo`` when not strict)."""

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


POSITIVE_INT = int_type(1)
COUNT_OR_ALL = int_type(0, note=" (0 means all)")
NON_NEGATIVE_INT = int_type(0)
THREADS = int_type(0, note=" (0 = torch's default)")
POSITIVE_FLOAT = float_type(0.0)
NON_NEGATIVE_FLOAT = float_type(0.0, strict=False)
FINITE_FLOAT = float_type()


def formats(text: str) -> tuple[str, ...]:
    """``--format``: a comma list of :data:`GENERATE_FORMATS`."""
    chosen = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    unknown = [f for f in chosen if f not in GENERATE_FORMATS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {unknown or [text]}; choose from {', '.join(GENERATE_FORMATS)}"
        )
    return chosen


def conditions_list(text: str) -> tuple[str, ...]:
    """``--guide``: a comma list of condition names."""
    chosen = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [c for c in chosen if c not in CONDITION_NAMES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown condition(s) {unknown or [text]}; choose from {', '.join(CONDITION_NAMES)}"
        )
    return chosen


def verbosity_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    return p


def threads_parent(default: int = 0) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--threads", type=THREADS, default=default, help=f"torch threads (default {default})"
    )
    return p


def device_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the network / MLIP runs (auto: CUDA when present, else CPU)",
    )
    return p


def model_parent(default: str | None = None) -> argparse.ArgumentParser:
    """``--model``; None stands for :data:`~pccd.generator.DEFAULT_MODEL`, a command tied to one
    family (reconstruct) names its own default."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        default=default,
        help=f"model directory or shipped model name (default {default or DEFAULT_MODEL})",
    )
    return p


def seed_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


SAMPLING_PRECISION_HELP = (
    "how the network computes while sampling (default: the model's own; point-cloud models "
    "float32, atom models bfloat16 where the CPU/GPU has bfloat16 arithmetic, else float32); "
    "bfloat16: autocast, faster on CPUs with AMX/AVX512-BF16, other crystals for the same seed"
)
TRAINING_PRECISION_HELP = (
    "bfloat16: autocast with fp32 weights and optimiser, faster per step on CPUs with "
    "AMX/AVX512-BF16; a resumed run may change it"
)


def precision_parent(
    help_text: str = SAMPLING_PRECISION_HELP, default: str | None = None
) -> argparse.ArgumentParser:
    """``--precision``: one set of names for sampling and training (None: the model's own)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--precision", choices=PRECISIONS, default=default, help=help_text)
    return p


def sampling_parent(
    sampler: str | None, batch_size: int | None = 100, guidance: bool = True
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, parents=[precision_parent()])
    p.add_argument(
        "--sampler",
        default=sampler,
        help="the model's sampler (default: its own; point-cloud models: ddim, ddpm; "
        "atom models: pc, sde, ode)",
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


def model_parents(
    verbosity: argparse.ArgumentParser,
    sampler: str | None = None,
    batch_size: int | None = 100,
    guidance: bool = True,
    model: str | None = None,
) -> list[argparse.ArgumentParser]:
    """The flags of every command that samples a model (generate, csp, reconstruct, batch):
    verbosity, threads, model (default ``model``, see :func:`model_parent`), device, seed and
    :func:`sampling_parent`'s."""
    return [
        verbosity,
        threads_parent(),
        model_parent(model),
        device_parent(),
        seed_parent(),
        sampling_parent(sampler, batch_size, guidance),
    ]


REPULSION_HELP = (
    "sampling-time guidance (off by default): in the second half of the chain push atoms apart "
    "to ≥ TAU × their covalent bond length, e.g. 0.85 (samples are then guided, not the raw "
    "model)"
)


def repulsion_parent(help_text: str = REPULSION_HELP) -> argparse.ArgumentParser:
    """``--repulsion TAU`` (generate, csp)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--repulsion", type=FINITE_FLOAT, metavar="TAU", help=help_text)
    return p


def filter_parent() -> argparse.ArgumentParser:
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


def screen_parent(
    mlip: str = "chgnet", fmax: float = 0.05, max_steps: int = 500
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--mlip", default=mlip, help=f"{mlip} (default), chgnet, 7net-0 or module:f")
    p.add_argument(
        "--fmax", type=POSITIVE_FLOAT, default=fmax, help=f"force criterion, eV/Å ({fmax})"
    )
    p.add_argument("--max-steps", type=POSITIVE_INT, default=max_steps, help="relaxation step cap")
    return p


def relax_engine_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--relax-engine",
        choices=list(RELAX_ENGINES),
        help=f"{DEFAULT_RELAX_ENGINE} (default): many crystals in lockstep, one MLIP call per "
        "step for all; ase: per-crystal FIRE (same FIRE, checks and failure classes; runs made "
        "before 2026-12-02 used it and resume with it)",
    )
    p.add_argument(
        "--relax-batch-size",
        type=POSITIVE_INT,
        help=f"crystals relaxed together by --relax-engine batched (default {DEFAULT_BATCH_SIZE})",
    )
    return p


def relax_pool_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, parents=[relax_engine_parent()])
    p.add_argument("--reference", help="known materials (mp_reference.csv.gz) for novelty")
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="relaxation processes")
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the relaxations as tasks on a running Dask scheduler (tcp://host:8786); "
        "rows are written here as results arrive, so a rerun resumes",
    )
    return p
