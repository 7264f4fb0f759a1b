"""Progress bars for long jobs, off unless the command line turns them on.

The library never prints: it reports progress through :func:`bar` (a ``tqdm`` bar with rate
and ETA on stderr) and messages through :mod:`logging`. Bars are disabled by default, so using
pccd from Python stays silent; ``pccd`` enables them unless ``--quiet`` is given.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

_ENABLED = False


def enable(flag: bool = True) -> None:
    """Show progress bars (the CLI calls this unless ``--quiet``)."""
    global _ENABLED
    _ENABLED = bool(flag)


def enabled() -> bool:
    return _ENABLED


def bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0) -> tqdm:
    """A progress bar over ``total`` items (rate and ETA), a no-op unless enabled."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not _ENABLED,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
        delay=0.5,  # a job that fails at once (e.g. on its run.json) shows no bar
    )
