"""The point-cloud family (the paper's row U-Net), as the generator seam sees it.

Its code predates the seam and lives at the top of the package (:mod:`pccd.pipeline`,
:mod:`pccd.training`, :mod:`pccd.representation`); this module is only its entry in
:data:`pccd.generator.FAMILIES`: load a model directory, describe one, export a training
checkpoint into one.
"""

from __future__ import annotations

from pathlib import Path

from pccd.pipeline import describe, load

__all__ = ["describe", "export", "load"]


def export(source: Path, out: Path, *, dtype: str = "float32") -> Path:
    """A Lightning checkpoint file (``last.ckpt``) → a model directory at ``out`` (named
    after it)."""
    from pccd.training import export_pretrained  # Lightning: loaded only when exporting

    return export_pretrained(source, out, dtype=dtype)
