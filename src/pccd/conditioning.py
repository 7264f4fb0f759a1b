"""Conditioning constants (placeholder until the conditioning module lands)."""

MAGNETIC_ORDERINGS = ("NM", "FM", "AFM", "FiM")
MAX_SLOTS = 3
MAX_ATOMS = 16
