"""The relaxation engines and their defaults, in a module that imports nothing.

Why a module of its own: the command-line parser offers these choices for every command, and
importing them from :mod:`pccd.screen.batched` pulled in ASE and pymatgen's ASE adaptor (about
a second) for a ``pccd generate`` that relaxes nothing.
"""

#: engines of the relaxation: per-crystal ASE FIRE (``relax``) or the lockstep batch of
#: :mod:`pccd.screen.batched`
RELAX_ENGINES = ("ase", "batched")
#: the default since 2026-12-02: 4.15x the crystals per minute of "ase" on the same 40 crystals,
#: same energies and failure classes (BENCHMARKS.md, batched relaxation A/B)
DEFAULT_RELAX_ENGINE = "batched"
#: crystals relaxed together by the batched engine
DEFAULT_BATCH_SIZE = 16
