"""The atom family's entry in :data:`pccd.generator.FAMILIES`: load, describe, export."""

from __future__ import annotations

from pathlib import Path

from pccd.errors import InputError
from pccd.families.atoms.export import export_pretrained
from pccd.families.atoms.pipeline import describe, load

__all__ = ["describe", "export", "is_training_output", "load"]


def is_training_output(source: Path) -> bool:
    """A directory with ``train.json``: what :func:`~pccd.families.atoms.training.train`
    writes."""
    return (source / "train.json").is_file()


def export(source: Path, out: Path, *, name: str | None = None, hardware: str = "") -> Path:
    """A training directory (``train.json`` + ``live.pt``) → a model directory at ``out``."""
    if not (source / "train.json").is_file():
        raise InputError(f"{source}: not an atom-model training directory (no train.json)")
    return export_pretrained(source, out, name=name or out.name, hardware=hardware)
