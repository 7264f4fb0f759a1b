"""Training: dataset augmentation keeps the crystal, a tiny run trains, checkpoints resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher

from pccd import data
from pccd import representation as rep
from pccd.conditioning import Conditions
from pccd.training import (
    CrystalDataset,
    PCCDLightning,
    TrainConfig,
    collate,
    export_pretrained,
    fit_conditions_to_weights,
    train,
)
from tests.conftest import KNOWN

TINY = {"preset": "tiny", "batch_size": 4, "val_size": 0, "lr": 1e-3}
OLD_CONDITIONS = ["elements", "band_gap", "magnetic", "formula"]
OLD_COND_DROP = {"elements": 0.1, "band_gap": 0.2, "magnetic": 0.2, "formula": 0.5}


def table() -> data.CrystalTable:
    records = [data.CrystalRecord(k, f(), {"band_gap": 1.0}) for k, f in sorted(KNOWN.items())]
    return data.CrystalTable.from_records(records)


def write_csv(path: Path, e_above_hull: dict[str, float] | None = None) -> Path:
    rows = [{"material_id": k, "band_gap": 1.0, "cif": f().to(fmt="cif")} for k, f in KNOWN.items()]
    if e_above_hull is not None:
        for row in rows:
            row["e_above_hull"] = e_above_hull.get(row["material_id"], np.nan)
    pd.DataFrame(rows).to_csv(path)
    return path


@pytest.mark.parametrize(
    ("atom_order", "layout"), [("by_element", "spread"), ("random", "spread"), ("random", "fixed")]
)
def test_augmented_items_decode_to_the_same_crystal(atom_order, layout):
    tab = table()
    config = rep.RepresentationConfig(row_layout=rep.RowLayout(layout))
    ds = CrystalDataset(tab, config, atom_order=atom_order)
    matcher = StructureMatcher()
    torch.manual_seed(0)
    for i in range(len(ds)):
        for _ in range(3):  # new random order and origin every time
            item = ds[i]
            zs = [int(z) for z in item["elements"] if z > 0]
            out = rep.decode(item["x"].numpy(), zs, config)
            assert matcher.fit(tab.structure(i), out)
    a, b = ds[0]["x"], ds[0]["x"]
    assert not torch.equal(a, b)  # augmentation changes the array, not the crystal


def test_slot_permutation_keeps_conditions_consistent():
    tab = table()
    ds = CrystalDataset(tab, rep.RepresentationConfig(), slot_permutation=True)
    torch.manual_seed(1)
    i = sorted(KNOWN).index("triclinic16")  # Li4 Fe4 O8
    seen = set()
    for _ in range(20):
        item = ds[i]
        zs = item["elements"].tolist()
        counts = dict(zip(zs, item["formula"].tolist(), strict=True))
        assert counts == {3: 4, 26: 4, 8: 8}
        x = item["x"].numpy()
        votes = np.argmax(x[1], axis=1)
        # the rows of each slot carry that slot's element: 8 O atoms → 64 rows of O's slot
        assert np.sum(votes == zs.index(8)) == 64
        seen.add(tuple(zs))
    assert len(seen) > 1  # the permutation really happens


def test_collate_builds_conditions():
    ds = CrystalDataset(table(), rep.RepresentationConfig())
    x, cond = collate([ds[0], ds[1]])
    assert x.shape == (2, 3, 128, 3)
    assert cond.elements.shape == (2, 3) and cond.formula.shape == (2, 3)
    assert torch.all(cond.band_gap == 1.0)
    assert torch.all(cond.magnetic == -1)
    assert torch.all(cond.stability == -1)  # no energies in this table
    records = [
        data.CrystalRecord("a", KNOWN["nacl"](), {"e_above_hull": 0.0}),
        data.CrystalRecord("b", KNOWN["si"](), {"e_above_hull": 0.3}),
        data.CrystalRecord("c", KNOWN["unary"](), {}),
    ]
    ds = CrystalDataset(data.CrystalTable.from_records(records), rep.RepresentationConfig())
    assert [int(ds[i]["stability"]) for i in range(3)] == [1, 0, -1]
    _, cond = collate([ds[0], ds[1], ds[2]])
    assert cond.stability.tolist() == [1, 0, -1] and cond.stability.dtype == torch.long


def test_stability_dropout_default_and_old_configs():
    assert TrainConfig().cond_drop["stability"] == 0.2
    # a config saved before stability existed names no stability dropout: never dropped (and
    # no extra random draw, so the other conditions' dropout is drawn exactly as before)
    old = TrainConfig(**TINY, cond_drop=OLD_COND_DROP)
    cond = Conditions.from_lists([[8, 26]] * 500, band_gap=1.0, stability="stable")
    torch.manual_seed(0)
    dropped = cond.drop(old.cond_drop)
    assert not dropped.stability_missing.any()
    torch.manual_seed(0)
    with_new = cond.drop(TrainConfig().cond_drop)
    for name in OLD_COND_DROP:
        assert torch.equal(dropped.missing()[name], with_new.missing()[name]), name
    assert with_new.stability_missing.any()


def test_old_checkpoints_keep_the_conditions_their_weights_have():
    from pccd.model import PCCDUNet

    old_keys = PCCDUNet.from_preset("tiny", conditions=OLD_CONDITIONS).state_dict().keys()
    new_keys = PCCDUNet.from_preset("tiny").state_dict().keys()
    config = TrainConfig(**TINY, cond_drop=OLD_COND_DROP)
    pinned = fit_conditions_to_weights(config, [f"ema.{k}" for k in old_keys])
    assert pinned.model_overrides == {"conditions": OLD_CONDITIONS}
    assert config.model_overrides == {}  # a copy, the original is untouched
    assert fit_conditions_to_weights(config, [f"model.{k}" for k in new_keys]) is config
    explicit = TrainConfig(**TINY, model_overrides={"conditions": ["elements"]})
    assert fit_conditions_to_weights(explicit, old_keys) is explicit


def test_export_of_a_checkpoint_from_before_stability(tmp_path):
    """A checkpoint written before stability existed (preset + no conditions override, weights
    without a stability embedding) still exports, to a model without the condition."""
    from dataclasses import asdict

    from pccd.generator import Request
    from pccd.model import PCCDUNet
    from pccd.pipeline import PCCDPipeline

    torch.manual_seed(0)
    old = PCCDUNet.from_preset("tiny", conditions=OLD_CONDITIONS)
    config = asdict(TrainConfig(**TINY, cond_drop=OLD_COND_DROP))
    state = {f"{p}.{k}": v for p in ("model", "ema") for k, v in old.state_dict().items()}
    ckpt = tmp_path / "old.ckpt"
    torch.save(
        {"hyper_parameters": {"config": config}, "state_dict": state, "global_step": 7}, ckpt
    )
    model_dir = export_pretrained(ckpt, tmp_path / "model")
    assert json.loads((model_dir / "config.json").read_text())["conditions"] == OLD_CONDITIONS
    pipe = PCCDPipeline.from_pretrained(model_dir, device="cpu")
    assert "stability" not in pipe.trained_conditions
    with pytest.raises(ValueError, match="not trained on stability"):
        pipe.generate(Request.parse(["Na", "Cl"], stability="stable"), 1, steps=2)


def test_warm_start_from_a_model_without_stability_keeps_its_function():
    from pccd.model import PCCDUNet, warm_start
    from pccd.model.unet import example_inputs

    torch.manual_seed(0)
    old = PCCDUNet.from_preset("tiny", conditions=OLD_CONDITIONS)
    new = PCCDUNet.from_preset("tiny")
    added = warm_start(new, old.state_dict())
    assert added == ["cond_encoder.stability_embed.weight"]
    x, t, cond = example_inputs(2)  # stability "stable"
    with torch.no_grad():
        assert torch.allclose(old(x, t, cond), new(x, t, cond), atol=1e-6)
        assert torch.allclose(old(x, t, cond), new(x, t, cond.without(["stability"])), atol=1e-6)


@pytest.mark.slow
def test_tiny_training_run_resumes_and_exports(tmp_path):
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    ckpt = train(csv, out, TrainConfig(**TINY), val_path=csv, max_steps=3, progress=False)
    assert ckpt.exists()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3
    # resume continues from step 3, it does not start again
    train(csv, out, TrainConfig(**TINY), val_path=csv, max_steps=5, progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 5 and state["train_seconds"] > 0
    assert (out / "logs" / "version_0" / "metrics.csv").exists()
    assert (out / "logs" / "version_1" / "metrics.csv").exists()  # resumed run: its own log
    model_dir = export_pretrained(ckpt, tmp_path / "model")
    assert (model_dir / "config.json").exists() and (model_dir / "pccd.json").exists()
    meta = json.loads((model_dir / "pccd.json").read_text())
    # the CSV has band gaps but no magnetic ordering: the model card says so
    assert meta["training"]["label_counts"]["magnetic"] == 0
    assert meta["training"]["label_counts"]["stability"] == 0  # no e_above_hull column either
    assert meta["trained_conditions"] == ["elements", "band_gap", "formula"]


def test_bf16_mixed_precision_trains_fp32_weights_and_a_run_may_switch(tmp_path):
    """bf16 autocast is an execution setting: weights, EMA and loss stay fp32, the weights
    move, and a run started in fp32 resumes in bf16 (the long run switched this way)."""
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    train(csv, out, TrainConfig(**TINY), max_steps=2, progress=False)
    before = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    train(csv, out, TrainConfig(**TINY), max_steps=4, precision="bfloat16", progress=False)
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    after = state["state_dict"]
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))
    with pytest.raises(ValueError, match="precision"):
        train(csv, out, TrainConfig(**TINY), precision="bf16-mixed", progress=False)


def test_stability_labels_train_the_condition_and_the_model_accepts_it(tmp_path):
    from pccd.generator import Request
    from pccd.pipeline import PCCDPipeline

    hulls = {"nacl": 0.0, "si": 0.0, "hexagonal": 0.02, "triclinic16": 0.4, "unary": 0.1}
    csv = write_csv(tmp_path / "set.csv", e_above_hull=hulls)
    ckpt = train(csv, tmp_path / "run", TrainConfig(**TINY), max_steps=1, progress=False)
    model_dir = export_pretrained(ckpt, tmp_path / "model")
    meta = json.loads((model_dir / "pccd.json").read_text())
    assert meta["training"]["label_counts"]["stability"] == len(hulls)
    assert meta["trained_conditions"] == ["elements", "band_gap", "formula", "stability"]
    assert meta["training"]["config"]["cond_drop"]["stability"] == 0.2
    pipe = PCCDPipeline.from_pretrained(model_dir, device="cpu")
    stable = pipe.generate(Request.parse(["Na", "Cl"], stability="stable"), 1, steps=2)
    unstable = pipe.generate(Request.parse(["Na", "Cl"], stability="unstable"), 1, steps=2)
    assert not (stable[0].array == unstable[0].array).all()  # the label reaches the network


def test_resuming_a_run_from_before_stability(tmp_path):
    """A run whose checkpoint predates the stability condition (no conditions override, a
    network without its embedding, no stability dropout) resumes with the network it had."""
    hulls = {"nacl": 0.0, "si": 0.3}
    csv = write_csv(tmp_path / "set.csv", e_above_hull=hulls)
    out = tmp_path / "run"
    config = TrainConfig(**TINY, model_overrides={"conditions": OLD_CONDITIONS})
    ckpt = train(csv, out, config, max_steps=2, progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    saved = state["hyper_parameters"]["config"]  # make it look like an old checkpoint
    saved["model_overrides"] = {}
    saved["cond_drop"] = dict(OLD_COND_DROP)
    torch.save(state, ckpt)
    train(csv, out, TrainConfig(**TINY), max_steps=4, progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    assert not any("stability" in k for k in state["state_dict"])
    assert state["hyper_parameters"]["config"]["model_overrides"]["conditions"] == OLD_CONDITIONS
    model_dir = export_pretrained(ckpt, tmp_path / "model")
    assert (
        "stability" not in json.loads((model_dir / "pccd.json").read_text())["trained_conditions"]
    )


def test_forward_process_options_are_trained_on_and_reach_the_exported_model(tmp_path):
    """snr_shift and v-prediction: in the checkpoint, in pccd.json, in every sampler the
    pipeline builds, and a v model samples deterministically."""
    from pccd.generator import Request
    from pccd.pipeline import PCCDPipeline

    csv = write_csv(tmp_path / "set.csv")
    config = TrainConfig(**TINY, snr_shift=8.0, prediction="v")
    ckpt = train(csv, tmp_path / "run", config, val_path=csv, max_steps=1, progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["config"]["snr_shift"] == 8.0
    model_dir = export_pretrained(ckpt, tmp_path / "model")
    diffusion = json.loads((model_dir / "pccd.json").read_text())["diffusion"]
    assert diffusion["snr_shift"] == 8.0 and diffusion["prediction"] == "v"
    pipe = PCCDPipeline.from_pretrained(model_dir, device="cpu")
    for sampler in ("ddim", "ddpm"):
        scheduler = pipe.make_scheduler(sampler, 5)
        assert (scheduler.snr_shift, scheduler.prediction) == (8.0, "v")
    first, again = (pipe.generate(Request.parse(["Na", "Cl"]), 2, steps=3, seed=4) for _ in "ab")
    np.testing.assert_array_equal(first[0].array, again[0].array)
    with pytest.raises(ValueError, match="snr_shift"):
        TrainConfig(snr_shift=-1.0)
    with pytest.raises(ValueError, match="prediction"):
        TrainConfig(prediction="x0")


def test_pair_loss_option_trains_and_is_refused_where_it_cannot_apply(tmp_path):
    csv = write_csv(tmp_path / "set.csv")
    config = TrainConfig(**TINY, pair_loss_weight=0.1)
    ckpt = train(csv, tmp_path / "run", config, val_path=csv, max_steps=2, progress=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["config"]["pair_loss_weight"] == 0.1
    assert state["global_step"] == 2
    with pytest.raises(ValueError, match="pair_loss_weight"):
        TrainConfig(pair_loss_weight=-1.0)
    with pytest.raises(ValueError, match="spread"):
        TrainConfig(pair_loss_weight=0.1, row_layout="fixed")


def test_atom_attention_model_trains_and_csp_samples(tmp_path):
    from pccd.generator import Request
    from pccd.pipeline import PCCDPipeline

    csv = write_csv(tmp_path / "set.csv")
    tiny = {**TINY, "model_overrides": {**TINY.get("model_overrides", {}), "atom_attention": 1}}
    config = TrainConfig(**tiny)
    ckpt = train(csv, tmp_path / "run", config, val_path=csv, max_steps=2, progress=False)
    pipe = PCCDPipeline.from_pretrained(export_pretrained(ckpt, tmp_path / "model"), device="cpu")
    assert pipe.model.config.atom_attention == 1
    request = Request.parse(None, formula="NaCl")
    first, again = (pipe.generate(request, 2, steps=3, seed=4) for _ in "ab")
    np.testing.assert_array_equal(first[0].array, again[0].array)
    # without a formula a first chain drafts the atom counts; the sample's chain uses them
    calls = []
    denoise = pipe.denoise

    def spy(scheduler, cond, **kwargs):
        calls.append(cond.formula_missing.tolist())
        return denoise(scheduler, cond, **kwargs)

    pipe.denoise = spy
    de_novo = Request.parse(["Na", "Cl"])
    first = pipe.generate(de_novo, 2, steps=3, seed=4)
    assert calls[0] == [True, True] and len(calls) == 2
    np.testing.assert_array_equal(
        first[1].array, pipe.generate(de_novo, 2, steps=3, seed=4)[1].array
    )
    # a draft that decodes to all requested elements gives its counts; one missing one, none
    crystal = KNOWN["nacl"]()
    array = torch.from_numpy(rep.encode(crystal)[0])
    counts = tuple(round(crystal.composition[e]) for e in de_novo.elements)
    assert pipe._with_drafted_formula(de_novo, array).formula == counts
    unary = torch.from_numpy(rep.encode(KNOWN["unary"]())[0])  # its rows vote for one slot
    assert pipe._with_drafted_formula(de_novo, unary).formula is None
    calls.clear()
    pipe.generate(request, 2, steps=3, seed=4)
    assert calls == [[False, False]]  # a formula needs no draft
    with pytest.raises(ValueError, match="spread"):
        TrainConfig(model_overrides={"atom_attention": 1}, row_layout="fixed")


def test_row_layout_option_reaches_the_exported_model(tmp_path):
    csv = write_csv(tmp_path / "set.csv")
    config = TrainConfig(**TINY, row_layout="fixed")
    ckpt = train(csv, tmp_path / "run", config, val_path=csv, max_steps=1, progress=False)
    meta = json.loads((export_pretrained(ckpt, tmp_path / "model") / "pccd.json").read_text())
    assert meta["representation"]["row_layout"] == "fixed"
    with pytest.raises(ValueError, match="not a valid RowLayout"):
        TrainConfig(row_layout="diagonal")


def fake_checkpoint(path: Path, seed: int = 0) -> dict:
    """A checkpoint shaped like a Lightning one of the tiny preset (weights, EMA, Adam state,
    loop state), made without training."""
    from dataclasses import asdict

    from pccd.model import PCCDUNet

    torch.manual_seed(seed)
    model, ema = PCCDUNet.from_preset("tiny"), PCCDUNet.from_preset("tiny")
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    moments = {
        i: {
            "step": torch.tensor(3.0),
            "exp_avg": torch.randn_like(p) * 1e-3,
            "exp_avg_sq": torch.rand_like(p) * 1e-6,
        }
        for i, p in enumerate(model.parameters())
    }
    groups = [{"lr": 1e-3, "betas": (0.9, 0.99), "params": list(moments)}]
    ckpt = {
        "epoch": 1,
        "global_step": 3,
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 3}}},
        "optimizer_states": [{"state": moments, "param_groups": groups}],
        "hyper_parameters": {"config": asdict(TrainConfig(**TINY))},
        "train_seconds": 12.5,
        "label_counts": {"rows": 7, "band_gap": 7, "magnetic": 0, "stability": 0},
    }
    torch.save(ckpt, path)
    return ckpt


def assert_same_checkpoint(original: dict, rebuilt: Path) -> None:
    """Weights and EMA bit-exact (and in their order), moments bf16-rounded, the rest equal."""
    got = torch.load(rebuilt, map_location="cpu", weights_only=False)
    assert list(got["state_dict"]) == list(original["state_dict"])
    for name, tensor in original["state_dict"].items():
        assert got["state_dict"][name].dtype == tensor.dtype
        assert torch.equal(got["state_dict"][name], tensor), name
    for opt_a, opt_b in zip(original["optimizer_states"], got["optimizer_states"], strict=True):
        assert opt_a["param_groups"] == opt_b["param_groups"]
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for param, state in opt_a["state"].items():
            assert torch.equal(opt_b["state"][param]["step"], state["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                moment = opt_b["state"][param][key]
                assert moment.dtype == torch.float32
                assert torch.equal(moment, state[key].to(torch.bfloat16).float())
    rest = {k for k in original if k not in ("state_dict", "optimizer_states")}
    assert rest == set(got) - {"state_dict", "optimizer_states"}
    assert all(got[k] == original[k] for k in rest)


def test_pack_shards_under_the_cap_and_round_trips(tmp_path):
    from pccd.training import PACK_MANIFEST, pack_checkpoint, unpack_checkpoint

    ckpt = fake_checkpoint(tmp_path / "last.ckpt")
    packed = tmp_path / "packed"
    files = pack_checkpoint(tmp_path / "last.ckpt", packed)  # default cap: one shard
    assert [f.name for f in files] == [PACK_MANIFEST, "tensors-001.pt"]
    assert_same_checkpoint(ckpt, unpack_checkpoint(packed, tmp_path / "run"))

    (packed / "notes.txt").write_text("not ours")
    files = pack_checkpoint(tmp_path / "last.ckpt", packed, max_file_mb=0.05)
    shards = [f.name for f in files[1:]]
    assert len(shards) >= 5 and shards == [f"tensors-{i:03d}.pt" for i in range(1, len(shards) + 1)]
    assert all(f.stat().st_size <= 50_000 for f in files)
    assert_same_checkpoint(ckpt, unpack_checkpoint(packed, tmp_path / "run"))
    assert sorted(p.name for p in packed.iterdir()) == sorted([*shards, PACK_MANIFEST, "notes.txt"])

    # re-packing with fewer shards removes the ones the new pack does not use
    files = pack_checkpoint(tmp_path / "last.ckpt", packed, max_file_mb=0.2)
    assert 1 < len(files) - 1 < len(shards)
    assert sorted(p.name for p in packed.iterdir()) == sorted(
        [f.name for f in files] + ["notes.txt"]
    )
    assert_same_checkpoint(ckpt, unpack_checkpoint(packed, tmp_path / "run"))


def test_pack_refuses_oversized_tensors_and_mixed_shards(tmp_path):
    import shutil

    from pccd.training import pack_checkpoint, unpack_checkpoint

    fake_checkpoint(tmp_path / "a.ckpt", seed=0)
    fake_checkpoint(tmp_path / "b.ckpt", seed=1)
    with pytest.raises(ValueError, match=r"state_dict/model\.up\.0\.blocks\.0\.conv1\.weight"):
        pack_checkpoint(tmp_path / "a.ckpt", tmp_path / "big", max_file_mb=0.01)
    assert not (tmp_path / "big").exists()  # refused before writing anything
    pack_checkpoint(tmp_path / "a.ckpt", tmp_path / "a", max_file_mb=0.05)
    pack_checkpoint(tmp_path / "b.ckpt", tmp_path / "b", max_file_mb=0.05)
    # as a re-pack killed after its first shards would leave it
    shutil.copy(tmp_path / "b" / "tensors-002.pt", tmp_path / "a" / "tensors-002.pt")
    with pytest.raises(ValueError, match=r"tensors-002\.pt belongs to another pack"):
        unpack_checkpoint(tmp_path / "a", tmp_path / "run")
    (tmp_path / "b" / "tensors-003.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"tensors-003\.pt"):
        unpack_checkpoint(tmp_path / "b", tmp_path / "run")


def test_the_older_two_file_pack_still_unpacks(tmp_path):
    """``weights.pt`` (state dict, fp32) + ``state.pt`` (the rest, Adam moments in bf16), as
    packs were written before sharding; a new pack into the same directory replaces them."""
    import copy

    from pccd.training import PACK_MANIFEST, pack_checkpoint, unpack_checkpoint

    ckpt = fake_checkpoint(tmp_path / "last.ckpt")
    old = tmp_path / "old"
    old.mkdir()
    rest = copy.deepcopy({k: v for k, v in ckpt.items() if k != "state_dict"})
    for state in rest["optimizer_states"][0]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = state[key].to(torch.bfloat16)
    torch.save({"state_dict": ckpt["state_dict"]}, old / "weights.pt")
    torch.save(rest, old / "state.pt")
    assert_same_checkpoint(ckpt, unpack_checkpoint(old, tmp_path / "run"))
    pack_checkpoint(tmp_path / "last.ckpt", old)
    assert sorted(p.name for p in old.iterdir()) == [PACK_MANIFEST, "tensors-001.pt"]
    assert_same_checkpoint(ckpt, unpack_checkpoint(old, tmp_path / "run"))


def test_export_in_float16(tmp_path):
    from dataclasses import asdict

    from pccd.model import PCCDUNet
    from pccd.pipeline import PCCDPipeline

    ckpt = fake_checkpoint(tmp_path / "last.ckpt")
    full = export_pretrained(tmp_path / "last.ckpt", tmp_path / "fp32")
    half = export_pretrained(tmp_path / "last.ckpt", tmp_path / "fp16", dtype="float16")
    assert json.loads((full / "config.json").read_text())["weights_dtype"] == "float32"
    assert json.loads((half / "config.json").read_text())["weights_dtype"] == "float16"
    size = (half / "model.pt").stat().st_size
    assert size < 0.6 * (full / "model.pt").stat().st_size
    pipe = PCCDPipeline.from_pretrained(half, device="cpu")
    for name, tensor in pipe.model.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, ckpt["state_dict"][f"ema.{name}"].half().float())
    assert PCCDUNet.from_pretrained(full).state_dict().keys() == pipe.model.state_dict().keys()
    # a float16 model seeds a fine-tune in float32
    module = PCCDLightning(asdict(TrainConfig(**TINY, init_from=str(half))))
    for name, tensor in module.model.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, pipe.model.state_dict()[name])
    with pytest.raises(ValueError, match="unknown weights dtype"):
        export_pretrained(tmp_path / "last.ckpt", tmp_path / "bf16", dtype="bfloat16")


@pytest.mark.slow
def test_packed_checkpoint_resumes(tmp_path):
    from pccd.training import pack_checkpoint, unpack_checkpoint

    csv = write_csv(tmp_path / "set.csv")
    ckpt = train(csv, tmp_path / "run", TrainConfig(**TINY), max_steps=3, progress=False)
    files = pack_checkpoint(ckpt, tmp_path / "packed", max_file_mb=0.1)
    assert len(files) > 3 and all(f.stat().st_size <= 100_000 for f in files)
    assert sum(f.stat().st_size for f in files) < ckpt.stat().st_size
    rebuilt = unpack_checkpoint(tmp_path / "packed", tmp_path / "fresh")
    assert_same_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=False), rebuilt)
    train(csv, tmp_path / "fresh", TrainConfig(**TINY), max_steps=5, progress=False)
    state = torch.load(rebuilt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 5  # continued from the unpacked step 3
    with pytest.raises(FileNotFoundError, match="packed"):
        unpack_checkpoint(tmp_path, tmp_path / "other")


def test_file_order_keeps_origin_and_atom_order():
    tab = table()
    ds = CrystalDataset(tab, rep.RepresentationConfig(), atom_order="file", random_shift=False)
    for i in range(len(ds)):
        assert torch.equal(ds[i]["x"], ds[i]["x"])  # no augmentation: the same array each time


def test_warm_start_adds_layers_as_identity():
    from pccd.model import PCCDUNet, warm_start
    from pccd.model.unet import example_inputs

    torch.manual_seed(0)
    small = PCCDUNet.from_preset("tiny")
    big = PCCDUNet.from_preset(
        "tiny", attention_levels=None, periodic_features=True, self_condition=True, pair_bias=True
    )
    new = warm_start(big, small.state_dict())
    assert any(".attn." in name for name in new)
    x, t, cond = example_inputs(2)
    with torch.no_grad():
        assert torch.allclose(small(x, t, cond), big(x, t, cond), atol=1e-6)
        assert torch.allclose(small(x, t, cond), big(x, t, cond, x_self=x), atol=1e-6)
        for module in big.modules():  # once the pair biases learn, the output depends on them
            if getattr(module, "pair", None) is not None:
                module.pair.normal_(0.0, 1.0)
        assert not torch.allclose(small(x, t, cond), big(x, t, cond), atol=1e-4)


@pytest.mark.slow
def test_self_conditioning_trains_and_samples():
    from pccd.diffusion import DDIMScheduler, DDPMScheduler, denoise, diffusion_loss
    from pccd.model import PCCDUNet
    from pccd.model.unet import example_inputs

    torch.manual_seed(0)
    model = PCCDUNet.from_preset("tiny", self_condition=True)
    assert model.self_conditioning
    x, _, cond = example_inputs(4)
    loss = diffusion_loss(model, DDPMScheduler(), x.clamp(-1, 1), cond)
    loss.backward()
    # the extra input channels of the stem receive gradient: the estimate is really used
    assert model.stem.weight.grad[:, 9:].abs().sum() > 0
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(3)
    out = denoise(model, scheduler, cond, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint(tmp_path):
    """A run killed mid-training leaves an intact last.ckpt from which the next run continues."""
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    code = (
        "import sys; from pccd.training import TrainConfig, train; "
        f"train(sys.argv[1], sys.argv[2], TrainConfig(**{TINY!r}), "
        "checkpoint_minutes=0.0, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(csv), str(out)], env=os.environ.copy())
    ckpt = out / "last.ckpt"
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(1.0)  # let it train (and checkpoint) a little more, then kill it hard
    finally:
        proc.kill()
        proc.wait()
    assert ckpt.exists(), "no checkpoint written"
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step >= 1
    train(csv, out, TrainConfig(**TINY), max_steps=step + 2, progress=False)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == step + 2


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    """`pccd train --devices 2 --strategy ddp` runs two gloo processes on CPU and checkpoints."""
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "pccd.cli", "train", "--data", str(csv), "--out", str(out),
        "--preset", "tiny", "--batch-size", "2", "--val-size", "0", "--max-steps", "2",
        "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--threads", "1", "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["config"]["batch_size"] == 2


@pytest.mark.slow
def test_max_minutes_counts_only_the_current_run(tmp_path):
    """A resumed run gets its own --max-minutes (Lightning's max_time would restore the
    elapsed time of earlier runs and stop at once)."""
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    train(csv, out, TrainConfig(**TINY), max_minutes=0.03, progress=False)
    step = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert step >= 1
    train(csv, out, TrainConfig(**TINY), max_minutes=0.03, max_steps=step + 3, progress=False)
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == step + 3


def test_train_cli_options(tmp_path, capsys):
    from pccd.cli import main
    from pccd.cli.support import key_values as _key_values

    assert _key_values(["layout=grid2d", "channel_mults=[1,2]", "ema_decay=0.9"]) == {
        "layout": "grid2d",
        "channel_mults": [1, 2],
        "ema_decay": 0.9,
    }
    csv = write_csv(tmp_path / "set.csv")
    args = ["train", "--data", str(csv), "--out", str(tmp_path / "r"), "--quiet"]
    assert main([*args, "--option", "no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    assert main([*args, "--option", "ema_decay"]) == 2
    ok = [*args, "--preset", "tiny", "--batch-size", "2", "--val-size", "0", "--max-steps", "1"]
    assert main([*ok, "--option", "atom_order=random", "--model-option", "base_channels=4"]) == 0
    state = torch.load(tmp_path / "r" / "last.ckpt", map_location="cpu", weights_only=False)
    cfg = state["hyper_parameters"]["config"]
    assert cfg["atom_order"] == "random" and cfg["model_overrides"] == {"base_channels": 4}


def test_train_config_rejects_unknown_loss_options():
    # refused when the config is made, before any run directory exists
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="p2")
    with pytest.raises(ValueError, match="snr_gamma"):
        TrainConfig(loss_weighting="min_snr", snr_gamma=-1.0)
    with pytest.raises(ValueError, match="loss must be"):
        TrainConfig(loss="huber")
    assert TrainConfig(loss_weighting="min_snr").snr_gamma == 5.0


def test_resume_says_which_asked_settings_the_checkpoint_overrides(tmp_path, caplog):
    """A resumed run keeps its recipe; an lr asked for on resume is reported, not dropped
    silently, and asking again for the same settings reports nothing."""
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    train(csv, out, TrainConfig(**TINY), max_steps=1, progress=False)
    with caplog.at_level("WARNING", logger="pccd.training"):
        train(csv, out, TrainConfig(**TINY), max_steps=2, progress=False)
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]
    with caplog.at_level("WARNING", logger="pccd.training"):
        train(csv, out, TrainConfig(**{**TINY, "lr": 5e-4}), max_steps=3, progress=False)
    (message,) = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert "lr 0.0005 (checkpoint: " in message
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["config"]["lr"] == TINY["lr"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pccd.training"):
        train(csv, out, max_steps=4, progress=False)  # no config asked: nothing is ignored
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


def test_lr_factor_warms_up_holds_and_anneals_to_zero():
    from pccd.training import lr_factor

    assert [lr_factor(s) for s in (0, 10, 10_000)] == [1.0, 1.0, 1.0]  # the paper: constant
    assert [lr_factor(s, warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    decay = {"decay_start": 10, "decay_steps": 4}
    assert lr_factor(9, **decay) == 1.0 and lr_factor(10, **decay) == 1.0
    assert lr_factor(12, **decay) == pytest.approx(0.5)  # half-way down the half-cosine
    assert lr_factor(14, **decay) == 0.0 and lr_factor(100, **decay) == 0.0  # no restart
    assert lr_factor(0, warmup=2, decay_steps=2) == pytest.approx(0.5)  # both at once
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig(lr_decay_steps=-1)


def test_lr_schedule_steps_with_the_optimiser_and_survives_resume(tmp_path):
    """The rate of the next optimiser step is what lr_factor says, across resumes, so a decay
    phase can be split over working sessions (a scheduler restarted on resume would not)."""
    from pccd.training import lr_factor

    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    schedule = {"lr_warmup_steps": 2, "lr_decay_start": 2, "lr_decay_steps": 4}
    cfg = TrainConfig(**TINY, **schedule)
    for steps in (1, 3, 5):
        train(csv, out, cfg, max_steps=steps, progress=False)
        state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
        assert state["global_step"] == steps
        next_lr = state["optimizer_states"][0]["param_groups"][0]["lr"]
        factor = lr_factor(steps, warmup=2, decay_start=2, decay_steps=4)
        assert next_lr == pytest.approx(1e-3 * factor)
    assert 0 < factor < 0.5  # the last check was inside the decay, not at a plateau


def contrast_table() -> data.CrystalTable:
    """Na–Cl twice (a metal and an insulator: contrast), Na–Cl without a gap, Si alone."""
    from pymatgen.core import Lattice, Structure

    rocksalt = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cscl = Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    silicon = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    records = [
        data.CrystalRecord("metal", cscl, {"band_gap": 0.0}),
        data.CrystalRecord("insulator", rocksalt, {"band_gap": 5.0}),
        data.CrystalRecord("unknown", rocksalt.copy(), {}),
        data.CrystalRecord("alone", silicon, {"band_gap": 0.6}),
    ]
    return data.CrystalTable.from_records(records)


def test_band_gap_contrast_rows_are_labelled_rows_of_mixed_element_lists():
    from pccd.training import band_gap_contrast_rows

    assert band_gap_contrast_rows(contrast_table()).tolist() == [True, True, False, False]


def test_contrast_sampler_draws_contrast_rows_by_their_weight():
    from pccd.training import band_gap_contrast_rows, contrast_sampler

    contrast = band_gap_contrast_rows(contrast_table())
    torch.manual_seed(0)
    sampler = contrast_sampler(contrast, 4.0)
    draws = np.array([i for _ in range(2000) for i in sampler])
    assert len(list(sampler)) == 4  # an epoch stays one table's worth of draws
    share = np.bincount(draws, minlength=4) / len(draws)
    # weights 4, 4, 1, 1 → 0.4, 0.4, 0.1, 0.1
    assert share[:2] == pytest.approx([0.4, 0.4], abs=0.02)
    assert share[2:] == pytest.approx([0.1, 0.1], abs=0.02)
    torch.manual_seed(0)
    again = np.array([i for _ in range(2000) for i in contrast_sampler(contrast, 4.0)])
    assert (again == draws).all()  # seeded by torch's global RNG


def test_band_gap_contrast_weight_trains_and_is_refused_when_not_positive(tmp_path):
    with pytest.raises(ValueError, match="band_gap_contrast_weight"):
        TrainConfig(band_gap_contrast_weight=0.0)
    csv = write_csv(tmp_path / "set.csv")
    out = tmp_path / "run"
    train(csv, out, TrainConfig(**TINY, band_gap_contrast_weight=4.0), max_steps=2, progress=False)
    state = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["config"]["band_gap_contrast_weight"] == 4.0
    assert state["label_counts"]["band_gap_contrast"] == 0  # every fixture row has gap 1.0
