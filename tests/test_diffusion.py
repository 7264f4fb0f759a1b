"""Tests for schedules, DDPM/DDIM schedulers, the loss and the sampling loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pccd.conditioning import Conditions
from pccd.diffusion import (
    DDIMScheduler,
    DDPMScheduler,
    alphas_cumprod,
    cosine_betas,
    denoise,
    diffusion_loss,
    guided_eps,
    linear_betas,
    network_precision,
    noise_to,
    reconstruct,
    shift_snr,
)
from pccd.diffusion.schedules import randn_like
from pccd.model import PCCDUNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded, and a second thread fighting another busy
    process for 2 cores can slow torch down by an order of magnitude."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _crystal_like(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Arrays shaped like encoded crystals: 4 atoms × 32 rows, 2 element slots, a lattice."""
    x = torch.empty(batch, 3, 128, 3)
    coords = torch.rand(batch, 4, 3, generator=generator) * 1.8 - 0.9
    x[:, 0] = coords.repeat_interleave(32, dim=1)
    x[:, 1] = -1.0
    x[:, 1, :64, 0] = 1.0
    x[:, 1, 64:, 1] = 1.0
    x[:, 2] = torch.rand(batch, 1, 3, generator=generator) * 1.8 - 0.9
    return x


def _cond(batch: int = 2) -> Conditions:
    return Conditions.from_lists([[8, 26]] * batch, band_gap=1.0, magnetic="FM")


class Oracle(nn.Module):
    """Returns the exact noise that separates x_t from a known x_0."""

    def __init__(self, x0: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.x0 = x0.double()
        self.abar = scheduler.alphas_cumprod
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        abar = self.abar[t].view(-1, 1, 1, 1)
        eps = (x.double() - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        return eps.to(x.dtype)


@pytest.fixture
def tiny() -> PCCDUNet:
    torch.manual_seed(0)
    return PCCDUNet.from_preset("tiny")


# ---------------------------------------------------------------------- schedules
def test_cosine_schedule_properties():
    betas = cosine_betas(1000)
    abar = alphas_cumprod(betas)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (np.diff(abar) < 0).all()
    assert abar[0] == pytest.approx(1.0, abs=1e-4)
    assert abar[-1] < 1e-6
    # closed form ᾱ_t = f(t+1)/f(0) away from the clipped end
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500, 900):
        assert abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_linear_schedule():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert linear_betas(100)[-1] == pytest.approx(0.2)  # scaled to keep the total noise
    assert DDPMScheduler(schedule="linear").alphas_cumprod[-1] < 1e-4
    with pytest.raises(ValueError, match="schedule"):
        DDPMScheduler(schedule="sigmoid")


def test_snr_shift_divides_the_signal_to_noise_ratio():
    """Every step's SNR is the plain schedule's divided by k; k = 1 is the plain schedule."""
    base = cosine_betas(1000)
    np.testing.assert_array_equal(shift_snr(base, 1.0), base)
    abar = alphas_cumprod(base)
    for k in (4.0, 16.0):
        shifted = alphas_cumprod(shift_snr(base, k))
        snr, snr_k = abar / (1 - abar), shifted / (1 - shifted)
        np.testing.assert_allclose(snr_k[:990], snr[:990] / k, rtol=1e-8)
        assert np.all(np.diff(shifted) < 0)  # still a forward process that only adds noise
    sched = DDIMScheduler(snr_shift=16.0)
    assert sched.config["snr_shift"] == 16.0
    assert sched.alphas_cumprod[300] < DDIMScheduler().alphas_cumprod[300]
    with pytest.raises(ValueError, match="snr_shift"):
        DDPMScheduler(snr_shift=0.0)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_the_training_target_converts_back_to_the_noise(prediction):
    """A perfect output (the training target) gives back ε, and x̂_0 = x_0, at every step."""
    sched = DDPMScheduler(prediction=prediction, clip_sample=False)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 128, 3, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 128, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 300, 700, 999])
    x_t = sched.add_noise(x0, noise, t)
    target = sched.training_target(x0, noise, t)
    if prediction == "v":
        assert not torch.allclose(target, noise)
    eps = sched.eps_from_output(target, t, x_t)
    torch.testing.assert_close(eps, noise)
    for i, step in enumerate((0, 300, 700)):  # one step per call, as the samplers use it
        eps_i = sched.eps_from_output(target[i : i + 1], step, x_t[i : i + 1])
        torch.testing.assert_close(sched.predict_x0(eps_i, step, x_t[i : i + 1]), x0[i : i + 1])
    with pytest.raises(ValueError, match="prediction"):
        DDIMScheduler(prediction="x0")


def test_add_noise_matches_closed_form():
    sched = DDPMScheduler()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 3, 128, 3, generator=gen), torch.randn(3, 3, 128, 3, generator=gen)
    t = torch.tensor([0, 500, 999])
    abar = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    torch.testing.assert_close(sched.add_noise(x0, noise, t), expected)
    same_t = sched.add_noise(x0, noise, 500)
    torch.testing.assert_close(same_t[1], expected[1])


def test_timestep_spacing():
    ddim = DDIMScheduler()
    assert ddim.timesteps.tolist() == list(range(999, -1, -1))
    ddim.set_timesteps(10)
    steps = ddim.timesteps.tolist()
    assert len(steps) == 10 and steps[0] == 999 and steps == sorted(steps, reverse=True)
    leading = DDIMScheduler(timestep_spacing="leading")
    leading.set_timesteps(10)
    assert leading.timesteps.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddim.timesteps_from(450).tolist() == [450, 399, 299, 199, 99]
    assert ddim.previous_timestep(99) == -1 and ddim.previous_timestep(999) == 899
    with pytest.raises(ValueError):
        ddim.set_timesteps(0)
    with pytest.raises(ValueError, match="timestep_spacing"):
        DDIMScheduler(timestep_spacing="middle")


# ---------------------------------------------------------------------- schedulers
def test_ddpm_step_with_true_noise_recovers_x0_and_posterior():
    sched = DDPMScheduler()
    gen = torch.Generator().manual_seed(0)
    x0 = _crystal_like(2, gen)
    noise = torch.randn(x0.shape, generator=gen)
    for t in (0, 10, 500, 900):
        x_t = sched.add_noise(x0, noise, t)
        x_prev, x0_pred = sched.step(noise, t, x_t, torch.Generator().manual_seed(1))
        torch.testing.assert_close(x0_pred, x0, atol=1e-4, rtol=0)
        if t == 0:
            torch.testing.assert_close(x_prev, x0_pred)  # last step: no noise
            continue
        # Ho et al. eq. 7 posterior, same noise draw.
        ab_t, ab_p = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[t - 1])
        beta = float(sched.betas[t])
        mean = (math.sqrt(ab_p) * beta * x0 + math.sqrt(1 - beta) * (1 - ab_p) * x_t) / (1 - ab_t)
        std = math.sqrt(beta * (1 - ab_p) / (1 - ab_t))
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(x_prev, mean + std * z, atol=1e-4, rtol=1e-4)


def test_clip_sample_clips_prediction():
    sched = DDPMScheduler(clip_sample=True)
    x_t = torch.full((1, 3, 128, 3), 5.0)
    _, x0 = sched.step(torch.zeros_like(x_t), 10, x_t)
    assert x0.max() == 1.0
    _, x0_raw = DDPMScheduler(clip_sample=False).step(torch.zeros_like(x_t), 10, x_t)
    assert x0_raw.max() > 1.0


@pytest.mark.parametrize("steps", [1000, 50, 7])
def test_ddim_eta0_with_oracle_recovers_x0(steps):
    sched = DDIMScheduler(eta=0.0)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(0)
    x0 = _crystal_like(2, gen)
    x_T = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), 999)
    out = denoise(Oracle(x0, sched), sched, _cond(), x_T=x_T)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_strided_ddpm_chain_with_oracle_ends_at_x0():
    sched = DDPMScheduler()
    sched.set_timesteps(25)
    gen = torch.Generator().manual_seed(0)
    x0 = _crystal_like(2, gen)
    out = denoise(Oracle(x0, sched), sched, _cond(), generator=gen)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_reconstruction_starts_at_start_t():
    sched = DDIMScheduler()
    sched.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    x0 = _crystal_like(2, gen)
    oracle = Oracle(x0, sched)
    out = reconstruct(oracle, sched, x0, _cond(), t=300, generator=gen)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    assert len(oracle.calls) == len(sched.timesteps_from(300))
    with pytest.raises(ValueError, match="start_t needs x_T"):
        denoise(oracle, sched, _cond(), start_t=300)
    x_t = noise_to(x0, 300, sched, torch.Generator().manual_seed(3))
    assert not torch.allclose(x_t, x0)


# ---------------------------------------------------------------------- loss
@pytest.mark.slow
def test_loss_is_finite_and_decreases_when_overfitting(tiny):
    sched = DDPMScheduler()
    gen = torch.Generator().manual_seed(0)
    x0 = _crystal_like(8, gen)
    cond = Conditions.from_lists([[8, 26]] * 8, band_gap=[1.0, None] * 4, magnetic="FM")
    opt = torch.optim.Adam(tiny.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = diffusion_loss(tiny, sched, x0, cond, generator=gen)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.85 * first, (first, last)


def test_loss_options(tiny):
    sched = DDPMScheduler()
    x0 = _crystal_like(2, torch.Generator().manual_seed(0))
    l1 = diffusion_loss(tiny, sched, x0, _cond(), torch.Generator().manual_seed(1))
    l1_again = diffusion_loss(tiny, sched, x0, _cond(), torch.Generator().manual_seed(1))
    l2 = diffusion_loss(tiny, sched, x0, _cond(), torch.Generator().manual_seed(1), loss="l2")
    assert l1.item() == l1_again.item()  # seeded t and noise
    assert l2.item() != l1.item() and l2.item() > 0
    dropped = diffusion_loss(
        tiny, sched, x0, _cond(), torch.Generator().manual_seed(1), drop_probs={"elements": 1.0}
    )
    assert torch.isfinite(dropped)
    with pytest.raises(ValueError, match="loss"):
        diffusion_loss(tiny, sched, x0, _cond(), loss="huber")


class _Zero(nn.Module):
    """Predicts ε = 0, so the loss is the weighted mean of |ε| and the weights can be read off."""

    def forward(self, x, t, cond):
        return torch.zeros_like(x)


def test_min_snr_weighting():
    sched = DDPMScheduler()
    x0 = _crystal_like(64, torch.Generator().manual_seed(0))
    cond = Conditions.from_lists([[8, 26]] * 64)

    def loss(**kw):
        return diffusion_loss(_Zero(), sched, x0, cond, torch.Generator().manual_seed(1), **kw)

    plain = loss().item()
    # γ above every SNR: min(SNR, γ)/SNR = 1, the paper's loss exactly
    assert loss(weighting="min_snr", snr_gamma=1e12).item() == pytest.approx(plain, rel=1e-6)
    # γ = 5 shrinks the near-clean steps only: smaller, but not vanishing
    weighted = loss(weighting="min_snr").item()
    assert 0.2 * plain < weighted < plain
    # the same draws as the loss (t first, then ε): each sample's mean |ε| times min(SNR, 5)/SNR
    gen = torch.Generator().manual_seed(1)
    t = torch.randint(0, sched.num_train_timesteps, (64,), generator=gen)
    noise = randn_like(x0, gen)
    abar = sched.alphas_cumprod[t].float()
    snr = abar / (1 - abar)
    expected = (noise.abs().flatten(1).mean(1) * torch.clamp(snr, max=5.0) / snr).mean()
    assert weighted == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        loss(weighting="p2")
    with pytest.raises(ValueError, match="snr_gamma"):
        loss(weighting="min_snr", snr_gamma=0.0)


# ---------------------------------------------------------------------- sampling loop
def _sample(model, seed, guidance=1.0, scheduler=None):
    sched = scheduler or DDIMScheduler(eta=1.0)
    if scheduler is None:
        sched.set_timesteps(8)
    return denoise(
        model,
        sched,
        _cond(),
        generator=torch.Generator().manual_seed(seed),
        guidance_scale=guidance,
    )


def test_sampling_is_seeded(tiny):
    a, b, c = _sample(tiny, 0), _sample(tiny, 0), _sample(tiny, 1)
    assert a.shape == (2, 3, 128, 3)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    ddpm = DDPMScheduler()
    ddpm.set_timesteps(10)
    assert torch.equal(_sample(tiny, 5, scheduler=ddpm), _sample(tiny, 5, scheduler=ddpm))


def test_guidance_changes_samples_and_uses_one_batched_forward(tiny):
    assert not torch.allclose(_sample(tiny, 0, guidance=3.0), _sample(tiny, 0, guidance=1.0))

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.batches = inner, []

        def forward(self, x, t, cond):
            self.batches.append((x.shape[0], int(cond.elements_dropped.sum())))
            return self.inner(x, t, cond)

    counting = Counting(tiny)
    _sample(counting, 0, guidance=3.0)
    assert counting.batches == [(4, 2)] * 8  # cond + null rows in one pass per step
    counting.batches.clear()
    _sample(counting, 0, guidance=1.0)
    assert counting.batches == [(2, 0)] * 8  # no unconditional pass at s = 1
    # guidance on the band gap only: the second branch keeps its elements, loses its gap
    seen = []

    class Recording(nn.Module):
        def forward(self, x, t, cond):
            seen.append((int(cond.elements_dropped.sum()), int(cond.band_gap_missing.sum())))
            return tiny(x, t, cond)

    sched = DDIMScheduler(eta=1.0)
    sched.set_timesteps(3)
    gapped = Conditions.from_lists([[8, 26], [8]], band_gap=[4.0, 0.0])
    a = denoise(Recording(), sched, gapped, generator=torch.Generator().manual_seed(0),
                guidance_scale=3.0, guide=["band_gap"])  # fmt: skip
    assert seen == [(0, 2)] * 3
    b = denoise(tiny, sched, gapped, generator=torch.Generator().manual_seed(0),
                guidance_scale=3.0)  # fmt: skip
    assert not torch.allclose(a, b)


def test_ddim_eta0_is_deterministic_given_x_T(tiny):
    sched = DDIMScheduler(eta=0.0)
    sched.set_timesteps(5)
    x_T = torch.randn(2, 3, 128, 3, generator=torch.Generator().manual_seed(0))
    a = denoise(tiny, sched, _cond(), x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = denoise(tiny, sched, _cond(), x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_observe_sees_every_steps_estimate_and_leaves_the_chain_alone(tiny):
    sched = DDIMScheduler(eta=1.0)
    sched.set_timesteps(6)
    seen = []
    observed = denoise(tiny, sched, _cond(), generator=torch.Generator().manual_seed(4),
                       observe=lambda x0, t: seen.append((t, x0.clone())))  # fmt: skip
    plain = denoise(tiny, sched, _cond(), generator=torch.Generator().manual_seed(4))
    assert torch.equal(observed, plain)
    assert [t for t, _ in seen] == sched.timesteps.tolist()
    assert all(x0.shape == (2, 3, 128, 3) and x0.abs().max() <= 1 for _, x0 in seen)
    # the last step's estimate is the sample itself (DDIM ends at x̂_0)
    assert torch.allclose(seen[-1][1], plain)


def test_denoise_restores_training_mode_and_shows_progress(tiny, capsys):
    tiny.train()
    sched = DDIMScheduler()
    sched.set_timesteps(3)
    denoise(tiny, sched, _cond(), generator=torch.Generator().manual_seed(0), progress=True)
    assert tiny.training
    assert "denoising" in capsys.readouterr().err
    with pytest.raises(ValueError, match="x_T must have shape"):
        denoise(tiny, sched, _cond(), x_T=torch.zeros(3, 3, 128, 3))


def test_bfloat16_network_keeps_eps_and_the_scheduler_in_float32(tiny):
    """Under bf16 autocast the network computes in bf16, but guided_eps hands on fp32 ε̂ (the
    guidance combination included) and every scheduler step sees and returns fp32 arrays."""
    x = torch.randn(2, 3, 128, 3, generator=torch.Generator().manual_seed(0))
    ts = torch.full((2,), 500, dtype=torch.long)
    with torch.no_grad(), network_precision("bfloat16", "cpu"):
        assert tiny(x, ts, _cond()).dtype == torch.bfloat16  # the network really runs in bf16
        for scale in (1.0, 3.0):
            assert guided_eps(tiny, x, 500, _cond(), guidance_scale=scale).dtype == torch.float32
    seen = []

    class Recording(DDIMScheduler):
        def step(self, eps, t, x_t, generator=None):
            x_prev, x0_hat = super().step(eps, t, x_t, generator)
            seen.append((eps.dtype, x_t.dtype, x_prev.dtype, x0_hat.dtype))
            return x_prev, x0_hat

    sched = Recording(eta=1.0)
    sched.set_timesteps(3)
    gen = torch.Generator().manual_seed(0)
    with network_precision("bfloat16", "cpu"):
        bf16 = denoise(tiny, sched, _cond(), generator=gen, guidance_scale=2.0)
    assert seen == [(torch.float32,) * 4] * 3
    fp32 = denoise(tiny, sched, _cond(), generator=torch.Generator().manual_seed(0),
                   guidance_scale=2.0)  # fmt: skip
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32)  # bf16 rounding changes the chain a little


def test_network_precision_float32_is_no_context_and_names_are_checked():
    with network_precision("float32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")  # the fp32 path is exactly the old one
    with network_precision("bfloat16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    for bad in ("bf16", "bf16-mixed", "float16", "32-true"):
        with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
            network_precision(bad, "cpu")
