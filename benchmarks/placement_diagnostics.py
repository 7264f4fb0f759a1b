"""Does the network place atoms better than chance once lattice and elements are known?

Usage:
    python benchmarks/placement_diagnostics.py [--model pccd-cpu] [--n 200] [--threads 2]

CSP on ``n`` val crystals (seed 0 choice, sampling seed 3, DDIM 20), four ways: the plain
model, and the model with the *true* lattice rows (channel 2), the true element rows
(channel 1) or both imposed on its clean-array estimate x̂_0 at every step (the noise estimate
is made consistent, as the sampling-time repulsion does). If the failures came from a lattice
or element assignment the positions were not made for, imposing the truth would lift the
plausible share; if it does not, the coordinate denoiser itself is what fails.

Beside them, the per-atom nearest-neighbour covalent ratio (periodic, 27 images) of the true
crystals, of the plain model's candidates, and of the same cells and species with uniformly
random positions: a network that learned the bonding distance would pile its atoms near 1.0
like the truth, not spread them like the random control. The same ratio split by the kind of
neighbour (the nearest atom of the same element, of another element) tells whether each
element's own sublattice is learned and only their relative offset is not; the control for
that is the true crystals with every element's sublattice shifted by its own random vector.
Writes ``benchmarks/results/placement_diagnostics_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import pair_ratios, val_table
from pymatgen.core import Structure

from pccd import representation as rep
from pccd.conditioning import Conditions
from pccd.evaluate.geometry import PLAUSIBLE_RATIO, covalent_ratio
from pccd.evaluate.matching import cell_formula
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline
from pccd.training import CrystalDataset, collate

ROOT = Path(__file__).resolve().parents[1]
IMPOSED = {"none": [], "lattice": [2], "elements": [1], "lattice+elements": [1, 2]}
HIST_BINS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, np.inf]


def nearest_ratios(structures: list[Structure]) -> dict[str, np.ndarray]:
    """Each atom's smallest d / (r_i + r_j) to any other atom or periodic image ("any"), to an
    atom of its own element and to one of another element, from one pair-ratio tensor per
    crystal (crystals of one element contribute no "other_element" value, a lone atom of its
    element no "same_element" value)."""
    found: dict[str, list[np.ndarray]] = {"any": [], "same_element": [], "other_element": []}
    for s in structures:
        ratios = pair_ratios(s).min(axis=2)  # (n, n): nearest image of every atom pair
        z = np.array([site.specie.Z for site in s])
        alike = z[:, None] == z[None, :]
        found["any"].append(ratios.min(axis=1))
        for kind, mask in (("same_element", alike), ("other_element", ~alike)):
            nearest = np.where(mask, ratios, np.inf).min(axis=1)
            found[kind].append(nearest[np.isfinite(nearest)])
    return {kind: np.concatenate(values) for kind, values in found.items()}


def shift_sublattices(s: Structure, rng: np.random.Generator) -> Structure:
    """``s`` with every element's atoms moved together by one random fractional vector."""
    frac = s.frac_coords.copy()
    for element in s.composition.elements:
        frac[[site.specie == element for site in s]] += rng.random(3)
    return Structure(s.lattice, s.species, frac % 1.0)


def histogram(ratios: np.ndarray) -> dict:
    counts = np.histogram(ratios, HIST_BINS)[0]
    return {
        "atoms": len(ratios),
        "median": float(np.median(ratios)),
        "below_plausible": float(np.mean(ratios < PLAUSIBLE_RATIO)),
        "share_per_bin": [round(float(c) / len(ratios), 4) for c in counts],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pccd-cpu")
    ap.add_argument("--name", help="results file suffix (default: the model's name)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = PCCDPipeline.from_pretrained(args.model, device="cpu")
    table = val_table()
    idx = np.sort(np.random.default_rng(0).choice(len(table), args.n, replace=False))
    sub = table.subset(idx)
    truth = [sub.structure(i) for i in range(args.n)]
    x_true, _ = collate(
        [CrystalDataset(sub, pipe.rep_config, augment=False)[i] for i in range(args.n)]
    )
    requests = [Request.parse(None, formula=cell_formula(s)) for s in truth]
    cond = Conditions.cat([r.conditions(1) for r in requests])

    rows, candidates = {}, []
    for name, channels in IMPOSED.items():

        def impose(x0: torch.Tensor, t: int, channels=channels) -> torch.Tensor:
            x0 = x0.clone()
            x0[:, channels] = x_true[:, channels].to(x0.dtype)
            return x0

        gen = torch.Generator().manual_seed(3)
        x_T = torch.randn((args.n, *rep.ARRAY_SHAPE), generator=gen)
        arrays = pipe.denoise(
            pipe.make_scheduler("ddim", 20), cond, x_T=x_T, generator=gen,
            x0_correction=impose if channels else None,
        ).numpy()  # fmt: skip
        decoded = [
            rep.decode(a, list(r.elements), pipe.rep_config, counts=r.formula)
            for a, r in zip(arrays, requests, strict=True)
        ]
        ratios = [covalent_ratio(s) if isinstance(s, Structure) else 0.0 for s in decoded]
        rows[name] = {
            "n": args.n,
            "failed_decodes": sum(not isinstance(s, Structure) for s in decoded),
            "plausible_share": float(np.mean(np.asarray(ratios) >= PLAUSIBLE_RATIO)),
            "median_ratio": float(np.median(ratios)),
        }
        print(f"imposed {name:17s} plausible {rows[name]['plausible_share']:.1%}  "
              f"median ratio {rows[name]['median_ratio']:.2f}", flush=True)  # fmt: skip
        if not channels:
            candidates = [s for s in decoded if isinstance(s, Structure)]

    rng = np.random.default_rng(3)
    shuffled = [Structure(s.lattice, s.species, rng.random((len(s), 3))) for s in candidates]
    groups = {
        "truth": truth,
        "model": candidates,
        "random_positions": shuffled,
        "truth_sublattices_shifted": [shift_sublattices(s, rng) for s in truth],
    }
    nearest = {name: nearest_ratios(group) for name, group in groups.items()}
    # the overall histogram keeps its three groups of earlier results files
    neighbours = {
        name: histogram(nearest[name]["any"]) for name in ("truth", "model", "random_positions")
    }
    for name, h in neighbours.items():
        print(f"nearest neighbour, {name:16s} median {h['median']:.2f}  {h['share_per_bin']}")
    kinds = {
        name: {kind: histogram(r[kind]) for kind in ("same_element", "other_element")}
        for name, r in nearest.items()
    }
    for name, by_kind in kinds.items():
        print(f"{name:26s} " + "  ".join(
            f"{k} median {h['median']:.2f} (< 0.7: {h['below_plausible']:.1%})"
            for k, h in by_kind.items()
        ))  # fmt: skip
    name = args.name or Path(args.model).name
    out = ROOT / "benchmarks" / "results" / f"placement_diagnostics_{name}.json"
    result = {
        "model": args.model,
        "imposed_on_x0": rows,
        "nearest_neighbour_ratio": {"bins": [str(b) for b in HIST_BINS], **neighbours},
        "nearest_by_neighbour_element": kinds,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
