"""The point-cloud family (the paper's row U-Net), as the generator seam sees it.

Its code predates the seam and lives at the top of the package (:mod:`pccd.pipeline`,
:mod:`pccd.training`, :mod:`pccd.representation`); this module is only its entry in
:data:`pccd.generator.FAMILIES`: load a model directory, describe one, export a training
checkpoint into one.
"""

from __future__ import annotations

from pathlib import Path

from pccd.errors import InputError, MissingInputError
from pccd.pipeline import describe, load

__all__ = ["describe", "export", "is_training_output", "load"]


def is_training_output(source: Path) -> bool:
    """A file: what ``pccd train`` of this family writes is a Lightning checkpoint file."""
    return source.is_file()


def export(source: Path, out: Path, *, dtype: str = "float32") -> Path:
    """A Lightning checkpoint file (``last.ckpt``) → a model directory at ``out`` (named
    after it).

    Raises:
        InputError: ``source`` is missing, not a pccd checkpoint, or damaged.
    """
    import pickle

    from pccd.training import export_pretrained  # imports no Lightning (pccd.training is lazy)

    if not source.is_file():
        raise MissingInputError(f"{source}: no such checkpoint file")
    try:
        return export_pretrained(source, out, dtype=dtype)
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise InputError(f"{source}: not a pccd training checkpoint ({exc!r})") from exc
    except RuntimeError as exc:  # torch.load of a damaged file
        reason = " ".join(str(exc).split())
        raise InputError(f"{source}: cannot read the checkpoint ({reason})") from exc
