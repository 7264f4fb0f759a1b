"""The atom family: processes, denoiser symmetries, training resume, sampling, the seam."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from pymatgen.core import Structure

from pccd.data import CrystalRecord, CrystalTable
from pccd.families.atoms.batch import AtomArrays, size_buckets
from pccd.families.atoms.counts import AtomCountPrior
from pccd.families.atoms.denoiser import AtomDenoiser, AtomDenoiserConfig
from pccd.families.atoms.diffusion import AtomModelConfig
from pccd.families.atoms.export import export_pretrained
from pccd.families.atoms.processes import TorusScore, cosine_alpha_bar, wrapped_normal_score
from pccd.families.atoms.sampling import SampleSpec, sample, timestep_grid
from pccd.families.atoms.structures import cell_failure, to_structures
from pccd.families.atoms.training import OptimConfig, TrainRun, _State, train
from pccd.generator import Generator, Request, describe_model, load_pretrained
from tests.conftest import nacl, silicon, wurtzite

TINY = AtomModelConfig(denoiser=AtomDenoiserConfig(hidden=16, layers=2, fourier=2, rbf=4))


def tiny_arrays() -> AtomArrays:
    """Three small crystals, each several times, as padded arrays."""
    records = [
        CrystalRecord(f"c{i}", s, {"band_gap": 1.0} if i % 2 else {})
        for i, s in enumerate([nacl(), silicon(), wurtzite()] * 4)
    ]
    return AtomArrays.from_table(CrystalTable.from_records(records), 19.0)


def test_wrapped_normal_score_is_the_gradient_of_the_log_density():
    sigma = torch.tensor(0.3, dtype=torch.float64)
    d = torch.linspace(-0.49, 0.49, 11, dtype=torch.float64)
    k = torch.arange(-10, 11, dtype=torch.float64)

    def logp(x):
        return torch.logsumexp(-((x[:, None] + k) ** 2) / (2 * sigma**2), dim=1)

    h = 1e-5
    numeric = (logp(d + h) - logp(d - h)) / (2 * h)
    assert torch.allclose(wrapped_normal_score(d, sigma.expand_as(d)), numeric, atol=1e-5)
    # periodic: one full turn changes nothing
    assert torch.allclose(
        wrapped_normal_score(d + 1, sigma.expand_as(d)), wrapped_normal_score(d, sigma.expand_as(d))
    )


def test_normalised_score_target_has_unit_size():
    torus = TorusScore(timesteps=50)
    x0 = torch.rand(64, 16, 3)
    for t in (1, 25, 50):
        _, target = torus.noise(x0, torch.full((64,), t), torch.Generator().manual_seed(t))
        assert target.pow(2).mean().item() == pytest.approx(1.0, rel=0.1)


def test_score_norms_taken_as_gaussian_agree_with_the_periodic_rule():
    """λ_t = 1/σ² is used below GAUSSIAN_SIGMA instead of the trapezoid rule; check the rule
    gives the same there (and that the wider σ really differ from 1/σ²)."""
    from pccd.families.atoms.processes import GAUSSIAN_SIGMA, WRAP_IMAGES

    torus = TorusScore()
    sig = torus.sigmas.double()
    d = torch.arange(4000, dtype=torch.float64) / 4000 - 0.5
    k = torch.arange(-WRAP_IMAGES, WRAP_IMAGES + 1, dtype=torch.float64)
    for t in (1, 300, int((sig <= GAUSSIAN_SIGMA).nonzero().max()), 1000):
        density = torch.exp(-((d[:, None] + k) ** 2) / (2 * sig[t] ** 2)).sum(-1)
        score = wrapped_normal_score(d, sig[t].expand_as(d))
        rule = float((density * score**2).sum() / density.sum())
        assert float(torus.norms[t]) == pytest.approx(rule, rel=1e-6)
    assert float(torus.norms[1000]) < 0.9 / float(sig[1000]) ** 2


def test_cosine_schedule_runs_from_one_towards_zero():
    abar = cosine_alpha_bar(1000)
    assert abar[0] == 1 and abar[-1] < 1e-3 and bool((abar[1:] <= abar[:-1]).all())


def _inputs(b=2, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(1, 90, (b, n), generator=g)
    frac = torch.rand(b, n, 3, generator=g)
    lattice = torch.eye(3).repeat(b, 1, 1) + 0.2 * torch.randn(b, 3, 3, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    slots = torch.tensor([[8, 12, 0]] * b)
    return types, frac, lattice, mask, torch.tensor([10, 500][:b]), slots


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return AtomDenoiser(TINY.denoiser).double().eval()


def _run(net, types, frac, lattice, mask, t, slots):
    with torch.no_grad():
        return net(types, frac.double(), lattice.double(), mask, t, slots)


def test_lattice_steps_never_carry_a_blown_up_clean_estimate():
    from pccd.families.atoms.processes import MAX_ROW_NORM, LatticeDDPM

    ddpm = LatticeDDPM(1000)
    gen = torch.Generator().manual_seed(0)
    clean, eps = ddpm.noise(torch.eye(3).repeat(4, 1, 1), torch.full((4,), 1000), gen)
    wrong = eps + 0.05 * torch.randn(eps.shape, generator=gen)  # a 5% error in ε̂ at t = T
    raw = (clean - (1 - ddpm.alpha_bar[1000]).sqrt() * wrong) / ddpm.alpha_bar[1000].sqrt()
    assert torch.linalg.vector_norm(raw, dim=-1).max() > 100  # what the clip is for
    estimate = ddpm.clean_estimate(clean, wrong, 1000)
    assert torch.linalg.vector_norm(estimate, dim=-1).max() <= MAX_ROW_NORM + 1e-4
    stepped = ddpm.step(clean, wrong, 1000, 990, eta=0.0)
    assert torch.linalg.vector_norm(stepped, dim=-1).max() < 3
    # a lattice within range is left as it is
    lt, e = ddpm.noise(torch.eye(3)[None], torch.tensor([10]), gen)
    assert torch.allclose(ddpm.clean_estimate(lt, e, 10), torch.eye(3)[None], atol=1e-4)


def test_denoiser_is_permutation_equivariant(net):
    types, frac, lat, mask, t, slots = _inputs()
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = _run(net, types, frac, lat, mask, t, slots)
    b = _run(net, types[:, perm], frac[:, perm], lat, mask, t, slots)
    assert torch.allclose(a[0][:, perm], b[0], atol=1e-9)  # coordinate scores follow atoms
    assert torch.allclose(a[1], b[1], atol=1e-9)  # lattice output unchanged
    assert torch.allclose(a[2][:, perm], b[2], atol=1e-9)


def test_denoiser_is_periodic_and_translation_invariant(net):
    types, frac, lat, mask, t, slots = _inputs()
    a = _run(net, types, frac, lat, mask, t, slots)
    shifted = (frac + torch.tensor([0.3, -0.7, 2.0])) % 1.0
    b = _run(net, types, shifted, lat, mask, t, slots)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=1e-8)


def test_denoiser_turns_its_lattice_output_with_the_cell(net):
    types, frac, lat, mask, t, slots = _inputs()
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    q = q.double()
    a = _run(net, types, frac, lat, mask, t, slots)
    b = _run(net, types, frac, lat.double() @ q, mask, t, slots)
    assert torch.allclose(a[0], b[0], atol=1e-8)  # fractional scores do not rotate
    assert torch.allclose(a[1] @ q, b[1], atol=1e-8)


def test_padding_does_not_change_real_atoms(net):
    types, frac, lat, mask, t, slots = _inputs(n=4)
    pad = lambda x, v: torch.cat([x, torch.full_like(x[:, :2], v)], dim=1)  # noqa: E731
    a = _run(net, types, frac, lat, mask, t, slots)
    b = _run(net, pad(types, 0), pad(frac, 0.5), lat, pad(mask, False), t, slots)
    assert torch.allclose(a[0], b[0][:, :4], atol=1e-9)
    assert torch.allclose(a[1], b[1], atol=1e-9)


def test_a_cell_is_denoised_alike_alone_or_beside_cells_of_other_sizes(net):
    """The network packs the real atoms and pairs of a batch into flat arrays; an indexing
    slip there would leak messages between cells or drop atoms."""
    types, frac, lat, mask, t, slots = _inputs(b=2, n=6, seed=3)
    mask[0, 2:] = False  # a 2-atom cell beside a 6-atom one
    together = _run(net, types, frac, lat, mask, t, slots)
    for k, n in enumerate((2, 6)):
        alone = _run(net, types[k : k + 1, :n], frac[k : k + 1, :n], lat[k : k + 1],
                     mask[k : k + 1, :n], t[k : k + 1], slots[k : k + 1])  # fmt: skip
        assert torch.allclose(together[0][k, :n], alone[0][0], atol=1e-9)
        assert torch.allclose(together[1][k], alone[1][0], atol=1e-9)
        assert torch.allclose(together[2][k, :n], alone[2][0], atol=1e-9)
    assert (together[0][0, 2:] == 0).all()  # no score for atoms that are not there


def test_arrays_round_trip_to_the_same_structures():
    arrays = tiny_arrays()
    out = to_structures(arrays.batch(np.arange(3)), 19.0)
    for s, want in zip(out, [nacl(), silicon(), wurtzite()], strict=True):
        assert isinstance(s, Structure)
        assert s.matches(want)


def test_size_buckets_cover_every_crystal_once():
    sizes = np.array([1, 8, 2, 8, 16, 4, 4, 2, 1, 3])
    batches = size_buckets(sizes, 3, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_flat_or_huge_cells_are_failures_not_structures():
    flat = np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 0.01]])
    assert cell_failure(flat, 4).reason.value == "degenerate_lattice"
    assert cell_failure(np.eye(3) * 500, 4) is not None
    assert cell_failure(np.full((3, 3), np.nan), 4).reason.value == "non_finite"
    assert cell_failure(np.eye(3) * 4, 4) is None


def _tiny_run(tmp_path, minutes=0.05):
    run = TrainRun(model=TINY, optim=OptimConfig(batch_size=4, warmup_steps=2), log_every=2)
    return run, train(tmp_path, tiny_arrays(), run, minutes=minutes)


def test_training_resumes_where_it_stopped(tmp_path):
    _tiny_run(tmp_path / "a")
    state = torch.load(tmp_path / "a" / "live.pt", weights_only=False)
    assert state["step"] > 0
    assert (tmp_path / "a" / "curve.csv").read_text().startswith("step,")
    train(tmp_path / "a", tiny_arrays(), minutes=0.02)
    again = torch.load(tmp_path / "a" / "live.pt", weights_only=False)
    assert again["step"] > state["step"] and again["samples"] > state["samples"]
    with pytest.raises(ValueError, match="other settings"):
        train(tmp_path / "a", tiny_arrays(), TrainRun(model=TINY, seed=5), minutes=0.01)


def test_training_batches_are_the_same_whether_resumed_or_not(tmp_path):
    """Same settings, same steps → same weights, with or without a stop in between."""
    from pccd.families.atoms import training as tr

    arrays = tiny_arrays()
    run = TrainRun(model=TINY, optim=OptimConfig(batch_size=4, warmup_steps=2), log_every=1000)
    straight, resumed = _State(run, "cpu"), _State(run, "cpu")

    def steps(state, k):
        for _ in range(k):
            batches = tr._epoch(arrays, run, state.epoch)
            batch = arrays.batch(batches[state.batch_in_epoch])
            loss, _ = state.model.loss(batch, state.generator)
            state.opt.zero_grad()
            loss.backward()
            state.opt.step()
            state.batch_in_epoch += 1
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    steps(straight, 6)
    steps(resumed, 2)
    copy = _State(run, "cpu")
    copy.load_state_dict(resumed.state_dict())
    steps(copy, 4)
    for a, b in zip(straight.model.parameters(), copy.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sampling_is_seeded_and_keeps_given_types():
    torch.manual_seed(0)
    from pccd.families.atoms.diffusion import AtomDiffusion

    model = AtomDiffusion(TINY)
    batch = tiny_arrays().batch(np.arange(3))
    spec = SampleSpec(batch.slots, batch.mask.sum(1), batch.types)
    runs = [
        sample(model, spec, steps=5, generator=torch.Generator().manual_seed(3)) for _ in range(2)
    ]
    assert torch.equal(runs[0].frac, runs[1].frac) and torch.equal(runs[0].lattice, runs[1].lattice)
    assert torch.equal(runs[0].types, batch.types)
    assert float(runs[0].frac.min()) >= 0 and float(runs[0].frac.max()) < 1
    pc = sample(model, spec, sampler="pc", steps=3, generator=torch.Generator().manual_seed(3))
    assert pc.frac.shape == runs[0].frac.shape


def test_sampling_in_bfloat16_stays_close_to_float32():
    """``--precision bfloat16`` runs the network under autocast: matrix products in bfloat16,
    messages summed per atom; the chain must run and land near the float32 one."""
    from pccd.diffusion import network_precision
    from pccd.families.atoms.diffusion import AtomDiffusion

    torch.manual_seed(0)
    model = AtomDiffusion(TINY)
    batch = tiny_arrays().batch(np.arange(3))
    spec = SampleSpec(batch.slots, batch.mask.sum(1), batch.types)
    full = sample(model, spec, steps=5, generator=torch.Generator().manual_seed(3))
    with network_precision("bfloat16", "cpu"):
        half = sample(model, spec, steps=5, generator=torch.Generator().manual_seed(3))
    assert half.frac.dtype == torch.float32 and torch.isfinite(half.lattice).all()
    shift = (half.frac - full.frac + 0.5) % 1 - 0.5  # on the torus
    assert float(shift.abs().max()) < 0.05


def test_de_novo_cells_hold_exactly_the_requested_elements():
    torch.manual_seed(0)
    from pccd.families.atoms.diffusion import AtomDiffusion

    model = AtomDiffusion(TINY)
    slots = torch.tensor([[8, 12, 25]] * 6 + [[11, 17, 0]] * 2)
    counts = torch.tensor([3, 4, 7, 12, 16, 5, 2, 8])
    out = sample(model, SampleSpec(slots, counts), steps=4, generator=torch.Generator())
    for i in range(len(counts)):
        got = set(out.types[i][out.mask[i]].tolist())
        assert got == {int(z) for z in slots[i] if z}
    # guided de novo sampling: empty slots stay impossible (they once turned into NaN)
    gap = torch.tensor([2.0] * 8)
    spec = SampleSpec(slots, counts, band_gap=gap, stability=torch.ones(8, dtype=torch.long))
    out = sample(model, spec, steps=4, guidance=3.0, generator=torch.Generator())
    for i in range(len(counts)):
        assert set(out.types[i][out.mask[i]].tolist()) == {int(z) for z in slots[i] if z}


def test_timestep_grid_descends_to_zero():
    assert timestep_grid(1000, None)[:2] == [1000, 999] and timestep_grid(1000, None)[-1] == 0
    grid = timestep_grid(1000, 10)
    assert len(grid) == 11 and grid[0] == 1000 and grid[-2] == 1 and grid[-1] == 0


def test_count_prior_draws_at_least_one_atom_per_element():
    prior = AtomCountPrior.from_arrays(np.array([2, 4, 4, 8]), np.array([[8, 12, 0]] * 4))
    drawn = prior.draw(torch.tensor([3] * 50 + [2] * 50), torch.Generator().manual_seed(0))
    assert int(drawn[:50].min()) >= 3  # no data for ternaries: any count ≥ 3
    assert set(drawn[50:].tolist()) <= {2, 4, 8}
    assert math.isclose(prior.counts[2, 4], 2)


@pytest.fixture(scope="module")
def atoms_model_dir(tmp_path_factory):
    """A tiny atom model trained for a few seconds and exported like a shipped one."""
    run_dir = tmp_path_factory.mktemp("atoms-run")
    _tiny_run(run_dir)
    return export_pretrained(run_dir, tmp_path_factory.mktemp("atoms-model"), name="atoms-tiny")


def test_exported_atom_model_loads_through_the_seam(atoms_model_dir):
    info = describe_model(atoms_model_dir)
    assert (info.family, info.name, info.samplers[0]) == ("atoms", "atoms-tiny", "pc")
    assert json.loads((atoms_model_dir / "pccd.json").read_text())["family"] == "atoms"
    pipe = load_pretrained(atoms_model_dir, "cpu")
    assert isinstance(pipe, Generator)
    samples = pipe.generate(Request.parse(["Mg", "O"]), 5, steps=4, seed=1, batch_size=3)
    assert [s.index for s in samples] == list(range(5))
    again = pipe.generate(Request.parse(["Mg", "O"]), 5, steps=4, seed=1, batch_size=3)
    for a, b in zip(samples, again, strict=True):
        assert (a.structure is None) == (b.structure is None)
        if a.structure is not None:
            assert np.array_equal(a.structure.frac_coords, b.structure.frac_coords)
    csp = pipe.generate(Request.parse(formula="Mg2O2"), 2, steps=3)
    for s in csp:
        if s.structure is not None:
            assert s.structure.composition.formula.replace(" ", "") == "Mg2O2"


def test_atom_model_refuses_what_it_cannot_do(atoms_model_dir):
    pipe = load_pretrained(atoms_model_dir, "cpu")
    with pytest.raises(ValueError, match="magnetic ordering"):
        pipe.check_request(Request.parse(["Fe", "O"], magnetic="FM"))
    with pytest.raises(ValueError, match="sampler must be one of pc, sde, ode"):
        pipe.check_options(sampler="ddim")
    with pytest.raises(ValueError, match="repulsion"):
        pipe.check_options(repulsion=0.8)
    with pytest.raises(ValueError, match="1–1000"):
        pipe.check_options(steps=5000)


def test_quality_probe_counts_every_crystal():
    """The probe runs on an untrained model and reports shares over all of its crystals."""
    from pccd.families.atoms.diffusion import AtomDiffusion
    from pccd.families.atoms.probe import QualityProbe

    torch.manual_seed(0)
    arrays = tiny_arrays()
    prior = AtomCountPrior.from_arrays(arrays.num_atoms, arrays.slots)
    probe = QualityProbe(
        arrays, prior, 19.0, n=5, samplers=(("ode", 4),), chunk=2, denovo_sampler=("ode", 4)
    )
    got = probe(AtomDiffusion(TINY))
    for key in ("csp_ode_plausible", "csp_ode_match", "denovo_ode_plausible"):
        assert 0.0 <= got[key] <= 1.0
        assert got[key] * 5 == pytest.approx(round(got[key] * 5))


def test_generate_and_csp_commands_take_an_atom_model(atoms_model_dir, tmp_path, capsys):
    """The commands a user runs are the same for an atom model: generate (de novo and
    formula), resume, csp; and a point-cloud-only option is refused in one line."""
    from pccd.cli import main
    from tests.test_cli import assert_user_error, write_split

    model = str(atoms_model_dir)
    out = tmp_path / "gen"
    args = ["generate", "--model", model, "--elements", "Mg,O", "-n", "3", "--steps", "3"]
    assert main([*args, "--out", str(out), "--batch-size", "2"]) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert json.loads((out / "run.json").read_text())["sampler"] == "pc"
    before = (out / "summary.csv").read_bytes()
    assert main([*args, "--out", str(out), "--batch-size", "2"]) == 0  # resumes: nothing to do
    assert (out / "summary.csv").read_bytes() == before
    capsys.readouterr()
    assert main([*args, "--sampler", "ddim", "--out", str(tmp_path / "x")]) == 2
    assert_user_error(2, capsys.readouterr().err, "pc, sde, ode")
    assert not (tmp_path / "x").exists()
    split = write_split(tmp_path / "val.csv", {"a": nacl(), "b": silicon()})
    csp = tmp_path / "csp"
    code = main(["csp", str(split), "--model", model, "-n", "2", "-k", "2", "--steps", "3",
                 "--out", str(csp)])  # fmt: skip
    assert code == 0
    candidates = list(csv.DictReader((csp / "candidates.csv").open()))
    assert len(candidates) == 4
    metrics = json.loads((csp / "metrics.json").read_text())
    assert metrics["model"]["family"] == "atoms" and metrics["settings"]["sampler"] == "pc"
    capsys.readouterr()
    bad = ["csp", str(split), "--model", model, "--formula-decoding", "cluster", "--out"]
    assert main([*bad, str(tmp_path / "y")]) == 2
    assert_user_error(2, capsys.readouterr().err, "point-cloud")


def test_an_atom_model_samples_in_bfloat16_only_where_the_hardware_has_it(
    atoms_model_dir, tmp_path, monkeypatch
):
    """precision=None is the family's choice: bfloat16 where native, else float32; a rerun of
    a run directory that names no precision resumes at the precision the run recorded."""
    import pccd.families.atoms.pipeline as atoms_pipeline
    from pccd.cli import main

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(atoms_pipeline, "native_bfloat16", lambda device, n=native: n)
        assert load_pretrained(atoms_model_dir, "cpu").precision == expected
        assert load_pretrained(atoms_model_dir, "cpu", precision="float32").precision == "float32"
    out = tmp_path / "gen"
    args = ["generate", "--model", str(atoms_model_dir), "--elements", "Mg,O", "-n", "2",
            "--steps", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0  # made in float32 (native: False)
    assert json.loads((out / "run.json").read_text())["precision"] == "float32"
    monkeypatch.setattr(atoms_pipeline, "native_bfloat16", lambda device: True)
    (out / "summary.csv").write_text((out / "summary.csv").read_text().splitlines()[0] + "\n")
    assert main(args) == 0  # resumed (both crystals made again), not refused
    assert json.loads((out / "run.json").read_text())["precision"] == "float32"
    assert len((out / "summary.csv").read_text().splitlines()) == 3


def test_export_goes_through_the_family_registry(tmp_path):
    from pccd.errors import InputError
    from pccd.generator import export_model

    _tiny_run(tmp_path / "run")
    out = export_model(tmp_path / "run", tmp_path / "my-model")  # the family found from it
    assert describe_model(out).name == "my-model" and describe_model(out).family == "atoms"
    with pytest.raises(InputError, match=r"no train\.json"):
        export_model(tmp_path, tmp_path / "other", family="atoms")
    with pytest.raises(InputError, match="no model family's training output"):
        export_model(tmp_path, tmp_path / "other")
    with pytest.raises(InputError, match="unknown model family 'crystals'"):
        export_model(tmp_path / "run", tmp_path / "other", family="crystals")
    with pytest.raises(InputError, match="dtype: not an export option of atoms models"):
        export_model(tmp_path / "run", tmp_path / "other", dtype="float16")
    assert not (tmp_path / "other").exists()


def test_export_command_takes_an_atom_run(tmp_path, capsys):
    from pccd.cli import main

    _tiny_run(tmp_path / "run")
    code = main(["export", str(tmp_path / "run"), str(tmp_path / "m"), "--hardware", "2 CPUs"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert printed.out.strip() == f"pretrained model written to {tmp_path / 'm'}"
    meta = json.loads((tmp_path / "m" / "pccd.json").read_text())
    assert meta["family"] == "atoms" and meta["training"]["hardware"] == "2 CPUs"
    code = main(["export", str(tmp_path / "run"), str(tmp_path / "m2"), "--dtype", "float16"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: dtype: not an export option") and err[-1] == "\n"


def test_anneal_forks_a_run_and_decays_its_learning_rate(tmp_path):
    from pccd.families.atoms.training import anneal

    _tiny_run(tmp_path / "long")
    before = (tmp_path / "long" / "live.pt").read_bytes()
    anneal(tmp_path / "long", tmp_path / "fork", tiny_arrays(), minutes=0.03, min_lr=1e-5)
    assert (tmp_path / "long" / "live.pt").read_bytes() == before  # the long run is untouched
    saved = json.loads((tmp_path / "fork" / "train.json").read_text())
    assert saved["forked_from"]["run"] == str(tmp_path / "long")
    rows = list(csv.DictReader((tmp_path / "fork" / "curve.csv").open()))
    lrs = [float(r["lr"]) for r in rows if int(r["step"]) > saved["forked_from"]["step"]]
    assert lrs and lrs[-1] < 1e-3 and lrs == sorted(lrs, reverse=True)


def test_a_curve_file_with_other_columns_is_refused_not_mixed_into(tmp_path):
    from pccd.families.atoms.training import _append_csv

    path = tmp_path / "quality.csv"
    _append_csv(path, {"step": 1, "csp_ode_match": 0.1}, ["step", "csp_ode_match"])
    _append_csv(path, {"step": 2, "csp_ode_match": 0.2}, ["step", "csp_ode_match"])
    with pytest.raises(ValueError, match="move the old file aside"):
        _append_csv(path, {"step": 3, "csp_pc_match": 0.3}, ["step", "csp_pc_match"])
    assert path.read_text().splitlines() == ["step,csp_ode_match", "1,0.1", "2,0.2"]


def test_the_shipped_atom_model_makes_crystals_that_look_like_crystals():
    """pccd-atoms through the seam, default sampler: 20 de novo crystals for 4 element lists.
    Measured on 1,000 val lists: 89.3% plausible, 51.1% above P1, 100% exact elements
    (benchmarks/results/atoms/a1_vs_a2/generation_quality_a2_mp_pccd_pc100.json); the floors
    here are far below that, so a broken model or sampler fails and the noise of 20 samples
    does not."""
    from pccd.evaluate.geometry import geometry_summary

    pipe = load_pretrained("pccd-atoms", "cpu")
    assert pipe.meta["family"] == "atoms" and pipe.default_steps("pc") == 100
    lists = [["Mg", "Mn", "O"], ["Na", "Cl"], ["Li", "Fe", "P"], ["Ga", "As"]]
    requests = [Request.parse(els) for els in lists for _ in range(5)]
    samples = pipe.generate(requests, seed=0)
    made = [s.structure for s in samples]
    summary = geometry_summary(made)
    assert summary.plausible_share >= 0.5, summary
    assert summary.above_p1_share >= 0.15, summary
    for structure, request in zip(made, requests, strict=True):
        assert structure is not None
        assert {e.symbol for e in structure.composition} == {e.symbol for e in request.elements}


def test_a_run_shorter_than_one_log_interval_still_exports(tmp_path):
    from pccd.generator import export_model

    run = TrainRun(model=TINY, optim=OptimConfig(batch_size=4, warmup_steps=2), log_every=10**6)
    train(tmp_path / "run", tiny_arrays(), run, minutes=0.01)
    assert not (tmp_path / "run" / "curve.csv").exists()
    out = export_model(tmp_path / "run", tmp_path / "model")
    meta = json.loads((out / "pccd.json").read_text())
    assert meta["training"]["last_losses"] == {} and meta["training"]["steps"] > 0
