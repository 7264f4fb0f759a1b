"""Experiments: drivers that run a model end to end and score what it made.

Each loads nothing itself: it takes a loaded generator and writes a resumable output directory
(CSVs flushed row by row, ``run.json``, ``metrics.json``, ``report.md``, figures).

* :mod:`~pccd.experiments.csp` — the crystal-structure-prediction benchmark of DiffCSP;
* :mod:`~pccd.experiments.reconstruction` — the paper's reconstruction experiment (noise a
  split's crystals to step t, denoise, compare);
* :mod:`~pccd.experiments.discovery` — the paper's three discovery batches (draw element lists,
  generate, screen).

This floor sits above run directories (:mod:`pccd.runs`), generation (:mod:`pccd.pipeline`,
:mod:`pccd.families`, :mod:`pccd.training`) and the analyses they use (:mod:`pccd.evaluate`,
:mod:`pccd.screen`); only the web page and the command line are above it (the
``[tool.importlinter]`` contract in ``pyproject.toml``).
"""
