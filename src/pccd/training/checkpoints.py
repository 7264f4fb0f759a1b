"""A training checkpoint after training: packed for git, rebuilt, or exported as a model.

None of this trains (nor uses Lightning), so it lives apart: :func:`pack_checkpoint` spreads a
``last.ckpt`` over files small enough for the repository, :func:`unpack_checkpoint` rebuilds
it so ``pccd train`` resumes, and :func:`export_pretrained` writes its EMA weights as the model
directory that :func:`pccd.pipeline.load` reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from pccd.errors import InputError, MissingInputError
from pccd.model import PCCDUNet
from pccd.training.config import TrainConfig, fit_conditions_to_weights

PACK_MANIFEST = "manifest.pt"
PACK_SHARD = "tensors-{:03d}.pt"
LEGACY_PACK_FILES = ("weights.pt", "state.pt")
MAX_FILE_MB = 45.0
_PACK_FORMAT = 2
_MOMENTS = ("exp_avg", "exp_avg_sq")
# files a pack writes or once wrote (the two-file layout, leftovers of an interrupted save)
_PACK_FILE = re.compile(r"tensors-\d{3,}\.pt(\.tmp)?|manifest\.pt\.tmp|(weights|state)\.(pt|tmp)")
# size budget of torch.save's zip archive beyond the tensor bytes: fixed records, and per tensor
# its zip headers, 64-byte alignment and pickled key (measured ~290 bytes with 60-byte keys)
_SHARD_FIXED_BYTES = 4096
_TENSOR_RECORD_BYTES = 512


def pack_checkpoint(
    ckpt_path: str | Path, out_dir: str | Path, max_file_mb: float = MAX_FILE_MB
) -> list[Path]:
    """Write a training checkpoint as files of at most ``max_file_mb`` MB each, for git.

    Why: a Lightning checkpoint holds the weights, the EMA weights and two fp32 Adam moments
    (~75 MB for the ``cpu`` preset, ~230 MB for ``wide``), above the repository's per-file
    limit. The tensors are spread in order over ``tensors-001.pt``, ``tensors-002.pt``, … (each
    at most the cap; a single tensor above it is an error naming it): the network and EMA
    weights in fp32 (exact), the Adam moments in bf16 — enough to continue training, at a
    relative rounding of ~0.4% on the moments. ``manifest.pt`` holds everything else (loop
    state, step counter, wall time, config) and the list of shards; each shard maps the
    tensors' places in the checkpoint to them, in the checkpoint's order.

    Every file is written atomically (temporary file + rename), the manifest last; shards of an
    earlier pack in ``out_dir`` that this one does not use, and the older two-file layout
    (``weights.pt`` + ``state.pt``), are then removed. Manifest and shards carry the same pack
    id (a digest of the checkpoint file), so a directory left half re-packed by a killed run is
    refused by :func:`unpack_checkpoint` rather than resumed from a mix. Returns the paths
    written, the manifest first.
    """
    ckpt_path = Path(ckpt_path)
    cap = int(max_file_mb * 1e6)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    tensors = _take_tensors(ckpt)
    groups = _shard_groups(tensors, cap, max_file_mb)
    pack_id = _file_digest(ckpt_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, addresses in enumerate(groups, start=1):
        path = out / PACK_SHARD.format(number)
        part = {"pack_id": pack_id, "tensors": {a: tensors[a] for a in addresses}}
        _save_capped(part, path, cap, max_file_mb)
        shards.append({"file": path.name, "tensors": len(addresses)})
    manifest = {"format": _PACK_FORMAT, "pack_id": pack_id, "shards": shards, "checkpoint": ckpt}
    _save_capped(manifest, out / PACK_MANIFEST, cap, max_file_mb)
    written = [out / PACK_MANIFEST] + [out / s["file"] for s in shards]
    keep = {p.name for p in written}
    for path in out.iterdir():
        if path.name not in keep and _PACK_FILE.fullmatch(path.name) and path.is_file():
            path.unlink()
    return written


def unpack_checkpoint(packed_dir: str | Path, run_dir: str | Path) -> Path:
    """Rebuild ``run_dir/last.ckpt`` from :func:`pack_checkpoint` files (moments back to fp32).

    Reads the sharded layout (``manifest.pt`` + ``tensors-NNN.pt``) and the older two-file
    one (``weights.pt`` with the state dict, ``state.pt`` with the rest).
    """
    packed = Path(packed_dir)
    if (packed / PACK_MANIFEST).exists():
        ckpt = _read_shards(packed)
    elif all((packed / name).exists() for name in LEGACY_PACK_FILES):
        weights, state = (packed / name for name in LEGACY_PACK_FILES)
        ckpt = torch.load(state, map_location="cpu", weights_only=False)
        ckpt.update(torch.load(weights, map_location="cpu", weights_only=False))
    else:
        raise MissingInputError(
            f"{packed} has no {PACK_MANIFEST} (nor the older {' + '.join(LEGACY_PACK_FILES)}): "
            "not a packed checkpoint"
        )
    for opt in ckpt.get("optimizer_states", []):
        for state in opt["state"].values():
            for key in _MOMENTS:
                if key in state:
                    state[key] = state[key].to(torch.float32)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "last.ckpt.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, run / "last.ckpt")
    return run / "last.ckpt"


def _take_tensors(ckpt: dict) -> dict[tuple, torch.Tensor]:
    """Remove the bulky tensors from ``ckpt``, keyed by where they belong.

    ``("state_dict", name)`` for every state-dict entry, ``("optimizer_states", i, param,
    key)`` for every optimiser-state tensor (Adam moments cast to bf16; the step counters too,
    as each tensor costs the manifest a few hundred bytes). Each comes back with its own
    compact storage: ``torch.save`` writes a view's whole storage.
    """
    tensors: dict[tuple, torch.Tensor] = {
        ("state_dict", name): value for name, value in ckpt.pop("state_dict").items()
    }
    for i, opt in enumerate(ckpt.get("optimizer_states", [])):
        for param, state in opt["state"].items():
            for key, value in list(state.items()):
                if isinstance(value, torch.Tensor):
                    del state[key]
                    cast = value.to(torch.bfloat16) if key in _MOMENTS else value
                    tensors[("optimizer_states", i, param, key)] = cast
    return {
        address: t if t.untyped_storage().nbytes() == t.nbytes else t.clone()
        for address, t in tensors.items()
    }


def _shard_groups(
    tensors: dict[tuple, torch.Tensor], cap: int, max_file_mb: float
) -> list[list[tuple]]:
    """Tensor addresses in order, cut into runs whose saved file stays within ``cap`` bytes."""
    groups: list[list[tuple]] = []
    current: list[tuple] = []
    size = _SHARD_FIXED_BYTES
    for address, tensor in tensors.items():
        need = tensor.nbytes + _TENSOR_RECORD_BYTES + len(repr(address))
        if _SHARD_FIXED_BYTES + need > cap:
            raise InputError(
                f"{'/'.join(map(str, address))}: {tensor.nbytes / 1e6:.3g} MB, with the file's "
                f"own overhead, does not fit in a {max_file_mb:g} MB file"
            )
        if current and size + need > cap:
            groups.append(current)
            current, size = [], _SHARD_FIXED_BYTES
        current.append(address)
        size += need
    if current:
        groups.append(current)
    return groups


def _save_capped(obj: object, path: Path, cap: int, max_file_mb: float) -> None:
    """``torch.save`` atomically, refusing a file above ``cap`` bytes (leaves ``path`` as was)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    size = tmp.stat().st_size
    if size > cap:
        tmp.unlink()
        raise InputError(f"{path.name} would be {size / 1e6:.2f} MB, above {max_file_mb:g} MB")
    os.replace(tmp, path)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _read_shards(packed: Path) -> dict:
    """The checkpoint of a sharded pack, its tensors back in place and in their saved order."""
    manifest = torch.load(packed / PACK_MANIFEST, map_location="cpu", weights_only=False)
    if not isinstance(manifest, dict) or manifest.get("format") != _PACK_FORMAT:
        raise InputError(f"{packed / PACK_MANIFEST}: not a pccd pack manifest")
    ckpt = manifest["checkpoint"]
    ckpt["state_dict"] = {}
    for shard in manifest["shards"]:
        path = packed / shard["file"]
        if not path.exists():
            raise MissingInputError(f"{path}: shard of the packed checkpoint is missing")
        part = torch.load(path, map_location="cpu", weights_only=True)
        if part.get("pack_id") != manifest["pack_id"]:
            raise InputError(
                f"{path} belongs to another pack than {PACK_MANIFEST} (an interrupted re-pack?);"
                " pack the checkpoint again"
            )
        if len(part["tensors"]) != shard["tensors"]:
            raise InputError(
                f"{path}: {len(part['tensors'])} tensors, the manifest says {shard['tensors']}"
            )
        for address, tensor in part["tensors"].items():
            if address[0] == "state_dict":
                ckpt["state_dict"][address[1]] = tensor
            else:
                _, i, param, key = address
                ckpt["optimizer_states"][i]["state"][param][key] = tensor
    return ckpt


def trained_conditions(conditions: tuple[str, ...], label_counts: dict[str, int]) -> list[str]:
    """The model's conditions that its training rows carried labels for.

    Elements and formula come from every crystal itself; band gap, magnetic ordering and
    stability only count when some training row had a value. Without recorded counts (old
    checkpoints) every condition is assumed trained.
    """
    if not label_counts:
        return list(conditions)
    return [c for c in conditions if c in ("elements", "formula") or label_counts.get(c, 0) > 0]


def export_pretrained(ckpt_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write the EMA weights of a checkpoint as a pretrained model directory.

    The directory holds ``config.json``/``model.pt`` (the network) and ``pccd.json``
    (representation and diffusion settings plus the training summary used by the model card).
    ``dtype="float16"`` stores the weights at half the size (see
    :meth:`pccd.model.PCCDUNet.save_pretrained`); loading computes in float32 either way.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**ckpt["hyper_parameters"]["config"])
    cfg = fit_conditions_to_weights(cfg, ckpt["state_dict"])
    model = PCCDUNet.from_preset(cfg.preset, **cfg.model_overrides)
    prefix = "ema."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    out = Path(out_dir)
    model.save_pretrained(out, dtype=dtype)
    steps = int(ckpt["global_step"])
    labels = ckpt.get("label_counts") or {}
    meta = {
        "name": out.name,
        "family": "points",
        "representation": cfg.representation().to_dict(),
        "diffusion": cfg.diffusion(),
        "trained_conditions": trained_conditions(model.config.conditions, labels),
        "training": {
            "config": asdict(cfg),
            "steps": steps,
            "samples_seen": steps * cfg.batch_size,
            "train_hours": round(float(ckpt.get("train_seconds", math.nan)) / 3600.0, 3),
            "label_counts": labels,
        },
    }
    (out / "pccd.json").write_text(json.dumps(meta, indent=2))
    return out
