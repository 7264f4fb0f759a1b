"""When along the reverse chain are the atoms' positions settled, and how plausible are they then?

Usage:
    python benchmarks/position_settling.py [--model pccd-cpu] [--n 100] [--steps 20] [--threads 2]

For ``n`` val element lists (seed 3, as the A/B protocol draws them) the DDIM chain of the model
is run once and its clean-array estimate x̂_0 is kept at every step. The final sample's rows are
grouped into atoms as the decoder groups them (:func:`pccd.representation.atom_labels`); at each
step those same row groups of x̂_0 give atom positions, and the row reports, over the samples
that decode to ≥ 2 atoms:

* the median RMS distance (Å, periodic, in the final lattice) from those positions to the
  final ones: how far the chain still moves the atoms after step t;
* the median smallest covalent ratio of the positions (the issue-11 geometry test) and the
  share ≥ 0.7: whether the atoms' arrangement still improves after step t.

Why: every atom is repeated over ~128/N rows, so the network sees each atom at ~N/128 of the
row noise. If positions settle early in the chain, most sampling steps (and most training
steps, drawn uniformly in t) only average rows that are already decided, and the network never
learns to repair an arrangement (issue 11; :func:`pccd.diffusion.shift_snr`). Writes
``benchmarks/results/position_settling_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import val_table
from pymatgen.core import Lattice, Structure

from pccd import representation as rep
from pccd.conditioning import Conditions
from pccd.evaluate.geometry import PLAUSIBLE_RATIO, covalent_ratio
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline

ROOT = Path(__file__).resolve().parents[1]


def chain_estimates(
    pipe: PCCDPipeline, requests: list[Request], steps: int, seed: int
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The DDIM chain's timesteps, x̂_0 at each of them (steps, B, 3, 128, 3) and the sample."""
    scheduler = pipe.make_scheduler("ddim", steps)
    cond = Conditions.cat([r.conditions(1) for r in requests])
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn((len(requests), *rep.ARRAY_SHAPE), generator=gen)
    estimates: list[np.ndarray] = []
    final = pipe.denoise(
        scheduler, cond, x_T=x_T, generator=gen, observe=lambda x0, t: estimates.append(x0.numpy())
    )
    return scheduler.timesteps.tolist(), np.stack(estimates), final.numpy()


def settling(
    estimates: np.ndarray, final: np.ndarray, elements: list[list[int]], cfg
) -> np.ndarray:
    """(samples, steps, 2): RMS distance to the final atoms (Å) and covalent ratio per step."""
    rows = []
    for i, els in enumerate(elements):
        slots = rep.as_elements(els)
        lengths, angles = rep.decode_lattice(final[i], cfg)
        lattice = Lattice.from_parameters(*lengths, *angles)
        frac = ((final[i, 0] + 1.0) / 2.0) % 1.0
        scores = final[i, 1, :, : len(slots)]
        labels = rep.atom_labels(frac, scores, lattice, cfg)
        n = int(labels.max()) + 1
        if n < 2:
            continue
        votes = np.argmax(scores, axis=1)
        species = [slots[int(np.bincount(votes[labels == k]).argmax())] for k in range(n)]
        final_pos = np.array([rep.circular_mean(frac[labels == k]) for k in range(n)])
        per_step = []
        for x0 in estimates[:, i]:
            f0 = ((x0[0] + 1.0) / 2.0) % 1.0
            pos = np.array([rep.circular_mean(f0[labels == k]) for k in range(n)])
            moved = np.sqrt(np.mean(np.diag(lattice.get_all_distances(pos, final_pos)) ** 2))
            # early estimates can put atoms on one point, which covalent_ratio (made for
            # decoded crystals, whose atoms the decoder keeps ≥ 0.5 Å apart) skips as self-images
            apart = lattice.get_all_distances(pos, pos)[np.triu_indices(n, 1)].min() > 1e-6
            ratio = covalent_ratio(Structure(lattice, species, pos)) if apart else 0.0
            per_step.append((moved, ratio))
        rows.append(per_step)
    return np.array(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pccd-cpu", help="shipped name or model directory")
    ap.add_argument("--name", help="result name (default: the model's directory name)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = PCCDPipeline.from_pretrained(args.model, device="cpu")
    elements = val_table().draw_element_lists(args.n, args.seed)
    requests = [Request.parse(els) for els in elements]
    timesteps, estimates, final = chain_estimates(pipe, requests, args.steps, args.seed)
    table = settling(estimates, final, elements, pipe.rep_config)
    name = args.name or Path(args.model).name
    result = {
        "model": name,
        "diffusion": pipe.diffusion,
        "n": args.n,
        "samples_with_two_atoms": len(table),
        "ddim_steps": args.steps,
        "seed": args.seed,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": [
            {
                "t": t,
                "median_rms_to_final_angstrom": round(float(np.median(table[:, j, 0])), 3),
                "median_covalent_ratio": round(float(np.median(table[:, j, 1])), 3),
                "plausible_share": round(float(np.mean(table[:, j, 1] >= PLAUSIBLE_RATIO)), 3),
            }
            for j, t in enumerate(timesteps)
        ],
    }
    out = ROOT / "benchmarks" / "results" / f"position_settling_{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for row in result["rows"]:
        print(
            f"t={row['t']:4d}  moved after t {row['median_rms_to_final_angstrom']:.2f} Å  "
            f"ratio {row['median_covalent_ratio']:.2f}  plausible {row['plausible_share']:.2f}"
        )


if __name__ == "__main__":
    main()
