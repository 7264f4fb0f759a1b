"""What the command modules share once the arguments are parsed: paths, threads, the device,
the model, and the formatting of an error as one line.

Each helper raises :class:`~pccd.errors.InputError` for a mistake in what the user gave, the
one kind of exception :func:`pccd.cli.main` prints as ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from pccd import data
from pccd.errors import InputError, MissingInputError
from pccd.generator import DEFAULT_MODEL, Generator, Request, load_pretrained
from pccd.mlip import BUILTIN, MLIP, SCREEN_EXTRA_HINT


def one_line(exc: BaseException) -> str:
    """An exception as one line of text (an ``OSError`` as ``filename: reason``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or exc.__class__.__name__
    return " ".join(text.split())


def about(path: str | Path, exc: BaseException) -> str:
    """``exc`` as one line about the file ``path``: prefixed with the path unless the message
    names it already (the library's whole-file errors and an ``OSError`` with its filename
    do), so an error never reads ``error: foo.cif: foo.cif: ...``."""
    text = one_line(exc)
    return text if str(path) in text else f"{path}: {text}"


def split(text: str | None) -> list[str] | None:
    """A comma list as its stripped, non-empty items (None when not given)."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def key_values(items: Sequence[str] | None, flag: str = "option") -> dict[str, object]:
    """Parse repeated ``KEY=VALUE`` options; values are JSON when they parse, else strings."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def filter_options(args: argparse.Namespace) -> data.FilterOptions:
    return data.FilterOptions(
        max_sites=args.max_sites, max_elements=args.max_elements, min_distance=args.min_distance
    )


def load_data(
    path: str, options: data.FilterOptions | None = None, *, cache: bool = True
) -> data.LoadResult:
    """:func:`pccd.data.load` of a file the user named: a missing, unreadable or damaged file
    is an :class:`InputError` (gzip, CSV and CIF readers raise many types for it)."""
    try:
        return data.load(path, options or data.FilterOptions(), cache=cache)
    except InputError:
        raise
    except FileNotFoundError as exc:
        raise MissingInputError(one_line(exc)) from exc
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise InputError(about(path, exc)) from exc


def load_split(args: argparse.Namespace) -> data.CrystalTable:
    """The filtered table of the split a benchmark command (csp, reconstruct) runs on; a
    split that no crystal survives is an :class:`InputError`, not an empty benchmark."""
    table = load_data(args.path, filter_options(args), cache=not args.no_cache).table
    if len(table) == 0:
        raise InputError(f"{args.path}: no crystal passed the filter")
    return table


def require_path(path: str | None, flag: str, *, directory: bool = False) -> None:
    """Refuse a missing input before any work, naming the flag."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"{flag} {path}: no such file or directory")
    if directory and not p.is_dir():
        raise InputError(f"{flag} {path}: not a directory")


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def device(args: argparse.Namespace) -> str | None:
    """The torch device asked for (None = automatic); refuses CUDA where there is none."""
    chosen = getattr(args, "device", "auto")
    if chosen == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available; use --device cpu")
    return None if chosen == "auto" else chosen


def load_model(args: argparse.Namespace) -> Generator:
    """The model of ``--model`` on ``--device`` at ``--precision``; a damaged model directory is
    a user error."""
    chosen = device(args)
    label = args.model or DEFAULT_MODEL
    try:
        return load_pretrained(args.model, chosen, precision=args.precision)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as exc:
        raise InputError(f"model {label}: damaged or foreign model files ({exc!r})") from exc
    except RuntimeError as exc:  # torch.load / load_state_dict on a foreign or damaged file
        raise InputError(f"model {label}: cannot load the weights ({exc})") from exc


def sampler(pipeline: Generator, args: argparse.Namespace) -> str:
    """``--sampler``, or the model's default sampler when not given."""
    return args.sampler if args.sampler is not None else pipeline.samplers[0]


def check_run(pipeline: Generator, requests: Request | list[Request], args) -> None:
    """Refuse requests and sampling options the model cannot serve before anything is
    written (the model's own checks: each family knows its samplers and conditions)."""
    try:
        for request in {requests} if isinstance(requests, Request) else set(requests):
            pipeline.check_request(request)
    except ValueError as exc:  # the protocol's refusal of a request is the user's to fix
        raise InputError(one_line(exc)) from exc
    check_options(pipeline, sampler=sampler(pipeline, args), steps=args.steps)


def check_options(pipeline: Generator, **options) -> None:
    """The model's check of sampling options; a refusal is the user's to fix."""
    try:
        pipeline.check_options(**options)
    except ValueError as exc:
        raise InputError(one_line(exc)) from exc


def check_mlip(name: str) -> None:
    """Validate ``--mlip`` without loading weights: known name, importable package/factory."""
    MLIP(name)  # unknown names: InputError
    if name in BUILTIN:
        package = {"chgnet": "chgnet", "7net-0": "sevenn"}.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ImportError(f"--mlip {name} needs the {package} package; {SCREEN_EXTRA_HINT}")
        return
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"--mlip {name}: cannot import module {module_name!r} ({exc})") from exc
    if not callable(getattr(module, attr, None)):
        raise InputError(f"--mlip {name}: {module_name} has no callable {attr!r}")
