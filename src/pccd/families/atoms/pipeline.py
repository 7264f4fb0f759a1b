"""The atom family's generator: requests → atom-level diffusion → ``Structure`` samples.

:class:`AtomsPipeline` implements :class:`pccd.generator.Generator`, so ``pccd generate``,
``pccd csp``, ``pccd batch``, run directories and the web page use it as they use the
point-cloud pipeline. A request with a formula is crystal-structure prediction (the atoms and
their elements are fixed; positions and lattice are drawn); a request with only elements is de
novo: the atom count is drawn from the training split's p(N | number of elements)
(:class:`~pccd.families.atoms.counts.AtomCountPrior`) and each atom's element by the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from pccd.conditioning import MAX_SLOTS, STABILITY_LABELS
from pccd.diffusion import check_precision, native_bfloat16, network_precision
from pccd.errors import InputError
from pccd.families.atoms.counts import AtomCountPrior
from pccd.families.atoms.diffusion import AtomDiffusion, AtomModelConfig
from pccd.families.atoms.sampling import DEFAULT_STEPS, GUIDABLE, SAMPLERS, SampleSpec, sample
from pccd.families.atoms.structures import to_structures
from pccd.generator import GeneratorBase, ModelInfo, Request, Sample

CONDITIONS = ("elements", "formula", "band_gap", "stability")
"""Every condition the atom network has an input for (no magnetic ordering: no labels)."""
SUB_BATCH = 128
"""Most cells per network call. The denoiser pays only for real pairs (it computes packed), so
cells of any size share a call and a run batch of 100 is one chain; the cap bounds memory
(≤ 128 · 16² pairs) when a caller asks for large batches."""


PREFERRED_PRECISION = "bfloat16"
"""What an atom model samples in when not asked, where the hardware has bfloat16 arithmetic
(:func:`~pccd.diffusion.native_bfloat16`; float32 elsewhere). Matrix products under bfloat16
autocast, sums and the sampler's arithmetic in float32: on the shipped ``pccd-atoms``
(2026-12-07, 300 + 300 bulk-val requests, seeds 0 and 1, pc:100; benchmarks/results/
atoms_precision.jsonl) de novo plausible / above P1 and CSP match are 88.8 / 50.3 / 20.2% in
bfloat16 against 89.5 / 52.7 / 19.8% in float32, the same within sampling error (±1.3–2.9
points), and the network runs about 2× faster on an AMX CPU."""


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class AtomsPipeline(GeneratorBase):
    """An atom-level model, its count prior and its sampling precision."""

    family = "atoms"
    samplers = SAMPLERS

    def __init__(
        self,
        model: AtomDiffusion,
        prior: AtomCountPrior,
        meta: dict | None = None,
        device: torch.device | str | None = None,
        precision: str = "float32",
    ) -> None:
        self.precision = check_precision(precision)
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.prior = prior
        self.meta = meta or {}

    @property
    def num_train_timesteps(self) -> int:
        return self.model.timesteps

    @property
    def trained_conditions(self) -> tuple[str, ...]:
        """``pccd.json``'s trained conditions among those the network has inputs for."""
        return tuple(c for c in self.meta.get("trained_conditions", CONDITIONS) if c in CONDITIONS)

    def check_request(self, request: Request) -> None:
        asked = {
            "band gap": ("band_gap", request.band_gap is not None),
            "magnetic ordering": ("magnetic", request.magnetic is not None),
            "stability": ("stability", request.stability is not None),
        }
        for label, (name, used) in asked.items():
            if used and name not in self.trained_conditions:
                why = (
                    "its training data had no labels for it"
                    if name in CONDITIONS
                    else "its network has no input for it"
                )
                raise InputError(
                    f"model {self.meta.get('name', '?')} was not trained on {label} ({why}), "
                    "so it cannot be conditioned on it; trained conditions: "
                    f"{', '.join(self.trained_conditions)}"
                )

    def check_options(
        self,
        sampler: str | None = None,
        steps: int | None = None,
        repulsion: float | None = None,
        guide: Sequence[str] | None = None,
        **_: object,
    ) -> None:
        """Refuse sampling options this model does not take (raises ``ValueError``)."""
        if sampler is not None and sampler not in SAMPLERS:
            raise InputError(
                f"sampler must be one of {', '.join(SAMPLERS)} for atom models, not {sampler!r}"
            )
        total = self.num_train_timesteps
        if steps is not None and not 1 <= steps <= total:
            raise InputError(
                f"--steps {steps}: num_inference_steps must be 1–{total}, the timesteps "
                "this model was trained with"
            )
        if repulsion is not None:
            raise InputError(
                "repulsion is an option of point-cloud models; an atom model places its "
                "atoms itself (use --valid-only to keep only plausible crystals)"
            )
        if guide is not None:
            unknown = set(guide) - (set(self.trained_conditions) & set(GUIDABLE))
            if unknown or not guide:
                can = [c for c in GUIDABLE if c in self.trained_conditions]
                raise InputError(
                    f"guide: {', '.join(sorted(unknown)) or 'nothing'} is not a condition this "
                    f"model can guide ({', '.join(can) or 'none'})"
                )

    def default_steps(self, sampler: str) -> int:
        """The sampler's own steps (pc 100; see :data:`~pccd.families.atoms.sampling.SAMPLERS`)."""
        return DEFAULT_STEPS[sampler]

    def iter_generate(
        self,
        requests: Request | Sequence[Request],
        n: int | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 100,
        start: int = 0,
        progress: bool = False,
        repulsion: float | None = None,
        guide: Sequence[str] | None = None,
    ) -> Iterator[list[Sample]]:
        """Yield samples batch by batch (see :meth:`pccd.generator.Generator.iter_generate`)."""
        del progress  # a run shows progress per batch; the chain itself is short
        requests = self.checked_requests(
            requests, n, batch_size, start,
            sampler=sampler, steps=steps, repulsion=repulsion, guide=guide,
        )  # fmt: skip
        sampler = sampler or SAMPLERS[0]
        steps = self.default_steps(sampler) if steps is None else steps
        volume = self.model.config.denoiser.volume_per_atom
        for lo in range(start, len(requests), batch_size):
            chunk = requests[lo : lo + batch_size]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + lo)
            spec = self._spec(chunk, gen)
            results: list = []
            with network_precision(self.precision, self.device):
                for lo_sub in range(0, len(chunk), SUB_BATCH):
                    part = slice(lo_sub, lo_sub + SUB_BATCH)
                    sub = SampleSpec(
                        spec.slots[part], spec.num_atoms[part],
                        None if spec.types is None else spec.types[part],
                        spec.band_gap[part], spec.stability[part],
                    )  # fmt: skip
                    made = sample(self.model, sub, sampler=sampler, steps=steps,
                                  guidance=guidance_scale, guide=None if guide is None else
                                  tuple(guide), generator=gen, device=self.device)  # fmt: skip
                    results.extend(to_structures(made, volume))
            batch = []
            for k, out in enumerate(results):
                ok = isinstance(out, Structure)
                batch.append(Sample(lo + k, out if ok else None, None if ok else out))
            yield batch

    def _spec(self, chunk: Sequence[Request], gen: torch.Generator) -> SampleSpec:
        """The chunk's requests as tensors; atom counts of de novo requests drawn here."""
        b = len(chunk)
        slots = torch.zeros((b, MAX_SLOTS), dtype=torch.long)
        for i, r in enumerate(chunk):
            slots[i, : len(r.elements)] = torch.tensor([e.Z for e in r.elements])
        drawn = self.prior.draw((slots > 0).sum(1), gen)
        counts = [sum(r.formula) if r.formula else int(drawn[i]) for i, r in enumerate(chunk)]
        num_atoms = torch.tensor(counts)
        # known types for CSP requests; de novo rows stay at the mask token (0)
        types = torch.zeros((b, int(num_atoms.max())), dtype=torch.long)
        for i, r in enumerate(chunk):
            if r.formula:
                zs = np.repeat([e.Z for e in r.elements], r.formula)
                types[i, : len(zs)] = torch.from_numpy(zs)
        gap = torch.tensor([np.nan if r.band_gap is None else r.band_gap for r in chunk])
        stability = torch.tensor(
            [-1 if r.stability is None else STABILITY_LABELS.index(r.stability) for r in chunk]
        )
        return SampleSpec(slots, num_atoms, types, gap.float(), stability)


def load(
    directory: Path, meta: dict, device: torch.device | str | None, precision: str | None
) -> AtomsPipeline:
    """The atom family's loader (see :data:`pccd.generator.FAMILIES`); ``precision=None`` is
    :data:`PREFERRED_PRECISION` where the device computes it natively, else float32."""
    device = torch.device(device) if device is not None else _default_device()
    if precision is None:
        precision = PREFERRED_PRECISION if native_bfloat16(device) else "float32"
    check_precision(precision)  # before the weights are read
    config = AtomModelConfig.from_dict(json.loads((directory / "config.json").read_text()))
    model = AtomDiffusion(config)
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    prior = AtomCountPrior(np.asarray(meta["atom_counts"]))
    return AtomsPipeline(model, prior, meta, device, precision)


def describe(directory: Path, meta: dict) -> ModelInfo:
    """The atom family's :class:`~pccd.generator.ModelInfo` (no weights loaded)."""
    config = AtomModelConfig.from_dict(json.loads((directory / "config.json").read_text()))
    trained = meta.get("trained_conditions", CONDITIONS)
    return ModelInfo(
        directory=directory.resolve(),
        name=str(meta.get("name", "")),
        family="atoms",
        trained_conditions=tuple(c for c in trained if c in CONDITIONS),
        samplers=SAMPLERS,
        timesteps=config.diffusion.timesteps,
    )
