"""The quality curve's probe: raw geometry and CSP match rate on a fixed set of val crystals.

Run by :func:`pccd.families.atoms.training.train` every ``probe_minutes`` on the EMA weights,
so the curve shows what more training buys in the figures the project is judged by, not only
in the loss: the plausible share (smallest d/(r_i + r_j) ≥ 0.7), the share with symmetry above
P1 (spglib, 0.1 Å), the CSP match rate of one candidate per formula (DiffCSP's protocol,
``StructureMatcher.get_rms_dist``) with the strict ``fit`` rate and the RMS of matches, and the
same geometry for de novo cells drawn from the same crystals' element lists. Every sample is in
every denominator; a cell that is not a structure counts as implausible and unmatched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from pccd.evaluate.geometry import geometry_summary
from pccd.evaluate.matching import MATCHER_TOLERANCES, match_candidate
from pccd.families.atoms.batch import AtomArrays
from pccd.families.atoms.counts import AtomCountPrior
from pccd.families.atoms.diffusion import AtomDiffusion
from pccd.families.atoms.sampling import SampleSpec, sample
from pccd.families.atoms.structures import to_structures


def geometry_shares(structures) -> dict[str, float]:
    """Plausible and symmetric shares over all items (non-structures count as failures)."""
    summary = geometry_summary([s if isinstance(s, Structure) else None for s in structures])
    return {
        "plausible": summary.plausible_share,
        "median_ratio": summary.median_ratio,
        "symmetric": summary.above_p1_share,
    }


@dataclass
class QualityProbe:
    """Callable probe over ``n`` val crystals (fixed by ``seed``)."""

    val: AtomArrays
    prior: AtomCountPrior
    volume_per_atom: float
    n: int = 200
    seed: int = 0
    samplers: tuple[tuple[str, int | None], ...] = (("pc", 200),)
    chunk: int = 50
    denovo_sampler: tuple[str, int] = ("pc", 200)

    def __post_init__(self) -> None:
        index = np.random.default_rng(self.seed).choice(len(self.val), self.n, replace=False)
        # sorted by size so each sampling chunk pads little (the pair cost grows with N²)
        self.index = index[np.argsort(self.val.num_atoms[index], kind="stable")]
        self.truth = to_structures(self.val.batch(self.index), self.volume_per_atom)
        self.matcher = StructureMatcher(**MATCHER_TOLERANCES)

    def __call__(self, model: AtomDiffusion) -> dict[str, float]:
        true = self.val.batch(self.index)
        n_atoms = true.mask.sum(1)
        out: dict[str, float] = {}
        for name, steps in self.samplers:
            gen = torch.Generator().manual_seed(self.seed)
            tick = time.monotonic()
            spec = SampleSpec(true.slots, n_atoms, true.types)
            structures = self._sample(model, spec, name, steps, gen)
            seconds = time.monotonic() - tick
            figures = {**geometry_shares(structures), **self._match(structures)}
            out.update({f"csp_{name}_{k}": round(v, 4) for k, v in figures.items()})
            out[f"csp_{name}_seconds"] = round(seconds, 1)
        gen = torch.Generator().manual_seed(self.seed + 1)
        counts = self.prior.draw((true.slots > 0).sum(1), gen)
        name, steps = self.denovo_sampler
        structures = self._sample(model, SampleSpec(true.slots, counts), name, steps, gen)
        for k, v in geometry_shares(structures).items():
            out[f"denovo_{name}_{k}"] = round(v, 4)
        return out

    def _sample(self, model, spec: SampleSpec, sampler: str, steps, gen) -> list:
        out = []
        for lo in range(0, self.n, self.chunk):
            part = slice(lo, lo + self.chunk)
            sub = SampleSpec(
                spec.slots[part], spec.num_atoms[part],
                None if spec.types is None else spec.types[part],
            )  # fmt: skip
            made = sample(model, sub, sampler=sampler, steps=steps, generator=gen)
            out.extend(to_structures(made, self.volume_per_atom))
        return out

    def _match(self, structures) -> dict[str, float]:
        rms, strict = [], 0
        for pred, true in zip(structures, self.truth, strict=True):
            got = match_candidate(pred, true, self.matcher) if isinstance(pred, Structure) else None
            if got is not None:
                rms.append(got)
                strict += bool(self.matcher.fit(pred, true))
        return {
            "match": len(rms) / self.n,
            "strict": strict / self.n,
            "rms": float(np.mean(rms)) if rms else float("nan"),
        }
