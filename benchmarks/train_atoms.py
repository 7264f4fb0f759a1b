"""Train (or resume) an atom-family model on the bulk split, with its quality curve.

    python benchmarks/train_atoms.py --out runs/atoms/main --minutes 110 --hidden 128 --layers 4

Writes ``train.json``, ``live.pt`` (every 10 min), ``curve.csv`` and ``quality.csv`` (every
30 min of training: :class:`pccd.families.atoms.probe.QualityProbe` on 200 val crystals) in
``--out``. Run it again on the same directory to continue; settings come from ``train.json``.
With ``--anneal-from RUN``, ``--out`` is a fork of that run whose lr decays (cosine, to 1e-4)
over ``--minutes``: the milestone a model ships from, while RUN can go on at its constant lr.
The padded split arrays are built once (Niggli reduction of 39k cells takes ~3 min) and kept
beside the run as ``train_arrays.npz`` / ``val_arrays.npz``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pccd.data import load
from pccd.families.atoms.batch import AtomArrays
from pccd.families.atoms.counts import AtomCountPrior
from pccd.families.atoms.denoiser import AtomDenoiserConfig
from pccd.families.atoms.diffusion import AtomModelConfig
from pccd.families.atoms.probe import QualityProbe
from pccd.families.atoms.training import OptimConfig, TrainRun, anneal, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp_pccd_bulk"


def split_arrays(split: str, cache: Path, volume_per_atom: float) -> AtomArrays:
    """The split's padded arrays, built once and cached in ``cache``."""
    file = cache / f"{split}_arrays.npz"
    if file.exists():
        return AtomArrays.from_npz(file)
    arrays = AtomArrays.from_table(load(DATA / f"{split}.csv.gz").table, volume_per_atom)
    arrays.to_npz(file)
    return arrays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True, help="training minutes to add")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe-n", type=int, default=200)
    p.add_argument("--anneal-from", type=Path, default=None, help="fork this run and decay")
    p.add_argument("--cache", type=Path, default=Path("runs/atoms"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    denoiser = AtomDenoiserConfig(hidden=args.hidden, layers=args.layers)
    run = TrainRun(
        model=AtomModelConfig(denoiser=denoiser),
        optim=OptimConfig(lr=args.lr, batch_size=args.batch_size),
        threads=args.threads,
    )
    args.cache.mkdir(parents=True, exist_ok=True)
    train_arrays = split_arrays("train", args.cache, denoiser.volume_per_atom)
    val_arrays = split_arrays("val", args.cache, denoiser.volume_per_atom)
    prior = AtomCountPrior.from_arrays(train_arrays.num_atoms, train_arrays.slots)
    probe = QualityProbe(val_arrays, prior, denoiser.volume_per_atom, n=args.probe_n)
    if args.anneal_from is not None:
        anneal(args.anneal_from, args.out, train_arrays, minutes=args.minutes, probe=probe)
        return
    resume = (args.out / "train.json").exists()
    train(args.out, train_arrays, None if resume else run, minutes=args.minutes, probe=probe)


if __name__ == "__main__":
    main()
