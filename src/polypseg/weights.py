"""Encoder weights: smp's ImageNet download, offline packaged weights, local files, or none."""

from __future__ import annotations

import torch

from .config import Config
from .errors import PolypsegError


def apply_encoder_weights(model: torch.nn.Module, cfg: Config) -> None:
    if cfg.encoder_weights in ("none", "", None):
        return
    raise PolypsegError(f"Encoder weights '{cfg.encoder_weights}' are not supported yet.")
