"""Batched relaxation: many crystals relaxed in lockstep, the MLIP called once per step.

Each crystal keeps its own ASE ``FIRE`` optimizer on a ``FrechetCellFilter`` — the very objects
:func:`pccd.screen.relax.relax` uses, with the same convergence test, step cap and the same
collapse / blow-up / implausible-volume checks (:func:`~pccd.screen.relax.check_step`) — so the
trajectory of each crystal and its failure classification are those of the per-crystal engine.
Only the force evaluation changes: at every step the structures of all active crystals go to
the MLIP together (CHGNet and SevenNet-0 evaluate them as one batched graph; any other ASE
calculator is called crystal by crystal) and each crystal's results are handed to its optimizer
through a caching calculator. A crystal that finishes leaves the batch and the next input takes
its place, so the batch stays full until the inputs run out.

torch-sim (``torch-sim-atomistic``) would do the same, but its releases that run on Python 3.11
(≤ 0.3.0) have no CHGNet model, and the ones after need Python ≥ 3.12.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.filters import FrechetCellFilter
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from pccd.errors import InputError
from pccd.mlip import EVAL_ERRORS, MLIP, MLIPError
from pccd.screen.engines import DEFAULT_BATCH_SIZE
from pccd.screen.relax import (
    Relaxation,
    RelaxationError,
    check_input_volume,
    check_step,
    finish_relaxation,
)

Results = dict[str, Any]
#: an evaluator maps a batch of Atoms to one results dict, or the exception it raised, each
Evaluator = Callable[[list[Atoms]], list["Results | Exception"]]


class _Cached(Calculator):
    """Hands the optimizer the results computed for the whole batch (never computes itself)."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def store(self, atoms: Atoms, results: Results) -> None:
        self.atoms = atoms.copy()
        self.results = dict(results)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("batched relaxation asked for a property it did not evaluate")


# ---- batch evaluators: list of Atoms -> list of results dicts (ASE units) --------------------
def _generic_evaluator(mlip: MLIP, stress: bool, forces: bool = True) -> Evaluator:
    """Any ASE calculator: one call per crystal (no speed-up, same numbers as the ASE engine).

    Errors are caught crystal by crystal, right where they happen: a stateful calculator
    (EMT) may answer a retry with another message than the first failure.
    """

    def evaluate(batch: list[Atoms]) -> list[Results | Exception]:
        calc = mlip.calculator
        out: list[Results | Exception] = []
        for atoms in batch:
            a = atoms.copy()
            a.calc = calc
            try:
                res: Results = {}
                if forces:
                    res["forces"] = np.array(a.get_forces(), copy=True)
                res["energy"] = float(a.get_potential_energy())
                try:
                    res["free_energy"] = float(a.get_potential_energy(force_consistent=True))
                except PropertyNotImplementedError:
                    res["free_energy"] = res["energy"]
                if stress:
                    res["stress"] = np.array(a.get_stress(), copy=True)
            except EVAL_ERRORS as exc:
                out.append(exc)
                continue
            out.append(res)
        return out

    return evaluate


def _chgnet_evaluator(mlip: MLIP, forces: bool = True) -> Evaluator:
    """CHGNet: graphs converted one by one, one batched forward (as ``CHGNetCalculator``)."""

    def evaluate(batch: list[Atoms]) -> list[Results | Exception]:
        calc = mlip.calculator
        model = calc.model
        graphs = [model.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in batch]
        task = "efs" if forces else "e"
        preds = model.predict_graph(graphs, task=task, batch_size=len(graphs))
        if isinstance(preds, dict):
            preds = [preds]
        out: list[Results | Exception] = []
        for atoms, p in zip(batch, preds, strict=True):
            factor = len(atoms) if model.is_intensive else 1
            energy = float(p["e"]) * factor
            if not forces:
                out.append({"energy": energy, "free_energy": energy})
                continue
            out.append(
                {
                    "energy": energy,
                    "free_energy": energy,
                    "forces": np.asarray(p["f"], dtype=float),
                    "stress": np.asarray(p["s"], dtype=float) * calc.stress_weight,
                }
            )
        return out

    return evaluate


def _sevennet_evaluator(mlip: MLIP, forces: bool = True) -> Evaluator:
    """SevenNet: one batched graph through the model (as ``SevenNetCalculator`` per crystal).

    Without ``forces`` the model runs up to the total energy, without gradients: its last
    module (``force_output``) only differentiates that energy, so the energies are the same.
    """

    def energy_only(model, data):
        import torch  # only SevenNet's path needs torch; the rest of this module runs without

        children = dict(model.named_children())
        if "force_output" not in children:  # not the layout of sevenn 0.13: the full model
            return model(data)
        with torch.no_grad():
            data = model._preprocess(data)
            for name, module in children.items():
                if name != "force_output":
                    data = module(data)
        return data

    def evaluate(batch: list[Atoms]) -> list[Results | Exception]:
        # optional extra: screen (SevenNet and its torch_geometric)
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        calc = mlip.calculator
        for atoms in batch:
            calc.set_atoms(atoms)  # unknown elements: the calculator's ValueError
        graphs = []
        for atoms in batch:
            data = AtomGraphData.from_numpy_dict(
                unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=False)
            )
            if calc.modal:
                data[KEY.DATA_MODALITY] = calc.modal
            graphs.append(data)
        data = Batch.from_data_list(graphs)
        data.to(calc.device)
        calc.model.set_is_batch_data(True)  # the calculator keeps its model in single-graph mode
        try:
            output = calc.model(data) if forces else energy_only(calc.model, data)
        finally:
            calc.model.set_is_batch_data(False)
        energies = output[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        if not forces:
            return [{"energy": float(e), "free_energy": float(e)} for e in energies]
        all_forces = output[KEY.PRED_FORCE].detach().cpu().numpy()
        stresses = (-output[KEY.PRED_STRESS]).detach().cpu().numpy().reshape(len(batch), 6)
        out: list[Results | Exception] = []
        start = 0
        for k, atoms in enumerate(batch):
            n = len(atoms)
            energy = float(energies[k])
            out.append(
                {
                    "energy": energy,
                    "free_energy": energy,
                    "forces": all_forces[start : start + n].astype(float),
                    "stress": stresses[k][[0, 1, 2, 4, 5, 3]].astype(float),  # to ASE Voigt
                }
            )
            start += n
        return out

    return evaluate


def batch_evaluator(mlip: MLIP, stress: bool = True, forces: bool = True) -> Evaluator:
    """The batched evaluation for ``mlip``: CHGNet and SevenNet-0 batched, others per crystal.

    ``forces=False`` evaluates energies only (``"energy"`` and ``"free_energy"``, no forces or
    stress): the single points of reference tables, several times faster for both models.
    """
    if mlip.name == "chgnet":
        return _chgnet_evaluator(mlip, forces)
    if mlip.name == "7net-0":
        return _sevennet_evaluator(mlip, forces)
    return _generic_evaluator(mlip, stress and forces, forces)


# ---- the lockstep relaxation -----------------------------------------------------------------
@dataclass
class _Run:
    key: Any
    structure: Structure
    atoms: Atoms
    optimizer: FIRE  # noqa: F821 (imported where it is made, in _start)
    seconds: float = 0.0  # this crystal's share of the batch's wall time
    initial_raw_energy: float | None = None


def _start(key, structure: Structure, fmax: float, max_steps: int, relax_cell: bool) -> _Run:
    from ase.optimize import FIRE  # half a second of imports that only a relaxation needs

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = _Cached()
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    optimizer = FIRE(target, logfile=None)
    optimizer.fmax = fmax  # what Optimizer.irun sets
    optimizer.max_steps = optimizer.nsteps + max_steps
    return _Run(key, structure, atoms, optimizer)


def _advance(run: _Run) -> bool:
    """One turn of ``Optimizer.irun`` after the forces are in: check, then step unless done."""
    opt = run.optimizer
    gradient = opt.optimizable.get_gradient()
    converged = bool(opt.gradient_converged(gradient))
    if opt.nsteps == 0:
        run.initial_raw_energy = float(run.atoms.get_potential_energy())
    check_step(run.structure, run.atoms, opt.nsteps)
    if converged or opt.nsteps >= opt.max_steps:
        return True
    opt.step()
    opt.nsteps += 1
    return False


def relax_many(
    items: Iterable[tuple[Any, Structure]],
    mlip: MLIP,
    fmax: float = 0.05,
    max_steps: int = 500,
    relax_cell: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[tuple[Any, Relaxation | RelaxationError | MLIPError]]:
    """Relax ``(key, structure)`` pairs in batches of up to ``batch_size``; yield as each ends.

    Yields ``(key, Relaxation)`` or ``(key, error)`` (a :class:`RelaxationError` with the same
    reasons :func:`~pccd.screen.relax.relax` gives, or an :class:`MLIPError`) in the order the
    crystals finish. ``Relaxation.seconds`` (and ``error.seconds``) is the crystal's share of the
    batch's wall time: each evaluation's time split by atom count, plus its own optimizer
    bookkeeping, so the seconds of all crystals add up to the wall time.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be ≥ 1, got {batch_size}")
    evaluate = batch_evaluator(mlip, stress=relax_cell)
    mlip.calculator  # noqa: B018 - loaded before any clock starts
    pending = iter(items)
    active: list[_Run] = []
    exhausted = False

    def fail(run: _Run, exc: BaseException) -> tuple[Any, RelaxationError | MLIPError]:
        if not isinstance(exc, RelaxationError | MLIPError):
            exc = RelaxationError(f"relaxation of {run.structure.formula} failed: {exc}")
        exc.seconds = run.seconds  # type: ignore[union-attr]
        return run.key, exc

    while True:
        while not exhausted and len(active) < batch_size:  # refill the batch
            try:
                key, structure = next(pending)
            except StopIteration:
                exhausted = True
                break
            try:
                check_input_volume(structure)
                active.append(_start(key, structure, fmax, max_steps, relax_cell))
            except RelaxationError as exc:
                yield key, exc
        if not active:
            return
        t0 = time.perf_counter()
        snapshots = [run.atoms for run in active]
        try:
            results: list[Results | Exception] = list(evaluate(snapshots))
        except EVAL_ERRORS as batch_exc:
            if len(snapshots) == 1:
                results = [batch_exc]
            else:  # one crystal spoiled the batched call: find it by evaluating one by one
                results = []
                for atoms in snapshots:
                    try:
                        results.extend(evaluate([atoms]))
                    except EVAL_ERRORS as exc:
                        results.append(exc)
        spent = time.perf_counter() - t0
        total_atoms = sum(len(a) for a in snapshots)
        still: list[_Run] = []
        for run, res in zip(active, results, strict=True):
            t1 = time.perf_counter()
            run.seconds += spent * len(run.atoms) / total_atoms
            if isinstance(res, BaseException):
                yield fail(run, res)
                continue
            try:
                run.atoms.calc.store(run.atoms, res)
                done = _advance(run)
                if done:
                    opt = run.optimizer
                    converged = bool(opt.gradient_converged(opt.optimizable.get_gradient()))
                    raw_energy = float(run.atoms.get_potential_energy())
                    run.seconds += time.perf_counter() - t1
                    relaxation = finish_relaxation(
                        run.structure,
                        run.atoms,
                        mlip,
                        converged=converged,
                        steps=int(opt.nsteps),
                        raw_energy=raw_energy,
                        initial_raw_energy=run.initial_raw_energy,
                        seconds=run.seconds,
                    )
                    yield run.key, relaxation
                    continue
            except (RelaxationError, MLIPError, *EVAL_ERRORS) as e:
                run.seconds += time.perf_counter() - t1
                yield fail(run, e)
                continue
            run.seconds += time.perf_counter() - t1
            still.append(run)
        active = still
