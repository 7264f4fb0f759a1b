"""The generation pipeline: a pretrained denoiser + a scheduler + the decoder → ``Structure``.

``PCCDPipeline.from_pretrained()`` loads the model shipped inside the package (or any directory
written by :func:`pccd.training.export_pretrained`) and ``generate`` runs the one denoising loop
(:func:`pccd.diffusion.denoise`) then decodes every array. Requests are validated before any
network work so a bad element list fails in milliseconds. Writing runs to disk (CIFs and
``summary.csv``) is :mod:`pccd.runs`, one layer up.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from pccd import representation as rep
from pccd.conditioning import CONDITION_NAMES, MAX_ATOMS, Conditions
from pccd.diffusion import (
    DEFAULT_PRECISION,
    DDIMScheduler,
    DDPMScheduler,
    NoiseScheduler,
    check_precision,
    denoise,
    network_precision,
)
from pccd.errors import InputError
from pccd.generator import (
    GeneratorBase,
    ModelInfo,
    Request,
    Sample,
    learned_conditions,
    model_directory,
    read_meta,
)
from pccd.model import PCCDUNet
from pccd.repulsion import repel

SAMPLERS = ("ddim", "ddpm")
# DDIM default step count. Fewer deterministic steps leave more atom blocks distinct: on 600
# train-split element lists the atom-count Wasserstein distance is 0.46 at 20 steps vs 0.94 at
# 50, with the same validity (benchmarks/results/decoder_variants_train_ddim20.json and
# ..._ddim50.json, default decoder), and it is 2.5× faster.
DEFAULT_DDIM_STEPS = 20


def default_device() -> torch.device:
    """CUDA when present, else CPU: the package is designed for a laptop CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class PCCDPipeline(GeneratorBase):
    """Model + representation settings + sampler: ``pipeline.sample(...) -> list[Structure]``.

    ``precision`` is how the network computes while sampling, one of
    :data:`~pccd.diffusion.PRECISIONS`: ``"float32"`` (default) or ``"bfloat16"`` (autocast,
    faster on CPUs with AMX/AVX512-BF16, BENCHMARKS.md; see
    :func:`~pccd.diffusion.network_precision`). The weights stay fp32 either way. bfloat16
    changes the crystals a seed gives, so runs record it (:class:`pccd.runs.SamplingSettings`).
    """

    def __init__(
        self,
        model: PCCDUNet,
        rep_config: rep.RepresentationConfig,
        diffusion: dict | None = None,
        meta: dict | None = None,
        device: torch.device | str | None = None,
        precision: str = DEFAULT_PRECISION,
    ):
        self.precision = check_precision(precision)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.rep_config = rep_config
        # the forward process the network was trained on (pccd.json "diffusion"): the
        # scheduler arguments every sampler is built with; keys a model predates keep their
        # defaults (the paper's ε-prediction on the plain schedule)
        self.diffusion = {"num_train_timesteps": 1000, "schedule": "cosine", **(diffusion or {})}
        self.meta = meta or {}

    family = "points"
    samplers = SAMPLERS

    @property
    def num_train_timesteps(self) -> int:
        """T of the forward process the network was trained on."""
        return int(self.diffusion["num_train_timesteps"])

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
        *,
        precision: str = DEFAULT_PRECISION,
    ) -> PCCDPipeline:
        """Load a model directory, or by name from the weights shipped in the package."""
        directory = model_directory(path)
        return load(directory, read_meta(directory), device, precision)

    @property
    def trained_conditions(self) -> tuple[str, ...]:
        """Conditions the weights learned from labelled data (``pccd.json``).

        A model embeds every condition of its config, but an embedding whose training data
        carried no labels (e.g. magnetic ordering: none in our MP splits) only ever saw its
        null vector, so asking for a value would steer the output arbitrarily. Models exported
        before this was recorded list what their model card states. A condition the network
        has no input for (e.g. ``stability`` in a model made before it existed) is never
        trained, whatever ``pccd.json`` says.
        """
        return learned_conditions(self.meta, self.model.config.conditions)

    def check_request(self, request: Request) -> None:
        """Refuse a request that uses a condition the model was not trained on."""
        asked = {
            "band_gap": request.band_gap is not None,
            "magnetic": request.magnetic is not None,
            "formula": request.formula is not None,
            "stability": request.stability is not None,
        }
        labels = {"band_gap": "band gap", "magnetic": "magnetic ordering"}
        for name, used in asked.items():
            if used and name not in self.trained_conditions:
                label = labels.get(name, name)
                why = (
                    f"its training data had no {label} labels"
                    if name in self.model.config.conditions
                    else f"its network has no {label} input"
                )
                raise InputError(
                    f"model {self.meta.get('name', '?')} was not trained on {label} ({why}), "
                    "so it cannot be conditioned on it; trained conditions: "
                    f"{', '.join(self.trained_conditions)}"
                )

    def check_options(
        self,
        sampler: str = "ddim",
        steps: int | None = None,
        repulsion: float | None = None,
        guide: Sequence[str] | None = None,
        **_: object,
    ) -> None:
        """Validate sampling options before any work or file is written (raises ValueError)."""
        total = self.num_train_timesteps
        if steps is not None and not 1 <= steps <= total:
            raise InputError(
                f"--steps {steps}: num_inference_steps must be 1–{total}, the timesteps "
                "this model was trained with"
            )
        self.make_scheduler(sampler, steps)
        if guide is not None:
            unknown = set(guide) - set(self.trained_conditions)
            if unknown or not guide:
                raise InputError(
                    f"guide: {', '.join(sorted(unknown)) or 'nothing'} is not a condition this "
                    f"model learned ({', '.join(self.trained_conditions)})"
                )
        if repulsion is not None and not 0 < repulsion <= 1.5:
            raise InputError(f"repulsion must be a fraction of a bond in (0, 1.5], got {repulsion}")

    def default_steps(self, sampler: str) -> int:
        """DDIM's default step count, or every timestep for the ancestral DDPM chain."""
        return DEFAULT_DDIM_STEPS if sampler == "ddim" else self.num_train_timesteps

    def with_formula_decoding(self, mode: str) -> PCCDPipeline:
        """A copy whose decoder treats a given formula as ``mode`` says
        (:class:`pccd.representation.FormulaDecoding`); this pipeline keeps its own."""
        other = copy.copy(self)
        other.rep_config = replace(self.rep_config, formula_decoding=rep.FormulaDecoding(mode))
        return other

    def make_scheduler(self, sampler: str, steps: int | None):
        """A fresh scheduler for ``sampler`` ('ddim' fast / 'ddpm' ancestral) with ``steps``."""
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
        kind = DDIMScheduler if sampler == "ddim" else DDPMScheduler
        scheduler = kind(**self.diffusion)
        # 0 is an error, not "default"
        scheduler.set_timesteps(self.default_steps(sampler) if steps is None else steps)
        return scheduler

    def denoise(self, scheduler: NoiseScheduler, cond: Conditions, **kwargs) -> torch.Tensor:
        """:func:`pccd.diffusion.denoise` of this pipeline's network at its ``precision``.

        The one place the pipeline runs its network, so generation, repulsion, CSP and
        reconstruction all honour the precision; ``kwargs`` are those of ``denoise``.
        """
        with network_precision(self.precision, self.device):
            return denoise(self.model, scheduler, cond, **kwargs)

    def iter_generate(
        self,
        requests: Request | Sequence[Request],
        n: int | None = None,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        guidance_scale: float = 1.0,
        seed: int = 0,
        batch_size: int = 100,
        start: int = 0,
        progress: bool = False,
        repulsion: float | None = None,
        guide: Sequence[str] | None = None,
    ) -> Iterator[list[Sample]]:
        """Yield decoded samples batch by batch (so callers can write them as they come).

        ``requests`` is one request repeated ``n`` times, or one request per sample (a batch may
        then mix element lists). Sample ``k`` depends only on (seed, k, batch_size), so a
        resumed run that skips the first ``start`` samples (a multiple of ``batch_size``)
        produces the same crystals. ``repulsion`` (an option, off by default): in the second
        half of the chain, push atoms of the clean-array estimate apart to at least this
        fraction of their covalent bond length (:func:`pccd.repulsion.repel`); samples made
        with it are guided, not the raw model. ``guide`` names the conditions that
        ``guidance_scale`` amplifies (e.g. ``["band_gap"]``); ``None``: all of them (the paper).
        Models with ``atom_attention`` draft the atom counts of requests without a formula by
        a first chain (see :meth:`_with_drafted_formula`), so they sample twice as long.
        """
        requests = self.checked_requests(
            requests, n, batch_size, start,
            sampler=sampler, steps=steps, repulsion=repulsion, guide=guide,
        )  # fmt: skip
        n = len(requests)
        for lo in range(start, n, batch_size):
            chunk = requests[lo : lo + batch_size]
            gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + lo)
            x_T = torch.randn((len(chunk), *rep.ARRAY_SHAPE), generator=gen)
            cond = Conditions.cat([r.conditions(1) for r in chunk]).to(self.device)
            if self.model.config.atom_attention and any(r.formula is None for r in chunk):
                draft = self.denoise(
                    self.make_scheduler(sampler, steps), cond, x_T=x_T.to(self.device),
                    generator=gen, guidance_scale=guidance_scale, guide=guide,
                )  # fmt: skip
                drafted = zip(chunk, draft, strict=True)
                chunk = [self._with_drafted_formula(r, a) for r, a in drafted]
                cond = Conditions.cat([r.conditions(1) for r in chunk]).to(self.device)
                x_T = torch.randn((len(chunk), *rep.ARRAY_SHAPE), generator=gen)
            x0 = self.denoise(
                self.make_scheduler(sampler, steps),
                cond,
                x_T=x_T.to(self.device),
                generator=gen,
                guidance_scale=guidance_scale,
                progress=progress,
                x0_correction=None if repulsion is None else self._repulsion(chunk, repulsion),
                guide=guide,
            )
            batch = []
            for k, (x, req) in enumerate(zip(x0.detach().cpu().numpy(), chunk, strict=True)):
                out = rep.decode(x, list(req.elements), self.rep_config, counts=req.formula)
                ok = isinstance(out, Structure)
                batch.append(
                    Sample(lo + k, out if ok else None, None if ok else out, x)  # type: ignore[arg-type]
                )
            yield batch

    def _with_drafted_formula(self, request: Request, draft: torch.Tensor) -> Request:
        """The request with the atom counts of a draft sample, for ``atom_attention`` models.

        Why: their atom layer needs the row blocks, i.e. the atom count, which only a formula
        gives. Without one, a first chain of the same model (its atom layer idle, as in every
        training sample whose formula was dropped) drafts a crystal, and its decoded counts
        become the formula of the chain that makes the sample. A draft that does not decode to
        exactly the requested elements leaves the request as it was (that sample is made
        without the atom layer).
        """
        if request.formula is not None:
            return request
        out = rep.decode(draft.detach().cpu().numpy(), list(request.elements), self.rep_config)
        if not isinstance(out, Structure):
            return request
        counts = out.composition.element_composition
        if {e.symbol for e in counts} != {e.symbol for e in request.elements}:
            return request
        if counts.num_atoms > MAX_ATOMS:
            return request
        return replace(request, formula=tuple(round(counts[e]) for e in request.elements))

    def _repulsion(self, chunk: Sequence[Request], tau: float):
        """The x̂_0 correction of :func:`pccd.repulsion.repel` for one batch of requests."""
        half = self.num_train_timesteps // 2

        def correct(x0: torch.Tensor, t: int) -> torch.Tensor:
            if t >= half:
                return x0
            arrays = x0.detach().cpu().numpy()
            fixed = [
                repel(a, r.elements, self.rep_config, tau=tau, counts=r.formula)
                for a, r in zip(arrays, chunk, strict=True)
            ]
            return torch.from_numpy(np.stack(fixed)).to(x0.device, x0.dtype)

        return correct


def load(
    directory: Path, meta: dict, device: torch.device | str | None, precision: str | None
) -> PCCDPipeline:
    """The point-cloud family's loader (see :data:`pccd.generator.FAMILIES`); its networks
    sample in float32 unless asked (``precision=None``), the paper's arithmetic."""
    precision = check_precision(DEFAULT_PRECISION if precision is None else precision)
    model = PCCDUNet.from_pretrained(directory, map_location="cpu")
    rep_config = rep.RepresentationConfig.from_dict(meta["representation"])
    return PCCDPipeline(model, rep_config, meta["diffusion"], meta, device, precision)


def describe(directory: Path, meta: dict) -> ModelInfo:
    """The point-cloud family's :class:`~pccd.generator.ModelInfo` (no weights loaded)."""
    config = json.loads((directory / "config.json").read_text())
    return ModelInfo(
        directory=directory.resolve(),
        name=str(meta.get("name", "")),
        family="points",
        trained_conditions=learned_conditions(meta, config.get("conditions", CONDITION_NAMES)),
        samplers=SAMPLERS,
        timesteps=int(meta["diffusion"]["num_train_timesteps"]),
    )
