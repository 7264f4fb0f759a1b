"""The reverse-diffusion loop, shared by generation, guidance and reconstruction experiments."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from pccd.conditioning import Conditions
from pccd.diffusion.schedules import NoiseScheduler, randn_like
from pccd.errors import InputError

SAMPLE_SHAPE = (3, 128, 3)
"""Shape of one crystal array (channels, rows, columns)."""

PRECISIONS = ("float32", "bfloat16")
"""Precisions the network may run at while sampling (``PCCDPipeline(precision=...)``)."""
DEFAULT_PRECISION = "float32"


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ``ValueError`` naming them."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports
    it, or a CPU with AVX512-BF16 / AMX as oneDNN reports. Elsewhere bfloat16 is emulated and
    slower than float32, so a model may prefer it only where this is true."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def network_precision(
    precision: str, device: torch.device | str
) -> contextlib.AbstractContextManager:
    """The context a sampling chain runs in so that its network computes at ``precision``.

    ``"float32"`` is no context at all, so that path is bit-identical to sampling without the
    option. ``"bfloat16"`` is :func:`torch.autocast`: convolutions, linear layers and attention
    matmuls run in bfloat16 from fp32 weights, which CPUs with AMX/AVX512-BF16 do much faster
    (BENCHMARKS.md, generation speed). Autocast leaves elementwise ops in their input
    dtype, and :func:`guided_eps` returns ε̂ in fp32, so the scheduler and guidance arithmetic
    of :func:`denoise` stays fp32 when the whole chain runs inside this context; that is why
    one context around the chain (:meth:`pccd.pipeline.PCCDPipeline.denoise`) is enough,
    rather than one per forward pass.
    """
    if check_precision(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # parameter-free models (e.g. test oracles)
        return torch.device("cpu")


def guided_eps(
    model: nn.Module,
    x_t: torch.Tensor,
    t: int,
    cond: Conditions,
    guidance_scale: float = 1.0,
    cond_pair: Conditions | None = None,
    x_self: torch.Tensor | None = None,
    guide: Sequence[str] | None = None,
) -> torch.Tensor:
    """The network's output with classifier-free guidance: ε_∅ + s·(ε_c − ε_∅).

    The output is ε̂ for ε-prediction models and v̂ for v-prediction ones; the combination is
    the same (the scheduler's :meth:`~pccd.diffusion.NoiseScheduler.eps_from_output` is affine
    in it), and :func:`denoise` converts after guiding.

    s = 1 is the plain conditional model (one forward pass); otherwise the conditional and
    unconditional branches run as *one* forward of the doubled batch, which is cheaper than two
    passes on a CPU (better GEMM shapes, one Python traversal of the network). ``cond_pair``
    may pass the precomputed ``Conditions.cat([cond, cond.null_like()])``. ``x_self`` is the
    previous x̂_0 for self-conditioning models. ``guide`` names the conditions guidance
    amplifies: ∅ then nulls only those (:meth:`Conditions.without`), so ``["band_gap"]`` pushes
    towards the asked gap without also sharpening the element list; ``None`` nulls every
    condition (the paper).

    ε̂ is always fp32: under bfloat16 autocast (:func:`network_precision`) the network's output
    is cast up before the guidance combination, so ε_∅ + s·(ε_c − ε_∅) and everything the
    scheduler does with ε̂ keep fp32's precision (a no-op for an fp32 network).
    """
    b = x_t.shape[0]
    if guidance_scale == 1.0:
        ts = torch.full((b,), int(t), dtype=torch.long, device=x_t.device)
        kwargs = {} if x_self is None else {"x_self": x_self}
        return model(x_t, ts, cond, **kwargs).float()
    if cond_pair is None:
        cond_pair = guidance_pair(cond, guide)
    ts = torch.full((2 * b,), int(t), dtype=torch.long, device=x_t.device)
    kwargs = {} if x_self is None else {"x_self": torch.cat([x_self, x_self])}
    eps_c, eps_u = model(torch.cat([x_t, x_t]), ts, cond_pair, **kwargs).float().chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


def guidance_pair(cond: Conditions, guide: Sequence[str] | None = None) -> Conditions:
    """The doubled batch [c, ∅] of one guided forward pass (∅: ``guide`` nulled, or all)."""
    null = cond.null_like() if guide is None else cond.without(guide)
    return Conditions.cat([cond, null])


@torch.no_grad()
def denoise(
    model: nn.Module,
    scheduler: NoiseScheduler,
    cond: Conditions,
    *,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
    start_t: int | None = None,
    progress: bool = False,
    x0_correction: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    guide: Sequence[str] | None = None,
    observe: Callable[[torch.Tensor, int], None] | None = None,
) -> torch.Tensor:
    """Run the reverse chain of ``scheduler`` (its ``timesteps``) and return x̂_0 in [-1, 1].

    Args:
        model: ε-predictor ``model(x, t, cond)``; put in eval mode for the loop (restored after).
        scheduler: :class:`DDPMScheduler` or :class:`DDIMScheduler`, after ``set_timesteps``.
        cond: one condition row per sample; the batch size is ``cond.batch_size``.
        x_T: starting array (B, 3, 128, 3); default: N(0, I) drawn with ``generator``.
        generator: seeds x_T and every noise draw — same seed, same samples.
        guidance_scale: classifier-free guidance s (1 = conditional only, 0 = unconditional).
        start_t: start the chain at this step instead of T−1 (reconstruction: ``x_T`` must then
            be a clean array noised to ``start_t``, see :func:`noise_to` / :func:`reconstruct`).
        progress: show a tqdm bar.
        x0_correction: optional ``f(x̂_0, t) -> x̂_0'`` applied to the clean-array estimate at
            every step before the scheduler moves on (the noise estimate is made consistent
            with the corrected x̂_0), e.g. sampling-time repulsion; ``None`` = the plain model.
        guide: conditions that guidance amplifies (see :func:`guided_eps`); ``None`` = all.
        observe: optional ``f(x̂_0, t)`` called with the step's clean-array estimate (clipped
            to [-1, 1]) after every step; it only reads, so the chain is the same with or
            without it (diagnostics such as when the atoms settle).
    """
    device = _model_device(model)
    cond = cond.to(device)
    b = cond.batch_size
    if x_T is None:
        if start_t is not None:
            raise ValueError("start_t needs x_T: the clean array noised to start_t")
        x = randn_like(torch.empty(b, *SAMPLE_SHAPE, device=device), generator)
    else:
        if x_T.shape != (b, *SAMPLE_SHAPE):
            raise ValueError(f"x_T must have shape {(b, *SAMPLE_SHAPE)}, got {tuple(x_T.shape)}")
        x = x_T.to(device=device, dtype=torch.float32)
    timesteps = scheduler.timesteps if start_t is None else scheduler.timesteps_from(start_t)
    cond_pair = guidance_pair(cond, guide) if guidance_scale != 1.0 else None

    iterator = timesteps.tolist()
    if progress:
        iterator = tqdm(iterator, desc="denoising", unit="step")
    was_training = model.training
    model.eval()
    x_self = torch.zeros_like(x) if getattr(model, "self_conditioning", False) else None
    try:
        for t in iterator:
            output = guided_eps(model, x, t, cond, guidance_scale, cond_pair, x_self)
            eps = scheduler.eps_from_output(output, t, x)
            if x0_correction is not None:
                x0_fixed = x0_correction(scheduler.predict_x0(eps, t, x), t)
                eps = scheduler.eps_from_x0(x0_fixed, t, x)
            x, x0_hat = scheduler.step(eps, t, x, generator)
            if x_self is not None:
                x_self = x0_hat.clamp(-1.0, 1.0)
            if observe is not None:
                observe(x0_hat.clamp(-1.0, 1.0), t)
    finally:
        model.train(was_training)
    return x.clamp(-1.0, 1.0)


def noise_to(
    x0: torch.Tensor,
    t: int,
    scheduler: NoiseScheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) for one step ``t`` for the whole batch (reconstruction input)."""
    return scheduler.add_noise(x0, randn_like(x0, generator), int(t))


def reconstruct(
    model: nn.Module,
    scheduler: NoiseScheduler,
    x0: torch.Tensor,
    cond: Conditions,
    t: int,
    *,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Noise clean arrays ``x0`` to step ``t`` and denoise them back (how much structure
    survives a partial trip through the chain)."""
    x_t = noise_to(x0, t, scheduler, generator)
    return denoise(
        model,
        scheduler,
        cond,
        x_T=x_t,
        generator=generator,
        guidance_scale=guidance_scale,
        start_t=t,
        progress=progress,
    )
