"""``pccd models``: the shipped models, their families, sizes, conditions and headline figures.

What is listed comes from :func:`pccd.generator.shipped_models` (each model directory's
``pccd.json`` and weights); this module only prints it.
"""

from __future__ import annotations

import argparse
import json

from pccd.generator import WEIGHTS_DIR, ModelSummary, shipped_models


def _training(record: dict) -> str:
    parts = []
    if "steps" in record:
        parts.append(f"{int(record['steps']):,} steps")
    if "samples_seen" in record:
        parts.append(f"{int(record['samples_seen']) / 1e6:.2f}M samples")
    if "train_hours" in record:
        parts.append(f"{float(record['train_hours']):.2f} h")
    return ", ".join(parts) or "not recorded"


def describe(model: ModelSummary) -> list[str]:
    """The lines ``pccd models`` prints for one model."""
    info = model.info
    lines = [
        f"{info.name or info.directory.name}{'  (default)' if model.default else ''}",
        f"  family      {info.family}",
        f"  parameters  {model.parameters:,}",
        f"  conditions  {', '.join(info.trained_conditions) or 'none'}",
        f"  samplers    {', '.join(info.samplers)} (default {info.samplers[0]})",
        f"  training    {_training(model.training)}",
        f"  directory   {info.directory}",
    ]
    if model.headline:
        lines.append("  headline figures:")
        for figure in model.headline:
            source = f"  ({figure.source})" if figure.source else ""
            lines.append(f"    {figure.label}: {figure.value}{source}")
    else:
        lines.append("  headline figures: none recorded (no 'headline' in its pccd.json)")
    return lines


def _cmd_models(args: argparse.Namespace) -> int:
    models = shipped_models(args.weights)
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    blocks = ["\n".join(describe(m)) for m in models]
    print("\n\n".join(blocks) if blocks else f"no models in {args.weights}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` to the ``pccd`` parser."""
    p = sub.add_parser(
        "models",
        help="list the shipped models: family, parameters, trained conditions, headline figures",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--weights",
        default=str(WEIGHTS_DIR),
        help="directory of model directories (default: the models shipped in the package)",
    )
    p.set_defaults(func=_cmd_models)
