"""Shared fixtures: small hand-built crystals and a temporary cache directory."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import settings
from pymatgen.core import Lattice, Structure

from pccd import representation as rep
from pccd.model import PCCDUNet

# Property-based tests: bounded so they stay a small part of the suite. "ci"
# (HYPOTHESIS_PROFILE=ci) draws the same examples every run and keeps no example database, so a
# red CI run is reproducible; "dev" (the default) draws new ones each run and remembers failures in
# .hypothesis/. Shrunk failures become explicit @example regressions in the tests.
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test writes parsed-data caches to its own directory, never to ~/.cache."""
    monkeypatch.setenv("PCCD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny model saved like a shipped one (no training needed)."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-model")
    PCCDUNet.from_preset("tiny").save_pretrained(directory)
    meta = {
        "name": "tiny-test",
        "representation": rep.RepresentationConfig().to_dict(),
        "diffusion": {"num_train_timesteps": 1000, "schedule": "cosine"},
    }
    (directory / "pccd.json").write_text(json.dumps(meta))
    return directory


def nacl() -> Structure:
    """Rock-salt NaCl, conventional cell (8 atoms, binary)."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def silicon() -> Structure:
    """Diamond Si, primitive fcc cell (2 atoms, unary)."""
    return Structure(
        Lattice.from_parameters(3.867, 3.867, 3.867, 60, 60, 60),
        ["Si", "Si"],
        [[0, 0, 0], [0.25, 0.25, 0.25]],
    )


def wurtzite() -> Structure:
    """Hexagonal ZnO (γ = 120°)."""
    return Structure.from_spacegroup(
        "P6_3mc",
        Lattice.hexagonal(3.25, 5.21),
        ["Zn", "O"],
        [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]],
    )


def triclinic16(seed: int = 0) -> Structure:
    """A 16-atom ternary triclinic cell with random but well-separated positions."""
    rng = np.random.default_rng(seed)
    lattice = Lattice.from_parameters(6.1, 7.3, 8.2, 81.0, 97.0, 104.0)
    coords: list[np.ndarray] = []
    while len(coords) < 16:
        c = rng.random(3)
        s = Structure(lattice, ["H"] * (len(coords) + 1), [*coords, c])
        if len(coords) == 0 or s.distance_matrix[-1, :-1].min() > 1.6:
            coords.append(c)
    species = ["Li"] * 4 + ["Fe"] * 4 + ["O"] * 8
    return Structure(lattice, species, coords)


def boundary() -> Structure:
    """Atoms sitting on the 0/1 cell boundary (a point cloud that straddles the wrap)."""
    return Structure(
        Lattice.tetragonal(4.0, 6.0),
        ["Mg", "O", "O"],
        [[0.999, 0.0005, 0.9995], [0.5, 0.5, 0.0], [0.5, 0.5, 0.5]],
    )


def long_cell() -> Structure:
    """A layered cell with c = 24 Å (> 15 Å: the paper's lattice scheme cannot hold it)."""
    return Structure(
        Lattice.hexagonal(3.2, 24.0),
        ["Mo", "S", "S", "Mo", "S", "S"],
        [
            [1 / 3, 2 / 3, 0.25],
            [2 / 3, 1 / 3, 0.19],
            [2 / 3, 1 / 3, 0.31],
            [2 / 3, 1 / 3, 0.75],
            [1 / 3, 2 / 3, 0.69],
            [1 / 3, 2 / 3, 0.81],
        ],
    )


def unary_fe() -> Structure:
    """bcc Fe, one atom in the primitive cell."""
    return Structure(
        Lattice.from_parameters(2.48, 2.48, 2.48, 109.47, 109.47, 109.47), ["Fe"], [[0, 0, 0]]
    )


KNOWN = {
    "nacl": nacl,
    "si": silicon,
    "hexagonal": wurtzite,
    "triclinic16": triclinic16,
    "boundary": boundary,
    "long_cell": long_cell,
    "unary": unary_fe,
}
