"""Where the implausible geometry comes from: reference figures and three diagnostics.

Usage:
    python benchmarks/geometry_diagnostics.py [--model pccd-cpu] [--n 200] [--threads 1]

Writes ``benchmarks/results/geometry_diagnostics.json`` with, all by
:func:`pccd.evaluate.geometry.geometry_summary` (plausible = smallest covalent ratio ≥ 0.7):

* ``mp_val``: 1,000 Materials Project val crystals (what real crystals score);
* ``generated``: the model's samples for ``n`` val element lists (DDIM 20, seed 3);
* ``random_positions``: the same samples with every fractional coordinate replaced by a
  uniform draw (same lattices and compositions) — how a model that placed atoms at random
  would score;
* ``reconstruction``: val crystals noised to step t and denoised by the model (elements only);
* ``block_average``: the same noised arrays with no network at all — each atom at the circular
  mean of its own noisy rows (true blocks, true lattice): what averaging alone recovers, so the
  gap to ``reconstruction`` is what the network adds at that noise level.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from pccd import data
from pccd import representation as rep
from pccd.conditioning import Conditions
from pccd.diffusion import reconstruct
from pccd.evaluate.geometry import geometry_summary
from pccd.generator import Request
from pccd.pipeline import PCCDPipeline

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "mp_pccd" / "val.csv.gz"
STEPS_T = (25, 50, 100, 200, 300, 500, 700)


def _structures(arrays, element_lists, config, counts=None) -> list[Structure | None]:
    out = []
    for k, (x, els) in enumerate(zip(arrays, element_lists, strict=True)):
        s = rep.decode(x, els, config, counts=None if counts is None else counts[k])
        out.append(s if isinstance(s, Structure) else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/geometry_diagnostics.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    table = data.load(VAL).table
    pipe = PCCDPipeline.from_pretrained(args.model)
    rng = np.random.default_rng(0)
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "settings": vars(args)}

    idx = rng.choice(len(table), 1000, replace=False)
    result["mp_val"] = geometry_summary([table.structure(int(i)) for i in idx]).to_dict()

    requests = [Request.parse(els) for els in table.draw_element_lists(args.n, 3)]
    generated = [s.structure for s in pipe.generate(requests, seed=3)]
    result["generated"] = geometry_summary(generated).to_dict()
    randomised = [
        None if s is None else Structure(s.lattice, s.species, rng.random((len(s), 3)))
        for s in generated
    ]
    result["random_positions"] = geometry_summary(randomised).to_dict()

    sub = [table.structure(int(i)) for i in idx[: args.n // 2]]
    x0 = torch.tensor(np.stack([rep.encode(s, pipe.rep_config)[0] for s in sub]))
    elements = [rep.slot_elements(s) for s in sub]
    counts = [[int(s.composition[e]) for e in els] for s, els in zip(sub, elements, strict=True)]
    cond = Conditions.from_lists([[e.Z for e in els] for els in elements])
    result["reconstruction"], result["block_average"] = {}, {}
    for t in STEPS_T:
        gen = torch.Generator().manual_seed(t)
        x_hat = reconstruct(pipe.model, pipe.make_scheduler("ddim", 20), x0, cond, t, generator=gen)
        result["reconstruction"][t] = geometry_summary(
            _structures(x_hat.numpy(), elements, pipe.rep_config)
        ).to_dict()
        scheduler = pipe.make_scheduler("ddim", 20)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        abar = float(scheduler.alphas_cumprod[t])
        averaged = (scheduler.add_noise(x0, noise, t) / abar**0.5).numpy()
        averaged[:, 1:] = x0[:, 1:].numpy()  # true element rows and lattice: positions only
        result["block_average"][t] = geometry_summary(
            _structures(averaged, elements, pipe.rep_config, counts)
        ).to_dict()
        result["block_average"][t]["noise_std_frac"] = 0.5 * ((1 - abar) / abar) ** 0.5
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
