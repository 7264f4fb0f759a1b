"""The ``pccd`` command: a thin layer that parses arguments and calls the library.

One module per group of commands (:mod:`~pccd.cli.data`, :mod:`~pccd.cli.generate`,
:mod:`~pccd.cli.train`, :mod:`~pccd.cli.evaluate`, :mod:`~pccd.cli.screen`,
:mod:`~pccd.cli.serve`, :mod:`~pccd.cli.models`); each adds its sub-commands to the parser here
and does no science itself, so everything it does is available from Python too.

Conventions: every argument is validated before any work is done or any file is written; a user
error — an :class:`~pccd.errors.InputError` from the library or from these modules (bad
argument, missing or damaged file), a bad command line, a missing optional extra, or an
:class:`~pccd.errors.IncompleteRun` (a batch that kept what it finished; a rerun resumes) — is one
line ``error: ...`` on stderr and exit code 2; an interrupt is exit code 130; any other
exception keeps its traceback, because it is a bug in pccd. The library logs through
:mod:`logging` (configured here by ``-v`` / ``--quiet``) and shows progress bars only when this
command enables them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pccd import progress
from pccd.cli.options import verbosity_parent
from pccd.cli.support import one_line
from pccd.errors import IncompleteRun, InputError

#: extra that provides the optional dependencies of each command (for ImportError messages)
EXTRAS = {
    "reconstruct": "eval",
    "evaluate": "eval",
    "csp": "eval",
    "screen": "screen",
    "batch": "screen",
    "phonons": "screen",
    "references": "screen",
    "serve": "web",
}


class UsageError(Exception):
    """A mistake in the command line: printed as one ``error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that :func:`main` turns into exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


MODULES = ("data", "generate", "train", "evaluate", "screen", "serve", "models")
"""The command modules of :mod:`pccd.cli`, in the order ``pccd --help`` lists them."""
COMMANDS = {
    "data": "data", "roundtrip": "data",
    "generate": "generate", "csp": "generate",
    "train": "train", "export": "train", "checkpoint": "train",
    "reconstruct": "evaluate", "evaluate": "evaluate",
    "screen": "screen", "batch": "screen", "phonons": "screen", "references": "screen",
    "serve": "serve",
    "models": "models",
}  # fmt: skip
"""Each command → the module that registers it. ``main`` imports only the invoked command's
module: every module pulls in its own stack (the structure matcher, phonopy, FastAPI, …), and
importing all of them cost each ``pccd generate`` about a second."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pccd`` parser: each command module adds its own sub-commands (only ``command``'s
    module when given: what :func:`main` uses to start fast)."""
    parser = _Parser(
        prog="pccd", description="Point-cloud crystal diffusion (PCCD, arXiv 2401.13192)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    verbosity = verbosity_parent()
    for name in MODULES if command is None else (COMMANDS[command],):
        module = importlib.import_module(f"pccd.cli.{name}")
        if name in ("serve", "models"):
            module.register(sub)
        else:
            module.register(sub, verbosity)
    return parser


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted, not the one
    it was made with: ``main()`` may run many times in one process (tests, notebooks, a
    caller that redirects stderr), and a stream closed since must not break later logging."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignored
        pass


def _configure_logging(args: argparse.Namespace) -> None:
    """``pccd`` log records to stderr as plain lines; progress bars unless --quiet."""
    quiet = bool(getattr(args, "quiet", False))
    verbose = bool(getattr(args, "verbose", False))
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = _CurrentStderr()
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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(one_line(exc))
    _configure_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted; finished work is kept, rerun the same command to resume", 130)
    except (UsageError, InputError, IncompleteRun) as exc:
        return _fail(one_line(exc))
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "pccd":
            raise  # our own module missing: a bug, keep the traceback
        message = one_line(exc)
        if "pip install" not in message:
            extra = EXTRAS.get(args.command, "eval,screen")
            message += f'; install the optional dependencies: pip install -e ".[{extra}]"'
        return _fail(message)
