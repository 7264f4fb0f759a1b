"""The PCCD denoising network (no pymatgen here: it only sees arrays and condition tensors)."""

from pccd.model.embeddings import ConditionEncoder, TimeEmbedding, sinusoidal_embedding
from pccd.model.unet import (
    CHANNELS,
    COLUMNS,
    DEFAULT_PRESET,
    PRESETS,
    ROWS,
    PCCDUNet,
    UNetConfig,
    count_parameters,
    describe,
    example_inputs,
    forward_flops,
    load_weights,
    preset_config,
    warm_start,
)

__all__ = [
    "CHANNELS",
    "COLUMNS",
    "DEFAULT_PRESET",
    "PRESETS",
    "ROWS",
    "ConditionEncoder",
    "PCCDUNet",
    "TimeEmbedding",
    "UNetConfig",
    "count_parameters",
    "describe",
    "example_inputs",
    "forward_flops",
    "load_weights",
    "preset_config",
    "sinusoidal_embedding",
    "warm_start",
]
